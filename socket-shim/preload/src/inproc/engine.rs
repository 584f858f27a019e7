//! The process's one engine: made at the first in-process `connect` or
//! `bind`, remembered when it could not be made (every later socket takes
//! the daemon path at once), and forgotten, never dropped, in a forked
//! child.

use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

use sal::Locator;
use sal_control::{Request, Response};
use sal_inproc::{Config, Runtime};
use socket_shim::ControlClient;

/// What the process has: nothing tried yet, an engine, or a failure.
enum State {
    Untried,
    Ready(Runtime),
    Failed,
}

/// The engine, and the process it belongs to (a forked child finds its
/// parent's here and must not touch it).
struct Slot {
    pid: u32,
    state: State,
}

static SLOT: Mutex<Slot> = Mutex::new(Slot {
    pid: 0,
    state: State::Untried,
});

/// The id of the process whose engine is in [`SLOT`] (0: none), read
/// without the lock: by an `exec` in a `vfork` child, which shares its
/// parent's memory and must touch nothing of its engine (see
/// [`owned_here`]).
static OWNER: AtomicI32 = AtomicI32::new(0);

/// Whether this process made the engine in [`SLOT`]: false without one,
/// in a forked child (which forgets its parent's), and in a child that
/// shares its parent's memory (`vfork`, `posix_spawn`'s `clone`), whose
/// `exec` must not hand over the parent's sockets. A system call, no
/// lock, no allocation.
pub(crate) fn owned_here() -> bool {
    let owner = OWNER.load(Ordering::Acquire);
    // SAFETY: no pointers.
    owner != 0 && owner == unsafe { libc::getpid() }
}

/// The slot, locked, with a parent's engine forgotten if this is a forked
/// child (see [`forget_inherited`]).
fn slot() -> MutexGuard<'static, Slot> {
    let mut slot = SLOT.lock().unwrap_or_else(PoisonError::into_inner);
    forget_inherited(&mut slot);
    slot
}

/// In a forked child, the parent's engine is leaked: its lock may be
/// held by a thread the child does not have, and dropping it would close
/// descriptors and join threads that are not the child's. A child made
/// by `fork` has closed its long-lived descriptors already (see
/// [`fork_child`]); one made otherwise (a raw `clone`) keeps them, as the
/// numbers may be other files by now.
fn forget_inherited(slot: &mut Slot) {
    let pid = super::registry::pid() as u32;
    if slot.pid == pid {
        return;
    }
    if let State::Ready(runtime) = std::mem::replace(&mut slot.state, State::Untried) {
        std::mem::forget(runtime);
    }
    slot.pid = pid;
}

/// The process's engine, made now if this is the first call (and the
/// last one did not fail); `None` when there is none to be had: the
/// caller takes the daemon path.
pub(crate) fn runtime() -> Option<Runtime> {
    let mut slot = slot();
    match &slot.state {
        State::Ready(runtime) => return Some(runtime.clone()),
        State::Failed => return None,
        State::Untried => {}
    }
    register_fork_handlers();
    match make() {
        Some(runtime) => {
            slot.state = State::Ready(runtime.clone());
            // SAFETY: no pointers.
            OWNER.store(unsafe { libc::getpid() }, Ordering::Release);
            Some(runtime)
        }
        None => {
            slot.state = State::Failed;
            None
        }
    }
}

/// The engine if this process has one already (for `poll`, which drives
/// it but never makes one).
pub(crate) fn existing() -> Option<Runtime> {
    match &slot().state {
        State::Ready(runtime) => Some(runtime.clone()),
        _ => None,
    }
}

/// Asks sald for its UDP locator and binds an engine beside it, if sald
/// relays for programs (by default in UDP mode; without relays, sald
/// neither routes a program's SYNs nor relays its listeners, so a connect
/// to a service it forwards would fail with no route where the daemon
/// path reaches it).
/// A sald that does not say (one from before the `relays` field) counts
/// as one that does not relay.
fn make() -> Option<Runtime> {
    let path = socket_shim::control_path();
    let mut control = ControlClient::connect_to(&path).ok()?;
    let reply = control.request(&Request::ListInterfaces).ok()?;
    drop(control);
    let Response::Interfaces {
        interfaces,
        relays: true,
    } = reply.response
    else {
        return None;
    };
    let sald = interfaces
        .iter()
        .find_map(|interface| match interface.locator {
            Locator::Udp(addr) if interface.up => Some(addr),
            _ => None,
        })?;
    let mut config =
        Config::new(SocketAddrV4::new(*sald.ip(), 0), Locator::Udp(sald)).with_sald_resolver(&path);
    if let Some(spin) = spin_setting() {
        config.spin = spin;
    }
    let runtime = Runtime::bind(config).ok()?;
    crate::stat::learn_sockfs(runtime.udp_fd().as_raw_fd());
    Some(runtime)
}

