//! Short exchanges through random loss, on the deterministic simulator:
//! how long a request and its answer take when some of their segments
//! are lost, and how many needed the retransmission timeout.
//!
//! The workload is `sim_short_responses.rs`'s (a connect, a 100-byte
//! request, an answer of 16 or 64 KiB and the server's FIN after it, on a
//! fresh flow over a 20 ms round trip at a gigabit a second), but every
//! TCP segment the SAL carries outside its control messages (the request,
//! the answer, the FIN and the ACKs, each way) is lost at random with
//! 1 % or 3 % probability; the handshake (SAL control messages) is not,
//! so that its own 1 s timeouts do not hide the data's. The time is from
//! the connect to the answer's last byte at the client.
//!
//! Such exchanges are where a loss falls at the tail of a flight: the
//! request is one segment, and an answer of 16 KiB is eleven segments in
//! two flights. Too few segments follow such a loss for three duplicate
//! ACKs or the SACK threshold, and before sal-tcp's tail loss probe
//! (`sal_tcp`'s `tlp`) it waited for the retransmission timeout, at least
//! SRTT + 200 ms (ten round trips here).
//!
//! Taps at both ends record what each host sent and when anything reached
//! it: a resend of data sent on a timer (nothing reached the host at that
//! instant) 150 ms or more after anything last reached it or it last sent
//! data is a retransmission timeout (a probe fires about two round trips,
//! 40 ms, after the last segment; a timeout at least 200 ms after the
//! last ACK that moved the window); other data segments sent on a timer
//! are probes.
//!
//! `measure_short_exchanges_through_loss` (ignored: it prints) runs 1000
//! exchanges (seeds 1-1000) for each answer size and loss rate and prints
//! the median, 90th, 99th percentile and largest time, the exchanges that
//! needed a timeout, and the timeouts and probes in all.
//! `TAIL_SEEDS=<n>` runs `n` seeds instead, `TAIL_RTT_US=<us>` through a
//! round trip of `us` microseconds instead of 20 ms (one under a
//! millisecond, a LAN's, is an SRTT of 0 ms).

use std::net::Ipv4Addr;
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::Rng;
use sal::proto::HostConfig;
use sal::Locator;
use sal_sim::{Delay, DropReason, Network, Node, Packet, Path, RateLimit, Verdict};
use smoltcp::time::{Duration, Instant};

mod common;
use common::sim::{client_server_on, pattern, request_answer};
use common::tap::{parse, Log, Seen, Tap};

/// The path's round trip time (`TAIL_RTT_US` for the measurement).
const RTT: Duration = Duration::from_millis(20);

/// The round trip of the path: `RTT`, or `TAIL_RTT_US`.
fn rtt() -> Duration {
    std::env::var("TAIL_RTT_US").ok().map_or(RTT, |us| {
        Duration::from_micros(us.parse().expect("TAIL_RTT_US=<us>"))
    })
}
/// A gigabit a second, in bytes.
const GIGABIT: u64 = 125_000_000;
/// The request's size.
const REQUEST: usize = 100;
/// The client's address (the server is 10.0.0.2).
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// A resend on a timer this long after anything reached its sender is a
/// retransmission timeout, not a probe.
const TIMEOUT_GAP: Duration = Duration::from_millis(150);

impl Seen {
    /// Sent by the server, else by the client.
    fn by_server(&self) -> bool {
        self.src != Locator::Ipv4(CLIENT)
    }
}

/// Loses TCP segments outside control messages (not SYNs) with
/// probability `p`.
#[derive(Debug)]
struct SegmentLoss(f64);

impl Node for SegmentLoss {
    fn process(&mut self, packet: &Packet, now: Instant, rng: &mut SmallRng) -> Verdict {
        match parse(packet, now, false) {
            Some(s) if s.is_data_segment() && !s.syn && rng.random::<f64>() < self.0 => {
                Verdict::Drop(DropReason::Loss)
            }
            _ => Verdict::Pass(now),
        }
    }
}

/// What one exchange showed.
struct Run {
    took: Duration,
    timeouts: usize,
    probes: usize,
}

