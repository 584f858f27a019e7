//! F-RTO (RFC 5682 section 3, the SACK-enhanced algorithm; Linux's
//! `tcp_process_loss`): after a retransmission timeout, new data before
//! more resending, and a timeout found spurious undone.
//!
//! A timeout fires early when the round trip grows faster than the
//! estimator follows (a queue filling), or when the ACKs that would have
//! told of the flight's arrival were lost. Its response is the harshest
//! there is (a window of one segment, the rest of the flight resent), and
//! the D-SACKs that could undo it (`crate::undo`) only come once the
//! duplicates arrive, a round trip of needless resending later.
//!
//! After the timeout, which resends the oldest segment alone:
//!
//! - step 2: the first ACK that moves the cumulative ACK, but not to what
//!   was sent before the timeout, lets out up to two new segments in
//!   place of more resending ([`Verdict::SendNew`]; Nagle's algorithm
//!   does not hold them back, as in Linux's `tcp_xmit_recovery`): what the
//!   timeout left unsent waits a round trip, and is not counted in flight;
//! - step 3: an ACK that newly acknowledges or SACKs *original* data (sent
//!   before the timeout, or before those new segments, and never
//!   retransmitted) shows the flight was not lost: the timeout was
//!   spurious ([`Verdict::Spurious`]): the window goes back to what it was
//!   before it (`Undo::on_spurious_timeout`), and what the timeout would
//!   still have resent is taken for on its way. A duplicate ACK, or one
//!   that SACKs new data, shows the loss was real, and the resending goes
//!   on where it stopped ([`Verdict::Resume`]); an ACK of retransmitted
//!   bytes only resumes it too, and leaves the check on (Linux's).
//!
//! Which data is original needs the scoreboard (`crate::sack`) kept
//! across the timeout (`crate::loss`): an ACK that jumps over data the
//! peer held out of order before the timeout says nothing about the
//! flight after it. When the scoreboard was forgotten at a timeout, such
//! ACKs looked like the arrival of data never resent, and real losses
//! were taken for spurious timeouts (`tests/heavy_loss.rs` at 20 % loss,
//! MSS 200: median 68 -> 81 s in an earlier attempt). Bytes retransmitted
//! at any time (below `Rack::sent_once_from`, which covers a timeout's
//! resending, a recovery's and a probe's) are not original either: an
//! ACK of a recovery's retransmission that sat in a queue is no sign that
//! the timeout was spurious.
//!
//! Two choices differ from Linux, on `tests/heavy_loss.rs`'s figures (20 %
//! loss each way, where ACKs are lost as often as data):
//!
//! - original data counts from step 3 on only, as RFC 5682 has it; Linux
//!   checks the first ACK too. That ACK, of the timeout's copy of a lost
//!   segment, often jumps over data whose SACKs were lost with their ACKs:
//!   original data that arrived long before, taken for a spurious
//!   timeout. Checked there too, a quarter of all timeouts were "spurious"
//!   (98,220 of 393,900 over 5000 seeds at MSS 200), and the transfers
//!   took longer than without F-RTO: median 67.6 -> 71.2 s, p90 184 ->
//!   188 s. From step 3 on, next to none is (1 of 13,160 at MSS 1448,
//!   2000 seeds), and the gain is step 2's: its new segments, sent once,
//!   give round-trip samples that end the timeout's backoff, and SACKs
//!   that show the loss real; over 2000 seeds at MSS 200, median 66.9 ->
//!   55.6 s, p90 178 -> 112 s, the largest timeout's median 7.4 -> 3.8 s;
//!   at MSS 1448, p90 16.4 -> 13.2 s; 1-10 % unchanged.
//! - it is armed at a timeout outside a fast recovery only, as Linux's (a
//!   timeout in a recovery means the recovery's retransmissions were lost,
//!   or are held up in a queue; its undo would be the recovery's too).
//!   Armed in a recovery too, `sal/tests/sim_tcp_loss.rs` (seeds 65-320)
//!   resent 9 % more at 1 % loss (11,379 -> 12,402 segments) and had a
//!   stall of 1 s; as it is, F-RTO changes nothing there.
//!
//! The state is twelve bytes a socket.

