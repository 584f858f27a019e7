//! Round-trip time estimation and the retransmission timeout (RFC 6298).
//!
//! Forked from smoltcp 0.14.0 `src/socket/tcp.rs` (0BSD, see the crate docs).
//! Changed: the timeout's floor is Linux's rather than RFC 6298's (see
//! [`RTTE_MIN_MARGIN`]), a segment timed survives the retransmission of
//! others, a SACK of it is a sample, and a second is timed while the
//! timeout is backed off (see [`RttEstimator`]); logging goes through
//! `tracing`.

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpSeqNumber;

use crate::windowed_min::WindowedMin;

/// RFC 6298: (2.1) Until a round-trip time (RTT) measurement has been made for a
/// segment sent between the sender and receiver, the sender SHOULD
/// set RTO <- 1 second,
pub(crate) const RTTE_INITIAL_RTO: u32 = 1000;

/// The least margin over SRTT: RFC 6298's clock granularity G in
/// RTO <- SRTT + max (G, K*RTTVAR). sal-tcp: 200 ms, Linux's `TCP_RTO_MIN`,
/// which Linux applies the same way (`tcp_set_rto`: the variance term is at
/// least that); smoltcp had 5 ms, under a 1 s floor ([`RTTE_MIN_RTO`]).
///
/// With the 1 s floor every loss that fast retransmit cannot repair (a
/// retransmission lost in turn, a loss with too few segments behind it for
/// three duplicate ACKs, a hole left when a recovery ends) stalled a flow
/// for a second or more, doubled if it happened again before a fresh
/// round-trip sample: with the crate's other loss fixes in place, 13 and
/// 82 such stalls in 64 transfers of 2 MiB through 1 % and 3 % random
/// loss (`sal/tests/sim_tcp_loss.rs`), and 1 and 0 with this margin.
/// SRTT + 200 ms keeps a margin of several round trips on short paths,
/// where the jitter of delayed ACKs and of scheduling lives, and follows a
/// long path's own round trip. What it costs: when the round trip grows
/// faster than the estimator follows (a queue filling behind a slow link),
/// a timeout can fire while the segment is still on its way, a spurious
/// timeout that resends what is in flight and restarts from a one-segment
/// window; about one per 2 MiB transfer in those simulations (a 100 kB/s
/// link with a 0.4 s queue), against one per 10 with the 1 s floor.
pub(crate) const RTTE_MIN_MARGIN: u32 = 200;

/// K, according to RFC 6298
pub(crate) const RTTE_K: u32 = 4;

/// RFC 6298 (2.4): Whenever RTO is computed, if it is less than 1 second,
/// then the RTO SHOULD be rounded up to 1 second. sal-tcp: not below
/// 200 ms, as Linux (see [`RTTE_MIN_MARGIN`], which already keeps it
/// there). The first RTO, before any sample, is still 1 s (2.1).
pub(crate) const RTTE_MIN_RTO: u32 = 200;

// RFC 6298 (2.5) A maximum value MAY be placed on RTO provided it is at least 60
// seconds
pub(crate) const RTTE_MAX_RTO: u32 = 60_000;

/// Segments timed at once (see [`RttEstimator`]).
const TIMED: usize = 2;

/// A segment timed.
#[derive(Debug, Clone, Copy, Default)]
struct Timed {
    /// Its end.
    end: TcpSeqNumber,
    /// When it was sent, the clock's milliseconds (wrapping: a sample is
    /// far below the 49 days a wrap takes).
    sent: u32,
    /// Something was resent since: only its SACK is a sample.
    resent_since: bool,
}

