//! Issue 12's attacks on the handshake and teardown, replayed against real
//! daemons: packets crafted with `sal::wire` and sent from a raw socket in
//! the attacker's namespace (see `common/flood.rs`). Needs root; skips
//! loudly otherwise.
//!
//! The main test, one topology (attacker and client on host 0, server on
//! host 1, a victim on host 2), the attacks in turn: SYNs whose TCP segment
//! is not a SYN (finding 1), SYNs naming a victim in SOURCE (finding 3), a
//! SYN flood from spoofed sources during legitimate connects (finding 2),
//! and a server that vanishes under its flows (finding 13). After each:
//! legitimate clients served, the route intact, both daemons alive, memory
//! bounded. Two more replay findings fixed before: an ordinary local
//! user's attacks on the control socket (5, 7, 8, 11) and a crafted SYN's
//! TTL through a service router (12). The controller's findings (4, 6, 9:
//! servd announcements) and svtrans's (10) are not replayed here.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use sal::wire::ipv4_payload;
use sal::ServiceId;
use sal_control::{Request, Response};
use socket2::{Domain, Protocol, Socket, Type};
use socket_shim::ServiceStream;
use testnet::{require_root, wait_until, Netns};

mod common;
use common::flood::{connect_once, raw_sender, send_raw, syn_packet, Flood, Greeter, Opening};
use common::{Daemon, Sald};

/// Where spoofed SYNs claim to come from (the server blackholes its answers).
const SPOOF: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
/// SYNs per second of the test's flood.
const FLOOD_RATE: u64 = 4_000;

/// The two daemons, dropped before the namespaces they run in.
struct Pair {
    client: Daemon,
    server: Daemon,
}

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

fn alive(daemon: &mut Daemon) -> bool {
    daemon
        .child
        .try_wait()
        .map(|s| s.is_none())
        .unwrap_or(false)
}

fn log(daemon: &Daemon) -> String {
    std::fs::read_to_string(&daemon.log).unwrap_or_default()
}

/// Sends `count` crafted SYNs of `kind` from `src` to `dst`.
fn send_syns(
    ns: &Netns,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    kind: Opening,
    source: Option<&[Ipv4Addr]>,
    count: u32,
) {
    let socket = raw_sender(ns);
    let mut packet = Vec::new();
    for n in 1..=count {
        syn_packet(n + 0x1000, src, dst, svc("ad01"), kind, source, &mut packet);
        assert!(send_raw(&socket, &packet), "raw send");
    }
}

fn stats(daemon: &Daemon) -> sal_control::StatsReport {
    match daemon.request(Request::Stats) {
        Response::Stats { stats } => *stats,
        other => panic!("no stats: {other:?}"),
    }
}

fn server_flows(server: &Daemon) -> usize {
    server.flows().len()
}

