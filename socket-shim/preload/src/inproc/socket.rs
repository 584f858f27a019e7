//! One in-process socket as the program sees it: the engine's stream or
//! listener, and what the socket layer keeps beside it (`O_NONBLOCK`,
//! timeouts, options, names, whether a background connect's success was
//! told). Every socket call on an in-process number lands here.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use libc::c_int;
use sal::proto::{FlowExport, HostError, NotExportable};
use sal::ServicePrefix;
use sal_inproc::{Ends, EndsSignal, Error, Interruptible, Listener, Mode, Stream};
use socket_shim::ControlClient;

use crate::addr::{self, SockAddr};
use crate::ops::Res;
use crate::timeout::{self, Timeout};

/// The engine's object behind a socket.
pub(crate) enum Object {
    /// A connected (or connecting) stream.
    Stream(Stream),
    /// A listener, with the control connection that keeps sald relaying
    /// its prefix here (closing it ends the relay).
    Listener {
        /// The engine's listener.
        listener: Listener,
        /// sald's relay of the prefix, ended when this closes (or shut
        /// down at the hand-over to sald, see `handover`).
        relay: ControlClient,
        /// The prefix it listens on, and its backlog (the last `listen`'s):
        /// what a daemon-path listener that takes over takes.
        prefix: ServicePrefix,
        backlog: AtomicUsize,
    },
}

impl Object {
    /// The engine's readable eventfd of the object (made now if need be).
    fn readable_fd(&self) -> Res<RawFd> {
        let fd = match self {
            Object::Stream(stream) => stream.readable_fd(),
            Object::Listener { listener, .. } => listener.readable_fd(),
        };
        fd.map(|fd| fd.as_raw_fd()).map_err(|error| errno(&error))
    }
}

/// Whether `error` is a connect's own failure (not a reset or a hand-over
/// of the flow while it was opening).
fn connect_failure(error: &Error) -> bool {
    matches!(error, Error::Refused | Error::NoRoute | Error::TimedOut)
}

/// An in-process socket, shared by the numbers that copy it.
pub(crate) struct Socket {
    /// Always there until dropped; leaked, not dropped, in a forked child
    /// (see [`Socket::owner`]).
    object: Option<Object>,
    /// The process whose engine holds the object: in any other (a forked
    /// child) the socket is reset and the object never touched.
    owner: u32,
    /// The family the program made the socket with.
    family: c_int,
    /// `getsockname`'s answer.
    local: SockAddr,
    /// `getpeername`'s answer (none for a listener).
    peer: Option<SockAddr>,
    /// The socket's `O_NONBLOCK`, kept here: the eventfd's own flag is
    /// the engine's.
    nonblock: AtomicBool,
    /// Options the program set, by level and name, for `getsockopt`.
    options: Mutex<Vec<(c_int, c_int, Vec<u8>)>>,
    /// A non-blocking connect returned `EINPROGRESS` and no `connect`
    /// has said it completed: the next one returns 0, as TCP's.
    untold: AtomicBool,
    /// A `connect` saw the connect fail (reported its error, or
    /// `ECONNABORTED` once another call had): the next connects anew, as
    /// TCP's socket, unconnected from then on.
    unconnected: AtomicBool,
    /// A forked child closed its copy of the listener's relay connection
    /// ([`Socket::forked`]).
    relay_closed: AtomicBool,
    /// Where the stream is in the hand-over to sald (`handover`):
    /// [`KEPT`], [`HANDING`], [`HANDED`] or [`DISCONNECTED`].
    handover: AtomicU8,
    /// The stream was still connecting at the last `fork` (so not handed
    /// over): a forked child's copy is not connected (`ENOTCONN`) rather
    /// than reset.
    connecting_at_fork: AtomicBool,
    /// Its last export failed only because its buffers held more than
    /// the export may carry (`handover::before_exec` waits for those).
    too_full: AtomicBool,
    /// The listener was shut down (`shutdown`): stopped for good, it is
    /// not handed over to sald, which would listen again.
    stopped: AtomicBool,
}

/// The stream is the engine's ([`Socket::handover`]).
const KEPT: u8 = 0;
/// Its flow is being exported and handed to sald: a call that fails now
/// waits for the outcome ([`Socket::handed_over`]).
const HANDING: u8 = 1;
/// Its flow went to sald: the program's numbers are sald's socketpair end.
const HANDED: u8 = 2;
/// Reset by a `connect` to `AF_UNSPEC`: the program's numbers are an
/// unconnected daemon-path socket.
const DISCONNECTED: u8 = 3;

/// Where a socket that a failed call met went (see [`Socket::moved`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// Nowhere: the failure is the call's own.
    Not,
    /// To sald: the call is made again on the plain path.
    ToSald,
    /// Disconnected by `AF_UNSPEC` while the call waited: `EPIPE`.
    Disconnected,
    /// Back in the engine (not exported, or its flow taken back after
    /// sald refused it): the call is made again.
    Back,
}

