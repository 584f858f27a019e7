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

/// Every flow's deadlines, earliest first. See the module docs.
#[derive(Debug, Default)]
pub(super) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, Timer, FlowId)>>,
    /// Entries known to be stale (a lower bound: a disarmed timer's entry
    /// is not counted).
    stale: usize,
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
        self.heap.push(Reverse((at, timer, flow)));
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
    pub fn tidy(&mut self, mut is_live: impl FnMut(Due) -> bool) {
        if self.heap.len() < TIDY_MIN || self.stale <= self.heap.len() / 2 {
            return;
        }
        self.heap
            .retain(|&Reverse((at, timer, flow))| is_live(Due { at, flow, timer }));
        self.stale = 0;
    }

    /// The earliest entry, which may be stale (see [`TimerQueue::pop_stale`]).
    pub fn peek(&self) -> Option<Due> {
        self.heap
            .peek()
            .map(|&Reverse((at, timer, flow))| Due { at, flow, timer })
    }

    /// Removes the earliest entry if `is_live` says it is stale; returns
    /// whether it did. Lets [`Host::poll_timeout`](super::Host::poll_timeout)
    /// report a deadline that really counts.
    pub fn pop_stale(&mut self, is_live: impl FnOnce(Due) -> bool) -> bool {
        match self.peek() {
            Some(due) if !is_live(due) => {
                self.heap.pop();
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
        self.heap.pop();
        Some(due)
    }

    /// Drops every stale entry (those `is_live` rejects) and the memory the
    /// queue holds beyond what is left: after many flows went away. Costs a
    /// pass over the whole queue, so it is for quiet moments.
    pub fn compact(&mut self, mut is_live: impl FnMut(Due) -> bool) {
        self.heap
            .retain(|&Reverse((at, timer, flow))| is_live(Due { at, flow, timer }));
        self.heap.shrink_to_fit();
        self.stale = 0;
    }

    /// Entries in the queue, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
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
        assert!(queue.heap.capacity() < 1000);
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
}
