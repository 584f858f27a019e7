//! A blocking control connection to sald.
//!
//! [`ControlClient`] speaks the protocol of [`sal_control`]: length-prefixed
//! JSON frames over a Unix stream socket, opened with a `Hello` exchange.
//! Responses that hand over a socket carry its file descriptor as
//! `SCM_RIGHTS` ancillary data; every read on the connection therefore goes
//! through `recvmsg` with room for descriptors, so none is ever lost, and
//! received descriptors are close-on-exec.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::time::TimeValLike;
use sal_control::{
    decode_body, encode_frame, frame_len, ControlEvent, Parts, Request, Response, PROTOCOL_VERSION,
};

use crate::error::{Error, Result};

/// How many bytes one `recvmsg` on the control connection asks for.
const READ_CHUNK: usize = 16 * 1024;
/// How many descriptors one `recvmsg` makes room for. sald sends one per
/// frame; room for a few more means a misbehaving server cannot make the
/// kernel drop descriptors silently (`MSG_CTRUNC`).
const MAX_FDS_PER_READ: usize = 4;

/// One response of sald, with the descriptor it carried, if any.
#[derive(Debug)]
pub struct Reply {
    /// The decoded response.
    pub response: Response,
    /// The socket handed over with it (`Response::carries_fd`).
    pub fd: Option<OwnedFd>,
}

/// Bytes and descriptors received on a control connection, not yet decoded.
///
/// Shared by the blocking and the tokio clients: both feed it with
/// [`Inbox::fill`] and take whole frames with [`Inbox::take_reply`].
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    /// Descriptors sald sent that this process had no room for (its
    /// descriptor table was full): the replies that carried them fail
    /// with `EMFILE`.
    lost: usize,
    /// The parts received so far of a long list answer.
    parts: Parts,
}

impl Inbox {
    /// One `recvmsg` on `fd` (with `flags` besides close-on-exec); returns
    /// the number of bytes read, 0 at end of stream. Errors are returned as
    /// they are (`WouldBlock` included), except `EINTR`, which is retried.
    pub(crate) fn fill(&mut self, fd: BorrowedFd<'_>, flags: MsgFlags) -> io::Result<usize> {
        self.fill_with(fd, flags, true)
    }

    /// [`Inbox::fill`], returning `EINTR` (`Interrupted`) to the caller
    /// unless `retry_eintr`.
    fn fill_with(
        &mut self,
        fd: BorrowedFd<'_>,
        flags: MsgFlags,
        retry_eintr: bool,
    ) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let received = recv_with_fds_as(fd, &mut chunk, flags, retry_eintr)?;
        self.fds.extend(received.fds);
        if received.fds_lost {
            self.lost += 1;
        }
        self.buf.extend_from_slice(&chunk[..received.bytes]);
        Ok(received.bytes)
    }

    /// Whether nothing is buffered.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Decodes the next whole response, if it is buffered: one frame, or
    /// for a long list its parts and the answer that ends it, put together
    /// (see [`sal_control::Parts`]).
    pub(crate) fn take_reply(&mut self) -> Result<Option<Reply>> {
        let response = loop {
            let Some(prefix) = self.buf.first_chunk::<4>() else {
                return Ok(None);
            };
            let len = frame_len(*prefix).map_err(|e| Error::Protocol(e.to_string()))?;
            if self.buf.len() < 4 + len {
                return Ok(None);
            }
            let decoded = decode_body::<Response>(&self.buf[4..4 + len]);
            self.buf.drain(..4 + len);
            let response = decoded.map_err(|e| Error::Protocol(e.to_string()))?;
            let taken = self.parts.take(response);
            if let Some(response) = taken.map_err(|e| Error::Protocol(e.to_string()))? {
                break response;
            }
        };
        let fd = if response.carries_fd() {
            match self.fds.pop_front() {
                Some(fd) => Some(fd),
                None if self.lost > 0 => {
                    // The reply's descriptor was dropped for want of room.
                    self.lost -= 1;
                    return Err(Error::Io(io::Error::from_raw_os_error(
                        Errno::EMFILE as i32,
                    )));
                }
                None => {
                    return Err(Error::Protocol(format!(
                        "sald sent {} without a file descriptor",
                        response_name(&response)
                    )))
                }
            }
        } else {
            None
        };
        Ok(Some(Reply { response, fd }))
    }
}

