//! Spurious retransmissions, and undoing the window reduction they cost
//! (RFC 3708's D-SACK detection, as Linux's `tcp_try_undo_dsack`).
//!
//! A fast retransmit, a retransmission timeout or a tail loss probe that
//! repaired a loss each cut the congestion window, on the evidence that a
//! segment was lost. That evidence can be wrong: the segment was delayed
//! behind a deep queue, or the ACKs that would have told of its arrival
//! were lost, or a timeout fired while the recovery's retransmission of a
//! real loss was still queued. The peer then receives the same bytes twice
//! and says so with a D-SACK block (RFC 2883, `crate::dsack`). When every
//! byte retransmitted since the reduction comes back D-SACKed, no
//! retransmission was needed, and the window and slow start threshold go
//! back to what they were before it (Linux: the larger of each and what it
//! is now, `tcp_undo_cwnd_reduction`; Cubic starts a new epoch from there).
//!
//! Episodes are Linux's: a fast retransmit begins one, and so does a tail
//! loss probe that resends (cut only if its episode finds it repaired a
//! loss, `crate::tlp`); a timeout begins one unless it fires in a recovery
//! or in a timeout's resending, whose episode carries on (its window
//! before it all, `tcp_enter_loss`), and so does a fast retransmit in a
//! timeout's resending. With each of those starting afresh (a timeout in
//! a recovery undone to the recovery's window), undos came more often,
//! and on `sal/tests/sim_tcp_loss.rs`'s deep queue each kept the queue
//! fuller: timeouts at 3 % loss went from 69 to 82 (64 seeds).
//!
//! What an undo leaves alone: the retransmission timeout's backoff (the
//! timeout fired early for the path as it is; undoing it made
//! `sim_tcp_loss`'s timeouts at 3 % grow from 69 to 85 in an earlier
//! attempt), and a timeout's resending, which goes on (stopped at the
//! undo, the rest of the flight taken for delivered, `heavy_loss` at 20 %
//! loss and MSS 200 waited for more timeouts: p90 110 -> 155 s).
//!
//! F-RTO (RFC 5682) was tried and left out: the scoreboard is forgotten
//! at a timeout (`Socket::poll_transmit`), so an ACK that jumps over data
//! the peer held out of order looked like the arrival of data never
//! resent, and real losses were taken for spurious timeouts (`heavy_loss`
//! at 20 %, MSS 200: median 68 -> 81 s).
//!
//! An episode keeps the ranges it retransmitted, and a D-SACK takes out
//! of them the bytes it names: the reduction is undone when none is left.
//! Bytes, not segments: a D-SACK of part of a retransmission (the peer
//! held part of it, and lacked the rest) leaves the rest, and no undo
//! follows. Bytes never retransmitted (an original the network
//! duplicated) take nothing out, and neither does a D-SACK counted
//! already (its ACK duplicated): counting D-SACKed bytes, whichever, let
//! either undo a recovery that repaired a real loss. A byte retransmitted
//! twice in an episode, or more ranges than are kept, and the episode is
//! not undone (one D-SACK cannot tell which copy was needless; Linux
//! counts each retransmission, and would want two). Retransmissions
//! still outstanding at a new episode carry over to it (Linux's
//! `tcp_init_undo` counts `retrans_out`). A D-SACK that never comes (its
//! ACK lost) only leaves the reduction in place, as without this module.
//! The state is 48 bytes a socket, no allocation.

use smoltcp::wire::TcpSeqNumber;

/// How many retransmitted ranges an episode keeps: SACK recovery resends
/// holes, a timeout resends from SND.UNA on (one range growing), a probe
/// one segment. More, and the episode is not undone.
const RANGES: usize = 4;

/// `[start, end)` of the sequence space; empty when `start == end`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Range {
    start: TcpSeqNumber,
    end: TcpSeqNumber,
}

impl Range {
    fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    fn overlaps(&self, start: TcpSeqNumber, end: TcpSeqNumber) -> bool {
        !self.is_empty() && start < self.end && self.start < end
    }
}

/// The window reduction that may be undone, and the retransmissions since
/// it began.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Undo {
    /// The oldest unacknowledged byte when the episode began (Linux's
    /// `undo_marker`): only D-SACKs of bytes from there count.
    marker: TcpSeqNumber,
    /// The ranges retransmitted in the episode and not yet D-SACKed
    /// (Linux's `undo_retrans`, as ranges of bytes).
    resent: [Range; RANGES],
    /// A byte was retransmitted twice, or more ranges than `resent` holds:
    /// the D-SACKs cannot show every retransmission needless.
    untracked: bool,
    /// The congestion window before the episode's reduction (without fast
    /// recovery's inflation).
    prior_cwnd: u32,
    /// The slow start threshold before it.
    prior_ssthresh: u32,
    /// What the episode is at (see [`Stage`]).
    stage: Stage,
}

