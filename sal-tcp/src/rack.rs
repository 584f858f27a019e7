//! RACK loss detection (RFC 8985 section 6), lean: a segment is lost once
//! a segment *sent after it* was delivered, and a reordering window has
//! passed (Linux's `tcp_recovery.c`).
//!
//! "Sent after", not "higher in sequence", is what shows a retransmission
//! lost in turn: resent, it lies below all the peer SACKed, and only the
//! order of sending tells that what the peer SACKed since went after it.
//! Before, such a loss waited for the retransmission timeout (SRTT +
//! 200 ms at least, then doubled) unless new data sent after it was
//! SACKed: no tail loss probe goes during a recovery (as Linux's). A
//! retransmission that is the last segment sent, lost, still waits for the
//! timeout: nothing sent after it can be delivered (Linux's too).
//!
//! # Send order without per-segment records
//!
//! The send buffer is a ring and the scoreboard holds ranges: nothing
//! remembers when each segment went. RACK does not need it for data sent
//! once: that leaves in sequence order, so "sent after" is "higher in
//! sequence", which the scoreboard already tells (a hole below SACKed data
//! was sent before it). Only retransmissions break the order, and they are
//! few; each is remembered ([`Resent`], 12 bytes) with its *fence*, the
//! highest sequence number sent when it went (Linux's older
//! `tcp_mark_lost_retrans` kept that one number per retransmission). A
//! retransmission is sent after every byte below its fence and before
//! every byte above it, and the records keep the order of retransmissions
//! among themselves. So a retransmission still missing is lost when the
//! peer holds data above its fence (new data sent after it), or all of a
//! retransmission recorded after it ([`Rack::detect`]).
//!
//! [`RESENT_SLOTS`] records cover the retransmissions in flight of a
//! recovery: random loss leaves one or two holes a window. Past that, the
//! two oldest records merge (their span, the later fence): a merged record
//! is taken for delivered only once all of it is, and for lost only on
//! evidence of data sent after both halves, so merging can only make a
//! loss found later (or by the timeout), never a loss found that was not
//! one. The state is 76 bytes a socket (`size_of::<Socket>()` 840 -> 912),
//! none of it allocated. Send times for every segment in flight (Linux
//! keeps them in each `sk_buff`) would take kilobytes a busy flow, for the
//! same answers on paths that keep order.
//!
//! # The reordering window and the timer
//!
//! RACK waits `reo_wnd` past a segment's own round trip before calling it
//! lost ([`Rack::reo_wnd`], RFC 8985 6.2 step 4): a quarter of the least
//! round trip seen, times a multiplier that D-SACKs raise (spurious
//! retransmissions: the window was too short) and that comes back to one
//! after 16 recoveries without one, at most SRTT; none in a recovery, nor
//! with three segments SACKed, until reordering was seen (a hole below
//! SACKed data filled by a segment sent once: not one a timeout's, a
//! rewind's or a probe's resending may have filled,
//! [`Rack::sent_once_from`]). Without send times, the wait runs from the
//! ACK that first showed the later segment delivered:
//! RACK's deadline (the hole's send time, plus the later segment's round
//! trip, plus `reo_wnd`) is no later than that, and equal for segments
//! sent back to back, so the window is never cut short.
//!
//! Outside a recovery this cures short flights: a loss with fewer than
//! three segments behind it got no fast retransmit, and waited for the
//! tail loss probe (2 SRTT) to find the SACKed data above it. Now any
//! SACKed data above the oldest byte arms the RACK timer at `reo_wnd`; it
//! is the tail loss probe's slot (`Timer::LossProbe`), which already
//! starts a fast retransmit when it fires with data SACKed. Meanwhile a
//! large flight lets out no limited transmit ([`LARGE_FLIGHT`]). In a
//! recovery the same slot holds
//! retransmissions found overtaken while reordering is allowed for
//! ([`Rack::detect`] returns the deadline).
//!
//! Retransmissions found lost are resent before any other hole
//! ([`Rack::next_lost`]), and leave the `pipe` until then
//! ([`Rack::lost_bytes`]); resending the oldest byte restarts the
//! retransmission timer (Linux's `tcp_xmit_retransmit_queue`: run from the
//! lost copy, it fired with the new one on its way). A timeout or a rewind
//! resends everything and forgets the records ([`Rack::forget_flight`]);
//! the reordering state lives as long as the connection.

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpSeqNumber;

