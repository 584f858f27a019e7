//! The hand-over to sald before `fork` and `exec` (`docs/in-process-sal.md`,
//! "fork and exec"). An `exec` replaces the process's memory, the engine
//! with it, so its sockets must go on elsewhere to cross it at all (see
//! [`before_exec`]). After `fork` both processes would hold every in-process
//! socket, and only the parent's engine can drive them: an
//! accept-then-fork server's child, which goes on with the flow while its
//! parent closes it, would find it reset, and a prefork server's children
//! could not accept. So `fork`'s prepare handler hands every socket of
//! the engine to sald first, and parent and child then share one kernel
//! socket each, as they would TCP's, served by the daemon path:
//!
//! - **an established stream** (open both ways, or finished by the peer
//!   alone: CLOSE-WAIT): the engine exports the flow (`Stream::export`:
//!   its TCP and SAL state and buffered bytes, forgotten without a word
//!   to the peer; a client whose server has not spoken yet asks it to
//!   first), sald adopts it (`Request::Adopt`, with the engine's UDP
//!   socket as proof the flow is the caller's) and moves it to its own
//!   locator with an RSYN, and its socketpair end takes each of the
//!   program's numbers for the stream, as a daemon-path `connect`
//!   installs a flow;
//! - **a listener**: the engine's listener stops and sald's relay of its
//!   prefix ends, then sald listens on the prefix itself
//!   (`ops::daemon_listener`) and the accept queue takes the numbers.
//!   Flows the engine had queued are reset (the kernel would keep them):
//!   their clients see a reset connect.
//!
//! Each number keeps the close-on-exec the program asked for, its epoll
//! registrations (taken out of their sets for the way, so that none
//! reports the engine's side of the move, and made again on the new
//! file) and socket-level options. Each is checked against its eventfd
//! before it is replaced, so a number the program closed and reused
//! meanwhile is left alone; copies a `dup` made meanwhile are found and
//! replaced too. A listener on the daemon path is in the record of what
//! crosses `exec` (`inherit`) from then on.
//!
//! Left in-process (the child's copies reset, as before): streams still
//! connecting or whose own end finished sending (the export does not
//! carry that teardown), streams whose buffers hold more than an `Adopt`
//! frame carries ([`MAX_ADOPT_BUFFERED`]), or whose control exchange does
//! not settle within [`PATIENCE`], and every socket after the control
//! connection to sald failed. A flow sald refuses (its limits, its
//! buffers smaller than the flow's bytes) after the engine exported it
//! comes back to the engine (`Stream::restore`: imported again, moved
//! back with an RSYN) and stays in-process. A listener whose prefix sald
//! does not give back within [`PATIENCE`] is lost (stopped, as after
//! `shutdown`).
//!
//! A read, write, `accept` or `poll` that fails while its socket is on
//! its way (another thread's while this one forks) waits for the
//! hand-over to end and is then made again on the plain path
//! (`inproc::calls::HANDED_OVER`): it sees no error. Not so other calls
//! made in that window on the socket (`shutdown`, `setsockopt`,
//! `fcntl`): they reach the engine's socket, whose flow is on its way,
//! and are lost or fail with `ECONNRESET`. A non-blocking call that meets
//! the window waits for the whole hand-over (every socket's, up to
//! [`PATIENCE`] each for a busy one).
//!
//! Cost: one `Adopt` round trip to sald per stream and a `Listen` and
//! `Deliver` per listener, at each `fork`, `exec` or `posix_spawn` of a
//! process that has in-process sockets (a spawn hands over only those
//! the new program may inherit); nothing for one that has none. `vfork`
//! and glibc's `system` and `popen` hand nothing over (their children
//! exec at once; in-process numbers are close-on-exec in the kernel,
//! whatever `F_GETFD` answers).
//!
//! A flow whose two ends are both in this process cannot go to sald
//! whole: once one end is sald's, the other's peer is sald itself, which
//! refuses it (no host takes a flow to one of its own locators); it
//! stays in the engine, and is reset at an `exec`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sal_control::{Request, Response, MAX_ADOPT_BUFFERED};
use sal_inproc::Runtime;
use socket_shim::ControlClient;

