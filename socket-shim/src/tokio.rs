//! Async equivalents of the blocking API, for the tokio runtime (cargo
//! feature `tokio`, on by default).
//!
//! The control connection is non-blocking and driven by tokio's reactor, so
//! waiting for a flow ([`AsyncServiceListener::accept`]) holds no thread.
//! Every constructor must run inside a tokio runtime with I/O enabled.
//!
//! Cancellation: dropping an `accept` future loses no flow: a flow is
//! taken from the listener's accept queue only by the `recvmsg` that
//! returns it, so one left there is the next `accept`'s.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};
use sal::proto::{DatagramPeer, FlowInfo};
use sal::table::ListenerId;
use sal::wire::TransportProtocol;
use sal::{FlowId, ServiceId, ServicePrefix};
use sal_control::{DatagramFrame, Request, Response};

use crate::client::control_path;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

use crate::accept_queue;
use crate::client::{
    check_hello, default_client_name, expect_ok, hello, request_frame, Inbox, Reply,
};
use crate::connector;
use crate::datagram::{check_size, decode_received, opened_from_reply, RECEIVED_HEADER_MAX};
use crate::error::{Error, Result};
use crate::reset::ResetWatch;
use crate::stream::{connect_request, flow_from_reply, listen_request, listener_from_reply};
use crate::ServiceStream;

/// A non-blocking control connection to sald, past the `Hello` exchange.
///
/// Cancel-safe: a request whose future was dropped still goes out whole,
/// and its answer is discarded by the next [`AsyncControlClient::request`].
#[derive(Debug)]
pub struct AsyncControlClient {
    stream: UnixStream,
    path: PathBuf,
    server: String,
    inbox: Inbox,
    /// Frame bytes queued but not yet written.
    outbox: Vec<u8>,
    /// Requests sent (or queued) whose answers have not been read yet.
    unanswered: usize,
}

impl AsyncControlClient {
    /// Connects to the default control socket (`SERVAL_CONTROL`, else
    /// `/run/serval/sald.sock`).
    pub async fn connect() -> Result<AsyncControlClient> {
        AsyncControlClient::connect_to(control_path()).await
    }

    /// Connects to the control socket at `path`.
    pub async fn connect_to(path: impl AsRef<Path>) -> Result<AsyncControlClient> {
        AsyncControlClient::connect_as(path, &default_client_name()).await
    }

