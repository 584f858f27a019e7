//! Connected datagram flows: a SAL handshake, then datagrams both ways with
//! one peer, and a FIN from each side when it is done.
//!
//! This is what the reference stack's `connect` on a `SOCK_DGRAM` socket
//! opens, and what a datagram server that calls `listen` and `accept` (its
//! `udp_server_user`) takes. sald hands the flow over as one end of a
//! `SOCK_SEQPACKET` socketpair whose messages are the bare payloads: one
//! message, one datagram. End of file is the peer's FIN; this side's FIN
//! goes out when the flow is dropped.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};
use sal::proto::FlowInfo;
use sal::wire::TransportProtocol;
use sal::{FlowId, ServiceId};

use crate::client::ControlClient;
use crate::connector;
use crate::datagram::{check_size, set_receive_timeout};
use crate::error::{Error, Result};
use crate::stream::{connect_request, flow_from_reply};

/// An established datagram flow to or from a service.
///
/// [`ServiceDatagramFlow::recv`] returns one datagram per call and `Ok(0)`
/// once the peer has closed the flow (its SAL FIN); the flow can still send
/// until it is dropped or [`ServiceDatagramFlow::shutdown_write`] is
/// called, which sends this side's FIN.
#[derive(Debug)]
pub struct ServiceDatagramFlow {
    socket: OwnedFd,
    info: FlowInfo,
}

impl ServiceDatagramFlow {
    /// Opens a datagram flow to `service` through the default control
    /// socket, on this process's shared connector connection (as
    /// [`ServiceStream::connect`](crate::ServiceStream::connect)).
    pub fn connect(service: ServiceId) -> Result<ServiceDatagramFlow> {
        let (info, fd) = connector::connect(service, TransportProtocol::Datagram, None)?;
        Ok(ServiceDatagramFlow::from_parts(info, fd))
    }

    /// Opens a datagram flow to `service` over `control` (closed once the
    /// flow is handed over), giving up after `timeout` if one is given.
    /// A service that refuses (a reference datagram socket that is only
    /// bound, or a host without it) fails with [`Error::Refused`] or times
    /// out.
    pub fn connect_via(
        mut control: ControlClient,
        service: ServiceId,
        timeout: Option<Duration>,
    ) -> Result<ServiceDatagramFlow> {
        let request = connect_request(service, TransportProtocol::Datagram, timeout);
        let reply = control.request(&request)?;
        let (info, fd) = flow_from_reply("connect", reply)?;
        Ok(ServiceDatagramFlow::from_parts(info, fd))
    }

    /// A flow over a socket handed over by sald.
    pub(crate) fn from_parts(info: FlowInfo, socket: OwnedFd) -> ServiceDatagramFlow {
        ServiceDatagramFlow { socket, info }
    }

    /// The flow as sald described it when it was handed over.
    pub fn flow_info(&self) -> &FlowInfo {
        &self.info
    }

    /// This end's flow ID.
    pub fn flow_id(&self) -> FlowId {
        self.info.flow
    }

    /// Sends one datagram to the peer; returns its length. Payloads over
    /// [`crate::MAX_DATAGRAM`] bytes are refused.
    pub fn send(&self, data: &[u8]) -> Result<usize> {
        check_size(data)?;
        loop {
            return match send(self.socket.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => Ok(n),
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => Err(Error::Closed),
                Err(errno) => Err(errno.into()),
            };
        }
    }

    /// Waits for the next datagram and copies it into `buf` (truncated to
    /// its length); `Ok(0)` once the peer has closed the flow.
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        loop {
            return match recv(self.socket.as_raw_fd(), buf, MsgFlags::empty()) {
                Ok(n) => Ok(n),
                Err(Errno::EINTR) => continue,
                Err(errno) => Err(errno.into()),
            };
        }
    }

    /// Finishes sending: sald sends this side's FIN; datagrams from the
    /// peer keep arriving until its own FIN (`recv` returns `Ok(0)`).
    pub fn shutdown_write(&self) -> io::Result<()> {
        nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .map_err(io::Error::from)
    }

    /// Sets a timeout on [`ServiceDatagramFlow::recv`] (`None`: block
    /// forever); a timeout shows as an `Io` error of kind `WouldBlock`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        set_receive_timeout(&self.socket, timeout)
    }
}

impl AsFd for ServiceDatagramFlow {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for ServiceDatagramFlow {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
