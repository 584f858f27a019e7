//! The engine's lock: a mutex around the [`Core`] whose release publishes
//! the host's next deadline ([`Core::settle`]) and wakes the threads that
//! found it taken. Every locked section ends in [`Held`]'s drop, whatever
//! it did and however it ended: the one place where the host's deadline is
//! published, so that no path that changes the host's timers can leave a
//! sleeper sleeping past them.
//!
//! A locked section's datagrams go out after the lock is let go, on the
//! releasing thread ([`Outbox`], one per thread): over a veth pair or
//! loopback, `sendmmsg` runs the receiver's side of each packet in the
//! sender's context, and wakes the receiving thread, which may then run
//! before the sender; holding the lock through that made the engine's
//! threads sleep on it. Two holders in a row may thus send in the other
//! order; only when both sent packets of one flow does a peer see them
//! out of order, as any network may show them, and TCP and the SAL take
//! that in their stride (the earlier try of stop 39 kept the order with
//! a second lock, whose waits cost more than the send: `docs/in-process-sal.md`).
//!
//! A thread that wakes up for input and finds the lock taken sleeps on its
//! own object's eventfd and on a per-thread eventfd that the holder raises
//! when it lets go; it then takes the lock and reads the socket itself
//! (the holder reads it only when it saw input too), and goes back to
//! watching it. It never blocks on the mutex
//! itself from a wait, which a signal handler that interrupted the holder
//! could not afford (`docs/in-process-sal.md`, "Risks"). Nor does a call
//! from such a handler on the holder's own thread ([`EngineLock::held_here`]): it ends
//! at once with [`Error::WouldBlock`], and a close there is left to the
//! section's release ([`EngineLock::defer`]).

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};
use nix::sys::time::TimeSpec;

use sal::table::ListenerId;

use crate::core::{Core, Key};
use crate::mirror::Signal;
use crate::udp::{Outbox, Unreachable, BATCH};
use crate::{interrupt, waker, Error};

thread_local! {
    /// The datagrams this thread's locked section left, sent once it let
    /// the lock go (taken out of the cell meanwhile).
    static OUTBOX: Cell<Outbox> = Cell::new(Outbox::default());
    /// The engine lock this thread holds, by address (0: none; see
    /// [`EngineLock::held_here`]).
    static HOLDING: Cell<usize> = const { Cell::new(0) };
}

/// Deferred closes kept without allocating (a handler must not): room
/// for this many at a time.
const DEFERRED_ROOM: usize = 16;

/// Clears [`HOLDING`] when dropped: in `Held`'s drop, so that a panic in
/// the release cannot leave the thread marked as holding a lock it let
/// go (every later call of the thread would end with `WouldBlock`).
struct Unhold;

impl Drop for Unhold {
    fn drop(&mut self) {
        let _ = HOLDING.try_with(|holding| holding.set(0));
    }
}

/// A close that a signal handler asked for while its thread held the
/// lock ([`EngineLock::held_here`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closing {
    Stream(Key),
    Listener(ListenerId),
}

/// Locked sections at most that hand the host what the sends after a
/// release read (each may send, and read, more).
const REPORT_ROUNDS: usize = 3;

/// The core behind its mutex, and the threads waiting for its release.
pub(crate) struct EngineLock {
    core: Mutex<Core>,
    /// Threads registered in `waiting` (read without the list's lock at
    /// every release: the uncontended path costs one atomic load).
    losers: AtomicUsize,
    waiting: Mutex<Vec<Arc<Signal>>>,
    /// A duplicate of the core's UDP socket, to send on without the lock.
    send: OwnedFd,
    parked: Arc<Parked>,
    /// Closes left for the next release ([`EngineLock::defer`]).
    deferred: Mutex<Vec<Closing>>,
    any_deferred: AtomicBool,
}

/// Reports that sends after a release read and no locked section took
/// in yet (see [`Held`]'s drop); shared with the core, whose every turn
/// takes them ([`Core::before`]).
#[derive(Debug, Default)]
pub(crate) struct Parked {
    any: AtomicBool,
    reports: Mutex<Vec<Unreachable>>,
}

impl Parked {
    /// Keeps `reports` (at most a batch waiting).
    fn park(&self, reports: Vec<Unreachable>) {
        let mut kept = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        let room = BATCH.saturating_sub(kept.len());
        kept.extend(reports.into_iter().take(room));
        self.any.store(true, Ordering::Release);
    }