/// Where an episode is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Stage {
    /// No episode: nothing to undo.
    #[default]
    Closed,
    /// Retransmissions went (a probe that resent), no reduction yet.
    Open,
    /// The window was cut: D-SACKs of all retransmissions undo it.
    Reduced,
}

/// What an undo restores: the congestion window and slow start threshold
/// before the reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prior {
    pub(crate) cwnd: usize,
    pub(crate) ssthresh: usize,
}

fn clamp(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn widen(n: u32) -> usize {
    if n == u32::MAX {
        usize::MAX
    } else {
        n as usize
    }
}

impl Undo {
    /// A reduction, or a retransmission that may bring one (a tail loss
    /// probe), begins a new episode at `una`, the window having been
    /// `prior` until now. `reduced` says whether the window is cut now.
    /// The retransmissions of an open episode at or above `una` carry
    /// over: they were not shown needless.
    pub(crate) fn begin(&mut self, una: TcpSeqNumber, prior: Prior, reduced: bool) {
        let mut resent = [Range::default(); RANGES];
        if self.is_open() {
            for (new, old) in resent.iter_mut().zip(self.resent) {
                if old.overlaps(una, old.end) {
                    *new = Range {
                        start: old.start.max(una),
                        end: old.end,
                    };
                }
            }
        }
        *self = Undo {
            marker: una,
            resent,
            untracked: false,
            prior_cwnd: clamp(prior.cwnd),
            prior_ssthresh: clamp(prior.ssthresh),
            stage: if reduced { Stage::Reduced } else { Stage::Open },
        };
    }

    /// Whether an episode is open (begun and neither undone nor ended).
    pub(crate) fn is_open(&self) -> bool {
        self.stage != Stage::Closed
    }

    /// The episode's window was cut (a tail loss probe's episode, found
    /// to have repaired a loss).
    pub(crate) fn reduced(&mut self) {
        if self.stage == Stage::Open {
            self.stage = Stage::Reduced;
        }
    }

    /// Nothing to undo any more (a rewind: a new path, whose window
    /// restarts).
    pub(crate) fn end(&mut self) {
        self.stage = Stage::Closed;
    }

    /// `[start, end)` was retransmitted.
    pub(crate) fn resent(&mut self, start: TcpSeqNumber, end: TcpSeqNumber) {
        if !self.is_open() || start < self.marker || start >= end {
            return;
        }
        if self.resent.iter().any(|r| r.overlaps(start, end)) {
            self.untracked = true;
            return;
        }
        // Joined to a range it continues (a timeout's resending, segment
        // after segment), or a range of its own.
        let mut new = Range { start, end };
        for r in self.resent.iter_mut() {
            if !r.is_empty() && (r.end == new.start || new.end == r.start) {
                new = Range {
                    start: r.start.min(new.start),
                    end: r.end.max(new.end),
                };
                *r = Range::default();
            }
        }
        match self.resent.iter_mut().find(|r| r.is_empty()) {
            Some(free) => *free = new,
            None => self.untracked = true,
        }
    }

    /// The peer D-SACKed `[left, right)`, within what was sent (`max`,
    /// the highest sequence number sent): the window to restore if that
    /// named the last retransmitted bytes of an episode whose window was
    /// cut (the episode then ends).
    pub(crate) fn on_dsack(
        &mut self,
        left: TcpSeqNumber,
        right: TcpSeqNumber,
        max: TcpSeqNumber,
    ) -> Option<Prior> {
        if !self.is_open() || left < self.marker || right > max || left >= right {
            return None;
        }
        // Take [left, right) out of every range it meets; a range cut in
        // two needs a free slot for its right part, or stays whole.
        let mut taken = false;
        for i in 0..RANGES {
            let r = self.resent[i];
            if !r.overlaps(left, right) {
                continue;
            }
            let below = Range {
                start: r.start,
                end: left,
            };
            let above = Range {
                start: right,
                end: r.end,
            };
            match (below.is_empty(), above.is_empty()) {
                (true, true) => self.resent[i] = Range::default(),
                (false, true) => self.resent[i] = below,
                (true, false) => self.resent[i] = above,
                (false, false) => {
                    let Some(free) = self.resent.iter().position(|r| r.is_empty()) else {
                        continue;
                    };
                    self.resent[i] = below;
                    self.resent[free] = above;
                }
            }
            taken = true;
        }
        // Nothing of ours (the network duplicated a segment, or an ACK),
        // or retransmissions left, or none that could be counted.
        if !taken
            || self.untracked
            || self.stage != Stage::Reduced
            || self.resent.iter().any(|r| !r.is_empty())
        {
            return None;
        }
        self.stage = Stage::Closed;
        Some(Prior {
            cwnd: widen(self.prior_cwnd),
            ssthresh: widen(self.prior_ssthresh),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: i32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    const PRIOR: Prior = Prior {
        cwnd: 40_000,
        ssthresh: usize::MAX,
    };

    #[test]
    fn every_retransmitted_byte_dsacked_undoes_the_reduction() {
        let mut u = Undo::default();
        u.begin(s(1000), PRIOR, true);
        u.resent(s(1000), s(2000));
        u.resent(s(3000), s(3500));
        assert_eq!(u.on_dsack(s(1000), s(2000), s(9000)), None);
        assert_eq!(u.on_dsack(s(3000), s(3500), s(9000)), Some(PRIOR));
        assert!(!u.is_open());
        // Once.
        assert_eq!(u.on_dsack(s(3000), s(3500), s(9000)), None);
    }

    #[test]
    fn a_retransmission_not_dsacked_keeps_the_reduction() {
        let mut u = Undo::default();
        u.begin(s(1000), PRIOR, true);
        u.resent(s(1000), s(2000));
        // Part of it only: the peer lacked the rest.
        assert_eq!(u.on_dsack(s(1000), s(1500), s(9000)), None);
        assert!(u.is_open());
        // Below the episode, or past what was sent: not counted.
        assert_eq!(u.on_dsack(s(500), s(1000), s(9000)), None);
        assert_eq!(u.on_dsack(s(1500), s(2000), s(1800)), None);
        assert_eq!(u.on_dsack(s(1500), s(2000), s(9000)), Some(PRIOR));
    }

    #[test]
    fn a_dsack_with_nothing_retransmitted_or_nothing_cut_undoes_nothing() {
        let mut u = Undo::default();
        assert_eq!(u.on_dsack(s(0), s(100), s(9000)), None);
        u.begin(s(1000), PRIOR, true);
        assert_eq!(u.on_dsack(s(1000), s(1100), s(9000)), None);
        // A probe's episode: undone only once the window was cut.
        u.begin(s(1000), PRIOR, false);
        u.resent(s(1000), s(1100));
        assert_eq!(u.on_dsack(s(1000), s(1100), s(9000)), None);
        u.begin(s(1000), PRIOR, false);
        u.resent(s(1000), s(1100));
        u.reduced();
        assert_eq!(u.on_dsack(s(1000), s(1100), s(9000)), Some(PRIOR));
    }

    #[test]
    fn only_dsacks_of_bytes_resent_count_and_each_once() {
        let mut u = Undo::default();
        u.begin(s(1000), PRIOR, true);
        u.resent(s(1000), s(1100));
        u.resent(s(1100), s(1200));
        u.resent(s(2000), s(2100));
        // An original the network duplicated, and a D-SACK counted twice.
        assert_eq!(u.on_dsack(s(3000), s(3100), s(9000)), None);
        assert_eq!(u.on_dsack(s(1000), s(1200), s(9000)), None);
        assert_eq!(u.on_dsack(s(1000), s(1200), s(9000)), None);
        assert!(u.is_open());
        // A block wider than the retransmission counts its bytes resent.
        assert_eq!(u.on_dsack(s(1900), s(2200), s(9000)), Some(PRIOR));
    }

    #[test]
    fn a_dsack_inside_a_retransmission_leaves_both_ends() {
        let mut u = Undo::default();
        u.begin(s(1000), PRIOR, true);
        u.resent(s(1000), s(1300));
        assert_eq!(u.on_dsack(s(1100), s(1200), s(9000)), None);
        assert_eq!(u.on_dsack(s(1000), s(1100), s(9000)), None);
        assert_eq!(u.on_dsack(s(1200), s(1300), s(9000)), Some(PRIOR));
    }

    #[test]
    fn bytes_resent_twice_or_too_many_ranges_are_not_undone() {
        let mut u = Undo::default();
        u.begin(s(1000), PRIOR, true);
        u.resent(s(1000), s(1100));
        u.resent(s(1000), s(1100));
        assert_eq!(u.on_dsack(s(1000), s(1100), s(9000)), None);
        u.begin(s(0), PRIOR, true);
        for i in 0..=RANGES as i32 {
            u.resent(s(i * 200), s(i * 200 + 100));
        }
        for i in 0..=RANGES as i32 {
            assert_eq!(u.on_dsack(s(i * 200), s(i * 200 + 100), s(9000)), None);
        }
    }

    #[test]
    fn retransmissions_outstanding_carry_over_to_a_new_episode() {
        let mut u = Undo::default();
        u.begin(s(1000), PRIOR, false);
        u.resent(s(1000), s(1100));
        u.resent(s(5000), s(5100));
        // A fast retransmit at 2000: the probe's 5000.. is not shown
        // needless; 1000.. is below the episode.
        u.begin(s(2000), PRIOR, true);
        u.resent(s(2000), s(2100));
        assert_eq!(u.on_dsack(s(2000), s(2100), s(9000)), None);
        assert_eq!(u.on_dsack(s(1000), s(1100), s(9000)), None);
        assert_eq!(u.on_dsack(s(5000), s(5100), s(9000)), Some(PRIOR));
    }

    #[test]
    fn the_state_stays_small() {
        assert!(core::mem::size_of::<Undo>() <= 48);
    }
}
