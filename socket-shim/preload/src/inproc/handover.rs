//! The hand-over to sald before `fork` (`docs/in-process-sal.md`, "fork
//! and exec"). After `fork` both processes would hold every in-process
//! socket, and only the parent's engine can drive them: an
//! accept-then-fork server's child, which goes on with the flow while its
//! parent closes it, would find it reset, and a prefork server's children
//! could not accept. So `fork`'s prepare handler hands every socket of
//! the engine to sald first, and parent and child then share one kernel
//! socket each, as they would TCP's, served by the daemon path:
//!
//! - **an established stream**: the engine exports the flow
//!   (`Stream::export`: its TCP and SAL state and buffered bytes,
//!   forgotten without a word to the peer; a client whose server has not
//!   spoken yet asks it to first), sald adopts it (`Request::Adopt`, with
//!   the engine's UDP socket as proof the flow is the caller's) and moves
//!   it to its own locator with an RSYN, and its socketpair end takes
//!   each of the program's numbers for the stream, as a daemon-path
//!   `connect` installs a flow;
//! - **a listener**: the engine's listener stops and sald's relay of its
//!   prefix ends, then sald listens on the prefix itself
//!   (`ops::daemon_listener`) and the accept queue takes the numbers.
//!   Flows the engine had queued are reset (the kernel would keep them):
//!   their clients see a reset connect.
//!
//! Each number keeps the close-on-exec the program asked for, its epoll
//! registrations and socket-level options. A listener on the daemon path
//! is in the record of what crosses `exec` (`inherit`) from then on.
//!
//! Left in-process (the child's copies reset, as before): streams still
//! connecting or already closing (either end shut its sending down, which
//! an export does not carry), streams whose buffers hold more than an
//! `Adopt` frame carries ([`MAX_ADOPT_BUFFERED`]), or whose control
//! exchange does not settle within [`PATIENCE`]. A flow sald refuses after
//! the engine exported it is lost (reset for the program), and so is a
//! listener whose prefix sald does not give back within [`PATIENCE`]
//! (stopped, as after `shutdown`).
//!
//! A call that fails while its socket is on its way (another thread
//! reads, accepts or polls while this one forks) waits for the hand-over
//! to end and is then made again on the plain path
//! (`inproc::calls::HANDED_OVER`): the program sees no error.
//!
//! Cost: one `Adopt` round trip to sald per stream and a `Listen` and
//! `Deliver` per listener, at each `fork` of a process that has
//! in-process sockets; nothing for one that has none. `posix_spawn`,
//! `vfork` and glibc's `system` run no fork handlers and hand nothing
//! over (their children exec at once; in-process numbers are
//! close-on-exec in the kernel).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sal_control::{Request, Response, MAX_ADOPT_BUFFERED};
use sal_inproc::Runtime;
use socket_shim::ControlClient;

use super::{epoll, registry, Socket};
use crate::ops;
use crate::table::{self, Domain, Entry, Kind, State};

/// How long a flow whose control exchange is in progress (its
/// handshake's last ACK unconfirmed, a move unanswered) is waited for
/// before it is left in-process.
const PATIENCE: Duration = Duration::from_millis(200);

/// Held by the thread that hands flows over, from the prepare handler to
/// the release after `fork` ([`begin`], [`end`]): calls that met a flow on
/// its way wait on it ([`wait`]).
static HANDING: Mutex<()> = Mutex::new(());

thread_local! {
    static HELD: std::cell::RefCell<Option<MutexGuard<'static, ()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Before `fork` (the engine's prepare handler, before any of the shim's
/// locks is taken): hands every listener and established stream of this
/// process to sald. Holds [`HANDING`] until [`end`].
pub(crate) fn begin() {
    let guard = HANDING.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = HELD.try_with(|held| *held.borrow_mut() = Some(guard));
    let sockets: Vec<_> = registry::by_socket()
        .into_iter()
        .filter(|(socket, _)| !socket.inherited())
        .collect();
    hand_over_all(sockets);
}

/// Hands the socket at `fd` (with all its numbers) to sald now, for a
/// call the engine cannot serve: glibc's stdio (`fdopen`) and
/// `sendfile`/`splice` reach the descriptor through libc's own internal
/// calls, which the shim does not see, and would read the eventfd's
/// counter. Whether the number is the daemon path's now (else it stays
/// in-process: a stream still connecting or closing, or one sald
/// refused).
pub(crate) fn socket_at(fd: RawFd) -> bool {
    let _handing = HANDING.lock().unwrap_or_else(PoisonError::into_inner);
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
    let Some(socket) = registry::checked(fd) else {
        return false;
    };
    if socket.inherited() {
        return false;
    }
    if socket.listens() {
        drop(socket);
        return socket_at(fd);
    }
    let _handing = HANDING.lock().unwrap_or_else(PoisonError::into_inner);
    let Ok((placeholder, peer_end)) = ops::placeholder(socket.nonblock(), true) else {
        return false;
    };
    if !socket.abort_for_disconnect() {
        return false;
    }
    let numbers = registry::numbers_of(&socket);
    install(&socket, &numbers, &placeholder, |entry| {
        entry.state = State::Failed;
        entry.so_error = libc::ECONNRESET;
        entry.disconnected = entry.gen;
    });
    let let_go: Vec<_> = numbers
        .iter()
        .filter_map(|&(fd, _)| registry::remove(fd))
        .collect();
    socket.set_disconnected();
    // Closed: the placeholder hangs up, as after the daemon path's.
    drop(peer_end);
    drop(let_go);
    true
}

/// Hands each of `sockets` to sald (see the module's doc), under
/// [`HANDING`].
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
    let mut let_go = Vec::new();
    for (socket, numbers) in sockets {
        let handed = match socket.listens() {
            true => hand_over_listener(&socket, &numbers),
            false => hand_over_stream(&runtime, &mut control, &socket, &numbers),
        };
        if handed {
            let_go.extend(numbers.iter().filter_map(|&(fd, _)| registry::remove(fd)));
        }
        socket.handover_done(handed);
    }
    drop(let_go);
}

