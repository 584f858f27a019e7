//! The sender's SACK scoreboard (RFC 6675): which bytes above the
//! cumulative acknowledgement the peer reported holding (RFC 2018).
//!
//! The peer's SACK blocks tell a sender which segments of a window arrived,
//! hence which are holes: with several losses in one window, the holes can
//! all be resent within a round trip, where NewReno learns of one per round
//! trip from partial ACKs. The scoreboard is a few ranges in a fixed array
//! (no allocation per segment), sorted, disjoint and merged as blocks come
//! in. It is only ever a guide to what to resend: a receiver may renege
//! (RFC 2018 section 8, it may drop data it SACKed), so nothing is freed
//! from the send buffer on its account, and a retransmission timeout
//! forgets it all.
//!
//! Ranges beyond the array's capacity are dropped from the top: forgetting
//! a range only makes the sender take its bytes for missing (it resends
//! more, or waits for the timeout), never for delivered. Our receiver keeps
//! at most four out-of-order ranges (`assembler.rs`), so eight slots hold
//! all a peer like it can report.

use smoltcp::wire::TcpSeqNumber;

/// How many disjoint SACKed ranges the scoreboard holds.
pub(crate) const SACK_SLOTS: usize = 8;

/// SACKed ranges above the cumulative ACK, sorted and disjoint (neither
/// overlapping nor touching), each `[left, right)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Scoreboard {
    ranges: [(TcpSeqNumber, TcpSeqNumber); SACK_SLOTS],
    len: usize,
}

impl Scoreboard {
    /// The ranges held, lowest first.
    pub(crate) fn ranges(&self) -> &[(TcpSeqNumber, TcpSeqNumber)] {
        &self.ranges[..self.len]
    }

    /// Whether nothing is SACKed.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget everything (a timeout, a rewind: RFC 2018 lets the receiver
    /// renege, and the resent data will be SACKed again if it is held).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// Record that `[left, right)` arrived. The caller has checked that it
    /// lies above the cumulative ACK and within what was sent; an empty or
    /// inverted range is ignored.
    pub(crate) fn add(&mut self, left: TcpSeqNumber, right: TcpSeqNumber) {
        if left >= right {
            return;
        }
        let (mut left, mut right) = (left, right);
        let mut out = [(TcpSeqNumber::default(), TcpSeqNumber::default()); SACK_SLOTS + 1];
        let mut n = 0;
        let mut placed = false;
        for &(l, r) in self.ranges() {
            if r < left {
                out[n] = (l, r);
                n += 1;
            } else if right < l {
                if !placed {
                    out[n] = (left, right);
                    n += 1;
                    placed = true;
                }
                out[n] = (l, r);
                n += 1;
            } else {
                // Overlapping or touching: merge into the new range.
                left = left.min(l);
                right = right.max(r);
            }
        }
        if !placed {
            out[n] = (left, right);
            n += 1;
        }
        // Past capacity the highest range goes (see the module docs).
        self.len = n.min(SACK_SLOTS);
        self.ranges[..self.len].copy_from_slice(&out[..self.len]);
    }

    /// The cumulative ACK reached `ack`: what lies below it is no longer
    /// the scoreboard's business.
    pub(crate) fn trim(&mut self, ack: TcpSeqNumber) {
        let mut n = 0;
        for i in 0..self.len {
            let (l, r) = self.ranges[i];
            if r > ack {
                self.ranges[n] = (l.max(ack), r);
                n += 1;
            }
        }
        self.len = n;
    }

    /// The end of the highest SACKed range.
    pub(crate) fn highest(&self) -> Option<TcpSeqNumber> {
        self.ranges().last().map(|&(_, r)| r)
    }

    /// Bytes SACKed in all.
    pub(crate) fn sacked_bytes(&self) -> usize {
        self.ranges().iter().map(|&(l, r)| r - l).sum()
    }