/// The round trip and the timeout, from segments timed (the SAL's paths
/// carry no timestamps): one a flight, and none past a retransmission, as
/// smoltcp; but while the timeout is backed off, all the samples Linux
/// would take.
///
/// sal-tcp: only a sample ends the backoff (RFC 6298 5.5, Karn). While
/// backed off (or before the first sample), a retransmission of another
/// segment does not end the timing, the peer's SACK of a segment timed is
/// a sample, as Linux takes one from the oldest segment newly SACKed that
/// was sent once (`tcp_ack_update_rtt`'s `sack_rtt_us`), and a second
/// segment is timed. Karn's rule holds: resending a segment timed ends its
/// timing, and once anything was resent a cumulative ACK of it is no
/// sample (the ACK may have waited for the resent copy to fill a hole
/// below it; Linux's `FLAG_RETRANS_DATA_ACKED`), though its SACK still
/// is. A timeout or a rewind ends all timing (everything is resent, and
/// the scoreboard forgotten).
///
/// smoltcp dropped the timing on any retransmission. Under heavy loss
/// nearly every round trip has one, windows are a few segments, and
/// timeouts follow one another: at 20 % random loss each way with
/// 200-byte segments (`tests/heavy_loss.rs`, 64 transfers of 200 kB) the
/// timeout backed off to 56-60 s ([`RTTE_MAX_RTO`]) in most transfers,
/// which took 274 s (median) and 537 s (90th percentile), now 184 s and
/// 303 s; at 10 % the largest timeout was 29 s and the slowest transfer
/// 89 s, now 15 s and 50 s.
/// The backoff still grows through timeouts that follow one another
/// with nothing sent once getting through and acknowledged (a
/// retransmission lost, then the ACK of the next): no sample can come
/// from those, here as in Linux. Not backed off, the estimator is left as
/// it was: with these samples always taken, a receiver behind the 0.4 s
/// queue of `sal/tests/sim_lossy_paths.rs` waited 0.94 s for a lost
/// retransmission (the timeout had followed the queue's round trips,
/// which those samples measure during a recovery; the bound is 0.75 s),
/// and with two segments timed a flight always, 64 transfers of
/// `sim_tcp_loss.rs` through 1 % and 3 % loss had a longer 90th
/// percentile (22.43 s and 22.59 s against 22.37 s and 22.51 s); see also
/// `crate::hystart`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RttEstimator {
    /// true if we have made at least one rtt measurement.
    have_measurement: bool,
    // Using u32 instead of Duration to save space (Duration is i64)
    /// Smoothed RTT
    srtt: u32,
    /// RTT variance.
    rttvar: u32,
    /// Retransmission Time-Out
    rto: u32,
    /// The segments timed, oldest first: `timing` of them.
    timed: [Timed; TIMED],
    timing: u8,
    max_seq_sent: Option<TcpSeqNumber>,
    rto_count: u8,
    /// sal-tcp: the least sample of the last five minutes, for RACK's
    /// reordering window (`crate::rack`), as Linux's `tcp_min_rtt`.
    min_rtt: WindowedMin,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self {
            have_measurement: false,
            srtt: 0,   // ignored, will be overwritten on first measurement.
            rttvar: 0, // ignored, will be overwritten on first measurement.
            rto: RTTE_INITIAL_RTO,
            timed: [Timed::default(); TIMED],
            timing: 0,
            max_seq_sent: None,
            rto_count: 0,
            min_rtt: WindowedMin::default(),
        }
    }
}

impl RttEstimator {
    pub(crate) fn retransmission_timeout(&self) -> Duration {
        Duration::from_millis(self.rto as _)
    }

    pub(crate) fn smoothed_rtt(&self) -> u32 {
        if self.have_measurement {
            self.srtt
        } else {
            0
        }
    }

    /// sal-tcp: the smoothed round trip once a sample came, `None`
    /// before. Unlike [`smoothed_rtt`](Self::smoothed_rtt), a path of less
    /// than a millisecond, SRTT 0, is told from one not measured yet (the
    /// tail loss probe goes on the first, not on the second).
    pub(crate) fn srtt_sample(&self) -> Option<u32> {
        self.have_measurement.then_some(self.srtt)
    }

    /// sal-tcp: the least round trip sampled in the last five minutes
    /// (`crate::windowed_min`), `None` before a sample.
    pub(crate) fn min_rtt(&self) -> Option<u32> {
        self.min_rtt.get()
    }

    /// A round trip of `new_rtt` milliseconds, measured at `now`.
    pub(crate) fn sample(&mut self, now: Instant, new_rtt: u32) {
        self.min_rtt.update(now, new_rtt);
        if self.have_measurement {
            // RFC 6298 (2.3) When a subsequent RTT measurement R' is made, a host MUST set (...)
            let diff = (self.srtt as i32 - new_rtt as i32).unsigned_abs();
            self.rttvar = (self.rttvar * 3 + diff).div_ceil(4);
            self.srtt = (self.srtt * 7 + new_rtt).div_ceil(8);
        } else {
            // RFC 6298 (2.2) When the first RTT measurement R is made, the host MUST set (...)
            self.have_measurement = true;
            self.srtt = new_rtt;
            self.rttvar = new_rtt / 2;
        }

        // RFC 6298 (2.2), (2.3)
        let margin = RTTE_MIN_MARGIN.max(self.rttvar * RTTE_K);
        self.rto = (self.srtt + margin).clamp(RTTE_MIN_RTO, RTTE_MAX_RTO);

        self.rto_count = 0;

        tcp_trace!(
            "rtte: sample={:?} srtt={:?} rttvar={:?} rto={:?}",
            new_rtt,
            self.srtt,
            self.rttvar,
            self.rto
        );
    }

    pub(crate) fn on_send(&mut self, timestamp: Instant, seq: TcpSeqNumber) {
        if self
            .max_seq_sent
            .map(|max_seq_sent| seq > max_seq_sent)
            .unwrap_or(true)
        {
            self.max_seq_sent = Some(seq);
            // sal-tcp: a second while backed off, or before a sample.
            let most = if self.backed_off() { TIMED } else { 1 };
            let timing = usize::from(self.timing);
            if timing < most {
                self.timed[timing] = Timed {
                    end: seq,
                    sent: timestamp.total_millis() as u32,
                    resent_since: false,
                };
                self.timing += 1;
                tcp_trace!("rtte: sampling at seq={:?}", seq);
            }
        }
    }

    pub(crate) fn on_ack(&mut self, timestamp: Instant, seq: TcpSeqNumber) {
        if let Some(sent) = self.finish(|t| seq >= t.end, |t| !t.resent_since) {
            self.sample(
                timestamp,
                (timestamp.total_millis() as u32).wrapping_sub(sent),
            );
        }
    }

