//! What each interposed call does for the descriptors the shim manages.
//!
//! Functions here are safe Rust over byte slices (and the [`Outgoing`] and
//! [`Incoming`] views of the program's buffers, which `msg` gives for
//! iovecs); `lib.rs` owns the C ABI (raw pointers, errno) and hands a
//! `pass` closure that calls libc's own function for descriptors and
//! addresses that are not ours. Errors are
//! errno values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use libc::c_int;
use sal::locator::Locator;
use sal::proto::FlowInfo;
use sal::table::ListenerId;
use sal::wire::TransportProtocol;
use sal::{ServiceId, ServicePrefix};
use sal_control::{AcceptNotice, DatagramFrame, Request, Response, ACCEPT_EXHAUSTED};
use socket_shim::fd::LOWEST_OWN;
use socket_shim::{ControlClient, Error as ShimError, Reply, MAX_DATAGRAM};

use crate::addr::{self, parse_inet, parse_serval, PortMap, SockAddr, AF_SERVAL};
use crate::inherit;
use crate::inproc;
use crate::pool;
use crate::real;
use crate::table::{self, ident, lock, Domain, Entry, Kind, ListenerControl, State, Table};
use crate::timeout::{self, Timeout};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// An errno value.
pub(crate) type Errno = i32;
pub(crate) type Res<T> = Result<T, Errno>;

/// Backlog of the `Listen` sent at `bind` time (the prefix is registered
/// then, before the program calls `listen`); `listen` sends the program's
/// own with `SetBacklog` when it differs, and a second `listen` its new one.
const BIND_BACKLOG: u32 = 128;

