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

use std::cell::Cell;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

use crate::Error;

thread_local! {
    /// The thread's own signal mask while an [`Interruptible`] blocks its
    /// signals: what the engine's sleeps wait with.
    static UNBLOCKED: Cell<Option<SigSet>> = const { Cell::new(None) };
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
        Ok(Interruptible { mask, outer })
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
