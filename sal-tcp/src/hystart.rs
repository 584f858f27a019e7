//! HyStart++ (RFC 9406): leaving slow start when the round trip grows,
//! before the queue that makes it grow overflows.
//!
//! sal-tcp, not in smoltcp. Slow start doubles the window each round trip
//! until a loss; behind a deep queue it overshoots what the queue holds by
//! up to the window, and the queue then drops about every other segment
//! for a round trip (`sal/tests/sim_tcp_loss.rs`: a 0.4 s queue of about
//! 27 segments, 55 in flight). HyStart++ watches the least round trip of
//! each round: once it grows by more than an eighth (4 to 16 ms), a queue
//! is forming, and the window grows a quarter as fast (Conservative Slow
//! Start) for [`CSS_ROUNDS`] rounds, then slow start ends where it is
//! (ssthresh = cwnd). If the round trip falls back during those rounds,
//! the rise was jitter and slow start resumes. A loss, a timeout or a
//! rewind starts the rounds afresh.
//!
//! Only in the initial slow start, while ssthresh is unbounded (RFC 9406
//! 4.3): a later one ends at the ssthresh a loss set, near where the queue
//! overflowed. Linux's Cubic runs its own HyStart in every slow start of
//! 16 segments or more, as this did: after a timeout with 300 segments in
//! flight (ssthresh 210) and a rising round trip, it ended slow start at
//! 64 segments (`a_slow_start_with_a_known_ssthresh_is_left_to_it`); in
//! `sal/tests/sim_tcp_loss.rs` and `tests/heavy_loss.rs` it never acted
//! after a loss (the same figures either way). A restart after idle or a
//! rewind keeps an unbounded ssthresh unbounded, so HyStart++ watches the
//! slow start of a flow that never saw a loss there too (RFC 9406 allows
//! it for the restart window), and again after a loss response undone.
//!
//! It needs several round-trip samples a round, where the RTO estimator
//! takes one a flight (no timestamps on the SAL's paths). [`Sampler`] times
//! up to [`SLOTS`] runs of segments in flight, in fixed slots, and its
//! samples feed only HyStart++'s minimum: the RTO estimator is left as it
//! is (fed more samples, it followed a filling queue less well than the
//! 200 ms margin covers, and timeouts grew).

use smoltcp::time::Instant;
use smoltcp::wire::TcpSeqNumber;

use crate::congestion::Controller;
use crate::rtt::RTTE_MAX_RTO;

// What keeps a run's wrapping send time unambiguous (see `Slot::sent`).
const _: () = assert!(RTTE_MAX_RTO < u16::MAX as u32);

/// RFC 9406's N_RTT_SAMPLE: round-trip samples a round must have before
/// its minimum is compared with the last round's.
pub(crate) const N_RTT_SAMPLE: u8 = 8;
/// RFC 9406's MIN_RTT_THRESH, in milliseconds.
const MIN_RTT_THRESH: u32 = 4;
/// RFC 9406's MAX_RTT_THRESH, in milliseconds.
const MAX_RTT_THRESH: u32 = 16;
/// RFC 9406's MIN_RTT_DIVISOR: the rise that counts is an eighth of the
/// last round's minimum, within the two bounds above.
const MIN_RTT_DIVISOR: u32 = 8;
/// RFC 9406's CSS_GROWTH_DIVISOR: Conservative Slow Start grows the
/// window by this fraction of what slow start would.
pub(crate) const CSS_GROWTH_DIVISOR: usize = 4;
/// RFC 9406's CSS_ROUNDS: rounds of Conservative Slow Start before slow
/// start ends.
pub(crate) const CSS_ROUNDS: u8 = 5;
/// Runs of segments timed at once: each is the new data sent within one
/// millisecond (a slow-start ACK's burst), so that in slow start about
/// as many ACKs a round give a sample.
pub(crate) const SLOTS: usize = 8;

/// No minimum yet.
const NONE: u32 = u32::MAX;

/// A run of new data sent within one millisecond.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    start: TcpSeqNumber,
    len: u16,
    /// The clock's milliseconds when sent, wrapping every 65.5 s. No run
    /// is timed that long: it leaves the slots when acknowledged, and all
    /// do when anything is resent, which the retransmission timeout (at
    /// most 60 s, [`RTTE_MAX_RTO`]) does before an ACK that late. A flow
    /// that slow-starts again after an idle period or a timeout starts
    /// from empty slots and fresh rounds (`on_retransmit`).
    sent: u16,
}

