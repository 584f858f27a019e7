//! Congestion control: the controller trait and the three algorithms.
//!
//! Forked from smoltcp 0.14.0 `src/socket/tcp/congestion.rs` and
//! `congestion/{cubic,reno,no_control}.rs` (0BSD, see the crate docs).
//! Changed: both algorithms are always compiled (no cargo features), the
//! choice is a [`CongestionControl`] value, and `defmt` support is gone.

use smoltcp::time::Instant;

use crate::rtt::RttEstimator;
use crate::undo::Prior;

/// sal-tcp: the congestion window an undo restores (`crate::undo`): the
/// larger of the window now (without fast recovery's inflation) and the
/// one before the reduction, within the peer's window `rwnd`, and at least
/// a segment.
pub(crate) fn undone_window(now: usize, prior: usize, rwnd: usize, mss: usize) -> usize {
    now.max(prior).min(rwnd).max(mss)
}

/// sal-tcp: the initial window for segments of `mss` bytes: RFC 6928's
/// min(10 MSS, max(2 MSS, 14600)), ten of the SAL's 1448-byte segments,
/// as Linux starts. smoltcp started at 2048 bytes whatever the segment
/// size: one segment of the SAL's, and a 14 KB answer took four round
/// trips more than on Linux. Each connection starts there once the
/// handshake has fixed the segment size
/// ([`Controller::set_initial_window`]), and a rewind restarts there at
/// most, as a send after an idle period does in steps
/// ([`restart_window`]): RFC 9000 (9.4) restarts a new path from QUIC's
/// initial window, which is the same ten segments (RFC 9002 7.2), and
/// Linux restarts a flow that was silent from it (`tcp_cwnd_restart`).
/// The rewind used RFC 3390's three segments before; RFC 5681 (4.1)
/// restarts from the initial window, whichever that is.
pub(crate) fn initial_window(mss: usize) -> usize {
    (10 * mss).min((2 * mss).max(14600))
}

/// sal-tcp: the slow start threshold a restart leaves (a rewind, or a
/// send after an idle period): at least 3/4 of the
/// window given up, so that slow start regrows most of the way to what
/// the path carried before (Linux's `tcp_current_ssthresh`, which its
/// restart after an idle period, `tcp_cwnd_restart`, keeps). In fast
/// recovery, `ssthresh` as it is, as there: the window is inflated by the
/// duplicate ACKs, and 3/4 of it undid the loss response (a rewind in
/// fast recovery raised ssthresh from half the flight to 3/4 of the
/// flight and its duplicates).
pub(crate) fn restart_ssthresh(ssthresh: usize, cwnd: usize, in_fast_recovery: bool) -> usize {
    if in_fast_recovery {
        return ssthresh;
    }
    ssthresh.max(cwnd / 4 * 3)
}

/// sal-tcp: the window a restart leaves ([`Controller::on_restart`]):
/// `cwnd` halved `halvings` times, but not below the restart window,
/// min(initial window, cwnd) (RFC 5681 4.1). Linux's `tcp_cwnd_restart`,
/// which halves once for each retransmission timeout the flow sent
/// nothing, down to that window.
pub(crate) fn restart_window(cwnd: usize, mss: usize, halvings: u32) -> usize {
    let restart = initial_window(mss).min(cwnd);
    cwnd.checked_shr(halvings).unwrap_or(0).max(restart)
}

/// sal-tcp: RFC 9406's L for a sender that does not pace: an ACK grows
/// the window in slow start by the bytes it newly acknowledges, up to
/// this many segments.
///
/// smoltcp grew it by one segment an ACK at most (RFC 5681 3.1's
/// min(N, SMSS)), so a receiver that acknowledges a whole flight with
/// one ACK (its segments arrive together: a fast path, receive batching,
/// stretch ACKs) let the window grow by a segment a round trip, and even
/// delayed ACKs by half the flight: a 64 KiB answer took five round
/// trips from the connect where Linux takes four
/// (`sal/tests/sim_short_responses.rs`). Linux adds all the segments an
/// ACK acknowledges (`tcp_slow_start`); RFC 3465's two segments (L = 2)
/// still grow the window by only two segments a flight there. RFC 9406's
/// eight, for a sender without pacing as sal-tcp is, bounds what one ACK
/// adds to the burst it lets out, and an ACK of up to eight segments
/// grows the window as much as on Linux. The cost on a deep queue is in
/// the crate docs (Changes: slow start by bytes acknowledged).
pub(crate) const SLOW_START_ACK_LIMIT: usize = 8;

