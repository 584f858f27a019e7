//! Who watches the socket: among the application threads waiting inside
//! the engine, one poller (leader/follower), and the driver thread for the
//! gaps when no application thread is inside.
//!
//! **The poller role.** At most one waiting application thread, the poller,
//! watches the UDP socket and the host's deadline (and its own object's
//! eventfd): it sleeps until the deadline published as the lock was last
//! let go (`ppoll`'s timeout), and on the timerfd, which a release arms
//! only when it moves the deadline before the one the poller sleeps until
//! (`deadline.rs`);
//! the others, followers, wait on their own object's eventfd and their
//! thread's wake-up eventfd only, so that a datagram wakes one thread,
//! not every thread blocked in the engine. The poller keeps the role from
//! its first wait to the end of its call; leaving, it hands the role to a
//! follower (raising that thread's wake-up eventfd), or to nobody if none
//! waits: then the next thread to wait takes it, and meanwhile the driver
//! thread covers.
//!
//! **The driver thread** watches the socket and the timer only once no
//! application thread has been inside for a grace period ([`GRACE`]), so
//! that a request/response loop that leaves the engine between its calls
//! costs it one wake-up per grace period, not one per call: the thread
//! leaving last does not signal it unless it sleeps without a timeout
//! (parked: a thread stayed inside for a whole grace period), and a thread
//! coming back never does. While a thread waits inside for long, it stays
//! parked and costs nothing.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::time::TimeSpec;

use crate::deadline::Deadlines;
use crate::descriptors::Counter;
use crate::mirror::Signal;
use crate::runtime::Inner;
use crate::spin::Spun;
use crate::waker::{self, Waker};
use crate::Error;

/// How long the engine must have been empty before the driver thread
/// watches the socket: the longest a peer's packet waits for a host whose
/// threads are all busy outside the engine (besides the host's own
/// delayed-ACK timer, 1 ms).
pub(crate) const GRACE: Duration = Duration::from_millis(2);

/// Who holds the poller role and who waits without it.
#[derive(Debug, Default)]
struct Roles {
    /// The poller's thread number.
    poller: Option<u64>,
    /// The object the poller waits for (its signal's address).
    poller_own: usize,
    /// Threads waiting inside without the role.
    followers: Vec<Follower>,
}

/// A thread waiting inside without the poller role.
#[derive(Debug)]
struct Follower {
    id: u64,
    waker: Arc<Signal>,
    /// The object it waits for (its signal's address).
    own: usize,
    /// It watches its object's eventfd; otherwise another thread waiting
    /// for the same object does (the poller or a follower), and this one
    /// sleeps on its wake-up eventfd only until that one leaves: threads
    /// blocked in accept on one listener are woken one at a time.
    watching: bool,
}

/// What a waiting thread watches (see [`Inside::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The socket, the timer and its object.
    Poller,
    /// Its object and its wake-up eventfd.
    Watcher,
    /// Its wake-up eventfd only.
    Queued,
}

/// State shared by the runtime and its driver thread (which must not keep
/// the runtime alive).
#[derive(Debug)]
pub(crate) struct Gate {
    /// Threads inside the engine's calls (from their first wait).
    inside: AtomicUsize,
    /// Times a thread came inside (the driver thread's grace period ends
    /// early if this moved).
    entries: AtomicU64,
    /// The fewest threads inside since the driver thread's grace period
    /// began: above 0 at its end, a thread stayed inside throughout.
    floor: AtomicUsize,
    /// The driver thread sleeps without a timeout until the last thread
    /// inside leaves (who then clears this and signals it).
    parked: AtomicBool,
    /// The driver thread's private eventfd.
    wake: Counter,
    /// The runtime is gone: the driver thread ends.
    stop: AtomicBool,
    /// Times the driver thread woke up.
    wakeups: AtomicU64,
    /// Times it drove the host.
    turns: AtomicU64,
    roles: Mutex<Roles>,
    /// The poller's thread number (0: none), readable without the lock.
    poller: AtomicU64,
    /// Times an application thread woke up in an engine's wait.
    waits: AtomicU64,
    /// Times the poller role went to a waiting thread.
    handoffs: AtomicU64,
    /// Waits that spun.
    spins: AtomicU64,
    /// Waits whose spin caught what they waited for.
    caught: AtomicU64,
}

impl Gate {
    pub(crate) fn new() -> Result<Arc<Gate>, Error> {
        Ok(Arc::new(Gate {
            inside: AtomicUsize::new(0),
            entries: AtomicU64::new(0),
            floor: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            wake: Counter::new()?,
            stop: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            roles: Mutex::new(Roles::default()),
            poller: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            spins: AtomicU64::new(0),
            caught: AtomicU64::new(0),
        }))
    }

    /// One more thread inside: the driver thread leaves the socket alone.
    pub(crate) fn enter(self: &Arc<Gate>) -> Inside {
        self.inside.fetch_add(1, Ordering::SeqCst);
        self.entries.fetch_add(1, Ordering::Relaxed);
        Inside {
            gate: Arc::clone(self),
            waker: None,
            own: 0,
        }
    }