pub(crate) fn last_errno() -> Errno {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn shim_errno(error: ShimError) -> Errno {
    error.errno()
}

/// `(O_NONBLOCK, FD_CLOEXEC)` of `fd`.
fn fd_flags(fd: RawFd) -> (bool, bool) {
    // SAFETY: fcntl with F_GETFL/F_GETFD takes no pointer.
    let (fl, fdfl) = unsafe {
        (
            real::fcntl(fd, libc::F_GETFL, 0),
            real::fcntl(fd, libc::F_GETFD, 0),
        )
    };
    (
        fl >= 0 && fl & libc::O_NONBLOCK != 0,
        fdfl >= 0 && fdfl & libc::FD_CLOEXEC != 0,
    )
}

pub(crate) fn set_nonblock(fd: RawFd, on: bool) -> Res<()> {
    // SAFETY: as above, no pointers.
    unsafe {
        let fl = real::fcntl(fd, libc::F_GETFL, 0);
        if fl < 0 {
            return Err(last_errno());
        }
        let new = if on {
            fl | libc::O_NONBLOCK
        } else {
            fl & !libc::O_NONBLOCK
        };
        if new != fl && real::fcntl(fd, libc::F_SETFL, new as libc::c_ulong) < 0 {
            return Err(last_errno());
        }
    }
    Ok(())
}

fn socketpair(ty: c_int) -> Res<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: socketpair writes two ints into `fds`; it is not interposed.
    let rc =
        unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just created both descriptors for us alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A placeholder for a socket that has no flow yet: one end of a Unix
/// socketpair whose send buffer is full, so `poll` reports it neither
/// readable nor writable. Its peer end (`wake`) is kept; closing it makes
/// the placeholder hang up, which wakes any `poll`/`select`/`epoll` sleeping
/// on it once the real flow has been swapped in (or the connect failed).
/// The peer end is the shim's own, and never one of the standard streams
/// ([`socket_shim::fd`]); the program's end takes the lowest free number,
/// as the kernel's socket would.
pub(crate) fn placeholder(nonblock: bool, cloexec: bool) -> Res<(OwnedFd, OwnedFd)> {
    let (app, wake) = socketpair(libc::SOCK_STREAM)?;
    let wake = socket_shim::fd::above_standard_streams(wake);
    let small: c_int = 1;
    // SAFETY: the option value is one int, as SO_SNDBUF expects.
    unsafe {
        real::setsockopt(
            app.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&small as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        );
    }
    set_nonblock(app.as_raw_fd(), true)?;
    let junk = [0u8; 4096];
    for _ in 0..64 {
        // SAFETY: `junk` is valid for its length.
        let n = unsafe { real::write(app.as_raw_fd(), junk.as_ptr().cast(), junk.len()) };
        if n < 0 {
            break;
        }
    }
    set_nonblock(app.as_raw_fd(), nonblock)?;
    if !cloexec {
        // SAFETY: no pointers.
        unsafe { real::fcntl(app.as_raw_fd(), libc::F_SETFD, 0) };
    }
    Ok((app, wake))
}

/// Puts `src` at descriptor number `fd` (replacing what was there), with
/// the blocking mode and close-on-exec flag the program had set on `fd`
/// (`flags`, when the caller just read them; else they are read here).
/// `src` is blocking, as every descriptor sald hands over.
fn swap_in(src: &OwnedFd, fd: RawFd, flags: Option<(bool, bool)>) -> Res<()> {
    let (nonblock, cloexec) = flags.unwrap_or_else(|| fd_flags(fd));
    if nonblock {
        set_nonblock(src.as_raw_fd(), true)?;
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: no pointers; `fd` is a descriptor of the program that the
    // table says is ours to replace (the caller holds the table lock).
    if unsafe { real::dup3(src.as_raw_fd(), fd, flags) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// Sets the socket-level option `name` of `fd` to the bytes of `value`
/// (one the program set, from the record of its options, or one of the
/// shim's own); a failure is ignored.
fn set_socket_option(fd: RawFd, name: c_int, value: &[u8]) {
    // SAFETY: `value` is valid for its length.
    unsafe {
        real::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        );
    }
}

/// The value the program last set for the socket-level option `name` of
/// the socket of `entry`, from the record of its options.
fn recorded_option(entry: &Entry, name: c_int) -> Option<&[u8]> {
    let (_, value) = entry.options.iter().find(|(n, _)| *n == name)?;
    Some(value)
}

/// Re-adds the program's epoll registrations of `fd` after a swap (epoll
/// registers the open file, which the swap replaced), and sets again the
/// socket-level options it set on the file the swap replaced.
pub(crate) fn re_epoll(entry: &Entry, fd: RawFd) {
    for (name, value) in &entry.options {
        // A failure leaves the option as the new socket has it, as nothing
        // better can be done.
        set_socket_option(fd, *name, value);
    }
    for (epfd, event) in &entry.epoll {
        let mut event = *event;
        // SAFETY: `event` is a valid epoll_event for the call's duration.
        unsafe {
            if real::epoll_ctl(*epfd, libc::EPOLL_CTL_ADD, fd, &mut event) < 0
                && last_errno() == libc::EEXIST
            {
                real::epoll_ctl(*epfd, libc::EPOLL_CTL_MOD, fd, &mut event);
            }
        }
    }
}

/// Removes the program's epoll registrations of `fd` (of the file now at
/// the number), for a swap that leaves that file open elsewhere: epoll
/// keeps a registration until the last copy of its file closes, and one
/// left beside [`re_epoll`]'s would report the number twice, with no
/// `EPOLL_CTL_DEL` on it able to remove it. The record of them stays, for
/// [`re_epoll`].
fn un_epoll(entry: &Entry, fd: RawFd) {
    for (epfd, _) in &entry.epoll {
        // SAFETY: no pointers (`EPOLL_CTL_DEL` ignores the event).
        unsafe { real::epoll_ctl(*epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
    }
}

/// A summary of an entry, copied out under the lock.
#[derive(Debug, Clone, Copy)]
struct Look {
    kind: Kind,
    domain: Domain,
    stage: Stage,
    local: Option<SockAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Fresh,
    Bound,
    Connecting,
    Connected,
    Failed,
    Listening,
    /// A listener that stopped listening and stays bound
    /// ([`stop_listening`]).
    Stopped,
    DgramIdle,
    DgramOpen,
}

/// The stage of a socket the shim answers for; `None` for one it only
/// watches ([`State::Watched`]), which is the kernel's in every respect.
fn stage(state: &State) -> Option<Stage> {
    Some(match state {
        State::Watched => return None,
        State::Fresh { .. } => Stage::Fresh,
        State::Bound { .. } => Stage::Bound,
        State::Connecting { .. } => Stage::Connecting,
        State::Connected => Stage::Connected,
        State::Failed => Stage::Failed,
        State::Listening { control } if control.stopped.load(Ordering::Relaxed) => Stage::Stopped,
        State::Listening { .. } => Stage::Listening,
        State::DgramIdle { .. } => Stage::DgramIdle,
        State::DgramOpen { .. } => Stage::DgramOpen,
    })
}

/// A summary of `fd`'s entry, if the shim answers for it (not for one it
/// only watches). A watched entry answers `None` before its identity
/// check: stale or not, the call is the kernel's (one `fstat` less for
/// each `setsockopt` and the like on the program's TCP sockets).
fn look(fd: RawFd) -> Option<Look> {
    if !table::maybe_tracked(fd) {
        return None;
    }
    let mut stale = Vec::new();
    let found = {
        let mut table = lock();
        if table.watched(fd) {
            return None;
        }
        table.get(fd, &mut stale).and_then(summary)
    };
    drop(stale);
    found
}

/// The [`Look`] of an entry the shim answers for.
fn summary(e: &mut Entry) -> Option<Look> {
    Some(Look {
        kind: e.kind,
        domain: e.domain,
        stage: stage(&e.state)?,
        local: e.local,
    })
}

/// What a socket's entry recorded that its `connect` in process carries
/// over (see [`inproc_before`]), read with the entry's identity check.
struct Recorded {
    options: Vec<(c_int, Vec<u8>)>,
    epoll: Vec<(RawFd, libc::epoll_event)>,
    gen: u64,
    /// The entry's device and inode, which the check just found at the
    /// number.
    ident: (u64, u64),
    /// A watched kernel TCP socket's family.
    watched: Option<c_int>,
}

impl Recorded {
    fn of(e: &Entry) -> Recorded {
        Recorded {
            options: e.options.clone(),
            epoll: e.epoll.clone(),
            gen: e.gen,
            ident: e.ident,
            watched: match e.domain {
                Domain::Inet(family) if e.watched() => Some(family),
                _ => None,
            },
        }
    }
}

/// `connect`'s look at `fd`'s entry, one identity check (one `fstat`)
/// for all it needs: the [`Look`] of an entry the shim answers for, and,
/// when the in-process mode is on, the [`Recorded`] of one that may go
/// in process (a fresh stream, or a watched TCP socket: then the `Look`
/// is `None` and the `Recorded` says the entry is there and fresh).
fn survey(fd: RawFd) -> (Option<Look>, Option<Recorded>) {
    if !table::maybe_tracked(fd) {
        return (None, None);
    }
    let mut stale = Vec::new();
    let found = {
        let mut table = lock();
        match table.get(fd, &mut stale) {
            None => (None, None),
            Some(e) => {
                let found = summary(e);
                let may = match found {
                    None => true,
                    Some(look) => look.kind == Kind::Stream && look.stage == Stage::Fresh,
                };
                (found, (may && inproc::enabled()).then(|| Recorded::of(e)))
            }
        }
    };
    drop(stale);
    found
}

/// What `f` makes of `fd`'s entry, under the table lock (`None` when `fd`
/// is not ours); stale entries found on the way are dropped after the
/// lock is released.
fn with_entry<T>(fd: RawFd, f: impl FnOnce(&mut Entry) -> Option<T>) -> Option<T> {
    if !table::maybe_tracked(fd) {
        return None;
    }
    let mut stale = Vec::new();
    let found = {
        let mut table = lock();
        table.get(fd, &mut stale).and_then(f)
    };
    drop(stale);
    found
}

fn is_tcp(fd: RawFd) -> bool {
    let mut ty: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `ty` and `len` are valid for one int.
    let rc = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && ty == libc::SOCK_STREAM
}

fn control() -> Res<ControlClient> {
    ControlClient::connect().map_err(shim_errno)
}

// --- socket -------------------------------------------------------------

pub(crate) fn socket(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    pass: impl FnOnce() -> c_int,
) -> Res<c_int> {
    if domain != AF_SERVAL {
        let watched = watches(domain, ty, protocol);
        // Its generation from before the socket exists: a `fork` after
        // this counts as one the socket was there for (`inproc::recycle`).
        let gen = watched.then(table::next_gen);
        // A kernel socket an in-process connect left, as new (see
        // `inproc::recycle`), or a new one.
        let kept = (watched && inproc::enabled())
            .then(|| inproc::recycle::take(domain, ty))
            .flatten();
        let fd = kept.unwrap_or_else(pass);
        if fd >= 0 {
            if watched {
                inproc::recycle::made(fd);
            }
            let watched = gen.map(|gen| {
                Entry::of_generation(Kind::Stream, Domain::Inet(domain), fd, State::Watched, gen)
            });
            let old = {
                let mut table = lock();
                match watched {
                    Some(entry) => table.insert(fd, entry),
                    None if table::maybe_tracked(fd) => table.remove(fd),
                    None => None,
                }
            };
            drop(old);
        }
        return Ok(fd);
    }
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    // As Linux: bits beyond the type that are not a known flag.
    if base & !SOCK_TYPE_MASK != 0 {
        return Err(libc::EINVAL);
    }
    let kind = match (base, protocol) {
        (libc::SOCK_STREAM, 0 | libc::IPPROTO_TCP) => Kind::Stream,
        (libc::SOCK_DGRAM, 0 | libc::IPPROTO_UDP) => Kind::Dgram,
        (libc::SOCK_STREAM | libc::SOCK_DGRAM, _) => return Err(libc::EPROTONOSUPPORT),
        _ => return Err(libc::ESOCKTNOSUPPORT),
    };
    let (app, wake) = placeholder(ty & libc::SOCK_NONBLOCK != 0, ty & libc::SOCK_CLOEXEC != 0)?;
    let fd = app.into_raw_fd();
    let state = match kind {
        Kind::Stream => State::Fresh { wake: Some(wake) },
        Kind::Dgram => State::DgramIdle { wake: Some(wake) },
    };
    let old = lock().insert(fd, Entry::new(kind, Domain::Serval, fd, state));
    drop(old);
    Ok(fd)
}

/// The bits of `socket`'s type argument that are the type itself (Linux's
/// `SOCK_TYPE_MASK`); the rest are flags.
const SOCK_TYPE_MASK: c_int = 0xf;

/// Whether a new socket of the program is one inet mode may redirect later
/// (a TCP socket while a port map is set), so it is watched from the start
/// ([`State::Watched`]).
fn watches(domain: c_int, ty: c_int, protocol: c_int) -> bool {
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    matches!(domain, libc::AF_INET | libc::AF_INET6)
        && base == libc::SOCK_STREAM
        && matches!(protocol, 0 | libc::IPPROTO_TCP)
        && !PortMap::get().is_empty()
}

/// Stops watching `fd`: the program connects, binds or listens it as a
/// TCP socket of the kernel's.
fn unwatch(fd: RawFd) {
    if !table::maybe_tracked(fd) {
        return;
    }
    let mut stale = Vec::new();
    let old = {
        let mut table = lock();
        match table.get(fd, &mut stale) {
            Some(entry) if entry.watched() => table.remove(fd),
            _ => None,
        }
    };
    drop(stale);
    drop(old);
}

/// Puts the inet-mode `entry` at `fd` in place of whatever entry was there,
/// keeping the epoll registrations and socket options the program made
/// while the shim only watched the socket. Call before the file at `fd`
/// changes (the watched entry is stale after). Returns the old entry, to
/// be dropped after unlocking.
fn adopt(table: &mut table::Table, fd: RawFd, mut entry: Entry) -> Vec<Entry> {
    let mut stale = Vec::new();
    (entry.epoll, entry.options) = take_watched(table, fd, &mut stale);
    stale.extend(table.insert(fd, entry));
    stale
}

/// The epoll registrations and socket options recorded for `fd` while the
/// shim only watched it (none if it did not), taken out of its entry.
fn take_watched(table: &mut table::Table, fd: RawFd, stale: &mut Vec<Entry>) -> Watched {
    match table.get(fd, stale) {
        Some(old) if old.watched() => (
            std::mem::take(&mut old.epoll),
            std::mem::take(&mut old.options),
        ),
        _ => Default::default(),
    }
}

/// What a watched socket's entry carries over: epoll registrations and
/// socket options (see [`Entry`]).
type Watched = (Vec<(RawFd, libc::epoll_event)>, Vec<(c_int, Vec<u8>)>);

// --- connect ------------------------------------------------------------

/// `connect(2)` of `fd` to `addr` (`len` bytes as the program gave them,
/// `None` for a NULL address). On a socket of ours it answers in Linux's
/// order (`__sys_connect`, `__inet_stream_connect`, `tcp_v4_connect`):
/// first what needs no socket ([`address_given`]: `EFAULT`, `EINVAL`),
/// then an `AF_UNSPEC` address disconnects a stream ([`disconnect`]), then
/// a stream's state answers (a connect in flight is `EALREADY`, or waited
/// for by a blocking call; a connected or listening socket is `EISCONN`),
/// and only then, on a socket that may connect, is the address looked at
/// (`EINVAL` for a short one, `EAFNOSUPPORT` for another family). So a
/// blocking `connect` to a NULL address fails at once, while one to
/// another family on a socket whose connect is in flight waits for it, as
/// TCP's does.
pub(crate) fn connect(
    fd: RawFd,
    addr: Option<&[u8]>,
    len: libc::socklen_t,
    pass: impl FnOnce() -> c_int,
) -> Res<c_int> {
    let (found, recorded) = survey(fd);
    let Some(found) = found else {
        if let Some(sa) = addr.and_then(parse_inet) {
            let map = PortMap::get();
            if !map.is_empty() {
                if let Some(service) = map.for_connect(&sa) {
                    // A watched socket (`recorded`: its entry is fresh) is
                    // the TCP socket the program made (see `watches`).
                    if recorded.is_some() || is_tcp(fd) {
                        let family = inet_family(&sa);
                        let (local, peer) = (unspecified(family), SockAddr::Inet(sa));
                        let done = inproc_connect(fd, family, local, peer, service, recorded);
                        if let Some(done) = done {
                            return done;
                        }
                        return inet_connect(fd, sa, service);
                    }
                }
            }
        }
        unwatch(fd);
        return Ok(pass());
    };
    let addr = address_given(addr, len)?;
    let stream = found.kind == Kind::Stream;
    if stream && addr::family(addr) == Ok(libc::AF_UNSPEC) {
        if let Some(done) = disconnect(fd, found.stage) {
            return Ok(done);
        }
    }
    if found.stage == Stage::Connecting && stream && !fd_flags(fd).0 {
        if let Some(done) = connect_parked(fd)? {
            return Ok(done);
        }
    }
    // As TCP's, a stream that is connecting, connected or listening
    // answers so whatever the address (unless its connect failed since
    // `look`: then it may connect).
    if stream
        && matches!(
            found.stage,
            Stage::Connecting | Stage::Connected | Stage::Listening
        )
    {
        if let Some(answer) = with_entry(fd, stream_state_answer) {
            return answer;
        }
    }
    match found.domain {
        Domain::Serval => {
            let sa = parse_serval(addr)?;
            if found.stage == Stage::Stopped {
                // As TCP's listener that `tcp_disconnect` stopped
                // (measured, Linux 6.18): the address is looked at, then
                // `EINVAL`.
                return Err(libc::EINVAL);
            }
            let service = sa.service_id().ok_or(libc::EINVAL)?;
            if found.stage == Stage::DgramOpen {
                return connect_open_datagram(
                    fd,
                    SockAddr::service(service),
                    service,
                    fd_flags(fd),
                );
            }
            if found.kind == Kind::Stream && found.stage == Stage::Fresh {
                let local = found.local.unwrap_or(SockAddr::Serval {
                    flags: 0,
                    bits: 0,
                    id: [0; 32],
                });
                let peer = SockAddr::service(service);
                let done = inproc_connect(fd, AF_SERVAL, local, peer, service, recorded);
                if let Some(done) = done {
                    return done;
                }
            }
            let protocol = match found.kind {
                Kind::Stream => TransportProtocol::Stream,
                Kind::Dgram => TransportProtocol::Datagram,
            };
            start_connect(
                fd,
                found.stage,
                SockAddr::service(service),
                service,
                protocol,
                fd_flags(fd),
            )
        }
        Domain::Inet(family) => match found.stage {
            // As TCP after a failed connect: the pending error once, then
            // a connect anywhere, through the SAL or the kernel.
            Stage::Failed => match parse_inet(addr) {
                Some(sa) => match PortMap::get().for_connect(&sa) {
                    Some(service) => start_connect(
                        fd,
                        Stage::Failed,
                        SockAddr::Inet(sa),
                        service,
                        TransportProtocol::Stream,
                        fd_flags(fd),
                    ),
                    None => {
                        take_pending_error(fd)?;
                        restore_tcp(fd, family)?;
                        Ok(pass())
                    }
                },
                None => Err(libc::EINVAL),
            },
            _ => Err(libc::EINVAL),
        },
    }
}

/// The family of an inet-mode socket that connects or binds to `sa`.
fn inet_family(sa: &SocketAddr) -> c_int {
    match sa.is_ipv4() {
        true => libc::AF_INET,
        false => libc::AF_INET6,
    }
}

/// What the program set on `fd` before it goes in-process: its
/// `O_NONBLOCK` (one `fcntl`), the socket-level options and epoll
/// registrations its entry recorded (a placeholder's, or an inet-mode
/// socket's the shim watched: `recorded`, read by [`survey`] with the
/// entry's identity check, whose device and inode are the file's at the
/// number then; without an entry, those are read here).
fn inproc_before(fd: RawFd, recorded: Option<Recorded>) -> inproc::Before {
    // SAFETY: no pointers.
    let flags = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    let nonblock = flags >= 0 && flags & libc::O_NONBLOCK != 0;
    match recorded {
        Some(recorded) => inproc::Before {
            nonblock,
            watched: recorded.watched,
            options: recorded.options,
            epoll: recorded.epoll,
            ident: recorded.ident,
            gen: Some(recorded.gen),
        },
        None => inproc::Before {
            nonblock,
            ident: table::ident(fd),
            ..Default::default()
        },
    }
}

/// A stream `connect` in process, when the mode is on and the engine is
/// there (see `inproc`); `None`: the daemon path's. `recorded`: see
/// [`inproc_before`].
fn inproc_connect(
    fd: RawFd,
    family: c_int,
    local: SockAddr,
    peer: SockAddr,
    service: ServiceId,
    recorded: Option<Recorded>,
) -> Option<Res<c_int>> {
    if !inproc::enabled() {
        return None;
    }
    inproc::connect(
        fd,
        family,
        local,
        peer,
        service,
        inproc_before(fd, recorded),
    )
}

/// Registers a stream socket's `prefix` at `bind`: with sald's relay to
/// the engine in the in-process mode (the prefix comes back, for
/// `listen`), else as a daemon listener (see [`listen_on`]).
fn bind_stream(prefix: ServicePrefix) -> Res<(ControlClient, ListenerId, Option<ServicePrefix>)> {
    if inproc::enabled() {
        if let Some(relayed) = inproc::relay(prefix) {
            let (control, listener) = relayed?;
            return Ok((control, listener, Some(prefix)));
        }
    }
    let (control, listener, _) = listen_on(prefix, TransportProtocol::Stream)?;
    Ok((control, listener, None))
}

/// The address of a `connect` (`len` bytes at `addr`, `None` for a NULL
/// pointer) as far as Linux checks it before it looks at the socket:
/// `move_addr_to_kernel` refuses a length above `sockaddr_storage` (or
/// negative, as an `int`) with `EINVAL` and a NULL address of any length
/// with `EFAULT`, then `__inet_stream_connect` (and UDP's
/// `inet_dgram_connect`) a length too short for the family with `EINVAL`.
pub(crate) fn address_given(addr: Option<&[u8]>, len: libc::socklen_t) -> Res<&[u8]> {
    if len as usize > std::mem::size_of::<libc::sockaddr_storage>() {
        return Err(libc::EINVAL);
    }
    match addr {
        None if len > 0 => Err(libc::EFAULT),
        Some(bytes) if bytes.len() >= std::mem::size_of::<libc::sa_family_t>() => Ok(bytes),
        _ => Err(libc::EINVAL),
    }
}

/// `connect` to an `AF_UNSPEC` address on a stream of ours, as TCP's
/// (`tcp_disconnect`): it returns 0 and leaves the socket unconnected. A
/// connect in flight ends: its socket is as after a failed connect, with
/// `ECONNRESET` pending (for reads and `SO_ERROR`, once), its placeholder
/// hangs up, and whoever waits for it in a `connect` gets `EPIPE`
/// ([`connect_outcome`]; its completion, when sald answers, installs
/// nothing). As with TCP, the error left behind does not stop a new
/// connect, which clears it ([`Entry::disconnected`]), and neither does
/// that of a failed connect once disconnected. A fresh or bound stream
/// stays as it is.
///
/// A connected stream is disconnected too (`stage`, as the caller found
/// it, says whether a placeholder is needed for that; one made before the
/// lock, and again should the connect have completed since the caller
/// looked: that stream is connected, and it used to answer `EISCONN`).
/// Linux's `tcp_disconnect` aborts the connection with a reset, and the
/// socket is left unconnected, with `ECONNRESET` pending for its next read
/// (then `ENOTCONN`; a write is `EPIPE`), and may connect again. Here the
/// flow's socket is marked for sald to reset the flow
/// (`socket_shim::reset::mark_abort`) and shut down both ways, which every
/// copy of it sees (other numbers, a forked child's: they share the
/// socket, as copies of a TCP socket do; their reads get `ECONNRESET`
/// once, as after a reset), and a placeholder, hung up as after a failed
/// connect, takes the number, with the program's flags, options and epoll
/// registrations.
///
/// A listener stops listening and stays bound ([`stop_listening`]).
///
/// `None` when the caller answers as before (`EISCONN`): when no
/// placeholder could be made, and for a listener that cannot stop (see
/// [`stop_listening`]).
fn disconnect(fd: RawFd, stage: Stage) -> Option<c_int> {
    match stage {
        Stage::Listening => return stop_listening(fd),
        // Stopped already: nothing to do, as for TCP's closed socket.
        Stage::Stopped => return Some(0),
        _ => {}
    }
    match disconnect_stream(fd, stage == Stage::Connected) {
        Disconnected::Answer(answer) => answer,
        // Connected since the caller looked: again, with a placeholder,
        // which the stream needs whatever it became meanwhile.
        Disconnected::Connected => match disconnect_stream(fd, true) {
            Disconnected::Answer(answer) => answer,
            Disconnected::Connected => None,
        },
    }
}

/// What [`disconnect_stream`] did.
enum Disconnected {
    /// Done: what `connect` answers (`None`: as before, see
    /// [`disconnect`]).
    Answer(Option<c_int>),
    /// Nothing: the stream is connected, and no placeholder was made for
    /// it.
    Connected,
}

/// [`disconnect`] of a stream that is not listening, with a placeholder
/// made beforehand if `connected` (the stream was when the caller looked).
fn disconnect_stream(fd: RawFd, connected: bool) -> Disconnected {
    let flags = fd_flags(fd);
    let mut fresh = match connected {
        true => match placeholder(flags.0, flags.1) {
            Ok(made) => Some(made),
            Err(_) => return Disconnected::Answer(None),
        },
        false => None,
    };
    let mut stale = Vec::new();
    let mut wake = None;
    let mut shut = false;
    let done = {
        let mut table = lock();
        let Some(entry) = table.get(fd, &mut stale) else {
            return Disconnected::Answer(None);
        };
        match entry.state {
            State::Connected => {
                let Some((app, peer_end)) = fresh.take() else {
                    return Disconnected::Connected;
                };
                // A copy of the flow (a `dup`, a forked child's) keeps it
                // open, and with it its epoll registrations: they go, and
                // come back on what is at the number after the swap.
                un_epoll(entry, fd);
                // SAFETY: the flow at the program's number, which the
                // table says is ours, is open while the lock is held.
                let flow = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                // A reset, as TCP's, not a FIN: sald reads the mark at the
                // end of file the shutdown makes.
                socket_shim::reset::mark_abort(flow);
                // SAFETY: no pointers; the flow, as above.
                unsafe { real::shutdown(fd, libc::SHUT_RDWR) };
                let swapped = swap_in(&app, fd, Some(flags)).is_ok();
                re_epoll(entry, fd);
                // Closed after unlocking: the placeholder's peer end
                // hangs it up.
                fresh = Some((app, peer_end));
                if !swapped {
                    // The flow is over all the same (reads see its
                    // hang-up as a reset, writes `EPIPE`).
                    return Disconnected::Answer(Some(0));
                }
                entry.ident = ident(fd);
                entry.state = State::Failed;
                entry.peer = None;
                entry.so_error = libc::ECONNRESET;
                entry.disconnected = entry.gen;
                table.refresh(fd);
                Some(0)
            }
            State::Connecting { .. } => {
                if let State::Connecting { wake: w } =
                    std::mem::replace(&mut entry.state, State::Failed)
                {
                    wake = w;
                }
                let parked = std::mem::take(&mut entry.parked);
                // The placeholder stays, hung up: the receive timeout that
                // `mark_parked` turned off is the program's again.
                if parked != 0 && wake.is_some() {
                    restore_receive_timeout(entry, fd);
                }
                // Waiters are this process's; a forked child's copy of
                // the peer end is closed, not shut down (the parent's
                // connect goes on with the same placeholder).
                shut = parked == std::process::id();
                entry.so_error = libc::ECONNRESET;
                entry.disconnected = entry.gen;
                table.refresh(fd);
                Some(0)
            }
            State::Failed => {
                entry.disconnected = entry.gen;
                Some(0)
            }
            State::Fresh { .. } | State::Bound { .. } => Some(0),
            _ => None,
        }
    };
    drop(stale);
    drop(fresh);
    if let (true, Some(wake)) = (shut, &wake) {
        // Waiters on copies of the placeholder see the hang-up, even while
        // a forked child holds a copy of this end.
        // SAFETY: no pointers; a socket this function owns.
        unsafe { real::shutdown(wake.as_raw_fd(), libc::SHUT_RDWR) };
    }
    drop(wake);
    Disconnected::Answer(done)
}

/// `connect` to an `AF_UNSPEC` address on a listener, as TCP's
/// (`tcp_disconnect`, measured over loopback, Linux 6.18): it returns 0;
/// the listener stops listening and stays bound (another `bind` of its
/// service is `EADDRINUSE`, connects to it are refused), the flows it held
/// established but not accepted are reset, `accept` (also one waiting in
/// another thread) is `EINVAL`, `SO_ACCEPTCONN` 0, `connect` to an address
/// `EINVAL`, and a `listen` makes it listen again ([`listen_stopped`]).
///
/// sald stops the listener (`StopListening`): it refuses flows, resets
/// those in its backlog and ends the accept queue, whose end here then
/// hangs up (`poll` shows the hang-up, as TCP's closed socket). The flows
/// already in the queue are taken out of it and reset here (marked, as
/// [`disconnect`] marks a flow, and closed). The numbers `dup` made of the
/// listener share its stop ([`ListenerControl::stopped`]).
///
/// `None` (the caller answers `EISCONN`, as before) in a forked child,
/// which may not use the connection of the process that listened (see
/// [`ListenerControl::connection`]), and with a sald that does not know
/// the request or cannot be asked.
fn stop_listening(fd: RawFd) -> Option<c_int> {
    let control = with_entry(fd, |entry| entry.listener_control().cloned())?;
    if control.owner != std::process::id() {
        return None;
    }
    {
        // Held until the stop is recorded: a `listen` in another thread
        // comes before or after, not in between.
        let mut connection = control
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let listener = control.listener;
        match connection.request(&Request::StopListening { listener }) {
            Ok(reply) if reply.response == Response::Ok => {}
            _ => return None,
        }
        let _table = lock();
        control.stopped.store(true, Ordering::Relaxed);
    }
    reset_queued(fd);
    Some(0)
}

/// Takes every flow out of the accept queue at `fd` (a listener that
/// stopped, whose queue sald no longer feeds) and resets it: marked for
/// sald to reset (`socket_shim::reset::mark_abort`), then closed, which
/// sald hears as the application's end of file. Until the queue is empty
/// or hung up; a program's `accept` in another thread may take one first,
/// as from TCP's listener in the same race.
fn reset_queued(fd: RawFd) {
    loop {
        let mut notice = [0u8; 64];
        let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
        let flows = match receive_notice(fd, flags, &mut notice) {
            Ok((n, flows, _)) if n > 0 => flows,
            _ => return,
        };
        for flow in flows {
            socket_shim::reset::mark_abort(std::os::fd::AsFd::as_fd(&flow));
            drop(flow);
        }
    }
}

/// What `connect` answers on the stream of `entry` for its state alone,
/// before it looks at the address, as TCP's (`__inet_stream_connect`):
/// on a connected stream `0` from the first call after a connect that
/// completed outside a `connect` call (a non-blocking one, or one that
/// was interrupted or timed out: see [`Entry::untold`]), `EISCONN`
/// otherwise; `EALREADY` on one still connecting (also for one the
/// caller saw connecting: the same as a connected one's once it
/// completed); `EISCONN` on a listener. `None` for a stream that may
/// connect (fresh, bound, or whose last connect failed, perhaps since
/// the caller looked).
fn stream_state_answer(entry: &mut Entry) -> Option<Res<c_int>> {
    match entry.state {
        State::Connecting { .. } | State::Connected | State::Listening { .. } => {
            Some(connect_answer(entry))
        }
        _ => None,
    }
}

/// What `connect` answers on the stream of `entry`, connected or
/// connecting (see [`stream_state_answer`]); `EISCONN` for anything else.
fn connect_answer(entry: &Entry) -> Res<c_int> {
    match entry.state {
        State::Connected if entry.untold.swap(false, Ordering::Relaxed) => Ok(0),
        State::Connecting { .. } => Err(libc::EALREADY),
        _ => Err(libc::EISCONN),
    }
}

/// How long a blocking call on the socket of `entry` may wait, as the
/// program set it with option `name` (`SO_SNDTIMEO` or `SO_RCVTIMEO`, from
/// the record of its options, see [`Entry::options`]), as Linux takes it
/// (see [`timeout`]): `None` for no limit (not set, set to zero, or too
/// long to count in jiffies), zero for a negative timeout (no wait at
/// all, though it reads back as 0), else rounded up to whole jiffies.
fn timeout_option(entry: &Entry, name: c_int) -> Option<Duration> {
    // The record first: a program that sets no timeout never has `HZ`
    // measured (a socket of the shim's, once).
    let value = recorded_option(entry, name)?;
    let hz = timeout::kernel_hz();
    Timeout::from_option(value, hz)?.limit(hz)
}

/// The error a failed non-blocking connect left in `SO_ERROR`, reported
/// once by the next `connect`, as TCP does (the caller is one); `Ok` when
/// there is none, or when the socket was disconnected since
/// ([`Entry::disconnected`]: the connect clears it, as TCP's).
fn take_pending_error(fd: RawFd) -> Res<()> {
    let mut stale = Vec::new();
    let pending = {
        let mut table = lock();
        table.get(fd, &mut stale).map_or(0, |entry| {
            let errno = std::mem::take(&mut entry.so_error);
            match entry.disconnected == entry.gen {
                true => 0,
                false => errno,
            }
        })
    };
    drop(stale);
    match pending {
        0 => Ok(()),
        errno => Err(errno),
    }
}

/// Inet mode, after a failed connect to a mapped port: puts a fresh TCP
/// socket of the kernel's at `fd` (with the program's flags, socket-level
/// options and epoll registrations) and forgets `fd`, so that a connect
/// elsewhere is the kernel's, as a TCP socket may connect again after a
/// failure.
fn restore_tcp(fd: RawFd, family: c_int) -> Res<()> {
    // SAFETY: no pointers; the new socket is ours until it is at `fd`.
    let raw = unsafe { real::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just created `raw` for us alone.
    let tcp = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut stale = Vec::new();
    let (result, old) = {
        let mut table = lock();
        let result = match table.get(fd, &mut stale) {
            Some(entry) => swap_in(&tcp, fd, None).map(|()| re_epoll(entry, fd)),
            None => Err(libc::EBADF),
        };
        (result, result.map(|()| table.remove(fd)))
    };
    drop(stale);
    drop(old);
    drop(tcp);
    result
}

/// Inet mode: the program's TCP socket becomes a Serval stream. A blocking
/// connect completes within this call, so the program's own (unconnected)
/// TCP socket stays at the number until the flow replaces it (unless a
/// signal interrupts the call: see [`park`]); a non-blocking one, or a
/// blocking one with a send timeout (which may return first), puts a
/// placeholder there first (something that polls as not ready until the
/// flow is in).
fn inet_connect(fd: RawFd, sa: SocketAddr, service: ServiceId) -> Res<c_int> {
    let flags = fd_flags(fd);
    let (nonblock, cloexec) = flags;
    let family = if sa.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let timed = !nonblock && with_entry(fd, |e| timeout_option(e, libc::SO_SNDTIMEO)).is_some();
    if !nonblock && !timed {
        let mut entry = Entry::new(
            Kind::Stream,
            Domain::Inet(family),
            fd,
            State::Fresh { wake: None },
        );
        entry.local = Some(unspecified(family));
        let old = adopt(&mut lock(), fd, entry);
        drop(old);
        return start_connect(
            fd,
            Stage::Fresh,
            SockAddr::Inet(sa),
            service,
            TransportProtocol::Stream,
            flags,
        );
    }
    let (app, wake) = placeholder(nonblock, cloexec)?;
    {
        let mut table = lock();
        // What the program set while the shim watched the socket goes to
        // the placeholder now (so a failure's hang-up reaches its epoll
        // sets) and to the flow later.
        let mut old = Vec::new();
        let (epoll, options) = take_watched(&mut table, fd, &mut old);
        if let Err(errno) = swap_in(&app, fd, Some(flags)) {
            drop(table);
            drop(old);
            return Err(errno);
        }
        let mut entry = Entry::new(
            Kind::Stream,
            Domain::Inet(family),
            fd,
            State::Fresh { wake: Some(wake) },
        );
        entry.local = Some(unspecified(family));
        (entry.epoll, entry.options) = (epoll, options);
        re_epoll(&entry, fd);
        old.extend(table.insert(fd, entry));
        drop(table);
        drop(old);
    }
    drop(app);
    start_connect(
        fd,
        Stage::Fresh,
        SockAddr::Inet(sa),
        service,
        TransportProtocol::Stream,
        flags,
    )
}

fn unspecified(family: c_int) -> SockAddr {
    SockAddr::Inet(if family == libc::AF_INET6 {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    })
}

/// Moves the socket to `Connecting` and opens the flow: in this thread for
/// a blocking socket (and for datagram connects), unless a signal
/// interrupts a stream's ([`park`]); for a non-blocking one this returns
/// `EINPROGRESS` and the process's connector completes it
/// ([`submit_connect`]; it is [`Entry::parked`] from the start, so that a
/// blocking `connect` or data call meanwhile waits for it), and so it does
/// a blocking stream's with a send timeout, whose caller waits that long
/// at most ([`connect_timed`]). On a socket that is connecting or
/// connected it answers as [`connect_answer`] (the caller may have
/// seen it connecting before a connect in the background completed).
/// `stage` is the socket's as the caller found it; `flags` are the
/// descriptor's `(O_NONBLOCK, FD_CLOEXEC)`.
fn start_connect(
    fd: RawFd,
    stage: Stage,
    peer: SockAddr,
    service: ServiceId,
    protocol: TransportProtocol,
    flags: (bool, bool),
) -> Res<c_int> {
    let (nonblock, cloexec) = flags;
    let stream = protocol == TransportProtocol::Stream;
    let nonblock = nonblock && stream;
    let limit = match stream && !nonblock {
        true => with_entry(fd, |entry| timeout_option(entry, libc::SO_SNDTIMEO)),
        false => None,
    };
    // A failed connect hung up its placeholder; one that starts over and
    // may return before the outcome needs one that polls as not ready
    // again, or the program would see the hang-up and take the connect for
    // done.
    let mut fresh = match stage {
        Stage::Failed if nonblock || limit.is_some() => Some(placeholder(nonblock, cloexec)?),
        _ => None,
    };
    let mut spare = Vec::new();
    let mut stale = Vec::new();
    let mut dropped = None;
    let (gen, timed) = {
        let mut table = lock();
        let entry = table.get(fd, &mut stale).ok_or(libc::EBADF)?;
        // A non-blocking connect that failed and whose error nobody read
        // (`SO_ERROR`): as TCP does, the next `connect` reports it, once,
        // rather than start again (programs retry `connect` to learn how
        // the last one ended).
        if matches!(entry.state, State::Failed)
            && entry.so_error != 0
            && entry.disconnected != entry.gen
        {
            return Err(std::mem::take(&mut entry.so_error));
        }
        let wake = match std::mem::replace(&mut entry.state, State::Failed) {
            State::Fresh { wake } | State::DgramIdle { wake } => wake,
            State::Failed => match fresh.take() {
                Some((app, wake)) => {
                    let swapped = swap_in(&app, fd, Some(flags));
                    // Dropped after unlocking, either way.
                    spare.push(app);
                    if let Err(errno) = swapped {
                        spare.push(wake);
                        return Err(errno);
                    }
                    entry.ident = ident(fd);
                    re_epoll(entry, fd);
                    Some(wake)
                }
                None => None,
            },
            State::Bound { control, wake, .. } => {
                dropped = Some(control);
                wake
            }
            other => {
                entry.state = other;
                return match entry.state {
                    // A connect that completed in the background since
                    // the caller looked: this call may be the first to
                    // say so.
                    State::Connecting { .. } | State::Connected => connect_answer(entry),
                    // A listener, as TCP: not in the closed state.
                    State::Listening { .. } => Err(libc::EISCONN),
                    _ => Err(libc::EINVAL),
                };
            }
        };
        entry.state = State::Connecting { wake };
        entry.gen = table::next_gen();
        entry.so_error = 0;
        entry.parked = 0;
        entry.untold.store(false, Ordering::Relaxed);
        // The caller's wait, on a copy of the placeholder (taken before the
        // flow can replace it), and its limit. Without a placeholder (none
        // could be made, or no descriptor for the copy) the connect waits
        // in this thread as an untimed one.
        let timed = match (limit, entry.wake().is_some()) {
            (Some(limit), true) => {
                // SAFETY: no pointers; the copy is ours alone.
                let copy =
                    unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, LOWEST_OWN as libc::c_ulong) };
                (copy >= 0).then(|| {
                    mark_parked(entry, fd);
                    // SAFETY: the kernel just made `copy` for us.
                    (unsafe { OwnedFd::from_raw_fd(copy) }, limit)
                })
            }
            _ => None,
        };
        // A non-blocking one goes on without its caller from the start:
        // a blocking `connect` or data call meanwhile waits for it.
        if nonblock && entry.wake().is_some() {
            mark_parked(entry, fd);
        }
        let gen = entry.gen;
        table.refresh(fd);
        (gen, timed)
    };
    drop(stale);
    drop(dropped);
    drop(fresh);
    drop(spare);
    if nonblock || timed.is_some() {
        if let Err(errno) = submit_connect(fd, gen, peer, service) {
            let _ = finish_connect(fd, gen, Err(errno), peer, Some(flags));
            return Err(errno);
        }
        return match timed {
            Some((waiter, limit)) => connect_timed(fd, gen, waiter, limit),
            None => Err(libc::EINPROGRESS),
        };
    }
    let result = match protocol {
        // As TCP's, a blocking stream connect is interrupted by a signal
        // whose handler lacks `SA_RESTART` and goes on meanwhile. The wait
        // for sald's answer is one plain blocking `recvmsg` on the control
        // connection, which the kernel restarts or interrupts as it would
        // the program's own `connect` (so the uninterrupted connect costs
        // what it did: one request and one read, in this thread).
        TransportProtocol::Stream => {
            let request = Request::Connect {
                service,
                protocol,
                timeout_ms: None,
            };
            match pool::request_interruptible(&request) {
                pool::Sent::Answered(reply) => reply.map_err(shim_errno).and_then(flow_from_reply),
                pool::Sent::Interrupted(control) => {
                    park(fd, gen, peer, control, flags);
                    return Err(libc::EINTR);
                }
            }
        }
        TransportProtocol::Datagram => open_flow(service, protocol),
    };
    finish_connect(fd, gen, result, peer, Some(flags)).map(|()| 0)
}

/// The wait of a blocking stream connect with a send timeout (`limit`),
/// as TCP's: its `Connect` went out through the connector (connect
/// generation `gen` of `fd`), which completes it as a non-blocking one
/// ([`finish_connect`], which hangs up the placeholder that `waiter`
/// copies). If the outcome comes within `limit`, `connect` reports it (0,
/// or the error); otherwise it returns `EINPROGRESS` (`EINTR` if a signal
/// comes first: TCP's waits with a timeout are interrupted by any signal,
/// `SA_RESTART` or not, and by a stop and continue) and the connect goes
/// on, [`Entry::parked`] as one a signal interrupted: a later blocking
/// `connect` or data call waits for it (for the socket's timeout at
/// most), `poll` shows the outcome.
///
/// Why the connector, not the control connection this thread would read
/// (as [`park`] does for an interrupted connect): a connect that timed out
/// goes on until sald answers, up to its 31.5 s of retries, and a program
/// that connects with a timeout may leave many such behind (a health
/// check of hosts that are down): one control connection and one thread
/// for the process serve them all, where a connection and a thread each
/// would soon run into sald's limit of connections per user.
fn connect_timed(fd: RawFd, gen: u64, waiter: OwnedFd, limit: Duration) -> Res<c_int> {
    await_parked(waiter, Some(limit)).map_err(|errno| match errno {
        libc::EAGAIN => libc::EINPROGRESS,
        errno => errno,
    })?;
    connect_outcome(fd, gen)
}

/// Marks the connect in flight on `entry` (at `fd`) as going on without
/// its caller ([`Entry::parked`]), so that blocking calls wait for its
/// outcome ([`await_parked`]). Reads are the shim's then (they wait for
/// the outcome there): a receive timeout the program set on the
/// placeholder would only cut the wait of a later untimed `connect`
/// short, so it is turned off; the option record still gives it to the
/// flow, to the waits of reads and to `getsockopt`
/// ([`hidden_receive_timeout`]), and to the placeholder again, should the
/// connect fail ([`restore_receive_timeout`]).
fn mark_parked(entry: &mut Entry, fd: RawFd) {
    entry.parked = std::process::id();
    if entry.wake().is_some() && recorded_option(entry, libc::SO_RCVTIMEO).is_some() {
        // A zero timeval: none.
        let off = [0u8; std::mem::size_of::<libc::timeval>()];
        set_socket_option(fd, libc::SO_RCVTIMEO, &off);
    }
}

/// Sets the receive timeout the program gave the socket of `entry` (from
/// the record of its options) on the placeholder at `fd` again, which
/// [`mark_parked`] turned off, once the connect failed and the
/// placeholder stays.
fn restore_receive_timeout(entry: &Entry, fd: RawFd) {
    if let Some(value) = recorded_option(entry, libc::SO_RCVTIMEO) {
        set_socket_option(fd, libc::SO_RCVTIMEO, value);
    }
}

/// A blocking stream connect that a signal interrupted (connect
/// generation `gen` of `fd`, its `Connect` sent on `control`, whose answer
/// is still to come) goes on without the caller, as TCP's does: a
/// placeholder takes the number if the socket has none (inet mode, or a
/// socket whose last connect failed), so that `poll` shows it not ready
/// until the outcome, and a one-shot thread reads the answer and completes
/// the connect as the connector does a non-blocking one
/// ([`finish_connect`]: the flow at the number or the error in
/// `SO_ERROR`, and a hang-up of the placeholder for whoever polls or
/// waits). The entry is marked [`Entry::parked`] so that a later blocking
/// `connect` and blocking data calls wait for the outcome
/// ([`await_parked`]).
///
/// The thread is spawned with every signal blocked, so the program's
/// signals never land on it; it takes the table lock and nothing else,
/// like the connector's reader, so `fork` handling is unchanged. A forked
/// child does not have it: the child's copy is never connected, as with a
/// non-blocking connect in flight (its copy of the control connection is a
/// close-on-exec descriptor left open, as the pool's are). If no thread can
/// be started, the connect fails (`SO_ERROR`), its request abandoned with
/// the control connection.
fn park(fd: RawFd, gen: u64, peer: SockAddr, control: ControlClient, flags: (bool, bool)) {
    mark_parked_at(fd, gen, flags);
    let complete = move || {
        // A panic on the way must still end the connect, or its waiters
        // would wait for ever.
        let result = std::panic::catch_unwind(AssertUnwindSafe(move || {
            let mut control = control;
            let answer = control.answer();
            if answer.is_ok() {
                pool::give(control);
            } else {
                drop(control);
            }
            answer.map_err(shim_errno).and_then(flow_from_reply)
        }))
        .unwrap_or(Err(libc::EIO));
        let _ = finish_connect(fd, gen, result, peer, None);
    };
    // SAFETY: `all` and `old` are valid sigset_t's; the mask is restored
    // before returning, and the new thread inherits the blocked one.
    let spawned = unsafe {
        let mut all = std::mem::zeroed::<libc::sigset_t>();
        let mut old = std::mem::zeroed::<libc::sigset_t>();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let spawned = std::thread::Builder::new()
            .name("serval-connect".into())
            .spawn(complete);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned
    };
    if spawned.is_err() {
        let _ = finish_connect(fd, gen, Err(libc::EAGAIN), peer, None);
    }
}

/// Marks connect generation `gen` of `fd`, if it is still in flight, as
/// going on without a caller ([`mark_parked`]), for [`park`] and
/// [`join_connect`]: first a placeholder takes the number if the socket
/// has none (inet mode, whose own TCP socket is there, or a socket whose
/// last connect failed), so that `poll` shows it not ready until the
/// outcome and waiters have something to wait on. `flags` are the
/// descriptor's, as a blocking call read them: the placeholder blocks, as
/// `fd`. Without a placeholder (none could be made) the connect is still
/// marked; its waiters then answer as they would without one.
fn mark_parked_at(fd: RawFd, gen: u64, flags: (bool, bool)) {
    let in_flight =
        |entry: &Entry| entry.gen == gen && matches!(entry.state, State::Connecting { .. });
    let needs_placeholder = {
        let mut stale = Vec::new();
        let mut table = lock();
        let needs = matches!(
            table.get(fd, &mut stale),
            Some(entry) if in_flight(entry) && entry.wake().is_none()
        );
        drop(table);
        drop(stale);
        needs
    };
    let mut fresh = if needs_placeholder {
        placeholder(false, flags.1).ok()
    } else {
        None
    };
    let mut spare = Vec::new();
    let mut stale = Vec::new();
    {
        let mut table = lock();
        if let Some(entry) = table.get(fd, &mut stale) {
            if in_flight(entry) {
                if let State::Connecting { wake: wake @ None } = &mut entry.state {
                    if let Some((app, peer_end)) = fresh.take() {
                        if swap_in(&app, fd, Some(flags)).is_ok() {
                            *wake = Some(peer_end);
                            entry.ident = ident(fd);
                            re_epoll(entry, fd);
                        } else {
                            spare.push(peer_end);
                        }
                        // Closed after unlocking, as anything unused.
                        spare.push(app);
                    }
                }
                mark_parked(entry, fd);
                table.refresh(fd);
            }
        }
    }
    drop(stale);
    drop(spare);
    drop(fresh);
}

/// A blocking `connect` on a socket whose blocking connect is in flight
/// in another thread of this process (waiting there for sald's answer,
/// neither interrupted nor timed): as TCP's, it is to wait for that
/// connect's outcome too. So the connect in flight is marked parked
/// ([`mark_parked_at`]), as an interrupted one: its completion hangs the
/// placeholder up for waiters ([`parked_waiter`]), and blocking data
/// calls wait for it from then on. Only in the process that made the
/// socket ([`Entry::owner`]): a forked child's copy of a socket whose
/// connect was in flight in its parent is never completed, so it does
/// not wait (nor does a child's second connect on a socket its parent
/// made: `EALREADY`, as before).
fn join_connect(fd: RawFd) {
    let pid = std::process::id() as libc::pid_t;
    let in_call = with_entry(fd, |entry| {
        let alone = entry.kind == Kind::Stream
            && entry.parked == 0
            && entry.owner == pid
            && matches!(entry.state, State::Connecting { .. });
        alone.then_some(entry.gen)
    });
    if let Some(gen) = in_call {
        mark_parked_at(fd, gen, fd_flags(fd));
    }
}

/// A copy of the placeholder of the interrupted (or timed) connect in
/// flight on `fd` ([`Entry::parked`]), taken under the table lock before
/// the flow can replace it at the number; `None` when there is no such connect (any
/// more). With it, the connect's generation (whoever waited checks that
/// the number still means that socket), and how long the caller may wait
/// for it, as the program set that with the option `timeout`
/// (`SO_SNDTIMEO` or `SO_RCVTIMEO`, see [`timeout_option`]).
fn parked_waiter(fd: RawFd, timeout: c_int) -> Res<Option<(OwnedFd, u64, Option<Duration>)>> {
    let mut stale = Vec::new();
    let waiter = {
        let mut table = lock();
        match table.get(fd, &mut stale) {
            Some(entry)
                if entry.parked == std::process::id()
                    && entry.wake().is_some()
                    && matches!(entry.state, State::Connecting { .. }) =>
            {
                // SAFETY: no pointers; the copy is ours alone.
                let copy =
                    unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, LOWEST_OWN as libc::c_ulong) };
                if copy < 0 {
                    Err(last_errno())
                } else {
                    // SAFETY: the kernel just made `copy` for us.
                    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
                    Ok(Some((copy, entry.gen, timeout_option(entry, timeout))))
                }
            }
            _ => Ok(None),
        }
    };
    drop(stale);
    waiter
}

/// Waits until the placeholder copy `waiter` hangs up (the connect is
/// over, or the socket was closed), for `limit` at most
/// (`EAGAIN` then, at once for a zero limit). A limit too far off for a
/// deadline is none.
///
/// Without a limit, the wait is a blocking `recv` (`MSG_PEEK`; nothing is
/// ever readable there) that the kernel interrupts as it does TCP's wait
/// for a connect: `EINTR` after a handler without `SA_RESTART`, restarted
/// after one with it (and after a stop and continue). A receive timeout
/// the program set on the socket while the connect was in flight
/// (`mark_parked` turns off the one it had), or `O_NONBLOCK` set
/// meanwhile, makes the `recv` end early: the wait goes on in `poll` then
/// (which any signal interrupts). With a limit, it is an `epoll_wait`
/// from the start ([`await_hang_up`]).
fn await_parked(waiter: OwnedFd, limit: Option<Duration>) -> Res<()> {
    let at = waiter.as_raw_fd();
    if let Some(deadline) = limit.and_then(|limit| Instant::now().checked_add(limit)) {
        return await_hang_up(at, deadline);
    }
    loop {
        let mut byte = 0u8;
        // SAFETY: `byte` is valid for one byte.
        let n = unsafe { real::recv(at, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK) };
        if n >= 0 {
            return Ok(());
        }
        match last_errno() {
            libc::EINTR => return Err(libc::EINTR),
            libc::EAGAIN => {}
            // The hang-up (`ECONNRESET` when the peer end was closed
            // with the junk that fills the placeholder unread).
            _ => return Ok(()),
        }
        let mut ready = libc::pollfd {
            fd: at,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `ready` is one valid pollfd.
        match unsafe { libc::poll(&mut ready, 1, -1) } {
            n if n > 0 => return Ok(()),
            // `EINTR`, or no memory for the wait.
            n if n < 0 => return Err(last_errno()),
            _ => {}
        }
    }
}

/// Waits until the placeholder copy at `at` hangs up, until `deadline` at
/// most (`EAGAIN` then); see [`await_events`].
fn await_hang_up(at: RawFd, deadline: Instant) -> Res<()> {
    await_events(at, libc::EPOLLIN as u32, deadline)
}

/// Waits until `at` is ready for one of `events` (or hangs up, or has an
/// error), until `deadline` at most (`EAGAIN` then). As TCP's waits with
/// a timeout, it ends with `EINTR` when any signal handler runs,
/// `SA_RESTART` or not, and also after the process was stopped and
/// continued (`SIGSTOP`, `SIGCONT`), with no handler at all: so does
/// `epoll_wait`, which the kernel never restarts, where `poll` with a
/// timeout would be restarted after a stop.
fn await_events(at: RawFd, events: u32, deadline: Instant) -> Res<()> {
    // SAFETY: no pointers.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just made `epoll` for us.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
    let mut event = libc::epoll_event { events, u64: 0 };
    // SAFETY: `event` is a valid epoll_event for the call's duration;
    // libc's own `epoll_ctl` (the shim records only the program's).
    if unsafe { real::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, at, &mut event) } < 0 {
        return Err(last_errno());
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up: a wait cut short by rounding would end in a timeout
        // that has not passed.
        let wait = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int;
        // SAFETY: `event` is room for one event.
        match unsafe { libc::epoll_wait(epoll.as_raw_fd(), &mut event, 1, wait) } {
            n if n > 0 => return Ok(()),
            0 if Instant::now() >= deadline => return Err(libc::EAGAIN),
            0 => {}
            // `EINTR`, or no memory for the wait.
            _ => return Err(last_errno()),
        }
    }
}

/// A blocking `connect` on a socket whose connect is in flight
/// (non-blocking, interrupted, timed out, or blocking in another thread:
/// see [`join_connect`]): as TCP's, it waits for that connect's outcome
/// and reports it ([`connect_outcome`]), for the send timeout at most
/// (`EALREADY` then). `None` when there is no such connect (any more).
fn connect_parked(fd: RawFd) -> Res<Option<c_int>> {
    join_connect(fd);
    let Some((waiter, gen, limit)) = parked_waiter(fd, libc::SO_SNDTIMEO)? else {
        return Ok(None);
    };
    await_parked(waiter, limit).map_err(|errno| match errno {
        libc::EAGAIN => libc::EALREADY,
        errno => errno,
    })?;
    connect_outcome(fd, gen).map(Some)
}

/// What a `connect` that waited for connect generation `gen` of `fd` to
/// end reports, as TCP's: `0` (and no later `connect` will, see
/// [`Entry::untold`]), or the error, taken from `SO_ERROR`
/// (`ECONNABORTED` if a call other than `connect` took that first, such
/// as `getsockopt`), or `EPIPE` if the connect was disconnected
/// ([`Entry::disconnected`]: by `AF_UNSPEC`, or by another `connect`
/// that reported its failure, as Linux's 6.6 and later).
fn connect_outcome(fd: RawFd, gen: u64) -> Res<c_int> {
    let mut stale = Vec::new();
    let outcome = {
        let mut table = lock();
        match table.get(fd, &mut stale) {
            // `AF_UNSPEC` ended the connect, as TCP's `sk_disconnects`
            // tells its waiters.
            Some(entry) if entry.disconnected == gen => Err(libc::EPIPE),
            // The socket was closed meanwhile (and the number reused).
            Some(entry) if entry.gen != gen => Err(libc::EBADF),
            Some(entry) => match entry.state {
                State::Connected => {
                    entry.untold.store(false, Ordering::Relaxed);
                    Ok(0)
                }
                State::Connecting { .. } => Err(libc::EALREADY),
                _ => match std::mem::take(&mut entry.so_error) {
                    0 => Err(libc::ECONNABORTED),
                    errno => {
                        // As TCP's: the connect that reports the failure
                        // disconnects the socket, and whoever else waited
                        // for it gets `EPIPE`.
                        entry.disconnected = gen;
                        Err(errno)
                    }
                },
            },
            None => Err(libc::EBADF),
        }
    };
    drop(stale);
    outcome
}

/// `connect` on a datagram socket that is open already (after `bind` or
/// `sendto`), as UDP allows: the connected flow takes the place of sald's
/// datagram socket at the number, and of the bound prefix, if any (a
/// connected UDP socket no longer reads datagrams from anyone else
/// either); `getsockname` still names what it was bound to. The flow is
/// opened first: when that fails (no route, sald's refusal), the socket is
/// left as it was. Once it is open, the socket's bound prefix is given up
/// before the flow goes in: should that fail (`dup3`), the connect fails
/// with the prefix gone all the same and the socket failed.
fn connect_open_datagram(
    fd: RawFd,
    peer: SockAddr,
    service: ServiceId,
    flags: (bool, bool),
) -> Res<c_int> {
    let flow = open_flow(service, TransportProtocol::Datagram)?;
    let mut stale = Vec::new();
    let (gen, open) = {
        let mut table = lock();
        let entry = table.get(fd, &mut stale).ok_or(libc::EBADF)?;
        if !matches!(entry.state, State::DgramOpen { .. }) {
            // Another thread connected or listened meanwhile.
            return Err(libc::EINVAL);
        }
        let open = std::mem::replace(&mut entry.state, State::Connecting { wake: None });
        // Its control connection, closed below, no longer crosses `exec`.
        inherit::left(&open, &mut entry.exec);
        entry.gen = table::next_gen();
        inherit::changed();
        (entry.gen, open)
    };
    drop(stale);
    drop(open);
    finish_connect(fd, gen, Ok(flow), peer, Some(flags)).map(|()| 0)
}

/// Sends the `Connect` of the non-blocking connect generation `gen` of the
/// socket at `fd` through the process's connector
/// ([`socket_shim::connector`]: one control connection to sald and one
/// small reader thread for the process, however many connects are in
/// flight); the reader thread installs the answer ([`finish_connect`]).
/// Connects waiting on a connection that breaks (sald restarted) fail with
/// `ECONNRESET` (the errno of [`ShimError::Closed`]), and the next connect
/// opens a new connection. An error means the request did not go out; the
/// caller reports it.
fn submit_connect(fd: RawFd, gen: u64, peer: SockAddr, service: ServiceId) -> Res<()> {
    socket_shim::connector::connect_then(service, TransportProtocol::Stream, None, move |answer| {
        let _ = finish_connect(fd, gen, answer.map_err(shim_errno), peer, None);
    })
    .map_err(shim_errno)
}

fn open_flow(service: ServiceId, protocol: TransportProtocol) -> Res<(FlowInfo, OwnedFd)> {
    let reply = pool::request(&Request::Connect {
        service,
        protocol,
        timeout_ms: None,
    })
    .map_err(shim_errno)?;
    flow_from_reply(reply)
}

/// The flow in sald's answer to a `Connect` (or the errno of its error).
fn flow_from_reply(reply: Reply) -> Res<(FlowInfo, OwnedFd)> {
    match (reply.response, reply.fd) {
        (Response::Connected { flow }, Some(fd)) => Ok((flow, fd)),
        (Response::Error { kind, message }, _) => {
            Err(ShimError::from_daemon(kind, message).errno())
        }
        _ => Err(libc::EPROTO),
    }
}

/// Installs the flow (or records the failure) if the socket is still the
/// one that started this connect; wakes pollers of the placeholder.
/// `flags`: the descriptor's flags as the connecting call read them, for a
/// connect completed within that call; `None` for one completed by the
/// connector thread (the program may have changed them meanwhile). Takes
/// the table lock and no other: the connector's reader thread runs it
/// holding no lock of the connector's (see `fork_prepare` in
/// [`table`](crate::table) for why that matters across `fork`).
fn finish_connect(
    fd: RawFd,
    gen: u64,
    result: Res<(FlowInfo, OwnedFd)>,
    peer: SockAddr,
    flags: Option<(bool, bool)>,
) -> Res<()> {
    let async_ = flags.is_none();
    let mut stale = Vec::new();
    let mut wake = None;
    let mut shut = false;
    let outcome = {
        let mut table = lock();
        match table.get(fd, &mut stale) {
            Some(entry) if entry.gen == gen && entry.disconnected != gen => {
                if let State::Connecting { wake: w } =
                    std::mem::replace(&mut entry.state, State::Failed)
                {
                    wake = w;
                }
                shut = std::mem::take(&mut entry.parked) != 0;
                let installed = match &result {
                    Ok((_, flow)) => swap_in(flow, fd, flags),
                    Err(errno) => Err(*errno),
                };
                match installed {
                    Ok(()) => {
                        entry.state = State::Connected;
                        entry.untold.store(async_, Ordering::Relaxed);
                        entry.ident = ident(fd);
                        entry.peer = Some(peer);
                        if entry.local.is_none() {
                            entry.local = Some(SockAddr::Serval {
                                flags: 0,
                                bits: 0,
                                id: [0; 32],
                            });
                        }
                        re_epoll(entry, fd);
                    }
                    Err(errno) => {
                        // A blocking connect reports its error directly
                        // (and, as TCP's, disconnects the socket: another
                        // `connect` waiting for it gets `EPIPE`); a
                        // non-blocking one through SO_ERROR, as TCP does.
                        match async_ {
                            true => entry.so_error = errno,
                            false => entry.disconnected = gen,
                        }
                        // The placeholder stays: the receive timeout that
                        // `mark_parked` turned off is the program's again.
                        if shut && wake.is_some() {
                            restore_receive_timeout(entry, fd);
                        }
                    }
                }
                table.refresh(fd);
                installed
            }
            // `AF_UNSPEC` ended the connect ([`disconnect`]).
            Some(entry) if entry.disconnected == gen => Err(libc::EPIPE),
            _ => Err(libc::EBADF),
        }
    };
    drop(stale);
    if let (true, Some(wake)) = (shut, &wake) {
        // An interrupted connect's waiters wait for this hang-up: a shut
        // down, unlike a close, reaches them even while a forked child
        // holds a copy of the peer end.
        // SAFETY: no pointers; a socket this function owns.
        unsafe { real::shutdown(wake.as_raw_fd(), libc::SHUT_RDWR) };
    }
    drop(wake);
    drop(result);
    outcome
}

// --- bind / listen ------------------------------------------------------

fn listen_on(
    prefix: ServicePrefix,
    protocol: TransportProtocol,
) -> Res<(ControlClient, ListenerId, Option<OwnedFd>)> {
    let mut control = control()?;
    let reply = control
        .request(&Request::Listen {
            prefix,
            protocol,
            backlog: BIND_BACKLOG,
        })
        .map_err(shim_errno)?;
    match reply.response {
        Response::Listening { listener, .. } => Ok((control, listener, reply.fd)),
        _ => Err(libc::EPROTO),
    }
}

pub(crate) fn bind(fd: RawFd, addr: Option<&[u8]>, pass: impl FnOnce() -> c_int) -> Res<c_int> {
    let Some(found) = look(fd) else {
        if let Some(sa) = addr.and_then(parse_inet) {
            let map = PortMap::get();
            if !map.is_empty() {
                if let Some(service) = map.for_bind(&sa) {
                    if is_tcp(fd) {
                        return inet_bind(fd, sa, service);
                    }
                }
            }
        }
        unwatch(fd);
        return Ok(pass());
    };
    if found.domain != Domain::Serval {
        return Err(libc::EINVAL);
    }
    let sa = parse_serval(addr.ok_or(libc::EFAULT)?)?;
    if sa.as_peer().is_some() {
        return Err(libc::EINVAL);
    }
    let prefix = sa.prefix().ok_or(libc::EINVAL)?;
    match (found.kind, found.stage) {
        (Kind::Stream, Stage::Fresh | Stage::Failed) => {
            let (control, listener, relayed) = bind_stream(prefix)?;
            let mut stale = Vec::new();
            let mut spare = None;
            let result = {
                let mut table = lock();
                match table.get(fd, &mut stale) {
                    Some(entry) => match std::mem::replace(&mut entry.state, State::Failed) {
                        state @ (State::Fresh { .. } | State::Failed) => {
                            let wake = match state {
                                State::Fresh { wake } => wake,
                                _ => None,
                            };
                            entry.state = State::Bound {
                                control,
                                listener,
                                wake,
                            };
                            entry.local = Some(sa);
                            entry.relayed = relayed;
                            Ok(0)
                        }
                        other => {
                            entry.state = other;
                            spare = Some(control);
                            Err(libc::EINVAL)
                        }
                    },
                    None => {
                        spare = Some(control);
                        Err(libc::EBADF)
                    }
                }
            };
            drop(stale);
            drop(spare);
            result
        }
        (Kind::Dgram, Stage::DgramIdle) => {
            let (control, listener, socket) = listen_on(prefix, TransportProtocol::Datagram)?;
            let socket = socket.ok_or(libc::EPROTO)?;
            install_datagram(fd, socket, Some((control, listener)), Some(sa))
        }
        _ => Err(libc::EINVAL),
    }
}

/// Puts an unconnected datagram socket of sald at `fd` (with its bound
/// prefix's control connection and listener, if bound).
fn install_datagram(
    fd: RawFd,
    socket: OwnedFd,
    control: Option<(ControlClient, ListenerId)>,
    local: Option<SockAddr>,
) -> Res<c_int> {
    let mut stale = Vec::new();
    let mut old_state = None;
    let mut spare = None;
    let result = {
        let mut table = lock();
        match table.get(fd, &mut stale) {
            Some(entry) if matches!(entry.state, State::DgramIdle { .. }) => {
                match swap_in(&socket, fd, None) {
                    Ok(()) => {
                        old_state = Some(std::mem::replace(
                            &mut entry.state,
                            State::DgramOpen { bound: control },
                        ));
                        entry.ident = ident(fd);
                        if local.is_some() {
                            entry.local = local;
                        }
                        re_epoll(entry, fd);
                        table.refresh(fd);
                        Ok(0)
                    }
                    Err(errno) => {
                        spare = control;
                        Err(errno)
                    }
                }
            }
            Some(entry) if matches!(entry.state, State::DgramOpen { .. }) && local.is_none() => {
                // Another thread opened it first.
                spare = control;
                Ok(0)
            }
            _ => {
                spare = control;
                Err(libc::EINVAL)
            }
        }
    };
    drop(stale);
    drop(old_state);
    drop(spare);
    drop(socket);
    result
}

fn inet_bind(fd: RawFd, sa: SocketAddr, service: ServiceId) -> Res<c_int> {
    let (control, listener, relayed) = bind_stream(ServicePrefix::exact(service))?;
    let family = if sa.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let mut entry = Entry::new(
        Kind::Stream,
        Domain::Inet(family),
        fd,
        State::Bound {
            control,
            listener,
            wake: None,
        },
    );
    entry.local = Some(SockAddr::Inet(sa));
    entry.relayed = relayed;
    let old = adopt(&mut lock(), fd, entry);
    drop(old);
    Ok(0)
}

pub(crate) fn listen(fd: RawFd, backlog: c_int, pass: impl FnOnce() -> c_int) -> Res<c_int> {
    let Some(found) = look(fd) else {
        unwatch(fd);
        return Ok(pass());
    };
    match (found.kind, found.stage) {
        (_, Stage::Listening) => return listen_again(fd, backlog).map(|()| 0),
        (_, Stage::Stopped) => return listen_stopped(fd, backlog).map(|()| 0),
        // A bound datagram socket listens for connected datagram flows (as
        // the reference's udp_server_user does); it reads no unconnected
        // datagrams from then on.
        (Kind::Dgram, Stage::DgramOpen) => {}
        (Kind::Dgram, Stage::DgramIdle) => return Err(libc::EDESTADDRREQ),
        (Kind::Dgram, _) => return Err(libc::EOPNOTSUPP),
        (_, Stage::Bound) => {}
        (_, Stage::Connected | Stage::Connecting) => return Err(libc::EINVAL),
        _ => return Err(libc::EDESTADDRREQ),
    }
    // Take the bound control connection out of the entry.
    let mut stale = Vec::new();
    let mut unbound = None;
    let mut relayed = None;
    let taken = {
        let mut table = lock();
        match table.get(fd, &mut stale) {
            Some(entry) => match std::mem::replace(&mut entry.state, State::Failed) {
                // An open datagram socket the record may carry: it is not
                // one while it listens (the listener will be, if there is
                // room for it then), so its control connection no longer
                // crosses `exec` (until a rewrite finds the listener in
                // the record): another thread may fill the record's last
                // place before the listener is in the table, or exec.
                State::DgramOpen {
                    bound: Some((control, listener)),
                } => {
                    inherit::left_datagram(&control, &mut entry.exec);
                    entry.gen = table::next_gen();
                    inherit::changed();
                    Some((control, listener, None, entry.gen))
                }
                State::Bound {
                    control,
                    listener,
                    wake,
                } => {
                    entry.gen = table::next_gen();
                    relayed = entry.relayed.take();
                    Some((control, listener, wake, entry.gen))
                }
                other => {
                    // An unbound datagram socket: nothing to listen on.
                    unbound = Some(matches!(other, State::DgramOpen { .. }));
                    entry.state = other;
                    None
                }
            },
            None => None,
        }
    };
    if unbound == Some(true) {
        drop(stale);
        return Err(libc::EDESTADDRREQ);
    }
    drop(stale);
    let (control, listener, wake, gen) = taken.ok_or(libc::EINVAL)?;
    if let Some(prefix) = relayed {
        // Bound through sald's relay: the engine listens (see `inproc`).
        let family = found.domain.family();
        let local = found.local.unwrap_or(SockAddr::Serval {
            flags: 0,
            bits: 0,
            id: [0; 32],
        });
        let recorded = with_entry(fd, |e| Some(Recorded::of(e)));
        let before = inproc_before(fd, recorded);
        let listened = inproc::listen(fd, family, local, prefix, control, backlog, before);
        drop(wake);
        return listened.map(|()| 0);
    }
    let started = start_listener(fd, gen, control, listener, backlog_asked(backlog));
    drop(wake);
    started.map(|()| 0)
}

/// The backlog `listen` asks sald for: as Linux, a negative one asks for
/// the most there is (sald's clamp stands in for `somaxconn`).
fn backlog_asked(backlog: c_int) -> u32 {
    u32::try_from(backlog).unwrap_or(u32::MAX)
}

/// `listen` on a socket that listens already: as Linux's, it changes the
/// backlog, sent on the listener's control connection, in the process
/// that listened. A forked child's `listen` on a listener it inherited
/// leaves the backlog as it is: the connection and its lock are the
/// parent's (see [`ListenerControl::connection`]).
fn listen_again(fd: RawFd, backlog: c_int) -> Res<()> {
    let control = with_entry(fd, |entry| match &entry.state {
        State::Listening { control } => Some(std::sync::Arc::clone(control)),
        _ => None,
    })
    .ok_or(libc::EINVAL)?;
    if control.owner != std::process::id() {
        return Ok(());
    }
    let mut connection = control
        .connection
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    set_backlog(&mut connection, control.listener, backlog_asked(backlog))
}

/// `listen` on a listener that stopped listening ([`stop_listening`]):
/// it listens again, as TCP's, with `backlog`. sald's `SetBacklog` makes
/// the listener admit flows again, and a new accept queue (`Deliver`)
/// takes the place of the hung-up one at the listener's numbers (the ones
/// `dup` made too), with their epoll registrations and options. A forked
/// child's copy cannot (the connection is the parent's, see
/// [`ListenerControl::connection`]): `EINVAL`.
fn listen_stopped(fd: RawFd, backlog: c_int) -> Res<()> {
    let control = with_entry(fd, |entry| entry.listener_control().cloned()).ok_or(libc::EINVAL)?;
    if control.owner != std::process::id() {
        return Err(libc::EINVAL);
    }
    // Held until the new queue is in: an `AF_UNSPEC` in another thread
    // comes before or after, not in between.
    let mut connection = control
        .connection
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    set_backlog(&mut connection, control.listener, backlog_asked(backlog))?;
    let queue = deliver(&mut connection, control.listener)?;
    let mut table = lock();
    let mut result = Err(libc::EBADF);
    let numbers: Vec<RawFd> = table.listener_numbers(&control).map(|(n, _)| n).collect();
    for (number, entry) in table.listener_numbers(&control) {
        // The hung-up queue may stay open elsewhere (a forked child's
        // copy), with the registrations made on it.
        un_epoll(entry, number);
        let swapped = swap_in(&queue, number, None);
        if swapped.is_ok() {
            entry.ident = ident(number);
        }
        re_epoll(entry, number);
        if number == fd {
            result = swapped;
        }
    }
    for number in numbers {
        table.refresh(number);
    }
    if result.is_ok() {
        control.stopped.store(false, Ordering::Relaxed);
    }
    drop(table);
    drop(connection);
    drop(queue);
    result
}

/// Asks sald to hold `backlog` flows of `listener` (`SetBacklog`). A sald
/// that does not know the request (older than this shim, though not older
/// than the request's refusal) leaves the listener's backlog as it was.
fn set_backlog(control: &mut ControlClient, listener: ListenerId, backlog: u32) -> Res<()> {
    match control.request(&Request::SetBacklog { listener, backlog }) {
        Ok(reply) if reply.response == Response::Ok => Ok(()),
        Ok(_) => Err(libc::EPROTO),
        Err(socket_shim::Error::InvalidRequest(_)) => Ok(()),
        Err(error) => Err(shim_errno(error)),
    }
}

/// The accept queue: sald puts each established flow, with its description
/// (an [`AcceptNotice`]), into a SOCK_SEQPACKET socketpair
/// ([`Request::Deliver`]) whose other end becomes the program's listening
/// descriptor, so `poll`/`epoll` readiness, blocking and non-blocking
/// `accept` are the kernel's and forked children share the queue. No
/// thread of ours sits in between: a flow costs sald one `sendmsg` and the
/// program one `recvmsg`. The control connection stays in the table
/// (closing it unbinds the service). The program's `backlog` replaces the
/// one sent at `bind`.
fn start_listener(
    fd: RawFd,
    gen: u64,
    mut control: ControlClient,
    listener: ListenerId,
    backlog: u32,
) -> Res<()> {
    if backlog != BIND_BACKLOG {
        set_backlog(&mut control, listener, backlog)?;
    }
    let app = deliver(&mut control, listener)?;
    let mut stale = Vec::new();
    let mut table = lock();
    let result = match table.get(fd, &mut stale) {
        Some(entry) if entry.gen == gen => match swap_in(&app, fd, None) {
            Ok(()) => {
                entry.state = State::Listening {
                    control: std::sync::Arc::new(ListenerControl::new(listener, control)),
                };
                entry.ident = ident(fd);
                re_epoll(entry, fd);
                table.refresh(fd);
                Ok(())
            }
            Err(errno) => Err(errno),
        },
        _ => Err(libc::EBADF),
    };
    drop(table);
    drop(stale);
    drop(app);
    result
}

/// A daemon-path stream listener on `prefix` with `backlog` (`Listen`,
/// then `Deliver`), for an in-process listener handed over to sald before
/// `fork` (`inproc::handover`): the connection that owns it, and the
/// program's end of its accept queue.
pub(crate) fn daemon_listener(
    prefix: ServicePrefix,
    backlog: u32,
) -> Res<(ListenerControl, OwnedFd)> {
    let (mut control, listener, _) = listen_on(prefix, TransportProtocol::Stream)?;
    if backlog != BIND_BACKLOG {
        set_backlog(&mut control, listener, backlog)?;
    }
    let app = deliver(&mut control, listener)?;
    Ok((ListenerControl::new(listener, control), app))
}

/// Asks sald to deliver `listener`'s flows (`Deliver`): the program's end
/// of its new accept queue.
fn deliver(control: &mut ControlClient, listener: ListenerId) -> Res<OwnedFd> {
    let reply = control
        .request(&Request::Deliver {
            listener,
            flow_info: false,
        })
        .map_err(shim_errno)?;
    match (reply.response, reply.fd) {
        (Response::Delivering { .. }, Some(app)) => Ok(app),
        _ => Err(libc::EPROTO),
    }
}

// --- accept -------------------------------------------------------------

/// What `accept` found. `fd` is the new descriptor.
pub(crate) struct Accepted {
    pub fd: RawFd,
    pub peer: SockAddr,
}

pub(crate) fn accept(
    fd: RawFd,
    flags: c_int,
    pass: impl FnOnce() -> c_int,
) -> Res<Result<Accepted, c_int>> {
    let Some(found) = look(fd) else {
        return Ok(Err(pass()));
    };
    if found.stage != Stage::Listening || flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Err(libc::EINVAL);
    }
    let recv_flags = if flags & libc::SOCK_CLOEXEC != 0 {
        libc::MSG_CMSG_CLOEXEC
    } else {
        0
    };
    let mut msg = [0u8; 64];
    let (n, mut received, truncated) = receive_notice(fd, recv_flags, &mut msg)?;
    if n == 0 {
        // sald closed its end: the listener is gone, or stopped
        // ([`stop_listening`]: TCP's waiting `accept` is `EINVAL` then).
        return Err(libc::EINVAL);
    }
    if received.is_empty() && truncated {
        // The kernel had nowhere to put the flow's descriptor: this
        // process's table is full, as accept(2) reports it.
        return Err(libc::EMFILE);
    }
    if msg[..n] == ACCEPT_EXHAUSTED {
        // sald had no descriptor or memory for a flow (and reset it).
        return Err(libc::ENOBUFS);
    }
    let notice = AcceptNotice::decode(&msg[..n]).ok_or(libc::EPROTO)?;
    if received.is_empty() {
        return Err(libc::EPROTO);
    }
    let flow = received.remove(0);
    drop(received);
    if flags & libc::SOCK_NONBLOCK != 0 {
        set_nonblock(flow.as_raw_fd(), true)?;
    }
    let service = notice.service;
    let (remote, port) = match notice.remote {
        Some(Locator::Ipv4(ip)) => (Some(ip), 0),
        Some(Locator::Udp(addr)) => (Some(*addr.ip()), addr.port()),
        None => (None, 0),
    };
    let peer = match found.domain {
        Domain::Serval => SockAddr::service(service),
        Domain::Inet(family) => addr::inet_peer(remote, port, family),
    };
    let new_fd = flow.into_raw_fd();
    let mut entry = Entry::new(found.kind, found.domain, new_fd, State::Connected);
    entry.local = match found.domain {
        Domain::Serval => Some(SockAddr::service(service)),
        Domain::Inet(_) => found.local,
    };
    entry.peer = Some(peer);
    let old = lock().insert(new_fd, entry);
    drop(old);
    Ok(Ok(Accepted { fd: new_fd, peer }))
}

/// Receives one message of the accept queue at `fd` into `msg` (`flags`
/// for `recvmsg`): its length, the descriptors that came with it, and
/// whether the kernel had nowhere to put them (`MSG_CTRUNC`). libc's own
/// `recvmsg`: the interposed one answers `ENOTCONN` on a listener.
fn receive_notice(fd: RawFd, flags: c_int, msg: &mut [u8]) -> Res<(usize, Vec<OwnedFd>, bool)> {
    let mut iov = libc::iovec {
        iov_base: msg.as_mut_ptr().cast(),
        iov_len: msg.len(),
    };
    let mut cmsg_buf = [0u64; 16];
    let mut received: Vec<OwnedFd> = Vec::new();
    let truncated;
    // SAFETY: as in `send_with_fd`: every pointer refers to a local (or
    // `msg`, borrowed) that outlives the call; descriptors found in the
    // control data were just installed by the kernel and are owned by
    // nobody else.
    let n = unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsg_buf.as_mut_ptr().cast();
        hdr.msg_controllen = std::mem::size_of_val(&cmsg_buf);
        let n = real::recvmsg(fd, &mut hdr, flags);
        truncated = hdr.msg_flags & libc::MSG_CTRUNC != 0;
        if n >= 0 {
            let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<c_int>();
                    let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<c_int>();
                    for i in 0..count {
                        received.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
            }
        }
        n
    };
    let n = usize::try_from(n).map_err(|_| last_errno())?;
    Ok((n, received, truncated))
}