/// Times segments in flight for HyStart++: up to [`SLOTS`] runs, each
/// taken by the next new data sent once free (a fixed 64 bytes, nothing
/// allocated). An ACK gives a sample when the newest byte it covers is in
/// a timed run: the time since that run was sent. Karn: a retransmission
/// forgets them all, since its ACK cannot tell which copy arrived.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sampler {
    slots: [Slot; SLOTS],
    /// The oldest run's slot.
    first: u8,
    /// Runs being timed.
    timing: u8,
    /// The end of the highest data sent, once something was
    /// (`has_sent`): what starts there is new. Not an `Option`, which
    /// takes 4 bytes more.
    sent_end: TcpSeqNumber,
    has_sent: bool,
}

impl Sampler {
    /// `len` bytes from `seq` were sent at `now`.
    pub(crate) fn on_send(&mut self, now: Instant, seq: TcpSeqNumber, len: usize) {
        if len == 0 {
            return;
        }
        let end = seq + len;
        let new = !self.has_sent || seq >= self.sent_end;
        if !self.has_sent || end > self.sent_end {
            self.sent_end = end;
            self.has_sent = true;
        }
        if !new {
            return;
        }
        let ms = now.total_millis() as u16;
        if self.timing > 0 {
            let last = &mut self.slots[self.slot(self.timing - 1)];
            let run = usize::from(last.len);
            if last.sent == ms && last.start + run == seq && run + len <= usize::from(u16::MAX) {
                last.len = (run + len) as u16;
                return;
            }
        }
        if usize::from(self.timing) < SLOTS && len <= usize::from(u16::MAX) {
            let slot = self.slot(self.timing);
            self.slots[slot] = Slot {
                start: seq,
                len: len as u16,
                sent: ms,
            };
            self.timing += 1;
        }
    }

    /// An ACK up to `ack` came at `now`: the round trip of the newest byte
    /// it covers, in milliseconds, if that byte was timed.
    pub(crate) fn on_ack(&mut self, now: Instant, ack: TcpSeqNumber) -> Option<u32> {
        let ms = now.total_millis() as u16;
        let mut sample = None;
        while self.timing > 0 {
            let run = self.slots[usize::from(self.first)];
            if ack <= run.start {
                break;
            }
            let end = run.start + usize::from(run.len);
            // Past the run's end the newest byte covered is one that was
            // not timed (the slots were full when it was sent).
            sample = (ack <= end).then(|| u32::from(ms.wrapping_sub(run.sent)));
            if ack < end {
                break;
            }
            self.first = ((usize::from(self.first) + 1) % SLOTS) as u8;
            self.timing -= 1;
        }
        sample
    }

    /// Something was resent: forget what is timed (Karn).
    pub(crate) fn on_retransmit(&mut self) {
        self.timing = 0;
    }

    fn slot(&self, nth: u8) -> usize {
        (usize::from(self.first) + usize::from(nth)) % SLOTS
    }
}

/// HyStart++'s state: the rounds of slow start and their least round
/// trips, and Conservative Slow Start's. The socket feeds it what it sends
/// and the ACKs of new data; it tells the congestion controller when to
/// grow conservatively and when slow start ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HyStart {
    sampler: Sampler,
    /// The round ends when this is acknowledged (RFC 9406's windowEnd),
    /// if one started (`in_round`: not outside slow start; not an
    /// `Option`, which takes 4 bytes more).
    window_end: TcpSeqNumber,
    in_round: bool,
    /// The least round trip of the last round and of this one, in
    /// milliseconds ([`NONE`]: no sample).
    last_round_min: u32,
    round_min: u32,
    /// Samples this round.
    samples: u8,
    /// In Conservative Slow Start: the least round trip that started it
    /// (RFC 9406's cssBaselineMinRtt), else [`NONE`].
    css_baseline: u32,
    /// Rounds started in Conservative Slow Start.
    css_rounds: u8,
}

impl Default for HyStart {
    fn default() -> Self {
        HyStart {
            sampler: Sampler::default(),
            window_end: TcpSeqNumber::default(),
            in_round: false,
            last_round_min: NONE,
            round_min: NONE,
            samples: 0,
            css_baseline: NONE,
            css_rounds: 0,
        }
    }
}

