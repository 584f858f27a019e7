//! After a retransmission timeout: resend only what the peer does not hold
//! (Linux's Loss state, `tcp_enter_loss` and `tcp_timeout_mark_lost`; RFC
//! 6675 section 5.1).
//!
//! A timeout takes everything in flight for lost and resends it from the
//! oldest unacknowledged byte, one segment growing by slow start. The
//! scoreboard (`crate::sack`) used to be forgotten then (RFC 2018 section
//! 8: the peer may renege), and the resending went back over what the
//! peer had SACKed: under heavy loss the window, one segment after a
//! timeout, went on bytes the receiver held. Now the scoreboard is kept
//! and the resending skips its ranges ([`resend_from`], [`resend_len`]):
//! holes only, still in sequence order and within the timeout's window,
//! which does not count SACKed bytes as in flight.
//!
//! # Reneging
//!
//! A peer that reneged (dropped what it SACKed: ours gives up out-of-order
//! ranges at a trim point under memory pressure, or when holding them is
//! not justified by what it received) shows it: its cumulative ACK
//! stops at the start of a SACKed range (`Scoreboard::reneged`). Then the
//! timer fires soon (Linux's `tcp_check_sack_reneging`: max(SRTT/2, 10
//! ms), [`reneging_delay`], time for ACKs on their way to restore the
//! scoreboard), and a timeout that finds the oldest byte SACKed forgets
//! the scoreboard and resends everything, as before: reneging costs a
//! short timeout, and stalls nothing longer. Without that check, a peer
//! that SACKed and dropped stalled the flow for good: its ranges were
//! skipped at every timeout.
//!
//! # The episode
//!
//! The episode ([`TimeoutRecovery`]) lasts until the cumulative ACK
//! reaches what was sent before the timeout (RFC 6675's RecoveryPoint,
//! Linux's `high_seq`). Within it, the ranges SACKed before the timeout
//! say nothing about the bytes resent since, which went after them:
//! RFC 6675's "a hole below SACKed data is lost" (and RACK's "sent before
//! data delivered", `crate::rack`) would take every hole just resent for
//! lost again. So a hole is lost there only below the highest block
//! SACKed since the timeout ([`TimeoutRecovery::lost_edge`]: the holes
//! below it were resent before it), which is what the scoreboard, then
//! forgotten, showed before; and what tells of a loss at the oldest byte
//! outside a recovery (more than two segments SACKed above it, RFC 6675's
//! IsLost; any, on RACK's or the probe's timer, `crate::tlp`) is what
//! the peer SACKed since the cumulative ACK last moved
//! ([`TimeoutRecovery::evidence`]; three duplicate ACKs still start a
//! fast retransmit too).
//!
//! A rewind (`Socket::rewind`, the path changed) keeps the scoreboard too,
//! and begins the same episode: the segments lost are the old path's, but
//! the receiver, and what it holds, is the same; had it reneged meanwhile,
//! its ACKs show it as after a timeout.
//!
//! `tests/heavy_loss.rs` (5000 seeds at 20 % loss, the sender's own
//! counts): MSS 200 median 70.6 -> 67.6 s, p90 190 -> 184 s, timeouts
//! 396,971 -> 388,893, segments resent 1,548,370 -> 1,497,107; MSS 1448
//! median 4.67 -> 4.54 s, p90 17.6 -> 16.8 s. 1-10 % and
//! `sal/tests/sim_tcp_loss.rs` (1 % and 3 %, few timeouts) unchanged
//! within noise. The state is sixteen bytes a socket.

use smoltcp::time::Duration;
use smoltcp::wire::TcpSeqNumber;

use crate::sack::Scoreboard;

/// The least wait before the timeout after the peer reneged (Linux's).
const MIN_RENEGING_DELAY: Duration = Duration::from_millis(10);

/// How long after an ACK that shows the peer reneged the retransmission
/// timer fires (Linux's max(SRTT/2, 10 ms)), `srtt_ms` the smoothed round
/// trip if sampled: ACKs on their way meanwhile may restore the
/// scoreboard (the cumulative ACK moves past the range).
pub(crate) fn reneging_delay(srtt_ms: Option<u32>) -> Duration {
    let half = Duration::from_millis(u64::from(srtt_ms.unwrap_or(0)) / 2);
    half.max(MIN_RENEGING_DELAY)
}

/// Where a timeout's resending goes on from `next`: past the SACKed range
/// holding it, if one does, but no further than `limit` (the end of the
/// data: a FIN is always resent).
pub(crate) fn resend_from(
    board: &Scoreboard,
    next: TcpSeqNumber,
    limit: TcpSeqNumber,
) -> TcpSeqNumber {
    match board.sacked_end(next) {
        Some(end) if next < limit => end.min(limit),
        _ => next,
    }
}

/// How much of `len` bytes resent from `next` may go: up to the next
/// SACKed range.
pub(crate) fn resend_len(board: &Scoreboard, next: TcpSeqNumber, len: usize) -> usize {
    board
        .next_sacked(next)
        .map_or(len, |left| len.min(left - next))
}

/// The episode of a retransmission timeout (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TimeoutRecovery {
    /// The highest sequence number sent when the timeout fired (valid
    /// while `open`).
    high: TcpSeqNumber,
    /// The end of the highest SACK block that brought news in the
    /// episode, or the cumulative ACK at its start: the holes below it
    /// were resent before data the peer got since, and are lost.
    fresh_high: TcpSeqNumber,
    /// Bytes newly SACKed in the episode since the cumulative ACK last
    /// moved (or since the timeout).
    fresh: u32,
    open: bool,
}

