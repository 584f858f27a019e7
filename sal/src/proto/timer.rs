//! Per-flow deadlines in one queue.
//!
//! A host may hold a million flows, most of them quiet, so nothing
//! here ever looks at all of them: every deadline of every flow is one entry
//! of a binary heap ordered by time, and [`Host::poll`](super::Host::poll)
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
//! The queue is a heap only near its front. An entry due within the
//! current bucket (65 ms, [`BUCKET_WIDTH`]) goes into a small binary heap;
//! one due later, within [`SPAN`] (about 67 s: linger, keepalive and
//! liveness deadlines all fit), into an unsorted bucket of a wheel, at a
//! constant cost; one due later still into a heap of its own. When the
//! small heap is empty, the next bucket that holds entries (found in a
//! bitmap) is moved into it. So a push costs the same whatever the number
//! of flows, most entries never meet a heap larger than one bucket's, and
//! entries leave in exactly the order one heap would give (deadline, kind,
//! flow), which the deterministic simulations rely on.

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
    /// bucket of their deadline (`(micros / BUCKET_WIDTH) % BUCKETS`).
    wheel: Vec<Vec<Entry>>,
    /// Which buckets hold entries, a bit each.
    occupied: [u64; BUCKETS / 64],
    /// Entries in the wheel.
    in_wheel: usize,
    /// Entries due at `boundary + SPAN` or later, earliest first.
    beyond: BinaryHeap<Reverse<Entry>>,
    /// Where the front heap ends and the wheel starts, microseconds (a
    /// bucket's start); it only moves forward, to the end of the next
    /// bucket that holds entries, when the front heap runs empty.
    boundary: i64,
    /// Entries known to be stale (a lower bound: a disarmed timer's entry
    /// is not counted).
    stale: usize,
}

impl Default for TimerQueue {
    fn default() -> TimerQueue {
        TimerQueue {
            front: BinaryHeap::new(),
            wheel: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: [0; BUCKETS / 64],
            in_wheel: 0,
            beyond: BinaryHeap::new(),
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
            let index = bucket(micros);
            self.wheel[index].push(entry);
            self.occupied[index / 64] |= 1 << (index % 64);
            self.in_wheel += 1;
        } else {
            self.beyond.push(Reverse(entry));
        }
    }

    /// Entries in the queue, stale ones included.
    fn entries(&self) -> usize {
        self.front.len() + self.in_wheel + self.beyond.len()
    }

    /// Makes the front heap hold the earliest entry, if there is any: while
    /// it is empty, moves the next bucket that holds entries into it (the
    /// boundary to that bucket's end), and the entries beyond the wheel
    /// that its new span reaches into the wheel.
    fn settle(&mut self) {
        while self.front.is_empty() {
            if self.in_wheel == 0 {
                let Some(Reverse(first)) = self.beyond.peek() else {
                    return;
                };
                // The wheel starts over at the bucket of the earliest.
                let micros = first.0.total_micros();
                self.boundary = micros - micros.rem_euclid(BUCKET_WIDTH);
                self.reach_beyond();
                continue;
            }
            let start = bucket(self.boundary);
            let Some(index) = self.next_occupied(start) else {
                return;
            };
            let skipped = (index + BUCKETS - start) % BUCKETS;
            self.boundary += (skipped as i64 + 1) * BUCKET_WIDTH;
            self.occupied[index / 64] &= !(1 << (index % 64));
            self.in_wheel -= self.wheel[index].len();
            let front = &mut self.front;
            front.extend(self.wheel[index].drain(..).map(Reverse));
            self.reach_beyond();
        }
    }

    /// Moves the entries beyond the wheel that its span now reaches into
    /// it (or into the front heap, if the boundary passed them).
    fn reach_beyond(&mut self) {
        while let Some(&Reverse(entry)) = self.beyond.peek() {
            if entry.0.total_micros() - self.boundary >= SPAN {
                return;
            }
            self.beyond.pop();
            self.push(entry);
        }
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

    /// The earliest entry, which may be stale (see [`TimerQueue::pop_stale`]).
    pub fn peek(&mut self) -> Option<Due> {
        self.settle();
        self.front.peek().map(|&Reverse(entry)| due(entry))
    }

    /// Removes the earliest entry if `is_live` says it is stale; returns
    /// whether it did. Lets [`Host::poll_timeout`](super::Host::poll_timeout)
    /// report a deadline that really counts.
    pub fn pop_stale(&mut self, is_live: impl FnOnce(Due) -> bool) -> bool {
        match self.peek() {
            Some(due) if !is_live(due) => {
                self.front.pop();
                self.popped_stale();
                true
            }
            _ => false,
        }
    }

    /// Removes and returns the earliest entry due at `now` (live or stale:
    /// the caller checks it with [`FlowTimers::fire`]).
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        let due = self.peek().filter(|due| due.at <= now)?;
        self.front.pop();
        Some(due)
    }