use smoltcp::wire::TcpSeqNumber;

use crate::sack::Scoreboard;

/// Where F-RTO is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Stage {
    /// Not checking: no timeout, or decided.
    #[default]
    Off,
    /// Step 2: the timeout resent the oldest segment; waiting for an ACK
    /// that moves the cumulative ACK.
    Resent,
    /// Step 3: new data went in place of resending (which goes on from
    /// `Frto::resume` once `resumed`).
    NewSent { resumed: bool },
}

/// What the socket does after an ACK (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing new: go on as before.
    Wait,
    /// Step 2b: send new data (up to [`Frto::new_data_room`]) before
    /// resending more.
    SendNew,
    /// The loss was real, or is not ruled out: resend from
    /// [`Frto::resume`] on.
    Resume,
    /// The timeout was spurious: undo its window reduction, and resend
    /// nothing more.
    Spurious,
}

/// What the socket tells F-RTO of an ACK.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ack {
    /// The cumulative ACK, after this one.
    pub(crate) una: TcpSeqNumber,
    /// It moved.
    pub(crate) advanced: bool,
    /// It newly acknowledged or SACKed original data
    /// ([`delivered_original`]).
    pub(crate) original: bool,
    /// It was a duplicate ACK, or SACKed bytes not SACKed before.
    pub(crate) dup_or_sacked: bool,
    /// New data may go: some is queued, within the peer's window.
    pub(crate) can_send_new: bool,
    /// Where the timeout's resending is (the next byte it would resend).
    pub(crate) resend_at: TcpSeqNumber,
    /// The highest sequence number sent.
    pub(crate) max: TcpSeqNumber,
}

/// A socket's F-RTO state (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Frto {
    stage: Stage,
    /// Original data ends here: the highest sequence number sent before
    /// the timeout, then before step 2b's new data (Linux's `high_seq`).
    high: TcpSeqNumber,
    /// Where the timeout's resending stopped for new data (step 2b).
    resume: TcpSeqNumber,
}

impl Frto {
    /// A retransmission timeout resent the oldest segment, `high` the
    /// highest sequence number sent (step 1).
    pub(crate) fn begin(&mut self, high: TcpSeqNumber) {
        *self = Frto {
            stage: Stage::Resent,
            high,
            resume: high,
        };
    }

    /// Not checking any more (a fast retransmit, a rewind, a reset).
    pub(crate) fn end(&mut self) {
        self.stage = Stage::Off;
    }

    /// Whether an ACK may still show the timeout spurious.
    pub(crate) fn is_on(&self) -> bool {
        self.stage != Stage::Off
    }

    /// The end of the original data (valid while [`is_on`](Self::is_on)).
    pub(crate) fn high(&self) -> TcpSeqNumber {
        self.high
    }

    /// Where the timeout's resending goes on from after [`Verdict::Resume`].
    pub(crate) fn resume(&self) -> TcpSeqNumber {
        self.resume
    }

    /// Step 2b's new data waits on its ACK, the resending stopped.
    pub(crate) fn probing(&self) -> bool {
        self.stage == Stage::NewSent { resumed: false }
    }

    /// While step 2b's new data is out: the bytes of segments `mss` long
    /// that may still go, two segments' worth in all (RFC 5682 3, step
    /// 2b), with `max` the highest sequence number sent. `None` outside.
    pub(crate) fn new_data_room(&self, max: TcpSeqNumber, mss: usize) -> Option<usize> {
        self.probing()
            .then(|| (2 * mss).saturating_sub(max - self.high))
    }

    /// While step 2b's new data is out, the bytes the timeout left unsent
    /// above the cumulative ACK `una` and not SACKed: lost, not in flight.
    pub(crate) fn unsent(&self, una: TcpSeqNumber, board: &Scoreboard) -> usize {
        if !self.probing() {
            return 0;
        }
        let from = self.resume.max(una);
        if from >= self.high {
            return 0;
        }
        (self.high - from).saturating_sub(board.sacked_in(from, self.high))
    }