    /// Whether any wait.
    fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The reports waiting (none, and no lock taken, most of the time).
    pub(crate) fn take(&self) -> Vec<Unreachable> {
        if !self.any.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.reports.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The core, held; letting go publishes the host's deadline and wakes the
/// threads that waited for it.
pub(crate) struct Held<'a> {
    guard: Option<MutexGuard<'a, Core>>,
    lock: &'a EngineLock,
}

impl EngineLock {
    pub(crate) fn new(core: Core) -> Result<EngineLock, Error> {
        let send = crate::descriptors::copy(core.wait_fds()[0])?;
        let parked = core.parked();
        Ok(EngineLock {
            parked,
            core: Mutex::new(core),
            losers: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
            send,
            deferred: Mutex::new(Vec::with_capacity(DEFERRED_ROOM)),
            any_deferred: AtomicBool::new(false),
        })
    }

    /// Whether the calling thread holds this lock now. Only a signal
    /// handler that interrupted one of its locked sections calls in then
    /// (`write` is async-signal-safe), and waiting for the lock would
    /// wait for good: the section goes on only once the handler returns.
    /// So such a call ends at once with [`Error::WouldBlock`]
    /// (`Runtime::call`, `Runtime::drive`), and a close is made as the
    /// section lets the lock go ([`EngineLock::defer`]).
    pub(crate) fn held_here(&self) -> bool {
        HOLDING.try_with(Cell::get).unwrap_or(0) == self as *const EngineLock as usize
    }

    /// Leaves `closing` to the release of the locked section this thread
    /// holds (see [`EngineLock::held_here`]). Allocates nothing while
    /// fewer than [`DEFERRED_ROOM`] wait. Lost only if the handler
    /// interrupted that very release taking the list (a handler must
    /// not allocate, so it is not logged): the flow then stays open until
    /// its peer gives up on it.
    pub(crate) fn defer(&self, closing: Closing) {
        match self.deferred.try_lock() {
            Ok(mut list) => list.push(closing),
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().push(closing),
            Err(TryLockError::WouldBlock) => return,
        }
        self.any_deferred.store(true, Ordering::Release);
    }

    /// Makes the closes left for this release, in a turn of the host of
    /// their own, so that their FINs and resets go out with this
    /// release's datagrams (none, and no lock taken, most of the time;
    /// nothing while a panic unwinds, when the host is not run).
    fn close_deferred(&self, core: &mut Core) {
        if std::thread::panicking() || !self.any_deferred.swap(false, Ordering::AcqRel) {
            return;
        }
        let closes = std::mem::replace(
            &mut *self.deferred.lock().unwrap_or_else(PoisonError::into_inner),
            Vec::with_capacity(DEFERRED_ROOM),
        );
        if let Err(error) = core.before(false) {
            tracing::warn!(%error, "a turn for closes from a signal handler");
        }
        for closing in closes {
            match closing {
                Closing::Stream(key) => core.close_stream(key),
                Closing::Listener(id) => core.close_listener(id),
            }
        }
        if let Err(error) = core.after() {
            tracing::warn!(%error, "sending closes from a signal handler");
        }
    }

    /// The reports parked for the core (the core's own handle).
    fn parked(&self) -> &Parked {
        &self.parked
    }

    /// The socket it sends on after a release (see [`Runtime::descriptors`](crate::Runtime::descriptors)).
    pub(crate) fn send_fd(&self) -> RawFd {
        self.send.as_raw_fd()
    }