impl HyStart {
    /// `len` bytes from `seq` were sent at `now`.
    pub(crate) fn on_send(&mut self, now: Instant, seq: TcpSeqNumber, len: usize) {
        self.sampler.on_send(now, seq, len);
    }

    /// Something was resent (a loss, a timeout, a rewind): forget what is
    /// timed (Karn: see [`Sampler`]), and the rounds. The controller left
    /// Conservative Slow Start, and the slow start that follows a timeout
    /// or a rewind begins its rounds afresh: left counting, the rounds of
    /// before ended it a few rounds in (ssthresh = cwnd), far below the
    /// ssthresh the timeout set, before its rounds had the samples to
    /// resume slow start.
    pub(crate) fn on_retransmit(&mut self) {
        self.sampler.on_retransmit();
        *self = HyStart {
            sampler: self.sampler,
            ..HyStart::default()
        };
    }

    /// An ACK of new data up to `ack` came at `now`, after `controller`
    /// acted on it; `snd_nxt` is the end of the highest data sent. Outside
    /// the initial slow start (see the module docs) this only keeps the
    /// sampler going, and a slow start begins its rounds afresh.
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        ack: TcpSeqNumber,
        snd_nxt: TcpSeqNumber,
        controller: &mut dyn Controller,
    ) {
        let sample = self.sampler.on_ack(now, ack);
        if !controller.in_initial_slow_start() {
            *self = HyStart {
                sampler: self.sampler,
                ..HyStart::default()
            };
            return;
        }
        if !self.in_round || ack >= self.window_end {
            // A round starts.
            self.window_end = snd_nxt;
            self.in_round = true;
            self.last_round_min = self.round_min;
            self.round_min = NONE;
            self.samples = 0;
            if self.css_baseline != NONE {
                self.css_rounds += 1;
                if self.css_rounds >= CSS_ROUNDS {
                    net_debug!("hystart: slow start ends after conservative slow start");
                    controller.end_slow_start();
                    *self = HyStart {
                        sampler: self.sampler,
                        ..HyStart::default()
                    };
                    return;
                }
            }
        }
        let Some(rtt) = sample else { return };
        self.round_min = self.round_min.min(rtt);
        self.samples = self.samples.saturating_add(1);
        if self.samples < N_RTT_SAMPLE || self.last_round_min == NONE {
            return;
        }
        if self.css_baseline == NONE {
            let threshold =
                (self.last_round_min / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH);
            if self.round_min >= self.last_round_min.saturating_add(threshold) {
                net_debug!(
                    "hystart: round trip {} ms after {} ms, conservative slow start",
                    self.round_min,
                    self.last_round_min
                );
                self.css_baseline = self.round_min;
                self.css_rounds = 0;
                controller.set_conservative(true);
            }
        } else if self.round_min < self.css_baseline {
            net_debug!("hystart: round trip fell back, slow start resumes");
            self.css_baseline = NONE;
            self.css_rounds = 0;
            controller.set_conservative(false);
        }
    }
}

