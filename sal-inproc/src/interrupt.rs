//! Calls that a signal interrupts, as the kernel's blocking socket calls:
//! a handler that runs while the call waits ends it with `EINTR`.
//!
//! A call waits in `ppoll`, but between its waits it runs the engine in
//! user space (and spins, see `spin`), where a signal's handler would run
//! and leave nothing for the next `ppoll` to see: the call would go on
//! waiting, and a program that counts on a signal to end a wait (an
//! alarm) would hang. So while an [`Interruptible`] is held the thread's
//! signals are blocked, and the engine's sleeps unblock them only inside
//! `ppoll`, atomically, through its mask: a signal that came meanwhile is
//! delivered there at once, and the sleep ends with
//! [`Error::Interrupted`]. The handler runs before the call returns, as
//! the kernel runs it before a system call returns.
//!
//! Whether a call may be interrupted is the caller's to say (a socket
//! layer knows the program's handlers and `SA_RESTART`): without an
//! `Interruptible`, a signal is a wake-up like any other and the call goes
//! on, as a restarted system call.
//!
//! A call with a timeout ([`Interruptible::timed`], TCP's calls under
//! `SO_RCVTIMEO` or `SO_SNDTIMEO`) also ends when the process is stopped
//! and continued (`SIGSTOP`, `SIGCONT`, no handler), as Linux's do
//! (`signal(7)`, "Interruption of system calls and library functions by
//! stop signals"). `ppoll` never shows that: the kernel restarts it. So
//! such a call's sleeps wait in `epoll_pwait2` instead ([`sleep`]), which
//! Linux ends with `EINTR` after a stop, on a per-thread epoll set the
//! sleep's descriptors join and leave (a few more system calls per sleep,
//! for calls with a timeout only).

use std::cell::{Cell, OnceCell};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::time::TimeSpec;

use crate::Error;

thread_local! {
    /// The thread's own signal mask while an [`Interruptible`] blocks its
    /// signals: what the engine's sleeps wait with.
    static UNBLOCKED: Cell<Option<SigSet>> = const { Cell::new(None) };
    /// A stop and continue ends the thread's sleeps (see
    /// [`Interruptible::timed`]).
    static STOPS: Cell<bool> = const { Cell::new(false) };
    /// The thread's epoll set for such sleeps, made at the first.
    static EPOLL: OnceCell<Option<OwnedFd>> = const { OnceCell::new() };
}

/// Signals a thread's own faults raise: never blocked (the kernel kills a
/// process whose fault signal is blocked, where its handler, Rust's stack
/// overflow report among them, would have run).
const FAULTS: [Signal; 6] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
    Signal::SIGTRAP,
    Signal::SIGSYS,
];

/// While held, a signal interrupts the engine's calls of this thread (see
/// the module docs). Dropping it restores the thread's signal mask, which
/// delivers any signal that came while the call was not sleeping.
#[must_use = "the call is interruptible only while this is held"]
pub struct Interruptible {
    /// What the thread's mask was.
    mask: SigSet,
    /// The thread's [`UNBLOCKED`] before (an `Interruptible` within one).
    outer: Option<SigSet>,
    /// The thread's [`STOPS`] before.
    stopped_before: bool,
}

impl Interruptible {
    /// Blocks the thread's signals (but for those of faults) until
    /// dropped; the engine's sleeps meanwhile wait with the mask the
    /// thread had.
    pub fn new() -> Result<Interruptible, Error> {
        let mask = block_signals()?;
        // Directly within another (the mask found is the blocked one),
        // the sleeps wait with the mask the outer one found. In a signal
        // handler that runs in the outer call's sleep, the mask found is
        // the handler's (the signal and its `sa_mask` blocked): kept, as
        // the kernel would.
        let outer = UNBLOCKED.with(Cell::get);
        let sleep = match outer {
            Some(outer) if blocking().iter().all(|signal| mask.contains(signal)) => outer,
            _ => mask,
        };
        UNBLOCKED.with(|unblocked| unblocked.set(Some(sleep)));
        let stopped_before = STOPS.with(Cell::get);
        Ok(Interruptible {
            mask,
            outer,
            stopped_before,
        })
    }