#[test]
fn handshake_and_teardown_attacks_leave_the_daemons_serving() {
    require_root!();
    let started = Instant::now();
    // Host 0: the client's sald and the attacker; host 1: the server's
    // sald; host 2, on the server's other link: the victim, no sald.
    let net = testnet::TopologyBuilder::new("adv", 3)
        .link(0, 1)
        .link(1, 2)
        .build()
        .expect("namespaces");
    let dir = common::Scratch::new("adv");
    let start = |host: &testnet::Host, name| {
        common::start_sald(&host.ns, &[&host.ifaces[0].name], &dir, name, &[])
    };
    let mut pair = Pair {
        client: start(net.host(0), "client"),
        server: start(net.host(1), "server"),
    };
    let server_ip = net.host(1).addr().expect("address");
    pair.client.forward("0/0", server_ip, 1);
    let attacker_ns = &net.host(0).ns;
    let attacker = net.host(0).addr().expect("address");
    let victim_ns = &net.host(2).ns;
    let victim = net.host(2).addr().expect("address");
    // The server's answers to spoofed sources go nowhere.
    net.host(1)
        .ns
        .ip(["route", "add", "blackhole", "10.200.0.0/16"])
        .expect("blackhole");
    let _app = Greeter::start(&pair.server, "ad/8");
    assert!(
        connect_once(&pair.client, svc("ad01")).is_some(),
        "baseline connect"
    );
    let server_pid = pair.server.child.id();
    let rss_before = common::rss(server_pid);

    // Finding 1: 130 SYNs whose TCP segment only has ACK, 20 with a bad
    // checksum. Nothing kept, nothing answered, the listener serves.
    send_syns(
        attacker_ns,
        attacker,
        server_ip,
        Opening::AckOnly,
        None,
        130,
    );
    send_syns(
        attacker_ns,
        attacker,
        server_ip,
        Opening::BadChecksum,
        None,
        20,
    );
    thread::sleep(Duration::from_millis(300));
    assert_eq!(server_flows(&pair.server), 1, "only the baseline flow");
    for _ in 0..3 {
        assert!(
            connect_once(&pair.client, svc("ad01")).is_some(),
            "after finding 1"
        );
    }

    // Finding 3: 200 SYNs naming the victim as the client. The victim
    // gets at most one packet per SYN, however long we wait.
    let counter = victim_ns
        .run(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(144))))
        .unwrap()
        .unwrap();
    counter
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    send_syns(
        attacker_ns,
        attacker,
        server_ip,
        Opening::Syn,
        Some(&[victim, attacker]),
        200,
    );
    let mut toward_victim = 0;
    let mut buf = [0u8; 2048];
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        if let Ok(n) = (&counter).read(&mut buf) {
            if ipv4_payload(&buf[..n]).is_ok_and(|(c, _)| c.dst == victim) {
                toward_victim += 1;
            }
        }
    }
    eprintln!("finding 3: {toward_victim} packets toward the victim for 200 SYNs");
    assert!(
        toward_victim <= 200,
        "{toward_victim} packets toward the victim"
    );
    assert!(
        toward_victim >= 100,
        "the SYNs were answered: {toward_victim}"
    );

    // Finding 2: a SYN flood from spoofed sources, far past the backlog
    // (128) and the half-open limit; ten legitimate connects during it,
    // each within 5 s. The rate is what a debug build keeps up with on a
    // loaded machine; the benchmark `synflood` measures 32,000 SYN/s
    // against a release build.
    let flood = Flood::start(
        attacker_ns,
        server_ip,
        svc("ad01"),
        SPOOF,
        FLOOD_RATE,
        Duration::from_secs(8),
        FLOOD_RATE * 8,
    );
    thread::sleep(Duration::from_millis(500));
    let mut ok = 0;
    let mut times = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let took = connect_once(&pair.client, svc("ad01"));
        ok += usize::from(took.is_some());
        times.push(took.map(|t| t.as_millis()));
        thread::sleep(Duration::from_millis(500).saturating_sub(started.elapsed()));
    }
    let peak_flows = server_flows(&pair.server);
    let rss_flood = common::rss(server_pid);
    let during = stats(&pair.server).host;
    let (sent, ran) = flood.finish();
    eprintln!(
        "finding 2: {sent} SYNs in {:.1} s, {ok}/10 connects {times:?} ms, {peak_flows} flows, \
         {} cookies sent, rss {} -> {} KiB",
        ran.as_secs_f64(),
        during.cookies_sent,
        rss_before >> 10,
        rss_flood >> 10
    );
    assert!(sent >= FLOOD_RATE * 4, "the flood ran: {sent} SYNs");
    assert!(ok >= 9, "{ok} of 10 legitimate connects during the flood");
    assert!(during.cookies_accepted >= 9, "{during:?}");
    assert!(during.cookies_sent >= sent / 2, "{during:?}");
    let growth = rss_flood.saturating_sub(rss_before);
    assert!(growth < 64 << 20, "sald grew by {} KiB", growth >> 10);
    assert!(peak_flows < 200, "{peak_flows} flows kept during the flood");
    // The half-open flows expire.
    assert!(
        wait_until(Duration::from_secs(15), || server_flows(&pair.server) < 30),
        "{} flows left after the flood",
        server_flows(&pair.server)
    );

    // Both daemons alive, the route intact, the service still served.
    assert!(
        alive(&mut pair.server),
        "server sald died\n{}",
        log(&pair.server)
    );
    assert!(
        alive(&mut pair.client),
        "client sald died\n{}",
        log(&pair.client)
    );
    let routes = match pair.client.request(Request::ListRules) {
        Response::Rules { rules, .. } => rules,
        other => panic!("no rules: {other:?}"),
    };
    assert!(
        format!("{routes:?}").contains(&server_ip.to_string()),
        "the client's route to the server is gone: {routes:?}"
    );

    // Finding 13: the server vanishes (its sald killed) under a flow with
    // data in flight. Within 60 s the client's application sees the flow
    // end and the client's sald no longer lists it.
    let stream = ServiceStream::connect_via(pair.client.client(), svc("ad01"), None).unwrap();
    let flow = stream.flow_id();
    let mut greeting = [0u8; 2];
    stream.as_unix_stream().read_exact(&mut greeting).unwrap();
    pair.server
        .child
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let vanished = Instant::now();
    let _ = stream.as_unix_stream().write_all(&[7u8; 4096]);
    stream
        .as_unix_stream()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut rest = [0u8; 64];
    let ended = stream.as_unix_stream().read(&mut rest);
    let told = vanished.elapsed();
    assert!(
        matches!(ended, Ok(0) | Err(_)) && told < Duration::from_secs(60),
        "the application was told after {told:?}: {ended:?}"
    );
    assert!(
        wait_until(Duration::from_secs(60).saturating_sub(told), || {
            pair.client.flow(flow).is_none()
        }),
        "the client still lists the flow"
    );
    eprintln!(
        "finding 13: the application saw the end after {:.1} s; whole test {:.1} s",
        told.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        alive(&mut pair.client),
        "client sald died\n{}",
        log(&pair.client)
    );
}

