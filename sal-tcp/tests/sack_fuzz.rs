//! Randomized transfers through random and burst loss, reordering, small
//! windows, slow readers and sequence numbers that wrap, with the SACK-based
//! recovery at work: every byte must arrive once and in order, the transfer
//! must finish, and every segment must hold to what the peer allowed.
//!
//! A D-SACK block (RFC 2883: the first block, below the acknowledgement
//! or within the second) must name bytes the end really received twice.
//!
//! Each case is drawn from a seed; a failing seed is reported so that it
//! can be replayed alone (`SACK_FUZZ_SEED=n`). `SACK_FUZZ_CASES` runs more.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::{pattern, Conditions, End, Net};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sal_tcp::{Config, CongestionControl, Duration, Ipv4Address, Socket, State, TcpSeqNumber};
use smoltcp::wire::TcpControl;

/// What one end's segments were checked against.
#[derive(Default)]
struct Seen {
    /// The furthest right edge (sequence number) each end ever advertised.
    edge: [Option<TcpSeqNumber>; 2],
    /// The highest sequence number (end of data) each end ever sent.
    sent_to: [Option<TcpSeqNumber>; 2],
    /// Data bytes each end sent, first copies and resent.
    data_bytes: [u64; 2],
    /// Segments with SACK blocks.
    sack_segments: u64,
    /// D-SACK blocks sent.
    dsack_blocks: u64,
    /// How many times each byte of each end's data (and its FIN, last)
    /// reached the other end.
    arrivals: [Vec<u8>; 2],
}

fn later(a: Option<TcpSeqNumber>, b: TcpSeqNumber) -> Option<TcpSeqNumber> {
    Some(a.map_or(b, |a| a.max(b)))
}

#[derive(Debug)]
struct Case {
    config: Config,
    conditions: Conditions,
    isn: [i32; 2],
    sizes: [usize; 2],
    read_rate: Option<usize>,
    burst: f64,
    pressure: bool,
}

fn draw(seed: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let small = rng.random_bool(0.3);
    let config = Config {
        mss: [1448, 1448, 536, 200][rng.random_range(0..4)],
        max_recv_buffer: if small {
            rng.random_range(8_000..60_000)
        } else {
            1 << 20
        },
        max_send_buffer: if rng.random_bool(0.3) {
            rng.random_range(8_000..60_000)
        } else {
            1 << 20
        },
        min_buffer: 1000,
        congestion_control: if rng.random_bool(0.5) {
            CongestionControl::Cubic
        } else {
            CongestionControl::Reno
        },
        timestamps: rng.random_bool(0.5),
        ack_delay: if rng.random_bool(0.7) {
            Some(Duration::from_millis(10))
        } else {
            None
        },
        ..Config::default()
    };
    // Sequence numbers that wrap past 2^32, or cross 2^31, mid-transfer.
    let mut isn = || -> i32 {
        match rng.random_range(0..3) {
            0 => -(rng.random_range(0..400_000)),
            1 => i32::MAX - rng.random_range(0..400_000),
            _ => rng.random(),
        }
    };
    let isn = [isn(), isn()];
    let conditions = Conditions {
        delay: Duration::from_millis(rng.random_range(1..30)),
        jitter: Duration::from_millis(if rng.random_bool(0.5) {
            rng.random_range(0..10)
        } else {
            0
        }),
        loss: [0.0, 0.01, 0.03, 0.05, 0.1, 0.15][rng.random_range(0..6)],
    };
    Case {
        config,
        conditions,
        isn,
        sizes: [rng.random_range(1..400_000), rng.random_range(0..100_000)],
        read_rate: rng.random_bool(0.2).then(|| rng.random_range(50..2000)),
        burst: [0.0, 0.02, 0.05][rng.random_range(0..3)],
        pressure: rng.random_bool(0.2),
    }
}