// --- close, dup ---------------------------------------------------------

pub(crate) fn close(fd: RawFd) {
    if !table::maybe_tracked(fd) {
        return;
    }
    let (entry, last) = {
        let mut table = lock();
        let entry = table.remove(fd);
        let last = last_of_listener(&table, entry.as_ref());
        (entry, last)
    };
    if let Some(entry) = entry {
        let_go(entry, last);
    }
}

/// Whether `entry`, just taken out of `table`, is a listener no other
/// number of this process (a `dup`) still holds, decided under the lock:
/// two copies closed at once must not each see the other and leave the
/// service bound.
fn last_of_listener(table: &Table, entry: Option<&Entry>) -> bool {
    match entry.map(|e| &e.state) {
        Some(State::Listening { control }) => !table.holds_listener(control),
        _ => false,
    }
}

/// What a number's meaning going (`close`, or a `dup2`/`dup3` over it)
/// does, once its `entry` is out of the table (`last`: see
/// [`last_of_listener`]). A parked connect's waiters see the hang-up when
/// `entry` drops (see `Entry`'s `Drop`).
fn let_go(entry: Entry, last: bool) {
    if let State::Listening { control } = &entry.state {
        if last && entry.owner == std::process::id() as libc::pid_t {
            // sald unbinds when the control connection closes; forked
            // children's copies of it must not keep the service bound
            // after the process that listened closed the listener.
            // SAFETY: no pointers; a socket this entry owns.
            unsafe { real::shutdown(control.fd, libc::SHUT_RDWR) };
        }
    }
    drop(entry);
}