use crate::sack::{Scoreboard, SACK_SLOTS};

/// Retransmissions remembered at once (see the module docs).
pub(crate) const RESENT_SLOTS: usize = 4;

/// The least flight, in segments, whose duplicate ACKs let out no
/// limited transmit (RFC 3042) while RACK's timer runs: the fast
/// retransmit when it fires takes that segment's place. Both went before,
/// one segment more than the ACKs made room for, and when a queue had
/// just overflowed the retransmission was dropped in turn
/// (`sal/tests/sim_tcp_loss.rs`, 64 transfers at 1 %: the longest stall
/// of most went from 0.45 s to 0.72 s). A large flight is where that queue
/// is, and where more duplicate ACKs come soon; a small one keeps it, for
/// its ACK clock: suppressed at any flight, 64 transfers of
/// `tests/heavy_loss.rs` at 3 % (200-byte segments, a queue that never
/// overflows) took 3.69 s at the median instead of 3.33 s; from 16
/// segments, 3.47 s, and the stalls above are gone.
pub(crate) const LARGE_FLIGHT: usize = 16;

/// Recoveries a raised reordering window outlives without a D-SACK
/// (Linux's `TCP_RACK_RECOVERY_THRESH`).
const REO_WND_PERSIST: u8 = 16;

/// The least reordering window outside a recovery: the clock counts
/// whole milliseconds, and a least round trip of 0 is one under a
/// millisecond, not none.
const MIN_REO_WND: Duration = Duration::from_millis(1);

/// The bytes of `[from, to)` the peer has not SACKed (none if empty).
pub(crate) fn holes(board: &Scoreboard, from: TcpSeqNumber, to: TcpSeqNumber) -> usize {
    if from < to {
        (to - from).saturating_sub(board.sacked_in(from, to))
    } else {
        0
    }
}

/// A retransmission in flight: `[start, end)` resent when the highest
/// sequence number sent was `fence`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Resent {
    start: TcpSeqNumber,
    end: TcpSeqNumber,
    fence: TcpSeqNumber,
}

impl Resent {
    /// Whether the peer holds all of it (cumulatively or SACKed).
    fn delivered(&self, una: TcpSeqNumber, board: &Scoreboard) -> bool {
        let start = self.start.max(una);
        start >= self.end || board.sacked_in(start, self.end) == self.end - start
    }
}

/// A socket's RACK state (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rack {
    /// Retransmissions in flight, in the order they were sent.
    resent: [Resent; RESENT_SLOTS],
    len: u8,
    /// Retransmissions found lost and not yet resent: the holes of
    /// `[lost_from, lost_to)` outside the records (empty when
    /// `lost_from >= lost_to`).
    lost_from: TcpSeqNumber,
    lost_to: TcpSeqNumber,
    /// The first `waiting` records were found overtaken at `waiting_since`
    /// (the clock's milliseconds, wrapping) and wait out the reordering
    /// window.
    waiting_since: u32,
    waiting: u8,
    /// The first `overtaken` records (`waiting` or more) were found sent
    /// before data the peer holds; those past `waiting` wait next. What
    /// overtook them may be gone from the records by then.
    overtaken: u8,
    /// RACK.reord: reordering was seen.
    reord: bool,
    /// Bytes below `resent_to` may have been sent more than once (a
    /// timeout's, a rewind's or a recovery's resending, a probe), until
    /// the cumulative ACK reaches it (valid while `resent_open`): a hole
    /// there filled is no sign of reordering.
    resent_to: TcpSeqNumber,
    resent_open: bool,
    /// RACK.reo_wnd_mult and the recoveries it is kept for.
    reo_wnd_mult: u8,
    reo_wnd_persist: u8,
    /// RACK.dsack_round: the window is raised once a round trip, until
    /// the cumulative ACK passes this (valid when `dsack_round_open`).
    dsack_round_open: bool,
    dsack_round: TcpSeqNumber,
}

