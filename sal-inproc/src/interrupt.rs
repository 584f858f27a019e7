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
//! A call with a timeout ([`Interruptible::timed`]: TCP's calls under
//! `SO_RCVTIMEO` or `SO_SNDTIMEO`) also ends when the process is stopped
//! and continued (`SIGSTOP`, `SIGCONT`, no handler), as Linux's do
//! (`signal(7)`, "Interruption of system calls and library functions by
//! stop signals"). `ppoll` never shows a stop: the kernel restarts it. So
//! such a call's sleeps wait in `epoll_pwait2` instead ([`sleep`]), which
//! a stop ends with `EINTR`, on an epoll set of the call's own (made at
//! its first sleep, out of the program's numbers, closed with the call;
//! the sleep's descriptors join it and leave after). `epoll_pwait2` also
//! ends with `EINTR` for a signal the program ignores that came while the
//! call had it blocked (between its sleeps; `ppoll` restarts then): such
//! signals are taken first (`sigtimedwait`, as the kernel would have
//! discarded them), and only one that comes in the microsecond between
//! that and the sleep ends the call early. A `SIGCONT` among them means
//! the process was stopped while the call ran between its sleeps (it is
//! queued only while blocked), and ends the call too; but only if the
//! process's main thread blocks it then (the kernel discards an ignored
//! signal by the main thread's mask), and a `SIGCONT` sent to a process
//! that was not stopped (`kill -CONT`) ends it as well, where Linux's
//! call would go on. The engine's calls go to the kernel directly, not
//! through a preloaded library's `epoll` functions. The cost, for calls
//! with a timeout only: an epoll set per call that sleeps (made, moved,
//! closed), and per sleep an `epoll_ctl` in and out per descriptor, a
//! `sigpending` and a zero-timeout `ppoll` besides the wait.

use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd};
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::time::TimeSpec;

use crate::Error;

thread_local! {
    /// The thread's own signal mask while an [`Interruptible`] blocks its
    /// signals: what the engine's sleeps wait with.
    static UNBLOCKED: Cell<Option<SigSet>> = const { Cell::new(None) };
    /// Whether a stop and continue ends the thread's current call, and
    /// its epoll set (see [`Interruptible::timed`]).
    static STOPS: Cell<Stops> = const { Cell::new(Stops::Off) };
}

