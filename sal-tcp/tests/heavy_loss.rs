//! Bulk transfers through heavy random loss (10 % and 20 % of the
//! segments each way, as well as 1 % and 3 % to compare): the
//! retransmission timeout must come back to the path's round trip after
//! it backed off, not stay backed off (see `RttEstimator` in `src/rtt.rs`).
//!
//! The network is the simplest there is, to see the timer alone: a link
//! of 1 MB/s each way, first in first out, a fixed one-way delay, each
//! segment lost at random, and a queue as long as it takes; one end sends
//! 200 kB with the SAL's configuration (no timestamps) and a given MSS.
//! Knowing when each segment arrives, the test tells a timeout (the
//! sender resends its oldest unacknowledged segment when nothing arrived)
//! from a retransmission an ACK brought, and the timeout in force from the
//! time since the timer last started (an ACK of new data, or the timeout
//! before).
//!
//! `measure_heavy_loss` (ignored) prints the figures of 64 seeds a case;
//! `HEAVY_TRACE=<mss>:<loss>:<seed>` prints that transfer's segments,
//! ACKs, losses and timeouts instead. `timeouts_under_heavy_loss_stay_bounded`
//! bounds them at 10 %.

mod common;

use std::collections::VecDeque;

use common::{pattern, HEADROOM};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sal_tcp::{Config, Duration, Instant, Ipv4Address, Socket, TcpSeqNumber, MAX_HEADER_LEN};

/// One-way delay.
const DELAY: Duration = Duration::from_millis(10);
/// Bytes per second each way.
const RATE: u64 = 1_000_000;
/// Bytes sent.
const LEN: usize = 200_000;

/// What one transfer showed, from the sender's side.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// From the SYN to the receiver holding every byte.
    took: Duration,
    /// Timeouts: the oldest unacknowledged segment resent when nothing
    /// had arrived.
    timeouts: u32,
    /// The longest timeout in force at a timeout.
    max_rto: Duration,
    /// The longest time the sender's acknowledged sequence did not move.
    stall: Duration,
}

fn transfer(mss: u16, loss: f64, seed: u64) -> Option<Run> {
    let config = Config {
        mss,
        ..Config::default()
    };
    let data = pattern(LEN, seed);
    let mut ends = [Socket::new(&config), Socket::new(&config)];
    ends[0].connect(TcpSeqNumber(seed as i32)).unwrap();
    ends[1].listen(TcpSeqNumber(!seed as i32)).unwrap();
    let addr = [Ipv4Address::new(10, 0, 0, 1), Ipv4Address::new(10, 0, 0, 2)];
    let mut wire: [VecDeque<(Instant, Vec<u8>)>; 2] = Default::default();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut now = Instant::from_millis(0);
    let (mut sent, mut received) = (0, Vec::with_capacity(LEN));
    // The sender's view: the highest sequence number sent, the ACK, when
    // it last moved and when the timer last started.
    let mut max_sent: Option<TcpSeqNumber> = None;
    let mut una: Option<TcpSeqNumber> = None;
    let (mut una_at, mut timer_at) = (now, now);
    let (mut timeouts, mut max_rto, mut stall) = (0, Duration::ZERO, Duration::ZERO);
    let mut arrived_at = None;
    let mut link_free = [now; 2];
    let deadline = Instant::from_secs(3600);
    let trace = std::env::var("HEAVY_TRACE").is_ok_and(|t| t == format!("{mss}:{loss}:{seed}"));
    while received.len() < LEN {
        // Deliver the next segment due; the receiving end answers at once.
        let due = (0..2)
            .filter(|&i| wire[i].front().is_some_and(|(at, _)| *at <= now))
            .min_by_key(|&i| wire[i][0].0);
        if let Some(i) = due {
            let (_, segment) = wire[i].pop_front().unwrap();
            ends[1 - i].handle_segment(now, &segment).unwrap();
            if i == 1 {
                arrived_at = Some(now);
                let repr = sal_tcp::parse_segment(&segment).unwrap();
                if trace {
                    eprintln!(
                        "{:>9.3}   gets ack {:?} sack {:?}",
                        secs(now - Instant::from_millis(0)),
                        repr.ack_number,
                        repr.sack_ranges
                    );
                }
                let ack = repr.ack_number;
                if let Some(ack) = ack.filter(|&a| una.is_none_or(|u| a > u)) {
                    stall = stall.max(now - una_at);
                    (una, una_at, timer_at) = (Some(ack), now, now);
                }
            }
        }
        // The applications, then what each end sends.
        if sent < LEN && ends[0].may_send() {
            sent += ends[0].send_slice(&data[sent..]).unwrap();
        }
        let mut chunk = [0; 4096];
        while let Ok(n @ 1..) = ends[1].recv_slice(&mut chunk) {
            received.extend_from_slice(&chunk[..n]);
        }
        for i in 0..2 {
            let mut packet = vec![0; HEADROOM + MAX_HEADER_LEN + 1500];
            while let Some(len) =
                ends[i].poll_transmit(now, addr[i], addr[1 - i], &mut packet[HEADROOM..])
            {
                let segment = packet[HEADROOM..HEADROOM + len].to_vec();
                if i == 0 {
                    let repr = sal_tcp::parse_segment(&segment).unwrap();
                    let end = repr.seq_number + repr.payload.len();
                    let resent = max_sent.is_some_and(|m| end <= m) && !repr.payload.is_empty();
                    if trace {
                        eprintln!(
                            "{:>9.3} sends {} len {}{}",
                            secs(now - Instant::from_millis(0)),
                            repr.seq_number,
                            repr.payload.len(),
                            if resent { " (resent)" } else { "" }
                        );
                    }
                    if resent && Some(repr.seq_number) == una && arrived_at != Some(now) {
                        if trace {
                            eprintln!("  timeout after {:.3} s", secs(now - timer_at));
                        }
                        timeouts += 1;
                        max_rto = max_rto.max(now - timer_at);
                        timer_at = now;
                    }
                    max_sent = Some(max_sent.map_or(end, |m| m.max(end)));
                }
                // Each segment takes its time on the link.
                let wire_len = (HEADROOM + segment.len()) as u64;
                link_free[i] =
                    link_free[i].max(now) + Duration::from_micros(wire_len * 1_000_000 / RATE);
                if !rng.random_bool(loss) {
                    wire[i].push_back((link_free[i] + DELAY, segment));
                } else if trace {
                    eprintln!(
                        "{:>9.3}     end {i} segment lost",
                        secs(now - Instant::from_millis(0))
                    );
                }
            }
        }
        let next = ends
            .iter()
            .filter_map(|s| s.poll_at())
            .chain(wire.iter().filter_map(|w| w.front().map(|(at, _)| *at)))
            .min()?;
        if next > deadline {
            return None;
        }
        now = now.max(next);
    }
    assert!(received == data, "seed {seed}: bytes differ");
    Some(Run {
        took: now - Instant::from_millis(0),
        timeouts,
        max_rto,
        stall: stall.max(now - una_at),
    })
}

