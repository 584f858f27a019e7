//! Two sockets talking through an in-memory network: byte-exact transfers on
//! a perfect network and through loss and reordering, address changes
//! mid-flow, a window that never promises more than the buffer can hold,
//! and buffer memory that follows use.

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::{pattern, Conditions, Net};
use sal_tcp::{Config, CongestionControl, Duration, Ipv4Address, Socket, State};
use smoltcp::wire::TcpControl;

const MINUTE: Duration = Duration::from_secs(60);

fn lossy(loss: f64) -> Conditions {
    Conditions {
        delay: Duration::from_millis(10),
        jitter: Duration::from_millis(8),
        loss,
    }
}

#[track_caller]
fn assert_exchanged(net: &Net, a_to_b: &[u8], b_to_a: &[u8]) {
    let [a, b] = &net.ends;
    assert!(b.received == a_to_b, "a -> b differs");
    assert!(a.received == b_to_a, "b -> a differs");
}

#[test]
fn transfers_byte_exact_on_a_perfect_network() {
    let (up, down) = (pattern(1 << 20, 1), pattern(300_000, 2));
    let mut net = Net::connected(
        &Config::default(),
        [up.clone(), down.clone()],
        Conditions::PERFECT,
        7,
    );
    assert!(net.run_to_completion(MINUTE));
    assert_exchanged(&net, &up, &down);
    assert_eq!(net.lost, 0);
}

#[test]
fn transfers_byte_exact_through_loss_and_reordering() {
    // sal-tcp: seed 7, not 1, for 1 %: with silly window avoidance the
    // transfer takes fewer segments, and seed 1 loses none of them.
    for (seed, loss, congestion_control) in [
        (7, 0.01, CongestionControl::Cubic),
        (2, 0.05, CongestionControl::Cubic),
        (3, 0.05, CongestionControl::Reno),
        (4, 0.10, CongestionControl::Cubic),
    ] {
        let config = Config {
            congestion_control,
            timestamps: seed % 2 == 0,
            ..Config::default()
        };
        let (up, down) = (pattern(200_000, seed), pattern(50_000, seed + 100));
        let mut net = Net::connected(&config, [up.clone(), down.clone()], lossy(loss), seed);
        assert!(
            net.run_to_completion(MINUTE * 10),
            "seed {seed}: not done by {}: received {} / {}, {}, states {} {}",
            net.now,
            net.ends[1].received.len(),
            net.ends[0].received.len(),
            net.lost,
            net.ends[0].socket.state(),
            net.ends[1].socket.state(),
        );
        assert_exchanged(&net, &up, &down);
        assert!(net.lost > 0, "seed {seed}: the network lost nothing");
    }
}

#[test]
fn survives_address_changes_mid_transfer() {
    // Segments carry checksums over the addresses they were sent with; the
    // sockets never see addresses, so moving both ends is invisible to TCP.
    let up = pattern(500_000, 9);
    let mut net = Net::connected(&Config::default(), [up.clone(), vec![]], lossy(0.0), 9);
    assert!(net.run_until(MINUTE, |net| net.ends[1].received.len() > 100_000));
    net.ends[0].addr = Ipv4Address::new(192, 168, 7, 1);
    assert!(net.run_until(MINUTE, |net| net.ends[1].received.len() > 300_000));
    net.ends[1].addr = Ipv4Address::new(172, 16, 0, 9);
    assert!(net.run_to_completion(MINUTE));
    assert_exchanged(&net, &up, &[]);
}

#[test]
fn advertised_window_never_exceeds_what_the_buffer_can_hold() {
    // A slow reader with a small, non-power-of-two maximum: the receive
    // buffer fills, the window closes and reopens; with loss, out-of-order
    // data sits ahead of the queue too.
    let config = Config {
        max_recv_buffer: 100_000,
        max_send_buffer: 70_000,
        min_buffer: 1000,
        ..Config::default()
    };
    let shift = config.window_shift();
    for (seed, conditions) in [(5, Conditions::PERFECT), (6, lossy(0.02))] {
        let up = pattern(400_000, seed);
        let mut net = Net::connected(&config, [up.clone(), vec![]], conditions, seed);
        net.ends[1].read_rate = Some(200);
        let checked = Rc::new(Cell::new(0u64));
        let fullest = Rc::new(Cell::new(0usize));
        let (c, f) = (checked.clone(), fullest.clone());
        net.inspect = Some(Box::new(move |_, socket: &Socket, segment: &[u8]| {
            let repr = sal_tcp::parse_segment(segment).unwrap();
            let advertised = if repr.control == TcpControl::Syn {
                repr.window_len as usize
            } else {
                (repr.window_len as usize) << shift
            };
            let room = socket.recv_capacity() - socket.recv_queue();
            assert!(advertised <= room, "window {advertised} > room {room}");
            assert!(socket.buffer_memory() <= 100_000 + 70_000);
            c.set(c.get() + 1);
            f.set(f.get().max(socket.recv_queue()));
        }));
        assert!(net.run_to_completion(MINUTE * 10));
        assert_exchanged(&net, &up, &[]);
        assert!(checked.get() > 100);
        if net.lost == 0 {
            // The slow reader filled the buffer: the window closed (or nearly).
            assert!(
                fullest.get() > 100_000 - 2 * 1448,
                "fullest {}",
                fullest.get()
            );
        }
    }
}