/// `new` is now a copy of `old` (a successful `dup`, `dup2`, `dup3` or
/// `fcntl(F_DUPFD)`): it means what `old` means, when that can be copied
/// ([`Entry::copy`]); whatever `new` meant before is gone, as by `close`
/// (the kernel closed it): a listener's last number lets the service go.
pub(crate) fn copy(old: RawFd, new: RawFd) {
    if old == new || !(table::maybe_tracked(old) || table::maybe_tracked(new)) {
        return;
    }
    let mut stale = Vec::new();
    let (replaced, last) = {
        let mut table = lock();
        let copy = table.get(old, &mut stale).and_then(|entry| entry.copy(new));
        let replaced = match copy {
            Some(copy) => table.insert(new, copy),
            None => table.remove(new),
        };
        let last = last_of_listener(&table, replaced.as_ref());
        (replaced, last)
    };
    drop(stale);
    if let Some(replaced) = replaced {
        let_go(replaced, last);
    }
}

// --- names and options --------------------------------------------------

/// `getsockname` (`peer` false) or `getpeername` (`peer` true); `None`
/// when `fd` is not ours.
pub(crate) fn name(fd: RawFd, peer: bool) -> Option<Res<SockAddr>> {
    if !table::maybe_tracked(fd) {
        return None;
    }
    let mut stale = Vec::new();
    let result = {
        let mut table = lock();
        table
            .get(fd, &mut stale)
            .filter(|e| !e.watched())
            .map(|entry| {
                if peer {
                    match (entry.peer, &entry.state) {
                        (Some(addr), State::Connected) => Ok(addr),
                        _ => Err(libc::ENOTCONN),
                    }
                } else {
                    Ok(entry.local.unwrap_or(match entry.domain {
                        Domain::Serval => SockAddr::Serval {
                            flags: 0,
                            bits: 0,
                            id: [0; 32],
                        },
                        Domain::Inet(family) => unspecified(family),
                    }))
                }
            })
    };
    drop(stale);
    result
}

