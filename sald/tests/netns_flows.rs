//! Many flows and small exchanges through two real sald daemons on a veth
//! pair. Needs root; skips loudly otherwise.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use sal::{ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ServiceListener, ServiceStream};
use testnet::{require_root, wait_until};

mod common;
use common::{Daemon, Sald};

/// Idle established flows the many-flows test opens.
const FLOWS: usize = 10_000;
/// What an idle established flow may cost sald, bytes (its resident memory).
const IDLE_FLOW_BUDGET: u64 = 8 << 10;

/// How long flows that both applications have closed may take to go away
/// when packets are lost, as they are when the machine is starved: a sald
/// that cannot keep up with a burst of closes drops what overflows its TUN
/// queue (tens of thousands of packets on a loaded 2-core machine, where
/// the closes then took 25 s and more), and the close goes on at the pace
/// of its retries. Each end's TCP FIN is repeated until acknowledged, or
/// until the peer has been silent for `peer_timeout`; its SAL FIN then
/// until acknowledged or given up on (`control_retries` doublings of
/// `control_rto`: 31.5 s; a FIN repeated to a host that already let the
/// flow go is answered with a reset); after which it waits for the peer's
/// FIN at most `orphan_timeout`. Unloaded, they all go within the linger
/// (2 s); a flow still there after this bound is one nothing will remove.
fn close_under_loss() -> Duration {
    let config = sal::proto::HostConfig::default();
    let ms = |d: sal::time::Duration| Duration::from_millis(d.total_millis());
    let fin_retries = ms(config.control_rto) * ((2u32 << config.control_retries) - 1);
    ms(config.peer_timeout) + fin_retries + ms(config.orphan_timeout)
}

/// `servalctl stats` of a daemon.
fn stats(daemon: &Daemon) -> sal_control::StatsReport {
    match daemon.request(Request::Stats) {
        Response::Stats { stats } => *stats,
        other => panic!("no stats: {other:?}"),
    }
}

/// Ten thousand idle established flows between two daemons, and a bulk
/// transfer beside them: the bytes arrive exact, each idle flow costs each
/// sald at most 8 KiB of resident memory, `servalctl stats` counts the
/// descriptors they hold, and they all go away once closed.
#[test]
fn ten_thousand_idle_flows_beside_a_byte_exact_bulk_transfer() {
    require_root!();
    let started = Instant::now();
    // The client ends of the flows live in this process; sald inherits
    // the hard limit from it.
    let limit = common::raise_fd_limit(4 * FLOWS as u64);
    assert!(limit >= FLOWS as u64 + 1000, "descriptor limit {limit}");
    let pair = common::DaemonPair::new("many");
    let (client, server, net) = (&pair.client, &pair.server, &pair.net);
    let pids = [client.child.id(), server.child.id()];
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "sald", "measuring sald itself");
    }
    assert_eq!(
        stats(client).fd_limit,
        limit,
        "sald raised its limit to the hard one"
    );

    // The server ends are held by another process (descriptor limits).
    let before = pids.map(common::rss);
    let fds_before = stats(server).fds_open;
    let mut holder = common::FlowHolder::start(
        &["flow_holder", "--exact", "--ignored", "--nocapture"],
        &server.control,
        "f10e/16",
        FLOWS,
    );
    let idle: ServiceId = "f10e01".parse().unwrap();
    let opened = common::open_flows(&client.control, idle, FLOWS, 8);
    holder.wait_accepted();
    assert_eq!(opened.len(), FLOWS);
    eprintln!("{FLOWS} flows open after {:?}", started.elapsed());
    assert_eq!(stats(client).flows, FLOWS);
    let server_stats = stats(server);
    assert_eq!(server_stats.flows, FLOWS);
    assert!(
        server_stats.fds_open >= fds_before + FLOWS as u64,
        "fds open {} (before {fds_before})",
        server_stats.fds_open
    );

    // A bulk transfer beside them, byte exact.
    let data = common::pattern(32 << 20, 0x9e37_79b9);
    let listener = ServiceListener::bind_via(
        server.client(),
        "b01c/16".parse::<ServicePrefix>().unwrap(),
        4,
    )
    .unwrap();
    let bulk = thread::spawn({
        let len = data.len();
        move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut got = Vec::with_capacity(len);
            stream.read_to_end(&mut got).unwrap();
            got
        }
    });
    let mut stream = ServiceStream::connect_via(
        client.client(),
        "b01c01".parse().unwrap(),
        Some(Duration::from_secs(5)),
    )
    .unwrap();
    stream.write_all(&data).unwrap();
    stream.shutdown_write().unwrap();
    let got = bulk.join().unwrap();
    assert!(
        got == data,
        "bulk transfer differs ({} of {} bytes)",
        got.len(),
        data.len()
    );
    drop(stream);
    // Nothing was lost between the kernel and either sald (a packet beside
    // ten thousand flows costs what it costs beside none).
    for host in [net.host(0), net.host(1)] {
        let json = host
            .ns
            .ip(["-j", "-s", "link", "show", "dev", "sal0"])
            .unwrap();
        let link: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(link[0]["stats64"]["tx"]["dropped"], 0, "{json}");
    }

    // Idle: buffers given back (trim interval), sald trims its heap
    // (housekeeping), then measured.
    thread::sleep(Duration::from_secs(4));
    let after = pids.map(common::rss);
    for (i, name) in ["client", "server"].iter().enumerate() {
        let per_flow = after[i].saturating_sub(before[i]) / FLOWS as u64;
        eprintln!(
            "{name} sald: {} KiB before, {} KiB with {FLOWS} idle flows: {per_flow} bytes per flow",
            before[i] >> 10,
            after[i] >> 10
        );
        assert!(
            per_flow <= IDLE_FLOW_BUDGET,
            "{name} sald: {per_flow} bytes per idle flow"
        );
    }

    // Closed by the applications, the flows go away on both ends: within
    // the bound of a close under loss (see `close_under_loss`).
    common::close_gradually(opened);
    drop(holder);
    let closing = Instant::now();
    let bound = close_under_loss();
    assert!(
        wait_until(bound, || {
            stats(client).flows == 0 && stats(server).flows == 0
        }),
        "flows left after {bound:?}: {} and {}",
        stats(client).flows,
        stats(server).flows
    );
    eprintln!("flows gone {:?} after the last close", closing.elapsed());
    eprintln!("done after {:?}", started.elapsed());
}