/// sal-tcp: slow start's new window after an ACK of `acked` new bytes
/// (RFC 3465 byte counting, up to [`SLOW_START_ACK_LIMIT`] segments of
/// `mss`): a [`CSS_GROWTH_DIVISOR`](crate::hystart::CSS_GROWTH_DIVISOR)th
/// of that in HyStart++'s Conservative Slow Start (RFC 9406 4.2), and no
/// further than `ssthresh`, where congestion avoidance takes over (as
/// Linux's `tcp_slow_start`).
pub(crate) fn slow_start(
    cwnd: usize,
    ssthresh: usize,
    mss: usize,
    acked: usize,
    conservative: bool,
) -> usize {
    let growth = acked.min(SLOW_START_ACK_LIMIT.saturating_mul(mss));
    let growth = if conservative {
        growth / crate::hystart::CSS_GROWTH_DIVISOR
    } else {
        growth
    };
    cwnd.saturating_add(growth).min(ssthresh.max(cwnd))
}

pub(crate) mod cubic;
pub(crate) mod no_control;
pub(crate) mod reno;

/// A congestion control algorithm.
#[derive(Debug, Copy, Clone, Eq, PartialEq, Default)]
pub enum CongestionControl {
    /// No congestion control: send as much as the peer's window allows.
    None,
    /// Classic Reno (RFC 5681): slow start, additive increase, halving on loss.
    Reno,
    /// Cubic (RFC 9438), the default of Linux, Windows and macOS. Uses `f64`.
    #[default]
    Cubic,
}

#[allow(unused_variables)]
pub(crate) trait Controller {
    /// Returns the number of bytes that can be sent.
    fn window(&self) -> usize;

    /// sal-tcp: the window a SACK-based recovery (RFC 6675) measures its
    /// `pipe` against. In fast recovery NewReno inflates `window` by a
    /// segment for each of the three duplicate ACKs and each one after
    /// (RFC 6582), standing for segments that left the network; the pipe
    /// already leaves out what the peer SACKed, so it is measured against
    /// the window without the inflation (RFC 6675 5: cwnd = ssthresh).
    fn recovery_window(&self) -> usize {
        self.window()
    }

    /// Set the remote window size.
    fn set_remote_window(&mut self, remote_window: usize) {}

    fn on_ack(&mut self, now: Instant, len: usize, in_flight: usize, rtt: &RttEstimator) {}

    /// Fired on each duplicate ack received, after `on_loss` has been called.
    fn on_dup_ack(&mut self, now: Instant, len: usize, in_flight: usize) {}

    /// Fired on a retransmission timeout.
    fn on_rto(&mut self, now: Instant, in_flight: usize) {}

    /// Fired after an inferred loss via three duplicate acks.
    fn on_loss(&mut self, now: Instant, in_flight: usize) {}

    /// sal-tcp: the window restarts, halved `halvings` times down to the
    /// restart window at most ([`restart_window`]): slow start regrows it
    /// towards what the path carried (ssthresh is kept at least 3/4 of
    /// the window given up, or as it is in fast recovery,
    /// [`restart_ssthresh`]), and Conservative Slow
    /// Start and any fast recovery end. Not a congestion loss. The socket
    /// restarts when it rewinds (`Socket::rewind`: the path went silent
    /// and answered again, or it is a new one), with `u32::MAX`: from the
    /// restart window; and when it sends after sending nothing for more
    /// than a retransmission timeout with nothing in flight (RFC 5681
    /// 4.1), once for each timeout of that time, as Linux.
    fn on_restart(&mut self, halvings: u32) {}