/// Whether a stop and continue ends the thread's current call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stops {
    /// It does not (no call, or one without a timeout).
    Off,
    /// It does: its sleeps wait in its epoll set (`None` until the first).
    On(Option<RawFd>),
    /// It does, but no epoll set could be had: its sleeps are `ppoll`s.
    Unwatched,
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
    outer_stops: Stops,
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
        // A call within another (a handler's, run in the outer call's
        // sleep) has stops of its own: none unless it is timed.
        let outer_stops = STOPS.with(|stops| stops.replace(Stops::Off));
        Ok(Interruptible {
            mask,
            outer,
            outer_stops,
        })
    }

    /// [`Interruptible::new`] for a call with a timeout: a stop and
    /// continue of the process ends it too (see the module docs).
    pub fn timed() -> Result<Interruptible, Error> {
        let call = Interruptible::new()?;
        STOPS.with(|stops| stops.set(Stops::On(None)));
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
        if let Stops::On(Some(set)) = STOPS.with(|stops| stops.replace(self.outer_stops)) {
            close_set(set);
        }
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

/// The engine's sleep: `ppoll` of `fds` up to `timeout` with
/// [`sleep_mask`]; in a call with a timeout, the same wait in
/// `epoll_pwait2`, which a stop and continue ends with `EINTR` (see the
/// module docs; the descriptors' `revents` are then read with a
/// zero-timeout `ppoll`), after taking the pending signals the program
/// ignores (a `SIGCONT` among them ends the call). Where epoll cannot
/// serve (no `epoll_pwait2` before Linux 5.11 or under a filter, out of
/// descriptors, a descriptor epoll refuses), `ppoll`.
pub(crate) fn sleep(fds: &mut [PollFd<'_>], timeout: Option<TimeSpec>) -> nix::Result<i32> {
    let mask = sleep_mask();
    let stops = STOPS.with(Cell::get);
    let Some(mask) = mask.filter(|_| stops != Stops::Off) else {
        return ppoll(fds, timeout, mask);
    };
    if take_ignored(&mask) {
        // A stop and continue while the call ran between its sleeps.
        return Err(Errno::EINTR);
    }
    let set = match stops {
        Stops::On(Some(set)) => Some(set),
        Stops::On(None) => epoll_set(),
        Stops::Off | Stops::Unwatched => None,
    };
    let Some(set) = set else {
        STOPS.with(|now| now.set(Stops::Unwatched));
        return ppoll(fds, timeout, Some(mask));
    };
    // Out of the state while it sleeps: a handler's call in the sleep that
    // has no `Interruptible` of its own is no timed call, and must not use
    // this set.
    STOPS.with(|now| now.set(Stops::Off));
    let slept = epoll_sleep(set, fds, timeout, &mask);
    if !matches!(slept, Err(Slept::Refused | Slept::Missing)) {
        STOPS.with(|now| now.set(Stops::On(Some(set))));
    }
    match slept {
        Ok(n) => {
            // Which descriptors are ready, as `ppoll` tells; one at least
            // when epoll saw one (even if its readiness went meanwhile: a
            // wake-up, not a timeout).
            let ready = ppoll(fds, Some(TimeSpec::new(0, 0)), None)?;
            Ok(if n > 0 { ready.max(1) } else { ready })
        }
        Err(Slept::Failed(errno)) => Err(errno),
        Err(failure) => {
            close_set(set);
            if failure == Slept::Missing {
                NO_EPOLL_PWAIT2.store(true, Ordering::Relaxed);
            }
            STOPS.with(|now| now.set(Stops::Unwatched));
            ppoll(fds, timeout, Some(mask))
        }
    }
}

/// Why an [`epoll_sleep`] did not sleep to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slept {
    /// A descriptor epoll does not take (`epoll_ctl` failed): `ppoll`.
    Refused,
    /// No `epoll_pwait2` (`ENOSYS`, or `EPERM` from a filter): `ppoll`,
    /// for every timed call from then on.
    Missing,
    /// `EINTR` (a handler's signal, a stop and continue), or another
    /// failure of the wait: the sleep's.
    Failed(Errno),
}

/// `epoll_pwait2` failed as a call the kernel does not have (or a filter
/// refuses): timed calls sleep in `ppoll` from then on.
static NO_EPOLL_PWAIT2: AtomicBool = AtomicBool::new(false);

/// A new epoll set (close-on-exec, out of the program's numbers), or
/// `None` (none can be made, or `epoll_pwait2` is known missing).
fn epoll_set() -> Option<RawFd> {
    if NO_EPOLL_PWAIT2.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_epoll_create1, libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a descriptor just made, this call's alone.
    let set = crate::descriptors::own(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    #[cfg(test)]
    OPEN_SETS.with(|open| open.set(open.get() + 1));
    Some(set.into_raw_fd())
}

/// Closes a set [`epoll_set`] made.
fn close_set(set: RawFd) {
    #[cfg(test)]
    OPEN_SETS.with(|open| open.set(open.get() - 1));
    // SAFETY: the set `epoll_set` made, given up here (not through a
    // preloaded `close`).
    socket_shim::fd::close(unsafe { OwnedFd::from_raw_fd(set) });
}

#[cfg(test)]
thread_local! {
    /// The thread's epoll sets made and not closed yet.
    static OPEN_SETS: Cell<i64> = const { Cell::new(0) };
}

/// `epoll_ctl` of `fd` in `set`, as a system call.
fn epoll_ctl(set: RawFd, op: libc::c_int, fd: RawFd, events: u32) -> Result<(), Errno> {
    let mut event = libc::epoll_event { events, u64: 0 };
    // SAFETY: `event` is valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_epoll_ctl,
            set,
            op,
            fd,
            &mut event as *mut libc::epoll_event,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Waits in `set` for any of `fds` (their `events`) up to `timeout`, with
/// `mask`; the descriptors leave the set after. How many events epoll had
/// (0: the timeout passed).
fn epoll_sleep(
    set: RawFd,
    fds: &[PollFd<'_>],
    timeout: Option<TimeSpec>,
    mask: &SigSet,
) -> Result<usize, Slept> {
    let mut added = 0;
    let mut result = Ok(0);
    for fd in fds {
        let events = fd.events().bits() as u32;
        match epoll_ctl(set, libc::EPOLL_CTL_ADD, fd.as_fd().as_raw_fd(), events) {
            Ok(()) => added += 1,
            Err(_) => {
                result = Err(Slept::Refused);
                break;
            }
        }
    }
    if result.is_ok() {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let timeout = timeout.map(|t| libc::timespec {
            tv_sec: t.tv_sec(),
            tv_nsec: t.tv_nsec(),
        });
        let timeout = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        let mask: &libc::sigset_t = mask.as_ref();
        // SAFETY: `events` has room for its length, `timeout` is null or
        // valid for the call, `mask` valid (the kernel reads its first
        // `_NSIG / 8` bytes).
        let n = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                set,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout,
                mask as *const libc::sigset_t,
                KERNEL_SIGSET_BYTES,
            )
        };
        result = match Errno::result(n) {
            Ok(n) => Ok(n as usize),
            Err(Errno::ENOSYS | Errno::EPERM) => Err(Slept::Missing),
            Err(errno) => Err(Slept::Failed(errno)),
        };
    }
    for fd in &fds[..added] {
        let _ = epoll_ctl(set, libc::EPOLL_CTL_DEL, fd.as_fd().as_raw_fd(), 0);
    }
    result
}

/// The size of the kernel's signal set (`_NSIG / 8`).
const KERNEL_SIGSET_BYTES: usize = 8;

/// Signals whose default action is to ignore them.
const IGNORED_BY_DEFAULT: [libc::c_int; 4] =
    [libc::SIGCHLD, libc::SIGURG, libc::SIGWINCH, libc::SIGCONT];

/// Takes the pending signals that the sleep's `mask` lets through and the
/// program ignores (`SIG_IGN`, or by default): they were queued only
/// because the call had them blocked, and the kernel would discard them
/// as the sleep unblocks them, but `epoll_pwait2` would end with `EINTR`
/// first. One system call when none is pending. Whether one was
/// `SIGCONT`: the process was stopped and continued while the call ran
/// between its sleeps (it was queued because the call blocked it).
fn take_ignored(mask: &SigSet) -> bool {
    let mut continued = false;
    // SAFETY: an all-zero set is a valid value, emptied and filled by the
    // calls.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `pending` is valid for the call.
    if unsafe { libc::sigpending(&mut pending) } != 0 {
        return false;
    }
    for signal in 1..=libc::SIGRTMAX() {
        // SAFETY: no pointers beyond the sets, valid for the calls.
        let waiting = unsafe { libc::sigismember(&pending, signal) } == 1
            && unsafe { libc::sigismember(mask.as_ref(), signal) } == 0;
        if !waiting || !ignored(signal) {
            continue;
        }
        // SAFETY: as `pending`.
        let mut one: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `one` is valid for the calls.
        unsafe {
            libc::sigemptyset(&mut one);
            libc::sigaddset(&mut one, signal);
        }
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // Every queued instance (a real-time signal may have several); at
        // most a bounded number, as the queue is.
        for _ in 0..MOST_TAKEN {
            // SAFETY: the sets and `now` are valid for the call; no info.
            let taken = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigtimedwait,
                    &one as *const libc::sigset_t,
                    std::ptr::null_mut::<libc::siginfo_t>(),
                    &now as *const libc::timespec,
                    KERNEL_SIGSET_BYTES,
                )
            };
            if taken != signal as libc::c_long {
                break;
            }
            continued |= signal == libc::SIGCONT;
        }
    }
    continued
}

