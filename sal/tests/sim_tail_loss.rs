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

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;

use rand::rngs::SmallRng;
use rand::Rng;
use sal::proto::{Event, HostConfig};
use sal::wire::{SalPacket, TransportProtocol, BASE_HEADER_LEN};
use sal::{FlowId, Locator};
use sal_sim::{Delay, DropReason, Network, Node, Packet, Path, RateLimit, Verdict};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpPacket;

mod common;
use common::sim::{default_route, pattern, prefix, svc, Side};

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

/// A TCP segment seen by a tap.
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    /// Sent by the server, else by the client.
    from_server: bool,
    /// Recorded where it arrived, else where it was sent.
    delivered: bool,
    seq: u32,
    /// Sequence space: payload, plus one for a SYN or a FIN.
    len: u32,
}

type Log = Rc<RefCell<Vec<Seen>>>;

/// The TCP segment a SAL packet carries outside a control message.
fn segment(packet: &Packet) -> Option<(u32, u32, bool)> {
    let sal = SalPacket::new_checked(&packet.payload[..]).ok()?;
    if sal.protocol() != 6 || sal.header_len() > BASE_HEADER_LEN {
        return None;
    }
    let tcp = TcpPacket::new_checked(&packet.payload[sal.header_len()..]).ok()?;
    let len = tcp.payload().len() as u32 + u32::from(tcp.syn()) + u32::from(tcp.fin());
    Some((tcp.seq_number().0 as u32, len, tcp.syn()))
}

/// Records the TCP segments crossing it.
#[derive(Debug)]
struct Tap {
    log: Log,
    delivered: bool,
}

impl Node for Tap {
    fn process(&mut self, packet: &Packet, now: Instant, _: &mut SmallRng) -> Verdict {
        if let Some((seq, len, _)) = segment(packet) {
            self.log.borrow_mut().push(Seen {
                at: now,
                from_server: packet.src != Locator::Ipv4(CLIENT),
                delivered: self.delivered,
                seq,
                len,
            });
        }
        Verdict::Pass(now)
    }
}

/// Loses TCP segments outside control messages (not SYNs) with
/// probability `p`.
#[derive(Debug)]
struct SegmentLoss(f64);

impl Node for SegmentLoss {
    fn process(&mut self, packet: &Packet, now: Instant, rng: &mut SmallRng) -> Verdict {
        match segment(packet) {
            Some((_, _, false)) if rng.random::<f64>() < self.0 => Verdict::Drop(DropReason::Loss),
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
    let mut net = Network::with_default_path(seed, move || {
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
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", HostConfig::default(), &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen(prefix("ab/8"), TransportProtocol::Stream, 8)
        .expect("a fresh host listens");
    net.settle();
    let start = net.now();
    let cflow = net
        .host(client)
        .connect(svc("ab01"), TransportProtocol::Stream)
        .unwrap();
    let question = pattern(REQUEST, seed);
    let reply = pattern(answer, seed + 1);
    let (mut client_side, mut server_side) = (Side::default(), Side::default());
    let mut sflow: Option<FlowId> = None;
    let mut shut = false;
    let mut got = Vec::new();
    let done = net.run_until(Duration::from_secs(60), |net| {
        if net
            .sim_host(client)
            .events
            .contains(&Event::Connected(cflow))
        {
            client_side.send(net, client, cflow, &question);
        }
        if sflow.is_none() {
            sflow = net.host(server).accept(listener).ok();
        }
        if let Some(s) = sflow {
            if server_side.received.len() < REQUEST {
                server_side.recv(net, server, s);
            }
            if server_side.received.len() == REQUEST {
                server_side.send(net, server, s, &reply);
                if server_side.sent == reply.len() && !shut {
                    net.host(server).shutdown(s).expect("the server's FIN");
                    shut = true;
                }
            }
        }
        client_side.recv(net, client, cflow);
        got = client_side.received.clone();
        got.len() == answer
    });
    assert!(
        done,
        "seed {seed}: the answer stalled at {} bytes",
        got.len()
    );
    assert_eq!(got, reply);
    let took = net.now() - start;
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
    for s in log {
        if s.delivered && s.from_server != server {
            last_arrival = Some(s.at);
            continue;
        }
        if s.delivered || s.from_server != server || s.len == 0 {
            continue;
        }
        let end = s.seq.wrapping_add(s.len);
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
