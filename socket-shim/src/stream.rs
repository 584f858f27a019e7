//! Stream flows: connecting to a service and listening on a service prefix.
//!
//! A flow is handed over by sald as one end of an `AF_UNIX` stream
//! socketpair: bytes written to it go to the peer, end of file is the peer's
//! half-close. [`ServiceStream`] wraps that socket; [`ServiceListener`]
//! registers a prefix and accepts flows on it.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::socket::MsgFlags;
use sal::proto::FlowInfo;
use sal::table::ListenerId;
use sal::wire::TransportProtocol;
use sal::{FlowId, ServiceId, ServicePrefix};
use sal_control::{Request, Response};

use crate::accept_queue;
use crate::client::{response_name, ControlClient, Reply};
use crate::connector;
use crate::error::{Error, Result};
use crate::reset::ResetWatch;

/// The `Connect` request for a flow of `protocol`.
pub(crate) fn connect_request(
    service: ServiceId,
    protocol: TransportProtocol,
    timeout: Option<Duration>,
) -> Request {
    Request::Connect {
        service,
        protocol,
        timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// The flow and its socket out of a `Connected` or `Accepted` reply.
pub(crate) fn flow_from_reply(what: &str, reply: Reply) -> Result<(FlowInfo, OwnedFd)> {
    match (reply.response, reply.fd) {
        (Response::Connected { flow }, Some(fd)) | (Response::Accepted { flow }, Some(fd)) => {
            Ok((flow, fd))
        }
        (Response::Error { kind, message }, _) => Err(Error::from_daemon(kind, message)),
        (other, _) => Err(Error::Protocol(format!(
            "unexpected answer to {what}: {}",
            response_name(&other)
        ))),
    }
}

/// The listener out of a `Listening` reply (and its datagram socket, if any).
pub(crate) fn listener_from_reply(reply: Reply) -> Result<(ListenerId, Option<(FlowId, OwnedFd)>)> {
    match reply.response {
        Response::Listening { listener, socket } => Ok((listener, socket.zip(reply.fd))),
        Response::Error { kind, message } => Err(Error::from_daemon(kind, message)),
        other => Err(Error::unexpected("listen", &other)),
    }
}

/// The `Listen` request for a prefix.
pub(crate) fn listen_request(
    prefix: ServicePrefix,
    protocol: TransportProtocol,
    backlog: u32,
) -> Request {
    Request::Listen {
        prefix,
        protocol,
        backlog,
    }
}

/// An established stream flow to or from a service.
///
/// Reading returns what the peer sent, and `Ok(0)` once the peer has
/// half-closed; [`ServiceStream::shutdown_write`] half-closes this side. A
/// flow that was reset (or whose peer was given up on) reads what had
/// arrived, then `ConnectionReset` once (while this side has not shut its
/// writing down; see [`crate::reset`]), then `Ok(0)`.
/// Dropping the stream closes the flow. Like `TcpStream`, `&ServiceStream`
/// also implements `Read` and `Write`, so one thread can read while another
/// writes.
///
/// A flow lives as long as its socket, whatever becomes of the control
/// connection it was opened on.
#[derive(Debug)]
pub struct ServiceStream {
    socket: UnixStream,
    info: FlowInfo,
    /// Shared by the stream's clones: a shutdown through any is seen by all.
    reset: Arc<ResetWatch>,
}

impl ServiceStream {
    /// Opens a stream flow to `service` through the default control socket,
    /// waiting as long as the SAL's own retry limit allows.
    ///
    /// The request goes out on this process's shared connector connection
    /// to sald (opened by the first connect, see the `connector` module):
    /// one request frame, no connection of its own, so any number of
    /// connects may be in flight at once, from any threads.
    pub fn connect(service: ServiceId) -> Result<ServiceStream> {
        ServiceStream::connect_default(service, None)
    }

    /// Like [`ServiceStream::connect`], giving up after `timeout` (sald
    /// times the connect and answers [`Error::TimedOut`]).
    pub fn connect_timeout(service: ServiceId, timeout: Duration) -> Result<ServiceStream> {
        ServiceStream::connect_default(service, Some(timeout))
    }

    /// Through the process's connector for the default control socket.
    fn connect_default(service: ServiceId, timeout: Option<Duration>) -> Result<ServiceStream> {
        let (info, fd) = connector::connect(service, TransportProtocol::Stream, timeout)?;
        Ok(ServiceStream::from_parts(info, fd))
    }

    /// Opens a stream flow to `service` over `control` (use it to reach a
    /// non-default control socket); `control` is closed once the flow is
    /// handed over.
    pub fn connect_via(
        mut control: ControlClient,
        service: ServiceId,
        timeout: Option<Duration>,
    ) -> Result<ServiceStream> {
        let reply = control.request(&connect_request(
            service,
            TransportProtocol::Stream,
            timeout,
        ))?;
        let (info, fd) = flow_from_reply("connect", reply)?;
        Ok(ServiceStream::from_parts(info, fd))
    }

    /// A stream over a flow socket handed over by sald.
    pub(crate) fn from_parts(info: FlowInfo, fd: OwnedFd) -> ServiceStream {
        ServiceStream {
            socket: UnixStream::from(fd),
            info,
            reset: Arc::default(),
        }
    }

    /// Splits into the socket and the flow description (reading the socket
    /// itself, a reset reads as end of file with a hang-up: see
    /// [`crate::reset`]).
    pub fn into_parts(self) -> (UnixStream, FlowInfo) {
        (self.socket, self.info)
    }

    /// Splits into the socket, the flow description and what tells a reset
    /// at end of file.
    #[cfg(feature = "tokio")]
    pub(crate) fn into_watched_parts(self) -> (UnixStream, FlowInfo, Arc<ResetWatch>) {
        (self.socket, self.info, self.reset)
    }

    /// The flow as sald described it when it was handed over (flow IDs,
    /// service, locators); counters are those of that moment.
    pub fn flow_info(&self) -> &FlowInfo {
        &self.info
    }

    /// This end's flow ID.
    pub fn flow_id(&self) -> FlowId {
        self.info.flow
    }

    /// The service this flow reached (client) or was opened to (server).
    pub fn service(&self) -> ServiceId {
        self.info.service
    }

    /// Half-closes the flow: the peer reads end of file; reading goes on.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    /// Shuts down reading, writing or both, as `TcpStream::shutdown`.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            self.reset.write_shut();
        } else {
            self.reset.read_shut();
        }
        self.socket.shutdown(how)
    }

    /// What a read of the socket returned, with a reset told from an end
    /// of file (see [`crate::reset`]).
    fn read_result(&self, read: io::Result<usize>, asked: usize) -> io::Result<usize> {
        if matches!(read, Ok(0)) && asked > 0 {
            self.reset.end_of_file(self.socket.as_fd())?;
        }
        read
    }

    /// Sets a timeout on reads (`None`: block forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    /// Sets a timeout on writes (`None`: block forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_write_timeout(timeout)
    }

    /// Moves the socket in or out of non-blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.socket.set_nonblocking(nonblocking)
    }

    /// Another handle to the same flow (a duplicated descriptor), as
    /// `TcpStream::try_clone`: say, for a writer thread. A shutdown through
    /// either is known to both (see [`crate::reset`]).
    pub fn try_clone(&self) -> io::Result<ServiceStream> {
        Ok(ServiceStream {
            socket: self.socket.try_clone()?,
            info: self.info.clone(),
            reset: self.reset.clone(),
        })
    }

    /// The underlying socket (one end of the socketpair shared with sald).
    /// Reading it, a reset reads as end of file; shutting its writing down
    /// through it (or a clone of it) rather than through the stream makes
    /// the stream take a finished flow's end for a reset (see
    /// [`crate::reset`]).
    pub fn as_unix_stream(&self) -> &UnixStream {
        &self.socket
    }
}