/// `ioctl`'s request for the bytes a stream has not had acknowledged
/// (`TIOCOUTQ`, as `linux/sockios.h` names it for sockets).
pub(crate) const SIOCOUTQ: libc::c_ulong = libc::TIOCOUTQ as libc::c_ulong;
/// `ioctl`'s request for the bytes a stream has not sent yet
/// (`linux/sockios.h`).
pub(crate) const SIOCOUTQNSD: libc::c_ulong = 0x894B;
/// `ioctl`'s question whether a read is at the urgent mark
/// (`asm/sockios.h`).
pub(crate) const SIOCATMARK: libc::c_ulong = 0x8905;

/// `SO_SNDBUF` or `SO_RCVBUF` as Linux's TCP answers it: its default
/// (`tcp_wmem[1]`, `tcp_rmem[1]`) until the program sets one, then twice
/// what it set (the kernel's bookkeeping share), within Linux's bounds.
/// The engine sizes its buffers itself (they follow use); a program
/// that sizes its own reads by the answer must not be told 0.
fn buffer_size(name: c_int, set: Option<&[u8]>) -> c_int {
    const WMEM_DEFAULT: c_int = 16_384;
    const RMEM_DEFAULT: c_int = 131_072;
    const MEM_MAX: c_int = 212_992;
    const SNDBUF_MIN: c_int = 4_608;
    const RCVBUF_MIN: c_int = 2_304;
    let send = name == libc::SO_SNDBUF;
    let set = set.and_then(option_int);
    match (set, send) {
        (None, true) => WMEM_DEFAULT,
        (None, false) => RMEM_DEFAULT,
        (Some(value), true) => (value.clamp(0, MEM_MAX) * 2).max(SNDBUF_MIN),
        (Some(value), false) => (value.clamp(0, MEM_MAX) * 2).max(RCVBUF_MIN),
    }
}

