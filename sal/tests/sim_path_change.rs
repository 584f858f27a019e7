//! A flow that migrates between paths of different round trips, on the
//! deterministic simulator: what the sender's TCP makes of what it
//! measured on the old path (sal-tcp's `Socket::new_path`).
//!
//! The client is dual-homed, `wlan` (10.0.0.1) and `cell` (10.1.0.1), the
//! server single-homed (10.0.0.2). One of the client's paths is short
//! (5 ms each way), the other long (150 ms each way, a cellular path
//! with its queue), both 1 MB/s behind a queue of 30 ms; links may lose
//! packets at random. The flow starts on `wlan` and moves to `cell` once
//! a quarter of a 4 MiB transfer has arrived; `wlan` either stays up (a
//! move made before the old path breaks) or goes down at the move. Taps
//! at both ends of every link tell what the sender sent twice and what
//! arrived twice.
//!
//! `measure_path_changes` (ignored: a measurement, 20 s) prints, for each
//! case (old path dies or stays, shorter or longer path, upload or
//! download, no loss or 1 %), the sender's own retransmission timeouts
//! from the move on, its data segments sent twice, those that arrived
//! twice, and the transfer times; then, for a move off a dead path whose
//! first segment resent on the new path is lost, when that segment
//! arrived. `a_move_to_a_longer_path_sets_off_no_timeout`
//! asserts the case the old path's round trip got wrong.
//! `PATH_TRACE=1` prints, for each run with such a loss, what the taps saw
//! from 450 ms before the move to the repair (times from the move).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::HostConfig;
use sal::wire::TransportProtocol;
use sal::{FlowId, Locator};
use sal_sim::{Delay, HostId, Loss, Network, Path, RateLimit};
use smoltcp::time::{Duration, Instant};

mod common;
use common::sim::{default_route, establish, pattern, prefix, stream};
use common::tap::{parse, Log, Tap};

const WLAN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CELL: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Bytes per second each link carries.
const RATE: u64 = 1_000_000;
/// Bytes each link queues: 30 ms at [`RATE`].
const QUEUE: usize = 30_000;
/// One-way delays of the two kinds of path.
const SHORT: Duration = Duration::from_millis(5);
const LONG: Duration = Duration::from_millis(150);
/// Bytes carried.
const LEN: usize = 4 << 20;

/// How a transfer moves.
#[derive(Debug, Clone, Copy)]
struct Case {
    /// `cell` is the short path, `wlan` the long one.
    to_shorter: bool,
    /// `wlan` goes down at the move.
    dies: bool,
    /// The client sends, else the server does.
    upload: bool,
    loss: f64,
    /// The first data segment the sender sends on the new path is lost.
    lose_first: bool,
}

/// What one transfer showed.
#[derive(Debug, Clone, Copy)]
struct Run {
    took: Duration,
    /// The sender's own count of its retransmission timeouts, from the
    /// move on.
    timeouts: u64,
    /// Data segments the sender sent again.
    resent: usize,
    /// Data segments that arrived twice.
    arrived_twice: usize,
    /// From the move to the arrival of the segment `Case::lose_first`
    /// lost.
    repaired_after: Option<Duration>,
}

fn path(log: &Log, loss: f64, delay: Duration) -> Path {
    Path::new()
        .then(Tap {
            log: log.clone(),
            delivered: false,
        })
        .then(Loss::new(loss))
        .then(RateLimit::new(RATE, QUEUE))
        .then(Delay::new(delay))
        .then(Tap {
            log: log.clone(),
            delivered: true,
        })
}