    /// Bytes SACKed within `[from, to)`.
    pub(crate) fn sacked_in(&self, from: TcpSeqNumber, to: TcpSeqNumber) -> usize {
        self.ranges()
            .iter()
            .map(|&(l, r)| {
                let (l, r) = (l.max(from), r.min(to));
                if l < r {
                    r - l
                } else {
                    0
                }
            })
            .sum()
    }

    /// The first hole at or above `from` that lies below some SACKed
    /// range, as `[start, end)` (`end` the left edge of the range above
    /// it): bytes the peer lacks while it holds later ones.
    pub(crate) fn next_hole(&self, from: TcpSeqNumber) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
        let mut pos = from;
        for &(l, r) in self.ranges() {
            if pos < l {
                return Some((pos, l));
            }
            pos = pos.max(r);
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Sequence number `n`.
    pub(crate) fn s(n: i32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    /// A scoreboard holding `ranges`, added in order.
    pub(crate) fn board(ranges: &[(i32, i32)]) -> Scoreboard {
        let mut b = Scoreboard::default();
        for &(l, r) in ranges {
            b.add(s(l), s(r));
        }
        b
    }

    fn list(b: &Scoreboard) -> Vec<(i32, i32)> {
        b.ranges().iter().map(|&(l, r)| (l.0, r.0)).collect()
    }

    #[test]
    fn ranges_stay_sorted_and_merge_when_they_overlap_or_touch() {
        let b = board(&[(300, 400), (100, 200), (500, 600)]);
        assert_eq!(list(&b), [(100, 200), (300, 400), (500, 600)]);
        let mut m = b;
        m.add(s(200), s(300)); // touches both neighbours
        assert_eq!(list(&m), [(100, 400), (500, 600)]);
        m.add(s(350), s(700)); // overlaps both
        assert_eq!(list(&m), [(100, 700)]);
        m.add(s(150), s(160)); // inside
        assert_eq!(list(&m), [(100, 700)]);
        m.add(s(800), s(800)); // empty
        assert_eq!(list(&m), [(100, 700)]);
    }

    #[test]
    fn past_capacity_the_highest_range_is_dropped() {
        let mut b = Scoreboard::default();
        for i in 0..SACK_SLOTS as i32 {
            b.add(s(100 * i + 100), s(100 * i + 150));
        }
        assert_eq!(b.ranges().len(), SACK_SLOTS);
        b.add(s(10), s(20));
        assert_eq!(b.ranges().len(), SACK_SLOTS);
        assert_eq!(b.ranges()[0], (s(10), s(20)));
        assert_eq!(b.highest(), Some(s(100 * (SACK_SLOTS as i32 - 1) + 50)));
        // A range above them all does not fit either.
        b.add(s(5000), s(5100));
        assert_eq!(b.highest(), Some(s(100 * (SACK_SLOTS as i32 - 1) + 50)));
    }

    #[test]
    fn trim_drops_and_cuts_below_the_cumulative_ack() {
        let mut b = board(&[(100, 200), (300, 400)]);
        b.trim(s(150));
        assert_eq!(list(&b), [(150, 200), (300, 400)]);
        b.trim(s(300));
        assert_eq!(list(&b), [(300, 400)]);
        b.trim(s(400));
        assert!(b.is_empty());
        assert_eq!(b.highest(), None);
    }

    #[test]
    fn holes_and_counts() {
        let b = board(&[(200, 300), (400, 450)]);
        assert_eq!(b.sacked_bytes(), 150);
        assert_eq!(b.sacked_in(s(250), s(420)), 70);
        assert_eq!(b.next_hole(s(100)), Some((s(100), s(200))));
        assert_eq!(b.next_hole(s(200)), Some((s(300), s(400))));
        assert_eq!(b.next_hole(s(350)), Some((s(350), s(400))));
        assert_eq!(b.next_hole(s(450)), None);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let b = board(&[(i32::MAX - 50, i32::MIN + 50)]);
        assert_eq!(b.sacked_bytes(), 101);
        assert_eq!(
            b.next_hole(s(i32::MAX - 100)),
            Some((s(i32::MAX - 100), s(i32::MAX - 50)))
        );
    }
}