use super::engine::LINGER;
use super::{epoll, registry, Socket};
use crate::ops;
use crate::table::{self, Domain, Entry, Kind, ListenerControl, State};
use socket_shim::reset::ResetWatch;

/// How long a flow whose control exchange is in progress (its
/// handshake's last ACK unconfirmed, a move unanswered) is waited for
/// before it is left in-process, and how long sald is given to let go of
/// a relayed prefix (it reads the relay connection's end on its own
/// time). Generous: each is a round trip or less on a live host, and
/// missing it costs the socket.
const PATIENCE: Duration = Duration::from_secs(1);

/// Held while a hand-over is under way: by the thread that hands sockets
/// over at `fork`, `exec` or `posix_spawn` from before the call to after
/// it ([`begin`], [`before_exec`], [`before_spawn`], then [`end`] or
/// [`exec_failed`]), and by [`socket_at`] and [`disconnect_at`] for their
/// call. Calls that met a socket on its way wait on it ([`wait`]).
static UNDER_WAY: Mutex<()> = Mutex::new(());

thread_local! {
    static HELD: std::cell::RefCell<Option<MutexGuard<'static, ()>>> =
        const { std::cell::RefCell::new(None) };
    /// The hand-overs this thread is inside (a [`begin`] counts until its
    /// [`end`]). One that would start inside another is skipped: taking
    /// [`UNDER_WAY`] again would deadlock (an `exec` from a signal
    /// handler that interrupted a hand-over; a `posix_spawn` that runs
    /// `fork`'s handlers, as glibc's did before 2.24).
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts this thread into a hand-over; whether it is the outermost.
fn enter() -> bool {
    DEPTH
        .try_with(|depth| {
            depth.set(depth.get() + 1);
            depth.get() == 1
        })
        .unwrap_or(false)
}

/// Counts this thread out of a hand-over; whether it was the outermost.
fn leave() -> bool {
    DEPTH
        .try_with(|depth| {
            depth.set(depth.get().saturating_sub(1));
            depth.get() == 0
        })
        .unwrap_or(true)
}

/// Whether this thread is inside a hand-over.
pub(crate) fn inside() -> bool {
    DEPTH.try_with(|depth| depth.get() > 0).unwrap_or(true)
}

/// A call's own hand-over ([`socket_at`], [`disconnect_at`]): counted
/// while it lasts.
struct Within;

impl Within {
    /// `None` inside another hand-over (see [`DEPTH`]).
    fn enter() -> Option<Within> {
        if enter() {
            return Some(Within);
        }
        leave();
        None
    }
}

impl Drop for Within {
    fn drop(&mut self) {
        leave();
    }
}

/// Before `fork` (the engine's prepare handler, before any of the shim's
/// locks is taken): hands every listener and established stream of this
/// process to sald. Holds [`UNDER_WAY`] until [`end`].
pub(crate) fn begin() {
    begin_with(|_| true);
}

/// [`begin`] for the sockets whose numbers `which` picks; nothing (but
/// the count [`end`] takes back) inside another hand-over.
fn begin_with(which: fn(&registry::Numbers) -> bool) {
    if !enter() {
        return;
    }
    let guard = UNDER_WAY.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = HELD.try_with(|held| *held.borrow_mut() = Some(guard));
    let _ = std::panic::catch_unwind(|| {
        let sockets: Vec<_> = registry::by_socket()
            .into_iter()
            .filter(|(socket, numbers)| !socket.inherited() && which(numbers))
            .collect();
        hand_over_all(sockets);
    });
}

/// Before `exec` (`crate::exec`'s wrappers of the exec family), in the
/// process that owns the engine: the process image, the engine with it,
/// is about to be replaced, so every listener and established stream
/// goes to sald as before `fork` ([`begin`]). Within [`LINGER`] then: a
/// stream whose bytes were too many for an `Adopt` frame, if it may drain
/// (fewer unread than that, the rest waiting for the peer's
/// acknowledgements), is driven until it fits and handed over; the
/// streams the program closed are given the time left to deliver their
/// bytes (`engine::linger_closed`); a stream still left in the engine
/// (connecting, closing, refused, too full) is reset, so that its peer
/// hears of it at once rather than time out; after a failed `exec` it
/// reads as reset. [`UNDER_WAY`] stays held across the `exec`: calls of
/// other threads that meet a socket on its way wait for it, which ends
/// them, or for its failure ([`exec_failed`]), after which the sockets
/// sald took work on the daemon path and the engine serves the program's
/// next ones. Whether a hand-over began (else nothing was done, and
/// nothing is held).
pub(crate) fn before_exec() -> bool {
    if !super::enabled() || !super::engine::owned_here() || inside() {
        return false;
    }
    begin();
    let deadline = Instant::now() + LINGER;
    let _ = std::panic::catch_unwind(|| {
        // Refused for its size alone, and its unread bytes fit: its
        // unacknowledged ones may drain.
        let draining = |socket: &Socket| {
            socket.too_full()
                && socket.queues().is_some_and(|queues| {
                    queues.unread <= MAX_ADOPT_BUFFERED
                        && queues.unread + queues.unacknowledged > MAX_ADOPT_BUFFERED
                })
        };
        let full: Vec<_> = left_streams()
            .into_iter()
            .filter(|(s, _)| draining(s))
            .collect();
        if !full.is_empty() {
            super::engine::drive_until(deadline, |_| full.iter().all(|(s, _)| !draining(s)));
            hand_over_all(full);
        }
        super::engine::linger_closed(deadline);
        for (socket, _) in left_streams() {
            socket.abort_before_exec();
        }
    });
    true
}

/// The streams of this process still in the engine.
fn left_streams() -> Vec<(Arc<Socket>, registry::Numbers)> {
    let sockets = registry::by_socket().into_iter();
    sockets
        .filter(|(socket, _)| !socket.inherited() && !socket.listens())
        .collect()
}

/// After an `exec` that failed (it returned), or a spawn: see
/// [`before_exec`] and [`before_spawn`].
pub(crate) fn exec_failed() {
    end();
}

/// Before `posix_spawn`, in the process that owns the engine: the new
/// program inherits the numbers that are not close-on-exec (and any its
/// file actions `dup2` elsewhere, which the shim cannot read), and only
/// this process's engine can drive an in-process socket; so the sockets
/// with a number the program wants kept across `exec` go to sald, as at
/// `fork`, and the caller goes on with them on the daemon path. Sockets
/// whose every number is close-on-exec stay in-process (a program that
/// spawns helpers keeps its own flows here). Holds [`UNDER_WAY`] until
/// [`exec_failed`]; whether anything is held.
pub(crate) fn before_spawn() -> bool {
    if !super::enabled() || !super::engine::owned_here() || inside() {
        return false;
    }
    begin_with(|numbers| numbers.iter().any(|&(_, cloexec)| !cloexec));
    true
}

/// Hands the socket at `fd` (with all its numbers) to sald now, for a
/// call the engine cannot serve: glibc's stdio (`fdopen`) and
/// `sendfile`/`splice` reach the descriptor through libc's own internal
/// calls, which the shim does not see, and would read the eventfd's
/// counter. Whether the number is the daemon path's now (else it stays
/// in-process: a stream still connecting, or one sald refused).
pub(crate) fn socket_at(fd: RawFd) -> bool {
    let Some(_within) = Within::enter() else {
        return false;
    };
    let _under_way = UNDER_WAY.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(socket) = registry::checked(fd) else {
        return false;
    };
    if socket.inherited() {
        return false;
    }
    let numbers = registry::numbers_of(&socket);
    hand_over_all(vec![(socket, numbers)]);
    !registry::is(fd)
}

/// `connect` to `AF_UNSPEC` on the in-process socket at `fd`. A listener
/// goes to sald ([`socket_at`]), whose daemon path stops it as TCP's. A
/// stream's flow is reset here, as TCP's `tcp_disconnect` resets it
/// (whatever its state: open, opening or closing), and its numbers
/// become an unconnected daemon-path socket (a hung-up placeholder, as
/// the daemon path's own disconnect leaves), whose reads and `SO_ERROR`
/// report the reset once and which may connect again; a call that waited
/// on the stream fails with `EPIPE`. Whether the number is the daemon
/// path's now (the caller then makes the `connect` there).
pub(crate) fn disconnect_at(fd: RawFd) -> bool {
    let listens = registry::checked(fd).is_some_and(|socket| socket.listens());
    if listens {
        return socket_at(fd);
    }
    leave_unconnected(fd, libc::ECONNRESET)
}

/// The in-process stream at `fd` whose connect failed and reported its
/// error: its numbers become the daemon path's socket after a failed
/// connect (its error told), which connects anew, as TCP's unconnected
/// socket does (the C suite's `retry`). Whether the number is the daemon
/// path's now (the caller then makes the `connect` there).
pub(crate) fn unconnect_at(fd: RawFd) -> bool {
    leave_unconnected(fd, 0)
}

/// Resets the stream at `fd` and gives its numbers a hung-up placeholder,
/// an unconnected daemon-path socket whose pending error is `so_error`.
fn leave_unconnected(fd: RawFd, so_error: libc::c_int) -> bool {
    let Some(_within) = Within::enter() else {
        return false;
    };
    let _under_way = UNDER_WAY.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(socket) = registry::checked(fd) else {
        return false;
    };
    if socket.inherited() || socket.listens() {
        return false;
    }
    let Ok((placeholder, peer_end)) = ops::placeholder(socket.nonblock(), true) else {
        return false;
    };
    let numbers = unwatch(&registry::numbers_of(&socket));
    if !socket.abort_for_disconnect() {
        rewatch(numbers);
        return false;
    }
    let taken = Taken::Disconnected {
        placeholder,
        so_error,
    };
    let installed = install(&socket, numbers, &taken);
    socket.handover_done(installed, true);
    // Closed: the placeholder hangs up, as after the daemon path's.
    drop(peer_end);
    installed
}

/// What takes a socket's numbers when it leaves the engine.
enum Taken {
    /// sald's socketpair end of an adopted flow.
    Stream { end: OwnedFd, untold: bool },
    /// The accept queue of sald's listener on the prefix.
    Listener {
        queue: OwnedFd,
        control: Arc<ListenerControl>,
    },
    /// A hung-up placeholder: the flow was reset (`AF_UNSPEC`, with
    /// `ECONNRESET` to report), or its connect failed (nothing to report).
    Disconnected {
        placeholder: OwnedFd,
        so_error: libc::c_int,
    },
}

impl Taken {
    /// The descriptor that takes the numbers.
    fn descriptor(&self) -> &OwnedFd {
        match self {
            Taken::Stream { end, .. } => end,
            Taken::Listener { queue, .. } => queue,
            Taken::Disconnected { placeholder, .. } => placeholder,
        }
    }

    /// The state of each number's daemon-table entry, and what goes with
    /// it (`untold` is shared by the numbers, as `dup` copies share it).
    fn set(&self, entry: &mut Entry, socket: &Socket, untold: &Arc<AtomicBool>) {
        match self {
            Taken::Stream { .. } => {
                entry.state = State::Connected;
                entry.peer = socket.name(true).ok();
                entry.untold = Arc::clone(untold);
            }
            Taken::Listener { control, .. } => {
                entry.state = State::Listening {
                    control: Arc::clone(control),
                };
            }
            Taken::Disconnected { so_error, .. } => {
                entry.state = State::Failed;
                entry.so_error = *so_error;
                if *so_error != 0 {
                    entry.disconnected = entry.gen;
                }
            }
        }
    }
}

/// Hands each of `sockets` to sald (see the module's doc), under
/// [`UNDER_WAY`]. After a failure of the control connection itself (sald
/// gone, or not answering), the sockets left stay in-process.
fn hand_over_all(sockets: Vec<(Arc<Socket>, registry::Numbers)>) {
    if sockets.is_empty() {
        return;
    }
    let Some(runtime) = super::engine::existing() else {
        return;
    };
    let path = socket_shim::control_path();
    let Ok(mut control) = ControlClient::connect_to(&path) else {
        // sald is gone: everything stays in-process.
        return;
    };
    let mut broken = false;
    for (socket, numbers) in sockets {
        if broken {
            break;
        }
        if socket.stopped() {
            // A listener the program shut down stays so, in the engine.
            continue;
        }
        let moved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let numbers = unwatch(&numbers);
            let taken = match socket.listens() {
                true => listener_taken(&socket),
                false => stream_taken(&runtime, &mut control, &socket, &mut broken),
            };
            let Some(taken) = taken else {
                rewatch(numbers);
                return false;
            };
            install(&socket, numbers, &taken)
        }));
        // A panic on the way leaves the socket in the engine, not waited for.
        socket.handover_done(moved.unwrap_or(false), false);
    }
}