    /// [`Interruptible::new`] for a call with a timeout: a stop and
    /// continue of the process ends it too (see the module docs).
    pub fn timed() -> Result<Interruptible, Error> {
        let call = Interruptible::new()?;
        STOPS.with(|stops| stops.set(true));
        Ok(call)
    }
}

/// Every signal but those of faults, and those the kernel never blocks
/// (so that a mask found blocked contains all of it).
fn blocking() -> SigSet {
    let mut blocked = SigSet::all();
    for never in FAULTS.iter().chain(&[Signal::SIGKILL, Signal::SIGSTOP]) {
        blocked.remove(*never);
    }
    blocked
}

/// Blocks the calling thread's signals but for those of faults; returns
/// the mask it had.
fn block_signals() -> Result<SigSet, Error> {
    let mut mask = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&blocking()), Some(&mut mask))?;
    Ok(mask)
}

/// Starts a thread of the engine's own (the driver, the resolver) with
/// every signal but those of faults blocked from its first instruction
/// (the mask is inherited, so it is set around the spawn): it never takes
/// a signal of the program's. A process-directed signal goes to a thread
/// that does not block it; were the engine's threads such threads, a
/// signal meant to interrupt a call (whose thread blocks it outside its
/// sleeps) could be handled there, and the call would wait on.
pub(crate) fn spawn_engine_thread<T: Send + 'static>(
    builder: std::thread::Builder,
    run: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    let mask = block_signals().map_err(std::io::Error::other)?;
    let spawned = builder.spawn(run);
    // Fails only for a bad `how`.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
    spawned
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        UNBLOCKED.with(|unblocked| unblocked.set(self.outer));
        STOPS.with(|stops| stops.set(self.stopped_before));
        // Fails only for a bad `how`.
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.mask), None);
    }
}

/// The mask the engine's sleeps wait with: the thread's own while an
/// [`Interruptible`] is held (its `EINTR` then ends the call), else
/// `None` (the mask as it is; `EINTR` is a wake-up).
pub(crate) fn sleep_mask() -> Option<SigSet> {
    UNBLOCKED.with(Cell::get)
}