    /// Connects to the control socket at `path`, introducing itself as `client`.
    pub async fn connect_as(path: impl AsRef<Path>, client: &str) -> Result<AsyncControlClient> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|e| Error::from_connect(e, path.clone()))?;
        let mut control = AsyncControlClient {
            stream,
            path,
            server: String::new(),
            inbox: Inbox::default(),
            outbox: Vec::new(),
            unanswered: 0,
        };
        control.queue(&hello(client))?;
        let reply = control.next_reply().await?;
        control.server = check_hello(reply)?;
        Ok(control)
    }

    /// The control socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How sald introduced itself in its `Hello`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends `request` and waits for its answer; an error response becomes
    /// the matching typed [`Error`]. Answers of earlier, cancelled requests
    /// are read and dropped first.
    pub async fn request(&mut self, request: &Request) -> Result<Reply> {
        while self.unanswered > 0 {
            self.next_reply().await?;
        }
        self.queue(request)?;
        self.answer().await
    }

    /// Sends `request` and expects a plain `Ok`.
    pub async fn request_ok(&mut self, request: &Request) -> Result<()> {
        expect_ok(self.request(request).await?)
    }

    /// Waits for the answer of the one outstanding request.
    async fn answer(&mut self) -> Result<Reply> {
        let reply = self.next_reply().await?;
        match reply.response {
            Response::Error { kind, message } => Err(Error::from_daemon(kind, message)),
            _ => Ok(reply),
        }
    }

    fn queue(&mut self, request: &Request) -> Result<()> {
        let frame = request_frame(request)?;
        self.outbox.extend_from_slice(&frame);
        self.unanswered += 1;
        Ok(())
    }

    /// Writes what is queued, then reads the next response.
    async fn next_reply(&mut self) -> Result<Reply> {
        while !self.outbox.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(&self.outbox) {
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(Error::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            if let Some(reply) = self.inbox.take_reply()? {
                self.unanswered = self.unanswered.saturating_sub(1);
                return Ok(reply);
            }
            let inbox = &mut self.inbox;
            let stream = &self.stream;
            let read = stream
                .async_io(Interest::READABLE, || {
                    inbox.fill(stream.as_fd(), MsgFlags::empty())
                })
                .await;
            match read {
                Ok(0) if self.inbox.is_empty() => return Err(Error::Closed),
                Ok(0) => {
                    return Err(Error::Protocol(
                        "sald closed the connection in the middle of a frame".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(Error::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for AsyncControlClient {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// Wraps a flow socket for tokio.
fn tokio_stream(socket: std::os::unix::net::UnixStream) -> Result<UnixStream> {
    socket.set_nonblocking(true)?;
    Ok(UnixStream::from_std(socket)?)
}

/// An established stream flow, for tokio: `AsyncRead` + `AsyncWrite`.
///
/// Reading returns end of file once the peer has half-closed;
/// `AsyncWriteExt::shutdown` (or [`AsyncServiceStream::shutdown_write`])
/// half-closes this side. A flow that was reset reads what had arrived,
/// then `ConnectionReset` once (while this side has not shut its writing
/// down; see [`crate::reset`]; not through [`AsyncServiceStream::split`]'s
/// halves, which read the socket itself), then end of file.
#[derive(Debug)]
pub struct AsyncServiceStream {
    socket: UnixStream,
    info: FlowInfo,
    reset: Arc<ResetWatch>,
}

impl AsyncServiceStream {
    /// Opens a stream flow to `service` through the default control socket.
    ///
    /// The request goes out on this process's shared connector connection
    /// to sald (see the `connector` module): one request frame and no
    /// round trip before it, however many connects are in flight. Works on
    /// any tokio runtime. Cancel-safe: if the future is dropped before sald
    /// answers, the flow is closed when it is handed over.
    pub async fn connect(service: ServiceId) -> Result<AsyncServiceStream> {
        AsyncServiceStream::connect_default(service, None).await
    }

    /// Like [`AsyncServiceStream::connect`], giving up after `timeout`
    /// (sald times the connect and answers [`Error::TimedOut`]).
    pub async fn connect_timeout(
        service: ServiceId,
        timeout: Duration,
    ) -> Result<AsyncServiceStream> {
        AsyncServiceStream::connect_default(service, Some(timeout)).await
    }

    async fn connect_default(
        service: ServiceId,
        timeout: Option<Duration>,
    ) -> Result<AsyncServiceStream> {
        let (info, fd) =
            connector::connect_async(service, TransportProtocol::Stream, timeout).await?;
        AsyncServiceStream::from_parts(info, fd)
    }

    /// A stream over a flow socket handed over by sald; must run inside a
    /// tokio runtime.
    fn from_parts(info: FlowInfo, fd: OwnedFd) -> Result<AsyncServiceStream> {
        Ok(AsyncServiceStream {
            socket: tokio_stream(fd.into())?,
            info,
            reset: Arc::default(),
        })
    }

    /// Opens a stream flow to `service` over `control`, which is closed once
    /// the flow is handed over.
    pub async fn connect_via(
        mut control: AsyncControlClient,
        service: ServiceId,
        timeout: Option<Duration>,
    ) -> Result<AsyncServiceStream> {
        let reply = control
            .request(&connect_request(
                service,
                TransportProtocol::Stream,
                timeout,
            ))
            .await?;
        let (info, fd) = flow_from_reply("connect", reply)?;
        AsyncServiceStream::from_parts(info, fd)
    }

    /// Converts a blocking stream; must run inside a tokio runtime.
    pub fn from_std(stream: ServiceStream) -> Result<AsyncServiceStream> {
        let (socket, info, reset) = stream.into_watched_parts();
        Ok(AsyncServiceStream {
            socket: tokio_stream(socket)?,
            info,
            reset,
        })
    }

    /// The flow as sald described it when it was handed over.
    pub fn flow_info(&self) -> &FlowInfo {
        &self.info
    }

    /// This end's flow ID.
    pub fn flow_id(&self) -> FlowId {
        self.info.flow
    }

    /// Half-closes the flow: the peer reads end of file; reading goes on.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.reset.write_shut();
        nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .map_err(io::Error::from)
    }

    /// The underlying tokio socket.
    pub fn get_ref(&self) -> &UnixStream {
        &self.socket
    }

    /// Splits into a read half and a write half usable from two tasks.
    pub fn split(
        &mut self,
    ) -> (
        tokio::net::unix::ReadHalf<'_>,
        tokio::net::unix::WriteHalf<'_>,
    ) {
        self.socket.split()
    }
}

impl AsyncRead for AsyncServiceStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut self.socket).poll_read(cx, buf));
        if read.is_ok() && buf.filled().len() == before && buf.remaining() > 0 {
            self.reset.end_of_file(self.socket.as_fd())?;
        }
        Poll::Ready(read)
    }
}

impl AsyncWrite for AsyncServiceStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    /// Half-closes the flow (the peer reads end of file).
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.reset.write_shut();
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }
}

impl AsFd for AsyncServiceStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for AsyncServiceStream {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// A bound service prefix that accepts stream flows, for tokio.
///
/// Flows come through the listener's accept queue, as for
/// [`crate::ServiceListener`]: any number of tasks may accept at once.
/// Dropping it closes its control connection, which unbinds the prefix.
#[derive(Debug)]
pub struct AsyncServiceListener {
    /// Kept for the listener's lifetime: closing it unbinds the prefix.
    /// Behind a lock so that `drain` takes `&self` as `accept` does.
    control: tokio::sync::Mutex<AsyncControlClient>,
    queue: AsyncFd<OwnedFd>,
    listener: ListenerId,
    prefix: ServicePrefix,
}

impl AsyncServiceListener {
    /// Binds `prefix` (or one exact service ID) through the default control socket.
    pub async fn bind(
        prefix: impl Into<ServicePrefix>,
        backlog: u32,
    ) -> Result<AsyncServiceListener> {
        AsyncServiceListener::bind_via(AsyncControlClient::connect().await?, prefix, backlog).await
    }

    /// Binds `prefix` over `control`, which the listener owns from now on.
    pub async fn bind_via(
        mut control: AsyncControlClient,
        prefix: impl Into<ServicePrefix>,
        backlog: u32,
    ) -> Result<AsyncServiceListener> {
        let prefix = prefix.into();
        let request = listen_request(prefix, TransportProtocol::Stream, backlog);
        let reply = control.request(&request).await?;
        let (listener, _) = listener_from_reply(reply)?;
        let reply = control
            .request(&accept_queue::deliver_request(listener))
            .await?;
        let queue = registered(accept_queue::queue_from_reply(reply)?)?;
        Ok(AsyncServiceListener {
            control: tokio::sync::Mutex::new(control),
            queue,
            listener,
            prefix,
        })
    }

    /// The prefix this listener registered.
    pub fn prefix(&self) -> ServicePrefix {
        self.prefix
    }

    /// sald's handle of this listener.
    pub fn listener_id(&self) -> ListenerId {
        self.listener
    }

    /// Waits for the next established flow; fails as
    /// [`crate::ServiceListener::accept`] does. Cancel-safe: a flow is
    /// taken only by the `recvmsg` that returns it, so dropping this
    /// future leaves every flow to the next call.
    pub async fn accept(&self) -> Result<(AsyncServiceStream, FlowInfo)> {
        let (info, fd) = self
            .queue
            .async_io(Interest::READABLE, |queue| {
                accept_queue::take(queue.as_fd(), MsgFlags::empty())
            })
            .await??;
        Ok((AsyncServiceStream::from_parts(info.clone(), fd)?, info))
    }

    /// Takes the next established flow if there is one, without waiting.
    /// Like every constructor of an [`AsyncServiceStream`], it registers
    /// the flow with the current tokio runtime, so call it inside one.
    pub fn try_accept(&self) -> Result<Option<(AsyncServiceStream, FlowInfo)>> {
        match accept_queue::try_take(self.queue.get_ref().as_fd())? {
            Some((info, fd)) => Ok(Some((
                AsyncServiceStream::from_parts(info.clone(), fd)?,
                info,
            ))),
            None => Ok(None),
        }
    }

    /// Drains the listener, as [`crate::ServiceListener::drain`]: the
    /// prefix is unregistered, the flows it admitted can still be
    /// accepted, and the answer is how many are not accepted yet. Tasks
    /// waiting in `accept` meanwhile are not in its way.
    pub async fn drain(&self) -> Result<u32> {
        let reply = self
            .control
            .lock()
            .await
            .request(&accept_queue::drain_request(self.prefix))
            .await?;
        accept_queue::not_accepted(reply)
    }

    /// Unbinds the prefix now (dropping the listener does the same);
    /// flows still queued are closed.
    pub async fn close(self) -> Result<()> {
        let listener = self.listener;
        self.control
            .into_inner()
            .request_ok(&Request::CloseListener { listener })
            .await
    }
}

/// A socket handed over by sald, non-blocking and registered with tokio's
/// reactor.
fn registered(socket: OwnedFd) -> Result<AsyncFd<OwnedFd>> {
    nix::fcntl::fcntl(
        socket.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    // SAFETY: an `OwnedFd` is a valid, open descriptor that stays open
    // and returns the same number from `as_raw_fd` until it is dropped,
    // which happens only when the `AsyncFd` owning it is.
    Ok(unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?)
}

/// A datagram socket of the SAL, for tokio; see [`crate::ServiceDatagram`].
#[derive(Debug)]
pub struct AsyncServiceDatagram {
    socket: AsyncFd<OwnedFd>,
    id: FlowId,
    prefix: Option<ServicePrefix>,
    /// Kept for bound sockets: closing it would unbind the prefix.
    _control: Option<AsyncControlClient>,
}

impl AsyncServiceDatagram {
    /// Opens an unbound datagram socket through the default control socket.
    pub async fn open() -> Result<AsyncServiceDatagram> {
        AsyncServiceDatagram::open_via(AsyncControlClient::connect().await?).await
    }

    /// Opens an unbound datagram socket over `control`, which is closed once
    /// the socket is handed over.
    pub async fn open_via(mut control: AsyncControlClient) -> Result<AsyncServiceDatagram> {
        let reply = control.request(&Request::OpenDatagram).await?;
        let (id, socket) = opened_from_reply(reply)?;
        drop(control);
        AsyncServiceDatagram::new(socket, id, None, None)
    }

    /// Binds `prefix` for datagrams through the default control socket.
    pub async fn bind(prefix: impl Into<ServicePrefix>) -> Result<AsyncServiceDatagram> {
        AsyncServiceDatagram::bind_via(AsyncControlClient::connect().await?, prefix).await
    }

    /// Binds `prefix` for datagrams over `control`, which it keeps: closing
    /// it (dropping the socket) unbinds the prefix.
    pub async fn bind_via(
        mut control: AsyncControlClient,
        prefix: impl Into<ServicePrefix>,
    ) -> Result<AsyncServiceDatagram> {
        let prefix = prefix.into();
        let request = listen_request(prefix, TransportProtocol::Datagram, 16);
        let reply = control.request(&request).await?;
        let (_, socket) = listener_from_reply(reply)?;
        let (id, socket) = socket.ok_or_else(|| {
            Error::Protocol("sald bound a datagram prefix without handing over its socket".into())
        })?;
        AsyncServiceDatagram::new(socket, id, Some(prefix), Some(control))
    }

    fn new(
        socket: OwnedFd,
        id: FlowId,
        prefix: Option<ServicePrefix>,
        control: Option<AsyncControlClient>,
    ) -> Result<AsyncServiceDatagram> {
        let socket = registered(socket)?;
        Ok(AsyncServiceDatagram {
            socket,
            id,
            prefix,
            _control: control,
        })
    }

    /// This socket's flow ID.
    pub fn socket_id(&self) -> FlowId {
        self.id
    }

    /// The prefix this socket is bound to, if any.
    pub fn prefix(&self) -> Option<ServicePrefix> {
        self.prefix
    }

    /// Sends one datagram to `service`. Returns the payload length; payloads
    /// over [`MAX_DATAGRAM`](crate::datagram::MAX_DATAGRAM) bytes are refused.
    pub async fn send_to(&self, service: ServiceId, data: &[u8]) -> Result<usize> {
        check_size(data)?;
        self.send_frame(DatagramFrame::SendTo {
            service,
            via: None,
            data: data.to_vec(),
        })
        .await?;
        Ok(data.len())
    }

    /// Sends one datagram back to `peer`. Returns the payload length; payloads
    /// over [`MAX_DATAGRAM`](crate::datagram::MAX_DATAGRAM) bytes are refused.
    pub async fn send_reply(&self, peer: DatagramPeer, data: &[u8]) -> Result<usize> {
        check_size(data)?;
        self.send_frame(DatagramFrame::Reply {
            peer,
            data: data.to_vec(),
        })
        .await?;
        Ok(data.len())
    }

    async fn send_frame(&self, frame: DatagramFrame) -> Result<()> {
        let bytes = frame.encode();
        let sent = self
            .socket
            .async_io(Interest::WRITABLE, |fd| {
                send(fd.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            })
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::EPIPE as i32) => Err(Error::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits for the next datagram; see [`crate::ServiceDatagram::recv_from`].
    pub async fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> Result<(usize, DatagramPeer, Option<ServiceId>)> {
        let mut message = vec![0u8; buf.len() + RECEIVED_HEADER_MAX];
        let len = self
            .socket
            .async_io(Interest::READABLE, |fd| {
                recv(fd.as_raw_fd(), &mut message, MsgFlags::empty()).map_err(io::Error::from)
            })
            .await?;
        if len == 0 {
            return Err(Error::Closed);
        }
        decode_received(&message[..len], buf)
    }
}