impl TimeoutRecovery {
    /// A timeout (or a rewind) resends what was sent up to `high`, the
    /// highest sequence number sent: a new episode, what was SACKed before
    /// no evidence of loss in it.
    pub(crate) fn begin(&mut self, una: TcpSeqNumber, high: TcpSeqNumber) {
        *self = TimeoutRecovery {
            high,
            fresh_high: una,
            fresh: 0,
            open: true,
        };
    }

    /// Whether the episode is open: the cumulative ACK has not reached
    /// what was sent before the timeout.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// No episode: the connection was reset, or F-RTO found the timeout
    /// spurious (`crate::frto`: nothing more is resent).
    pub(crate) fn end(&mut self) {
        self.open = false;
    }

    /// An ACK arrived: the cumulative ACK is at `una` (`advanced` if it
    /// moved), and `news` bytes were SACKed that were not before, by
    /// blocks ending at `news_high` at most. The episode ends once `una`
    /// reaches what was sent before the timeout.
    pub(crate) fn on_ack(
        &mut self,
        una: TcpSeqNumber,
        advanced: bool,
        news: usize,
        news_high: Option<TcpSeqNumber>,
    ) {
        if !self.open {
            return;
        }
        if una >= self.high {
            self.open = false;
            return;
        }
        if advanced {
            self.fresh = 0;
        }
        self.fresh = self
            .fresh
            .saturating_add(u32::try_from(news).unwrap_or(u32::MAX));
        if let Some(high) = news_high {
            self.fresh_high = self.fresh_high.max(high);
        }
    }

    /// Where holes are lost below (RFC 6675's "below the highest SACKed
    /// byte", the scoreboard's being `highest`), the cumulative ACK at
    /// `una`. In an episode, below the highest block SACKed since it
    /// began: the holes below that block were resent before what it
    /// SACKed was sent, where the ranges SACKed before the timeout were
    /// sent before any of them.
    pub(crate) fn lost_edge(
        &self,
        una: TcpSeqNumber,
        highest: Option<TcpSeqNumber>,
    ) -> Option<TcpSeqNumber> {
        if self.open {
            highest.map(|h| h.min(self.fresh_high.max(una)))
        } else {
            highest
        }
    }

    /// The SACKed bytes that tell of a loss, the scoreboard holding
    /// `sacked`: all of them outside an episode, only those SACKed since
    /// the cumulative ACK last moved within one (see the module docs).
    pub(crate) fn evidence(&self, sacked: usize) -> usize {
        if self.open {
            sacked.min(self.fresh as usize)
        } else {
            sacked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sack::tests::{board, s};

    #[test]
    fn resending_skips_sacked_ranges_but_not_the_end_of_the_data() {
        let b = board(&[(200, 300), (400, 450)]);
        assert_eq!(resend_from(&b, s(100), s(1000)), s(100));
        assert_eq!(resend_from(&b, s(200), s(1000)), s(300));
        assert_eq!(resend_from(&b, s(420), s(1000)), s(450));
        assert_eq!(resend_from(&b, s(420), s(430)), s(430), "the FIN's place");
        assert_eq!(resend_from(&b, s(430), s(430)), s(430));
        assert_eq!(resend_len(&b, s(100), 150), 100);
        assert_eq!(resend_len(&b, s(100), 50), 50);
        assert_eq!(resend_len(&b, s(300), 500), 100);
        assert_eq!(resend_len(&b, s(450), 500), 500);
    }

    #[test]
    fn only_what_is_sacked_since_the_ack_last_moved_tells_of_a_loss() {
        let mut t = TimeoutRecovery::default();
        assert_eq!(t.evidence(500), 500, "no episode");
        t.begin(s(100), s(1000));
        assert_eq!(t.evidence(500), 0, "SACKed before the timeout");
        t.on_ack(s(100), false, 100, Some(s(400)));
        t.on_ack(s(100), false, 50, Some(s(300)));
        assert_eq!(t.evidence(650), 150);
        t.on_ack(s(200), true, 0, None);
        assert_eq!(t.evidence(650), 0, "the ACK moved");
        t.on_ack(s(200), false, 80, Some(s(500)));
        assert_eq!(t.evidence(40), 40, "no more than is SACKed");
        t.on_ack(s(1000), true, 0, None);
        assert!(!t.is_open());
        assert_eq!(t.evidence(40), 40);
    }

    #[test]
    fn only_holes_below_what_was_sacked_since_the_timeout_are_lost() {
        let mut t = TimeoutRecovery::default();
        assert_eq!(t.lost_edge(s(100), Some(s(900))), Some(s(900)));
        assert_eq!(t.lost_edge(s(100), None), None);
        t.begin(s(100), s(1000));
        assert_eq!(t.lost_edge(s(100), Some(s(900))), Some(s(100)), "none");
        t.on_ack(s(100), false, 100, Some(s(400)));
        assert_eq!(t.lost_edge(s(100), Some(s(900))), Some(s(400)));
        t.on_ack(s(100), false, 100, Some(s(300)));
        assert_eq!(
            t.lost_edge(s(100), Some(s(900))),
            Some(s(400)),
            "the highest"
        );
        t.on_ack(s(500), true, 0, None);
        assert_eq!(t.lost_edge(s(500), Some(s(900))), Some(s(500)));
        assert_eq!(t.lost_edge(s(500), None), None);
    }

    #[test]
    fn the_reneging_delay_is_half_a_round_trip_at_least_10_ms() {
        assert_eq!(reneging_delay(None), Duration::from_millis(10));
        assert_eq!(reneging_delay(Some(4)), Duration::from_millis(10));
        assert_eq!(reneging_delay(Some(100)), Duration::from_millis(50));
    }

    #[test]
    fn the_state_stays_small() {
        assert!(core::mem::size_of::<TimeoutRecovery>() <= 16);
    }
}