    /// Wakes the driver thread.
    fn signal(&self) {
        let _ = self.wake.add();
    }

    /// Ends the driver thread.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.signal();
    }

    /// The driver thread's wake-ups and turns so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.wakeups.load(Ordering::Relaxed),
            self.turns.load(Ordering::Relaxed),
        )
    }

    /// The application threads' wake-ups in the engine's waits, the
    /// poller role's hand-overs, and the waits that spun and that a spin
    /// ended, so far.
    pub(crate) fn wait_counts(&self) -> (u64, u64, u64, u64) {
        (
            self.waits.load(Ordering::Relaxed),
            self.handoffs.load(Ordering::Relaxed),
            self.spins.load(Ordering::Relaxed),
            self.caught.load(Ordering::Relaxed),
        )
    }

    /// Counts a wait's spin.
    pub(crate) fn spun(&self, spun: Spun) {
        if spun != Spun::Not {
            self.spins.fetch_add(1, Ordering::Relaxed);
        }
        if spun == Spun::Caught {
            self.caught.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an application thread's wake-up.
    pub(crate) fn woke(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Threads inside now.
    pub(crate) fn inside(&self) -> usize {
        self.inside.load(Ordering::SeqCst)
    }

    /// Whether an application thread holds the poller role now (it reads
    /// what arrives: a caller outside the engine may leave the socket to it).
    pub(crate) fn polled(&self) -> bool {
        self.poller.load(Ordering::Acquire) != 0
    }

    fn roles(&self) -> MutexGuard<'_, Roles> {
        self.roles.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A thread's presence inside the engine: while it lives, the driver thread
/// leaves the socket to the application's threads. Dropping it hands the
/// poller role on, if this thread holds it.
#[derive(Debug)]
pub(crate) struct Inside {
    gate: Arc<Gate>,
    /// This thread's waker, once it waited (and so may hold a role).
    waker: Option<Waker>,
    /// The object it waits for (its signal's address), once it waited.
    own: usize,
}

impl Inside {
    /// Before a wait for the object whose readiness is `own`: what this
    /// thread watches now. The poller role if nobody holds it (or it was
    /// handed to this thread); otherwise its object, unless another thread
    /// watches that already; otherwise only its wake-up eventfd
    /// ([`Inside::wake_signal`]). A thread without a wake-up eventfd always
    /// watches everything.
    pub(crate) fn claim(&mut self, own: &Signal) -> Role {
        if self.waker.is_none() {
            self.waker = waker::current();
        }
        let Some(waker) = &self.waker else {
            return Role::Poller;
        };
        let own = own as *const Signal as usize;
        self.own = own;
        let mut roles = self.gate.roles();
        match roles.poller {
            Some(id) if id == waker.id => Role::Poller,
            None => {
                roles.poller = Some(waker.id);
                roles.poller_own = own;
                roles.followers.retain(|f| f.id != waker.id);
                self.gate.poller.store(waker.id, Ordering::Release);
                Role::Poller
            }
            Some(_) => {
                let watched = roles.poller_own == own
                    || (roles.followers.iter())
                        .any(|f| f.id != waker.id && f.own == own && f.watching);
                let i = match roles.followers.iter().position(|f| f.id == waker.id) {
                    Some(i) => i,
                    None => {
                        roles.followers.push(Follower {
                            id: waker.id,
                            waker: Arc::clone(&waker.signal),
                            own,
                            watching: false,
                        });
                        roles.followers.len() - 1
                    }
                };
                let me = &mut roles.followers[i];
                me.watching |= !watched;
                if me.watching {
                    Role::Watcher
                } else {
                    Role::Queued
                }
            }
        }
    }

    /// This thread's wake-up eventfd (after a [`Inside::claim`]).
    pub(crate) fn wake_signal(&self) -> Option<&Signal> {
        self.waker.as_ref().map(|waker| &*waker.signal)
    }

    /// The gate, to count wake-ups.
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Some(waker) = &self.waker {
            let mut wake: [Option<Arc<Signal>>; 2] = [None, None];
            let mut roles = self.gate.roles();
            let was_poller = roles.poller == Some(waker.id);
            let mut watched = was_poller;
            if let Some(i) = roles.followers.iter().position(|f| f.id == waker.id) {
                watched |= roles.followers.swap_remove(i).watching;
            }
            // The watch of this thread's object goes to the next thread
            // queued for it, if any.
            let mut next = None;
            if watched {
                let own = self.own;
                if let Some(i) = (roles.followers.iter()).position(|f| f.own == own && !f.watching)
                {
                    roles.followers[i].watching = true;
                    wake[0] = Some(Arc::clone(&roles.followers[i].waker));
                    next = Some(i);
                }
            }
            if was_poller {
                // The role goes to a follower (the one just woken, if
                // any), which watches the socket at its wake-up (or, if its
                // call ends first, hands it on).
                let heir = next.or_else(|| roles.followers.len().checked_sub(1));
                let heir = heir.map(|i| roles.followers.swap_remove(i));
                roles.poller = heir.as_ref().map(|f| f.id);
                roles.poller_own = heir.as_ref().map_or(0, |f| f.own);
                self.gate
                    .poller
                    .store(roles.poller.unwrap_or(0), Ordering::Release);
                if let Some(heir) = heir {
                    self.gate.handoffs.fetch_add(1, Ordering::Relaxed);
                    if next.is_none() {
                        wake[1] = Some(heir.waker);
                    }
                }
            }
            drop(roles);
            for signal in wake.into_iter().flatten() {
                signal.raise();
            }
        }
        let left = self.gate.inside.fetch_sub(1, Ordering::SeqCst) - 1;
        self.gate.floor.fetch_min(left, Ordering::SeqCst);
        if left == 0 && self.gate.parked.swap(false, Ordering::SeqCst) {
            // The last one leaves while the driver thread sleeps for good.
            self.gate.signal();
        }
    }
}

/// The driver thread's loop. A grace period's sleep; then, if threads came
/// and went during it and one is inside, another grace period; if a thread
/// stayed inside throughout, sleep until the last one leaves; if one came
/// and went but none is inside, another grace period; otherwise watch the UDP socket,
/// the host's deadline (`ppoll`'s timeout, and the timerfd, armed if a
/// release moves the deadline before the one it sleeps until: see
/// `deadline.rs`) and the private eventfd, and drive on input or at the
/// deadline, for as long as nobody comes in. `udp` and `timer` are its own
/// duplicates of the runtime's descriptors.
pub(crate) fn drive_while_away(
    gate: Arc<Gate>,
    runtime: Weak<Inner>,
    deadlines: Arc<Deadlines>,
    udp: OwnedFd,
    timer: OwnedFd,
) {
    let grace = TimeSpec::from_duration(GRACE);
    loop {
        if gate.stop.load(Ordering::Acquire) {
            return;
        }
        // Cleared before the counts are read: a signal after this stays.
        let _ = gate.wake.take();
        let seen = gate.entries.load(Ordering::Relaxed);
        gate.floor.store(gate.inside(), Ordering::SeqCst);
        let mut fds = [PollFd::new(gate.wake.as_fd(), PollFlags::POLLIN)];
        if !sleep(&gate, &mut fds, Some(grace)) {
            return;
        }
        if gate.stop.load(Ordering::Acquire) {
            return;
        }
        if gate.inside() > 0 && gate.floor.load(Ordering::SeqCst) == 0 {
            // Threads come and go (a request/response loop): another grace
            // period, without asking the thread leaving last to signal.
            continue;
        }
        if gate.inside() > 0 {
            // A thread stayed inside all along: sleep until the last one
            // leaves. Parked before the second look: the thread leaving last after
            // it finds the flag and signals.
            gate.parked.store(true, Ordering::SeqCst);
            if gate.inside() > 0 {
                let mut fds = [PollFd::new(gate.wake.as_fd(), PollFlags::POLLIN)];
                if !sleep(&gate, &mut fds, None) {
                    return;
                }
            }
            gate.parked.store(false, Ordering::SeqCst);
            continue;
        }
        if gate.entries.load(Ordering::Relaxed) != seen {
            continue;
        }
        // Empty for a whole grace period: watch until a thread comes in.
        while gate.inside() == 0 {
            let fds: [BorrowedFd<'_>; 3] = [udp.as_fd(), timer.as_fd(), gate.wake.as_fd()];
            let mut polled = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
            let sleeper = deadlines.sleep();
            if !sleep(&gate, &mut polled, sleeper.timeout(None))
                || gate.stop.load(Ordering::Acquire)
            {
                return;
            }
            let due = sleeper.due();
            drop(sleeper);
            if polled[2].revents().is_some_and(|r| !r.is_empty()) {
                // A late signal of a thread that left while this one was
                // parking: cleared, or every sleep here returns at once.
                let _ = gate.wake.take();
            }
            let input =
                due || (polled[..2].iter()).any(|fd| fd.revents().is_some_and(|r| !r.is_empty()));
            // A thread that came in meanwhile drives for itself (as the
            // poller, it sleeps until the deadline published now).
            if !input || gate.inside() > 0 {
                continue;
            }
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            gate.turns.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = runtime.drive() {
                tracing::warn!(%error, "driver thread: driving the host failed");
            }
        }
    }
}

/// `ppoll`, counted as a wake-up; EINTR is a wake-up like any other. False
/// (and a warning) if it failed: the driver thread stops.
fn sleep(gate: &Gate, fds: &mut [PollFd<'_>], timeout: Option<TimeSpec>) -> bool {
    let result = match ppoll(fds, timeout, None) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(errno) => Err(Error::from(errno)),
    };
    gate.wakeups.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "driver thread: ppoll failed; it stops");
            false
        }
    }
}
