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
/// only asks): if it interrupts, noted now, before it can run (a blocking
/// connect of another thread then waits so). [`settled`] follows.
pub(crate) fn installing(signum: libc::c_int, act: Option<&libc::sigaction>) {
    if let (Some(act), Some(bit)) = (act, bit(signum)) {
        if interrupts(signum, act) {
            INTERRUPTING.fetch_or(bit, Ordering::Relaxed);
        }
    }
}

/// As [`installing`], for a handler installed without `SA_RESTART`
/// (`sysv_signal`, `sigset`), or made to interrupt (`siginterrupt`;
/// `handler` is then not known and taken to be one).
pub(crate) fn installing_without_restart(signum: libc::c_int, handler: libc::sighandler_t) {
    let act = libc::sigaction {
        sa_sigaction: handler,
        sa_mask: unsafe_zeroed_mask(),
        sa_flags: 0,
        sa_restorer: None,
    };
    installing(signum, Some(&act));
}

/// After a call that may have changed `signum`'s action: notes what is
/// installed now, as the kernel says (whatever another thread's call in
/// between did, and whether this one took).
pub(crate) fn settled(signum: libc::c_int) {
    let Some(bit) = bit(signum) else {
        return;
    };
    // SAFETY: all-zero is a valid `sigaction` to be written over.
    let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: asks only; `now` is valid for writes.
    if unsafe { crate::real::sigaction(signum, std::ptr::null(), &mut now) } != 0 {
        return;
    }
    match interrupts(signum, &now) {
        true => INTERRUPTING.fetch_or(bit, Ordering::Relaxed),
        false => INTERRUPTING.fetch_and(!bit, Ordering::Relaxed),
    };
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