/// The most instances of one signal [`take_ignored`] takes at a time.
const MOST_TAKEN: usize = 64;

/// Whether the program ignores `signal`: `SIG_IGN`, or `SIG_DFL` for one
/// whose default is to ignore it.
fn ignored(signal: libc::c_int) -> bool {
    // SAFETY: an all-zero `sigaction` is a valid value to be written over.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query (no new action); `action` is valid for the call.
    if unsafe { libc::sigaction(signal, std::ptr::null(), &mut action) } != 0 {
        return false;
    }
    match action.sa_sigaction {
        libc::SIG_IGN => true,
        libc::SIG_DFL => IGNORED_BY_DEFAULT.contains(&signal),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use nix::sys::signal::{raise, sigaction, SaFlags, SigAction, SigHandler};

    use super::*;

    static HANDLED: AtomicUsize = AtomicUsize::new(0);

    /// Installs `handler` for `signal`: the tests' handlers only touch
    /// atomics and thread-local cells.
    fn handle(signal: Signal, handler: extern "C" fn(i32)) {
        let action = SigAction::new(
            SigHandler::Handler(handler),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: see above; async-signal-safe.
        unsafe { sigaction(signal, &action) }.expect("sigaction");
    }

    extern "C" fn count(_: i32) {
        HANDLED.fetch_add(1, Ordering::SeqCst);
    }

    /// A signal raised while the call runs between its sleeps waits for
    /// the next sleep's mask; the thread's mask comes back at the drop.
    #[test]
    fn signals_wait_for_the_sleep_and_the_mask_comes_back() {
        handle(Signal::SIGUSR2, count);
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

    /// A timed call's sleep (in epoll) is not ended by a signal the
    /// program ignores that came while the call had it blocked: it waits
    /// out its timeout, as `ppoll` (and the kernel's calls) would.
    #[test]
    fn an_ignored_signal_does_not_end_a_timed_sleep() {
        let _call = Interruptible::timed().expect("block");
        // SIGWINCH: ignored by default; queued now, as the call blocks it.
        raise(Signal::SIGWINCH).expect("raise");
        let mut none: [PollFd<'_>; 0] = [];
        let start = std::time::Instant::now();
        let slept = sleep(
            &mut none,
            Some(TimeSpec::from_duration(Duration::from_millis(50))),
        );
        assert_eq!(slept, Ok(0), "the timeout passed");
        assert!(start.elapsed() >= Duration::from_millis(45));
        assert!(
            matches!(STOPS.with(Cell::get), Stops::On(Some(_)))
                || NO_EPOLL_PWAIT2.load(Ordering::Relaxed),
            "slept in epoll"
        );
    }

    /// A descriptor epoll refuses (a regular file) leaves the call to
    /// `ppoll`, its epoll set closed; the set is closed with the call too.
    #[test]
    fn a_refused_descriptor_leaves_the_sleep_to_ppoll_and_no_set_open() {
        let file = std::fs::File::open("/proc/self/stat").expect("open");
        let short = || Some(TimeSpec::from_duration(Duration::from_millis(20)));
        {
            let _call = Interruptible::timed().expect("block");
            let mut none: [PollFd<'_>; 0] = [];
            assert_eq!(sleep(&mut none, short()), Ok(0));
            let mut fds = [PollFd::new(file.as_fd(), nix::poll::PollFlags::POLLIN)];
            assert_eq!(sleep(&mut fds, short()), Ok(1), "a file is always readable");
            assert!(fds[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN)));
            assert_eq!(STOPS.with(Cell::get), Stops::Unwatched);
            assert_eq!(OPEN_SETS.with(Cell::get), 0, "closed at the refusal");
        }
        {
            let _call = Interruptible::timed().expect("block");
            let mut none: [PollFd<'_>; 0] = [];
            assert_eq!(sleep(&mut none, short()), Ok(0));
        }
        assert_eq!(OPEN_SETS.with(Cell::get), 0, "closed with the call");
    }

    /// While a timed call sleeps, a handler run in its sleep finds no
    /// stops: a call it makes without an `Interruptible` of its own is no
    /// timed call and does not use the sleeping call's epoll set.
    #[test]
    fn a_handler_in_a_timed_sleep_finds_no_stops() {
        handle(Signal::SIGPROF, note_stops);
        let _call = Interruptible::timed().expect("block");
        raise(Signal::SIGPROF).expect("raise");
        let mut none: [PollFd<'_>; 0] = [];
        let short = Some(TimeSpec::from_duration(Duration::from_millis(20)));
        assert_eq!(sleep(&mut none, short), Err(Errno::EINTR));
        assert_eq!(
            STOPS_IN_HANDLER.load(Ordering::SeqCst),
            1,
            "the handler saw Off"
        );
        assert!(matches!(
            STOPS.with(Cell::get),
            Stops::On(_) | Stops::Unwatched
        ));
    }

    /// 1: [`Stops::Off`] in the handler; 2: anything else.
    static STOPS_IN_HANDLER: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn note_stops(_: i32) {
        let off = STOPS.with(Cell::get) == Stops::Off;
        STOPS_IN_HANDLER.store(if off { 1 } else { 2 }, Ordering::SeqCst);
    }

    /// A stop and continue while a timed call ran between its sleeps (its
    /// `SIGCONT` queued, as the call blocks it) ends the call at its next
    /// sleep; a call without a timeout goes on.
    #[test]
    fn a_continue_ends_a_timed_call_only() {
        let mut none: [PollFd<'_>; 0] = [];
        let short = || Some(TimeSpec::from_duration(Duration::from_millis(20)));
        {
            let _call = Interruptible::timed().expect("block");
            raise(Signal::SIGCONT).expect("raise");
            assert_eq!(sleep(&mut none, short()), Err(Errno::EINTR));
            assert_eq!(sleep(&mut none, short()), Ok(0), "once");
        }
        let _call = Interruptible::new().expect("block");
        raise(Signal::SIGCONT).expect("raise");
        assert_eq!(sleep(&mut none, short()), Ok(0), "untimed: no stop");
    }

    /// A handler's signal ends a timed sleep (in epoll), as an untimed
    /// one's (in `ppoll`); a call within the timed one (a handler's) is
    /// untimed unless it says so, and the timed one's epoll set comes back
    /// after it.
    #[test]
    fn a_handler_ends_a_timed_sleep_and_calls_within_have_their_own_stops() {
        handle(Signal::SIGUSR1, count_usr1);
        let _call = Interruptible::timed().expect("block");
        let mut none: [PollFd<'_>; 0] = [];
        let short = || Some(TimeSpec::from_duration(Duration::from_millis(20)));
        assert_eq!(sleep(&mut none, short()), Ok(0));
        let set = STOPS.with(Cell::get);
        assert!(matches!(set, Stops::On(Some(_))) || NO_EPOLL_PWAIT2.load(Ordering::Relaxed));
        {
            let _inner = Interruptible::new().expect("block again");
            assert_eq!(STOPS.with(Cell::get), Stops::Off);
        }
        assert_eq!(STOPS.with(Cell::get), set);
        raise(Signal::SIGUSR1).expect("raise");
        assert_eq!(sleep(&mut none, short()), Err(Errno::EINTR));
        assert_eq!(HANDLED_USR1.load(Ordering::SeqCst), 1);
    }

    static HANDLED_USR1: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn count_usr1(_: i32) {
        HANDLED_USR1.fetch_add(1, Ordering::SeqCst);
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