/// The peer of `fd` if it is a connected datagram flow of ours: the
/// sender of all it receives, as `recvfrom` and `recvmsg` name it.
pub(crate) fn datagram_peer(fd: RawFd) -> Option<SockAddr> {
    with_entry(fd, |entry| match (entry.kind, &entry.state) {
        (Kind::Dgram, State::Connected) => entry.peer,
        _ => None,
    })
}

/// What `getsockopt` answers for one of our sockets.
pub(crate) enum OptAnswer {
    /// An int value.
    Int(c_int),
    /// A timeout.
    Timeval(libc::timeval),
    /// Let libc answer (the option is about the underlying Unix socket).
    Pass,
}

/// TCP's default MSS (RFC 1122), what Linux answers `TCP_MAXSEG` with on
/// a socket that has not connected: the floor of every segment size.
pub(crate) const TCP_MSS_DEFAULT: c_int = 536;

/// Room for the largest value [`OptAnswer`] gives.
const ANSWER_MAX: usize = std::mem::size_of::<libc::timeval>();

impl OptAnswer {
    /// The bytes of the value `getsockopt` writes (and how many of them);
    /// `None` to let libc answer.
    pub(crate) fn value(&self) -> Option<([u8; ANSWER_MAX], usize)> {
        let mut bytes = [0u8; ANSWER_MAX];
        let size = match self {
            OptAnswer::Pass => return None,
            OptAnswer::Int(int) => {
                let int = int.to_ne_bytes();
                bytes[..int.len()].copy_from_slice(&int);
                int.len()
            }
            OptAnswer::Timeval(tv) => {
                let (sec, usec) = (tv.tv_sec.to_ne_bytes(), tv.tv_usec.to_ne_bytes());
                bytes[..sec.len()].copy_from_slice(&sec);
                bytes[sec.len()..sec.len() + usec.len()].copy_from_slice(&usec);
                ANSWER_MAX
            }
        };
        Some((bytes, size))
    }
}

