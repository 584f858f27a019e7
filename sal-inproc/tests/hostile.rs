//! The engine among attackers: while two engines on 127.0.0.1 serve echo
//! connections, a forger sends the server's UDP port random bytes, cut and
//! garbled SAL headers, a SYN flood from many source ports, and control
//! messages (resets, FINs, RSYNs) that name live flows with wrong nonces.
//! Every echo stays byte-exact, connects still succeed, and the engine's
//! flows and memory stay bounded. Also: a thread-local destructor may call
//! into the engine.
//!
//! With root, the forger also sends from the real client's address and
//! from random source ports (a raw socket); without (or with
//! `SAL_INPROC_NO_RAW` set), from 32 ports of its own only.

mod common;

use std::cell::RefCell;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use sal::wire::ControlFlags;
use sal_inproc::{Mode, Runtime, Stream};

/// Whom the forger aims at, and from where.
struct Target {
    server: SocketAddrV4,
    client: SocketAddrV4,
    /// (client's flow ID, server's flow ID) of live flows.
    pairs: Vec<(u32, u32)>,
}

/// How much the forger sent, by kind.
#[derive(Debug, Default)]
struct Forged {
    random: u64,
    garbled: u64,
    syns: u64,
    spoofed_syns: u64,
    wrong_nonce: u64,
    spoofed_wrong_nonce: u64,
    wrong_peer_flow: u64,
    empty_from_elsewhere: u64,
}

/// Forged packets of every kind, in turn, `count` of them at most and for
/// `time` at most.
fn forge(target: &Target, count: u64, time: Duration, seed: u64) -> Forged {
    let sockets: Vec<UdpSocket> = (0..32)
        .map(|_| UdpSocket::bind(loopback()).expect("forger socket"))
        .collect();
    for socket in &sockets {
        socket.set_nonblocking(true).unwrap();
    }
    // SAL_INPROC_NO_RAW: as a user without the privilege would run it.
    let spoofer = Spoofer::open().filter(|_| std::env::var_os("SAL_INPROC_NO_RAW").is_none());
    let mut rng = Forger::new(seed);
    let mut forged = Forged::default();
    let end = Instant::now() + time;
    let flags = [
        ControlFlags::RST,
        ControlFlags::FIN,
        ControlFlags::RSYN,
        ControlFlags::ACK,
        ControlFlags::RST | ControlFlags::ACK,
        ControlFlags::FIN | ControlFlags::ACK,
        ControlFlags::RSYN | ControlFlags::ACK,
        ControlFlags::NACK,
    ];
    for i in 0..count {
        if i % 64 == 0 && Instant::now() > end {
            break;
        }
        let socket = &sockets[rng.below(sockets.len())];
        let send = |bytes: &[u8]| {
            let _ = socket.send_to(bytes, target.server);
        };
        let nonce: [u8; 8] = rng.next().to_be_bytes();
        let (client_flow, server_flow) = target.pairs[rng.below(target.pairs.len())];
        match i % 6 {
            0 => {
                let len = rng.below(1500);
                send(&rng.bytes(len));
                forged.random += 1;
            }
            1 => {
                // A real header, cut or with bytes flipped.
                let mut packet = match rng.below(3) {
                    0 => sal_syn(rng.next() as u32, service(), nonce, rng.next() as u32),
                    1 => sal_control(
                        client_flow,
                        server_flow,
                        flags[rng.below(flags.len())],
                        nonce,
                        rng.next() as u32,
                        &[],
                    ),
                    _ => sal_data(client_flow, server_flow, &rng.bytes(40)),
                };
                if rng.below(2) == 0 {
                    let cut = rng.below(packet.len());
                    packet.truncate(cut);
                } else {
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(packet.len());
                        packet[at] ^= (rng.next() as u8) | 1;
                    }
                }
                send(&packet);
                forged.garbled += 1;
            }
            2 => {
                // A SYN flood: every SYN valid, each its own client.
                let syn = sal_syn(rng.next() as u32, service(), nonce, rng.next() as u32);
                match &spoofer {
                    Some(spoofer) => {
                        let port = 1024 + rng.below(60_000) as u16;
                        let from = SocketAddrV4::new(*target.server.ip(), port);
                        spoofer.send(from, target.server, &syn);
                        forged.spoofed_syns += 1;
                    }
                    None => {
                        send(&syn);
                        forged.syns += 1;
                    }
                }
            }
            3 => {
                // A live flow's IDs, a wrong nonce: from the client's own
                // address if we can, else from elsewhere.
                let flag = flags[rng.below(flags.len())];
                let packet = sal_control(
                    client_flow,
                    server_flow,
                    flag,
                    nonce,
                    rng.next() as u32,
                    &tcp_header(rng.next() as u32, rng.next() as u32, TCP_ACK),
                );
                match &spoofer {
                    Some(spoofer) if rng.below(2) == 0 => {
                        spoofer.send(target.client, target.server, &packet);
                        forged.spoofed_wrong_nonce += 1;
                    }
                    _ => {
                        send(&packet);
                        forged.wrong_nonce += 1;
                    }
                }
            }
            4 => {
                // The server's flow ID with another peer flow: resets and
                // data that must not reach the flow.
                let tcp_flags = [TCP_RST, TCP_RST | TCP_ACK, TCP_ACK][rng.below(3)];
                let mut segment =
                    tcp_header(rng.next() as u32, rng.next() as u32, tcp_flags).to_vec();
                let extra = rng.below(64);
                segment.extend_from_slice(&rng.bytes(extra));
                let packet = sal_data(client_flow ^ 0x5a5a_0001, server_flow, &segment);
                match &spoofer {
                    Some(spoofer) => spoofer.send(target.client, target.server, &packet),
                    None => send(&packet),
                }
                forged.wrong_peer_flow += 1;
            }
            _ => {
                // A live flow's IDs, no segment, from another address: a
                // would-be NAT rebinding, which must earn a path challenge
                // and not move the flow.
                send(&sal_data(client_flow, server_flow, &[]));
                forged.empty_from_elsewhere += 1;
            }
        }
    }
    forged
}

