//! Round-trip time estimation and the retransmission timeout (RFC 6298).
//!
//! Forked from smoltcp 0.14.0 `src/socket/tcp.rs` (0BSD, see the crate docs).
//! Changed: the timeout's floor is Linux's rather than RFC 6298's (see
//! [`RTTE_MIN_MARGIN`]), and logging goes through `tracing`.

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpSeqNumber;

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
    timestamp: Option<(Instant, TcpSeqNumber)>,
    max_seq_sent: Option<TcpSeqNumber>,
    rto_count: u8,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self {
            have_measurement: false,
            srtt: 0,   // ignored, will be overwritten on first measurement.
            rttvar: 0, // ignored, will be overwritten on first measurement.
            rto: RTTE_INITIAL_RTO,
            timestamp: None,
            max_seq_sent: None,
            rto_count: 0,
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

    pub(crate) fn sample(&mut self, new_rtt: u32) {
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
            if self.timestamp.is_none() {
                self.timestamp = Some((timestamp, seq));
                tcp_trace!("rtte: sampling at seq={:?}", seq);
            }
        }
    }

    pub(crate) fn on_ack(&mut self, timestamp: Instant, seq: TcpSeqNumber) {
        match self.timestamp {
            Some((sent_timestamp, sent_seq)) if seq >= sent_seq => {
                self.sample((timestamp - sent_timestamp).total_millis() as u32);
                self.timestamp = None;
            }
            _ => {}
        }
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

    pub(crate) fn on_retransmit(&mut self) {
        if self.timestamp.is_some() {
            tcp_trace!("rtte: abort sampling due to retransmit");
        }
        self.timestamp = None;
    }
}