/// What one [`recv_with_fds`] got.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes of data.
    pub(crate) bytes: usize,
    /// The descriptors that came with them, close-on-exec.
    pub(crate) fds: Vec<OwnedFd>,
    /// Descriptors came with them that this process had no room for (its
    /// descriptor table is full): the kernel closed them.
    pub(crate) fds_lost: bool,
    /// The message was longer than the buffer and its end is gone
    /// (`MSG_TRUNC`; only message sockets truncate).
    pub(crate) truncated: bool,
}

/// One `recvmsg` on `fd` into `buf` (with `flags` besides
/// `MSG_CMSG_CLOEXEC`), with room for the descriptors sald may attach: the
/// one way this crate receives descriptors, on the control connection and
/// on accept queues alike. `EINTR` is retried; other errors (`WouldBlock`
/// included) are returned as they are. Room for a few more descriptors
/// than sald ever sends means a misbehaving server cannot make the kernel
/// drop descriptors silently: more than that is `InvalidData`.
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> io::Result<Received> {
    recv_with_fds_as(fd, buf, flags, true)
}

/// [`recv_with_fds`], returning `EINTR` (`Interrupted`) unless `retry_eintr`.
fn recv_with_fds_as(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
    retry_eintr: bool,
) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_READ]);
    let (bytes, raw_fds, ctrunc, truncated) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | flags,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = cmsg {
                            fds.extend(raw);
                        }
                    }
                }
                break (
                    msg.bytes,
                    fds,
                    msg.flags.contains(MsgFlags::MSG_CTRUNC),
                    msg.flags.contains(MsgFlags::MSG_TRUNC),
                );
            }
            Err(Errno::EINTR) if retry_eintr => continue,
            Err(errno) => return Err(errno.into()),
        }
    };
    let fds = raw_fds
        .into_iter()
        // SAFETY: `raw` was just installed in this process's descriptor
        // table by the kernel as SCM_RIGHTS data of this recvmsg; nothing
        // else knows about it, so this is its only owner.
        .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
        // The library's own until the program gets it (the preload shim
        // puts it at the program's number): never at 0-2 meanwhile.
        .map(crate::fd::above_standard_streams)
        .collect();
    // The kernel drops descriptors it cannot install: either this process
    // has no free descriptor, or sald sent more than fit.
    if ctrunc && !table_full(fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sald sent more file descriptors than expected",
        ));
    }
    Ok(Received {
        bytes,
        fds,
        fds_lost: ctrunc,
        truncated,
    })
}

/// Whether this process's descriptor table is full: duplicating `fd` fails
/// with `EMFILE`.
fn table_full(fd: BorrowedFd<'_>) -> bool {
    match nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(crate::fd::LOWEST_OWN),
    ) {
        Ok(dup) => {
            // SAFETY: `dup` was just returned by fcntl and is owned by no one.
            drop(unsafe { OwnedFd::from_raw_fd(dup) });
            false
        }
        Err(errno) => errno == Errno::EMFILE,
    }
}

/// The `type` tag of a response, for messages.
pub(crate) fn response_name(response: &Response) -> &'static str {
    match response {
        Response::Hello { .. } => "hello",
        Response::Ok => "ok",
        Response::Error { .. } => "error",
        Response::Listening { .. } => "listening",
        Response::Relaying { .. } => "relaying",
        Response::Resolved { .. } => "resolved",
        Response::Delivering { .. } => "delivering",
        Response::Accepted { .. } => "accepted",
        Response::Connected { .. } => "connected",
        Response::Adopted { .. } => "adopted",
        Response::DatagramOpened { .. } => "datagram_opened",
        Response::Rules { .. } => "rules",
        Response::Flows { .. } => "flows",
        Response::RulesPart { .. } => "rules_part",
        Response::FlowsPart { .. } => "flows_part",
        Response::Interfaces { .. } => "interfaces",
        Response::Stats { .. } => "stats",
        Response::Event { .. } => "event",
        Response::Applied { .. } => "applied",
        Response::Drained { .. } => "drained",
        Response::Completed { .. } => "completed",
    }
}