/// What one echo worker did.
struct Echoed {
    rounds: u64,
    bytes: u64,
}

/// Echo round trips on one stream of its own until `stop`, every one
/// byte-exact.
fn echo_worker(client: Runtime, stop: Arc<AtomicBool>, seed: u32) -> Result<Echoed, String> {
    let deadline = || Instant::now() + Duration::from_secs(10);
    let stream = echo_client(&client, deadline()).map_err(|e| format!("connect: {e}"))?;
    let mut echoed = Echoed {
        rounds: 0,
        bytes: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let len = 1 + (seed as usize * 7919 + echoed.rounds as usize * 104_729) % 16_384;
        let msg = pattern(len, seed.wrapping_add(echoed.rounds as u32));
        let back =
            echo(&stream, &msg, deadline()).map_err(|e| format!("round {}: {e}", echoed.rounds))?;
        if back != msg {
            return Err(format!("round {}: echo differs", echoed.rounds));
        }
        echoed.rounds += 1;
        echoed.bytes += len as u64;
    }
    stream
        .shutdown_write()
        .map_err(|e| format!("shutdown: {e}"))?;
    let rest = read_to_end(&stream, deadline()).map_err(|e| format!("end: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last echo", rest.len()));
    }
    Ok(echoed)
}

/// New connections, one after the other, until `stop`: each connects,
/// echoes once and closes. Returns how many, and the slowest connect.
fn connector(client: Runtime, stop: Arc<AtomicBool>) -> Result<(u64, Duration), String> {
    let (mut count, mut slowest) = (0, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let stream = echo_client(&client, start + CONNECT_BOUND)
            .map_err(|e| format!("connect {count}: {e}"))?;
        slowest = slowest.max(start.elapsed());
        let msg = pattern(100, count as u32);
        let deadline = Instant::now() + Duration::from_secs(5);
        let back = echo(&stream, &msg, deadline).map_err(|e| format!("echo {count}: {e}"))?;
        if back != msg {
            return Err(format!("connection {count}: echo differs"));
        }
        stream.shutdown_write().map_err(|e| e.to_string())?;
        read_to_end(&stream, deadline).map_err(|e| format!("end {count}: {e}"))?;
        count += 1;
        thread::sleep(Duration::from_millis(10));
    }
    Ok((count, slowest))
}

