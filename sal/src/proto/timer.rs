//! Per-flow deadlines in one queue.
//!
//! A host may hold a million flows, most of them quiet, so nothing
//! here ever looks at all of them: every deadline of every flow is one entry
//! of a queue ordered by time (below), and [`Host::poll`](super::Host::poll)
//! pops only the entries that are due. The work a timer costs is therefore
//! proportional to the flows whose deadline came, not to the number of flows.
//!
//! Deadlines move often (each packet heard pushes the liveness deadline
//! back), and removing an entry from the middle of a heap is expensive. So
//! entries are invalidated lazily: each flow remembers, per kind of timer,
//! the one deadline that counts ([`FlowTimers`]); an entry popped from the
//! queue that does not match it is stale and skipped. Arming a timer later
//! than it is armed already does nothing: it fires at the earlier time, and
//! its handler finds nothing due yet and arms it again for when something
//! will be. Packets thus never touch the heap; only due timers do.
//!
//! A flow that goes away leaves its entries behind, each until its
//! deadline: a keepalive 25 s ahead outlives a short connection by far,
//! and at thousands of connections a second such entries would be most of
//! the heap, every push and pop paying for their depth and cache misses.
//! So the queue counts the entries it knows to be stale (replaced by an
//! earlier deadline, or left by a flow that went away:
//! [`TimerQueue::forget`]) and drops them all in one pass once they are
//! more than half of it ([`TimerQueue::tidy`]): each pass costs what at
//! least as many entries cost to push, so the work per entry stays
//! constant.
//!
//! The queue is a heap only near its front. An entry due before the
//! current bucket's end (buckets of 65 ms, [`BUCKET_WIDTH`]) goes into a
//! small binary heap; one due later, within [`SPAN`] (about 67 s: linger,
//! keepalive and liveness deadlines all fit), into an unsorted bucket of a
//! wheel, at a constant cost; one due later still into a heap of its own.
//! As time passes, each bucket is moved into the small heap once its time
//! starts (its start is found in a bitmap); the earliest entry of a bucket
//! whose time has not come is found by a scan, kept until the wheel
//! changes. So a push costs the same whatever the number of flows, the
//! small heap holds about one bucket's entries, and entries leave in
//! exactly the order one heap would give (deadline, kind, flow), which the
//! deterministic simulations rely on.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smoltcp::time::Instant;

use crate::id::FlowId;

/// The kinds of deadline a flow has. At one instant, every flow's control
/// timer fires before any liveness timer, so that a retransmission due at
/// that instant is out before silence is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Timer {
    /// Retransmission of the flow's control messages in flight.
    Control,
    /// Silence of the peer: move the flow, or probe its idle path.
    Liveness,
    /// Silence of this end on a NAT path: send a keepalive.
    Keepalive,
    /// The deadline of the flow's TCP socket (retransmission, delayed ACK,
    /// TIME-WAIT, buffer trim...): the flow is driven then.
    Transport,
    /// The end of a closed flow's lingering (see `teardown.rs`).
    Linger,
    /// The end of a closed flow's wait for its peer to finish (see
    /// `teardown.rs`).
    Orphan,
    /// The path challenge to the address the peer's RSYN came from is
    /// repeated until it is answered (see `nat.rs`).
    Challenge,
}

impl Timer {
    const COUNT: usize = 7;

    fn index(self) -> usize {
        match self {
            Timer::Control => 0,
            Timer::Liveness => 1,
            Timer::Keepalive => 2,
            Timer::Transport => 3,
            Timer::Linger => 4,
            Timer::Orphan => 5,
            Timer::Challenge => 6,
        }
    }
}

/// The deadlines of one flow that count; queue entries that differ are stale.
#[derive(Debug, Clone, Default)]
pub(super) struct FlowTimers {
    armed: [Option<Instant>; Timer::COUNT],
}

impl FlowTimers {
    /// How many timers are armed (each has a live entry in the queue).
    fn armed(&self) -> usize {
        self.armed.iter().flatten().count()
    }

    /// When `timer` is armed to fire, if it is.
    #[cfg(test)]
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        self.armed[timer.index()]
    }

    /// Whether a queue entry for `timer` at `at` is the live one.
    pub fn is_live(&self, timer: Timer, at: Instant) -> bool {
        self.armed[timer.index()] == Some(at)
    }

    /// Disarms `timer`: whatever entry the queue holds for it is stale now.
    pub fn disarm(&mut self, timer: Timer) {
        self.armed[timer.index()] = None;
    }

    /// Disarms `timer` if the queue entry for it at `at` is the live one;
    /// returns whether it was (then the timer fires).
    pub fn fire(&mut self, timer: Timer, at: Instant) -> bool {
        let live = self.is_live(timer, at);
        if live {
            self.armed[timer.index()] = None;
        }
        live
    }
}

