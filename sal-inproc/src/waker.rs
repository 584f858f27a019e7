//! Each thread's own wake-up: an eventfd another thread raises to tell it
//! to look at the engine's state again (the core's lock was let go, or the
//! poller role was handed to it), and a number that names the thread in the
//! engine's lists.
//!
//! A waker belongs to the process that made it: after `fork`, the forking
//! thread's thread-local waker is the child's copy of the parent's
//! eventfd, which both processes would then read and raise (a child's
//! read could consume a raise meant for the parent's thread, which would
//! sleep until its timeout). So each waker records its process, and
//! [`current`] makes a fresh one when the process changed. The process id
//! is kept ([`process_id`]: glibc's `getpid` is a system call), and
//! forgotten in a forked child by a `pthread_atfork` handler.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Once};

use crate::mirror::Signal;

/// Numbers given to threads so far (0 is nobody).
static NEXT: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's waker (`None` until its first use, or while its
    /// eventfd could not be made).
    static WAKER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// A thread's number and wake-up eventfd, and the process they belong to.
#[derive(Debug, Clone)]
pub(crate) struct Waker {
    pub(crate) id: u64,
    pub(crate) signal: Arc<Signal>,
    /// The process that made the eventfd.
    pid: u32,
}

/// This process's id as last read (0: to be read again).
static PID: AtomicU32 = AtomicU32::new(0);

/// In a forked child: the id is the child's own, to be read again.
extern "C" fn forget_pid() {
    PID.store(0, Ordering::Relaxed);
}

/// This process's id without a system call once known: a `fork` handler
/// forgets it in the child. (A child of a raw `clone` that skips the
/// handlers keeps its parent's.)
pub(crate) fn process_id() -> u32 {
    static HANDLER: Once = Once::new();
    HANDLER.call_once(|| {
        // SAFETY: a plain `extern "C" fn()` that lives as long as the
        // process, for the child only.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) };
    });
    match PID.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// The calling thread's waker: made at its first use, and again in a
/// forked child (see the module's doc); `None` while the thread's locals
/// are being destroyed or if no eventfd can be made.
pub(crate) fn current() -> Option<Waker> {
    let pid = process_id();
    WAKER
        .try_with(|slot| {
            let mut slot = slot.try_borrow_mut().ok()?;
            if let Some(waker) = slot.as_ref().filter(|waker| waker.pid == pid) {
                return Some(waker.clone());
            }
            let fresh = Signal::new().ok().map(|signal| Waker {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                signal,
                pid,
            });
            // An inherited waker goes: its eventfd is closed in this
            // process only (the parent's stays).
            drop(std::mem::replace(&mut *slot, fresh));
            slot.clone()
        })
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A forked child's waker is its own: another eventfd (and number)
    /// than the one the forking thread had, made for the child's pid.
    #[test]
    fn a_forked_child_gets_its_own_waker() {
        let parent = current().expect("waker");
        let again = current().expect("waker");
        assert!(Arc::ptr_eq(&parent.signal, &again.signal), "not kept");
        let parent_fd = parent.signal.fd().unwrap().as_raw_fd();
        // SAFETY: no pointers; the child only checks and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let ok = current().is_some_and(|child| {
                !Arc::ptr_eq(&child.signal, &parent.signal)
                    && child
                        .signal
                        .fd()
                        .is_ok_and(|fd| fd.as_raw_fd() != parent_fd)
                    && child.pid == std::process::id()
                    && child.id != parent.id
            });
            // SAFETY: no pointers; ends the child without unwinding.
            unsafe { libc::_exit(i32::from(!ok)) };
        }
        let mut status = 0;
        // SAFETY: `status` is a valid int for the call.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child kept its parent's waker"
        );
        let after = current().expect("waker");
        assert!(
            Arc::ptr_eq(&parent.signal, &after.signal),
            "parent's changed"
        );
    }
}