const BACKLOG: usize = 64;
/// How long a real connect may take under the flood before it counts as
/// failed: the flood may overrun the server's socket buffer, so a SYN may
/// be lost and resent (0.5 s, then 1 s, 2 s, 4 s, 8 s later): the whole
/// retry budget, as the host's own connect gives up only after it. Not a
/// timing target (the slowest connect is printed, not asserted).
const CONNECT_BOUND: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

#[test]
fn forged_datagrams_neither_crash_reset_hijack_nor_grow_the_engine() {
    let (server, listener) = server(BACKLOG);
    let client = client(&server);
    let echo_server = EchoServer::start(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(stop.clone());
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| {
            let (client, stop) = (client.clone(), stop.clone());
            thread::spawn(move || echo_worker(client, stop, i as u32 + 1))
        })
        .collect();
    let wait = Instant::now() + Duration::from_secs(10);
    while echo_server.pairs.lock().unwrap().len() < WORKERS {
        assert!(Instant::now() < wait, "the echo workers never connected");
        thread::sleep(Duration::from_millis(5));
    }
    let connecting = {
        let (client, stop) = (client.clone(), stop.clone());
        thread::spawn(move || connector(client, stop))
    };
    let target = Target {
        server: udp_addr(&server),
        client: udp_addr(&client),
        pairs: echo_server.pairs.lock().unwrap().clone(),
    };
    let rss_before = rss();
    let flows_before = server.flow_count();
    let started = Instant::now();
    let forged = forge(&target, 60_000, Duration::from_secs(4), 0x5eed);
    let forging = started.elapsed();
    // The engine answers while the forged traffic is still being read.
    thread::sleep(Duration::from_millis(300));
    let rss_after = rss();
    let (flows, half_open, stats) = (
        server.flow_count(),
        server.half_open_count(),
        server.host_stats(),
    );
    stop.store(true, Ordering::Relaxed);
    let echoed: Vec<_> = workers
        .into_iter()
        .map(|w| w.join().expect("an echo worker panicked"))
        .collect();
    let connected = connecting.join().expect("the connector panicked");
    let errors = echo_server.stop();

    eprintln!("forged in {forging:?}: {forged:?}");
    eprintln!(
        "server: {flows} flows (before forging: {flows_before}), {half_open} half-open, \
         RSS {} KiB -> {} KiB",
        rss_before / 1024,
        rss_after / 1024
    );
    eprintln!(
        "server stats: packets_in {} malformed {} bad_checksum {} unknown_flow {} bad_nonce {} \
         stale {} bad_syn {} refused {} cookies_sent {} cookies_accepted {} cookies_rejected {} \
         path_challenges {} rebindings {} migrations {} buffer_bytes {}",
        stats.packets_in,
        stats.malformed,
        stats.bad_checksum,
        stats.unknown_flow,
        stats.bad_nonce,
        stats.stale,
        stats.bad_syn,
        stats.refused,
        stats.cookies_sent,
        stats.cookies_accepted,
        stats.cookies_rejected,
        stats.path_challenges,
        stats.rebindings,
        stats.migrations,
        stats.buffer_bytes,
    );
    for (i, result) in echoed.iter().enumerate() {
        match result {
            Ok(e) => eprintln!("echo worker {i}: {} rounds, {} bytes", e.rounds, e.bytes),
            Err(error) => panic!("echo worker {i}: {error}"),
        }
    }
    let (connects, slowest) = connected.expect("a real connect failed under the forgery");
    eprintln!("connects during the forgery: {connects}, slowest {slowest:?}");
    assert!(errors.is_empty(), "echo server: {errors:?}");
    assert!(
        echoed
            .iter()
            .all(|e| e.as_ref().is_ok_and(|e| e.rounds > 0)),
        "every worker echoed"
    );
    assert!(connects > 0, "no connect completed during the forgery");
    // Bounded state: the live flows, the connector's (closed ones linger
    // a few control timeouts, TCP's TIME-WAIT), and the half-open flows
    // the listener's backlog allows (past which SYNs get cookies, which
    // keep nothing): nothing that grows with the forged packets.
    assert!(half_open <= BACKLOG, "{half_open} half-open flows");
    assert!(
        flows <= WORKERS + 2 * BACKLOG + connects as usize + 1,
        "{flows} flows after {} forged SYNs",
        forged.syns + forged.spoofed_syns
    );
    assert!(
        stats.cookies_sent > 0,
        "the SYN flood never brought cookies on"
    );
    assert!(stats.malformed + stats.bad_checksum > 0, "{stats:?}");
    assert_eq!(stats.rebindings, 0, "a forged packet moved a flow");
    assert_eq!(stats.migrations, 0, "a forged packet moved a flow");
    assert!(
        rss_after.saturating_sub(rss_before) < 64 << 20,
        "RSS grew by {} KiB",
        (rss_after - rss_before) / 1024
    );
}

