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
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::descriptors::Counter;

use crate::Error;

/// The descriptor, shared by the object (which lends it out) and the
/// engine's core (which raises and lowers it), with its level known
/// without a system call.
#[derive(Debug)]
pub(crate) struct Signal {
    /// The eventfd: made with the signal, or for a mirror when first
    /// asked for ([`Signal::fd`]): most streams are never waited on for
    /// room, and their writable mirror then costs no descriptor and no
    /// system call.
    fd: OnceLock<Counter>,
    /// The eventfd's counter is (or is about to be) non-zero.
    level: AtomicBool,
    /// The level the core's lock holder wants, published at its release.
    want: AtomicBool,
    /// Held while the level is brought to `want` ([`Signal::publish`]):
    /// publications of one eventfd happen one at a time, each reading
    /// `want` as it applies it, so the last one leaves the level the core
    /// wants last, whichever thread's release came first. Per eventfd, so
    /// that two holders letting go one after the other, publishing other
    /// objects' readiness, never wait for each other.
    order: Mutex<()>,
}

impl Signal {
    /// A new, lowered eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`).
    pub(crate) fn new() -> Result<Arc<Signal>, Error> {
        let signal = Signal::lazy();
        let _ = signal.fd.set(Counter::new()?);
        Ok(signal)
    }

    /// A lowered signal whose eventfd is made when first asked for.
    pub(crate) fn lazy() -> Arc<Signal> {
        Arc::new(Signal {
            fd: OnceLock::new(),
            level: AtomicBool::new(false),
            want: AtomicBool::new(false),
            order: Mutex::new(()),
        })
    }

