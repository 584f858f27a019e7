//! Unconnected datagram sockets: send to a service ID, receive from peers,
//! reply to them; and, on a bound socket, accept connected datagram flows
//! ([`ServiceDatagramFlow`]).
//!
//! sald hands over a `SOCK_SEQPACKET` socket whose messages are
//! [`DatagramFrame`]s: `SendTo` and `Reply` from the application,
//! `Received` and `Refused` from sald. Every datagram is resolved by sald on
//! its own, so successive datagrams to one service may reach different
//! replicas. Every socket has a service ID of its own (the bound one, or a
//! random one sald picks), which its datagrams carry so that the receiver
//! can answer: a peer's [`DatagramPeer::service`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recv, send, setsockopt, sockopt, MsgFlags};
use nix::sys::time::TimeVal;
use sal::proto::DatagramPeer;
use sal::table::ListenerId;
use sal::wire::TransportProtocol;
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_control::{DatagramFrame, Request, Response};

use crate::client::ControlClient;
use crate::datagram_flow::ServiceDatagramFlow;
use crate::error::{Error, Result};
use crate::stream::{flow_from_reply, listen_request, listener_from_reply};

/// Largest datagram payload the SAL carries (sends of more are refused here
/// rather than dropped by sald).
pub use sal::proto::MAX_DATAGRAM;

/// Refuses a payload the SAL would drop.
pub(crate) fn check_size(data: &[u8]) -> Result<()> {
    if data.len() > MAX_DATAGRAM {
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "datagram of {} bytes exceeds the SAL's {MAX_DATAGRAM}-byte limit",
                data.len()
            ),
        )));
    }
    Ok(())
}

pub(crate) use sal_control::RECEIVED_HEADER_MAX;

/// The backlog sent with a datagram `Listen`; datagram listeners take no
/// flows from it, so it only bounds connected datagram flows.
const DATAGRAM_BACKLOG: u32 = 16;

/// Decodes a message sald sent on a datagram socket, copying the payload into
/// `buf` (truncated to its length, as UDP does). A refusal is
/// [`Error::Refused`].
pub(crate) fn decode_received(
    message: &[u8],
    buf: &mut [u8],
) -> Result<(usize, DatagramPeer, Option<ServiceId>)> {
    match DatagramFrame::decode(message) {
        Ok(DatagramFrame::Received {
            peer,
            service,
            data,
        }) => {
            let len = data.len().min(buf.len());
            buf[..len].copy_from_slice(&data[..len]);
            Ok((len, peer, service))
        }
        Ok(DatagramFrame::Refused) => Err(Error::Refused(
            "a host refused a datagram of this socket".into(),
        )),
        Ok(_) => Err(Error::Protocol(
            "sald sent an application-to-sald datagram frame".into(),
        )),
        Err(e) => Err(Error::Protocol(format!("bad datagram frame: {e}"))),
    }
}

/// Opens an unbound datagram socket over `control`.
pub(crate) fn opened_from_reply(reply: crate::client::Reply) -> Result<(FlowId, OwnedFd)> {
    match (reply.response, reply.fd) {
        (Response::DatagramOpened { socket }, Some(fd)) => Ok((socket, fd)),
        (Response::Error { kind, message }, _) => Err(Error::from_daemon(kind, message)),
        (other, _) => Err(Error::unexpected("open_datagram", &other)),
    }
}

/// A datagram socket of the SAL: unbound (send to services, receive their
/// replies) or bound to a service prefix (also receive datagrams sent to it).
///
/// Dropping it closes the socket and, when bound, unregisters the prefix.
#[derive(Debug)]
pub struct ServiceDatagram {
    socket: OwnedFd,
    id: FlowId,
    bound: Option<(ListenerId, ServicePrefix)>,
    /// Kept for bound sockets: closing it would unbind the prefix; accepts
    /// go over it.
    control: Option<Mutex<ControlClient>>,
}

impl ServiceDatagram {
    /// Opens an unbound datagram socket through the default control socket.
    pub fn open() -> Result<ServiceDatagram> {
        ServiceDatagram::open_via(ControlClient::connect()?)
    }

    /// Opens an unbound datagram socket over `control`, which is closed once
    /// the socket is handed over.
    pub fn open_via(mut control: ControlClient) -> Result<ServiceDatagram> {
        let reply = control.request(&Request::OpenDatagram)?;
        let (id, socket) = opened_from_reply(reply)?;
        Ok(ServiceDatagram {
            socket,
            id,
            bound: None,
            control: None,
        })
    }

    /// Binds `prefix` (or one exact service ID) for datagrams, through the
    /// default control socket.
    pub fn bind(prefix: impl Into<ServicePrefix>) -> Result<ServiceDatagram> {
        ServiceDatagram::bind_via(ControlClient::connect()?, prefix)
    }

    /// Binds `prefix` for datagrams over `control`, which it keeps: closing
    /// it (dropping the socket) unbinds the prefix.
    pub fn bind_via(
        mut control: ControlClient,
        prefix: impl Into<ServicePrefix>,
    ) -> Result<ServiceDatagram> {
        let prefix = prefix.into();
        let request = listen_request(prefix, TransportProtocol::Datagram, DATAGRAM_BACKLOG);
        let reply = control.request(&request)?;
        let (listener, socket) = listener_from_reply(reply)?;
        let (id, socket) = socket.ok_or_else(|| {
            Error::Protocol("sald bound a datagram prefix without handing over its socket".into())
        })?;
        Ok(ServiceDatagram {
            socket,
            id,
            bound: Some((listener, prefix)),
            control: Some(Mutex::new(control)),
        })
    }