impl Default for Rack {
    fn default() -> Self {
        Rack {
            resent: [Resent::default(); RESENT_SLOTS],
            len: 0,
            lost_from: TcpSeqNumber::default(),
            lost_to: TcpSeqNumber::default(),
            waiting_since: 0,
            waiting: 0,
            overtaken: 0,
            reord: false,
            resent_to: TcpSeqNumber::default(),
            resent_open: false,
            reo_wnd_mult: 1,
            reo_wnd_persist: 0,
            dsack_round_open: false,
            dsack_round: TcpSeqNumber::default(),
        }
    }
}

/// The clock's milliseconds, wrapping (as `crate::rtt` keeps send times).
fn millis(now: Instant) -> u32 {
    now.total_millis() as u32
}

impl Rack {
    fn records(&self) -> &[Resent] {
        &self.resent[..usize::from(self.len)]
    }

    /// `[start, end)` was resent while the highest sequence number sent
    /// was `fence`. A resend of lost retransmissions moves past them.
    pub(crate) fn on_resent(
        &mut self,
        start: TcpSeqNumber,
        end: TcpSeqNumber,
        fence: TcpSeqNumber,
    ) {
        if start >= end {
            return;
        }
        if self.lost_from <= start && start < self.lost_to {
            self.lost_from = end;
        }
        if usize::from(self.len) == RESENT_SLOTS {
            // Merge the two oldest (see the module docs).
            let (a, b) = (self.resent[0], self.resent[1]);
            self.resent[0] = Resent {
                start: a.start.min(b.start),
                end: a.end.max(b.end),
                fence: a.fence.max(b.fence),
            };
            self.resent.copy_within(2.., 1);
            self.len -= 1;
            // A merged record waits, or is overtaken, only if both
            // halves were.
            self.waiting = self.waiting.saturating_sub(1);
            self.overtaken = self.overtaken.saturating_sub(1);
        }
        self.resent[usize::from(self.len)] = Resent { start, end, fence };
        self.len += 1;
    }

    /// Forget the flight: a timeout or a rewind resends everything, and a
    /// recovery's end leaves nothing resent in flight.
    pub(crate) fn forget_flight(&mut self) {
        self.len = 0;
        self.waiting = 0;
        self.overtaken = 0;
        self.lost_to = self.lost_from;
    }

    /// A recovery starts: a reordering window raised by D-SACKs lasts
    /// [`REO_WND_PERSIST`] of them (RFC 8985 6.2 step 4).
    pub(crate) fn on_recovery(&mut self) {
        if self.reo_wnd_persist > 0 {
            self.reo_wnd_persist -= 1;
        } else {
            self.reo_wnd_mult = 1;
        }
    }

    /// Reordering was seen: a segment sent once arrived after one sent
    /// after it. The reordering window applies from now on, in a recovery
    /// too.
    pub(crate) fn on_reordering(&mut self) {
        if !self.reord {
            net_debug!("RACK: reordering seen, losses wait for the reordering window");
        }
        self.reord = true;
    }

    /// Bytes up to `end` were sent again (any retransmission: see
    /// [`sent_once_from`](Self::sent_once_from)).
    pub(crate) fn on_sent_again(&mut self, end: TcpSeqNumber) {
        if !self.resent_open || end > self.resent_to {
            self.resent_to = end;
        }
        self.resent_open = true;
    }

    /// Where the data sent only once begins, at or above the cumulative
    /// ACK `una`: only a hole filled there shows reordering (RFC 8985 6.2
    /// step 2, Linux's `tcp_check_sack_reordering` looks at segments never
    /// retransmitted). A timeout's resending fills the holes it finds, and
    /// its copies arrive after data sent once before them.
    pub(crate) fn sent_once_from(&self, una: TcpSeqNumber) -> TcpSeqNumber {
        if self.resent_open && self.resent_to > una {
            self.resent_to
        } else {
            una
        }
    }

    /// The cumulative ACK reached `una`: bytes resent below it are done
    /// with, and so is the D-SACK round trip it passed (each mark, once
    /// passed, is dropped: compared later, one more than 2 GiB behind
    /// would pass for ahead, sequence numbers wrapping).
    pub(crate) fn on_ack(&mut self, una: TcpSeqNumber) {
        if self.resent_open && self.resent_to <= una {
            self.resent_open = false;
        }
        if self.dsack_round_open && self.dsack_round <= una {
            self.dsack_round_open = false;
        }
    }