/// Waits until `fd` has something to read (or the other end closed), as
/// long as the socket's receive timeout (`SO_RCVTIMEO`, which a caller may
/// set through [`AsFd`]) allows: past it, `WouldBlock`, as a timed-out
/// `recvmsg` says.
///
/// A blocking `recvmsg` would wait as well, but on a unix stream socket it
/// is also woken each time the peer reads what we wrote (the kernel
/// announces write space on the same wait queue, and a reader's wait does
/// not filter events): so every request sald read woke the waiting thread
/// for nothing, a context switch per request. `poll` waits for input only.
/// Called only when a non-blocking read found nothing, that is when the
/// thread is about to sleep anyway, so its two system calls cost little.
fn wait_readable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let limit = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout)?;
    let limit = Duration::from_micros(TimeValLike::num_microseconds(&limit).max(0) as u64);
    let deadline = (!limit.is_zero()).then(|| Instant::now() + limit);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                // Rounded up: a wait cut short by rounding would look like
                // a timeout that has not passed.
                let millis = left.as_micros().div_ceil(1000);
                PollTimeout::try_from(millis.min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => {
                return Err(io::ErrorKind::WouldBlock.into())
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return Ok(());
        }
    }
}

/// Writes whole frames; a connection sald closed is [`Error::Closed`].
fn write_frames(mut stream: &UnixStream, frames: &[u8]) -> Result<()> {
    stream.write_all(frames).map_err(|e| match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Error::Closed,
        _ => Error::Io(e),
    })
}

/// Sends requests on a control connection whose answers another handle
/// reads ([`ControlClient::sender`]).
#[derive(Debug)]
pub struct RequestSender {
    stream: UnixStream,
}

impl RequestSender {
    /// Sends one request (its answer comes to the reading handle).
    pub fn send(&mut self, request: &Request) -> Result<()> {
        write_frames(&self.stream, &request_frame(request)?)
    }
}

