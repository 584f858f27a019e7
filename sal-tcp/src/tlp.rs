//! Tail loss probe (RFC 8985 section 7, "TLP"), as Linux sends it by
//! default (`tcp_schedule_loss_probe`, `tcp_send_loss_probe`,
//! `tcp_process_tlp_ack`).
//!
//! A loss at the tail of a flight (the last segments of an answer, or a
//! loss with fewer than three segments behind it) earns too few duplicate
//! ACKs, and too little SACKed data, to start a recovery: it waited for
//! the retransmission timeout, SRTT + 200 ms at least, which then halves
//! the flow to one segment. With data in flight and no recovery under
//! way, the socket arms a probe timeout instead ([`probe_timeout`]):
//! 2 SRTT, at least 10 ms (SRTT 0, a path of less than a millisecond,
//! included), plus the peer's delayed ACK when a single segment is in
//! flight (the SAL runs the same TCP at both ends, so the socket's own ACK
//! delay stands for the peer's), and never later than the retransmission
//! timeout would have fired (`Timer::LossProbe` keeps that instant; a
//! probe that may not go when its timer fires leaves that timeout where it
//! was). Each segment of new data sent pushes it back, so it fires
//! 2 SRTT after the last one. When it fires:
//!
//! - if the peer has SACKed data above the oldest unacknowledged byte,
//!   that byte is lost (sent before data that arrived, more than two round
//!   trips ago: RFC 8985's RACK would have marked it so, and the SAL's
//!   paths do not reorder): a fast retransmit starts;
//! - else one probe goes: a new segment if the peer's window and the
//!   data allow (one segment past the congestion window, as Linux's), else
//!   the last segment sent again (with the FIN if it carried one);
//! - then the retransmission timer runs from the probe, a full timeout.
//!
//! The probe's ACK then shows the loss: SACKed data above a hole while the
//! probe's episode is open starts a fast retransmit (the same RACK
//! reasoning). At most one probe goes a flight: none is armed until the
//! cumulative ACK reaches what was sent with the last (Linux's
//! `tlp_high_seq`; Linux waits for the episode's end, which an answer
//! whose tail was repaired by the probe only reaches with the ACK of the
//! next answer, so that a loss at that one's tail would wait for the
//! timeout).
//!
//! A probe that was a retransmission may have repaired a loss the sender
//! never saw (RFC 8985 7.4): the episode's end tells. A duplicate ACK
//! with nothing new (the receiver had the segment: both copies arrived),
//! or a D-SACK of the probe, means no loss; an ACK past the highest
//! sequence number sent when the probe went means the probe filled a hole,
//! and the congestion window is reduced once, as for a loss (Linux's CWR:
//! `Controller::on_loss`, deflated by the ACK). A recovery, a timeout or a
//! rewind ends the episode (their own responses count). A probe of new
//! data needs no such check: a loss under it shows as one.
//!
//! Karn's rule holds: a probe that resends is no round-trip sample
//! (`Socket::note_resent`). The state is a sequence number and three
//! flags; the timer is the retransmission timer's slot, so an idle flow
//! has none.

use smoltcp::time::Duration;
use smoltcp::wire::TcpSeqNumber;

/// The least probe timeout, for very short round trips (Linux adds
/// `TCP_TIMEOUT_MIN`, two jiffies, to 2 SRTT).
pub(crate) const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(10);

/// The probe timeout for a smoothed round trip of `srtt_ms` (`None`: no
/// sample yet, and no probe: the first timeout, 1 s, is no later than one
/// would be), `one_segment` when at most one segment is in flight (the
/// peer may delay its ACK by up to `ack_delay`).
///
/// SRTT 0 is a sample: a path of less than a millisecond (one host, one
/// LAN), where a lost tail waited for the timeout, at least 200 ms, when
/// 0 was taken for no sample. The floor applies to 2 SRTT, before the ACK
/// delay is added: SRTT counts whole milliseconds, and with the floor
/// after, a lone segment's probe on such a path went at the ACK delay,
/// with the peer's delayed ACK still on its way (up to a millisecond).
pub(crate) fn probe_timeout(
    srtt_ms: Option<u32>,
    one_segment: bool,
    ack_delay: Duration,
) -> Option<Duration> {
    let srtt_ms = srtt_ms?;
    let mut pto = Duration::from_millis(2 * u64::from(srtt_ms)).max(MIN_PROBE_TIMEOUT);
    if one_segment {
        pto += ack_delay;
    }
    Some(pto)
}

/// A socket's tail loss probe: whether one is due, and the episode of the
/// last one sent.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LossProbe {
    /// RFC 8985's TLP.end_seq: the highest sequence number sent when the
    /// probe went (valid while `open`).
    end: TcpSeqNumber,
    /// A probe was sent and its episode has not ended.
    open: bool,
    /// That probe resent data (TLP.is_retrans).
    retrans: bool,
    /// The timer fired: the next segment sent is the probe.
    due: bool,
}