/// An ordinary local user (`nobody`).
const NOBODY: u32 = 65534;

/// Findings 5, 7, 8 and 11 (fixed on main), replayed by an ordinary user
/// against a real sald: binds that would capture others' traffic are
/// refused, control connections are capped per user with root still
/// served, started frames that never finish cost bounded memory and time
/// out, and the user sees only its own flows.
#[test]
fn local_user_attacks_on_the_control_socket_still_fail() {
    require_root!();
    let pair = common::DaemonPair::new("advloc");
    let server = &pair.server;
    let _app = Greeter::start(server, "ad/8");
    for _ in 0..3 {
        assert!(connect_once(&pair.client, svc("ad01")).is_some());
    }
    let errno = |result: socket_shim::Result<socket_shim::ServiceListener>| {
        nix::errno::Errno::from_raw(result.expect_err("refused").errno())
    };
    let bind = |prefix: &str| {
        socket_shim::ServiceListener::bind_via(
            common::client_as(&server.control, NOBODY)?,
            prefix.parse::<sal::ServicePrefix>().unwrap(),
            4,
        )
    };
    // Finding 5: no catch-all, nothing covering or equal to root's binding.
    assert_eq!(errno(bind("0/0")), nix::errno::Errno::EACCES);
    assert_eq!(errno(bind("a/4")), nix::errno::Errno::EACCES);
    assert_eq!(errno(bind("ad/8")), nix::errno::Errno::EACCES);
    assert_eq!(errno(bind("ad01/16")), nix::errno::Errno::EADDRINUSE);
    assert_eq!(errno(bind("ad0102/24")), nix::errno::Errno::EADDRINUSE);
    assert!(bind("beef/16").is_ok(), "an ordinary bind");

    // Finding 11: the user lists no flow of root's.
    let mut nobody = common::client_as(&server.control, NOBODY).unwrap();
    match nobody.request(&Request::ListFlows).unwrap().response {
        Response::Flows { flows } => assert!(flows.is_empty(), "{flows:?}"),
        other => panic!("no listing: {other:?}"),
    }
    drop(nobody);
    assert!(server_flows(server) >= 3, "root sees them");

    // Findings 7 and 8: the user opens connections until refused, each
    // starting a 1 MiB frame it never finishes. Refused well before the
    // 1,100 of the issue; root is served throughout; memory stays bounded;
    // the partial frames time out.
    let pid = server.child.id();
    let rss_before = common::rss(pid);
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..400 {
        let Ok(mut conn) = common::raw_as(&server.control, NOBODY) else {
            refused = true;
            break;
        };
        let mut frame = (1u32 << 20).to_be_bytes().to_vec();
        frame.extend_from_slice(&[b'{'; 1000]);
        if conn.write_all(&frame).is_err() {
            refused = true;
            break;
        }
        conn.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        // A refused connection is closed (or told so) at once.
        let mut byte = [0u8; 64];
        if conn.read(&mut byte).is_ok() {
            refused = true;
            break;
        }
        held.push(conn);
    }
    assert!(
        refused,
        "{} connections of one user were all kept",
        held.len()
    );
    assert!(held.len() <= 200, "{} connections held", held.len());
    assert!(matches!(
        server.request(Request::Stats),
        Response::Stats { .. }
    ));
    let growth = common::rss(pid).saturating_sub(rss_before);
    eprintln!(
        "findings 7, 8: {} connections held, then refused; sald grew by {} KiB",
        held.len(),
        growth >> 10
    );
    assert!(growth < 64 << 20, "sald grew by {} KiB", growth >> 10);
    // Within the frame timeout (10 s), sald hangs up on them, and the
    // user may connect again.
    let mut first = held.swap_remove(0);
    first
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let ended = first.read_to_end(&mut Vec::new());
    assert!(
        ended
            .as_ref()
            .map_or_else(|e| e.kind() != std::io::ErrorKind::WouldBlock, |_| true),
        "sald never hung up on a partial frame: {ended:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            common::client_as(&server.control, NOBODY).is_ok_and(|mut c| {
                matches!(
                    c.request(&Request::Stats).map(|r| r.response),
                    Ok(Response::Stats { .. })
                )
            })
        }),
        "the user's connections were never freed"
    );
    assert!(
        connect_once(&pair.client, svc("ad01")).is_some(),
        "still serving"
    );
}

