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
//! An episode counts bytes, not segments: a D-SACK of part of a
//! retransmission (the peer held part of it, and lacked the rest) leaves
//! the rest counted, and no undo follows. A D-SACK that never comes (its
//! ACK lost) only leaves the reduction in place, as without this module.
//! The state is 17 bytes a socket, no allocation.

use smoltcp::wire::TcpSeqNumber;

/// The window reduction that may be undone, and the retransmissions since
/// it began.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Undo {
    /// The oldest unacknowledged byte when the episode began (Linux's
    /// `undo_marker`): only D-SACKs of bytes from there count.
    marker: TcpSeqNumber,
    /// Bytes retransmitted in the episode and not yet D-SACKed (Linux's
    /// `undo_retrans`, in bytes).
    retrans: u32,
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
    pub(crate) fn begin(&mut self, una: TcpSeqNumber, prior: Prior, reduced: bool) {
        *self = Undo {
            marker: una,
            retrans: 0,
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
        if self.is_open() && start >= self.marker && start < end {
            self.retrans = self.retrans.saturating_add(clamp(end - start));
        }
    }

    /// The peer D-SACKed `[left, right)`, within what was sent (`max`,
    /// the highest sequence number sent): the window to restore if that
    /// was the last retransmitted byte of an episode whose window was cut
    /// (the episode then ends).
    pub(crate) fn on_dsack(
        &mut self,
        left: TcpSeqNumber,
        right: TcpSeqNumber,
        max: TcpSeqNumber,
    ) -> Option<Prior> {
        if !self.is_open() || left < self.marker || right > max || left >= right {
            return None;
        }
        if self.retrans == 0 {
            // Not one of ours (the network duplicated a segment).
            return None;
        }
        self.retrans = self.retrans.saturating_sub(clamp(right - left));
        if self.retrans > 0 || self.stage != Stage::Reduced {
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
}