    fn pre_transmit(&mut self, now: Instant) {}

    fn post_transmit(&mut self, now: Instant, len: usize) {}

    /// sal-tcp: the handshake fixed the segment size (`mss`) and no data
    /// has been sent: the connection starts afresh from the initial window
    /// for it ([`initial_window`]) in slow start, or from one segment if
    /// the handshake was `resent` more than once (RFC 5681 3.1 starts from
    /// one segment after any lost SYN or SYN-ACK; Linux only after more
    /// than one copy, `tcp_init_transfer`, since the first timeout is 1 s,
    /// RFC 6298 5). The handshake's timeouts take no other part (ssthresh
    /// stays unbounded). The peer's window seen so far is kept.
    fn set_initial_window(&mut self, mss: usize, resent: bool) {}

    /// sal-tcp: whether the window grows by slow start now (HyStart++
    /// watches only then, see `crate::hystart`).
    fn in_slow_start(&self) -> bool {
        false
    }

    /// sal-tcp: whether this is the connection's initial slow start:
    /// slow start with ssthresh still unbounded (no congestion seen since
    /// the handshake, or the response to it undone). HyStart++ watches only
    /// then (RFC 9406 4.3, see `crate::hystart`).
    fn in_initial_slow_start(&self) -> bool {
        false
    }

    /// sal-tcp: HyStart++'s Conservative Slow Start (RFC 9406 4.2): while
    /// on, slow start grows the window by a quarter of what it would.
    /// Loss, a timeout or a rewind turn it off.
    fn set_conservative(&mut self, on: bool) {}

    /// sal-tcp: HyStart++ ends slow start at the present window
    /// (ssthresh = cwnd): congestion avoidance follows.
    fn end_slow_start(&mut self) {}

    /// sal-tcp: what undoing a loss response about to be made would
    /// restore (`crate::undo`): the window, without fast recovery's
    /// inflation, and the slow start threshold.
    fn undo_point(&self) -> Prior {
        Prior {
            cwnd: self.recovery_window(),
            ssthresh: usize::MAX,
        }
    }

    /// sal-tcp: the loss response was needless (`crate::undo`): the window
    /// and the slow start threshold go back to at least `prior` (the
    /// larger of each and what it is now, as Linux's
    /// `tcp_undo_cwnd_reduction`), fast recovery and the timeout's episode
    /// end. Not the RTO backoff, which is the socket's.
    fn undo(&mut self, prior: Prior) {}
}

#[derive(Debug)]
pub(crate) enum AnyController {
    None(no_control::NoControl),
    Reno(reno::Reno),
    Cubic(cubic::Cubic),
}

impl AnyController {
    /// A fresh controller running `kind`.
    pub fn new(kind: CongestionControl) -> Self {
        match kind {
            CongestionControl::None => AnyController::None(no_control::NoControl),
            CongestionControl::Reno => AnyController::Reno(reno::Reno::new()),
            CongestionControl::Cubic => AnyController::Cubic(cubic::Cubic::new()),
        }
    }

    /// Which algorithm this controller runs.
    pub fn kind(&self) -> CongestionControl {
        match self {
            AnyController::None(_) => CongestionControl::None,
            AnyController::Reno(_) => CongestionControl::Reno,
            AnyController::Cubic(_) => CongestionControl::Cubic,
        }
    }

    #[inline]
    pub fn inner_mut(&mut self) -> &mut dyn Controller {
        match self {
            AnyController::None(n) => n,
            AnyController::Reno(r) => r,
            AnyController::Cubic(c) => c,
        }
    }

    #[inline]
    pub fn inner(&self) -> &dyn Controller {
        match self {
            AnyController::None(n) => n,
            AnyController::Reno(r) => r,
            AnyController::Cubic(c) => c,
        }
    }
}
