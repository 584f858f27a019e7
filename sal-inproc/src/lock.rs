//! The engine's lock: a mutex around the [`Core`] whose release publishes
//! the host's next deadline ([`Core::settle`]) and wakes the threads that
//! found it taken. Every locked section ends in [`Held`]'s drop, whatever
//! it did and however it ended: the one place where the host's deadline is
//! published, so that no path that changes the host's timers can leave a
//! sleeper sleeping past them.
//!
//! A thread that wakes up for input and finds the lock taken sleeps on its
//! own object's eventfd and on a per-thread eventfd that the holder raises
//! when it lets go; it then takes the lock and reads the socket itself
//! (the holder reads it only when it saw input too), and goes back to
//! watching it. It never blocks on the mutex
//! itself from a wait, which a signal handler that interrupted the holder
//! could not afford (`docs/in-process-sal.md`, "Risks").

use std::ops::{Deref, DerefMut};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;

use crate::core::Core;
use crate::mirror::Signal;
use crate::{waker, Error};

/// The core behind its mutex, and the threads waiting for its release.
pub(crate) struct EngineLock {
    core: Mutex<Core>,
    /// Threads registered in `waiting` (read without the list's lock at
    /// every release: the uncontended path costs one atomic load).
    losers: AtomicUsize,
    waiting: Mutex<Vec<Arc<Signal>>>,
}

/// The core, held; letting go publishes the host's deadline and wakes the
/// threads that waited for it.
pub(crate) struct Held<'a> {
    guard: Option<MutexGuard<'a, Core>>,
    lock: &'a EngineLock,
}

impl EngineLock {
    pub(crate) fn new(core: Core) -> EngineLock {
        EngineLock {
            core: Mutex::new(core),
            losers: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
        }
    }

    fn held<'a>(&'a self, guard: MutexGuard<'a, Core>) -> Held<'a> {
        Held {
            guard: Some(guard),
            lock: self,
        }
    }

    /// The core, waiting for it if need be (even if a thread panicked
    /// holding it: the host's state is consistent between its calls).
    pub(crate) fn lock(&self) -> Held<'_> {
        self.held(self.core.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The core if it is free now.
    pub(crate) fn try_lock(&self) -> Option<Held<'_>> {
        match self.core.try_lock() {
            Ok(guard) => Some(self.held(guard)),
            Err(TryLockError::Poisoned(poisoned)) => Some(self.held(poisoned.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// After a lost `try_lock`: sleeps until `own` is raised, the holder
    /// lets go, or `timeout`. Returns the core if it turned out free.
    pub(crate) fn wait_release(
        &self,
        own: BorrowedFd<'_>,
        timeout: Option<TimeSpec>,
    ) -> Result<Option<Held<'_>>, Error> {
        let Some(me) = waker::current().map(|waker| waker.signal) else {
            // No eventfd for this thread: wait for the mutex itself.
            return Ok(Some(self.lock()));
        };
        // Listed before counted, counted before the second look: a holder
        // that lets go after the look sees the count and finds us listed.
        self.list().push(Arc::clone(&me));
        self.losers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let result = match self.try_lock() {
            Some(held) => Ok(Some(held)),
            None => {
                let mut fds = [
                    PollFd::new(own, PollFlags::POLLIN),
                    PollFd::new(me.fd(), PollFlags::POLLIN),
                ];
                let polled = ppoll(&mut fds, timeout, None);
                if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                    me.lower();
                }
                match polled {
                    Ok(_) | Err(Errno::EINTR) => Ok(None),
                    Err(errno) => Err(errno.into()),
                }
            }
        };
        {
            let mut list = self.list();
            if let Some(i) = list.iter().position(|s| Arc::ptr_eq(s, &me)) {
                list.swap_remove(i);
            }
        }
        self.losers.fetch_sub(1, Ordering::SeqCst);
        // A raise not seen here stays: the next wait on `me` returns at
        // once and looks again, which is what a raise asks.
        result
    }

    fn list(&self) -> MutexGuard<'_, Vec<Arc<Signal>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Deref for Held<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        // Some until dropped.
        self.guard.as_deref().expect("held")
    }
}

impl DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        self.guard.as_deref_mut().expect("held")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Under the lock, before anything else: the deadline this section
        // left is published (and the timerfd armed if a sleeper needs it)
        // before another holder can change it.
        let pending = self.guard.as_mut().map(|core| {
            core.settle();
            core.take_pending()
        });
        match pending {
            Some(pending) if !pending.is_empty() => {
                // The readiness changes of this locked section reach the
                // eventfds, each in order with every other holder's (one
                // publication of an eventfd at a time, each applying the
                // level wanted last: `Signal::publish`): the lowerings
                // before the core is let go (a thread that takes it next
                // and finds nothing to do must not find its eventfd still
                // up, and spin), the raisings after (a thread they wake
                // finds the core free). No lock across objects: a holder
                // letting go while another publishes does not wait for it.
                for signal in pending.iter().filter(|signal| !signal.wanted()) {
                    signal.publish();
                }
                drop(self.guard.take());
                for signal in pending {
                    signal.publish();
                }
            }
            _ => drop(self.guard.take()),
        }
        fence(Ordering::SeqCst);
        if self.lock.losers.load(Ordering::SeqCst) > 0 {
            for waiter in self.lock.list().drain(..) {
                waiter.raise();
            }
        }
    }
}
