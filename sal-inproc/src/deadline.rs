//! The host's next deadline, published for the threads that sleep until
//! it: they use the time left as `ppoll`'s timeout instead of a timerfd
//! re-armed after every call.
//!
//! **Publication.** Every release of the engine's lock passes through one
//! place (`Held`'s drop, `lock.rs`), which publishes the host's
//! `poll_timeout` here ([`Deadlines::publish`]) before letting the core
//! go: whatever the locked section did to the host's timers (a call, a
//! turn of the driver thread, a stream's or a listener's close, an error
//! path, a panic), the deadline published is the host's own.
//!
//! **Sleepers.** A thread about to sleep until the host's deadline (the
//! poller, the driver thread while it watches) takes a slot
//! ([`Deadlines::sleep`]): it records there the deadline it read, reads the
//! published one again, and records again until the two agree; then it
//! sleeps for the time left (and on the timerfd). The release that
//! publishes a deadline earlier than a recorded one ([`Deadlines::publish`]
//! says so) arms the timerfd at it, which wakes the sleeper. Recording and
//! publishing are sequentially consistent: of a release that publishes
//! after a sleeper's first read and the sleeper's second read, either the
//! read sees the new deadline or the release sees the slot. A deadline
//! that moved later only wakes its sleeper early (one turn for nothing).
//!
//! **Lent descriptors.** Once [`Runtime::wait_fds`](crate::Runtime::wait_fds)
//! handed the timerfd to a caller that waits on it itself (a `poll`
//! interposer), every release arms it at each new deadline, as it did
//! before this board existed ([`Deadlines::lend`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::time::TimeSpec;

use crate::clock::Clock;

/// A slot nobody sleeps in.
const FREE: u64 = 0;
/// No deadline: the host has no timer running.
const NEVER: u64 = u64::MAX;
/// Sleepers recorded at once: the poller and the driver thread, and room
/// for a thread without a wake-up eventfd (which always polls, see
/// `gate.rs`).
const SLOTS: usize = 4;
/// The longest a sleeper that found no free slot sleeps before it turns
/// the host (no release arms the timerfd for it).
const UNRECORDED: Duration = Duration::from_millis(1);

/// A deadline in the slots' encoding: microseconds of host time plus one
/// (0 is [`FREE`]), [`NEVER`] for none.
fn encode(at: Option<sal::time::Instant>) -> u64 {
    match at {
        Some(at) => u64::try_from(at.total_micros())
            .unwrap_or(0)
            .saturating_add(1)
            .min(NEVER - 1),
        None => NEVER,
    }
}

/// The published deadline and the sleepers' recorded ones.
#[derive(Debug)]
pub(crate) struct Deadlines {
    clock: Clock,
    /// The host's deadline at the last release of the lock (encoded).
    next: AtomicU64,
    /// Each sleeper's recorded deadline (encoded), [`FREE`] if none.
    slots: [AtomicU64; SLOTS],
    /// The timerfd was lent out: every deadline is armed.
    lent: AtomicBool,
}

impl Deadlines {
    /// A board on the host's clock, its deadline `at` (the new host's).
    pub(crate) fn new(clock: Clock, at: Option<sal::time::Instant>) -> Deadlines {
        Deadlines {
            clock,
            next: AtomicU64::new(encode(at)),
            slots: std::array::from_fn(|_| AtomicU64::new(FREE)),
            lent: AtomicBool::new(false),
        }
    }

    /// Publishes the host's deadline `at` (under the lock, as it is let
    /// go). True if a sleeper recorded a later one (or none): it would
    /// sleep past `at`, and the timerfd must be armed to wake it.
    pub(crate) fn publish(&self, at: Option<sal::time::Instant>) -> bool {
        let at = encode(at);
        self.next.store(at, Ordering::SeqCst);
        self.slots.iter().any(|slot| {
            let until = slot.load(Ordering::SeqCst);
            until != FREE && at < until
        })
    }

    /// Marks the timerfd lent to a caller that waits on it: from now on,
    /// every deadline is armed. True the first time (the caller then lets
    /// a release arm the deadline of now).
    pub(crate) fn lend(&self) -> bool {
        !self.lent.swap(true, Ordering::SeqCst)
    }

    /// Whether the timerfd was lent out.
    pub(crate) fn lent(&self) -> bool {
        self.lent.load(Ordering::SeqCst)
    }