    /// Drops every stale entry (those `is_live` rejects) and the memory the
    /// queue holds beyond what is left: after many flows went away. Costs a
    /// pass over the whole queue, so it is for quiet moments.
    pub fn compact(&mut self, is_live: impl FnMut(Due) -> bool) {
        self.retain(is_live);
        self.front.shrink_to_fit();
        self.beyond.shrink_to_fit();
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
        assert_eq!(queue.peek().map(|d| d.at), Some(at(100)));
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
        assert!(queue.pop_stale(|d| live(&flows, d)));
        assert!(!queue.pop_stale(|d| live(&flows, d)), "the front is live");
        assert_eq!(queue.peek().map(|d| d.at), Some(at(200)));
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
    }

    /// What the queue is checked against: one binary heap of every entry,
    /// the structure it replaced.
    #[derive(Default)]
    struct Reference(BinaryHeap<Reverse<Entry>>);

    #[derive(Debug, Clone)]
    enum Op {
        /// Arm `timer` of flow `flow` at now + `delta` ms.
        Arm(u8, u8, i64),
        /// The flow went away.
        Forget(u8),
        /// Time passes (ms), and everything due is popped.
        Advance(i64),
        /// Every entry of flows whose number is even is dropped as stale.
        Compact,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Deltas reach before the front heap's end, into the wheel, and
        // beyond it (SPAN is about 67 s).
        let delta = prop_oneof![-100i64..100, 0i64..70_000, 60_000i64..300_000];
        prop_oneof![
            5 => (1u8..20, 0u8..7, delta).prop_map(|(f, t, d)| Op::Arm(f, t, d)),
            1 => (1u8..20).prop_map(Op::Forget),
            3 => prop_oneof![0i64..100, 0i64..5_000, 0i64..200_000].prop_map(Op::Advance),
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
        /// Whatever is armed, forgotten and compacted, as time passes, the
        /// queue gives every entry in the order and at the time one heap
        /// would, and peeks the same front.
        #[test]
        fn the_queue_pops_what_one_heap_would(
            start in 0i64..1_000_000,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut queue = TimerQueue::default();
            let mut reference = Reference::default();
            let mut flows = vec![FlowTimers::default(); 20];
            let mut now = start;
            for op in ops {
                match op {
                    Op::Arm(f, t, delta) => {
                        let (id, timer) = (flow(u32::from(f)), KINDS[usize::from(t)]);
                        let at = at(now + delta);
                        let before = queue.len();
                        queue.arm(id, &mut flows[usize::from(f)], timer, at);
                        if queue.len() > before {
                            reference.0.push(Reverse((at, timer, id)));
                        }
                    }
                    Op::Forget(f) => {
                        queue.forget(&flows[usize::from(f)]);
                        flows[usize::from(f)] = FlowTimers::default();
                    }
                    Op::Advance(ms) => {
                        now += ms;
                        let mut popped = Vec::new();
                        while let Some(due) = queue.pop_due(at(now)) {
                            popped.push(due);
                        }
                        let mut expected = Vec::new();
                        while let Some(&Reverse(entry)) = reference.0.peek() {
                            if entry.0 > at(now) {
                                break;
                            }
                            reference.0.pop();
                            expected.push(due(entry));
                        }
                        proptest::prop_assert_eq!(popped, expected);
                        // Fired or stale alike, as the host would.
                        for flow in &mut flows {
                            for timer in KINDS {
                                if flow.deadline(timer).is_some_and(|d| d <= at(now)) {
                                    flow.disarm(timer);
                                }
                            }
                        }
                    }
                    Op::Compact => {
                        let keep = |due: Due| due.flow.get() % 2 == 1;
                        queue.compact(keep);
                        reference.0.retain(|&Reverse(entry)| keep(due(entry)));
                    }
                }
                proptest::prop_assert_eq!(queue.len(), reference.0.len());
                let front = reference.0.peek().map(|&Reverse(entry)| due(entry));
                proptest::prop_assert_eq!(queue.peek(), front);
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
}