    /// An ACK arrived (see [`Ack`]): what to do.
    pub(crate) fn on_ack(&mut self, ack: Ack) -> Verdict {
        if self.stage == Stage::Off {
            return Verdict::Wait;
        }
        // Step 3b.
        if ack.original && self.stage != Stage::Resent {
            self.stage = Stage::Off;
            return Verdict::Spurious;
        }
        match self.stage {
            Stage::Off => Verdict::Wait,
            Stage::Resent if !ack.advanced => Verdict::Wait,
            Stage::Resent if ack.una >= self.high || !ack.can_send_new => {
                // Step 2a: all was acknowledged (the timeout's episode
                // ends); or nothing new can go: the conventional way.
                self.stage = Stage::Off;
                Verdict::Wait
            }
            Stage::Resent => {
                // Step 2b.
                self.stage = Stage::NewSent { resumed: false };
                self.resume = ack.resend_at;
                self.high = ack.max;
                Verdict::SendNew
            }
            Stage::NewSent { resumed } => {
                if ack.una >= self.high {
                    self.stage = Stage::Off;
                    return Verdict::Wait;
                }
                if ack.dup_or_sacked {
                    // Step 3a: the loss was real.
                    self.stage = Stage::Off;
                } else if ack.advanced {
                    self.stage = Stage::NewSent { resumed: true };
                } else {
                    return Verdict::Wait;
                }
                if resumed {
                    Verdict::Wait
                } else {
                    Verdict::Resume
                }
            }
        }
    }
}