/// A due queue entry: which timer of which flow, and the deadline it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    pub at: Instant,
    pub flow: FlowId,
    pub timer: Timer,
}

/// One queue entry: deadline, kind, flow (ordered so).
type Entry = (Instant, Timer, FlowId);

/// Microseconds one wheel bucket covers (a power of two, about 65 ms).
const BUCKET_WIDTH: i64 = 1 << 16;
/// Buckets of the wheel (a multiple of 64: one bitmap word each).
const BUCKETS: usize = 1024;
/// Microseconds the wheel covers from the front heap's end (about 67 s).
const SPAN: i64 = BUCKET_WIDTH * BUCKETS as i64;

/// Every flow's deadlines, earliest first. See the module docs.
#[derive(Debug)]
pub(super) struct TimerQueue {
    /// Entries due before `boundary`, earliest first.
    front: BinaryHeap<Reverse<Entry>>,
    /// Entries due in `[boundary, boundary + SPAN)`, unsorted, in the
    /// bucket of their deadline ([`bucket`]); empty (no buckets) until the
    /// first such entry.
    wheel: Vec<Vec<Entry>>,
    /// Which buckets hold entries, a bit each.
    occupied: [u64; BUCKETS / 64],
    /// Entries in the wheel.
    in_wheel: usize,
    /// Entries due at `boundary + SPAN` or later, earliest first.
    beyond: BinaryHeap<Reverse<Entry>>,
    /// The earliest entry of the wheel, once looked for, until the wheel
    /// loses entries.
    wheel_first: Option<Entry>,
    /// Storage of buckets moved into the front heap, for the next buckets
    /// to fill: the wheel's memory follows the entries in it (not each
    /// bucket's own peak), and a steady state allocates nothing.
    spare: Vec<Vec<Entry>>,
    /// Where the front heap ends and the wheel starts, microseconds (a
    /// bucket's start, never before 0); it only moves forward: past each
    /// bucket moved into the front heap, and to the start of the bucket of
    /// the time last seen ([`TimerQueue::settle`]).
    boundary: i64,
    /// Entries known to be stale (a lower bound: a disarmed timer's entry
    /// is not counted).
    stale: usize,
}

impl Default for TimerQueue {
    fn default() -> TimerQueue {
        TimerQueue {
            front: BinaryHeap::new(),
            wheel: Vec::new(),
            occupied: [0; BUCKETS / 64],
            in_wheel: 0,
            beyond: BinaryHeap::new(),
            wheel_first: None,
            spare: Vec::new(),
            boundary: 0,
            stale: 0,
        }
    }
}

/// The wheel bucket of a deadline, in microseconds.
fn bucket(micros: i64) -> usize {
    // The remainder of a division by a power of two below 2^63: in range.
    (micros.div_euclid(BUCKET_WIDTH)).rem_euclid(BUCKETS as i64) as usize
}

fn due((at, timer, flow): Entry) -> Due {
    Due { at, flow, timer }
}

/// The queue is tidied only from this many entries on: below it, a pass
/// would cost more than the stale entries do.
const TIDY_MIN: usize = 4096;

impl TimerQueue {
    /// Arms `timer` of `flow` (whose timers are `timers`) to fire by `at`:
    /// unless it is armed for `at` or earlier already, it now fires at `at`.
    pub fn arm(&mut self, flow: FlowId, timers: &mut FlowTimers, timer: Timer, at: Instant) {
        let slot = &mut timers.armed[timer.index()];
        if slot.is_some_and(|armed| armed <= at) {
            return;
        }
        if slot.replace(at).is_some() {
            // The later entry is stale now.
            self.stale += 1;
        }
        self.push((at, timer, flow));
    }

    /// Puts an entry where its deadline belongs (see the module docs).
    fn push(&mut self, entry: Entry) {
        let micros = entry.0.total_micros();
        if micros < self.boundary {
            self.front.push(Reverse(entry));
        } else if micros - self.boundary < SPAN {
            if self.wheel.is_empty() {
                self.wheel = (0..BUCKETS).map(|_| Vec::new()).collect();
            }
            let index = bucket(micros);
            let entries = &mut self.wheel[index];
            if entries.capacity() == 0 {
                *entries = self.spare.pop().unwrap_or_default();
            }
            entries.push(entry);
            self.occupied[index / 64] |= 1 << (index % 64);
            self.in_wheel += 1;
            if self.wheel_first.is_some_and(|first| entry < first) {
                self.wheel_first = Some(entry);
            }
        } else {
            self.beyond.push(Reverse(entry));
        }
    }