#[cfg(test)]
impl HyStart {
    /// Rounds started in Conservative Slow Start, if in it.
    pub(crate) fn css_rounds(&self) -> Option<u8> {
        (self.css_baseline != NONE).then_some(self.css_rounds)
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::congestion::cubic::Cubic;
    use crate::congestion::reno::Reno;

    const MSS: usize = 1000;

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Slow start from the controller's window, one ACK a segment, the
    /// segments of round `n` (counted from 0) taking `rtt(n)` ms; returns
    /// the window after each round and whether it is still slow start.
    fn run(
        controller: &mut dyn Controller,
        rounds: usize,
        rtt: impl Fn(usize) -> i64,
    ) -> Vec<(usize, bool)> {
        let mut hystart = HyStart::default();
        let mut now = 0;
        let mut next = TcpSeqNumber(0);
        let mut out = Vec::new();
        // The first flight.
        let mut flight = Vec::new();
        for _ in 0..controller.window() / MSS {
            hystart.on_send(at(now), next, MSS);
            flight.push((next + MSS, now));
            next += MSS;
        }
        for round in 0..rounds {
            let mut sent = Vec::new();
            for (end, sent_at) in &flight {
                now = now.max(sent_at + rtt(round));
                let acked = *end;
                controller.on_ack(at(now), MSS, 0, &Default::default());
                hystart.on_ack(at(now), acked, next, controller);
                // Send what the window allows.
                while (next - acked) + MSS <= controller.window() {
                    hystart.on_send(at(now), next, MSS);
                    sent.push((next + MSS, now));
                    next += MSS;
                }
            }
            flight = sent;
            out.push((controller.window(), controller.in_slow_start()));
        }
        out
    }

    fn cubic() -> Cubic {
        let mut cubic = Cubic::new();
        cubic.set_mss(MSS);
        cubic.set_remote_window(1 << 30);
        cubic
    }

    #[test]
    fn a_flat_round_trip_stays_in_slow_start() {
        let mut cc = cubic();
        let rounds = run(&mut cc, 8, |_| 50);
        // The window (2,048 bytes: two segments and 48 bytes) doubles its
        // segments each round, to 512.
        assert!(rounds.iter().all(|&(_, ss)| ss), "{rounds:?}");
        assert!(
            rounds.windows(2).all(|w| w[1].0 - 48 == 2 * (w[0].0 - 48)),
            "{rounds:?}"
        );
        assert_eq!(rounds[7].0, 512 * MSS + 48);
    }

    #[test]
    fn a_rising_round_trip_ends_slow_start_after_conservative_rounds() {
        let mut cc = cubic();
        // 50 ms for the first 4 rounds, then 20 ms more each round: a
        // queue forming.
        let rounds = run(&mut cc, 14, |round| 50 + 20 * (round as i64 - 3).max(0));
        // Slow start doubles until the rise shows (round 4, at 32
        // segments), then grows about a quarter as fast, and ends
        // CSS_ROUNDS rounds later: at 113 segments where it would have
        // doubled to 512.
        let ended = rounds
            .iter()
            .position(|&(_, ss)| !ss)
            .expect("slow start ends");
        assert_eq!(ended, 4 + usize::from(CSS_ROUNDS) - 1, "{rounds:?}");
        for w in rounds[4..=ended].windows(2) {
            assert!(w[1].0 <= w[0].0 * 13 / 10, "{rounds:?}");
        }
        assert!((100 * MSS..130 * MSS).contains(&rounds[ended].0));
        // Then congestion avoidance: about a segment a round.
        let (last, ss) = rounds[13];
        assert!(!ss && last < rounds[ended].0 + 6 * MSS, "{rounds:?}");
    }

    #[test]
    fn a_round_trip_that_falls_back_resumes_slow_start() {
        let mut cc = cubic();
        // One slow round (jitter) at 32 segments, then flat again.
        let rounds = run(&mut cc, 10, |round| if round == 4 { 80 } else { 50 });
        // Conservative slow start began in that round (the window grew by
        // less than double) and slow start resumed in the next, which saw
        // the round trip fall back: the window doubles again and slow
        // start never ended.
        assert!(rounds.iter().all(|&(_, ss)| ss), "{rounds:?}");
        assert!(rounds[4].0 - 48 < 2 * (rounds[3].0 - 48), "{rounds:?}");
        for w in rounds[5..].windows(2) {
            assert_eq!(w[1].0 - 48, 2 * (w[0].0 - 48), "{rounds:?}");
        }
    }

    #[test]
    fn reno_ends_slow_start_too() {
        let mut cc = Reno::new();
        cc.set_mss(MSS);
        cc.set_remote_window(1 << 30);
        let rounds = run(&mut cc, 14, |round| 50 + 20 * (round as i64 - 3).max(0));
        assert!(rounds.iter().any(|&(_, ss)| !ss), "{rounds:?}");
    }

    #[test]
    fn a_timeout_in_conservative_slow_start_starts_afresh() {
        // As `run`, the round trip rising after 128 segments, with a
        // timeout in the first conservative round: the first segment of
        // that round's flight is lost (too few duplicate ACKs follow for
        // a fast retransmit), and resending it brings the ACK of all; the
        // round trip is flat again.
        let mut cc = cubic();
        let mut hystart = HyStart::default();
        let mut now = 0;
        let mut next = TcpSeqNumber(0);
        let mut flight = Vec::new();
        let rtt = |round: usize| 50 + 20 * (round as i64 - 5).max(0);
        for _ in 0..cc.window() / MSS {
            hystart.on_send(at(now), next, MSS);
            flight.push((next + MSS, now));
            next += MSS;
        }
        let mut timeout = None;
        for round in 0..40 {
            let mut sent = Vec::new();
            for (end, sent_at) in &flight {
                now = now.max(sent_at + if timeout.is_some() { 50 } else { rtt(round) });
                let acked = *end;
                cc.on_ack(at(now), MSS, 0, &Default::default());
                hystart.on_ack(at(now), acked, next, &mut cc);
                while (next - acked) + MSS <= cc.window() {
                    hystart.on_send(at(now), next, MSS);
                    sent.push((next + MSS, now));
                    next += MSS;
                }
            }
            if timeout.is_none() && hystart.css_baseline != NONE {
                // What the socket does on the timeout.
                let first = sent[0].0 - MSS;
                let in_flight = next - first;
                now += 1000;
                cc.on_rto(at(now), in_flight);
                hystart.on_retransmit();
                hystart.on_send(at(now), first, MSS);
                sent = vec![(next, now)];
                timeout = Some(in_flight);
            }
            flight = sent;
            if timeout.is_some() && !cc.in_slow_start() {
                break;
            }
        }
        let in_flight = timeout.expect("conservative slow start began");
        // Slow start from one segment regrows to the timeout's ssthresh
        // (0.7 of the flight): the conservative rounds before the timeout
        // do not end it a few rounds in, far below.
        assert!(!cc.in_slow_start());
        assert!(
            cc.window() >= in_flight * 7 / 10,
            "window {} at the end of slow start, {} in flight at the timeout",
            cc.window(),
            in_flight
        );
    }

    #[test]
    fn a_slow_start_with_a_known_ssthresh_is_left_to_it() {
        // RFC 9406 4.3: HyStart++ only in the initial slow start, while
        // ssthresh is unbounded; later ones end at the ssthresh the loss
        // response set. A timeout with 300 segments in flight sets it at
        // 210, and the round trip of the slow start that follows rises as
        // in `a_rising_round_trip_ends_slow_start_after_conservative_rounds`:
        // watched by HyStart++, that slow start ended at 64 segments.
        let mut cc = cubic();
        cc.on_rto(at(0), 300 * MSS);
        let rounds = run(&mut cc, 14, |round| 50 + 20 * (round as i64 - 3).max(0));
        let ended = rounds
            .iter()
            .position(|&(_, ss)| !ss)
            .expect("slow start ends");
        assert!(rounds[ended].0 >= 210 * MSS, "{rounds:?}");
        // Undone, the timeout leaves ssthresh unbounded: HyStart++ again.
        let mut cc = cubic();
        let prior = cc.undo_point();
        cc.on_rto(at(0), 300 * MSS);
        cc.undo(prior);
        assert!(cc.in_initial_slow_start());
    }

    #[test]
    fn the_sampler_times_the_newest_byte_acknowledged() {
        let mut s = Sampler::default();
        // Two segments at 0 ms (one run), one at 5 ms.
        s.on_send(at(0), TcpSeqNumber(0), 100);
        s.on_send(at(0), TcpSeqNumber(100), 100);
        s.on_send(at(5), TcpSeqNumber(200), 100);
        // Half the first run: sent at 0.
        assert_eq!(s.on_ack(at(30), TcpSeqNumber(100)), Some(30));
        // Into the second run: its byte was sent at 5.
        assert_eq!(s.on_ack(at(40), TcpSeqNumber(250)), Some(35));
        // A retransmission forgets the rest.
        s.on_retransmit();
        assert_eq!(s.on_ack(at(50), TcpSeqNumber(300)), None);
        // A resent segment is not timed; new data after it is.
        s.on_send(at(60), TcpSeqNumber(200), 100);
        s.on_send(at(60), TcpSeqNumber(300), 100);
        assert_eq!(s.on_ack(at(70), TcpSeqNumber(400)), Some(10));
    }

    #[test]
    fn the_sampler_gives_no_sample_for_untimed_bytes() {
        let mut s = Sampler::default();
        // Each send in its own millisecond fills a slot; the ninth is not
        // timed.
        for n in 0..=SLOTS {
            s.on_send(at(n as i64), TcpSeqNumber(n as i32 * 100), 100);
        }
        s.on_send(at(20), TcpSeqNumber(900), 100);
        // An ACK of all: its newest byte was not timed.
        assert_eq!(s.on_ack(at(100), TcpSeqNumber(1000)), None);
        // The slots are free again.
        s.on_send(at(100), TcpSeqNumber(1000), 100);
        assert_eq!(s.on_ack(at(110), TcpSeqNumber(1100)), Some(10));
    }
}
