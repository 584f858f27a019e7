//! Errors of the application-facing calls.

use serde::{Deserialize, Serialize};

use crate::id::{FlowId, ServicePrefix};
use crate::table::ListenerId;

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConnectError {
    #[error("no route to service")]
    NoRoute,
    #[error("connection refused")]
    Refused,
    #[error("connection timed out")]
    TimedOut,
}

/// Errors of the application-facing calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("service {0} is already bound on this host")]
    AddressInUse(ServicePrefix),
    #[error("no such flow {0}")]
    NoSuchFlow(FlowId),
    #[error("no such listener {0:?}")]
    NoSuchListener(ListenerId),
    #[error("operation would block")]
    WouldBlock,
    #[error("the flow is not connected")]
    NotConnected,
    #[error("the flow was reset by the peer")]
    Reset,
    #[error("the flow is closed for sending")]
    SendClosed,
    #[error("too many flows ({0})")]
    TooManyFlows(usize),
    #[error("wrong protocol for this socket")]
    WrongProtocol,
    #[error("datagram of {0} bytes is too large")]
    TooLarge(usize),
    #[error("no interface {0}")]
    NoSuchInterface(String),
    #[error("interface {0} is down")]
    InterfaceDown(String),
}