    /// Entries in the queue, stale ones included.
    fn entries(&self) -> usize {
        self.front.len() + self.in_wheel + self.beyond.len()
    }

    /// Brings the queue to `now` (microseconds): every bucket whose time
    /// has started moves into the front heap (so every entry due by `now`
    /// is there), the boundary follows `now` over the empty buckets before
    /// its own, and the wheel's span reaches the entries beyond it.
    fn settle(&mut self, now: i64) {
        self.move_started(now);
        // Every bucket before `now`'s is empty.
        let now_start = now - now.rem_euclid(BUCKET_WIDTH);
        self.boundary = self.boundary.max(now_start);
        // The span may reach further now, to entries due in `now`'s own
        // bucket (whose time has started): they go on to the front heap,
        // and the span reaches further again (never to a bucket started).
        if self.reach_beyond() {
            self.move_started(now);
            self.reach_beyond();
        }
    }

    /// Moves every occupied bucket whose time has started by `now` into
    /// the front heap, the boundary past each.
    fn move_started(&mut self, now: i64) {
        while self.in_wheel > 0 {
            let start = bucket(self.boundary);
            let Some(index) = self.next_occupied(start) else {
                break;
            };
            let skipped = (index + BUCKETS - start) % BUCKETS;
            let bucket_start = self.boundary + skipped as i64 * BUCKET_WIDTH;
            if bucket_start > now {
                break;
            }
            self.boundary = bucket_start.saturating_add(BUCKET_WIDTH);
            self.occupied[index / 64] &= !(1 << (index % 64));
            let mut entries = std::mem::take(&mut self.wheel[index]);
            self.in_wheel -= entries.len();
            self.wheel_first = None;
            self.front.extend(entries.drain(..).map(Reverse));
            self.spare.push(entries);
        }
    }

    /// The earliest entry, wherever it is (the wheel's found by a scan of
    /// its first occupied bucket, kept until the wheel changes).
    fn earliest(&mut self) -> Option<Entry> {
        if let Some(&Reverse(entry)) = self.front.peek() {
            return Some(entry);
        }
        if self.in_wheel > 0 {
            if self.wheel_first.is_none() {
                let index = self.next_occupied(bucket(self.boundary))?;
                self.wheel_first = self.wheel[index].iter().min().copied();
            }
            return self.wheel_first;
        }
        self.beyond.peek().map(|&Reverse(entry)| entry)
    }

    /// Moves the entries beyond the wheel that its span now reaches into
    /// it; whether there were any.
    fn reach_beyond(&mut self) -> bool {
        let mut moved = false;
        while let Some(&Reverse(entry)) = self.beyond.peek() {
            if entry.0.total_micros() - self.boundary >= SPAN {
                break;
            }
            self.beyond.pop();
            self.push(entry);
            moved = true;
        }
        moved
    }

    /// The first bucket holding entries from `start` on (circularly).
    fn next_occupied(&self, start: usize) -> Option<usize> {
        let words = self.occupied.len();
        let (first_word, first_bit) = (start / 64, start % 64);
        for step in 0..=words {
            let word = (first_word + step) % words;
            let mut bits = self.occupied[word];
            if step == 0 {
                bits &= u64::MAX << first_bit;
            } else if step == words {
                // Back at the first word: the bits before `start`.
                bits &= !(u64::MAX << first_bit);
            }
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
        }
        None
    }

    /// A flow whose timers were `timers` went away: their entries are
    /// stale.
    pub fn forget(&mut self, timers: &FlowTimers) {
        self.stale += timers.armed();
    }

    /// Disarms every timer of a flow (whose timers are `timers`) but those
    /// in `keep`: their entries are stale now.
    pub fn disarm_except(&mut self, timers: &mut FlowTimers, keep: &[Timer]) {
        for (index, slot) in timers.armed.iter_mut().enumerate() {
            if slot.is_some() && !keep.iter().any(|timer| timer.index() == index) {
                *slot = None;
                self.stale += 1;
            }
        }
    }

    /// An entry [`TimerQueue::pop_due`] gave was stale.
    pub fn popped_stale(&mut self) {
        self.stale = self.stale.saturating_sub(1);
    }

    /// Drops every stale entry (those `is_live` rejects) in one pass once
    /// the entries known to be stale are more than half the queue (and it
    /// holds [`TIDY_MIN`] at least); keeps the memory for the entries to
    /// come. See the module docs.
    pub fn tidy(&mut self, is_live: impl FnMut(Due) -> bool) {
        let entries = self.entries();
        if entries < TIDY_MIN || self.stale <= entries / 2 {
            return;
        }
        self.retain(is_live);
    }