impl AsFd for RequestSender {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl IntoRawFd for RequestSender {
    /// Gives up the descriptor without closing it.
    fn into_raw_fd(self) -> RawFd {
        self.stream.into_raw_fd()
    }
}

/// The frame of a request, ready to write.
pub(crate) fn request_frame(request: &Request) -> Result<Vec<u8>> {
    encode_frame(request).map_err(|e| Error::Protocol(e.to_string()))
}

/// The `Hello` a client opens with.
pub(crate) fn hello(client: &str) -> Request {
    Request::Hello {
        version: PROTOCOL_VERSION,
        client: client.to_string(),
    }
}

/// Checks sald's answer to `Hello`; returns its server string.
pub(crate) fn check_hello(reply: Reply) -> Result<String> {
    match reply.response {
        Response::Hello { version, server } if version == PROTOCOL_VERSION => Ok(server),
        Response::Hello { version, server } => Err(Error::VersionMismatch(format!(
            "{server} speaks control protocol version {version}; this client speaks {PROTOCOL_VERSION}"
        ))),
        Response::Error { kind, message } => Err(Error::from_daemon(kind, message)),
        other => Err(Error::unexpected("hello", &other)),
    }
}

/// The client name sent in `Hello` when the caller gives none: the program
/// name and this library's version.
pub fn default_client_name() -> String {
    let program = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "{program} (socket-shim {}, pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

/// A blocking control connection to sald, past the `Hello` exchange.
///
/// Requests are answered in order, one response each; [`ControlClient::request`]
/// sends one and waits for its answer.
#[derive(Debug)]
pub struct ControlClient {
    stream: UnixStream,
    path: PathBuf,
    server: String,
    inbox: Inbox,
    /// sald's answer to our `Hello` has not been read yet
    /// ([`ControlClient::open_with`]): the next response is that answer.
    hello_due: bool,
}

/// The control socket path pinned by [`pin_control_path`], if any.
static PINNED_PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The control socket this process's clients connect to: the path fixed by
/// [`pin_control_path`], else [`sal_control::control_path`]
/// (`SERVAL_CONTROL` as the environment says at each call, else
/// `/run/serval/sald.sock`).
pub fn control_path() -> std::path::PathBuf {
    PINNED_PATH
        .get()
        .cloned()
        .unwrap_or_else(sal_control::control_path)
}

/// Fixes [`control_path`] for the rest of the process's life to what the
/// environment says now. The preload shim calls it when it is loaded:
/// programs such as nginx replace their whole environment before they open
/// their first connection, and the shim must still find the sald that
/// `serval-run` named.
pub fn pin_control_path() {
    let _ = PINNED_PATH.set(sal_control::control_path());
}

impl ControlClient {
    /// Connects to the default control socket ([`control_path`]:
    /// `SERVAL_CONTROL`, else `/run/serval/sald.sock`).
    pub fn connect() -> Result<ControlClient> {
        ControlClient::connect_to(control_path())
    }

    /// Connects to the control socket at `path`.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<ControlClient> {
        ControlClient::connect_as(path, &default_client_name())
    }

    /// Connects to the control socket at `path`, introducing itself as `client`.
    pub fn connect_as(path: impl AsRef<Path>, client: &str) -> Result<ControlClient> {
        let mut control = ControlClient::open(path.as_ref())?;
        control.send(&hello(client))?;
        control.finish_hello()?;
        Ok(control)
    }

    /// Connects to the control socket at `path` and sends `first` right
    /// behind the `Hello`, in one write, without waiting for sald's answer
    /// to it: one round trip less than [`ControlClient::connect_as`]
    /// followed by [`ControlClient::request`] (what a connect costs is
    /// mostly round trips). sald answers requests in order, so the `Hello`
    /// answer comes first; an error response to `first` becomes the
    /// matching typed [`Error`], as with `request`.
    pub fn connect_with(
        path: impl AsRef<Path>,
        client: &str,
        first: &Request,
    ) -> Result<(ControlClient, Reply)> {
        let mut control = ControlClient::open_with(path, client, first)?;
        let reply = control.answer()?;
        Ok((control, reply))
    }

    /// Like [`ControlClient::connect_with`], but returns as soon as the
    /// `Hello` and `first` are written: [`ControlClient::answer`] later
    /// checks sald's `Hello` and gives its answer to `first`. For a caller
    /// that waits for many answers at once (on the connections'
    /// descriptors, say with `epoll`) instead of in one thread each.
    pub fn open_with(
        path: impl AsRef<Path>,
        client: &str,
        first: &Request,
    ) -> Result<ControlClient> {
        let mut control = ControlClient::open(path.as_ref())?;
        let mut frames = request_frame(&hello(client))?;
        frames.extend_from_slice(&request_frame(first)?);
        control.write_frames(&frames)?;
        Ok(control)
    }

    /// A connection past its `Hello` that this process got from elsewhere:
    /// the preload shim's listener connections cross `exec` with their
    /// listener (sald unbinds a listener when its connection closes), and
    /// the new program image takes them up with this. Nothing may be
    /// buffered or due on `fd` (no request waiting for its answer);
    /// `path` is what [`ControlClient::path`] says.
    pub fn inherited(fd: OwnedFd, path: PathBuf) -> ControlClient {
        ControlClient {
            stream: UnixStream::from(fd),
            path,
            server: String::new(),
            inbox: Inbox::default(),
            hello_due: false,
        }
    }

    /// A connection to `path` that has not said `Hello` yet.
    fn open(path: &Path) -> Result<ControlClient> {
        let path = path.to_path_buf();
        let stream =
            UnixStream::connect(&path).map_err(|e| Error::from_connect(e, path.clone()))?;
        // Kept for as long as the connection lives (a listener's, as long
        // as the listener): high in the table, out of the numbers the
        // program opens, closes and reuses ([`crate::fd::out_of_the_way`]).
        let stream = UnixStream::from(crate::fd::out_of_the_way(stream.into()));
        Ok(ControlClient {
            stream,
            path,
            server: String::new(),
            inbox: Inbox::default(),
            hello_due: true,
        })
    }

    /// Reads and checks sald's answer to `Hello`.
    fn finish_hello(&mut self) -> Result<()> {
        let reply = self.recv_frame()?;
        self.server = check_hello(reply)?;
        self.hello_due = false;
        Ok(())
    }

    /// The control socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How sald introduced itself in its `Hello` (empty until that answer
    /// has been read, see [`ControlClient::open_with`]).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one request without waiting for the answer.
    pub fn send(&mut self, request: &Request) -> Result<()> {
        let frame = request_frame(request)?;
        self.write_frames(&frame)
    }

    fn write_frames(&mut self, frames: &[u8]) -> Result<()> {
        write_frames(&self.stream, frames)
    }

    /// A second handle on this connection that only sends requests, for
    /// a program that writes requests in some threads while one thread
    /// reads the answers (a connector connection, see
    /// [`Request::Connector`]). It is a duplicate descriptor of the same
    /// socket.
    pub fn sender(&self) -> Result<RequestSender> {
        Ok(RequestSender {
            stream: self.stream.try_clone().map_err(Error::Io)?,
        })
    }

    /// Waits for the next response, whatever it is (error responses included).
    pub fn recv(&mut self) -> Result<Reply> {
        if self.hello_due {
            self.finish_hello()?;
        }
        self.recv_frame()
    }

    /// The next response on the connection, `Hello` answer included.
    fn recv_frame(&mut self) -> Result<Reply> {
        self.recv_frame_with(true)
    }

    /// [`ControlClient::recv_frame`]: with `polled`, a non-blocking read
    /// first, then a wait for input only (`EINTR` retried); without, plain
    /// blocking reads whose `EINTR` is returned (`Interrupted`).
    fn recv_frame_with(&mut self, polled: bool) -> Result<Reply> {
        loop {
            if let Some(reply) = self.inbox.take_reply()? {
                return Ok(reply);
            }
            let fd = self.stream.as_fd();
            let filled = if polled {
                match self.inbox.fill(fd, MsgFlags::MSG_DONTWAIT) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        wait_readable(fd).and_then(|()| self.inbox.fill(fd, MsgFlags::empty()))
                    }
                    filled => filled,
                }
            } else {
                self.inbox.fill_with(fd, MsgFlags::empty(), false)
            };
            match filled {
                Ok(0) if self.inbox.is_empty() => return Err(Error::Closed),
                Ok(0) => {
                    return Err(Error::Protocol(
                        "sald closed the connection in the middle of a frame".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(Error::Closed),
                Err(e) => return Err(Error::Io(e)),
            }
        }
    }

    /// Waits for the answer to a request already sent, as
    /// [`ControlClient::answer`], in one plain blocking `recvmsg` (no
    /// timeout, no `poll`) whose `EINTR` is returned rather than retried:
    /// [`Error::Io`] of kind `Interrupted`, after which the connection is
    /// intact and a later `answer` (in any thread) gets the answer.
    ///
    /// For a caller that must behave as the system call it stands in for
    /// when a signal arrives: the kernel restarts the `recvmsg` itself
    /// after a handler installed with `SA_RESTART` and interrupts it
    /// otherwise, which `poll` (never restarted) cannot tell apart. The
    /// price is that the sleeping thread may also be woken, inside the
    /// kernel, when sald reads the request (see `wait_readable`); the
    /// receive timeout, if one was set on the connection, ends the wait
    /// with `WouldBlock`.
    pub fn answer_interruptible(&mut self) -> Result<Reply> {
        if self.hello_due {
            let reply = self.recv_frame_with(false)?;
            self.server = check_hello(reply)?;
            self.hello_due = false;
        }
        let reply = self.recv_frame_with(false)?;
        match reply.response {
            Response::Error { kind, message } => Err(Error::from_daemon(kind, message)),
            _ => Ok(reply),
        }
    }

    /// Sends `request` and waits for its answer; an error response becomes
    /// the matching typed [`Error`].
    pub fn request(&mut self, request: &Request) -> Result<Reply> {
        self.send(request)?;
        self.answer()
    }

    /// Waits for the answer to a request already sent; an error response
    /// becomes the matching typed [`Error`].
    pub fn answer(&mut self) -> Result<Reply> {
        let reply = self.recv()?;
        match reply.response {
            Response::Error { kind, message } => Err(Error::from_daemon(kind, message)),
            _ => Ok(reply),
        }
    }

    /// Sends `request` with `fd` riding on its first byte (`SCM_RIGHTS`)
    /// and waits for its answer, as [`ControlClient::request`]: for a
    /// request that hands sald a socket ([`Request::Relay`], with the
    /// program's UDP socket). sald gets a duplicate; `fd` stays ours.
    pub fn request_with_fd(&mut self, request: &Request, fd: BorrowedFd<'_>) -> Result<Reply> {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let frame = request_frame(request)?;
        let fds = [fd.as_raw_fd()];
        let sent = loop {
            let sent = sendmsg::<()>(
                self.stream.as_raw_fd(),
                &[io::IoSlice::new(&frame)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            );
            match sent {
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(Error::Closed),
                Err(errno) => return Err(Error::Io(errno.into())),
                Ok(sent) => break sent,
            }
        };
        self.write_frames(&frame[sent..])?;
        self.answer()
    }

    /// Sends `request` and expects a plain `Ok`.
    pub fn request_ok(&mut self, request: &Request) -> Result<()> {
        expect_ok(self.request(request)?)
    }

    /// Turns this connection into a stream of [`ControlEvent`]s (`Subscribe`).
    pub fn subscribe(mut self) -> Result<Events> {
        self.send(&Request::Subscribe)?;
        Ok(Events { control: self })
    }
}

/// A reply that must be a plain `Ok` (the request's error responses are
/// already errors by now).
pub(crate) fn expect_ok(reply: Reply) -> Result<()> {
    match reply.response {
        Response::Ok => Ok(()),
        other => Err(Error::unexpected("a request expecting ok", &other)),
    }
}

impl AsFd for ControlClient {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl IntoRawFd for ControlClient {
    /// Gives up the connection's descriptor without closing it (the caller
    /// owns it now; what was buffered is dropped).
    fn into_raw_fd(self) -> RawFd {
        self.stream.into_raw_fd()
    }
}

/// Events pushed by sald after `Subscribe`; see [`ControlClient::subscribe`].
#[derive(Debug)]
pub struct Events {
    control: ControlClient,
}

impl Events {
    /// Waits for the next event. A plain `Ok` acknowledging the subscription
    /// is skipped; an error response ends the subscription with that error.
    pub fn next_event(&mut self) -> Result<ControlEvent> {
        loop {
            let reply = self.control.recv()?;
            match reply.response {
                Response::Event { event } => return Ok(event),
                Response::Ok => continue,
                Response::Error { kind, message } => return Err(Error::from_daemon(kind, message)),
                other => return Err(Error::unexpected("subscribe", &other)),
            }
        }
    }
}

impl Iterator for Events {
    type Item = Result<ControlEvent>;

    /// The next event; `None` once sald closes the connection.
    fn next(&mut self) -> Option<Result<ControlEvent>> {
        match self.next_event() {
            Err(Error::Closed) => None,
            other => Some(other),
        }
    }
}