/// Sequential small request/response exchanges over one flow, as a
/// memcached client makes them: each 100-byte request is answered with 100
/// bytes before the next goes out. Nothing may hold a small write back
/// (Nagle against a delayed ACK, a pump that misses a wake-up): 200 of
/// them take well under a second on a veth pair, and a stall of even 40 ms
/// per exchange blows the bound eightfold.
#[test]
fn small_request_response_exchanges_are_not_delayed() {
    require_root!();
    let pair = common::DaemonPair::new("rr");
    let (client, server) = (&pair.client, &pair.server);

    const EXCHANGES: usize = 200;
    const SIZE: usize = 100;
    let listener = ServiceListener::bind_via(
        server.client(),
        "ec40/16".parse::<ServicePrefix>().unwrap(),
        8,
    )
    .unwrap();
    let echo = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; SIZE];
        for _ in 0..EXCHANGES {
            stream.read_exact(&mut request).unwrap();
            for byte in &mut request {
                *byte = byte.wrapping_add(1);
            }
            stream.write_all(&request).unwrap();
        }
    });
    let service: ServiceId = "ec4001".parse().unwrap();
    let mut stream =
        ServiceStream::connect_via(client.client(), service, Some(Duration::from_secs(5))).unwrap();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..EXCHANGES {
        let request = [i as u8; SIZE];
        let t = Instant::now();
        stream.write_all(&request).unwrap();
        let mut response = [0u8; SIZE];
        stream.read_exact(&mut response).unwrap();
        slowest = slowest.max(t.elapsed());
        assert_eq!(response, [(i as u8).wrapping_add(1); SIZE], "exchange {i}");
    }
    let took = started.elapsed();
    echo.join().unwrap();
    eprintln!("{EXCHANGES} exchanges of {SIZE} bytes took {took:?}, slowest {slowest:?}");
    assert!(
        took < Duration::from_secs(1),
        "{EXCHANGES} request/response exchanges took {took:?} (slowest {slowest:?})"
    );
}

/// Not a test: the process that holds the server ends of the many-flows
/// test's flows (see `common::FlowHolder`), when started as one.
#[test]
#[ignore = "run by the many-flows test as its flow holder"]
fn flow_holder() {
    common::hold_flows_if_asked();
}