/// Exports the stream's flow and has sald adopt it: sald's socketpair end
/// for it. `None` leaves the stream in-process: not exportable (its flow
/// stays), or refused by sald after the export (the engine takes the
/// flow back, `Stream::restore`); `broken` is set when the control
/// connection itself failed.
fn stream_taken(
    runtime: &Runtime,
    control: &mut ControlClient,
    socket: &Socket,
    broken: &mut bool,
) -> Option<Taken> {
    let export = socket.export(MAX_ADOPT_BUFFERED, PATIENCE)?;
    let request = Request::Adopt {
        export: Box::new(export),
    };
    // Refused (an error sald answered, or an answer of another kind), or
    // the connection failed (`broken`): the flow comes back to the engine.
    *broken = match control.request_with_fd(&request, runtime.udp_fd()) {
        Ok(reply) => match (reply.response, reply.fd) {
            (Response::Adopted { .. }, Some(end)) => {
                return Some(Taken::Stream {
                    end,
                    untold: socket.untold(),
                })
            }
            _ => false,
        },
        Err(error) => error.kind().is_none(),
    };
    let Request::Adopt { export } = request else {
        return None;
    };
    socket.restore(*export);
    None
}

/// Stops the listener in the engine and ends sald's relay of its prefix,
/// then listens on the prefix through sald (`ops::daemon_listener`): its
/// accept queue. Flows the engine had queued are reset (the kernel would
/// keep them): their clients see a reset connect. `None`: not a listener
/// of this process, or sald did not give the prefix back within
/// [`PATIENCE`] (the listener is lost: stopped, as after `shutdown`).
fn listener_taken(socket: &Socket) -> Option<Taken> {
    let (prefix, backlog) = socket.stop_for_handover()?;
    let backlog = u32::try_from(backlog).unwrap_or(u32::MAX);
    let give_up = Instant::now() + PATIENCE;
    loop {
        match ops::daemon_listener(prefix, backlog) {
            Ok((control, queue)) => {
                return Some(Taken::Listener {
                    queue,
                    control: Arc::new(control),
                })
            }
            Err(libc::EADDRINUSE) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return None,
        }
    }
}