impl LossProbe {
    /// Whether the last probe is in flight: its episode is open and the
    /// cumulative ACK (`una`) has not reached what was sent with it. No
    /// other probe is armed meanwhile (one probe a flight), and SACKed
    /// data above the oldest byte marks that byte lost.
    pub(crate) fn in_flight(&self, una: TcpSeqNumber) -> bool {
        self.open && una < self.end
    }

    /// Whether the next segment sent is the probe.
    pub(crate) fn due(&self) -> bool {
        self.due
    }

    /// The timer fired and nothing else repairs the tail: send a probe.
    pub(crate) fn set_due(&mut self) {
        self.due = true;
    }

    /// The probe went; `end` is the highest sequence number sent now, and
    /// `retrans` whether the probe resent data. An episode still open
    /// (acknowledged up to its end, undecided) ends without a loss.
    pub(crate) fn sent(&mut self, end: TcpSeqNumber, retrans: bool) {
        *self = LossProbe {
            end,
            open: true,
            retrans,
            due: false,
        };
    }

    /// A recovery, a timeout or a rewind: their own response counts, and
    /// no probe is due.
    pub(crate) fn end(&mut self) {
        *self = LossProbe::default();
    }

    /// An ACK of `ack` with SACK `blocks` arrived: whether it ends the
    /// episode with a loss the probe repaired (reduce the congestion window
    /// once). A block below `ack` ending at the probe's end is its D-SACK
    /// (RFC 2883: both copies arrived); `pure_dup` is whether the ACK is a
    /// duplicate ACK with nothing new (no data, no window update, no new
    /// SACKed data, no advance). RFC 8985 7.4.2; Linux's
    /// `tcp_process_tlp_ack`. Any ACK but such a duplicate also cancels a
    /// probe due and not yet sent.
    pub(crate) fn on_ack(
        &mut self,
        ack: TcpSeqNumber,
        blocks: &[Option<(u32, u32)>; 3],
        pure_dup: bool,
    ) -> bool {
        if !pure_dup {
            // Something moved: the probe that was due is no longer needed.
            self.due = false;
        }
        if !self.open || ack < self.end {
            return false;
        }
        let dsack = blocks.iter().flatten().any(|&(left, right)| {
            let (left, right) = (TcpSeqNumber(left as i32), TcpSeqNumber(right as i32));
            left < right && right == self.end && right <= ack
        });
        if !self.retrans || dsack {
            // New data, or both copies arrived.
            self.end();
            false
        } else if ack > self.end {
            // Nothing said the original arrived: the probe filled a hole.
            self.end();
            true
        } else {
            if pure_dup {
                // The probe's duplicate ACK: both copies arrived.
                self.end();
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_timeout_is_two_round_trips_plus_the_ack_delay_for_one_segment() {
        let delay = Duration::from_millis(10);
        assert_eq!(probe_timeout(None, false, delay), None);
        assert_eq!(
            probe_timeout(Some(20), false, delay),
            Some(Duration::from_millis(40))
        );
        assert_eq!(
            probe_timeout(Some(20), true, delay),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            probe_timeout(Some(1), false, delay),
            Some(MIN_PROBE_TIMEOUT)
        );
        // A path of less than a millisecond: the least timeout, and the
        // ACK delay on top of it for a lone segment.
        assert_eq!(
            probe_timeout(Some(0), false, delay),
            Some(MIN_PROBE_TIMEOUT)
        );
        assert_eq!(
            probe_timeout(Some(0), true, delay),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            probe_timeout(Some(2), true, delay),
            Some(Duration::from_millis(20))
        );
    }

    #[test]
    fn an_episode_ends_with_a_loss_only_when_nothing_showed_the_original_arrived() {
        let end = TcpSeqNumber(1000);
        let none = [None; 3];
        let dsack = [Some((900, 1000)), None, None];
        let mut p = LossProbe::default();
        p.sent(end, true);
        assert!(!p.on_ack(end - 1, &none, false));
        assert!(p.open);
        // The ACK of the probe (or of the original): undecided.
        assert!(!p.on_ack(end, &none, false));
        assert!(p.open);
        // Then the probe's duplicate: no loss.
        assert!(!p.on_ack(end, &none, true));
        assert!(!p.open);

        p.sent(end, true);
        assert!(!p.on_ack(end, &none, false));
        assert!(p.on_ack(end + 1, &none, false));
        assert!(!p.open);

        p.sent(end, true);
        assert!(!p.on_ack(end + 1, &dsack, false));
        assert!(!p.open);

        // New data: no loss to find.
        p.sent(end, false);
        assert!(!p.on_ack(end + 1, &none, false));
        assert!(!p.open);
    }
}