    /// Waits for the next connected datagram flow opened to the bound
    /// prefix (a peer that connects rather than sends; the reference's
    /// `udp_client_user` does). Fails on an unbound socket.
    pub fn accept(&self) -> Result<ServiceDatagramFlow> {
        self.accept_with(false)
    }

    /// Takes the next connected datagram flow if one is waiting.
    pub fn try_accept(&self) -> Result<Option<ServiceDatagramFlow>> {
        match self.accept_with(true) {
            Ok(flow) => Ok(Some(flow)),
            Err(Error::WouldBlock(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn accept_with(&self, nonblocking: bool) -> Result<ServiceDatagramFlow> {
        let (Some((listener, _)), Some(control)) = (self.bound, self.control.as_ref()) else {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only a bound datagram socket accepts flows",
            )));
        };
        let reply = lock(control).request(&Request::Accept {
            listener,
            nonblocking,
        })?;
        let (info, fd) = flow_from_reply("accept", reply)?;
        Ok(ServiceDatagramFlow::from_parts(info, fd))
    }

    /// This socket's flow ID (peers see it in [`DatagramPeer::flow`]).
    pub fn socket_id(&self) -> FlowId {
        self.id
    }

    /// The prefix this socket is bound to, if any.
    pub fn prefix(&self) -> Option<ServicePrefix> {
        self.bound.map(|(_, prefix)| prefix)
    }

    /// Sends one datagram to `service`, resolved by sald's service table.
    /// Returns the payload length. Payloads over [`MAX_DATAGRAM`] bytes are
    /// refused. Delivery is not confirmed: a datagram sald cannot route is
    /// dropped without an error here.
    pub fn send_to(&self, service: ServiceId, data: &[u8]) -> Result<usize> {
        check_size(data)?;
        self.send_frame(&DatagramFrame::SendTo {
            service,
            via: None,
            data: data.to_vec(),
        })?;
        Ok(data.len())
    }

    /// Sends one datagram to `service` at `via` without resolving it (the
    /// reference's "advisory address"): how to answer a sender known by its
    /// service ID and address.
    pub fn send_to_via(&self, service: ServiceId, via: Locator, data: &[u8]) -> Result<usize> {
        check_size(data)?;
        self.send_frame(&DatagramFrame::SendTo {
            service,
            via: Some(via),
            data: data.to_vec(),
        })?;
        Ok(data.len())
    }

    /// Sends one datagram back to `peer`, as returned by
    /// [`ServiceDatagram::recv_from`]. Returns the payload length; payloads
    /// over [`MAX_DATAGRAM`] bytes are refused.
    pub fn send_reply(&self, peer: DatagramPeer, data: &[u8]) -> Result<usize> {
        check_size(data)?;
        self.send_frame(&DatagramFrame::Reply {
            peer,
            data: data.to_vec(),
        })?;
        Ok(data.len())
    }

    fn send_frame(&self, frame: &DatagramFrame) -> Result<()> {
        let bytes = frame.encode();
        loop {
            return match send(self.socket.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => Ok(()),
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => Err(Error::Closed),
                Err(errno) => Err(errno.into()),
            };
        }
    }

    /// Waits for the next datagram and copies its payload into `buf`
    /// (truncating it if `buf` is too short). Returns the payload length, the
    /// sender, and the service ID it was sent to (for unconnected datagrams).
    /// A host that refused one of this socket's datagrams (a reset from the
    /// address it was sent to) is reported once, as [`Error::Refused`].
    pub fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, DatagramPeer, Option<ServiceId>)> {
        let mut message = vec![0u8; buf.len() + RECEIVED_HEADER_MAX];
        let len = loop {
            match recv(self.socket.as_raw_fd(), &mut message, MsgFlags::empty()) {
                Ok(len) => break len,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            }
        };
        if len == 0 {
            // Frames are never empty: this is the end of the socket.
            return Err(Error::Closed);
        }
        decode_received(&message[..len], buf)
    }

    /// Sets a timeout on [`ServiceDatagram::recv_from`] (`None`: block
    /// forever); a timeout shows as an `Io` error of kind `WouldBlock`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        set_receive_timeout(&self.socket, timeout)
    }
}

/// Sets `SO_RCVTIMEO` (`None`: block forever; zero is refused, as std's
/// sockets refuse it).
pub(crate) fn set_receive_timeout(socket: &OwnedFd, timeout: Option<Duration>) -> io::Result<()> {
    let tv = match timeout {
        Some(t) if t.is_zero() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a zero timeout is not allowed",
            ))
        }
        Some(t) => TimeVal::new(
            t.as_secs().try_into().unwrap_or(i64::MAX),
            t.subsec_micros().into(),
        ),
        None => TimeVal::new(0, 0),
    };
    setsockopt(socket, sockopt::ReceiveTimeout, &tv).map_err(io::Error::from)
}

/// Locks a control connection; a panic while holding it cannot leave it
/// worse than an I/O error would.
fn lock(control: &Mutex<ControlClient>) -> MutexGuard<'_, ControlClient> {
    control.lock().unwrap_or_else(|e| e.into_inner())
}

impl AsFd for ServiceDatagram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for ServiceDatagram {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