impl Read for ServiceStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self).read_vectored(bufs)
    }
}

impl Read for &ServiceStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_result((&self.socket).read(buf), buf.len())
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let asked = bufs.iter().map(|b| b.len()).sum();
        self.read_result((&self.socket).read_vectored(bufs), asked)
    }
}

impl Write for ServiceStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.socket).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.socket).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for &ServiceStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.socket).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.socket).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for ServiceStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for ServiceStream {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// A bound service prefix that accepts stream flows.
///
/// Binding registers the prefix with sald (a DEMUX rule) and opens the
/// listener's accept queue, into which sald puts each established flow
/// (see `accept_queue`): accepting is one `recvmsg` there, no request to
/// sald, so any number of threads may accept at once, each flow going to
/// one of them, while the control connection stays free for
/// [`ServiceListener::drain`]. Dropping the listener closes its control
/// connection, which unbinds it; flows already accepted live on, flows
/// still queued are closed.
#[derive(Debug)]
pub struct ServiceListener {
    control: Mutex<ControlClient>,
    /// The accept queue (blocking; `try_accept` asks not to wait).
    queue: OwnedFd,
    listener: ListenerId,
    prefix: ServicePrefix,
}

impl ServiceListener {
    /// Binds `prefix` (or one exact service ID) through the default control
    /// socket; `backlog` bounds the flows established but not yet accepted.
    pub fn bind(prefix: impl Into<ServicePrefix>, backlog: u32) -> Result<ServiceListener> {
        ServiceListener::bind_via(ControlClient::connect()?, prefix, backlog)
    }