/// The int an option's value starts with (`None` if it is shorter).
fn option_int(value: &[u8]) -> Option<c_int> {
    Some(c_int::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

/// The errno of an engine error, as the daemon path reports the same
/// failure: no route to a service is `EHOSTUNREACH` there (the engine
/// says `ENETUNREACH`).
pub(crate) fn errno(error: &Error) -> c_int {
    match error {
        Error::NoRoute => libc::EHOSTUNREACH,
        error => error.errno(),
    }
}

/// A `listen` backlog as the engine takes it: as Linux, a negative one
/// (or one past it) is `somaxconn`, 4096.
pub(crate) fn somaxconn_clamped(backlog: c_int) -> usize {
    usize::try_from(backlog).map_or(4096, |b| b.clamp(1, 4096))
}

/// Lets a signal interrupt a call that waits in `mode`, as it would
/// TCP's: with a timeout, any handler's (`SA_RESTART` or not), and a stop
/// and continue of the process (`sal_inproc::Interruptible::timed`);
/// without one, while some handler without `SA_RESTART` is installed (the
/// engine cannot tell which signal came: a handler with it then
/// interrupts too, where the kernel would restart the call). `None`: the
/// call goes on through signals, as a restarted one.
pub(crate) fn interruptible(mode: Mode) -> Option<Interruptible> {
    match mode {
        Mode::NonBlocking => None,
        Mode::Until(_) => Interruptible::timed().ok(),
        Mode::Blocking => crate::signals::may_interrupt()
            .then(Interruptible::new)
            .and_then(Result::ok),
    }
}

impl Socket {
    /// A socket over `object`, made by this process.
    pub(crate) fn new(
        object: Object,
        family: c_int,
        local: SockAddr,
        peer: Option<SockAddr>,
        nonblock: bool,
        options: Vec<(c_int, c_int, Vec<u8>)>,
    ) -> Socket {
        Socket {
            object: Some(object),
            owner: super::registry::pid() as u32,
            family,
            local,
            peer,
            nonblock: AtomicBool::new(nonblock),
            options: Mutex::new(options),
            untold: AtomicBool::new(false),
            unconnected: AtomicBool::new(false),
            relay_closed: AtomicBool::new(false),
            handover: AtomicU8::new(KEPT),
            connecting_at_fork: AtomicBool::new(false),
            too_full: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    /// The object, unless this process is not the one that made it (a
    /// forked child: `ECONNRESET`, or `ENOTCONN` for a stream that was
    /// still connecting at the `fork`).
    fn object(&self) -> Res<&Object> {
        match &self.object {
            Some(object) if self.owner == super::registry::pid() as u32 => Ok(object),
            _ if self.connecting_at_fork.load(Ordering::Relaxed) => Err(libc::ENOTCONN),
            _ => Err(libc::ECONNRESET),
        }
    }

    /// The stream (`ENOTCONN` on a listener).
    fn stream(&self) -> Res<&Stream> {
        match self.object()? {
            Object::Stream(stream) => Ok(stream),
            Object::Listener { .. } => Err(libc::ENOTCONN),
        }
    }

    /// Whether the socket is the listener of a process that is not this
    /// one, or a stream there: reset either way.
    pub(crate) fn inherited(&self) -> bool {
        self.owner != super::registry::pid() as u32
    }

    /// Whether the socket listens.
    pub(crate) fn listens(&self) -> bool {
        matches!(self.object, Some(Object::Listener { .. }))
    }

    /// The engine's writable eventfd of a stream of this process (for
    /// `poll`'s `POLLOUT`), made at the first call: valid while the
    /// socket is held. `None` for anything else.
    pub(crate) fn writable_fd(&self) -> Res<Option<RawFd>> {
        match self.object() {
            Ok(Object::Stream(stream)) => match stream.writable_fd() {
                Ok(fd) => Ok(Some(fd.as_raw_fd())),
                Err(error) => Err(errno(&error)),
            },
            _ => Ok(None),
        }
    }

    /// The engine's readable eventfd of this process's object, to
    /// duplicate at the program's number.
    pub(crate) fn readable_fd(&self) -> Res<RawFd> {
        self.object()?.readable_fd()
    }

    /// The engine's readable eventfd of the object whoever made it (a
    /// forked child's copy of it included): what the program's numbers
    /// for this socket are copies of (see `registry`), valid while the
    /// socket is held.
    pub(crate) fn identity_fd(&self) -> Option<RawFd> {
        self.object.as_ref()?.readable_fd().ok()
    }

    /// In a forked child, right after `fork`: a listener's copy of its
    /// relay connection is closed (once, whatever the later forks), so
    /// that sald stops relaying once the parent's closes too (the
    /// connection itself is leaked with the object).
    pub(crate) fn forked(&self) {
        if let Some(Object::Listener { relay, .. }) = &self.object {
            if !self.relay_closed.swap(true, Ordering::Relaxed) {
                // SAFETY: no pointers; the child's copy of the relay's
                // descriptor, which nothing in the child uses again.
                unsafe { crate::real::close(relay.as_fd().as_raw_fd()) };
            }
        }
    }

    /// Takes the stream's flow out of the engine for sald (`handover`),
    /// if it is this process's, established and open both ways, its
    /// buffers hold `most` bytes at most, and its control exchange
    /// settles within `patience`; `None` leaves it in-process. Calls that
    /// fail meanwhile wait for the hand-over's end ([`Socket::handed_over`]).
    pub(crate) fn export(&self, most: usize, patience: Duration) -> Option<FlowExport> {
        let Ok(Object::Stream(stream)) = self.object() else {
            return None;
        };
        self.handover.store(HANDING, Ordering::SeqCst);
        let export = stream.export(most, patience);
        let connecting = matches!(
            export,
            Err(Error::Host(HostError::NotExportable(
                NotExportable::NotEstablished
            )))
        );
        self.connecting_at_fork.store(connecting, Ordering::Relaxed);
        let too_full = matches!(
            export,
            Err(Error::Host(HostError::NotExportable(
                NotExportable::Buffered { .. }
            )))
        );
        self.too_full.store(too_full, Ordering::Relaxed);
        match export {
            Ok(export) => Some(export),
            Err(_) => {
                self.handover.store(KEPT, Ordering::SeqCst);
                None
            }
        }
    }

    /// Takes back a flow [`Socket::export`] took out and sald refused
    /// (`Stream::restore`); the stream reads as reset if that fails too.
    pub(crate) fn restore(&self, export: FlowExport) {
        if let Ok(Object::Stream(stream)) = self.object() {
            let _ = stream.restore(export);
        }
    }

    /// Stops the listener for its hand-over to sald (`handover`): the
    /// engine's listener stops (flows still queued are reset; a thread in
    /// `accept` wakes and, seeing the hand-over, goes to the daemon path),
    /// and the relay's connection is shut down, so that sald stops
    /// relaying the prefix here and lets a listener of its own have it.
    /// The prefix and backlog to listen with; `None`: not a listener of
    /// this process.
    pub(crate) fn stop_for_handover(&self) -> Option<(ServicePrefix, usize)> {
        let Ok(Object::Listener {
            listener,
            relay,
            prefix,
            backlog,
        }) = self.object()
        else {
            return None;
        };
        self.handover.store(HANDING, Ordering::SeqCst);
        listener.stop();
        // SAFETY: no pointers; the relay's descriptor, which its
        // connection keeps owning (and closes when dropped).
        unsafe { crate::real::shutdown(relay.as_fd().as_raw_fd(), libc::SHUT_RDWR) };
        Some((*prefix, backlog.load(Ordering::Relaxed)))
    }

    /// Whether its last export failed only for its buffers' size.
    pub(crate) fn too_full(&self) -> bool {
        self.too_full.load(Ordering::Relaxed)
    }

    /// The stream's queues (`None`: not a stream of this process).
    pub(crate) fn queues(&self) -> Option<sal::proto::StreamQueues> {
        let Ok(Object::Stream(stream)) = self.object() else {
            return None;
        };
        stream.queues().ok()
    }

    /// Resets the stream's flow (RST to the peer) before an `exec` it
    /// cannot cross (`handover::before_exec`): its peer hears of it now
    /// rather than time out. Nothing for a listener.
    pub(crate) fn abort_before_exec(&self) {
        if let Ok(Object::Stream(stream)) = self.object() {
            let _ = stream.abort();
        }
    }

    /// Resets the stream's flow for a `connect` to `AF_UNSPEC` that could
    /// not hand it to sald (still connecting, or closing): calls that fail
    /// meanwhile wait for the numbers to become the daemon path's
    /// (`handover::disconnect_at`). False: not a stream of this process.
    pub(crate) fn abort_for_disconnect(&self) -> bool {
        let Ok(Object::Stream(stream)) = self.object() else {
            return false;
        };
        self.handover.store(HANDING, Ordering::SeqCst);
        let _ = stream.abort();
        true
    }

    /// The socket left the engine (`left`: its numbers are the daemon
    /// path's, and calls on them take the plain path from now on; after a
    /// `connect` to `AF_UNSPEC` if `disconnected`), or stays (a stream
    /// not exported, or whose flow sald refused: it reads as reset then).
    pub(crate) fn handover_done(&self, left: bool, disconnected: bool) {
        let state = match (left, disconnected) {
            (false, _) => KEPT,
            (true, false) => HANDED,
            (true, true) => DISCONNECTED,
        };
        self.handover.store(state, Ordering::SeqCst);
    }

    /// Whether the socket is a listener the program shut down.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Whether the socket is on its way out of the engine now (a `poll`
    /// then waits for it and starts again).
    pub(crate) fn in_transit(&self) -> bool {
        self.handover.load(Ordering::SeqCst) == HANDING
    }

    /// Whether the socket left the engine, or is leaving it: a number of
    /// it still in the registry then is one that did not take the new
    /// file (it reads as reset).
    pub(crate) fn leaving(&self) -> bool {
        self.handover.load(Ordering::SeqCst) != KEPT
    }

    /// After a call on the socket failed: whether that was the socket
    /// leaving the engine, which it then waits to see done: for sald
    /// ([`Moved::ToSald`]: the caller takes the plain path, on sald's
    /// socketpair end at the number by now) or disconnected by a
    /// `connect` to `AF_UNSPEC` ([`Moved::Disconnected`]: a call that
    /// waited then fails with `EPIPE`, as one `tcp_disconnect`
    /// interrupted), or back in the engine ([`Moved::Back`]: the call is
    /// made again); [`Moved::Not`]: the failure is the call's own.
    pub(crate) fn moved(&self) -> Moved {
        if self.handover.load(Ordering::SeqCst) == KEPT || super::handover::inside() {
            // (Inside this thread's own hand-over, nothing can be waited
            // for: the failure stands.)
            return Moved::Not;
        }
        super::handover::wait();
        match self.handover.load(Ordering::SeqCst) {
            HANDED => Moved::ToSald,
            DISCONNECTED => Moved::Disconnected,
            _ => Moved::Back,
        }
    }

    /// Whether a non-blocking `connect` returned `EINPROGRESS` and no
    /// `connect` has said it completed yet.
    pub(crate) fn untold(&self) -> bool {
        self.untold.load(Ordering::Relaxed)
    }

    /// The socket-level options the program set (name, value).
    pub(crate) fn socket_options(&self) -> Vec<(c_int, Vec<u8>)> {
        let options = self.options.lock().unwrap_or_else(PoisonError::into_inner);
        options
            .iter()
            .filter(|(level, _, _)| *level == libc::SOL_SOCKET)
            .map(|(_, name, value)| (*name, value.clone()))
            .collect()
    }

    /// Marks a non-blocking connect that returned `EINPROGRESS`.
    pub(crate) fn set_untold(&self) {
        self.untold.store(true, Ordering::Relaxed);
    }

    /// Whether the socket is non-blocking.
    pub(crate) fn nonblock(&self) -> bool {
        self.nonblock.load(Ordering::Relaxed)
    }

    /// Sets `O_NONBLOCK` (`fcntl(F_SETFL)`, `ioctl(FIONBIO)`).
    pub(crate) fn set_nonblock(&self, on: bool) {
        self.nonblock.store(on, Ordering::Relaxed);
    }

    /// The family the program made the socket with.
    pub(crate) fn family(&self) -> c_int {
        self.family
    }

    /// `getsockname` (`peer` false) or `getpeername` (`peer` true; none
    /// once a connect saw the socket's connect fail, as TCP's).
    pub(crate) fn name(&self, peer: bool) -> Res<SockAddr> {
        match peer {
            false => Ok(self.local),
            true if self.unconnected.load(Ordering::Relaxed) => Err(libc::ENOTCONN),
            true => self.peer.ok_or(libc::ENOTCONN),
        }
    }

    /// How a call with `flags` waits: `O_NONBLOCK` or `MSG_DONTWAIT` not
    /// at all, else up to the timeout option `name` (`SO_RCVTIMEO`,
    /// `SO_SNDTIMEO`), else until done.
    fn mode(&self, flags: c_int, name: c_int) -> Mode {
        if self.nonblock() || flags & libc::MSG_DONTWAIT != 0 {
            return Mode::NonBlocking;
        }
        match self.timeout(name) {
            Some(limit) => Mode::Until(Instant::now() + limit),
            None => Mode::Blocking,
        }
    }

    /// The timeout option `name` as the kernel counts it, if one is set.
    fn timeout(&self, name: c_int) -> Option<Duration> {
        let options = self.options.lock().unwrap_or_else(PoisonError::into_inner);
        let (_, _, value) = options
            .iter()
            .find(|(level, n, _)| *level == libc::SOL_SOCKET && *n == name)?;
        let hz = timeout::kernel_hz();
        Timeout::from_option(value, hz)?.limit(hz)
    }

    /// `read`, `recv`, `recvfrom`, `recvmsg`, `readv` into `buf`.
    pub(crate) fn read(&self, buf: &mut [u8], flags: c_int) -> Res<usize> {
        self.receive(buf, flags, false)
    }

    /// `ioctl(FIONREAD)` (`SIOCINQ`), `ioctl(SIOCOUTQ)` and
    /// `ioctl(SIOCOUTQNSD)`: bytes to read, bytes written and not
    /// acknowledged yet, and those not sent yet (a listener's is
    /// `EINVAL`, as TCP's); `SIOCATMARK`: 0 on any socket, as TCP's
    /// without urgent data.
    pub(crate) fn queued(&self, request: libc::c_ulong) -> Res<usize> {
        if request == SIOCATMARK {
            // No urgent data is ever queued (`MSG_OOB` is refused).
            return Ok(0);
        }
        let Object::Stream(stream) = self.object()? else {
            return Err(libc::EINVAL);
        };
        let queues = stream.queues().map_err(|e| errno(&e))?;
        if self.leaving() {
            // The flow may be on its way to sald (an exported flow holds
            // nothing here): a failure, which the caller's `moved` look
            // turns into the call made again where the flow is (see
            // `calls::queued` for a number that stayed behind).
            return Err(libc::ECONNRESET);
        }
        Ok(match request {
            SIOCOUTQ => queues.unacknowledged,
            SIOCOUTQNSD => queues.unsent,
            _ => queues.unread,
        })
    }

    /// A read into the next iovec of a call that read bytes already: a
    /// reset's (or failed connect's) error it meets stays for the next
    /// call, as Linux reports one only when the call copied nothing.
    pub(crate) fn read_more(&self, buf: &mut [u8], flags: c_int) -> Res<usize> {
        self.receive(buf, flags, true)
    }

    fn receive(&self, buf: &mut [u8], flags: c_int, more: bool) -> Res<usize> {
        if flags & libc::MSG_OOB != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        if self.unconnected.load(Ordering::Relaxed) {
            // A connect saw its connect fail: TCP's socket is disconnected
            // then (measured, Linux 6.18; before, a read gets the error,
            // then end of file).
            return Err(libc::ENOTCONN);
        }
        let stream = self.stream()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let mode = self.mode(flags, libc::SO_RCVTIMEO);
        let _interruptible = interruptible(mode);
        if flags & libc::MSG_PEEK != 0 {
            // What is there once something is: with MSG_WAITALL too,
            // where Linux's peek would wait for the whole length.
            return stream.peek(buf, mode).map_err(|e| errno(&e));
        }
        let read = match more {
            true => stream.read_more(buf, mode),
            false => stream.read(buf, mode),
        };
        let mut got = read.map_err(|e| errno(&e))?;
        if flags & libc::MSG_WAITALL != 0 && mode == Mode::Blocking {
            while got > 0 && got < buf.len() {
                match stream.read_more(&mut buf[got..], mode) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        }
        Ok(got)
    }

    /// `write`, `send`, `sendto`, `sendmsg`, `writev` of `buf`; `EPIPE`
    /// raises `SIGPIPE` unless `MSG_NOSIGNAL`, as TCP's.
    pub(crate) fn write(&self, buf: &[u8], flags: c_int) -> Res<usize> {
        self.send(buf, flags, false)
    }

    /// A write of the next chunk of a call that wrote bytes already: as
    /// [`Socket::read_more`], the error stays for the next call.
    pub(crate) fn write_more(&self, buf: &[u8], flags: c_int) -> Res<usize> {
        self.send(buf, flags, true)
    }

    fn send(&self, buf: &[u8], flags: c_int, more: bool) -> Res<usize> {
        if flags & libc::MSG_OOB != 0 {
            return Err(libc::EOPNOTSUPP);
        }
        let result = match self.object() {
            Ok(Object::Stream(stream)) => {
                if buf.is_empty() {
                    return Ok(0);
                }
                let mode = self.mode(flags, libc::SO_SNDTIMEO);
                let _interruptible = interruptible(mode);
                let written = match more {
                    true => stream.write_more(buf, mode),
                    false => stream.write(buf, mode),
                };
                written.map_err(|e| errno(&e))
            }
            Ok(Object::Listener { .. }) => Err(libc::EPIPE),
            Err(errno) => Err(errno),
        };
        if result == Err(libc::EPIPE) && flags & libc::MSG_NOSIGNAL == 0 {
            // SAFETY: no pointers; the calling thread signals itself, as
            // the kernel does on a write to a closed stream.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGPIPE) };
        }
        result
    }

    /// `accept`: the next flow, as an engine stream. A listener inherited
    /// across `fork` is one that stopped listening in this process:
    /// `EINVAL`, as Linux's after `shutdown` (and `poll` never reports it
    /// ready, so that an accept loop does not spin).
    pub(crate) fn accept(&self) -> Res<Stream> {
        if self.inherited() && self.listens() {
            return Err(libc::EINVAL);
        }
        match self.object()? {
            Object::Listener { listener, .. } => {
                let mode = self.mode(0, libc::SO_RCVTIMEO);
                let _interruptible = interruptible(mode);
                listener.accept(mode).map_err(|e| errno(&e))
            }
            Object::Stream(_) => Err(libc::EINVAL),
        }
    }

    /// `listen` again: a listener takes the new backlog, as Linux's (one
    /// the program shut down stays stopped: `listen` after `shutdown` is
    /// not done in-process); a stream cannot listen (`EINVAL`).
    pub(crate) fn listen_again(&self, backlog: c_int) -> Res<c_int> {
        match self.object()? {
            Object::Listener {
                listener,
                backlog: kept,
                ..
            } => {
                let backlog = somaxconn_clamped(backlog);
                if listener.set_backlog(backlog).is_ok() {
                    kept.store(backlog, Ordering::Relaxed);
                }
                Ok(0)
            }
            Object::Stream(_) => Err(libc::EINVAL),
        }
    }

    /// The peer address an accepted flow shows (the service for
    /// `AF_SERVAL`, an unspecified address for inet mode: the engine does
    /// not tell the peer's locator).
    pub(crate) fn accepted_peer(&self) -> SockAddr {
        match self.family {
            addr::AF_SERVAL => self.local,
            family => addr::inet_peer(None, 0, family),
        }
    }

    /// `shutdown`.
    pub(crate) fn shutdown(&self, how: c_int) -> Res<()> {
        if !matches!(how, libc::SHUT_RD | libc::SHUT_WR | libc::SHUT_RDWR) {
            return Err(libc::EINVAL);
        }
        let stream = match self.object()? {
            Object::Stream(stream) => stream,
            Object::Listener { .. } if how == libc::SHUT_WR => return Err(libc::ENOTCONN),
            // As Linux's: the listener stops (its queue reset), and every
            // accept, those blocked now included, fails with `EINVAL`.
            Object::Listener { listener, .. } => {
                self.stopped.store(true, Ordering::Relaxed);
                listener.stop();
                return Ok(());
            }
        };
        if how != libc::SHUT_WR {
            // Queued bytes still read, then end of file; a reader blocked
            // now wakes with it.
            stream.shutdown_read().map_err(|error| errno(&error))?;
        }
        if how != libc::SHUT_RD {
            match stream.shutdown_write() {
                Ok(()) | Err(Error::SendClosed) => {}
                Err(error) => return Err(errno(&error)),
            }
        }
        Ok(())
    }

    /// The blocking `connect` that made the socket's flow, waiting as
    /// `mode` says (the stream is at the program's number already): 0 once
    /// connected, `EINPROGRESS` when the send timeout passed first,
    /// `EINTR` when a signal interrupted the wait (the connect goes on in
    /// both cases), or the failure's error (the socket is unconnected
    /// then, see [`Socket::connect_again`]).
    pub(crate) fn first_connect(&self, mode: Mode) -> Res<c_int> {
        let stream = self.stream()?;
        match stream.finish_connect(mode) {
            Ok(()) => {
                self.untold.store(false, Ordering::Relaxed);
                Ok(0)
            }
            Err(Error::WouldBlock) => Err(libc::EINPROGRESS),
            Err(Error::Interrupted) => Err(libc::EINTR),
            Err(error) if connect_failure(&error) => Err(self
                .connect_failed(stream, &error, true)
                .unwrap_or(libc::EPIPE)),
            Err(error) => Err(self.aborted(&error)),
        }
    }

    /// Whether a connect saw the socket's connect fail (it is unconnected).
    pub(crate) fn is_unconnected(&self) -> bool {
        self.unconnected.load(Ordering::Relaxed)
    }

    /// What a `connect` that found the socket's connect failed with
    /// `error` answers, as Linux's (measured, 6.18): the error, to the
    /// call that takes it; `ECONNABORTED` if another call (a read,
    /// `SO_ERROR`) took it and no connect saw the failure yet; `EPIPE` to
    /// a call that `waited` for the connect and finds another connect saw
    /// it; `None` to a later call, which connects anew.
    fn connect_failed(&self, stream: &Stream, error: &Error, waited: bool) -> Option<c_int> {
        self.untold.store(false, Ordering::Relaxed);
        let taken = stream.take_error().is_some();
        let seen = self.unconnected.swap(true, Ordering::Relaxed);
        match (taken, seen, waited) {
            (true, _, _) => Some(errno(error)),
            (false, false, _) => Some(libc::ECONNABORTED),
            (false, true, true) => Some(libc::EPIPE),
            (false, true, false) => None,
        }
    }

    /// What a `connect` whose flow was reset or handed over while it
    /// waited answers: `EPIPE` after `connect(AF_UNSPEC)` (as a call that
    /// `tcp_disconnect` interrupts), else the error.
    fn aborted(&self, error: &Error) -> c_int {
        match self.moved() {
            Moved::Disconnected => libc::EPIPE,
            _ => errno(error),
        }
    }

    /// `connect` on a socket that is in-process already: as TCP's, a
    /// connect completed in the background is told once (0), then
    /// `EISCONN`; one still in flight is `EALREADY`, or waited for by a
    /// blocking call (0 once connected, as to the connect that started
    /// it). A failed one's error is reported once, by whichever call comes
    /// first; a call that waited for it and finds it reported gets
    /// `EPIPE`, one that comes later `ECONNABORTED` (Linux's, measured on
    /// 6.18), and then the socket is unconnected: `None`, it connects anew
    /// (see `handover::unconnect_at`).
    pub(crate) fn connect_again(&self) -> Option<Res<c_int>> {
        let stream = match self.object() {
            Ok(Object::Stream(stream)) => stream,
            Ok(Object::Listener { .. }) => return Some(Err(libc::EISCONN)),
            Err(errno) => return Some(Err(errno)),
        };
        let mode = match self.nonblock() {
            true => Mode::NonBlocking,
            false => self.mode(0, libc::SO_SNDTIMEO),
        };
        let waits = mode != Mode::NonBlocking
            && matches!(
                stream.finish_connect(Mode::NonBlocking),
                Err(Error::WouldBlock)
            );
        let interruptible = interruptible(mode);
        let outcome = stream.finish_connect(mode);
        drop(interruptible);
        Some(match outcome {
            Ok(()) if waits => {
                self.untold.store(false, Ordering::Relaxed);
                Ok(0)
            }
            Ok(()) if self.untold.swap(false, Ordering::Relaxed) => Ok(0),
            Ok(()) => Err(libc::EISCONN),
            // Still in flight: at once, or after the send timeout, as TCP's
            // connect on a connecting socket.
            Err(Error::WouldBlock) => Err(libc::EALREADY),
            // The connect goes on.
            Err(Error::Interrupted) => Err(libc::EINTR),
            Err(error) if connect_failure(&error) => {
                Err(self.connect_failed(stream, &error, waits)?)
            }
            Err(error) if waits => Err(self.aborted(&error)),
            // A reset's error once, then `ECONNRESET` (the flow was
            // established: it never connects again).
            Err(error) => Err(match stream.take_error() {
                Some(_) => errno(&error),
                None => libc::ECONNRESET,
            }),
        })
    }

    /// `SO_ERROR`: a failed connect's error, or a reset's (`ECONNRESET`,
    /// `EPIPE` after the peer's end of stream, as TCP's), once, whichever
    /// call reports it first; 0 while the connect is in flight or the
    /// flow goes on.
    fn so_error(&self) -> c_int {
        if self.in_transit() {
            // On its way out of the engine, where an exported flow reads
            // as reset: the outcome decides.
            super::handover::wait();
        }
        if self.handover.load(Ordering::SeqCst) == HANDED {
            // sald has the flow, healthy: this is a stale look-up.
            return 0;
        }
        let stream = match self.object() {
            Ok(Object::Stream(stream)) => stream,
            Ok(Object::Listener { .. }) => return 0,
            Err(errno) => return errno,
        };
        let taken = stream.take_error();
        match stream.finish_connect(Mode::NonBlocking) {
            Err(Error::WouldBlock) => 0,
            Ok(()) | Err(Error::Reset) => taken.map_or(0, |error| errno(&error)),
            Err(error) => taken.map_or(0, |_| errno(&error)),
        }
    }

    /// How the stream's directions stand beyond its bytes, for `poll`
    /// (`None` for a listener, or a socket inherited across `fork`).
    pub(crate) fn ends(&self) -> Option<Ends> {
        match self.object().ok()? {
            Object::Stream(stream) => Some(stream.ends()),
            Object::Listener { .. } => None,
        }
    }

    /// A stream's `POLLHUP`, `POLLERR` and, if `asked` for it,
    /// `POLLRDHUP`, as Linux's `tcp_poll` reports them with whatever else
    /// is ready (the `EPOLL` bits have the same values).
    pub(crate) fn ends_events(&self, asked: u32) -> u32 {
        let Some(ends) = self.ends() else {
            return 0;
        };
        let rdhup = libc::POLLRDHUP as u32;
        [
            (ends.hung_up, libc::POLLHUP as u32),
            (ends.error, libc::POLLERR as u32),
            (ends.read_closed, asked & rdhup),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |events, (_, bit)| events | bit)
    }

    /// The eventfd readable while `which` of [`Socket::ends`] holds, for a
    /// `poll` that asks for neither input nor output: valid while the
    /// socket is held.
    pub(crate) fn ends_fd(&self, which: EndsSignal) -> Option<RawFd> {
        match self.object().ok()? {
            Object::Stream(stream) => stream.ends_fd(which).ok().map(|fd| fd.as_raw_fd()),
            Object::Listener { .. } => None,
        }
    }

    /// A batch of reads that read something and then met the reset leaves
    /// its error for the next call, as Linux's `recvmmsg`.
    pub(crate) fn report_again(&self) {
        if let Ok(Object::Stream(stream)) = self.object() {
            stream.report_again();
        }
    }

    /// `getsockopt`: the value's bytes (an int unless the option is a
    /// timeout).
    pub(crate) fn getsockopt(&self, level: c_int, name: c_int) -> Res<Vec<u8>> {
        let int = |value: c_int| Ok(value.to_ne_bytes().to_vec());
        if level == libc::SOL_SOCKET {
            match name {
                libc::SO_ERROR => return int(self.so_error()),
                libc::SO_TYPE => return int(libc::SOCK_STREAM),
                libc::SO_DOMAIN => return int(self.family),
                libc::SO_PROTOCOL => {
                    return int(match self.family {
                        addr::AF_SERVAL => 0,
                        _ => libc::IPPROTO_TCP,
                    })
                }
                libc::SO_ACCEPTCONN => return int(c_int::from(self.listens())),
                _ => {}
            }
        } else if (level, name) == (libc::IPPROTO_TCP, libc::TCP_MAXSEG) {
            return int(self.segment_size());
        } else if !known_level(level) {
            return Err(libc::ENOPROTOOPT);
        }
        let options = self.options.lock().unwrap_or_else(PoisonError::into_inner);
        let timeout =
            level == libc::SOL_SOCKET && matches!(name, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO);
        let buffer = level == libc::SOL_SOCKET && matches!(name, libc::SO_SNDBUF | libc::SO_RCVBUF);
        match options.iter().find(|(l, n, _)| *l == level && *n == name) {
            // As the kernel keeps it: in whole jiffies (`setsockopt` took
            // only values that are timeouts).
            Some((_, _, value)) if timeout => match timeout::read_back_option(value) {
                Some(back) => Ok([back.tv_sec.to_ne_bytes(), back.tv_usec.to_ne_bytes()].concat()),
                None => Ok(vec![0; std::mem::size_of::<libc::timeval>()]),
            },
            Some((_, _, value)) if buffer => int(buffer_size(name, Some(value))),
            Some((_, _, value)) => Ok(value.clone()),
            None if timeout => Ok(vec![0; std::mem::size_of::<libc::timeval>()]),
            None if buffer => int(buffer_size(name, None)),
            None if level == libc::SOL_SOCKET && name == libc::SO_LINGER => {
                Ok(vec![0; std::mem::size_of::<libc::linger>()])
            }
            None => int(0),
        }
    }

    /// `TCP_MAXSEG` as Linux's TCP answers it: a connected stream's
    /// segment payload (at most what the program set), otherwise what the
    /// program set or TCP's default MSS. Never 0, which a program sizing
    /// its writes by it would divide by.
    fn segment_size(&self) -> c_int {
        let set = {
            let options = self.options.lock().unwrap_or_else(PoisonError::into_inner);
            options
                .iter()
                .find(|(l, n, _)| (*l, *n) == (libc::IPPROTO_TCP, libc::TCP_MAXSEG))
                .and_then(|(_, _, value)| option_int(value))
                .filter(|&value| value > 0)
        };
        let connected = match self.object() {
            Ok(Object::Stream(stream)) => stream.segment_size().ok().flatten(),
            _ => None,
        };
        match connected.map(|mss| c_int::try_from(mss).unwrap_or(c_int::MAX)) {
            Some(mss) => set.map_or(mss, |set| mss.min(set)),
            None => set.unwrap_or(crate::ops::TCP_MSS_DEFAULT),
        }
    }

    /// `setsockopt`: remembered (timeouts act on the calls that wait);
    /// every option of a known level is accepted, as the daemon path does.
    pub(crate) fn setsockopt(&self, level: c_int, name: c_int, value: &[u8]) -> Res<()> {
        if level != libc::SOL_SOCKET && !known_level(level) {
            return Err(libc::ENOPROTOOPT);
        }
        if level == libc::SOL_SOCKET
            && matches!(name, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO)
            && Timeout::from_option(value, timeout::kernel_hz()).is_none()
        {
            return Err(libc::EINVAL);
        }
        let mut options = self.options.lock().unwrap_or_else(PoisonError::into_inner);
        options.retain(|(l, n, _)| !(*l == level && *n == name));
        options.push((level, name, value.to_vec()));
        Ok(())
    }
}

/// Levels whose options a stream socket accepts.
fn known_level(level: c_int) -> bool {
    matches!(
        level,
        libc::IPPROTO_TCP | libc::IPPROTO_IP | libc::IPPROTO_IPV6 | libc::SOL_SOCKET
    )
}

impl Drop for Socket {
    /// Closes the flow or the listener in the process that made it; in a
    /// forked child, leaks it (its engine is the parent's).
    fn drop(&mut self) {
        if self.owner != super::registry::pid() as u32 {
            std::mem::forget(self.object.take());
        }
    }
}