    /// sal-tcp: the peer SACKed `[left, right)`: while backed off, the
    /// round trip of the oldest segment timed whose last byte that holds
    /// (sent once: the timing of one resent has ended).
    pub(crate) fn on_sack(&mut self, timestamp: Instant, left: TcpSeqNumber, right: TcpSeqNumber) {
        if !self.backed_off() {
            return;
        }
        if let Some(sent) = self.finish(|t| left < t.end && t.end <= right, |_| true) {
            self.sample(
                timestamp,
                (timestamp.total_millis() as u32).wrapping_sub(sent),
            );
        }
    }

    /// sal-tcp: `[start, end)` was resent to repair a loss the peer
    /// reported (a fast retransmission, a SACK hole). Not backed off, all
    /// timing ends (smoltcp's way). Backed off, the timing of a segment
    /// whose last byte that holds ends (Karn); the others are still a
    /// sample when SACKed, not when cumulatively ACKed.
    pub(crate) fn on_resend(&mut self, start: TcpSeqNumber, end: TcpSeqNumber) {
        if !self.backed_off() {
            self.on_retransmit();
            return;
        }
        self.finish(|t| start < t.end && t.end <= end, |_| false);
        for timed in &mut self.timed {
            timed.resent_since = true;
        }
    }

    /// sal-tcp: whether the timeout is backed off (since the last sample),
    /// or no sample came yet: only a sample ends that, and the estimator
    /// then takes all it may (see [`RttEstimator`]).
    fn backed_off(&self) -> bool {
        self.rto_count > 0 || !self.have_measurement
    }

    /// sal-tcp: stop timing the segments `done` holds; the send time of
    /// the oldest of them that `clean` accepts.
    fn finish(
        &mut self,
        done: impl Fn(&Timed) -> bool,
        clean: impl Fn(&Timed) -> bool,
    ) -> Option<u32> {
        let mut sent = None;
        let mut kept = 0;
        for i in 0..usize::from(self.timing) {
            let timed = self.timed[i];
            if !done(&timed) {
                self.timed[kept] = timed;
                kept += 1;
            } else if sent.is_none() && clean(&timed) {
                sent = Some(timed.sent);
            } else {
                tcp_trace!("rtte: no sample from an ACK that may be a retransmission's");
            }
        }
        self.timing = kept as u8;
        sent
    }

    pub(crate) fn on_rto(&mut self) {
        // RFC 6298 (5.5) The host MUST set RTO <- RTO * 2 ("back off the timer").  The
        // maximum value discussed in (2.5) above may be used to provide
        // an upper bound to this doubling operation.
        self.rto = (self.rto * 2).min(RTTE_MAX_RTO);
        tcp_trace!("rtte: doubling rto to {:?}", self.rto);

        // RFC 6298: a TCP implementation MAY clear SRTT and RTTVAR after
        // backing off the timer multiple times as it is likely that the current
        // SRTT and RTTVAR are bogus in this situation.  Once SRTT and RTTVAR
        // are cleared, they should be initialized with the next RTT sample
        // taken per (2.2) rather than using (2.3).
        self.rto_count += 1;
        if self.rto_count >= 3 {
            self.rto_count = 0;
            self.have_measurement = false;
            tcp_trace!("rtte: too many retransmissions, clearing srtt, rttvar.");
        }
    }

    /// sal-tcp: the flow moved to another path (`Socket::new_path`): all
    /// that was measured is forgotten, as RFC 9000 (9.4) resets a new
    /// path's estimator: no sample, the initial timeout (1 s, RFC 6298
    /// 2.1), no backoff, no least round trip. The highest byte sent is
    /// kept: only data sent after it is timed, not the old path's flight
    /// resent (Karn).
    pub(crate) fn new_path(&mut self) {
        *self = RttEstimator {
            max_seq_sent: self.max_seq_sent,
            ..RttEstimator::default()
        };
    }

    /// The timing ends: everything in flight is resent (a timeout, a
    /// rewind), or when the segment timed left is unknown.
    pub(crate) fn on_retransmit(&mut self) {
        if self.timing > 0 {
            tcp_trace!("rtte: abort sampling due to retransmit");
        }
        self.timing = 0;
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::rack::Rack;

    #[test]
    fn the_least_round_trip_follows_a_path_whose_round_trip_rose() {
        // 10 ms for a minute, then 100 ms for good (a queue that stays):
        // five minutes on, RACK's reordering window is a quarter of the
        // 100 ms, no longer of the 10 ms (it was for the connection's
        // life).
        let mut r = RttEstimator::default();
        let mut now = Instant::ZERO;
        for rtt in [10; 60].into_iter().chain([100; 400]) {
            r.sample(now, rtt);
            now += Duration::from_secs(1);
        }
        assert_eq!(r.min_rtt(), Some(100));
        let reo_wnd = Rack::default().reo_wnd(r.min_rtt(), r.srtt_sample(), false, false);
        assert_eq!(reo_wnd, Duration::from_millis(25));
    }
}
