//! Where a socket becomes in-process: `connect`, `bind` (the relay) and
//! `listen` put the engine's object at the program's number; `accept`
//! makes a number for each flow. Each says `None` when the daemon path
//! must take the call instead (no engine, sald without relays).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use libc::c_int;
use sal::table::ListenerId;
use sal::{ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use sal_inproc::Mode;
use socket_shim::ControlClient;

use super::socket::{errno, Object};
use super::{enabled, recycle, registry, runtime, Socket};
use crate::addr::SockAddr;
use crate::ops::{last_errno, Res};
use crate::real;
use crate::timeout::{self, Timeout};

/// What the program set on a socket before it became in-process (on the
/// placeholder, or the kernel's TCP socket inet mode watched).
#[derive(Default)]
pub(crate) struct Before {
    /// Its `O_NONBLOCK`.
    pub nonblock: bool,
    /// Socket-level options (name, value).
    pub options: Vec<(c_int, Vec<u8>)>,
    /// Its epoll registrations, added again for the new file.
    pub epoll: Vec<(RawFd, libc::epoll_event)>,
    /// Device and inode of the file at the number (the placeholder, or
    /// the kernel's socket): still there when the engine's object takes
    /// the number, or the program closed it meanwhile (and the number may
    /// be another file's now).
    pub ident: (u64, u64),
    /// The generation of the number's daemon-table entry, if it has one
    /// (see `table::Entry::gen`): the same when the object takes it.
    pub gen: Option<u64>,
    /// The family of the kernel TCP socket at the number, if the shim
    /// watched it (inet mode): kept for the program's next `socket()` if
    /// it is as new when the stream takes its number ([`recycle`]).
    pub watched: Option<c_int>,
}

impl Before {
    /// The socket-level option `name`, as the program set it.
    fn option(&self, name: c_int) -> Option<&[u8]> {
        let (_, value) = self.options.iter().find(|(n, _)| *n == name)?;
        Some(value)
    }

    /// The options as a [`Socket`] keeps them.
    fn leveled(&self) -> Vec<(c_int, c_int, Vec<u8>)> {
        let options = self.options.iter();
        options
            .map(|(name, value)| (libc::SOL_SOCKET, *name, value.clone()))
            .collect()
    }
}

/// `connect` of the stream socket `fd` (made with `family`, appearing at
/// `local`) to `service` (the program's address for it: `peer`), in
/// process; `None`: the daemon path's. The engine's stream takes the
/// number at once. Blocking: then waits for the outcome (up to
/// `SO_SNDTIMEO`, then `EINPROGRESS` as TCP's); a failure reports its
/// error and leaves the socket unconnected (the next `connect` starts
/// anew: `Socket::connect_again`); a signal that interrupts the wait
/// (see `socket::interruptible`) gives `EINTR`, and the connect goes on.
/// Another thread's `connect` meanwhile waits for the same outcome, as
/// TCP's (two threads' first connects within the moment before the
/// number is the stream's still make a flow each; one gets `EBADF`).
/// Non-blocking: `EINPROGRESS`, the outcome shows in `poll`'s `POLLOUT`
/// and `SO_ERROR`.
pub(crate) fn connect(
    fd: RawFd,
    family: c_int,
    local: SockAddr,
    peer: SockAddr,
    service: ServiceId,
    before: Before,
) -> Option<Res<c_int>> {
    if !enabled() || !registry::fits(fd) {
        return None;
    }
    registry::reap();
    let runtime = runtime()?;
    let stream = match runtime.connect(service, Mode::NonBlocking) {
        Ok(stream) => stream,
        Err(error) => return Some(Err(errno(&error))),
    };
    let hz = timeout::kernel_hz();
    let limit = (before.option(libc::SO_SNDTIMEO))
        .and_then(|value| Timeout::from_option(value, hz)?.limit(hz));
    let options = before.leveled();
    let socket = Arc::new(Socket::new(
        Object::Stream(stream),
        family,
        local,
        Some(peer),
        before.nonblock,
        options,
    ));
    socket.set_untold();
    if let Err(errno) = install(fd, Arc::clone(&socket), &before) {
        return Some(Err(errno));
    }
    if before.nonblock {
        return Some(Err(libc::EINPROGRESS));
    }
    // A blocking connect that a signal interrupted goes on, as TCP's.
    let mode = limit.map_or(Mode::Blocking, |limit| Mode::Until(Instant::now() + limit));
    let interruptible = super::socket::interruptible(mode);
    let result = socket.first_connect(mode);
    drop(interruptible);
    if result.is_err() && socket.is_unconnected() {
        // Failed: the number is an unconnected daemon-path socket again,
        // as before the connect (`bind`, `listen`, `fork` and `exec` see
        // it as such; a thread that waited on the stream still answers
        // from it). Best effort: otherwise the next connect does it.
        super::handover::unconnect_at(fd);
    }
    Some(result)
}

/// `bind` of a stream socket to `prefix`, in process: sald relays the
/// prefix's SYNs to the engine (`Request::Relay`, the engine's UDP socket
/// as proof), on the control connection returned, which must live as long
/// as the socket. `EADDRINUSE` when sald says so; `None` when it refuses
/// for any other reason (relays off, no UDP): the daemon path binds.
pub(crate) fn relay(prefix: ServicePrefix) -> Option<Res<(ControlClient, ListenerId)>> {
    if !enabled() {
        return None;
    }
    let runtime = runtime()?;
    // Kept as long as the listener (out of the program's numbers, as
    // every control connection).
    let mut control = ControlClient::connect().ok()?;
    let request = Request::Relay {
        prefix,
        locator: None,
    };
    // sald relays the prefix's SYNs as soon as it has the request, and
    // the engine may read one before the answer comes: until the program
    // listens, they wait in the engine (best effort: otherwise they are
    // refused, as TCP's before `listen`).
    let _ = runtime.reserve(prefix);
    let relayed = match control.request_with_fd(&request, runtime.udp_fd()) {
        Ok(reply) => match reply.response {
            Response::Relaying { listener, .. } => Some(Ok((control, listener))),
            _ => None,
        },
        Err(error) if error.errno() == libc::EADDRINUSE => Some(Err(libc::EADDRINUSE)),
        Err(_) => None,
    };
    if !matches!(relayed, Some(Ok(_))) {
        let _ = runtime.unreserve(prefix);
    }
    relayed
}

/// `listen` of the socket `fd`, bound to `prefix` through `relay` (see
/// [`relay`]): the engine's listener takes the number.
pub(crate) fn listen(
    fd: RawFd,
    family: c_int,
    local: SockAddr,
    prefix: ServicePrefix,
    relay: ControlClient,
    backlog: c_int,
    before: Before,
) -> Res<()> {
    if !registry::fits(fd) {
        return Err(libc::EMFILE);
    }
    registry::reap();
    let runtime = runtime().ok_or(libc::EINVAL)?;
    let backlog = super::socket::somaxconn_clamped(backlog);
    let listener = runtime.listen(prefix, backlog).map_err(|e| errno(&e))?;
    let object = Object::Listener {
        listener,
        relay,
        prefix,
        backlog: backlog.into(),
    };
    let options = before.leveled();
    let socket = Socket::new(object, family, local, None, before.nonblock, options);
    install(fd, Arc::new(socket), &before)
}

/// `accept` (`flags`: `SOCK_NONBLOCK`, `SOCK_CLOEXEC`) on the in-process
/// listener `listener`: the new number (the lowest free, as the kernel's)
/// and the peer's address. The number is taken (a copy of the
/// listener's eventfd) before the flow is: at `EMFILE` the flow stays
/// queued, as the kernel's `accept` leaves a connection it cannot give a
/// descriptor.
pub(crate) fn accept(listener: &Socket, flags: c_int) -> Res<(RawFd, SockAddr)> {
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Err(libc::EINVAL);
    }
    registry::reap();
    if listener.inherited() {
        // Nothing to take (see `Socket::accept`): no number either.
        return Err(listener.accept().err().unwrap_or(libc::EINVAL));
    }
    let reserve = listener.readable_fd().map_err(|_| libc::ECONNRESET)?;
    // SAFETY: no pointers; a copy of the listener's eventfd, holding the
    // number the flow will get.
    let fd = unsafe { real::fcntl(reserve, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: no pointers; the number just reserved, nobody else's.
    let unreserve = || unsafe { real::close(fd) };
    if !registry::fits(fd) {
        unreserve();
        return Err(libc::EMFILE);
    }
    let stream = match listener.accept() {
        Ok(stream) => stream,
        Err(errno) => {
            unreserve();
            return Err(errno);
        }
    };
    let readable = match stream.readable_fd() {
        Ok(fd) => fd.as_raw_fd(),
        Err(error) => {
            unreserve();
            return Err(errno(&error));
        }
    };
    // SAFETY: no pointers; the reserved number becomes a copy of the
    // stream's eventfd.
    if unsafe { real::dup3(readable, fd, libc::O_CLOEXEC) } < 0 {
        let errno = last_errno();
        unreserve();
        drop(stream);
        return Err(errno);
    }
    let peer = listener.accepted_peer();
    let nonblock = flags & libc::SOCK_NONBLOCK != 0;
    let object = Object::Stream(stream);
    let socket = Socket::new(
        object,
        listener.family(),
        listener.name(false)?,
        Some(peer),
        nonblock,
        Vec::new(),
    );
    let cloexec = flags & libc::SOCK_CLOEXEC != 0;
    match registry::insert(fd, Arc::new(socket), cloexec) {
        Ok(old) => {
            drop(old);
            Ok((fd, peer))
        }
        Err(socket) => {
            unreserve();
            drop(socket);
            Err(libc::EMFILE)
        }
    }
}

/// Puts `socket` at the program's number `fd`: under the daemon table's
/// lock, the number must still hold the file it held when the call began
/// (`before`'s identity, and its table entry's generation): a number the
/// program closed during a blocking connect, and the kernel gave to
/// another file, is not replaced (`EBADF`, the flow closes). Then the
/// object's readable eventfd's copy replaces the placeholder (or the
/// kernel's socket), the number's daemon-path entry goes, and, the table
/// let go of, the registry learns the number (a `close` racing with that
/// leaves a number the registry's identity check forgets). The program's
/// epoll registrations of the old file are made again on the new one.
fn install(fd: RawFd, socket: Arc<Socket>, before: &Before) -> Res<()> {
    let readable = socket.readable_fd()?;
    let mut stale = Vec::new();
    let mut table = crate::table::lock();
    // One `fstat`, for both this check and the entry's own.
    let now = crate::table::ident(fd);
    // Whether a watched kernel socket is kept is decided here, under the
    // table's lock, which `fork` takes too (see `recycle`): one registered
    // in epoll is not (the registration lives as long as the file).
    let (same_gen, spare) = match before.gen {
        Some(gen) => match table.get_at(fd, now, &mut stale) {
            Some(entry) if entry.gen == gen => {
                let spare = (before.watched)
                    .filter(|_| entry.epoll.is_empty())
                    .and_then(|family| recycle::Spare::of(fd, family, now, gen));
                (true, spare)
            }
            _ => (false, None),
        },
        None => (true, None),
    };
    if !same_gen || now != before.ident {
        drop(table);
        drop(stale);
        drop(socket);
        return Err(libc::EBADF);
    }
    let cloexec = crate::inherit::cloexec(fd);
    // The kernel socket is kept rather than destroyed under the eventfd.
    let kept = spare.as_ref().and_then(|_| recycle::keep(fd));
    // SAFETY: no pointers; `fd` is the program's socket, checked above to
    // be the one this call began with, `readable` the socket's eventfd,
    // held by `socket`.
    if unsafe { real::dup3(readable, fd, libc::O_CLOEXEC) } < 0 {
        let errno = last_errno();
        if let Some(copy) = kept {
            recycle::unkeep(copy);
        }
        drop(table);
        drop(stale);
        drop(socket);
        return Err(errno);
    }
    if let (Some(copy), Some(spare)) = (kept, spare) {
        recycle::park(copy, spare);
    }
    let old = table.remove(fd);
    drop(table);
    drop(stale);
    drop(old);
    match registry::insert(fd, socket, cloexec) {
        Ok(replaced) => drop(replaced),
        Err(socket) => {
            // Out of range (checked by the callers first): the number is
            // a bare eventfd now; closed, as the socket is.
            // SAFETY: no pointers; the copy just made.
            unsafe { real::close(fd) };
            drop(socket);
            return Err(libc::EMFILE);
        }
    }
    for (epfd, event) in &before.epoll {
        // A set the program closed meanwhile refuses it: nothing to add.
        let _ = super::epoll::ctl(*epfd, libc::EPOLL_CTL_ADD, fd, Some(*event));
    }
    Ok(())
}