    /// Whether reordering was seen (RACK.reord).
    pub(crate) fn reord_seen(&self) -> bool {
        self.reord
    }

    /// A D-SACK arrived (RFC 2883): a retransmission was spurious. The
    /// window grows by a quarter of the least round trip, once a round
    /// trip (until the cumulative ACK `una` passes what was sent then,
    /// `snd_nxt`), and lasts [`REO_WND_PERSIST`] recoveries. It is no
    /// sign of reordering by itself (RFC 8985 6.2, Linux): a timeout that
    /// fired early resends what arrives anyway.
    pub(crate) fn on_dsack(&mut self, una: TcpSeqNumber, snd_nxt: TcpSeqNumber) {
        if self.dsack_round_open && una < self.dsack_round {
            return;
        }
        self.reo_wnd_mult = self.reo_wnd_mult.saturating_add(1);
        self.reo_wnd_persist = REO_WND_PERSIST;
        self.dsack_round_open = true;
        self.dsack_round = snd_nxt;
    }

    /// RACK.reo_wnd (RFC 8985 6.2 step 4): `min_rtt_ms` the least round
    /// trip seen, `srtt_ms` the smoothed one (`None` before a sample: no
    /// window, and no timer, see [`Rack::detect`]'s caller),
    /// `in_recovery`, and `dup_thresh` whether three segments' worth is
    /// SACKed.
    pub(crate) fn reo_wnd(
        &self,
        min_rtt_ms: Option<u32>,
        srtt_ms: Option<u32>,
        in_recovery: bool,
        dup_thresh: bool,
    ) -> Duration {
        if !self.reord && (in_recovery || dup_thresh) {
            return Duration::ZERO;
        }
        let (Some(min_rtt), Some(srtt)) = (min_rtt_ms, srtt_ms) else {
            return MIN_REO_WND;
        };
        let quarter_us = u64::from(min_rtt) * 1000 / 4;
        let wnd = Duration::from_micros(quarter_us * u64::from(self.reo_wnd_mult));
        wnd.min(Duration::from_millis(srtt.into())).max(MIN_REO_WND)
    }

    /// On an ACK (cumulative ACK `una`, the scoreboard up to date) in a
    /// recovery: forget the retransmissions delivered, and find those
    /// overtaken, i.e. sent before data the peer holds. With `reo_wnd`
    /// zero they are lost at once; else they are once it has passed since
    /// they were found overtaken. Returns when to look again (the RACK
    /// timer), if some wait.
    pub(crate) fn detect(
        &mut self,
        now: Instant,
        una: TcpSeqNumber,
        board: &Scoreboard,
        reo_wnd: Duration,
    ) -> Option<Instant> {
        if self.lost_to <= una {
            self.lost_to = self.lost_from;
        }
        let highest = board.highest();
        // How many of the oldest records were sent before something
        // delivered: all before the newest one delivered, and those
        // whose fence the peer's SACKed data passes (fences only grow).
        // Those found so before stay so (what overtook them may be gone
        // from the records).
        let mut overtaken_to = usize::from(self.overtaken.max(self.waiting));
        for (i, r) in self.records().iter().enumerate() {
            if r.delivered(una, board) || highest.is_some_and(|h| h > r.fence) {
                overtaken_to = i + 1;
            }
        }
        // Drop the delivered ones; count the overtaken ones left, and those
        // of them that were already waiting.
        let (mut kept, mut overtaken, mut was_waiting) = (0, 0, 0);
        for i in 0..usize::from(self.len) {
            let r = self.resent[i];
            if r.delivered(una, board) {
                continue;
            }
            if i < overtaken_to {
                overtaken += 1;
                if i < usize::from(self.waiting) {
                    was_waiting += 1;
                }
            }
            self.resent[kept] = r;
            kept += 1;
        }
        self.len = kept as u8;
        let now_ms = millis(now);
        let waited = Duration::from_millis(now_ms.wrapping_sub(self.waiting_since).into());
        let lost = if reo_wnd == Duration::ZERO {
            overtaken
        } else if was_waiting > 0 && waited >= reo_wnd {
            was_waiting
        } else {
            0
        };
        for i in 0..lost {
            let r = self.resent[i];
            net_debug!(
                "RACK: the retransmission of {}..{} was lost",
                r.start,
                r.end
            );
            self.mark_lost(r.start.max(una), r.end);
        }
        self.resent.copy_within(lost..kept, 0);
        self.len -= lost as u8;
        let left = overtaken - lost;
        self.overtaken = left as u8;
        if left == 0 {
            self.waiting = 0;
            return None;
        }
        if lost > 0 || was_waiting == 0 {
            // A wait from now. Records overtaken while others wait join
            // the next wait: theirs is never cut short.
            self.waiting_since = now_ms;
            self.waiting = left as u8;
        } else {
            self.waiting = was_waiting as u8;
        }
        let waited = Duration::from_millis(now_ms.wrapping_sub(self.waiting_since).into());
        Some(now + (reo_wnd - waited.min(reo_wnd)))
    }