fn secs(d: Duration) -> f64 {
    d.total_millis() as f64 / 1e3
}

/// Median, 90th percentile and maximum, in seconds.
fn spread(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let pct = |p: usize| secs(v[(v.len() - 1) * p / 100]);
    (pct(50), pct(90), secs(*v.last().unwrap()))
}

fn summary(mss: u16, loss: f64, seeds: std::ops::RangeInclusive<u64>) -> Vec<Run> {
    let runs: Vec<Run> = seeds
        .clone()
        .map(|seed| {
            transfer(mss, loss, seed)
                .unwrap_or_else(|| panic!("mss {mss} loss {loss} seed {seed}: not done in an hour"))
        })
        .collect();
    let (t50, t90, tmax) = spread(runs.iter().map(|r| r.took).collect());
    let (s50, s90, smax) = spread(runs.iter().map(|r| r.stall).collect());
    let (r50, r90, rmax) = spread(runs.iter().map(|r| r.max_rto).collect());
    eprintln!(
        "mss {mss} loss {loss}, {} seeds: took median {t50:.2} s, p90 {t90:.2} s, max {tmax:.2} s; \
         timeouts {} ({} at most); longest stall median {s50:.2} s, p90 {s90:.2} s, max {smax:.2} s; \
         largest timeout median {r50:.2} s, p90 {r90:.2} s, max {rmax:.2} s",
        runs.len(),
        runs.iter().map(|r| r.timeouts).sum::<u32>(),
        runs.iter().map(|r| r.timeouts).max().unwrap(),
    );
    runs
}

#[test]
fn timeouts_under_heavy_loss_stay_bounded() {
    // 10 % loss each way, 64 transfers a segment size: no timeout in force
    // above 16 s, and each transfer done within a minute. When any
    // retransmission dropped the round-trip timing, the timeout reached
    // 29.3 s (MSS 200) and 29.6 s (MSS 1448), and the slowest transfers
    // took 88.6 s and 63.6 s; now 14.6 s and 7.4 s, 49.9 s and 20.7 s.
    for mss in [200, 1448] {
        for (seed, run) in (1..).zip(summary(mss, 0.1, 1..=64)) {
            assert!(
                run.max_rto <= Duration::from_secs(16) && run.took <= Duration::from_secs(60),
                "mss {mss} seed {seed}: {run:?}"
            );
        }
    }
}

#[test]
#[ignore = "a measurement: prints figures"]
fn measure_heavy_loss() {
    if let Ok(t) = std::env::var("HEAVY_TRACE") {
        let mut p = t.split(':');
        let (mss, loss, seed) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let run = transfer(
            mss.parse().unwrap(),
            loss.parse().unwrap(),
            seed.parse().unwrap(),
        );
        eprintln!("{run:?}");
        return;
    }
    for mss in [200, 1448] {
        for loss in [0.01, 0.03, 0.1, 0.2] {
            summary(mss, loss, 1..=64);
        }
    }
}