/// `SERVAL_SPIN_US`: the longest a thread of this program busy-polls
/// before it sleeps in the engine, in microseconds (0: never; at most
/// [`MAX_SPIN_US`]); unset or not a number: the engine's default
/// ([`sal_inproc::DEFAULT_SPIN`]).
fn spin_setting() -> Option<Duration> {
    parse_spin(&std::env::var("SERVAL_SPIN_US").ok()?)
}

/// A `SERVAL_SPIN_US` value as a spin (see [`spin_setting`]).
fn parse_spin(value: &str) -> Option<Duration> {
    let micros: u64 = value.trim().parse().ok()?;
    Some(Duration::from_micros(micros.min(MAX_SPIN_US)))
}

/// The most `SERVAL_SPIN_US` gives: past a millisecond a spin is a busy
/// wait, not a short look before a sleep.
const MAX_SPIN_US: u64 = 1_000;

/// How long the process's exit waits for its flows' bytes and ends of
/// stream to be acknowledged at most, as the kernel goes on sending a
/// closed socket's bytes after its process is gone.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// [`on_exit`], as a destructor of the shim's (`.fini_array`): the
/// dynamic loader runs it at `exit` after every `atexit` handler (the
/// program's, whenever registered) and every C++ static destructor
/// (`__cxa_atexit`), since its own handler, which runs the objects'
/// destructors, was registered first, and after the executable's own
/// destructors (objects are finalised in the reverse of their
/// initialisation, the executable's last). So the program's exit-time
/// code still sees its in-process sockets. `_exit` and a fatal signal
/// skip it, as they skip the kernel's linger of nothing: the flows are
/// simply gone.
#[used]
#[link_section = ".fini_array"]
static ON_EXIT: extern "C" fn() = on_exit;

/// At `exit` (see [`ON_EXIT`]): closes every in-process socket (as the
/// kernel closes a dying process's descriptors: a stream's queued bytes
/// and end of stream still go, a listener's unaccepted flows are reset),
/// then drives the host until every stream flow is finished both ways
/// ([`Runtime::unfinished_streams`]: its bytes and end of stream
/// acknowledged, the peer's end of stream received), for [`LINGER`] at
/// most (a peer that keeps its end open, or stopped answering). Waiting
/// for the peer's end too, as the kernel keeps a dead process's closing
/// socket: a peer still reading what we sent sends window updates, which
/// a host that is gone would answer with an unreachable port, and the
/// peer's engine would drop what it had not read yet. Without it, bytes a server wrote just before
/// it exits would never reach its client. An exit with nothing on its
/// way costs one look.
extern "C" fn on_exit() {
    if !super::enabled() {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        let Some(runtime) = existing() else {
            return;
        };
        drop(super::registry::drain());
        linger(&runtime, Runtime::unfinished_streams);
    });
}

/// Before `exec` (see `handover::before_exec`): the streams the program
/// closed are given until `deadline` at most to deliver their bytes and
/// ends of stream, as at exit ([`on_exit`]): the kernel would go on
/// sending them after the `exec`, and the engine goes with the process
/// image.
pub(crate) fn linger_closed(deadline: Instant) {
    drive_until(deadline, |runtime| runtime.unfinished_closed_streams() == 0);
}

/// Drives the engine, if the process has one, until `done` says so or
/// `deadline` passes.
pub(crate) fn drive_until(deadline: Instant, done: impl Fn(&Runtime) -> bool) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(runtime) = existing() {
            drive_while(&runtime, deadline, |runtime| !done(runtime));
        }
    }));
}

