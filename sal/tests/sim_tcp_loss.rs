//! How long TCP stalls on randomly lossy paths, on the deterministic
//! simulator, and what makes the stalls.
//!
//! The path is `sim_lossy_paths.rs`'s: every link loses 1 % or 3 % of its
//! packets at random, behind a 100 kB/s bottleneck whose queue holds 0.4 s
//! of traffic, 5 ms each way; B sends A a stream (a download). Taps at
//! both ends of every link record what was sent and what arrived, so the
//! sender's view can be rebuilt: when its oldest unacknowledged byte
//! moved (the ACKs that reached it), and when it resent that byte on a
//! timer (a retransmission timeout) or on the SAL's rewind (the answer to
//! the liveness probe of a flow silent for half the liveness timeout)
//! rather than on an ACK, and why (see [`cause`]).
//!
//! `measure_stalls_through_random_loss` (ignored: it runs 64 transfers a
//! loss rate, a minute in all) prints, for each, the total time, the
//! longest stall of the sender's acknowledged sequence and the timeouts;
//! then their distribution, the share of short segments, the causes of
//! the timeouts and rewinds, and sal-tcp's tail loss probes (data sent on
//! a timer that is not the timeout's resend of the oldest segment; a
//! probe or a fast retransmit at the probe timeout that resends that one
//! counts as a timeout). Seen from the outside, a fast retransmit on
//! RACK's timer (sal-tcp's `rack`) is a resend on a timer too, and so
//! counts as a timeout there: the sender's own counters (the host's
//! `tcp_timeouts`, `tcp_fast_retransmits`, `tcp_loss_probes`, `tcp_undos`)
//! tell them apart, and are printed beside. `STALL_TRACE=<loss>:<seed>` runs that
//! transfer alone and prints each timeout and rewind, and the segments and
//! ACKs of each stall of a second or more; `STALL_WINDOW=<from>:<to>`
//! (seconds from the first data segment) prints that stretch instead.
//! `STALL_LOSS=<loss>,<loss>...` measures those loss rates in place of
//! 1 % and 3 % (heavy loss, 10 % and 20 %, for the timeout's backoff).
//! `sim_lossy_paths.rs` bounds the receiver's waits on the same path.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::Locator;
use sal_sim::{Delay, Loss, Network, Path, RateLimit};
use smoltcp::time::{Duration, Instant};

mod common;
use common::sim::{establish, multi_homed_pair, pattern, stream};
use common::tap::{Log, Seen, Tap};

/// Bytes carried.
const LEN: usize = 2 << 20;
/// Bytes per second each link carries (IPv4 bytes).
const RATE: u64 = 100_000;
/// Bytes each link queues: 0.4 s at [`RATE`].
const QUEUE: usize = 40_000;
/// The receiver; the sender is B, at either of its locators.
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The SAL's TCP MSS.
const MSS: u32 = 1448;

/// A SAL packet seen by a tap: its TCP segment, or a control message.
impl Seen {
    /// Sent by B (the data sender), else by A.
    fn by_sender(&self) -> bool {
        self.src != Locator::Ipv4(A)
    }
}