    /// Keeps only the entries `is_live` accepts; the stale count is 0 after.
    fn retain(&mut self, mut is_live: impl FnMut(Due) -> bool) {
        self.front.retain(|&Reverse(entry)| is_live(due(entry)));
        self.beyond.retain(|&Reverse(entry)| is_live(due(entry)));
        self.in_wheel = 0;
        self.wheel_first = None;
        for (index, entries) in self.wheel.iter_mut().enumerate() {
            if entries.is_empty() {
                continue;
            }
            entries.retain(|&entry| is_live(due(entry)));
            self.in_wheel += entries.len();
            if entries.is_empty() {
                self.occupied[index / 64] &= !(1 << (index % 64));
            }
        }
        self.stale = 0;
    }

    /// The earliest entry, which may be stale (see [`TimerQueue::pop_stale`]),
    /// with the queue brought to `now`.
    pub fn peek(&mut self, now: Instant) -> Option<Due> {
        self.settle(now.total_micros());
        self.earliest().map(due)
    }

    /// Removes the earliest entry if `is_live` says it is stale; returns
    /// whether it did. Lets [`Host::poll_timeout`](super::Host::poll_timeout)
    /// report a deadline that really counts. The earliest entry of a
    /// bucket whose time has not come goes with every stale entry of its
    /// bucket, in one pass.
    pub fn pop_stale(&mut self, now: Instant, mut is_live: impl FnMut(Due) -> bool) -> bool {
        let Some(first) = self.peek(now) else {
            return false;
        };
        if is_live(first) {
            return false;
        }
        if self.front.pop().is_some() {
            self.popped_stale();
        } else if self.in_wheel > 0 {
            let index = bucket(first.at.total_micros());
            let entries = &mut self.wheel[index];
            let before = entries.len();
            entries.retain(|&entry| is_live(due(entry)));
            let removed = before - entries.len();
            if entries.is_empty() {
                self.occupied[index / 64] &= !(1 << (index % 64));
            }
            self.in_wheel -= removed;
            self.stale = self.stale.saturating_sub(removed);
            self.wheel_first = None;
        } else {
            self.beyond.pop();
            self.popped_stale();
        }
        true
    }