    fn held<'a>(&'a self, guard: MutexGuard<'a, Core>) -> Held<'a> {
        let _ = HOLDING.try_with(|holding| holding.set(self as *const EngineLock as usize));
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
                    PollFd::new(me.fd()?, PollFlags::POLLIN),
                ];
                let mask = interrupt::sleep_mask();
                let polled = interrupt::sleep(&mut fds, timeout);
                if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                    me.lower();
                }
                match polled {
                    // See `interrupt`: the call ends.
                    Err(Errno::EINTR) if mask.is_some() => Err(Error::Interrupted),
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

impl EngineLock {
    /// Lets the core go: the deadline this section left is published,
    /// the readiness changes it noted reach the eventfds, the threads
    /// that waited for the release are woken, and its datagrams are sent.
    /// Returns the datagrams that came back as port unreachable, which
    /// the kernel reported on those sends.
    fn release(&self, mut core: MutexGuard<'_, Core>) -> Vec<Unreachable> {
        // What a signal handler could not close during the section.
        self.close_deferred(&mut core);
        // Under the lock, before anything else: the deadline this section
        // left is published (and the timerfd armed if a sleeper needs it)
        // before another holder can change it.
        core.settle();
        let pending = core.take_pending();
        // None: the thread is exiting (its outbox is gone), and sends
        // under the lock.
        let mut outbox = OUTBOX.try_with(Cell::take).ok();
        match outbox.as_mut() {
            Some(outbox) => core.take_outgoing(outbox),
            None => core.send_queued(),
        }
        // The readiness changes of this locked section reach the
        // eventfds, each in order with every other holder's (one
        // publication of an eventfd at a time, each applying the level
        // wanted last: `Signal::publish`): the lowerings before the core
        // is let go (a thread that takes it next and finds nothing to do
        // must not find its eventfd still up, and spin), the raisings
        // after (a thread they wake finds the core free), once the
        // datagrams are out (which their peers wait for). No lock across
        // objects: a holder letting go while another publishes does not
        // wait for it.
        for signal in pending.iter().filter(|signal| !signal.wanted()) {
            signal.publish();
        }
        drop(core);
        let _ = HOLDING.try_with(|holding| holding.set(0));
        // Those that lost the lock to this section may have it now,
        // while this thread sends.
        fence(Ordering::SeqCst);
        if self.losers.load(Ordering::SeqCst) > 0 {
            for waiter in self.list().drain(..) {
                waiter.raise();
            }
        }
        let unreachable = match outbox {
            Some(mut outbox) => {
                let unreachable = outbox.send(self.send.as_fd());
                let _ = OUTBOX.try_with(|cell| cell.set(outbox));
                unreachable
            }
            None => Vec::new(),
        };
        for signal in pending {
            signal.publish();
        }
        unreachable
    }
}

/// Set while a thread hands the host what its sends read
/// ([`Held`]'s drop): the sections it runs for that park what theirs
/// read, for its loop, rather than nest.
struct Absorbing;

thread_local! {
    static ABSORBING: Cell<bool> = const { Cell::new(false) };
}

impl Absorbing {
    /// Marks the thread, unless it is marked already (or exiting).
    fn begin() -> Option<Absorbing> {
        match ABSORBING.try_with(|absorbing| absorbing.replace(true)) {
            Ok(false) => Some(Absorbing),
            _ => None,
        }
    }
}

impl Drop for Absorbing {
    fn drop(&mut self) {
        let _ = ABSORBING.try_with(|absorbing| absorbing.set(false));
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let Some(core) = self.guard.take() else {
            return;
        };
        let unhold = Unhold;
        let unreachable = self.lock.release(core);
        drop(unhold);
        if self.lock.any_deferred.load(Ordering::Acquire) && !std::thread::panicking() {
            // A handler deferred a close during the release, after its
            // closes were made: a section of its own makes it, if the
            // core is free (else its holder's release does).
            drop(self.lock.try_lock());
        }
        if unreachable.is_empty() {
            return;
        }
        // A send after the release read that an earlier datagram came
        // back (a SYN to a program gone): the host hears of it now, not
        // at the SYN's retransmission. Parked, then taken in by this
        // thread if the core is free, else by its holder's next turn
        // (`Core::before`): a release never blocks on the mutex (see
        // "Risks" in `docs/in-process-sal.md`). Not while a panic unwinds
        // (the host is not run again then; the next turn takes them).
        let parked = self.lock.parked();
        parked.park(unreachable);
        if std::thread::panicking() {
            return;
        }
        let Some(_absorbing) = Absorbing::begin() else {
            return;
        };
        for _ in 0..REPORT_ROUNDS {
            if !parked.any() {
                break;
            }
            let Some(mut core) = self.lock.try_lock() else {
                break;
            };
            // Its release parks what its own sends read, for the next round.
            core.take_parked();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    /// Reports parked for the core are taken once, whole, and at most a
    /// batch of them waits (a flood of ICMP errors costs bounded memory).
    #[test]
    fn parked_reports_are_taken_once_and_bounded() {
        let parked = Parked::default();
        assert!(!parked.any() && parked.take().is_empty());
        let report = |port| (SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), vec![0x40]);
        parked.park(vec![report(1), report(2)]);
        assert!(parked.any());
        assert_eq!(parked.take(), [report(1), report(2)]);
        assert!(!parked.any() && parked.take().is_empty(), "taken once");
        parked.park((0..2 * BATCH as u16).map(report).collect());
        parked.park(vec![report(9999)]);
        let taken = parked.take();
        assert_eq!(taken.len(), BATCH);
        assert_eq!(taken[0], report(0), "the first kept");
    }
}