/// What one transfer showed, from the sender's side.
#[derive(Debug, Clone)]
struct Run {
    /// From the first data segment to the ACK of the FIN.
    took: Duration,
    /// The longest time the sender's oldest unacknowledged byte did not
    /// move, and when that stall began (since the first data segment).
    stall: Duration,
    stall_from: Duration,
    /// Stalls of a second or more: when each began, and how long.
    long_stalls: Vec<(Duration, Duration)>,
    /// Retransmissions the sender sent on a timer (no ACK reached it at
    /// that instant): its retransmission timeouts.
    timeouts: usize,
    /// Why each timeout came (see [`cause`]).
    causes: Vec<(Duration, &'static str)>,
    /// The sender's own count of its retransmission timeouts, fast
    /// retransmits, tail loss probes and undone window reductions.
    counted: [u64; 4],
    /// Tail loss probes: segments sent on a timer that are not a resend
    /// of the oldest unacknowledged byte (new data, or the last segment
    /// again). A probe that resends the oldest segment (one in flight)
    /// counts as a timeout.
    probes: Vec<(Duration, &'static str)>,
    /// Retransmissions of the oldest segment on the SAL's rewind (the
    /// answer to its liveness probe), with the same causes.
    rewinds: Vec<(Duration, &'static str)>,
    /// Whether the receiver read the stream byte for byte.
    exact: bool,
    /// Times either end moved the flow or followed the other.
    moves: u32,
    log: Vec<Seen>,
}

/// A download of [`LEN`] bytes through links that lose `loss` of their
/// packets.
fn run(loss: f64, seed: u64) -> Run {
    let log: Log = Rc::default();
    let taps = log.clone();
    let mut net = Network::with_default_path(seed, move || {
        Path::new()
            .then(Tap {
                log: taps.clone(),
                delivered: false,
            })
            .then(Loss::new(loss))
            .then(RateLimit::new(RATE, QUEUE))
            .then(Delay::new(Duration::from_millis(5)))
            .then(Tap {
                log: taps.clone(),
                delivered: true,
            })
    });
    let (a, b, listener) = multi_homed_pair(&mut net);
    let (aflow, bflow) = establish(&mut net, a, b, listener, "ab".parse().unwrap());
    let data = pattern(LEN, seed);
    let received = stream(
        &mut net,
        (b, bflow),
        (a, aflow),
        &data,
        Duration::from_secs(600),
        |_, _| {},
    );
    // Let the ACK of the FIN arrive.
    net.run_for(Duration::from_secs(5));
    let (fa, fb) = (
        net.host(a).flow(aflow).unwrap(),
        net.host(b).flow(bflow).unwrap(),
    );
    let log = log.borrow().clone();
    let stats = net.host(b).stats();
    Run {
        moves: fa.migrations + fa.peer_moves + fb.migrations + fb.peer_moves,
        counted: [
            stats.tcp_timeouts,
            stats.tcp_fast_retransmits,
            stats.tcp_loss_probes,
            stats.tcp_undos,
        ],
        ..analyse(log, received == data)
    }
}

/// The sender's view of a transfer's log.
fn analyse(log: Vec<Seen>, exact: bool) -> Run {
    let isn = log
        .iter()
        .find(|s| s.by_sender() && s.syn)
        .expect("B sent a SYN-ACK")
        .seq;
    let rel = |seq: u32| seq.wrapping_sub(isn);
    let start = log
        .iter()
        .find(|s| s.by_sender() && !s.delivered && s.len > 0)
        .expect("B sent data")
        .at;
    let (mut una, mut last_move, mut end) = (1u32, start, start);
    let (mut stall, mut stall_from, mut long_stalls) = (Duration::ZERO, start, Vec::new());
    let (mut max_sent, mut timeouts, mut una_at) = (1u32, 0, 0);
    let (mut causes, mut rewinds, mut probes) = (Vec::new(), Vec::new(), Vec::new());
    let fate = fates(&log);
    for (i, s) in log.iter().enumerate() {
        if s.by_sender() && s.delivered {
            continue;
        }
        let acked = rel(s.ack);
        if !s.by_sender() && s.delivered && s.tcp && !s.syn && acked > una && acked < 1 << 31 {
            let gap = s.at - last_move;
            if gap >= Duration::from_secs(1) {
                long_stalls.push((last_move - start, gap));
            }
            if gap > stall {
                (stall, stall_from) = (gap, last_move);
            }
            (una, last_move, end, una_at) = (acked, s.at, s.at, i);
        }
        if s.by_sender() && !s.delivered && (s.len > 0 || s.fin) && !s.syn {
            let seg_end = rel(s.seq) + s.len + u32::from(s.fin);
            let arrived = || {
                log[..i]
                    .iter()
                    .rev()
                    .take_while(|o| o.at == s.at)
                    .filter(|o| !o.by_sender() && o.delivered)
            };
            if arrived().next().is_none() && rel(s.seq) != una && max_sent > una {
                // Sent on a timer, not the timeout's resend: a probe.
                probes.push((
                    s.at - start,
                    if seg_end > max_sent {
                        "probe: new data"
                    } else {
                        "probe: the last segment again"
                    },
                ));
            }
            if seg_end <= max_sent {
                // A retransmission: on an ACK if one reached B at this
                // very instant, on the SAL's rewind if a control message
                // did (the answer to its liveness probe), else on a timer.
                if rel(s.seq) == una && !arrived().any(|o| o.tcp && !o.control) {
                    let why = cause(&log, &fate, i, una_at);
                    if arrived().any(|o| o.control) {
                        rewinds.push((s.at - start, why));
                    } else {
                        timeouts += 1;
                        causes.push((s.at - start, why));
                    }
                }
            }
            max_sent = max_sent.max(seg_end);
        }
    }
    Run {
        took: end - start,
        stall,
        stall_from: stall_from - start,
        long_stalls,
        timeouts,
        causes,
        counted: [0; 4],
        probes,
        rewinds,
        exact,
        moves: 0,
        log,
    }
}

/// When each of B's segments arrived (`None`: lost or not a segment
/// of B's), by index in `log`: the link is first in, first out, so each
/// arrival is the earliest segment sent before it with the same numbers
/// and not yet matched, and those skipped were lost.
fn fates(log: &[Seen]) -> Vec<Option<Instant>> {
    let mut fate = vec![None; log.len()];
    let mut pending = std::collections::VecDeque::new();
    for (i, s) in log.iter().enumerate() {
        if !s.by_sender() || !s.tcp {
            continue;
        }
        if !s.delivered {
            pending.push_back(i);
            continue;
        }
        while let Some(j) = pending.pop_front() {
            let sent = &log[j];
            if (sent.seq, sent.ack, sent.len, sent.fin) == (s.seq, s.ack, s.len, s.fin) {
                fate[j] = Some(s.at);
                break;
            }
        }
    }
    fate
}

/// Why the sender had to resend its oldest unacknowledged segment
/// (`log[at]`) on a timer, from what happened since the ACK that made it
/// the oldest (`log[una_at]`).
fn cause(log: &[Seen], fate: &[Option<Instant>], at: usize, una_at: usize) -> &'static str {
    let rto = &log[at];
    let same = |s: &Seen| s.by_sender() && !s.delivered && s.seq == rto.seq && s.len > 0;
    let sends: Vec<usize> = (0..at).filter(|&j| same(&log[j])).collect();
    let dup_acks = log[una_at..at]
        .iter()
        .filter(|s| !s.by_sender() && s.delivered && s.tcp && s.ack == rto.seq)
        .count()
        .saturating_sub(1);
    let Some(&last) = sends.last() else {
        return "never sent before (segment boundaries changed)";
    };
    match (fate[last], sends.len(), dup_acks) {
        (Some(got), ..) if got <= rto.at => "the receiver had it (its ACKs lost)",
        (Some(_), ..) => "spurious: the last copy was still on its way",
        (None, 2.., _) => "a retransmission was lost",
        (None, _, 0) => "lost, no duplicate ACK",
        (None, _, 1) => "lost, 1 duplicate ACK",
        (None, _, 2) => "lost, 2 duplicate ACKs",
        (None, ..) => "lost, 3+ duplicate ACKs (within a recovery)",
    }
}

/// The segments and ACKs of a run from `from` to `to` (since the first
/// data segment), one a line, sequence numbers relative to B's ISN.
fn trace(run: &Run, from: Duration, to: Duration) -> String {
    let isn = run.log.iter().find(|s| s.by_sender() && s.syn).unwrap().seq;
    let start = run
        .log
        .iter()
        .find(|s| s.by_sender() && s.len > 0)
        .unwrap()
        .at;
    let mut out = String::new();
    for s in &run.log {
        let t = s.at - start;
        if s.at < start || t < from || t > to {
            continue;
        }
        if !s.tcp {
            let what = [
                "A sends control",
                "  B gets control",
                "B sends control",
                "  A gets control",
            ];
            let _ = writeln!(
                out,
                "{:>10.3} {}",
                secs(t),
                what[usize::from(s.by_sender()) * 2 + usize::from(s.delivered)]
            );
            continue;
        }
        let what = match (s.by_sender(), s.delivered) {
            (true, false) => "B sends  ",
            (true, true) => "  A gets ",
            (false, false) => "A acks   ",
            (false, true) => "  B gets ",
        };
        let _ = writeln!(
            out,
            "{:>10.3} {what} seq {:>8} len {:>4} ack {:>8}{}",
            secs(t),
            s.seq.wrapping_sub(isn),
            s.len,
            s.ack.wrapping_sub(isn),
            if s.fin { " FIN" } else { "" }
        );
    }
    out
}

/// A duration in seconds.
fn secs(d: Duration) -> f64 {
    d.total_micros() as f64 / 1e6
}

/// Median, 90th percentile and maximum of some durations, in seconds.
fn spread(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let pct = |p: usize| secs(v[(v.len() - 1) * p / 100]);
    (pct(50), pct(90), secs(*v.last().unwrap()))
}

/// Prints the distribution of a loss rate's runs (seeds 1-64).
#[test]
#[ignore = "a measurement: prints figures, takes a minute"]
fn measure_stalls_through_random_loss() {
    let traced = std::env::var("STALL_TRACE").ok();
    let losses: Vec<f64> = match std::env::var("STALL_LOSS") {
        Ok(l) => l
            .split(',')
            .map(|l| l.parse().expect("STALL_LOSS=<loss>,<loss>..."))
            .collect(),
        Err(_) => vec![0.01, 0.03],
    };
    for loss in losses {
        let seeds = match traced.as_deref().and_then(|t| t.split_once(':')) {
            Some((l, seed)) if l == loss.to_string() => {
                let seed = seed.parse().expect("STALL_TRACE=<loss>:<seed>");
                seed..=seed
            }
            Some(_) => continue,
            None => 1..=64,
        };
        let runs: Vec<Run> = seeds.clone().map(|seed| run(loss, seed)).collect();
        for (seed, r) in seeds.zip(&runs) {
            eprintln!(
                "loss {loss} seed {seed:>2}: took {:>6.2} s, longest stall {:>5.2} s \
                 (at {:>6.2} s), {} stalls >= 1 s, {} timeouts, {} moves{}",
                secs(r.took),
                secs(r.stall),
                secs(r.stall_from),
                r.long_stalls.len(),
                r.timeouts,
                r.moves,
                if r.exact { "" } else { ", BYTES DIFFER" }
            );
            if traced.is_some() {
                for (at, cause) in &r.causes {
                    eprintln!("timeout at {:.3} s: {cause}", secs(*at));
                }
                for (at, cause) in &r.rewinds {
                    eprintln!("rewind at {:.3} s: {cause}", secs(*at));
                }
                for (at, what) in &r.probes {
                    eprintln!("{what} at {:.3} s", secs(*at));
                }
            }
            if let Some((from, to)) = std::env::var("STALL_WINDOW").ok().and_then(|w| {
                w.split_once(':')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            }) {
                let at = |s: &str| {
                    Duration::from_millis((s.parse::<f64>().expect("seconds") * 1e3) as u64)
                };
                eprintln!("{}", trace(r, at(&from), at(&to)));
            } else if traced.as_deref() == Some(&format!("{loss}:{seed}")) {
                for &(from, stall) in &r.long_stalls {
                    eprintln!("stall of {:.2} s:", secs(stall));
                    eprintln!(
                        "{}",
                        trace(r, from - Duration::from_millis(1500), from + stall)
                    );
                }
            }
        }
        let (took50, took90, took_max) = spread(runs.iter().map(|r| r.took).collect());
        let (stall50, stall90, stall_max) = spread(runs.iter().map(|r| r.stall).collect());
        let timeouts: Vec<usize> = runs.iter().map(|r| r.timeouts).collect();
        let long: usize = runs.iter().map(|r| r.long_stalls.len()).sum();
        eprintln!(
            "loss {loss}, {} seeds: took median {took50:.2} s, p90 {took90:.2} s, max {took_max:.2} s; \
             longest stall median {stall50:.2} s, p90 {stall90:.2} s, max {stall_max:.2} s; \
             {long} stalls >= 1 s; resends on a timer (timeouts, RACK) {} in all, at most {} in a run; {} rewinds",
            runs.len(),
            timeouts.iter().sum::<usize>(),
            timeouts.iter().max().unwrap(),
            runs.iter().map(|r| r.rewinds.len()).sum::<usize>()
        );
        let counted = |i: usize| runs.iter().map(|r| r.counted[i]).sum::<u64>();
        eprintln!(
            "    the sender counted: {} retransmission timeouts, {} fast retransmits, \
             {} tail loss probes, {} window reductions undone",
            counted(0),
            counted(1),
            counted(2),
            counted(3)
        );
        let sent: Vec<&Seen> = runs
            .iter()
            .flat_map(|r| r.log.iter())
            .filter(|s| s.by_sender() && !s.delivered && s.len > 0)
            .collect();
        let small = sent.iter().filter(|s| s.len < MSS / 2).count();
        eprintln!(
            "    data segments sent: {} a run, {} % under half a segment",
            sent.len() / runs.len(),
            small * 100 / sent.len().max(1)
        );
        for (what, of) in [("timeouts", 0), ("rewinds", 1), ("probes", 2)] {
            let mut causes: Vec<&str> = runs
                .iter()
                .flat_map(|r| [&r.causes, &r.rewinds, &r.probes][of].iter().map(|c| c.1))
                .collect();
            causes.sort();
            let mut i = 0;
            while i < causes.len() {
                let n = causes[i..].iter().take_while(|c| **c == causes[i]).count();
                eprintln!("    {n:>4} {what}: {}", causes[i]);
                i += n;
            }
        }
        assert!(runs.iter().all(|r| r.exact));
    }
}