    /// Removes and returns the earliest entry due at `now` (live or stale:
    /// the caller checks it with [`FlowTimers::fire`]).
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        self.settle(now.total_micros());
        let &Reverse(entry) = self.front.peek().filter(|Reverse(entry)| entry.0 <= now)?;
        self.front.pop();
        Some(due(entry))
    }

    /// Drops every stale entry (those `is_live` rejects) and the memory the
    /// queue holds beyond what is left: after many flows went away. Costs a
    /// pass over the whole queue, so it is for quiet moments.
    pub fn compact(&mut self, is_live: impl FnMut(Due) -> bool) {
        self.retain(is_live);
        self.front.shrink_to_fit();
        self.beyond.shrink_to_fit();
        self.spare = Vec::new();
        if self.in_wheel == 0 {
            self.wheel = Vec::new();
        }
        for entries in &mut self.wheel {
            entries.shrink_to_fit();
        }
    }

    /// Entries in the queue, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries()
    }

    /// Room the queue holds for entries (all its parts).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        let wheel: usize = self.wheel.iter().map(Vec::capacity).sum();
        self.front.capacity() + wheel + self.beyond.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    fn flow(n: u32) -> FlowId {
        FlowId::new(n).unwrap()
    }

    /// Pops every due entry at `now` and fires the live ones.
    fn fire_all(queue: &mut TimerQueue, flows: &mut [FlowTimers], now: Instant) -> Vec<Due> {
        let mut fired = Vec::new();
        while let Some(due) = queue.pop_due(now) {
            let timers = &mut flows[due.flow.get() as usize];
            if timers.fire(due.timer, due.at) {
                fired.push(due);
            }
        }
        fired
    }

    #[test]
    fn fires_in_deadline_order_and_only_when_due() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 4];
        queue.arm(flow(1), &mut flows[1], Timer::Control, at(300));
        queue.arm(flow(2), &mut flows[2], Timer::Liveness, at(100));
        queue.arm(flow(3), &mut flows[3], Timer::Control, at(200));
        assert_eq!(queue.peek(at(0)).map(|d| d.at), Some(at(100)));
        assert!(fire_all(&mut queue, &mut flows, at(99)).is_empty());
        let fired = fire_all(&mut queue, &mut flows, at(250));
        let order: Vec<u32> = fired.iter().map(|d| d.flow.get()).collect();
        assert_eq!(order, [2, 3]);
        assert_eq!(flows[2].deadline(Timer::Liveness), None, "fired = disarmed");
        assert_eq!(flows[1].deadline(Timer::Control), Some(at(300)));
    }

    #[test]
    fn arming_later_keeps_the_earlier_deadline_and_earlier_replaces_it() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 2];
        let mut timers = std::mem::take(&mut flows[1]);
        queue.arm(flow(1), &mut timers, Timer::Liveness, at(500));
        queue.arm(flow(1), &mut timers, Timer::Liveness, at(900));
        assert_eq!(queue.len(), 1, "a later deadline pushes nothing");
        assert_eq!(timers.deadline(Timer::Liveness), Some(at(500)));
        queue.arm(flow(1), &mut timers, Timer::Liveness, at(200));
        assert_eq!(timers.deadline(Timer::Liveness), Some(at(200)));
        flows[1] = timers;
        // The entry at 500 is now stale: only the one at 200 fires.
        let fired = fire_all(&mut queue, &mut flows, at(1000));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].at, at(200));
    }

    #[test]
    fn at_one_instant_control_timers_fire_before_liveness_timers() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 3];
        queue.arm(flow(1), &mut flows[1], Timer::Liveness, at(10));
        queue.arm(flow(2), &mut flows[2], Timer::Control, at(10));
        let fired = fire_all(&mut queue, &mut flows, at(10));
        let order: Vec<(u32, Timer)> = fired.iter().map(|d| (d.flow.get(), d.timer)).collect();
        assert_eq!(order, [(2, Timer::Control), (1, Timer::Liveness)]);
    }

    #[test]
    fn a_flow_s_timers_disarmed_but_one_leave_stale_entries_that_never_fire() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 2];
        for (timer, ms) in [
            (Timer::Liveness, 10),
            (Timer::Keepalive, 20),
            (Timer::Linger, 30),
        ] {
            queue.arm(flow(1), &mut flows[1], timer, at(ms));
        }
        queue.disarm_except(&mut flows[1], &[Timer::Linger, Timer::Control]);
        assert_eq!(flows[1].armed(), 1);
        assert_eq!(queue.stale, 2, "both disarmed entries are counted stale");
        let fired = fire_all(&mut queue, &mut flows, at(100));
        let kinds: Vec<Timer> = fired.iter().map(|d| d.timer).collect();
        assert_eq!(kinds, [Timer::Linger]);
    }

    #[test]
    fn kinds_of_one_flow_are_independent() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 2];
        queue.arm(flow(1), &mut flows[1], Timer::Control, at(10));
        queue.arm(flow(1), &mut flows[1], Timer::Liveness, at(10));
        let fired = fire_all(&mut queue, &mut flows, at(10));
        let mut kinds: Vec<Timer> = fired.iter().map(|d| d.timer).collect();
        kinds.sort();
        assert_eq!(kinds, [Timer::Control, Timer::Liveness]);
    }

    #[test]
    fn stale_entries_are_dropped_from_the_front() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 3];
        queue.arm(flow(1), &mut flows[1], Timer::Control, at(100));
        queue.arm(flow(2), &mut flows[2], Timer::Control, at(200));
        // Flow 1 went away (its timers with it).
        flows[1] = FlowTimers::default();
        let live = |flows: &[FlowTimers], due: Due| {
            flows[due.flow.get() as usize].is_live(due.timer, due.at)
        };
        for now in [at(0), at(150)] {
            let mut queue = queue.clone_for_test();
            assert!(queue.pop_stale(now, |d| live(&flows, d)));
            assert!(
                !queue.pop_stale(now, |d| live(&flows, d)),
                "the front is live"
            );
            assert_eq!(queue.peek(now).map(|d| d.at), Some(at(200)));
        }
    }

    #[test]
    fn the_entries_of_flows_gone_are_dropped_once_they_are_most_of_the_queue() {
        const FLOWS: usize = 3 * TIDY_MIN;
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); FLOWS + 1];
        for (n, timers) in flows.iter_mut().enumerate().skip(1) {
            queue.arm(flow(n as u32), timers, Timer::Keepalive, at(25_000));
            queue.arm(flow(n as u32), timers, Timer::Liveness, at(1_500));
        }
        let live = |flows: &[FlowTimers], due: Due| {
            flows[due.flow.get() as usize].is_live(due.timer, due.at)
        };
        // Half the flows go away: their entries are half the queue, not
        // more, and stay.
        for timers in &mut flows[1..=FLOWS / 2] {
            queue.forget(timers);
            *timers = FlowTimers::default();
        }
        queue.tidy(|due| live(&flows, due));
        assert_eq!(queue.len(), 2 * FLOWS);
        // One more goes, and an earlier deadline replaces a live one's:
        // more than half is stale, and one pass drops it all.
        let last = FLOWS / 2 + 1;
        queue.forget(&flows[last]);
        flows[last] = FlowTimers::default();
        queue.arm(
            flow(FLOWS as u32),
            &mut flows[FLOWS],
            Timer::Liveness,
            at(1_000),
        );
        queue.tidy(|due| live(&flows, due));
        let left = FLOWS - last;
        assert_eq!(queue.len(), 2 * left, "only the live entries are left");
        // And they fire as before.
        let fired = fire_all(&mut queue, &mut flows, at(1_500));
        assert_eq!(fired.len(), left);
        assert_eq!(fired[0].at, at(1_000));
    }

    #[test]
    fn a_small_queue_is_not_tidied() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 11];
        for n in 1..=10 {
            queue.arm(
                flow(n),
                &mut flows[n as usize],
                Timer::Keepalive,
                at(25_000),
            );
            queue.forget(&flows[n as usize]);
        }
        queue.tidy(|_| false);
        assert_eq!(
            queue.len(),
            10,
            "below TIDY_MIN, stale entries wait for their time"
        );
    }

    #[test]
    fn compacting_keeps_only_live_entries() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 1001];
        for n in 1..=1000 {
            queue.arm(flow(n), &mut flows[n as usize], Timer::Liveness, at(10_000));
        }
        // All but one flow went away.
        for timers in &mut flows[2..] {
            *timers = FlowTimers::default();
        }
        queue.compact(|due| flows[due.flow.get() as usize].is_live(due.timer, due.at));
        assert_eq!(queue.len(), 1);
        assert!(queue.capacity() < 1000);
        assert_eq!(queue.pop_due(at(10_000)).map(|d| d.flow), Some(flow(1)));
    }

    #[test]
    fn the_work_is_proportional_to_due_flows() {
        // 100 000 flows armed far away, one soon: popping what is due
        // touches one entry, and the rest stay queued.
        let mut queue = TimerQueue::default();
        let mut timers = FlowTimers::default();
        for n in 1..=100_000 {
            let mut t = FlowTimers::default();
            queue.arm(flow(n), &mut t, Timer::Liveness, at(10_000));
        }
        queue.arm(flow(100_001), &mut timers, Timer::Control, at(5));
        let mut popped = 0;
        while queue.pop_due(at(5)).is_some() {
            popped += 1;
        }
        assert_eq!(popped, 1);
        assert_eq!(queue.len(), 100_000);
        assert!(
            queue.front.is_empty(),
            "the far deadlines stay in the wheel"
        );
        assert_eq!(queue.peek(at(5)).map(|d| d.at), Some(at(10_000)));
        assert!(queue.front.is_empty(), "found without moving them");
    }

    impl TimerQueue {
        /// A copy (the queue is not `Clone` outside tests).
        fn clone_for_test(&self) -> TimerQueue {
            TimerQueue {
                front: self.front.clone(),
                wheel: self.wheel.clone(),
                occupied: self.occupied,
                in_wheel: self.in_wheel,
                beyond: self.beyond.clone(),
                wheel_first: self.wheel_first,
                spare: Vec::new(),
                boundary: self.boundary,
                stale: self.stale,
            }
        }

        /// Every entry, sorted.
        fn contents(&self) -> Vec<Entry> {
            let mut all: Vec<Entry> = (self.front.iter().chain(&self.beyond))
                .map(|&Reverse(entry)| entry)
                .chain(self.wheel.iter().flatten().copied())
                .collect();
            all.sort();
            all
        }

        /// The layout the module docs describe.
        fn check(&self) {
            assert_eq!(self.boundary.rem_euclid(BUCKET_WIDTH), 0);
            assert!(self.boundary >= 0);
            for &Reverse(entry) in &self.front {
                assert!(entry.0.total_micros() < self.boundary, "{entry:?} in front");
            }
            for &Reverse(entry) in &self.beyond {
                assert!(
                    entry.0.total_micros() - self.boundary >= SPAN,
                    "{entry:?} beyond"
                );
            }
            let mut count = 0;
            for (index, entries) in self.wheel.iter().enumerate() {
                let bit = self.occupied[index / 64] & (1 << (index % 64)) != 0;
                assert_eq!(bit, !entries.is_empty(), "bucket {index}'s bit");
                for entry in entries {
                    let micros = entry.0.total_micros();
                    assert!(
                        (0..SPAN).contains(&(micros - self.boundary)),
                        "{entry:?} in the wheel"
                    );
                    assert_eq!(bucket(micros), index);
                }
                count += entries.len();
            }
            assert_eq!(count, self.in_wheel);
            if let Some(first) = self.wheel_first {
                assert_eq!(Some(&first), self.wheel.iter().flatten().min());
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Arm `timer` of flow `flow` at now + `delta` µs.
        Arm(u8, u8, i64),
        /// Arm `timer` of flow `flow` at the start of the bucket `k` buckets
        /// after now's, plus `e` µs (-1, 0 or 1): the edges of buckets.
        ArmAtEdge(u8, u8, i64, i64),
        /// The flow went away.
        Forget(u8),
        /// Time passes (µs), and everything due is popped.
        Advance(i64),
        /// The host drops the stale entries at the queue's front.
        PopStale,
        /// Every entry of flows whose number is even is dropped as stale.
        Compact,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Deltas reach before the current bucket's end, into the wheel,
        // and beyond it (SPAN is about 67 s).
        let delta = prop_oneof![
            -100_000i64..100_000,
            0i64..70_000_000,
            60_000_000i64..300_000_000
        ];
        prop_oneof![
            4 => (1u8..20, 0u8..7, delta).prop_map(|(f, t, d)| Op::Arm(f, t, d)),
            2 => (1u8..20, 0u8..7, 0i64..1100, -1i64..=1)
                .prop_map(|(f, t, k, e)| Op::ArmAtEdge(f, t, k, e)),
            1 => (1u8..20).prop_map(Op::Forget),
            3 => prop_oneof![0i64..100_000, 0i64..5_000_000, 0i64..200_000_000]
                .prop_map(Op::Advance),
            1 => Just(Op::PopStale),
            1 => Just(Op::Compact),
        ]
    }

    const KINDS: [Timer; Timer::COUNT] = [
        Timer::Control,
        Timer::Liveness,
        Timer::Keepalive,
        Timer::Transport,
        Timer::Linger,
        Timer::Orphan,
        Timer::Challenge,
    ];

    proptest::proptest! {
        /// Whatever is armed, forgotten, popped as stale and compacted, as
        /// time passes, the queue holds what one heap would, gives every
        /// due entry in the order and at the time one heap would, peeks
        /// the same front, and keeps its layout.
        #[test]
        fn the_queue_pops_what_one_heap_would(
            start in 0i64..1_000_000_000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut queue = TimerQueue::default();
            let mut reference: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
            let mut flows = vec![FlowTimers::default(); 20];
            let mut now = start;
            let micros = Instant::from_micros;
            for op in ops {
                match op {
                    Op::Arm(f, t, _) | Op::ArmAtEdge(f, t, _, _) => {
                        let deadline = match op {
                            Op::ArmAtEdge(_, _, k, e) => {
                                now - now.rem_euclid(BUCKET_WIDTH) + k * BUCKET_WIDTH + e
                            }
                            Op::Arm(_, _, delta) => now + delta,
                            _ => unreachable!(),
                        };
                        let (id, timer) = (flow(u32::from(f)), KINDS[usize::from(t)]);
                        let at = micros(deadline.max(0));
                        let timers = &mut flows[usize::from(f)];
                        if timers.deadline(timer).is_none_or(|armed| at < armed) {
                            reference.push(Reverse((at, timer, id)));
                        }
                        queue.arm(id, timers, timer, at);
                    }
                    Op::Forget(f) => {
                        queue.forget(&flows[usize::from(f)]);
                        flows[usize::from(f)] = FlowTimers::default();
                    }
                    Op::Advance(by) => {
                        now += by;
                        let mut popped = Vec::new();
                        while let Some(due) = queue.pop_due(micros(now)) {
                            popped.push(due);
                        }
                        let mut expected = Vec::new();
                        while let Some(&Reverse(entry)) = reference.peek() {
                            if entry.0 > micros(now) {
                                break;
                            }
                            reference.pop();
                            expected.push(due(entry));
                        }
                        proptest::prop_assert_eq!(popped, expected);
                        // Fired or stale alike, as the host would.
                        for flow in &mut flows {
                            for timer in KINDS {
                                if flow.deadline(timer).is_some_and(|d| d <= micros(now)) {
                                    flow.disarm(timer);
                                }
                            }
                        }
                    }
                    Op::PopStale => {
                        let live = |due: Due| flows[due.flow.get() as usize].is_live(due.timer, due.at);
                        let first = reference.peek().map(|&Reverse(entry)| due(entry));
                        let popped = queue.pop_stale(micros(now), live);
                        proptest::prop_assert_eq!(popped, first.is_some_and(|d| !live(d)));
                        // It took the earliest entry, and stale ones only.
                        let left = queue.contents();
                        let before: Vec<Entry> = reference.clone().into_sorted_vec()
                            .into_iter().rev().map(|Reverse(e)| e).collect();
                        let mut taken = Vec::new();
                        let mut rest = left.iter().peekable();
                        for entry in &before {
                            if rest.peek() == Some(&entry) {
                                rest.next();
                            } else {
                                taken.push(*entry);
                            }
                        }
                        proptest::prop_assert!(rest.next().is_none(), "nothing added");
                        proptest::prop_assert!(taken.iter().all(|&e| !live(due(e))));
                        if popped {
                            proptest::prop_assert_eq!(taken.first().map(|&e| due(e)), first);
                        }
                        reference = left.into_iter().map(Reverse).collect();
                    }
                    Op::Compact => {
                        let keep = |due: Due| due.flow.get() % 2 == 1;
                        queue.compact(keep);
                        reference.retain(|&Reverse(entry)| keep(due(entry)));
                    }
                }
                queue.check();
                proptest::prop_assert_eq!(queue.len(), reference.len());
                let mut expected: Vec<Entry> = reference.iter().map(|&Reverse(e)| e).collect();
                expected.sort();
                proptest::prop_assert_eq!(queue.contents(), expected);
                let front = reference.peek().map(|&Reverse(entry)| due(entry));
                proptest::prop_assert_eq!(queue.peek(micros(now)), front);
                queue.check();
                // Settled: everything due by now is in the front heap.
                let late = (queue.wheel.iter().flatten())
                    .chain(queue.beyond.iter().map(|Reverse(entry)| entry))
                    .find(|entry| entry.0.total_micros() <= now);
                proptest::prop_assert!(late.is_none(), "{late:?} due, not in front");
            }
        }
    }

    /// A deadline in the wheel, one beyond it and one before the front
    /// heap's end come out in order, the one beyond only once the wheel
    /// has moved on to reach it.
    #[test]
    fn deadlines_across_the_wheel_and_beyond_it_come_out_in_order() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 4];
        let far = SPAN / 1000 * 3; // three spans, in ms
        queue.arm(flow(1), &mut flows[1], Timer::Keepalive, at(far));
        queue.arm(flow(2), &mut flows[2], Timer::Linger, at(5_000));
        queue.arm(flow(3), &mut flows[3], Timer::Control, at(1));
        assert_eq!(
            (queue.front.len(), queue.in_wheel, queue.beyond.len()),
            (0, 2, 1)
        );
        let fired = fire_all(&mut queue, &mut flows, at(far));
        let order: Vec<u32> = fired.iter().map(|d| d.flow.get()).collect();
        assert_eq!(order, [3, 2, 1]);
        assert_eq!(queue.len(), 0);
    }

    /// A deadline beyond the wheel due in `now`'s bucket reaches the front
    /// heap in the same settle that moves the bucket just before `now`'s
    /// (the boundary lands on `now`'s bucket's start then).
    #[test]
    fn a_deadline_beyond_reached_as_the_bucket_before_now_s_moves_is_due_at_once() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 3];
        let (before, beyond) = (SPAN - BUCKET_WIDTH + 10, SPAN + 10);
        queue.arm(
            flow(1),
            &mut flows[1],
            Timer::Control,
            Instant::from_micros(before),
        );
        queue.arm(
            flow(2),
            &mut flows[2],
            Timer::Control,
            Instant::from_micros(beyond),
        );
        assert_eq!((queue.in_wheel, queue.beyond.len()), (1, 1));
        queue.settle(beyond);
        assert_eq!(queue.front.len(), 2, "both due, both in front");
        queue.check();
    }

    /// A deadline armed beyond the wheel, with nothing in it, fires when
    /// time jumps to exactly its bucket's start: the span reaches it then,
    /// in the bucket whose time has just started (the case proptest found).
    #[test]
    fn a_deadline_beyond_an_empty_wheel_fires_when_time_jumps_onto_it() {
        let mut queue = TimerQueue::default();
        let mut flows = vec![FlowTimers::default(); 2];
        let start = 7 * BUCKET_WIDTH + 100;
        assert_eq!(queue.pop_due(Instant::from_micros(start)), None);
        let deadline = 7 * BUCKET_WIDTH + SPAN + 3 * BUCKET_WIDTH;
        let at = Instant::from_micros(deadline);
        queue.arm(flow(1), &mut flows[1], Timer::Control, at);
        assert_eq!(queue.beyond.len(), 1);
        let popped = queue.pop_due(at);
        assert_eq!(
            popped,
            Some(Due {
                at,
                flow: flow(1),
                timer: Timer::Control
            })
        );
        queue.check();
    }
}