#[test]
fn idle_connections_give_their_memory_back() {
    let config = Config::default();
    let up = pattern(2 << 20, 3);
    let mut net = Net::connected(&config, [up.clone(), vec![]], Conditions::PERFECT, 3);
    for end in &mut net.ends {
        end.close_when_sent = false;
    }
    // A slow reader makes the receive buffer grow.
    net.ends[1].read_rate = Some(20_000);
    let mut peak = [0; 2];
    assert!(net.run_until(MINUTE, |net| {
        for (i, end) in net.ends.iter().enumerate() {
            peak[i] = peak[i].max(end.socket.buffer_memory());
        }
        net.ends[1].received.len() == up.len()
    }));
    assert!(peak[0] > 64 * 1024, "sender peaked at {}", peak[0]);
    assert!(peak[1] > 64 * 1024, "receiver peaked at {}", peak[1]);

    // Idle: within two trim intervals (plus the last ACK) nothing is held.
    let idle = net.now;
    assert!(net.run_until(MINUTE, |net| {
        net.ends.iter().all(|end| end.socket.buffer_memory() == 0)
    }));
    assert!(net.now - idle <= config.trim_interval * 2 + Duration::from_millis(100));
    // And nothing more to do until something happens.
    assert!(net.ends.iter().all(|end| end.socket.poll_at().is_none()));
    assert_eq!(net.ends[0].socket.state(), State::Established);

    // The connection still works, and memory comes back with traffic.
    net.ends[1].to_send = pattern(10_000, 4);
    assert!(net.run_until(MINUTE, |net| net.ends[0].received.len() == 10_000));
    assert_eq!(net.ends[0].received, pattern(10_000, 4));
}

#[test]
fn two_losses_in_one_window_recover_without_a_timeout() {
    // 60 segments; the 45th and 52nd data segments are lost once, in the
    // last window, so no later data produces fresh duplicate ACKs. With the
    // receiver's half still open (ESTABLISHED) and already closed (the
    // sender is in LAST-ACK when the duplicate ACKs come).
    for congestion_control in [CongestionControl::Reno, CongestionControl::Cubic] {
        for receiver_closes_first in [false, true] {
            let config = Config {
                congestion_control,
                ..Config::default()
            };
            let mss = config.mss as usize;
            let up = pattern(60 * mss, 11);
            let mut net = Net::connected(&config, [up.clone(), vec![]], lossy(0.0), 11);
            net.conditions[0].jitter = Duration::ZERO;
            net.ends[1].close_when_sent = receiver_closes_first;
            let mut data_segments = 0;
            net.dropper = Some(Box::new(move |end, segment| {
                let repr = sal_tcp::parse_segment(segment).unwrap();
                if end != 0 || repr.payload.is_empty() {
                    return false;
                }
                data_segments += 1;
                data_segments == 45 || data_segments == 52
            }));
            let start = net.now;
            assert!(net.run_until(MINUTE, |net| net.ends[1].received.len() == up.len()));
            assert_exchanged(&net, &up, &[]);
            assert_eq!(net.lost, 2);
            // Without recovery of the second loss, the retransmission timer
            // (at least 200 ms after the last ACK) would fire: 0.49 s
            // instead of 0.26 s.
            assert!(
                net.now - start < Duration::from_millis(350),
                "{congestion_control:?}, receiver closes first: {receiver_closes_first}: took {}",
                net.now - start
            );
        }
    }
}