/// After `fork`, in the parent and in the child, or after a failed
/// `exec`: calls that waited for the hand-over go on.
pub(crate) fn end() {
    if leave() {
        let _ = HELD.try_with(|held| held.borrow_mut().take());
    }
}

/// Waits until no hand-over is under way (see the module's doc).
pub(crate) fn wait() {
    if inside() {
        // This thread's own hand-over (a signal handler's call, a fork
        // handler's): waiting would be for itself.
        return;
    }
    drop(UNDER_WAY.lock().unwrap_or_else(PoisonError::into_inner));
}

/// One of a socket's numbers on its way out of the engine: whether the
/// program wants it closed at `exec`, and its epoll registrations as the
/// program made them, taken out of their sets for the way.
struct Number {
    fd: RawFd,
    cloexec: bool,
    epoll: Vec<(RawFd, libc::epoll_event)>,
}

/// Takes `numbers` out of their epoll sets before the socket leaves the
/// engine, so that no set reports what the engine does to the flow on
/// the way (an exported flow reads as reset there).
fn unwatch(numbers: &[(RawFd, bool)]) -> Vec<Number> {
    let numbers = numbers.iter();
    numbers
        .map(|&(fd, cloexec)| Number {
            fd,
            cloexec,
            epoll: epoll::handed_over(fd),
        })
        .collect()
}