    /// Add `[start, end)` to the lost retransmissions.
    fn mark_lost(&mut self, start: TcpSeqNumber, end: TcpSeqNumber) {
        if start >= end {
            return;
        }
        if self.lost_from >= self.lost_to {
            self.lost_from = start;
            self.lost_to = end;
        } else {
            self.lost_from = self.lost_from.min(start);
            self.lost_to = self.lost_to.max(end);
        }
    }

    /// Whether some retransmission was found lost and is not resent yet.
    pub(crate) fn has_lost(&self) -> bool {
        self.lost_from < self.lost_to
    }

    /// The lost holes from `from` on: the next hole of the scoreboard in
    /// the lost range, skipping retransmissions still in flight, and
    /// below `high_rxt` (RFC 6675's HighRxt: holes above it were never
    /// resent, they are the recovery's own business).
    fn lost_hole(
        &self,
        from: TcpSeqNumber,
        board: &Scoreboard,
        high_rxt: TcpSeqNumber,
    ) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
        let mut pos = from.max(self.lost_from);
        let to = self.lost_to.min(high_rxt);
        // Each turn passes a SACKed range or a record.
        for _ in 0..=SACK_SLOTS + RESENT_SLOTS {
            if pos >= to {
                return None;
            }
            let (start, end) = board.next_hole(pos)?;
            if start >= to {
                return None;
            }
            let end = end.min(to);
            match self
                .records()
                .iter()
                .filter(|r| r.start < end && start < r.end)
                .map(|r| (r.start, r.end))
                .min_by_key(|&(s, _)| s - start.min(s))
            {
                None => return Some((start, end)),
                Some((rs, _)) if rs > start => return Some((start, rs)),
                Some((_, re)) => pos = re,
            }
        }
        None
    }

    /// The next lost retransmission to resend, at or above the cumulative
    /// ACK `una` and below `high_rxt`.
    pub(crate) fn next_lost(
        &self,
        una: TcpSeqNumber,
        board: &Scoreboard,
        high_rxt: TcpSeqNumber,
    ) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
        if !self.has_lost() {
            return None;
        }
        self.lost_hole(una, board, high_rxt)
    }

    /// Bytes of lost retransmissions not yet resent (see
    /// [`next_lost`](Self::next_lost)): no longer in the network (RFC
    /// 6675's `pipe` counted them once resent).
    pub(crate) fn lost_bytes(
        &self,
        una: TcpSeqNumber,
        board: &Scoreboard,
        high_rxt: TcpSeqNumber,
    ) -> usize {
        let mut bytes = 0;
        let mut pos = una;
        for _ in 0..=SACK_SLOTS + RESENT_SLOTS {
            match self.next_lost(pos, board, high_rxt) {
                Some((start, end)) => {
                    bytes += end - start;
                    pos = end;
                }
                None => break,
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sack::tests::{board, s};

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms as i64)
    }

    #[test]
    fn a_retransmission_is_lost_once_a_later_one_is_delivered() {
        let mut rack = Rack::default();
        // Holes 100..200 and 300..400 below SACKed data; 1000 sent.
        rack.on_resent(s(100), s(200), s(1000));
        rack.on_resent(s(300), s(400), s(1000));
        let b = board(&[(200, 300), (400, 1000)]);
        assert_eq!(rack.detect(at(0), s(100), &b, Duration::ZERO), None);
        assert!(!rack.has_lost());
        // The second arrives, the first does not.
        let b = board(&[(200, 1000)]);
        assert_eq!(rack.detect(at(10), s(100), &b, Duration::ZERO), None);
        assert_eq!(
            rack.next_lost(s(100), &b, s(10_000)),
            Some((s(100), s(200)))
        );
        assert_eq!(rack.lost_bytes(s(100), &b, s(10_000)), 100);
        // Resent: no longer lost, and in flight again.
        rack.on_resent(s(100), s(200), s(1000));
        assert_eq!(rack.next_lost(s(100), &b, s(10_000)), None);
        assert_eq!(rack.lost_bytes(s(100), &b, s(10_000)), 0);
    }

    #[test]
    fn a_retransmission_is_lost_once_data_sent_after_it_is_delivered() {
        let mut rack = Rack::default();
        rack.on_resent(s(100), s(200), s(1000));
        // New data 1000..1100 went after it, and arrived.
        let b = board(&[(200, 1000)]);
        assert_eq!(rack.detect(at(0), s(100), &b, Duration::ZERO), None);
        assert!(!rack.has_lost());
        let b = board(&[(200, 1100)]);
        rack.detect(at(5), s(100), &b, Duration::ZERO);
        assert_eq!(
            rack.next_lost(s(100), &b, s(10_000)),
            Some((s(100), s(200)))
        );
    }

    #[test]
    fn a_retransmission_in_flight_is_not_resent_with_a_lost_one_below_it() {
        let mut rack = Rack::default();
        rack.on_resent(s(100), s(200), s(1000));
        rack.on_resent(s(300), s(400), s(1000));
        rack.on_resent(s(500), s(600), s(1000));
        // The second arrived: the first is lost, the third in flight.
        let b = board(&[(200, 500), (600, 1000)]);
        rack.detect(at(0), s(100), &b, Duration::ZERO);
        assert_eq!(
            rack.next_lost(s(100), &b, s(10_000)),
            Some((s(100), s(200)))
        );
        rack.on_resent(s(100), s(200), s(1000));
        assert_eq!(rack.next_lost(s(100), &b, s(10_000)), None);
    }

    #[test]
    fn holes_never_resent_are_not_taken_for_lost_retransmissions() {
        let mut rack = Rack::default();
        // A merged record spans 100..500; the hole 300..400 above
        // HighRxt (300) was never resent.
        rack.on_resent(s(100), s(200), s(1000));
        rack.on_resent(s(200), s(300), s(1000));
        rack.mark_lost(s(100), s(500));
        rack.forget_flight();
        rack.mark_lost(s(100), s(500));
        let b = board(&[(400, 1000)]);
        assert_eq!(rack.next_lost(s(100), &b, s(300)), Some((s(100), s(300))));
        assert_eq!(rack.lost_bytes(s(100), &b, s(300)), 200);
    }

    #[test]
    fn overtaken_retransmissions_wait_out_the_reordering_window() {
        let mut rack = Rack::default();
        rack.on_resent(s(100), s(200), s(1000));
        rack.on_resent(s(300), s(400), s(1000));
        let b = board(&[(200, 1000)]);
        let wnd = Duration::from_millis(5);
        assert_eq!(rack.detect(at(10), s(100), &b, wnd), Some(at(15)));
        assert!(!rack.has_lost());
        // A later ACK does not push the deadline back.
        assert_eq!(rack.detect(at(12), s(100), &b, wnd), Some(at(15)));
        // The first arrives meanwhile: reordering, nothing lost.
        let mut early = rack;
        let filled = board(&[(100, 1000)]);
        assert_eq!(early.detect(at(13), s(100), &filled, wnd), None);
        assert!(!early.has_lost());
        // Else at the deadline it is lost.
        assert_eq!(rack.detect(at(15), s(100), &b, wnd), None);
        assert_eq!(
            rack.next_lost(s(100), &b, s(10_000)),
            Some((s(100), s(200)))
        );
    }

    #[test]
    fn a_retransmission_overtaken_while_another_waits_is_not_forgotten() {
        let mut rack = Rack::default();
        // Four holes resent, nothing new sent after them.
        for i in 0..4 {
            rack.on_resent(s(100 + 200 * i), s(200 + 200 * i), s(1000));
        }
        let wnd = Duration::from_millis(5);
        // The second arrives: the first waits from 10.
        let b = board(&[(200, 500), (600, 700), (800, 1000)]);
        assert_eq!(rack.detect(at(10), s(100), &b, wnd), Some(at(15)));
        // The fourth arrives: the third, sent before it, is overtaken too
        // (and waits once the first's wait is over).
        let b = board(&[(200, 500), (600, 1000)]);
        assert_eq!(rack.detect(at(12), s(100), &b, wnd), Some(at(15)));
        assert_eq!(rack.detect(at(15), s(100), &b, wnd), Some(at(20)));
        assert_eq!(rack.next_lost(s(100), &b, s(1000)), Some((s(100), s(200))));
        rack.on_resent(s(100), s(200), s(1000));
        // No news, and the third is lost at its own deadline.
        assert_eq!(rack.detect(at(20), s(100), &b, wnd), None);
        assert_eq!(rack.next_lost(s(100), &b, s(1000)), Some((s(500), s(600))));
    }

    #[test]
    fn a_dsack_after_more_than_2_gib_raises_the_window_again() {
        let mut rack = Rack::default();
        rack.on_dsack(s(0), s(1000));
        assert_eq!(rack.reo_wnd_mult, 2);
        // The cumulative ACK moves on, 1 GiB an ACK, past 2 GiB.
        let mut una = s(0);
        for _ in 0..3 {
            una += 1 << 30;
            rack.on_ack(una);
        }
        rack.on_dsack(una, una + 1000);
        assert_eq!(rack.reo_wnd_mult, 3);
    }

    #[test]
    fn past_capacity_the_oldest_records_merge_and_still_show_a_loss() {
        let mut rack = Rack::default();
        for i in 0..=RESENT_SLOTS as i32 {
            rack.on_resent(s(100 + 200 * i), s(200 + 200 * i), s(5000));
        }
        assert_eq!(usize::from(rack.len), RESENT_SLOTS);
        // The newest arrived alone: all older ones are lost.
        let newest = 100 + 200 * RESENT_SLOTS as i32;
        let mut b = board(&[(newest, newest + 100)]);
        for i in 0..=RESENT_SLOTS as i32 {
            b.add(s(200 + 200 * i), s(300 + 200 * i));
        }
        rack.detect(at(0), s(100), &b, Duration::ZERO);
        assert_eq!(rack.len, 0);
        assert_eq!(
            rack.next_lost(s(100), &b, s(10_000)),
            Some((s(100), s(200)))
        );
        assert_eq!(rack.lost_bytes(s(100), &b, s(10_000)), 100 * RESENT_SLOTS);
    }

    #[test]
    fn the_reordering_window_is_a_quarter_of_the_least_round_trip_raised_by_dsacks() {
        let mut rack = Rack::default();
        let (min, srtt) = (Some(40), Some(100));
        assert_eq!(
            rack.reo_wnd(min, srtt, false, false),
            Duration::from_millis(10)
        );
        assert_eq!(rack.reo_wnd(min, srtt, true, false), Duration::ZERO);
        assert_eq!(rack.reo_wnd(min, srtt, false, true), Duration::ZERO);
        assert_eq!(rack.reo_wnd(Some(0), srtt, false, false), MIN_REO_WND);
        rack.on_dsack(s(0), s(1000));
        assert_eq!(
            rack.reo_wnd(min, srtt, false, false),
            Duration::from_millis(20)
        );
        // No reordering seen yet: none in a recovery; then one there too.
        assert_eq!(rack.reo_wnd(min, srtt, true, false), Duration::ZERO);
        rack.on_reordering();
        assert_eq!(
            rack.reo_wnd(min, srtt, true, false),
            Duration::from_millis(20)
        );
        // Once a round trip.
        rack.on_dsack(s(500), s(2000));
        assert_eq!(rack.reo_wnd_mult, 2);
        rack.on_dsack(s(1000), s(3000));
        assert_eq!(rack.reo_wnd_mult, 3);
        // At most SRTT.
        assert_eq!(
            rack.reo_wnd(Some(200), srtt, false, false),
            Duration::from_millis(100)
        );
        for _ in 0..REO_WND_PERSIST {
            rack.on_recovery();
        }
        assert_eq!(rack.reo_wnd_mult, 3);
        rack.on_recovery();
        assert_eq!(rack.reo_wnd_mult, 1);
    }
}