/// A path that swallows everything for 50 ms mid-transfer, then works
/// again (a SAL migration to another interface). Without `rewind`, what was
/// in flight waits for the retransmission timeout (at least 200 ms); with
/// it, the transfer resumes at once.
#[test]
fn rewind_after_a_path_change_resends_at_once() {
    for rewind in [true, false] {
        let config = Config::default();
        let up = pattern(2 << 20, 21);
        let mut net = Net::connected(&config, [up.clone(), vec![]], Conditions::PERFECT, 21);
        let dead = Rc::new(Cell::new(false));
        let path = dead.clone();
        net.dropper = Some(Box::new(move |_, _| path.get()));
        assert!(net.run_until(MINUTE, |net| net.ends[1].received.len() > 200_000));
        dead.set(true);
        let outage_end = net.now + Duration::from_millis(50);
        // Nothing gets through, and nothing is due before the timeout.
        assert!(!net.run_until(Duration::from_millis(50), |_| false));
        net.now = outage_end;
        let before = net.ends[1].received.len();
        dead.set(false);
        if rewind {
            assert!(net.ends[0].socket.rewind() > 0, "data was in flight");
            net.ends[1].socket.rewind();
        }
        assert!(net.run_until(MINUTE, |net| net.ends[1].received.len() > before + 100_000));
        let stall = net.now - outage_end;
        if rewind {
            assert!(stall < Duration::from_millis(20), "rewound: {stall}");
        } else {
            // The retransmission timeout: at least 200 ms after the last
            // ACK, which came just before the outage.
            assert!(stall > Duration::from_millis(140), "timeout: {stall}");
        }
        assert!(net.run_until(MINUTE, |net| net.ends[1].received.len() == up.len()));
        assert_eq!(net.ends[1].received, up);
    }
}

#[test]
fn transfers_byte_exact_while_memory_pressure_comes_and_goes() {
    // The host's buffer budget is reached and left again every 100 ms
    // (`set_memory_pressure`), through loss and reordering, with a slow
    // reader on one side: while it lasts no buffer grows (but from nothing
    // to its first allocation) and no window edge moves left; every byte
    // still arrives, exactly, in both ways. The 4 MiB window is more than
    // the slow reader lets the buffer grow to, so the peer is promised
    // room the storage does not have and the pressure drops segments.
    // (Before buffers could take a first allocation under pressure, the
    // lossy run stalled: each end's receive buffer had been freed, and
    // every retransmission landed in a pressured period.)
    let config = Config {
        max_recv_buffer: 4 << 20,
        ..Config::default()
    };
    let (shift, first) = (config.window_shift(), config.min_buffer);
    let step = Duration::from_millis(100);
    // Whether the pressure bites (data arrives past a pressured window) is
    // up to the seed: with sal-tcp's tail loss probes, seed 22 (and 24) of
    // the lossy run no longer sent past one, and 23 does.
    for (seed, conditions) in [(21, lossy(0.0)), (23, lossy(0.03))] {
        let (up, down) = (pattern(4 << 20, seed), pattern(300_000, seed + 100));
        let mut net = Net::connected(&config, [up.clone(), down.clone()], conditions, seed);
        net.ends[1].read_rate = Some(300);
        net.ends[1].close_when_sent = false;
        let edges: Rc<Cell<[Option<u32>; 2]>> = Rc::default();
        let e = edges.clone();
        net.inspect = Some(Box::new(move |end, socket: &Socket, segment: &[u8]| {
            let repr = sal_tcp::parse_segment(segment).unwrap();
            let (Some(ack), false) = (repr.ack_number, repr.control == TcpControl::Syn) else {
                return;
            };
            let edge = (ack.0 as u32).wrapping_add(u32::from(repr.window_len) << shift);
            let mut all = e.get();
            if let (Some(last), true) = (all[end], socket.memory_pressure()) {
                // Window scaling rounds down: less than one unit is noise.
                let left = last.wrapping_sub(edge) as i32;
                assert!(left < 1 << shift, "edge moved left by {left}");
            }
            all[end] = Some(edge);
            e.set(all);
        }));
        // The first round is free of pressure.
        let (mut pressured, mut rounds) = (true, 0);
        let done = |net: &Net| {
            let [a, b] = &net.ends;
            a.received.len() == down.len() && b.received.len() == up.len()
        };
        while !done(&net) {
            rounds += 1;
            assert!(rounds < 3000, "seed {seed}: not done by {}", net.now);
            pressured = !pressured;
            let held: Vec<usize> = net.ends.iter().map(|e| e.socket.buffer_memory()).collect();
            for end in &mut net.ends {
                end.socket.set_memory_pressure(pressured);
            }
            let until = net.now + step;
            if !net.run_until(step, done) {
                net.now = net.now.max(until);
            }
            for (end, held) in net.ends.iter().zip(held) {
                // At most a first allocation for a buffer that held none.
                if pressured {
                    let memory = end.socket.buffer_memory();
                    assert!(
                        memory <= held + 2 * first,
                        "grew under pressure: {held} -> {memory}"
                    );
                }
            }
        }
        assert_exchanged(&net, &up, &down);
        let dropped: u64 = net.ends.iter().map(|e| e.socket.pressure_dropped()).sum();
        assert!(
            dropped > 0,
            "seed {seed}: pressure never bit ({} rounds, {})",
            rounds,
            net.now
        );
        eprintln!(
            "seed {seed}: done at {} in {rounds} rounds, {dropped} segments dropped under pressure, {} lost",
            net.now, net.lost
        );
    }
}