/// A connect, a request and an answer of `answer` bytes followed by the
/// server's FIN, through `loss`.
fn exchange(seed: u64, loss: f64, answer: usize) -> Run {
    let log: Log = Rc::default();
    let taps = log.clone();
    let net = Network::with_default_path(seed, move || {
        Path::new()
            .then(Tap {
                log: taps.clone(),
                delivered: false,
            })
            .then(SegmentLoss(loss))
            .then(RateLimit::new(GIGABIT, 1 << 20))
            .then(Delay::new(rtt() / 2))
            .then(Tap {
                log: taps.clone(),
                delivered: true,
            })
    });
    let mut cs = client_server_on(net, HostConfig::default());
    cs.net.settle();
    let took = request_answer(
        &mut cs,
        &pattern(REQUEST, seed),
        &pattern(answer, seed + 1),
        true,
        Duration::from_secs(60),
        &format!("seed {seed}"),
    );
    let log = log.borrow().clone();
    let (timeouts, probes) = timer_sends(&log, true);
    let (t, p) = timer_sends(&log, false);
    Run {
        took,
        timeouts: timeouts + t,
        probes: probes + p,
    }
}

/// The server's (`server`) or the client's segments of data sent on a
/// timer: (retransmission timeouts, probes).
fn timer_sends(log: &[Seen], server: bool) -> (usize, usize) {
    let mut max_sent: Option<u32> = None;
    let mut last_arrival: Option<Instant> = None;
    let mut last_send: Option<Instant> = None;
    let (mut timeouts, mut probes) = (0, 0);
    for s in log.iter().filter(|s| s.is_data_segment()) {
        if s.delivered && s.by_server() != server {
            last_arrival = Some(s.at);
            continue;
        }
        if s.delivered || s.by_server() != server || s.seq_len() == 0 {
            continue;
        }
        let end = s.seq.wrapping_add(s.seq_len());
        let Some(max) = max_sent else {
            (max_sent, last_send) = (Some(end), Some(s.at));
            continue;
        };
        let arrived_now = last_arrival == Some(s.at);
        let resend = (end.wrapping_sub(max) as i32) <= 0;
        if !arrived_now {
            let quiet_since = last_arrival.max(last_send).expect("data was sent");
            let gap = s.at - quiet_since;
            if resend && gap >= TIMEOUT_GAP {
                timeouts += 1;
            } else if (max.wrapping_sub(s.seq) as i32) >= 0 || resend {
                probes += 1;
            }
        }
        if (end.wrapping_sub(max) as i32) > 0 {
            max_sent = Some(end);
        }
        last_send = Some(s.at);
    }
    (timeouts, probes)
}

fn ms(d: Duration) -> f64 {
    d.total_micros() as f64 / 1000.0
}

/// A few lossy exchanges complete byte for byte (the figures are the
/// ignored measurement's).
#[test]
fn short_exchanges_through_loss_complete() {
    for seed in 1..=20 {
        let run = exchange(seed, 0.03, 16 << 10);
        assert!(
            run.took < Duration::from_secs(10),
            "seed {seed}: {}",
            run.took
        );
    }
}

/// Prints completion times, and the timeouts and probes, of short
/// exchanges through 1 % and 3 % loss.
#[test]
#[ignore = "a measurement: prints figures"]
fn measure_short_exchanges_through_loss() {
    let seeds: u64 = std::env::var("TAIL_SEEDS")
        .ok()
        .map_or(1000, |n| n.parse().expect("TAIL_SEEDS=<n>"));
    for answer in [16 << 10, 64 << 10] {
        for loss in [0.01, 0.03] {
            let runs: Vec<Run> = (1..=seeds)
                .map(|seed| exchange(seed, loss, answer))
                .collect();
            let mut took: Vec<Duration> = runs.iter().map(|r| r.took).collect();
            took.sort();
            let pct = |p: usize| ms(took[(took.len() - 1) * p / 100]);
            eprintln!(
                "{:>2} KiB answer, loss {loss}, {} exchanges: median {:.1} ms, p90 {:.1} ms, \
                 p99 {:.1} ms, max {:.1} ms; {} needed a timeout ({} timeouts), {} probes",
                answer >> 10,
                runs.len(),
                pct(50),
                pct(90),
                pct(99),
                ms(*took.last().unwrap()),
                runs.iter().filter(|r| r.timeouts > 0).count(),
                runs.iter().map(|r| r.timeouts).sum::<usize>(),
                runs.iter().map(|r| r.probes).sum::<usize>(),
            );
        }
    }
}