/// Puts the epoll registrations of numbers that stay in-process back.
fn rewatch(numbers: Vec<Number>) {
    for number in numbers {
        for (epfd, event) in number.epoll {
            // A set the program closed meanwhile refuses it: nothing to add.
            let _ = epoll::ctl(epfd, libc::EPOLL_CTL_ADD, number.fd, Some(event));
        }
    }
}

/// Puts `taken`'s descriptor at each of the socket's numbers that is
/// still the socket's (checked against its eventfd: a number the program
/// closed meanwhile, and perhaps reused, is left alone), with the
/// socket's `O_NONBLOCK` and each number's close-on-exec as the program
/// wants it, as a daemon-path socket: a table entry (names, socket-level
/// options, `taken`'s state) and the program's epoll registrations made
/// again on the new file; those numbers leave the registry. A copy the
/// program made meanwhile (`dup` of a number not yet replaced) is found
/// and replaced too. Whether any number took it; the others stay
/// in-process (their epoll registrations back), reading as reset.
fn install(socket: &Arc<Socket>, numbers: Vec<Number>, taken: &Taken) -> bool {
    let end = taken.descriptor();
    if socket.nonblock() && ops::set_nonblock(end.as_raw_fd(), true).is_err() {
        rewatch(numbers);
        return false;
    }
    let domain = match socket.family() {
        family @ (libc::AF_INET | libc::AF_INET6) => Domain::Inet(family),
        _ => Domain::Serval,
    };
    let untold = Arc::new(AtomicBool::new(matches!(
        taken,
        Taken::Stream { untold: true, .. }
    )));
    let mut installed = Vec::new();
    let mut failed = Vec::new();
    let mut gone = Vec::new();
    let mut let_go = Vec::new();
    let reset = Arc::new(ResetWatch::default());
    let mut numbers = numbers;
    // Three rounds at most: each takes the copies made during the last.
    for _ in 0..3 {
        for number in numbers {
            let flags = if number.cloexec { libc::O_CLOEXEC } else { 0 };
            let mut dup_failed = false;
            let swap = || {
                // SAFETY: no pointers; `number.fd` is the program's number
                // for this socket (`registry::replace` checks that under
                // its lock), which `end` replaces.
                let dup = unsafe { crate::real::dup3(end.as_raw_fd(), number.fd, flags) };
                dup_failed = dup < 0;
                !dup_failed
            };
            if !registry::replace(number.fd, socket, swap, &mut let_go) {
                match dup_failed {
                    true => failed.push(number),
                    // Closed meanwhile: its registrations went with it.
                    false => gone.push(number.fd),
                }
                continue;
            }
            let mut entry = Entry::new(Kind::Stream, domain, number.fd, State::Failed);
            entry.local = socket.name(false).ok();
            entry.options = socket.socket_options();
            entry.epoll = number.epoll;
            // Shared by the numbers, as `dup` copies share it.
            entry.reset = Arc::clone(&reset);
            taken.set(&mut entry, socket, &untold);
            ops::re_epoll(&entry, number.fd);
            let mut table = table::lock();
            let old = table.insert(number.fd, entry);
            drop(table);
            drop(old);
            installed.push(number.fd);
        }
        let seen = |fd: &RawFd| {
            installed.contains(fd) || gone.contains(fd) || failed.iter().any(|n| n.fd == *fd)
        };
        let late: Vec<_> = registry::numbers_of(socket)
            .into_iter()
            .filter(|(fd, _)| !seen(fd))
            .collect();
        if late.is_empty() {
            break;
        }
        numbers = unwatch(&late);
    }
    drop(let_go);
    rewatch(failed);
    !installed.is_empty()
}