/// Arbitrary datagrams, and real headers with arbitrary damage, at a
/// serving engine: after each batch, an echo on a live flow is byte-exact
/// and the engine holds no more flows than before.
#[test]
fn arbitrary_datagrams_leave_the_engine_serving() {
    let (server, listener) = server(BACKLOG);
    let client = client(&server);
    let echo_server = EchoServer::start(listener);
    let stream = echo_client(&client, Instant::now() + Duration::from_secs(10)).expect("connect");
    let (client_flow, server_flow) = echo_server.pairs.lock().unwrap()[0];
    let forger = UdpSocket::bind(loopback()).unwrap();
    let to = udp_addr(&server);
    let flows = server.flow_count();
    let round = AtomicU64::new(0);

    let header = prop_oneof![
        any::<(u32, [u8; 8], u32)>().prop_map(|(flow, nonce, isn)| sal_syn(
            flow,
            service(),
            nonce,
            isn
        )),
        (any::<u8>(), any::<[u8; 8]>(), any::<u32>()).prop_map(move |(flags, nonce, verno)| {
            sal_control(
                client_flow,
                server_flow,
                ControlFlags::from_bits(flags),
                nonce,
                verno,
                &[],
            )
        }),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(move |segment| sal_data(
            client_flow,
            server_flow,
            &segment
        )),
    ];
    let damaged = (
        header,
        proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..6),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(mut packet, flips, cut, truncate)| {
            for (at, bits) in flips {
                let at = at.index(packet.len());
                packet[at] ^= bits;
            }
            if truncate {
                packet.truncate(cut.index(packet.len() + 1));
            }
            packet
        });
    let datagram = prop_oneof![proptest::collection::vec(any::<u8>(), 0..1600), damaged];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        // The engines' state carries over from case to case: a shrunk
        // batch would not replay the failure, only take long to try.
        max_shrink_iters: 0,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(datagram, 1..48), |batch| {
            for packet in &batch {
                let _ = forger.send_to(packet, to);
            }
            let n = round.fetch_add(1, Ordering::Relaxed) as u32;
            let msg = pattern(1 + (n as usize * 977) % 4000, n);
            let back = echo(&stream, &msg, Instant::now() + Duration::from_secs(5))
                .map_err(|e| TestCaseError::fail(format!("echo: {e}")))?;
            prop_assert!(back == msg, "echo differs");
            // Half-open flows from the forged SYNs are allowed (the
            // backlog bounds them), nothing else.
            let now = server.flow_count();
            prop_assert!(
                now <= flows + server.half_open_count(),
                "{now} flows, {flows} before"
            );
            Ok(())
        })
        .unwrap();
    stream.shutdown_write().unwrap();
    read_to_end(&stream, Instant::now() + Duration::from_secs(5)).unwrap();
    drop(stream);
    let errors = echo_server.stop();
    assert!(errors.is_empty(), "{errors:?}");
}