/// Drives the host until `unfinished` counts no stream, for [`LINGER`]
/// at most.
fn linger(runtime: &Runtime, unfinished: impl Fn(&Runtime) -> usize) {
    drive_while(runtime, Instant::now() + LINGER, |runtime| {
        unfinished(runtime) > 0
    });
}

/// Drives the host (one turn, then a turn per wake-up of its descriptors
/// or every 10 ms) while `going` says so, until `deadline`. Each look of
/// `going` takes the engine's lock.
fn drive_while(runtime: &Runtime, deadline: Instant, going: impl Fn(&Runtime) -> bool) {
    let _inside = runtime.enter();
    let _ = runtime.drive();
    while going(runtime) && Instant::now() < deadline {
        let mut set = runtime.wait_fds().map(|fd| libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `set` is a valid array of its length.
        unsafe { crate::real::poll(set.as_mut_ptr(), set.len() as libc::nfds_t, 10) };
        let _ = runtime.drive();
    }
}

thread_local! {
    static FORK_GUARD: std::cell::RefCell<Option<MutexGuard<'static, Slot>>> =
        const { std::cell::RefCell::new(None) };
}

/// Registers [`fork_prepare`] and [`fork_release`] once. Registered after
/// the table's handlers (which every socket call registers first), so
/// that `fork` takes this lock first and the registry's next: the
/// engine's making may take the table's lock, never the other way round.
fn register_fork_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain `extern "C" fn()`s that live as long as the
        // process.
        unsafe {
            libc::pthread_atfork(Some(fork_prepare), Some(fork_release), Some(fork_child));
        }
    });
}

/// Hands every in-process socket to sald (`handover::begin`, before any
/// lock is taken), then holds the slot's and the registry's locks across
/// `fork`, so that the child never inherits them held by a thread it does
/// not have.
extern "C" fn fork_prepare() {
    super::handover::begin();
    let guard = SLOT.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = FORK_GUARD.try_with(|held| *held.borrow_mut() = Some(guard));
    super::registry::fork_prepare();
    super::epoll::fork_prepare();
    super::recycle::fork_prepare();
}

/// In the child, right after `fork` (the numbers are still exactly the
/// parent's): the parent's engine is forgotten ([`forget_inherited`])
/// and its long-lived descriptors ([`Runtime::descriptors`]: the UDP
/// socket, the timerfd and every copy of them the engine keeps) closed,
/// so that the child holds neither the port nor anything it would wait
/// on; the registry learns the new process id and closes the child's
/// copies of its listeners' relay connections (see
/// `registry::forked`), and the kept kernel sockets' copies are closed
/// (`recycle::fork_child`); then the locks go. The child's copies of the
/// objects' eventfds stay until the numbers that were the program's
/// close; the threads' wake-up eventfds and the resolver's connection
/// stay (leaked, unread).
extern "C" fn fork_child() {
    let _ = FORK_GUARD.try_with(|held| {
        if let Some(slot) = held.borrow_mut().as_mut() {
            if let State::Ready(runtime) = &slot.state {
                for &fd in runtime.descriptors() {
                    // SAFETY: no pointers; the child's copy of one of the
                    // engine's descriptors, forgotten below.
                    unsafe { crate::real::close(fd) };
                }
            }
            forget_inherited(slot);
        }
    });
    OWNER.store(0, Ordering::Release);
    super::registry::forked();
    super::recycle::fork_child();
    fork_release();
}

/// Lets both locks go (in the parent and in the child: the child's
/// engine is forgotten at its next use, see [`forget_inherited`]), and
/// the calls that waited for the hand-over (`handover::end`).
extern "C" fn fork_release() {
    super::recycle::fork_release();
    super::epoll::fork_release();
    super::registry::fork_release();
    let _ = FORK_GUARD.try_with(|held| held.borrow_mut().take());
    super::handover::end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spin_setting_is_microseconds_up_to_a_millisecond() {
        assert_eq!(parse_spin("20"), Some(Duration::from_micros(20)));
        assert_eq!(parse_spin(" 0\n"), Some(Duration::ZERO), "off");
        assert_eq!(
            parse_spin("5000000"),
            Some(Duration::from_millis(1)),
            "capped"
        );
        assert_eq!(parse_spin("fast"), None, "the default then");
        assert_eq!(parse_spin("-3"), None);
    }
}