/// Runs one case; returns how many D-SACK blocks were sent.
fn run(seed: u64) -> u64 {
    let case = draw(seed);
    let shift = case.config.window_shift();
    let data = [
        pattern(case.sizes[0], seed.wrapping_mul(3)),
        pattern(case.sizes[1], seed.wrapping_mul(3) + 1),
    ];
    let mut client = Socket::new(&case.config);
    client.connect(TcpSeqNumber(case.isn[0])).unwrap();
    let mut server = Socket::new(&case.config);
    server.listen(TcpSeqNumber(case.isn[1])).unwrap();
    let mut net = Net::new(
        [
            End::new(client, Ipv4Address::new(10, 0, 0, 1), data[0].clone()),
            End::new(server, Ipv4Address::new(10, 0, 0, 2), data[1].clone()),
        ],
        case.conditions,
        seed,
    );
    net.ends[1].read_rate = case.read_rate;

    let seen = Rc::new(RefCell::new(Seen {
        arrivals: [vec![0; case.sizes[0] + 1], vec![0; case.sizes[1] + 1]],
        ..Seen::default()
    }));
    let isn = case.isn;
    // The offset of `seq` in end `i`'s data (its FIN at the data's length).
    let offset_of = move |i: usize, seq: TcpSeqNumber| {
        let first = TcpSeqNumber(isn[i]) + 1;
        (seq.0.wrapping_sub(first.0)) as u32 as usize
    };
    let s = seen.clone();
    net.arrive = Some(Box::new(move |i, _socket: &Socket, segment: &[u8]| {
        // End `i` receives the other's bytes.
        let repr = sal_tcp::parse_segment(segment).unwrap();
        if repr.control == TcpControl::Syn {
            return;
        }
        let mut seen = s.borrow_mut();
        let start = offset_of(1 - i, repr.seq_number);
        let len = repr.payload.len() + usize::from(repr.control == TcpControl::Fin);
        let got = &mut seen.arrivals[1 - i];
        for n in got.iter_mut().skip(start).take(len) {
            *n = n.saturating_add(1);
        }
    }));
    let sent_data = data.clone();
    let s = seen.clone();
    let trace = std::env::var("SACK_FUZZ_TRACE").is_ok();
    net.inspect = Some(Box::new(move |i, _socket: &Socket, segment: &[u8]| {
        let repr = sal_tcp::parse_segment(segment).unwrap();
        let mut seen = s.borrow_mut();
        if trace {
            eprintln!(
                "{i}: {:?} seq {} len {} ack {:?} win {} sack {:?} poll_at {:?}",
                repr.control,
                repr.seq_number,
                repr.payload.len(),
                repr.ack_number,
                repr.window_len,
                repr.sack_ranges,
                _socket.poll_at(),
            );
        }
        let seq = repr.seq_number;
        let syn = repr.control == TcpControl::Syn;
        if let Some(ack) = repr.ack_number {
            let window = if syn {
                repr.window_len as usize
            } else {
                (repr.window_len as usize) << shift
            };
            seen.edge[i] = later(seen.edge[i], ack + window);
            // A D-SACK block (RFC 2883 4): the first, below the
            // acknowledgement or within the second block. Its bytes
            // reached this end twice.
            let block = |b: Option<(u32, u32)>| {
                b.map(|(l, r)| (TcpSeqNumber(l as i32), TcpSeqNumber(r as i32)))
            };
            let dsack = block(repr.sack_ranges[0]).filter(|&(left, right)| {
                left < ack
                    || block(repr.sack_ranges[1]).is_some_and(|(l, r)| l <= left && right <= r)
            });
            if let Some((left, right)) = dsack {
                seen.dsack_blocks += 1;
                assert!(left < right, "seed {seed}: end {i} D-SACKs {left}..{right}");
                let from = offset_of(1 - i, left);
                let got = &seen.arrivals[1 - i];
                assert!(
                    from + (right - left) <= got.len()
                        && got[from..from + (right - left)].iter().all(|&n| n >= 2),
                    "seed {seed}: end {i} D-SACKs {left}..{right} (ACK {ack}), \
                     not all received twice"
                );
            }
            // SACK blocks: above the acknowledgement, never touching it
            // (such a block should have moved it), within what was sent.
            for (n, &(left, right)) in repr.sack_ranges.iter().flatten().enumerate() {
                let (left, right) = (TcpSeqNumber(left as i32), TcpSeqNumber(right as i32));
                seen.sack_segments += 1;
                assert!(
                    (n == 0 && dsack.is_some()) || (ack < left && left < right),
                    "seed {seed}: end {i} SACKs {left}..{right} with ACK {ack}"
                );
                let sent_to = seen.sent_to[1 - i].expect("SACK before data");
                assert!(
                    right <= sent_to,
                    "seed {seed}: end {i} SACKs {left}..{right}, beyond {sent_to} sent"
                );
            }
        }
        let len = repr.payload.len();
        // A FIN's sequence number may be D-SACKed too.
        if repr.control == TcpControl::Fin {
            seen.sent_to[i] = later(seen.sent_to[i], seq + len + 1);
        }
        if len == 0 {
            return;
        }
        let start = seq;
        let end = seq + len;
        seen.sent_to[i] = later(seen.sent_to[i], end);
        seen.data_bytes[i] += len as u64;
        // Every byte sent is the application's byte at that place.
        let first = TcpSeqNumber(isn[i]) + 1;
        let offset = (start.0.wrapping_sub(first.0)) as u32 as usize;
        assert!(
            offset + len <= sent_data[i].len(),
            "seed {seed}: end {i} sent {start}+{len}, past its {} bytes",
            sent_data[i].len()
        );
        assert!(
            repr.payload == &sent_data[i][offset..offset + len],
            "seed {seed}: end {i} sent wrong bytes at {start}"
        );
        // Within the furthest edge the peer ever advertised (zero-window
        // probes included: they ask for one byte past a closed window).
        let edge = seen.edge[1 - i].expect("data before any window");
        assert!(
            end <= edge + 1,
            "seed {seed}: end {i} sent {start}..{end} past the peer's edge {edge}"
        );
    }));
    let burst = case.burst;
    let mut drop_rng = SmallRng::seed_from_u64(seed ^ 0x5ac);
    let mut dropping = 0u32;
    let trace = std::env::var("SACK_FUZZ_TRACE").is_ok();
    let mut highest: [Option<TcpSeqNumber>; 2] = [None; 2];
    net.dropper = Some(Box::new(move |i, segment: &[u8]| {
        // Bursts: a run of consecutive segments of new data from one end
        // lost (resent data meets random loss only: a burst that ate every
        // retransmission would only measure the timeout's backoff).
        let repr = sal_tcp::parse_segment(segment).unwrap();
        if repr.payload.is_empty() {
            return false;
        }
        let end = repr.seq_number + repr.payload.len();
        let new = highest[i].is_none_or(|h| end > h);
        highest[i] = later(highest[i], end);
        if dropping == 0 && new && burst > 0.0 && drop_rng.random_bool(burst) {
            dropping = drop_rng.random_range(2..12);
        }
        if dropping > 0 {
            // A burst lasts so many data segments, resent ones included.
            dropping -= 1;
            if !new {
                return false;
            }
            if trace {
                eprintln!("   dropped");
            }
            return true;
        }
        false
    }));

    let limit = Duration::from_secs(1200);
    let done = if case.pressure {
        // Memory pressure at the receiver, on and off.
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x9e55);
        let deadline = net.now + limit;
        let mut done = false;
        while !done && net.now < deadline {
            let on = rng.random_bool(0.3);
            net.ends[1].socket.set_memory_pressure(on);
            let before = net.now;
            done = net.run_until(Duration::from_millis(200), complete);
            if !done && net.now == before {
                // Nothing scheduled within the step: one more, unbounded.
                net.ends[1].socket.set_memory_pressure(false);
                done = net.run_to_completion(deadline - net.now);
                break;
            }
        }
        net.ends[1].socket.set_memory_pressure(false);
        done || net.run_to_completion(limit)
    } else {
        net.run_to_completion(limit)
    };
    let seen = seen.borrow();
    if !done {
        eprintln!("seed {seed}: {case:?}");
        if std::env::var("SACK_FUZZ_TRACE").is_ok() {
            eprintln!("{:#?}", net.ends[0].socket);
        }
    }
    assert!(
        done,
        "seed {seed}: not done by {}: received {} / {} and {} / {}, lost {}, states {} {}, \
         data sent {:?}",
        net.now,
        net.ends[1].received.len(),
        case.sizes[0],
        net.ends[0].received.len(),
        case.sizes[1],
        net.lost,
        net.ends[0].socket.state(),
        net.ends[1].socket.state(),
        seen.data_bytes,
    );
    assert!(
        net.ends[1].received == data[0],
        "seed {seed}: a -> b differs"
    );
    assert!(
        net.ends[0].received == data[1],
        "seed {seed}: b -> a differs"
    );
    seen.dsack_blocks
}

fn complete(net: &Net) -> bool {
    let [a, b] = &net.ends;
    let closed = |s: State| matches!(s, State::Closed | State::TimeWait);
    a.received.len() == b.to_send.len()
        && b.received.len() == a.to_send.len()
        && closed(a.socket.state())
        && closed(b.socket.state())
}

fn cases() -> Vec<u64> {
    if let Some(seed) = std::env::var("SACK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("SACK_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    (0..n).collect()
}

#[test]
fn random_lossy_transfers_arrive_byte_exact_and_finish() {
    let cases = cases();
    let dsack_blocks: u64 = cases.iter().map(|&seed| run(seed)).sum();
    eprintln!("{} cases, {dsack_blocks} D-SACK blocks", cases.len());
    // The check above was put to work.
    assert!(cases.len() < 48 || dsack_blocks > 0);
}