    /// Makes it readable (wakes whoever waits on it); no system call if it
    /// already is, or has no eventfd yet.
    pub(crate) fn raise(&self) {
        if !self.level.swap(true, Ordering::AcqRel) {
            // Against [`Signal::fd`] making the eventfd meanwhile: it sets
            // the eventfd, then looks at the level; this sets the level,
            // then looks for the eventfd. One of the two sees the other's.
            fence(Ordering::SeqCst);
            if let Some(fd) = self.fd.get() {
                // Fails only at a counter of 2^64-2, which one write per
                // change never reaches.
                let _ = fd.add();
            }
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
        if let Some(fd) = self.fd.get() {
            // EAGAIN: it was not raised.
            let _ = fd.take();
        }
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
    /// yet (lowerings under the core's lock, before letting it go; raisings
    /// just after). One publication of this eventfd at a time: the level
    /// wanted is read under `order`, after the previous publication's, so
    /// a raise published late by a holder that let go earlier reads the
    /// lowering a later holder wanted, and does nothing.
    pub(crate) fn publish(&self) {
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        if self.want.load(Ordering::Relaxed) {
            self.raise();
        } else if self.level.load(Ordering::Relaxed) {
            self.lower();
        }
    }

    /// [`Signal::fd`] for a call that waits on it (`poll`, `epoll_ctl`, a
    /// `write` or `connect` that blocks): out of descriptors is `ENOMEM`,
    /// which those calls may give, where `EMFILE` is not theirs.
    pub(crate) fn wait_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        self.fd().map_err(|error| match error.errno() {
            libc::EMFILE | libc::ENFILE => {
                Error::Io(std::io::Error::from_raw_os_error(libc::ENOMEM))
            }
            _ => error,
        })
    }

    /// The descriptor, to wait on: made now if it was not yet, at the
    /// signal's level (`EMFILE` and the like if it cannot be).
    pub(crate) fn fd(&self) -> Result<BorrowedFd<'_>, Error> {
        if let Some(fd) = self.fd.get() {
            return Ok(fd.as_fd());
        }
        // Made once, and not while a publication changes the level.
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fd) = self.fd.get() {
            return Ok(fd.as_fd());
        }
        let counter = Counter::new()?;
        let fd = self.fd.get_or_init(|| counter);
        // See [`Signal::raise`]. Raised twice (by both) is harmless: a
        // read takes the whole counter.
        fence(Ordering::SeqCst);
        if self.level.load(Ordering::Acquire) {
            let _ = fd.add();
        }
        Ok(fd.as_fd())
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
        let mirror = Mirror::on(spares.take(ready), ready, pending);
        mirror.signal.fd()?;
        Ok(mirror)
    }

    /// [`Mirror::new`], whose eventfd is made only when first asked for
    /// ([`Signal::fd`]). Never a spare: those are kept for their eventfds.
    pub(crate) fn lazy(ready: bool, pending: &mut Vec<Arc<Signal>>) -> Mirror {
        Mirror::on(Signal::lazy(), ready, pending)
    }

    fn on(signal: Arc<Signal>, ready: bool, pending: &mut Vec<Arc<Signal>>) -> Mirror {
        let level = signal.is_raised();
        signal.want.store(level, Ordering::Relaxed);
        let mut mirror = Mirror {
            signal,
            ready: level,
        };
        mirror.set(ready, pending);
        mirror
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
    /// reused once nobody else holds it), at the level it has: a change
    /// this locked section noted for it is dropped (its next object sets
    /// the level it needs, so an accept that found the queue empty and
    /// gives back the eventfds it took costs no system call).
    pub(crate) fn give(&mut self, signal: Arc<Signal>) {
        if signal.fd.get().is_none() {
            // Nothing to save on a new one.
            return;
        }
        signal
            .want
            .store(signal.level.load(Ordering::Acquire), Ordering::Relaxed);
        if self.0.len() < Self::KEEP {
            self.0.push(signal);
        }
    }

    /// An eventfd that nobody else holds: a spare, at its last level (one
    /// at `ready` if there is one, which its object then costs no system
    /// call to set), or a new, lowered one.
    fn take(&mut self, ready: bool) -> Arc<Signal> {
        let free = |s: &Arc<Signal>| Arc::strong_count(s) == 1;
        let free = (self.0.iter())
            .rposition(|s| free(s) && s.is_raised() == ready)
            .or_else(|| self.0.iter().rposition(free));
        match free {
            Some(i) => self.0.swap_remove(i),
            None => Signal::lazy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    use super::*;

    /// Whether the eventfd itself is readable now (not the cached level).
    fn readable(signal: &Signal) -> bool {
        let mut fds = [PollFd::new(signal.fd().unwrap(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
    }

    /// A holder that let go first but publishes its raise last (the thread
    /// was descheduled between its release and its publication) after a
    /// later holder lowered the object: the eventfd stays lowered, as the
    /// core wants last.
    #[test]
    fn a_raise_published_after_a_later_lowering_does_nothing() {
        let mut spares = Spares::default();
        let mut pending = Vec::new();
        let mut mirror = Mirror::new(&mut spares, false, &mut pending).unwrap();
        assert!(pending.is_empty(), "a new eventfd starts lowered");
        // Section 1 raises; section 2 lowers and publishes first.
        mirror.set(true, &mut pending);
        let first = std::mem::take(&mut pending);
        mirror.set(false, &mut pending);
        for signal in std::mem::take(&mut pending) {
            signal.publish();
        }
        for signal in first {
            signal.publish();
        }
        let signal = mirror.signal();
        assert!(!signal.is_raised() && !readable(&signal));
        // And in order: raised, then lowered.
        mirror.set(true, &mut pending);
        for signal in std::mem::take(&mut pending) {
            signal.publish();
        }
        assert!(signal.is_raised() && readable(&signal));
        mirror.set(false, &mut pending);
        for signal in std::mem::take(&mut pending) {
            signal.publish();
        }
        assert!(!signal.is_raised() && !readable(&signal));
    }

    /// Eventfds go back to the spares at their level, changes noted for
    /// them dropped (an accept that found the queue empty costs no system
    /// call); a new object takes one at the level it starts at if there is
    /// one, and then notes no change.
    #[test]
    fn spares_keep_their_level_and_are_taken_at_the_level_wanted() {
        let mut spares = Spares::default();
        let mut pending = Vec::new();
        let mut up = Mirror::new(&mut spares, false, &mut pending).unwrap();
        let down = Mirror::new(&mut spares, false, &mut pending).unwrap();
        up.set(true, &mut pending);
        for signal in std::mem::take(&mut pending) {
            signal.publish();
        }
        spares.give(up.into_signal());
        spares.give(down.into_signal());
        // An accept that found the queue empty: both taken as for an
        // accepted flow (raised), given back.
        let a = Mirror::new(&mut spares, true, &mut pending).unwrap();
        assert!(pending.is_empty(), "the raised spare first: no change");
        let b = Mirror::new(&mut spares, true, &mut pending).unwrap();
        assert_eq!(pending.len(), 1, "the lowered one, to raise");
        let (a, b) = (a.into_signal(), b.into_signal());
        spares.give(Arc::clone(&a));
        spares.give(Arc::clone(&b));
        for signal in std::mem::take(&mut pending) {
            signal.publish();
        }
        assert!(a.is_raised() && readable(&a), "left raised");
        assert!(!b.is_raised() && !readable(&b), "left lowered");
        drop((a, b));
        let raised = Mirror::new(&mut spares, true, &mut pending).unwrap();
        assert!(pending.is_empty(), "a raised spare for a raised start");
        assert!(raised.signal().is_raised());
        let lowered = Mirror::new(&mut spares, false, &mut pending).unwrap();
        assert!(pending.is_empty(), "a lowered spare for a lowered start");
        assert!(!lowered.signal().is_raised());
    }

    /// A lazy mirror costs no descriptor until asked for one, which then
    /// shows the level it has; raises and lowerings after reach it as
    /// any. Spares keep only signals with an eventfd.
    #[test]
    fn a_lazy_mirror_s_eventfd_is_made_at_its_level() {
        let mut pending = Vec::new();
        let mut mirror = Mirror::lazy(false, &mut pending);
        mirror.set(true, &mut pending);
        for signal in std::mem::take(&mut pending) {
            signal.publish();
        }
        let signal = mirror.signal();
        assert!(
            signal.fd.get().is_none(),
            "no eventfd before it is asked for"
        );
        assert!(signal.is_raised() && readable(&signal), "made raised");
        mirror.set(false, &mut pending);
        for signal in std::mem::take(&mut pending) {
            signal.publish();
        }
        assert!(!signal.is_raised() && !readable(&signal), "then lowered");
        let mut spares = Spares::default();
        spares.give(Mirror::lazy(true, &mut pending).into_signal());
        assert!(spares.0.is_empty(), "a spare without an eventfd was kept");
        spares.give(mirror.into_signal());
        assert_eq!(spares.0.len(), 1);
    }
}