pub(crate) fn getsockopt(fd: RawFd, level: c_int, opt: c_int) -> Option<Res<OptAnswer>> {
    if !table::maybe_tracked(fd) {
        return None;
    }
    if (level, opt) == (libc::SOL_SOCKET, libc::SO_ERROR) {
        if let Some(watch) = flow_reset_watch(fd) {
            // SAFETY: a look at the program's descriptor; should another
            // thread close the number meanwhile, `poll` reports it invalid
            // (`POLLNVAL`, not a hang-up), which reads as no error.
            let flow = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            return Some(Ok(OptAnswer::Int(watch.take_error(flow))));
        }
    }
    let mut stale = Vec::new();
    let result = {
        let mut table = lock();
        table
            .get(fd, &mut stale)
            .filter(|e| !e.watched())
            .map(|entry| {
                let protocol = match entry.kind {
                    Kind::Stream => libc::IPPROTO_TCP,
                    Kind::Dgram => libc::IPPROTO_UDP,
                };
                Ok(match (level, opt) {
                    (libc::SOL_SOCKET, libc::SO_ERROR) => {
                        OptAnswer::Int(std::mem::take(&mut entry.so_error))
                    }
                    (libc::SOL_SOCKET, libc::SO_TYPE) => OptAnswer::Int(match entry.kind {
                        Kind::Stream => libc::SOCK_STREAM,
                        Kind::Dgram => libc::SOCK_DGRAM,
                    }),
                    (libc::SOL_SOCKET, libc::SO_DOMAIN) => OptAnswer::Int(entry.domain.family()),
                    (libc::SOL_SOCKET, libc::SO_PROTOCOL) => OptAnswer::Int(protocol),
                    (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => {
                        OptAnswer::Int(c_int::from(stage(&entry.state) == Some(Stage::Listening)))
                    }
                    (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => match hidden_receive_timeout(entry) {
                        Some(timeout) => OptAnswer::Timeval(timeout),
                        None => OptAnswer::Pass,
                    },
                    (libc::SOL_SOCKET, _) => OptAnswer::Pass,
                    (libc::IPPROTO_TCP, libc::TCP_NODELAY) => OptAnswer::Int(1),
                    // sald's flow knows the real one; this is never above
                    // it, and never 0.
                    (libc::IPPROTO_TCP, libc::TCP_MAXSEG) if entry.kind == Kind::Stream => {
                        OptAnswer::Int(TCP_MSS_DEFAULT)
                    }
                    _ if option_level_known(entry.kind, level) => OptAnswer::Int(0),
                    _ => return Err(libc::ENOPROTOOPT),
                })
            })
    };
    drop(stale);
    result
}

/// The receive timeout the program set on the socket of `entry`, as
/// `getsockopt` reads it back, while [`mark_parked`] has the
/// placeholder's turned off (or the program set it again meanwhile, on
/// the placeholder: the same value); `None` when the socket's own is the
/// program's.
fn hidden_receive_timeout(entry: &Entry) -> Option<libc::timeval> {
    if entry.parked == 0 || entry.wake().is_none() {
        return None;
    }
    timeout::read_back_option(recorded_option(entry, libc::SO_RCVTIMEO)?)
}

/// The program set or cleared close-on-exec on `fd` (`fcntl(F_SETFD)`):
/// whether a listener or datagram socket crosses `exec` changed (see
/// `inherit`).
pub(crate) fn cloexec_set(fd: RawFd) {
    if !table::maybe_tracked(fd) {
        return;
    }
    let mut stale = Vec::new();
    {
        let mut table = lock();
        if let Some(entry) = table.get(fd, &mut stale) {
            // Looked at again by the next write of the record.
            entry.exec.crosses = None;
            if inherit::carried(&entry.state) {
                inherit::changed();
            }
        }
    }
    drop(stale);
}

/// Whether the shim answers for `fd` (not a kernel socket, nor one it only
/// watches).
pub(crate) fn is_ours(fd: RawFd) -> bool {
    look(fd).is_some()
}

/// Whether `fd` is a listener the shim answers for (whose queues
/// `ioctl(FIONREAD)` does not count: `EINVAL`, as TCP's).
pub(crate) fn listens(fd: RawFd) -> bool {
    look(fd).is_some_and(|found| found.stage == Stage::Listening)
}

/// Whether `fd` is a stream socket (listening or not) the shim answers for
/// on the daemon path.
pub(crate) fn is_stream(fd: RawFd) -> bool {
    look(fd).is_some_and(|found| found.kind == Kind::Stream)
}

/// The kind of socket `fd` is, if `setsockopt` on it is ours to answer.
pub(crate) fn setsockopt_kind(fd: RawFd) -> Option<Kind> {
    look(fd).map(|found| found.kind)
}

/// Whether a program written for TCP or UDP may set or get options at
/// `level` on a socket of this kind: the levels such a kernel socket has
/// (IP, IPv6, and TCP or UDP). Their options mean nothing to a flow that
/// sald carries, so they are accepted and read as 0; any other level is
/// `ENOPROTOOPT`, as Linux answers.
pub(crate) fn option_level_known(kind: Kind, level: c_int) -> bool {
    let transport = match kind {
        Kind::Stream => libc::IPPROTO_TCP,
        Kind::Dgram => libc::IPPROTO_UDP,
    };
    level == libc::IPPROTO_IP || level == libc::IPPROTO_IPV6 || level == transport
}

/// The most bytes of an option value kept for a swap: every socket-level
/// option Linux has is smaller (a `timeval`, a `linger`, an interface name).
pub(crate) const OPTION_MAX: usize = 64;

/// Remembers that the program set socket-level option `name` to `value` on
/// `fd` (see `Entry::options`).
pub(crate) fn note_option(fd: RawFd, name: c_int, value: &[u8]) {
    let mut stale = Vec::new();
    {
        let mut table = lock();
        if let Some(entry) = table.get(fd, &mut stale) {
            entry.options.retain(|(n, _)| *n != name);
            entry.options.push((name, value.to_vec()));
            // A receive timeout set while a parked connect is in flight
            // went onto the placeholder, whose own [`mark_parked`] turned
            // off: it would cut the untimed waits there short (a `connect`
            // or `write` waiting for the outcome, which then waited in
            // `poll`, where a `SA_RESTART` signal gave `EINTR`). The record
            // holds it for the flow, the waits of reads and `getsockopt`.
            if name == libc::SO_RCVTIMEO
                && entry.parked != 0
                && entry.wake().is_some()
                && matches!(entry.state, State::Connecting { .. })
            {
                set_socket_option(
                    fd,
                    libc::SO_RCVTIMEO,
                    &[0; std::mem::size_of::<libc::timeval>()],
                );
            }
            // The record of what crosses `exec` has the options too.
            if inherit::carried(&entry.state) {
                inherit::changed();
            }
        }
    }
    drop(stale);
}

// --- datagrams ----------------------------------------------------------

fn open_datagram(fd: RawFd) -> Res<()> {
    let mut control = control()?;
    let reply = control
        .request(&Request::OpenDatagram)
        .map_err(shim_errno)?;
    let socket = match (reply.response, reply.fd) {
        (Response::DatagramOpened { .. }, Some(socket)) => socket,
        _ => return Err(libc::EPROTO),
    };
    install_datagram(fd, socket, None, None).map(|_| ())
}

/// What a send carries, as [`sendto`] takes it: one buffer (`sendto`) or
/// the program's iovecs (`sendmsg`, see `msg`), which only a datagram
/// gathers into one payload; a stream or a connected flow sends them as
/// they are.
pub(crate) trait Outgoing {
    /// How many bytes.
    fn size(&self) -> usize;
    /// The bytes, as one datagram's payload.
    fn payload(&self) -> Vec<u8>;
    /// Sends them as they are on `fd` (a flow's socket, or a stream's
    /// placeholder) with `flags`, as `send(2)` returns (errno set).
    fn send(&self, fd: RawFd, flags: c_int) -> isize;
}

impl Outgoing for [u8] {
    fn size(&self) -> usize {
        self.len()
    }

    fn payload(&self) -> Vec<u8> {
        self.to_vec()
    }

    fn send(&self, fd: RawFd, flags: c_int) -> isize {
        // SAFETY: `self` is valid for its length.
        unsafe { real::send(fd, self.as_ptr().cast(), self.len(), flags) }
    }
}

/// Where a receive puts what it reads, as [`recvfrom`] takes it: one
/// buffer (`recvfrom`, `recv`, `read`) or the program's iovecs
/// (`recvmsg`, `readv`, see `msg`).
pub(crate) trait Incoming {
    /// How many bytes fit.
    fn room(&self) -> usize;
    /// Copies in as much of a datagram's payload as fits (the end of the
    /// socket is an empty one); returns how many bytes. A `data` longer
    /// than [`Incoming::room`] is truncated, as the kernel truncates a
    /// datagram.
    fn fill(&mut self, data: &[u8]) -> usize;
    /// Receives into it from `fd` as it is (a flow's socket, or a
    /// placeholder) with `flags`, as `recv(2)` returns (errno set).
    fn recv(&mut self, fd: RawFd, flags: c_int) -> isize;
}

impl Incoming for &mut [u8] {
    fn room(&self) -> usize {
        self.len()
    }

    fn fill(&mut self, data: &[u8]) -> usize {
        let len = data.len().min(self.len());
        self[..len].copy_from_slice(&data[..len]);
        len
    }

    fn recv(&mut self, fd: RawFd, flags: c_int) -> isize {
        // SAFETY: `self` is valid for writes of its length.
        unsafe { real::recv(fd, self.as_mut_ptr().cast(), self.len(), flags) }
    }
}

/// `sendto` and friends (`sendmsg`). `Ok(None)` means "not ours: ask
/// libc".
pub(crate) fn sendto(
    fd: RawFd,
    data: &(impl Outgoing + ?Sized),
    flags: c_int,
    addr: Option<&[u8]>,
) -> Res<Option<isize>> {
    let Some(found) = look(fd) else {
        return Ok(None);
    };
    let plain = |fd| -> Res<Option<isize>> {
        let n = data.send(fd, flags);
        if n < 0 {
            Err(last_errno())
        } else {
            Ok(Some(n))
        }
    };
    match (found.kind, found.stage) {
        (Kind::Stream, _) => match refusal(fd, true, flags) {
            Some(errno) => Err(errno),
            None => plain(fd),
        },
        // A listener sends nothing, to the address given or any (its
        // accept queue is at the number); once it is gone, the number is
        // the program's call's.
        (Kind::Dgram, Stage::Listening) => match refusal(fd, true, flags) {
            Some(errno) => Err(errno),
            None => Ok(None),
        },
        (Kind::Dgram, Stage::Connected) if addr.is_none() => plain(fd),
        (Kind::Dgram, Stage::Connected) => Err(libc::EISCONN),
        (Kind::Dgram, _) => {
            let sa = parse_serval(addr.ok_or(libc::EDESTADDRREQ)?)?;
            if data.size() > MAX_DATAGRAM {
                return Err(libc::EMSGSIZE);
            }
            if found.stage == Stage::DgramIdle {
                open_datagram(fd)?;
            }
            let frame = match sa.as_peer() {
                Some(peer) => DatagramFrame::Reply {
                    peer,
                    data: data.payload(),
                },
                None => DatagramFrame::SendTo {
                    service: sa.service_id().ok_or(libc::EINVAL)?,
                    via: sa.at().map(Locator::Ipv4),
                    data: data.payload(),
                },
            }
            .encode();
            let flags = (flags & libc::MSG_DONTWAIT) | libc::MSG_NOSIGNAL;
            // SAFETY: `frame` is valid for its length.
            let n = unsafe { real::send(fd, frame.as_ptr().cast(), frame.len(), flags) };
            if n < 0 {
                return Err(match last_errno() {
                    libc::EPIPE => libc::ECONNRESET,
                    other => other,
                });
            }
            Ok(Some(data.size() as isize))
        }
    }
}

/// `recvfrom` and friends (`recv`, `read`, `recvmsg`, `readv`). `Ok(None)`
/// means "not ours: ask libc".
pub(crate) fn recvfrom<I: Incoming>(
    fd: RawFd,
    buf: &mut I,
    flags: c_int,
) -> Res<Option<(isize, Option<SockAddr>)>> {
    let Some(found) = look(fd) else {
        return Ok(None);
    };
    let plain = |buf: &mut I| -> Res<isize> {
        let n = buf.recv(fd, flags);
        if n < 0 {
            Err(last_errno())
        } else {
            Ok(n)
        }
    };
    // A stream that is not connected and a listener of either kind are
    // refused (see [`refusal`]); an open datagram socket reads its frames.
    if found.kind == Kind::Stream || found.stage == Stage::Listening {
        if let Some(errno) = refusal(fd, false, flags) {
            return Err(errno);
        }
    }
    if found.stage != Stage::DgramOpen {
        let n = plain(buf)?;
        let peer = if found.kind == Kind::Dgram {
            datagram_peer(fd)
        } else {
            if n == 0 && buf.room() != 0 {
                if let Some(errno) = error_at_end(fd) {
                    return Err(errno);
                }
            }
            None
        };
        return Ok(Some((n, peer)));
    }
    let mut message = vec![0u8; MAX_DATAGRAM + sal_control::RECEIVED_HEADER_MAX];
    let pass_flags = flags & (libc::MSG_DONTWAIT | libc::MSG_PEEK);
    // SAFETY: `message` is valid for writes of its length.
    let n = unsafe { real::recv(fd, message.as_mut_ptr().cast(), message.len(), pass_flags) };
    if n < 0 {
        return Err(last_errno());
    }
    if n == 0 {
        buf.fill(&[]);
        return Ok(Some((0, None)));
    }
    let n = n as usize;
    match DatagramFrame::decode(&message[..n]) {
        Ok(DatagramFrame::Received { peer, data, .. }) => {
            let len = buf.fill(&data);
            let reported = if flags & libc::MSG_TRUNC != 0 {
                data.len()
            } else {
                len
            };
            Ok(Some((reported as isize, Some(SockAddr::sender(&peer)))))
        }
        Ok(DatagramFrame::Refused) => Err(libc::ECONNREFUSED),
        _ => Err(libc::EPROTO),
    }
}

/// The error a write (`send`, `write`: `write` true, with its `flags`) or
/// a read on `fd` gets without reaching the descriptor, if any: for a
/// datagram socket see [`datagram_refusal`]. A stream that
/// is not connected answers as TCP: the error of a failed non-blocking
/// connect once, then `ENOTCONN` for a read and `EPIPE` for a write, with
/// `SIGPIPE` unless `MSG_NOSIGNAL`. (The placeholder or accept queue at
/// the number would block, read end of file or hand out an accept notice.)
pub(crate) fn refusal(fd: RawFd, write: bool, flags: c_int) -> Option<Errno> {
    if !table::maybe_intercepted(fd) {
        return None;
    }
    let mut stale = Vec::new();
    let errno = {
        let mut table = lock();
        match table.get(fd, &mut stale) {
            // An interrupted connect in flight: as TCP, wait for it.
            Some(entry) if entry.parked != 0 && matches!(entry.state, State::Connecting { .. }) => {
                drop(table);
                drop(stale);
                return refusal_parked(fd, write, flags);
            }
            Some(entry) if entry.intercepted() => match entry.kind {
                Kind::Dgram => datagram_refusal(&entry.state, write),
                Kind::Stream => Some(match std::mem::take(&mut entry.so_error) {
                    0 if write => libc::EPIPE,
                    0 => libc::ENOTCONN,
                    pending => pending,
                }),
            },
            _ => None,
        }
    };
    drop(stale);
    if errno == Some(libc::EPIPE) && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: raise takes no pointers; the kernel sends a writer on a
        // broken TCP socket this signal the same way, to the calling thread.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
    errno
}

/// [`refusal`] for a datagram socket that is not connected. A listener is
/// a connection-mode socket that is not connected: its reads and writes
/// (a destination given or not) are `ENOTCONN`, as Linux answers on a
/// listening `SOCK_SEQPACKET` socket (UDP cannot listen) and as a stream
/// listener's reads are. None reaches the number, where the accept queue
/// holds `accept`'s notices in place of sald's datagram socket (there is
/// none left to send from). Any other has no destination for a write
/// that names none (`EDESTADDRREQ`) and reads its frames (see
/// [`recvfrom`]).
fn datagram_refusal(state: &State, write: bool) -> Option<Errno> {
    match state {
        State::Listening { .. } => Some(libc::ENOTCONN),
        _ => write.then_some(libc::EDESTADDRREQ),
    }
}

/// [`refusal`] for a stream whose non-blocking, interrupted or timed out
/// connect is in flight ([`Entry::parked`]): as TCP's, a data call waits for the
/// connect to end (`EAGAIN` at once on a non-blocking socket or with
/// `MSG_DONTWAIT`, and once the socket's send timeout for a write, its
/// receive timeout for a read, has passed; `EINTR` if a signal interrupts
/// the wait), then goes on on the flow or fails as on a failed connect.
/// (The placeholder at the number would block until the outcome, then end
/// the wait with end of file or `EPIPE` and `SIGPIPE`.) As TCP's, the
/// call's timeout counts down across both waits: once connected, it waits
/// on the flow for what is left of it ([`await_events`]; the flow's own
/// timeout would start afresh), then goes on there.
fn refusal_parked(fd: RawFd, write: bool, flags: c_int) -> Option<Errno> {
    if flags & libc::MSG_DONTWAIT != 0 || fd_flags(fd).0 {
        // A forked child's copy never connects (nothing completes it
        // here) and polls as hung up: `EAGAIN` would keep an event loop
        // spinning on it.
        return Some(match parked_elsewhere(fd) {
            true => libc::ENOTCONN,
            false => libc::EAGAIN,
        });
    }
    let timeout = match write {
        true => libc::SO_SNDTIMEO,
        false => libc::SO_RCVTIMEO,
    };
    let mut deadline = None;
    match parked_waiter(fd, timeout) {
        Ok(Some((waiter, _, limit))) => {
            deadline = limit.and_then(|limit| Instant::now().checked_add(limit));
            if let Err(errno) = await_parked(waiter, limit) {
                return Some(errno);
            }
        }
        Ok(None) => {}
        Err(errno) => return Some(errno),
    }
    let still = {
        let mut stale = Vec::new();
        let mut table = lock();
        let still = matches!(
            table.get(fd, &mut stale),
            Some(entry) if entry.parked != 0 && matches!(entry.state, State::Connecting { .. })
        );
        drop(table);
        drop(stale);
        still
    };
    match still {
        // No placeholder to wait on (none could be made), or a forked
        // child's copy, which nothing completes: never connected.
        true => Some(libc::ENOTCONN),
        false => match (refusal(fd, write, flags), deadline) {
            (None, Some(deadline)) => {
                let ready = match write {
                    true => libc::EPOLLOUT,
                    false => libc::EPOLLIN,
                };
                await_events(fd, ready as u32, deadline).err()
            }
            (refused, _) => refused,
        },
    }
}

/// Whether the connect in flight on `fd` is another process's: this is a
/// forked child's copy of the socket, which nothing here completes.
fn parked_elsewhere(fd: RawFd) -> bool {
    let mut stale = Vec::new();
    let mut table = lock();
    let elsewhere = matches!(
        table.get(fd, &mut stale),
        Some(entry) if entry.parked != 0
            && entry.parked != std::process::id()
            && matches!(entry.state, State::Connecting { .. })
    );
    drop(table);
    drop(stale);
    elsewhere
}

// --- resets ---------------------------------------------------------------

/// A read of `fd` that asked for bytes got end of file: the error to
/// report instead, if any, as from a TCP socket.
///
/// `ECONNRESET`, once, for a reset. Only for a connected stream flow
/// whose writing the program has not shut down (see `socket_shim::reset`):
/// sald shuts a reset flow's socket down both ways once the bytes that
/// had arrived are through, a finished one only for writing, and this end
/// then sees a hang-up only after a reset.
///
/// `EPIPE` for a read that waited on a flow that another thread
/// disconnected meanwhile (`connect` to `AF_UNSPEC`, [`disconnect`], which
/// shut the flow down and left the stream failed): as Linux's (since 6.6,
/// `sk_wait_data` after `tcp_disconnect`), the reset stays pending for
/// the next read. Reads of a failed stream are otherwise answered without
/// reaching the descriptor ([`refusal`]), so only such a read gets here.
pub(crate) fn error_at_end(fd: RawFd) -> Option<Errno> {
    let Some(watch) = flow_reset_watch(fd) else {
        let disconnected = with_entry(fd, |entry| {
            (entry.kind == Kind::Stream
                && matches!(entry.state, State::Failed)
                && entry.disconnected == entry.gen
                && entry.so_error != 0)
                .then_some(())
        });
        return disconnected.map(|()| libc::EPIPE);
    };
    // SAFETY: the program's read of `fd` just returned; should another
    // thread close the number meanwhile, `poll` reports it invalid
    // (`POLLNVAL`, not a hang-up), which reads as no reset.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    watch.end_of_file(fd).is_err().then_some(libc::ECONNRESET)
}

/// The program is about to shut down `fd`'s writing (`shutdown` with
/// `SHUT_WR` or `SHUT_RDWR`): if it is a connected stream flow, a hang-up
/// no longer tells a reset from a finished flow, and its end of file stays
/// one (for every copy of the flow).
pub(crate) fn write_shut(fd: RawFd) {
    if let Some(watch) = flow_reset_watch(fd) {
        watch.write_shut();
    }
}

/// The program is about to shut down `fd`'s reading (`shutdown` with
/// `SHUT_RD`): if it is a connected stream flow, its reads' end of file
/// is no longer the peer's end of stream, and a reset after it is still
/// reported.
pub(crate) fn read_shut(fd: RawFd) {
    if let Some(watch) = flow_reset_watch(fd) {
        watch.read_shut();
    }
}

/// A receive in a batch (`recvmmsg`) that had already received a message
/// failed with `errno`, which ended the batch: as Linux keeps such an
/// error for the socket's next call, a reset, which the shim reports
/// once, is reported again by the next read.
pub(crate) fn report_again(fd: RawFd, errno: Errno) {
    if errno == libc::ECONNRESET {
        if let Some(watch) = flow_reset_watch(fd) {
            watch.report_again();
        }
    }
}

/// Whether `fd` is a connected stream flow of ours (a look at the table).
pub(crate) fn stream_flow(fd: RawFd) -> bool {
    with_entry(fd, |entry| entry.stream_flow().then_some(())).is_some()
}

/// The reset record of `fd`, if it is a connected stream flow (shared by
/// its `dup` copies).
fn flow_reset_watch(fd: RawFd) -> Option<std::sync::Arc<socket_shim::reset::ResetWatch>> {
    with_entry(fd, |entry| {
        entry
            .stream_flow()
            .then(|| std::sync::Arc::clone(&entry.reset))
    })
}

// --- epoll ----------------------------------------------------------------

/// Records the registration an `epoll_ctl` call is about to make for one
/// of our sockets (re-added after a swap), before the call, so that a swap
/// racing with it cannot miss it; returns what it replaces, for
/// [`set_epoll`] to put back should the call fail.
pub(crate) fn note_epoll(
    epfd: RawFd,
    op: c_int,
    fd: RawFd,
    event: Option<libc::epoll_event>,
) -> Option<libc::epoll_event> {
    let registration = match op {
        libc::EPOLL_CTL_DEL => None,
        _ => event,
    };
    set_epoll(epfd, fd, registration)
}

/// Records `registration` (`None`: none) as `fd`'s in `epfd`; returns the
/// one it replaces. Also how a failed `epoll_ctl` puts back what was
/// recorded before it.
pub(crate) fn set_epoll(
    epfd: RawFd,
    fd: RawFd,
    registration: Option<libc::epoll_event>,
) -> Option<libc::epoll_event> {
    if !table::maybe_tracked(fd) {
        return None;
    }
    let mut stale = Vec::new();
    let previous = {
        let mut table = lock();
        table.get(fd, &mut stale).and_then(|entry| {
            let at = entry.epoll.iter().position(|(e, _)| *e == epfd);
            let previous = at.map(|at| entry.epoll.remove(at).1);
            if let Some(event) = registration {
                entry.epoll.push((epfd, event));
            }
            previous
        })
    };
    drop(stale);
    previous
}
