//! Errors of the application-facing calls.

use serde::{Deserialize, Serialize};

use super::export::{ImportError, NotExportable};
use crate::id::{FlowId, ServicePrefix};
use crate::table::ListenerId;

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConnectError {
    /// No rule leads to the service (none matches, or DROP), or a host
    /// answered the SYN with `RST|NACK` (no route there either).
    #[error("no route to service")]
    NoRoute,
    /// The serving host answered with a plain RST (listener full or of the other
    /// protocol, no room for the flow); for a datagram socket, a datagram refused.
    #[error("connection refused")]
    Refused,
    /// The SYN went unanswered through every retransmission, or a DELAY rule
    /// held the connect past `HostConfig::delay_timeout`.
    #[error("connection timed out")]
    TimedOut,
}

/// Errors of the application-facing calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// A connect or datagram send found no route, or `recv_from` reports a
    /// refused datagram.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A listener of this host already has a DEMUX target on exactly this prefix.
    #[error("service {0} is already bound on this host")]
    AddressInUse(ServicePrefix),
    /// No live flow (or datagram socket, for the datagram calls) has this local ID.
    #[error("no such flow {0}")]
    NoSuchFlow(FlowId),
    /// No open listener has this handle.
    #[error("no such listener {0:?}")]
    NoSuchListener(ListenerId),
    /// Nothing to do now (no room to send, nothing to read or accept); retry
    /// after the next [`Event`](super::Event) for it.
    #[error("operation would block")]
    WouldBlock,
    /// The flow is not established: handshake unfinished or held by DELAY (for
    /// `migrate`, also a dead flow).
    #[error("the flow is not connected")]
    NotConnected,
    /// The flow is dead: reset by the peer or given up on; only closing it is left.
    #[error("the flow was reset by the peer or given up on (peer unresponsive)")]
    Reset,
    /// This end has already shut down its sending direction.
    #[error("the flow is closed for sending")]
    SendClosed,
    /// The host holds all the flows and sockets it may (`HostConfig::max_flows`);
    /// carries that limit.
    #[error("too many flows ({0})")]
    TooManyFlows(usize),
    /// A stream call on a datagram flow, or a datagram call on a stream flow.
    #[error("wrong protocol for this socket")]
    WrongProtocol,
    /// A datagram over [`MAX_DATAGRAM`](super::MAX_DATAGRAM) bytes; carries its size.
    #[error("datagram of {0} bytes is too large")]
    TooLarge(usize),
    /// No interface of this host has this name.
    #[error("no interface {0}")]
    NoSuchInterface(String),
    /// The named interface is down, so no flow can move to it.
    #[error("interface {0} is down")]
    InterfaceDown(String),
    /// [`Host::export_flow`](super::Host::export_flow) cannot take this
    /// flow out (now): see the reason.
    #[error("flow cannot be exported: {0}")]
    NotExportable(#[from] NotExportable),
    /// [`Host::import_flow`](super::Host::import_flow) refused the export:
    /// see the reason.
    #[error("flow import refused: {0}")]
    BadImport(#[from] ImportError),
    /// An imported flow's ID names a flow or socket this host has already.
    #[error("flow ID {0} is in use on this host")]
    FlowIdInUse(FlowId),
}
