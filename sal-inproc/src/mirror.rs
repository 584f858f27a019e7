//! An eventfd that mirrors one readiness of one object: readable (its
//! counter at 1) exactly while the object is ready, so that `poll`,
//! `select` and `epoll` wait on it natively.
//!
//! A mirror's changes under the core's lock are only noted ([`Mirror::set`]
//! queues the signal); they reach the eventfd when the lock is let go
//! ([`Signal::publish`]), so that a readiness raised and consumed within
//! one locked section (a listener's queue that the accepting thread itself
//! empties) costs no system call and wakes nobody.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::Error;

/// The descriptor, shared by the object (which lends it out) and the
/// engine's core (which raises and lowers it), with its level known
/// without a system call.
#[derive(Debug)]
pub(crate) struct Signal {
    fd: EventFd,
    /// The eventfd's counter is (or is about to be) non-zero.
    level: AtomicBool,
    /// The level the core's lock holder wants, published at its release.
    want: AtomicBool,
}

impl Signal {
    /// A new, lowered eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`).
    pub(crate) fn new() -> Result<Arc<Signal>, Error> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Arc::new(Signal {
            fd,
            level: AtomicBool::new(false),
            want: AtomicBool::new(false),
        }))
    }

    /// Makes it readable (wakes whoever waits on it); no system call if it
    /// already is.
    pub(crate) fn raise(&self) {
        if !self.level.swap(true, Ordering::AcqRel) {
            // Fails only at a counter of 2^64-2, which one write per change
            // never reaches.
            let _ = self.fd.write(1);
        }
    }

    /// Makes it not readable. Call it when it was seen readable (or, for a
    /// mirror, while publishing). Read first, marked lowered after: a
    /// raise racing with it is then either lost (it found the mark still
    /// up: the woken thread looks at the state after lowering anyway) or
    /// leaves a readable descriptor marked lowered, which its next waiter
    /// sees and lowers; never a mark up on a descriptor not readable, which
    /// would swallow every later raise.
    pub(crate) fn lower(&self) {
        // EAGAIN: it was not raised.
        let _ = self.fd.read();
        self.level.store(false, Ordering::Release);
    }

    /// Whether it is raised (or being raised) now.
    pub(crate) fn is_raised(&self) -> bool {
        self.level.load(Ordering::Acquire)
    }

    /// Whether the core wants it raised.
    pub(crate) fn wanted(&self) -> bool {
        self.want.load(Ordering::Relaxed)
    }

    /// Brings the eventfd to the level the core wants, if it is not there
    /// yet (under the core's lock, before letting it go).
    pub(crate) fn publish(&self) {
        if self.want.load(Ordering::Relaxed) {
            self.raise();
        } else if self.level.load(Ordering::Relaxed) {
            self.lower();
        }
    }

    /// The descriptor, to wait on.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One readiness: the signal and the level the core wants for it (known
/// under the core's lock, so that no change costs nothing).
#[derive(Debug)]
pub(crate) struct Mirror {
    signal: Arc<Signal>,
    ready: bool,
}

impl Mirror {
    /// A mirror on a spare eventfd if there is one free (left at the level
    /// its last object had: the caller sets it before anyone sees it, and
    /// an eventfd raised again costs nothing), or a new, lowered one.
    pub(crate) fn new(
        spares: &mut Spares,
        ready: bool,
        pending: &mut Vec<Arc<Signal>>,
    ) -> Result<Mirror, Error> {
        let signal = spares.take()?;
        let level = signal.is_raised();
        signal.want.store(level, Ordering::Relaxed);
        let mut mirror = Mirror {
            signal,
            ready: level,
        };
        mirror.set(ready, pending);
        Ok(mirror)
    }

    /// The descriptor, for [`Spares::give`] once its object is gone.
    pub(crate) fn into_signal(self) -> Arc<Signal> {
        self.signal
    }

    /// The shared descriptor.
    pub(crate) fn signal(&self) -> Arc<Signal> {
        Arc::clone(&self.signal)
    }

    /// Notes that the object is `ready` or not; if that is a change, queues
    /// the signal in `pending`, to be published when the lock is let go.
    pub(crate) fn set(&mut self, ready: bool, pending: &mut Vec<Arc<Signal>>) {
        if ready != self.ready {
            self.ready = ready;
            self.signal.want.store(ready, Ordering::Relaxed);
            pending.push(Arc::clone(&self.signal));
        }
    }
}

/// Eventfds of closed objects, kept for new ones: a connection's two
/// eventfds then cost no `eventfd2`, `fcntl` and `close` each.
#[derive(Debug, Default)]
pub(crate) struct Spares(Vec<Arc<Signal>>);

impl Spares {
    /// Eventfds kept at most (the rest are closed).
    const KEEP: usize = 64;

    /// Keeps the eventfd of an object the application let go (it is
    /// reused once nobody else holds it).
    pub(crate) fn give(&mut self, signal: Arc<Signal>) {
        if self.0.len() < Self::KEEP {
            self.0.push(signal);
        }
    }

    /// An eventfd that nobody else holds: a spare (at its last level), or
    /// a new one.
    fn take(&mut self) -> Result<Arc<Signal>, Error> {
        let free = self.0.iter().rposition(|s| Arc::strong_count(s) == 1);
        match free {
            Some(i) => Ok(self.0.swap_remove(i)),
            None => Signal::new(),
        }
    }
}