/// A transfer of [`LEN`] bytes on a flow that starts on `wlan` and moves
/// to `cell` once a quarter has arrived.
fn run(case: Case, seed: u64) -> Run {
    let log: Log = Rc::default();
    let (wlan_delay, cell_delay) = if case.to_shorter {
        (LONG, SHORT)
    } else {
        (SHORT, LONG)
    };
    let taps = log.clone();
    let mut net = Network::with_default_path(seed, move || path(&taps, case.loss, wlan_delay));
    for (a, b) in [(CELL, SERVER), (SERVER, CELL)] {
        net.set_path(a, b, path(&log, case.loss, cell_delay));
    }
    let client = net.add_host(
        "client",
        HostConfig::default(),
        &[("wlan", "10.0.0.1/24"), ("cell", "10.1.0.1/24")],
    );
    let server = net.add_host("server", HostConfig::default(), &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen(prefix("ab/8"), TransportProtocol::Stream, 8)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let start = net.now();
    let data = pattern(LEN, seed);
    let (from, to): ((HostId, FlowId), (HostId, FlowId)) = if case.upload {
        ((client, cflow), (server, sflow))
    } else {
        ((server, sflow), (client, cflow))
    };
    let sender = from.0;
    let lost_seq = Rc::new(std::cell::Cell::new(None::<u32>));
    let moved = Rc::new(std::cell::Cell::new(false));
    let mut moved_at = None;
    let mut silent_since = None;
    let mut timeouts_before = None;
    let got = stream(
        &mut net,
        from,
        to,
        &data,
        Duration::from_secs(600),
        |net, received| {
            if case.lose_first && silent_since.is_none() && received > LEN / 4 {
                // The old path loses all the sender's data (the flight
                // and what follows) from 400 ms before the move; then the
                // first segment the sender sends on the new path is lost
                // too.
                silent_since = Some(net.now());
                let (lost, moved) = (lost_seq.clone(), moved.clone());
                net.set_filter(Some(Box::new(move |p| {
                    let data =
                        parse(p, Instant::ZERO, false).filter(|s| s.is_data_segment() && s.len > 0);
                    let wlan = Locator::Ipv4(WLAN);
                    let old_path = if case.upload {
                        p.src == wlan
                    } else {
                        p.dst == wlan
                    };
                    if data.is_none() || old_path || !moved.get() || lost.get().is_some() {
                        return data.is_some() && old_path;
                    }
                    lost.set(data.map(|s| s.seq));
                    true
                })));
            }
            let due = match silent_since {
                Some(since) => net.now() >= since + Duration::from_millis(400),
                None => !case.lose_first && received > LEN / 4,
            };
            if timeouts_before.is_none() && due {
                timeouts_before = Some(net.host(sender).stats().tcp_timeouts);
                if case.dies {
                    net.link_down(WLAN);
                }
                net.host(client).migrate(cflow, "cell").unwrap();
                moved_at = Some(net.now());
                moved.set(true);
            }
        },
    );
    assert!(
        got == data,
        "{case:?} seed {seed}: the stream arrived byte for byte"
    );
    let timeouts = net.host(sender).stats().tcp_timeouts - timeouts_before.unwrap_or(0);
    let by_sender =
        |src: Locator| [Locator::Ipv4(WLAN), Locator::Ipv4(CELL)].contains(&src) == case.upload;
    let (mut resent, mut arrived_twice) = (0, 0);
    let mut sent_to = None::<u32>;
    let mut arrived = HashSet::new();
    for s in log.borrow().iter() {
        if !s.is_data_segment() || s.len == 0 || !by_sender(s.src) {
            continue;
        }
        let end = s.seq.wrapping_add(s.len);
        if s.delivered {
            if !arrived.insert((s.seq, end)) {
                arrived_twice += 1;
            }
        } else if sent_to.is_some_and(|to| to.wrapping_sub(end) as i32 >= 0) {
            resent += 1;
        } else {
            sent_to = Some(end);
        }
    }
    let repaired_after = lost_seq.get().zip(moved_at).and_then(|(seq, moved)| {
        let log = log.borrow();
        let repair = log.iter().find(|s| {
            let holds = seq.wrapping_sub(s.seq) < s.len;
            s.delivered && s.is_data_segment() && holds && s.at > moved
        })?;
        Some(repair.at - moved)
    });
    if std::env::var_os("PATH_TRACE").is_some() {
        if let Some((seq, moved)) = lost_seq.get().zip(moved_at) {
            trace(&log.borrow(), seq, moved, repaired_after);
        }
    }
    Run {
        took: net.now() - start,
        timeouts,
        resent,
        arrived_twice,
        repaired_after,
    }
}

/// Prints what the taps saw from 450 ms before the move to just after the
/// segment at `seq`, lost on the new path, arrived (`PATH_TRACE`).
fn trace(log: &[common::tap::Seen], seq: u32, moved: Instant, repaired: Option<Duration>) {
    let from = moved - Duration::from_millis(450);
    let to = moved + repaired.unwrap_or(Duration::from_secs(2)) + Duration::from_millis(30);
    eprintln!("lost on the new path: seq {seq}; ms from the move:");
    for s in log.iter().filter(|s| s.at >= from && s.at <= to) {
        let at = s.at.total_millis() - moved.total_millis();
        let what = match (s.tcp, s.control) {
            (true, false) => format!("seq {} ack {} len {}", s.seq, s.ack, s.len),
            (true, true) => format!("control, seq {} ack {} len {}", s.seq, s.ack, s.len),
            (false, _) => "control".to_string(),
        };
        let how = if s.delivered { "arrived" } else { "sent" };
        eprintln!("{at:>6} {how:<7} from {:<9} {what}", s.src.to_string());
    }
}

fn secs(d: Duration) -> f64 {
    d.total_millis() as f64 / 1000.0
}

#[test]
fn a_move_to_a_longer_path_sets_off_no_timeout() {
    // An upload moves from a 10 ms path to a 300 ms one, no loss. With the
    // old path's round trip kept, the timer of the flight held back
    // during the move fired 38 ms after the flight was resent on the new
    // path (a timeout of about 220 ms), and the sender resent it all from
    // one segment; with the old path up, a second timeout followed.
    for dies in [false, true] {
        let case = Case {
            to_shorter: false,
            dies,
            upload: true,
            loss: 0.0,
            lose_first: false,
        };
        let r = run(case, 1);
        assert_eq!(r.timeouts, 0, "{case:?}: {r:?}");
    }
}

#[test]
fn a_segment_lost_on_a_new_path_is_resent_at_the_new_path_s_pace() {
    // A flow moves from a dead 300 ms path to a 10 ms one, and the first
    // segment the sender resends on the new path is lost; after a move
    // only the retransmission timer repairs the head. Timed by the
    // control exchange of the move, it fires about 200 ms after the
    // resend; with no sample of the new path, after the initial timeout of
    // 1 s. Upload: the sender moved, and the answer to its RSYN seeds
    // the new path (814 ms after the move before that seed, 226 ms with
    // it). Download: the sender is the end that did not move, and the
    // answer to its RSYN-ACK seeds the new path; but that answer came
    // back beside the answer to the path challenge that moves the flow
    // (`nat.rs`), before it, while the sender still ran on the old path:
    // the seed was ignored (the old path had its estimate), the move then
    // reset the estimator to the initial 1 s, and the liveness probe
    // 0.8 s later, whose answer resends the flight, repaired it 814 ms
    // after the move. The answer is now kept for the move (232 ms).
    for upload in [true, false] {
        let case = Case {
            to_shorter: true,
            dies: true,
            upload,
            loss: 0.0,
            lose_first: true,
        };
        let r = run(case, 1);
        let repaired = r.repaired_after.expect("the lost segment arrived");
        assert!(
            repaired < Duration::from_millis(600),
            "{case:?}: repaired {repaired} after the move ({r:?})"
        );
    }
}

#[test]
#[ignore = "a measurement: prints figures, takes 20 s"]
fn measure_path_changes() {
    for dies in [true, false] {
        for to_shorter in [false, true] {
            for upload in [true, false] {
                for loss in [0.0, 0.01] {
                    let case = Case {
                        to_shorter,
                        dies,
                        upload,
                        loss,
                        lose_first: false,
                    };
                    // Without loss every seed runs alike.
                    let seeds = if loss == 0.0 { 1..=1 } else { 1..=32 };
                    let runs: Vec<Run> = seeds.clone().map(|seed| run(case, seed)).collect();
                    let mut took: Vec<f64> = runs.iter().map(|r| secs(r.took)).collect();
                    took.sort_by(f64::total_cmp);
                    eprintln!(
                        "old path {} {} {} loss {loss}, {} seeds: took median {:.2} s, p90 {:.2} s, \
                         max {:.2} s; \
                         timeouts after the move {}, segments resent {}, arrived twice {}",
                        if dies { "dies, " } else { "stays," },
                        if to_shorter { "long -> short" } else { "short -> long" },
                        if upload { "upload  " } else { "download" },
                        runs.len(),
                        took[took.len() / 2],
                        took[took.len() * 9 / 10],
                        took[took.len() - 1],
                        runs.iter().map(|r| r.timeouts).sum::<u64>(),
                        runs.iter().map(|r| r.resent).sum::<usize>(),
                        runs.iter().map(|r| r.arrived_twice).sum::<usize>(),
                    );
                }
            }
        }
    }
    for to_shorter in [true, false] {
        for upload in [true, false] {
            let case = Case {
                to_shorter,
                dies: true,
                upload,
                loss: 0.0,
                lose_first: true,
            };
            let r = run(case, 1);
            eprintln!(
                "old path dies,  {} {} first segment resent lost: repaired {:.3} s after the move, \
                 timeouts after the move {}, took {:.2} s",
                if to_shorter { "long -> short" } else { "short -> long" },
                if upload { "upload  " } else { "download" },
                r.repaired_after.map_or(f64::NAN, secs),
                r.timeouts,
                secs(r.took),
            );
        }
    }
}