    /// Binds `prefix` over `control`, which the listener owns from now on.
    pub fn bind_via(
        mut control: ControlClient,
        prefix: impl Into<ServicePrefix>,
        backlog: u32,
    ) -> Result<ServiceListener> {
        let prefix = prefix.into();
        let reply = control.request(&listen_request(prefix, TransportProtocol::Stream, backlog))?;
        let (listener, _) = listener_from_reply(reply)?;
        let queue = accept_queue::queue_from_reply(
            control.request(&accept_queue::deliver_request(listener))?,
        )?;
        Ok(ServiceListener {
            control: Mutex::new(control),
            queue,
            listener,
            prefix,
        })
    }

    /// The prefix this listener registered.
    pub fn prefix(&self) -> ServicePrefix {
        self.prefix
    }

    /// sald's handle of this listener (the DEMUX target in `servalctl services`).
    pub fn listener_id(&self) -> ListenerId {
        self.listener
    }

    fn control(&self) -> MutexGuard<'_, ControlClient> {
        // A panic while holding the lock cannot leave the connection in a
        // state worse than an I/O error would; go on with it.
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the next established flow. Any number of threads may
    /// wait at once; each flow goes to one of them.
    ///
    /// Fails with [`Error::Closed`] once the queue has ended (the listener
    /// was closed, or sald is gone) and with [`Error::Exhausted`]
    /// (`ENOBUFS`) for a flow sald had no socket for (the next call may
    /// succeed).
    pub fn accept(&self) -> Result<(ServiceStream, FlowInfo)> {
        accept_queue::take(self.queue.as_fd(), MsgFlags::empty())?.map(accepted)
    }

    /// Takes the next established flow if there is one, without waiting.
    pub fn try_accept(&self) -> Result<Option<(ServiceStream, FlowInfo)>> {
        Ok(accept_queue::try_take(self.queue.as_fd())?.map(accepted))
    }

    /// An endless iterator of accepted flows, as `TcpListener::incoming`.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// Drains the listener: the prefix is unregistered (new connections go
    /// to other instances) while the flows it admitted can still be
    /// accepted. Returns how many are not accepted yet; once that is 0,
    /// [`ServiceListener::close`] resets nobody.
    ///
    /// That is sald's count: the flows it still holds plus those waiting
    /// in this listener's accept queue that no thread has taken yet.
    pub fn drain(&self) -> Result<u32> {
        let reply = self
            .control()
            .request(&accept_queue::drain_request(self.prefix))?;
        accept_queue::not_accepted(reply)
    }

    /// Unbinds the prefix now (dropping the listener does the same).
    pub fn close(self) -> Result<()> {
        let listener = self.listener;
        let mut control = self.control.into_inner().unwrap_or_else(|e| e.into_inner());
        control.request_ok(&Request::CloseListener { listener })
    }
}

/// A stream over a flow taken from an accept queue, and its description.
fn accepted((info, fd): (FlowInfo, OwnedFd)) -> (ServiceStream, FlowInfo) {
    (ServiceStream::from_parts(info.clone(), fd), info)
}

/// Flows accepted one after another; see [`ServiceListener::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a ServiceListener,
}

impl Iterator for Incoming<'_> {
    type Item = Result<ServiceStream>;

    /// Never `None`: each call waits for the next flow.
    fn next(&mut self) -> Option<Result<ServiceStream>> {
        Some(self.listener.accept().map(|(stream, _)| stream))
    }
}