/// What [`OnExit`]'s destructor read, or why it could not.
type ReadOnExit = Result<Vec<u8>, String>;

/// Something a thread keeps in a thread-local, that calls into the engine
/// when the thread's locals are destroyed (after the engine's own, the
/// thread's wake-up eventfd, if that one went first).
struct OnExit {
    stream: Option<Stream>,
    /// What the destructor read (a blocking read that had to wait).
    got: Arc<std::sync::Mutex<Option<ReadOnExit>>>,
}

impl Drop for OnExit {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let mut buf = [0u8; 5];
        let result = read_exact(&stream, &mut buf, Instant::now() + Duration::from_secs(5))
            .map(|()| buf.to_vec())
            .map_err(|e| e.to_string());
        *self.got.lock().unwrap() = Some(result);
        // And the close, from the destructor too.
        drop(stream);
    }
}

thread_local! {
    static ON_EXIT: RefCell<Option<OnExit>> = const { RefCell::new(None) };
}

/// A blocking call from a thread-local destructor, registered before the
/// engine's per-thread state (so destroyed after it) and after it: no
/// panic, and the call completes.
#[test]
fn a_thread_local_destructor_may_make_a_blocking_call() {
    let (server, listener) = server(8);
    let listener = Arc::new(listener);
    let client = client(&server);
    for engine_first in [false, true] {
        let accepting = {
            let listener = listener.clone();
            thread::spawn(move || {
                listener.accept(Mode::Until(Instant::now() + Duration::from_secs(10)))
            })
        };
        let got = Arc::new(std::sync::Mutex::new(None));
        let exiting = {
            let (client, got) = (client.clone(), got.clone());
            thread::spawn(move || {
                if !engine_first {
                    // ON_EXIT first: the engine's state, made by the
                    // connect's wait, is destroyed before it.
                    ON_EXIT.with(|slot| {
                        *slot.borrow_mut() = Some(OnExit {
                            stream: None,
                            got: got.clone(),
                        })
                    });
                }
                // A wait inside the engine makes this thread's engine state.
                let limit = Instant::now() + Duration::from_secs(10);
                let stream = client.connect(service(), Mode::Until(limit)).unwrap();
                let mut buf = [0u8; 1];
                let waited = stream.read(
                    &mut buf,
                    Mode::Until(Instant::now() + Duration::from_millis(20)),
                );
                assert!(matches!(waited, Err(sal_inproc::Error::WouldBlock)));
                ON_EXIT.with(|slot| {
                    let mut slot = slot.borrow_mut();
                    match slot.as_mut() {
                        Some(on_exit) => on_exit.stream = Some(stream),
                        None => {
                            *slot = Some(OnExit {
                                stream: Some(stream),
                                got,
                            })
                        }
                    }
                });
            })
        };
        let accepted = accepting.join().unwrap().expect("accept");
        // The exiting thread's destructor waits for these.
        thread::sleep(Duration::from_millis(100));
        write_all(&accepted, b"hello", Instant::now() + Duration::from_secs(5)).unwrap();
        exiting
            .join()
            .unwrap_or_else(|_| panic!("the thread panicked (engine state first: {engine_first})"));
        let got = got.lock().unwrap().take();
        assert_eq!(
            got,
            Some(Ok(b"hello".to_vec())),
            "engine state first: {engine_first}"
        );
        // The destructor's close reached the server.
        let end = read_to_end(&accepted, Instant::now() + Duration::from_secs(5));
        assert_eq!(end.map_err(|e| e.to_string()), Ok(Vec::new()));
    }
}
