//! Whether a signal may interrupt a blocking call of the program's.
//!
//! A blocking `connect` waits for sald's answer on a control connection. To
//! wait as TCP's connect does (`EINTR` once a handler without `SA_RESTART`
//! has run, restarted after one with it), the wait must be a plain blocking
//! receive (`ops::start_connect`). But a blocked receive is also woken, for
//! nothing, when sald reads our request (a unix socket announces the room
//! freed to its writer's waiters), which a wait in `poll(POLLIN)` filters
//! out: about a tenth of the connection rate in `benches/connect`. So the
//! plain receive is used only once the program may have installed a
//! handler without `SA_RESTART`. The calls that can install one are
//! interposed to know: `sigaction`, `siginterrupt` (which clears
//! `SA_RESTART`), `sysv_signal` (what `signal` is in a strict ISO C build)
//! and `sigset`. glibc's BSD `signal`, the default, restarts. Until then no
//! signal can interrupt a connect, and the filtered wait behaves the same.
//! Each signal's last installation counts: a handler installed again with
//! `SA_RESTART` (or the default action) no longer interrupts.
//!
//! The in-process mode asks the same of its blocking calls
//! (`inproc::socket::interruptible`).

use std::sync::atomic::{AtomicU64, Ordering};

/// The signals (bit `signum - 1`) whose handler, as last installed, does
/// not restart system calls.
static INTERRUPTING: AtomicU64 = AtomicU64::new(0);

/// The bit of `signum`, if it is a signal's number.
fn bit(signum: libc::c_int) -> Option<u64> {
    (1..=64).contains(&signum).then(|| 1 << (signum - 1))
}

/// Whether `act` for `signum` interrupts blocking calls. Handlers of the
/// signals a thread's own faults raise (Rust's runtime installs some for
/// `SIGSEGV` and `SIGBUS`) do not count: they never arrive while the
/// thread waits in a system call.
fn interrupts(signum: libc::c_int, act: &libc::sigaction) -> bool {
    let faults = [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
    ];
    let handler = act.sa_sigaction;
    let catches = handler != libc::SIG_DFL && handler != libc::SIG_IGN;
    catches && act.sa_flags & libc::SA_RESTART == 0 && !faults.contains(&signum)
}

/// The program is about to install `act` for `signum` (`sigaction`; null
/// only asks): if it interrupts, noted now, before it can run.
pub(crate) fn installing(signum: libc::c_int, act: Option<&libc::sigaction>) {
    if let (Some(act), Some(bit)) = (act, bit(signum)) {
        if interrupts(signum, act) {
            INTERRUPTING.fetch_or(bit, Ordering::Relaxed);
        }
    }
}

/// The installation of `act` for `signum` is over (`done`: it took):
/// what is installed now is noted.
pub(crate) fn settled(signum: libc::c_int, act: Option<&libc::sigaction>, done: bool) {
    if act.is_none() {
        return;
    }
    let now = match done {
        true => act.copied(),
        false => {
            // SAFETY: all-zero is a valid `sigaction` to be written over.
            let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: asks only; `current` is valid for writes.
            let asked = unsafe { crate::real::sigaction(signum, std::ptr::null(), &mut current) };
            (asked == 0).then_some(current)
        }
    };
    if let (Some(now), Some(bit)) = (now, bit(signum)) {
        match interrupts(signum, &now) {
            true => INTERRUPTING.fetch_or(bit, Ordering::Relaxed),
            false => INTERRUPTING.fetch_and(!bit, Ordering::Relaxed),
        };
    }
}

/// The program installed `handler` for `signum` in a way that does not
/// restart system calls (`sysv_signal`, `sigset`), or made `signum`'s
/// handler interrupt them (`siginterrupt`; `handler` is then not known
/// and taken to be one).
pub(crate) fn installed_without_restart(signum: libc::c_int, handler: libc::sighandler_t) {
    let act = libc::sigaction {
        sa_sigaction: handler,
        sa_mask: unsafe_zeroed_mask(),
        sa_flags: 0,
        sa_restorer: None,
    };
    settled(signum, Some(&act), true);
}

/// `siginterrupt(signum, 0)`: `signum`'s handler restarts system calls.
pub(crate) fn restarting(signum: libc::c_int) {
    if let Some(bit) = bit(signum) {
        INTERRUPTING.fetch_and(!bit, Ordering::Relaxed);
    }
}

/// An empty signal set.
fn unsafe_zeroed_mask() -> libc::sigset_t {
    // SAFETY: `sigset_t` is plain data; all zeros is the empty set.
    unsafe { std::mem::zeroed() }
}

/// Whether a signal may interrupt a blocking call: some handler installed
/// now does not restart system calls.
pub(crate) fn may_interrupt() -> bool {
    INTERRUPTING.load(Ordering::Relaxed) != 0
}