/// Exports the stream's flow and has sald adopt it; whether its numbers
/// are sald's socketpair end now. A refusal (sald's limits, a flow ID it
/// holds already) leaves the stream without its flow: reset for the
/// program.
fn hand_over_stream(
    runtime: &Runtime,
    control: &mut ControlClient,
    socket: &Socket,
    numbers: &[(RawFd, bool)],
) -> bool {
    let Some(export) = socket.export(MAX_ADOPT_BUFFERED, PATIENCE) else {
        return false;
    };
    let request = Request::Adopt {
        export: Box::new(export),
    };
    let end = match control.request_with_fd(&request, runtime.udp_fd()) {
        Ok(reply) => match (reply.response, reply.fd) {
            (Response::Adopted { .. }, Some(end)) => end,
            _ => return false,
        },
        Err(_) => return false,
    };
    let untold = Arc::new(AtomicBool::new(socket.untold()));
    install(socket, numbers, &end, |entry| {
        entry.state = State::Connected;
        entry.peer = socket.name(true).ok();
        entry.untold = Arc::clone(&untold);
    });
    true
}

/// Stops the listener in the engine and ends sald's relay of its prefix,
/// then listens on the prefix through sald (`ops::daemon_listener`) and
/// puts the accept queue at its numbers; whether that worked. Flows the
/// engine had queued are reset (the kernel would keep them): a client
/// retries its connect.
fn hand_over_listener(socket: &Socket, numbers: &[(RawFd, bool)]) -> bool {
    let Some((prefix, backlog)) = socket.stop_for_handover() else {
        return false;
    };
    let backlog = u32::try_from(backlog).unwrap_or(u32::MAX);
    // sald lets go of the relay's prefix once it read the relay
    // connection's end, which may come after the `Listen`.
    let give_up = Instant::now() + PATIENCE;
    let (listener, queue) = loop {
        match ops::daemon_listener(prefix, backlog) {
            Ok(listening) => break listening,
            Err(libc::EADDRINUSE) if Instant::now() < give_up => {
                std::thread::sleep(Duration::from_millis(1));
            }
            // The listener is lost: stopped, as after `shutdown`.
            Err(_) => return false,
        }
    };
    let listener = Arc::new(listener);
    install(socket, numbers, &queue, |entry| {
        entry.state = State::Listening {
            control: Arc::clone(&listener),
        };
    });
    true
}

/// After `fork`, in the parent and in the child: calls that waited for
/// the hand-over go on.
pub(crate) fn end() {
    let _ = HELD.try_with(|held| held.borrow_mut().take());
}

/// Waits until no hand-over is under way (see the module's doc).
pub(crate) fn wait() {
    drop(HANDING.lock().unwrap_or_else(PoisonError::into_inner));
}

/// Puts `end` (sald's socketpair end of a flow, or a listener's accept
/// queue) at each of the socket's numbers, with the socket's `O_NONBLOCK`
/// and each number's close-on-exec as the program wants it, as a
/// daemon-path socket: a table entry (names, socket-level options, and
/// what `state` sets) and the program's epoll registrations, made again
/// on the new file. A number that fails to take it (`dup3`) is left a
/// bare eventfd; the socket goes on at the others.
fn install(socket: &Socket, numbers: &[(RawFd, bool)], end: &OwnedFd, state: impl Fn(&mut Entry)) {
    if socket.nonblock() && ops::set_nonblock(end.as_raw_fd(), true).is_err() {
        return;
    }
    let domain = match socket.family() {
        family @ (libc::AF_INET | libc::AF_INET6) => Domain::Inet(family),
        _ => Domain::Serval,
    };
    for &(fd, cloexec) in numbers {
        let registrations = epoll::handed_over(fd);
        let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
        // SAFETY: no pointers; `fd` is the program's number for this
        // socket (a copy of its eventfd), which `end` replaces.
        if unsafe { crate::real::dup3(end.as_raw_fd(), fd, flags) } < 0 {
            continue;
        }
        let mut entry = Entry::new(Kind::Stream, domain, fd, State::Failed);
        entry.local = socket.name(false).ok();
        entry.options = socket.socket_options();
        entry.epoll = registrations;
        state(&mut entry);
        ops::re_epoll(&entry, fd);
        let mut table = table::lock();
        let old = table.insert(fd, entry);
        table.refresh(fd);
        drop(table);
        drop(old);
    }
}