/// Whether an ACK newly acknowledges or SACKs original data: bytes in
/// `[from, to)` (`from` where data never retransmitted begins, `to` the
/// end of what was sent before the timeout), not SACKed before (`board`,
/// the scoreboard before the ACK), below the new cumulative ACK `ack` (it
/// was at `una`) or in one of its SACK `blocks` (those above `ack`).
pub(crate) fn delivered_original(
    board: &Scoreboard,
    una: TcpSeqNumber,
    ack: TcpSeqNumber,
    blocks: impl Iterator<Item = (TcpSeqNumber, TcpSeqNumber)>,
    from: TcpSeqNumber,
    to: TcpSeqNumber,
) -> bool {
    let news = |left: TcpSeqNumber, right: TcpSeqNumber| {
        let (left, right) = (left.max(from).max(una), right.min(to));
        left < right && board.sacked_in(left, right) < right - left
    };
    news(una, ack)
        || blocks
            .filter(|&(l, r)| ack <= l && l < r)
            .any(|(l, r)| news(l, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sack::tests::{board, s};

    fn ack(una: i32, advanced: bool, original: bool, dup_or_sacked: bool) -> Ack {
        Ack {
            una: s(una),
            advanced,
            original,
            dup_or_sacked,
            can_send_new: true,
            resend_at: s(una),
            max: s(1000),
        }
    }

    #[test]
    fn new_data_then_an_ack_of_original_data_is_a_spurious_timeout() {
        let mut f = Frto::default();
        assert_eq!(f.on_ack(ack(100, true, true, false)), Verdict::Wait, "off");
        f.begin(s(1000));
        assert_eq!(f.on_ack(ack(0, false, false, true)), Verdict::Wait);
        assert_eq!(f.on_ack(ack(100, true, false, false)), Verdict::SendNew);
        assert_eq!(f.new_data_room(s(1000), 100), Some(200));
        assert_eq!(f.new_data_room(s(1150), 100), Some(50));
        assert_eq!(f.on_ack(ack(300, true, true, false)), Verdict::Spurious);
        assert!(!f.is_on());
        assert_eq!(f.new_data_room(s(1150), 100), None);
    }

    #[test]
    fn original_data_at_the_first_ack_is_no_evidence() {
        // It may have arrived long before, its SACKs lost (see the module
        // docs): step 2 goes on.
        let mut f = Frto::default();
        f.begin(s(1000));
        assert_eq!(f.on_ack(ack(300, true, true, false)), Verdict::SendNew);
    }

    #[test]
    fn new_data_sacked_is_a_real_loss() {
        let mut f = Frto::default();
        f.begin(s(1000));
        assert_eq!(f.on_ack(ack(100, true, false, false)), Verdict::SendNew);
        assert_eq!(f.resume(), s(100));
        assert_eq!(f.on_ack(ack(100, false, false, true)), Verdict::Resume);
        assert!(!f.is_on());
    }

    #[test]
    fn an_ack_of_resent_bytes_resumes_and_keeps_watching() {
        let mut f = Frto::default();
        f.begin(s(1000));
        assert_eq!(f.on_ack(ack(100, true, false, false)), Verdict::SendNew);
        assert_eq!(f.on_ack(ack(200, true, false, false)), Verdict::Resume);
        assert!(f.is_on());
        assert_eq!(f.new_data_room(s(1100), 100), None);
        assert_eq!(f.on_ack(ack(300, true, false, false)), Verdict::Wait);
        assert_eq!(f.on_ack(ack(400, true, true, false)), Verdict::Spurious);
    }

    #[test]
    fn all_acknowledged_or_nothing_new_to_send_ends_the_check() {
        let mut f = Frto::default();
        f.begin(s(1000));
        assert_eq!(f.on_ack(ack(1000, true, false, false)), Verdict::Wait);
        assert!(!f.is_on());
        f.begin(s(1000));
        let mut a = ack(100, true, false, false);
        a.can_send_new = false;
        assert_eq!(f.on_ack(a), Verdict::Wait);
        assert!(!f.is_on());
    }

    #[test]
    fn the_bytes_left_unsent_are_not_in_flight() {
        let mut f = Frto::default();
        f.begin(s(1000));
        let b = board(&[(300, 400)]);
        assert_eq!(f.unsent(s(100), &b), 0, "not probing");
        let mut a = ack(100, true, false, false);
        a.resend_at = s(200);
        assert_eq!(f.on_ack(a), Verdict::SendNew);
        assert_eq!(f.unsent(s(100), &b), 700);
        assert_eq!(f.unsent(s(350), &b), 600);
        assert_eq!(f.unsent(s(1000), &b), 0);
    }

    #[test]
    fn original_data_is_new_never_resent_and_sent_before_the_timeout() {
        let b = board(&[(200, 300)]);
        let none = || core::iter::empty();
        // The cumulative ACK covers SACKed data and resent data only.
        assert!(!delivered_original(
            &b,
            s(100),
            s(300),
            none(),
            s(200),
            s(1000)
        ));
        // ... and original data beyond.
        assert!(delivered_original(
            &b,
            s(100),
            s(301),
            none(),
            s(200),
            s(1000)
        ));
        // A block of original data, SACKed before or not.
        let block = |l, r| core::iter::once((s(l), s(r)));
        assert!(!delivered_original(
            &b,
            s(100),
            s(100),
            block(200, 300),
            s(200),
            s(1000)
        ));
        assert!(delivered_original(
            &b,
            s(100),
            s(100),
            block(250, 350),
            s(200),
            s(1000)
        ));
        // Resent, or sent after the timeout, or below the ACK: not.
        assert!(!delivered_original(
            &b,
            s(100),
            s(100),
            block(100, 200),
            s(200),
            s(1000)
        ));
        assert!(!delivered_original(
            &b,
            s(100),
            s(100),
            block(1000, 1100),
            s(200),
            s(1000)
        ));
        assert!(!delivered_original(
            &b,
            s(100),
            s(400),
            block(300, 400),
            s(500),
            s(1000)
        ));
    }

    #[test]
    fn the_state_stays_small() {
        assert!(core::mem::size_of::<Frto>() <= 12);
    }
}