#[test]
fn a_capped_request_cut_at_the_edge_still_arrives() {
    // A server flow nobody has accepted yet (`set_recv_cap`, 64 KiB) gets
    // a request of nearly that size over a path that reorders a little.
    // Its window closes on the cap, its right edge moving left by less
    // than a scale unit as the room is truncated, and a retransmission
    // sent within an earlier edge is cut at the last one: the client's
    // last bytes stay in flight past a zero window. Once the flow is
    // accepted the window opens again and they must be resent. (They
    // never were: the zero-window-probe timer had replaced the
    // retransmission timer, and the window update left none.)
    // (MSS, one-way delay and jitter in ms, seed): found by a sweep of
    // request sizes and paths, these cut the request's tail.
    for (mss, delay, jitter, seed) in [(1200, 5, 2, 1), (536, 5, 2, 0), (536, 2, 1, 0)] {
        let config = Config {
            timestamps: true,
            mss,
            ..Config::default()
        };
        let up = pattern(65_533, 3);
        let conditions = Conditions {
            delay: Duration::from_millis(delay),
            jitter: Duration::from_millis(jitter),
            loss: 0.0,
        };
        let mut net = Net::connected(&config, [up.clone(), vec![]], conditions, seed);
        net.ends[0].close_when_sent = false;
        net.ends[1].close_when_sent = false;
        net.ends[1].socket.set_recv_cap(Some(64 << 10));
        net.ends[1].read_rate = Some(0);
        net.run_until(Duration::from_secs(3), |_| false);
        // All of it waits for the accept: what was sent within an earlier,
        // further edge is taken (it was cut at the last one, and waited
        // for a timeout after the accept).
        assert_eq!(
            net.ends[1].socket.recv_queue(),
            up.len(),
            "mss {mss}: not all of the request waited for the accept"
        );
        // Accepted: the cap goes, the application reads.
        net.ends[1].socket.set_recv_cap(None);
        net.ends[1].read_rate = None;
        let accepted = net.now;
        assert!(
            net.run_until(MINUTE, |net| net.ends[1].received.len() == up.len()),
            "mss {mss}: {} of {} bytes",
            net.ends[1].received.len(),
            up.len()
        );
        assert_exchanged(&net, &up, &[]);
        // A retransmission timeout at most.
        assert!(
            net.now - accepted < Duration::from_millis(500),
            "{}",
            net.now - accepted
        );
    }
}

#[test]
fn the_unsent_part_of_the_send_queue_is_counted_apart() {
    // A slow reader closes the window: what the writer queued beyond it is
    // unsent (Linux's SIOCOUTQNSD), the rest of the queue sent and not yet
    // acknowledged (SIOCOUTQ counts both).
    let config = Config::default();
    let up = pattern(1 << 20, 5);
    let mut net = Net::connected(&config, [up.clone(), vec![]], Conditions::PERFECT, 5);
    net.ends[1].read_rate = Some(50_000);
    let mut held_back = false;
    assert!(net.run_until(MINUTE, |net| {
        let socket = &net.ends[0].socket;
        let (queued, unsent) = (socket.send_queue(), socket.send_queue_unsent());
        assert!(unsent <= queued, "{unsent} unsent of {queued} queued");
        held_back |= unsent > 0 && unsent < queued;
        net.ends[1].received.len() == up.len()
    }));
    assert!(held_back, "never both sent and unsent bytes in the queue");
    assert_eq!(net.ends[1].received, up);
    assert_eq!(net.ends[0].socket.send_queue_unsent(), 0);
}