/// The engine's sleep: `ppoll` of `fds` with [`sleep_mask`], or, in a
/// call with a timeout, the same wait in `epoll_pwait2`, which a stop and
/// continue ends with `EINTR` (see the module docs; the descriptors'
/// `revents` are then read with a zero-timeout `ppoll`). Without an epoll
/// set (none could be made), `ppoll`.
pub(crate) fn sleep(fds: &mut [PollFd<'_>], timeout: Option<TimeSpec>) -> nix::Result<i32> {
    let mask = sleep_mask();
    if mask.is_some() && STOPS.with(Cell::get) {
        let slept = EPOLL.with(|epoll| {
            let set = epoll.get_or_init(epoll_set).as_ref()?;
            Some(epoll_sleep(set, fds, timeout, mask.as_ref()))
        });
        match slept {
            Some(Ok(())) => return ppoll(fds, Some(TimeSpec::new(0, 0)), None),
            Some(Err(Errno::EINTR)) => return Err(Errno::EINTR),
            // No epoll_pwait2 (before Linux 5.11), or a descriptor epoll
            // refuses: the wait `ppoll` can make.
            Some(Err(_)) | None => {}
        }
    }
    ppoll(fds, timeout, mask)
}

/// A new epoll set for the thread's sleeps (above the standard streams).
fn epoll_set() -> Option<OwnedFd> {
    // SAFETY: no pointers.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    // SAFETY: a descriptor just made, this thread's alone.
    (fd >= 0).then(|| crate::descriptors::own(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Waits in `set` for any of `fds` (their `events`), up to `timeout`,
/// with `mask`; they leave the set after.
fn epoll_sleep(
    set: &OwnedFd,
    fds: &[PollFd<'_>],
    timeout: Option<TimeSpec>,
    mask: Option<&SigSet>,
) -> nix::Result<()> {
    let epfd = set.as_raw_fd();
    let ctl = |op, fd: i32, events: u32| {
        let mut event = libc::epoll_event { events, u64: 0 };
        // SAFETY: `event` is valid for the call; `fd` is one of `fds`.
        unsafe { libc::epoll_ctl(epfd, op, fd, &mut event) }
    };
    let mut added = Vec::with_capacity(fds.len());
    let mut result = Ok(());
    for fd in fds {
        let raw = fd.as_fd().as_raw_fd();
        let events = fd.events().bits() as u32;
        if ctl(libc::EPOLL_CTL_ADD, raw, events) == 0 {
            added.push(raw);
        } else {
            result = Err(Errno::last());
            break;
        }
    }
    if result.is_ok() {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1];
        let timeout = timeout.map(|t| libc::timespec {
            tv_sec: t.tv_sec(),
            tv_nsec: t.tv_nsec(),
        });
        let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        let mask_ptr = mask.map_or(std::ptr::null(), |m| m.as_ref() as *const libc::sigset_t);
        // SAFETY: `events` has room for 1, `timeout_ptr` and `mask_ptr`
        // are null or valid for the call.
        let n = unsafe { libc::epoll_pwait2(epfd, events.as_mut_ptr(), 1, timeout_ptr, mask_ptr) };
        if n < 0 {
            result = Err(Errno::last());
        }
    }
    for raw in added {
        ctl(libc::EPOLL_CTL_DEL, raw, 0);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nix::sys::signal::{raise, sigaction, SaFlags, SigAction, SigHandler};

    use super::*;

    static HANDLED: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn count(_: i32) {
        HANDLED.fetch_add(1, Ordering::SeqCst);
    }

    /// A signal raised while the call runs between its sleeps waits for
    /// the next sleep's mask; the thread's mask comes back at the drop.
    #[test]
    fn signals_wait_for_the_sleep_and_the_mask_comes_back() {
        let handler = SigAction::new(
            SigHandler::Handler(count),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler only touches an atomic.
        unsafe { sigaction(Signal::SIGUSR2, &handler) }.expect("sigaction");
        let before = SigSet::thread_get_mask().expect("mask");
        assert_eq!(sleep_mask(), None);
        {
            let _call = Interruptible::new().expect("block");
            assert_eq!(sleep_mask(), Some(before));
            raise(Signal::SIGUSR2).expect("raise");
            assert_eq!(
                HANDLED.load(Ordering::SeqCst),
                0,
                "blocked outside the sleep"
            );
            let mut none: [nix::poll::PollFd<'_>; 0] = [];
            let slept = nix::poll::ppoll(&mut none, None, sleep_mask());
            assert_eq!(slept, Err(nix::errno::Errno::EINTR));
            assert_eq!(HANDLED.load(Ordering::SeqCst), 1, "delivered in the sleep");
        }
        assert_eq!(sleep_mask(), None);
        assert_eq!(SigSet::thread_get_mask().expect("mask"), before);
    }

    /// One within another sleeps with the mask the outer one found, not
    /// the blocked one it found itself; each drop puts back what it found.
    #[test]
    fn one_within_another_sleeps_with_the_thread_s_own_mask() {
        let before = SigSet::thread_get_mask().expect("mask");
        let outer = Interruptible::new().expect("block");
        let blocked = SigSet::thread_get_mask().expect("mask");
        assert_ne!(blocked, before);
        {
            let _inner = Interruptible::new().expect("block again");
            assert_eq!(sleep_mask(), Some(before));
        }
        assert_eq!(sleep_mask(), Some(before));
        assert_eq!(SigSet::thread_get_mask().expect("mask"), blocked);
        drop(outer);
        assert_eq!(sleep_mask(), None);
        assert_eq!(SigSet::thread_get_mask().expect("mask"), before);
    }

    /// In a handler that runs in an outer call's sleep, the mask is the
    /// handler's (its signal blocked): a call there sleeps with it, so the
    /// handler is not entered again, as the kernel would not.
    #[test]
    fn within_a_handler_a_call_sleeps_with_the_handler_s_mask() {
        let before = SigSet::thread_get_mask().expect("mask");
        let outer = Interruptible::new().expect("block");
        // What the kernel sets for a handler of SIGUSR1 run in the sleep.
        let mut handler = before;
        handler.add(Signal::SIGUSR1);
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&handler), None).expect("mask");
        {
            let _inner = Interruptible::new().expect("block in the handler");
            assert_eq!(sleep_mask(), Some(handler));
        }
        assert_eq!(SigSet::thread_get_mask().expect("mask"), handler);
        drop(outer);
        assert_eq!(SigSet::thread_get_mask().expect("mask"), before);
    }
}