    /// Records a sleeper until the deadline published now (see the module
    /// docs): its slot is free again when the [`Sleeper`] goes.
    pub(crate) fn sleep(&self) -> Sleeper<'_> {
        let mut until = self.next.load(Ordering::SeqCst);
        let slot = (self.slots.iter()).find(|slot| {
            (slot.compare_exchange(FREE, until, Ordering::SeqCst, Ordering::SeqCst)).is_ok()
        });
        if let Some(slot) = slot {
            // Recorded, then read again: a release that published before
            // this read is seen here, one after it sees the slot.
            loop {
                let next = self.next.load(Ordering::SeqCst);
                if next == until {
                    break;
                }
                until = next;
                slot.store(until, Ordering::SeqCst);
            }
        }
        Sleeper {
            board: self,
            slot,
            until,
        }
    }
}

/// A thread recorded as sleeping until the host's deadline.
#[derive(Debug)]
pub(crate) struct Sleeper<'a> {
    board: &'a Deadlines,
    /// `None`: no free slot; it sleeps [`UNRECORDED`] at most.
    slot: Option<&'a AtomicU64>,
    until: u64,
}

impl Sleeper<'_> {
    /// `ppoll`'s timeout: the time left until the recorded deadline (none
    /// without one), or `cap` (the call's own deadline) if that is sooner.
    /// Sleeping that long, the host's clock has reached the deadline.
    pub(crate) fn timeout(&self, cap: Option<Duration>) -> Option<TimeSpec> {
        let host = match (self.slot, self.until) {
            (None, _) => Some(UNRECORDED),
            (Some(_), NEVER) => None,
            (Some(_), until) => Some(self.board.clock.until_micros(until - 1)),
        };
        let timeout = match (host, cap) {
            (Some(host), Some(cap)) => Some(host.min(cap)),
            (host, cap) => host.or(cap),
        };
        timeout.map(TimeSpec::from_duration)
    }

    /// Whether the host has timer work now: the recorded deadline passed
    /// (or, unrecorded, it may have).
    pub(crate) fn due(&self) -> bool {
        if self.slot.is_none() {
            return true;
        }
        self.until != NEVER && encode(Some(self.board.clock.now())) >= self.until
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.store(FREE, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: i64) -> Option<sal::time::Instant> {
        Some(sal::time::Instant::from_micros(us))
    }

    #[test]
    fn an_earlier_deadline_than_a_sleepers_asks_for_the_timer() {
        let board = Deadlines::new(Clock::new(), None);
        assert!(!board.publish(at(5_000)), "nobody sleeps");
        let sleeper = board.sleep();
        assert!(!board.publish(at(5_000)), "the same deadline");
        assert!(!board.publish(at(9_000)), "a later one: it wakes early");
        assert!(board.publish(at(1_000)), "an earlier one");
        drop(sleeper);
        assert!(!board.publish(at(500)), "the slot is free again");
        let sleeper = board.sleep();
        assert!(!board.publish(at(500)));
        assert!(!board.publish(None), "no deadline: nothing to wake for");
        drop(sleeper);
        board.publish(None);
        let forever = board.sleep();
        assert_eq!(forever.timeout(None), None, "no deadline, no timeout");
        assert!(!forever.due());
        assert!(board.publish(at(1_000_000)), "any deadline is earlier");
    }

    #[test]
    fn a_sleeper_sleeps_until_the_deadline_published_last() {
        let board = Deadlines::new(Clock::new(), at(0));
        let first = board.sleep();
        assert!(first.due(), "the host's time 0 has passed");
        assert_eq!(
            first.timeout(None),
            Some(TimeSpec::from_duration(Duration::ZERO))
        );
        drop(first);
        board.publish(at(3_600_000_000));
        let late = board.sleep();
        assert!(!late.due());
        let left = Duration::from(late.timeout(None).expect("a timeout"));
        assert!(left > Duration::from_secs(3_599), "{left:?}");
        let capped = Duration::from(late.timeout(Some(Duration::from_millis(3))).unwrap());
        assert_eq!(capped, Duration::from_millis(3));
    }

    #[test]
    fn a_sleeper_without_a_slot_polls() {
        let board = Deadlines::new(Clock::new(), None);
        let held: Vec<_> = (0..SLOTS).map(|_| board.sleep()).collect();
        let extra = board.sleep();
        assert!(extra.due(), "it may have missed a deadline");
        let timeout = Duration::from(extra.timeout(None).expect("bounded"));
        assert_eq!(timeout, UNRECORDED);
        drop(held);
    }
}