/// Finding 12 (fixed on main), replayed with a crafted SYN: sent with TTL
/// 64 to a service router, it reaches the next hop with 63, one IP hop's
/// worth.
#[test]
fn a_crafted_syn_through_a_service_router_loses_one_ttl() {
    require_root!();
    // attacker — router (sald --forward) — next hop (a raw socket, no sald)
    let net = testnet::TopologyBuilder::new("advttl", 3)
        .link(0, 1)
        .link(1, 2)
        .build()
        .expect("namespaces");
    let (a, r, n) = (net.host(0), net.host(1), net.host(2));
    r.ns.set_sysctl("net.ipv4.ip_forward", "0").unwrap();
    r.ns.set_sysctl("net.ipv4.conf.all.rp_filter", "2").unwrap();
    let dir = common::Scratch::new("advttl");
    let router = common::start_sald(&r.ns, &["eth0", "eth1"], &dir, "router", &["--forward"]);
    let next_hop = n.ifaces[0].addr;
    router.forward("be/8", next_hop, 1);
    let attacker = a.ifaces[0].addr;
    let listen =
        n.ns.run(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(144))))
            .unwrap()
            .unwrap();
    listen
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let socket = raw_sender(&a.ns);
    let mut packet = Vec::new();
    let mut ttls = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while ttls.len() < 3 && Instant::now() < until {
        syn_packet(
            7 + ttls.len() as u32,
            attacker,
            r.ifaces[0].addr,
            svc("be01"),
            Opening::Syn,
            None,
            &mut packet,
        );
        assert_eq!(packet[8], 64, "sent with TTL 64");
        send_raw(&socket, &packet);
        let mut buf = [0u8; 2048];
        while let Ok(len) = (&listen).read(&mut buf) {
            if let Ok((carriage, _)) = ipv4_payload(&buf[..len]) {
                if carriage.src == attacker {
                    ttls.push(carriage.ttl);
                }
            }
        }
    }
    assert!(!ttls.is_empty(), "nothing relayed\n{}", log(&router));
    assert!(
        ttls.iter().all(|&ttl| ttl == 63),
        "TTLs at the next hop: {ttls:?}"
    );
}
