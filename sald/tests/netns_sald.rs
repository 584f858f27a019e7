//! The real sald binary on hosts built from network namespaces: direct flows,
//! a service router in front of two replicas, datagram anycast, restarts, and
//! a hostile control client. Needs root; skips loudly otherwise.
//!
//! The test process itself plays the applications: it talks to each host's
//! sald over that host's control socket (a Unix socket on the shared
//! filesystem), so only sald runs inside the namespaces.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use sal::{Locator, ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ServiceDatagram, ServiceListener, ServiceStream};
use testnet::{require_root, wait_until, Host, TopologyBuilder};

mod common;
use common::{pattern, Daemon, Sald, Scratch};

/// sald on `host`'s first interface.
fn start_sald(host: &Host, dir: &Path, name: &str, extra: &[&str]) -> Daemon {
    common::start_sald(&host.ns, &[&host.ifaces[0].name], dir, name, extra)
}

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

#[test]
fn direct_stream_echo_is_byte_exact() {
    require_root!();
    let net = TopologyBuilder::new("direct", 2)
        .link(0, 1)
        .build()
        .unwrap();
    let dir = Scratch::new("direct");
    let client = start_sald(net.host(0), &dir, "client", &[]);
    let server = start_sald(net.host(1), &dir, "server", &[]);
    client.forward("0/0", net.host(1).addr().unwrap(), 1);

    let listener = ServiceListener::bind_via(
        server.client(),
        "beef/16".parse::<ServicePrefix>().unwrap(),
        8,
    )
    .unwrap();
    let echo = thread::spawn(move || {
        let (mut stream, info) = listener.accept().unwrap();
        let mut data = Vec::new();
        stream.read_to_end(&mut data).unwrap();
        stream.write_all(&data).unwrap();
        stream.shutdown_write().unwrap();
        (info, data.len())
    });

    let data = pattern(8 << 20, 0);
    let mut stream =
        ServiceStream::connect_via(client.client(), svc("beef01"), Some(Duration::from_secs(5)))
            .unwrap();
    assert_eq!(
        stream.flow_info().remote,
        Some(Locator::Ipv4(net.host(1).addr().unwrap()))
    );
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let data = data.clone();
        thread::spawn(move || {
            stream.write_all(&data).unwrap();
            stream.shutdown_write().unwrap();
        })
    };
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    let (info, len) = echo.join().unwrap();
    assert_eq!(len, data.len());
    assert_eq!(info.service, svc("beef01"));
    assert!(
        back == data,
        "echoed bytes differ ({} of {})",
        back.len(),
        data.len()
    );

    // Nothing was lost between the kernel and either sald: a TUN queue that
    // overflows costs smoltcp a one-second timeout per second loss.
    for host in [net.host(0), net.host(1)] {
        let json = host
            .ns
            .ip(["-j", "-s", "link", "show", "dev", "sal0"])
            .unwrap();
        let link: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(link[0]["txqlen"], 4096, "{json}");
        assert_eq!(link[0]["stats64"]["tx"]["dropped"], 0, "{json}");
    }

    // Both ends release the flow once both sides have closed.
    assert!(wait_until(Duration::from_secs(5), || {
        matches!(client.request(Request::ListFlows), Response::Flows { flows } if flows.is_empty())
            && matches!(server.request(Request::ListFlows), Response::Flows { flows } if flows.is_empty())
    }));
}

/// Client, router and two replicas on one LAN: 10.2.0.1 .. 10.2.0.4.
struct Routed {
    // Dropped in this order: the daemons (SIGTERM, so they undo their
    // plumbing), then their scratch directory, then the namespaces.
    client: Daemon,
    router: Daemon,
    replicas: [Daemon; 2],
    replica_addrs: [Ipv4Addr; 2],
    _dir: Scratch,
    _net: testnet::Topology,
}

fn routed(label: &str, prefix: &str, weights: [u32; 2]) -> Routed {
    let net = TopologyBuilder::new(label, 4)
        .lan(&[0, 1, 2, 3])
        .build()
        .unwrap();
    let dir = Scratch::new(label);
    let client = start_sald(net.host(0), &dir, "client", &[]);
    let router = start_sald(net.host(1), &dir, "router", &["--forward"]);
    let replicas = [
        start_sald(net.host(2), &dir, "s1", &[]),
        start_sald(net.host(3), &dir, "s2", &[]),
    ];
    let replica_addrs = [net.host(2).addr().unwrap(), net.host(3).addr().unwrap()];
    client.forward("0/0", net.host(1).addr().unwrap(), 1);
    router.forward(prefix, replica_addrs[0], weights[0]);
    router.forward(prefix, replica_addrs[1], weights[1]);
    Routed {
        _net: net,
        _dir: dir,
        client,
        router,
        replicas,
        replica_addrs,
    }
}

#[test]
fn router_spreads_connections_by_weight() {
    require_root!();
    let setup = routed("weights", "5e/8", [1, 3]);
    // Each replica answers every connection with its index.
    let mut servers = Vec::new();
    for (index, daemon) in setup.replicas.iter().enumerate() {
        let listener = ServiceListener::bind_via(
            daemon.client(),
            "5e/8".parse::<ServicePrefix>().unwrap(),
            64,
        )
        .unwrap();
        servers.push(thread::spawn(move || loop {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let _ = stream.write_all(&[index as u8]);
            let _ = stream.shutdown_write();
        }));
    }
    const CONNECTIONS: usize = 240;
    let mut counts = [0usize; 2];
    for _ in 0..CONNECTIONS {
        let mut stream = ServiceStream::connect_via(
            setup.client.client(),
            svc("5e77"),
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        assert_eq!(answer.len(), 1);
        counts[usize::from(answer[0])] += 1;
        // The reply came straight from the replica, not from the router.
        let remote = stream.flow_info().remote.unwrap();
        assert_eq!(
            remote,
            Locator::Ipv4(setup.replica_addrs[usize::from(answer[0])])
        );
    }
    // Weight 1 of 4: expect 60, binomial standard deviation 6.7; allow 4.5 sigma.
    assert_eq!(counts[0] + counts[1], CONNECTIONS);
    assert!((30..=90).contains(&counts[0]), "replica shares {counts:?}");
    let Response::Stats { stats } = setup.router.request(Request::Stats) else {
        panic!("no stats");
    };
    assert_eq!(
        stats.host.forwarded, CONNECTIONS as u64,
        "one forwarded SYN per connection"
    );
    drop(servers);
}

#[test]
fn datagrams_reach_both_replicas_and_replies_come_back() {
    require_root!();
    let setup = routed("anycast", "d00d/16", [1, 1]);
    let mut servers = Vec::new();
    for daemon in &setup.replicas {
        let socket =
            ServiceDatagram::bind_via(daemon.client(), "d00d/16".parse::<ServicePrefix>().unwrap())
                .unwrap();
        servers.push(thread::spawn(move || {
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut served = 0;
            let mut buf = [0u8; 2048];
            while let Ok((n, peer, service)) = socket.recv_from(&mut buf) {
                assert_eq!(service, Some(svc("d00d01")));
                let mut reply = buf[..n].to_vec();
                reply.reverse();
                socket.send_reply(peer, &reply).unwrap();
                served += 1;
            }
            served
        }));
    }
    let socket = ServiceDatagram::open_via(setup.client.client()).unwrap();
    const DATAGRAMS: u32 = 200;
    for i in 0..DATAGRAMS {
        socket.send_to(svc("d00d01"), &i.to_be_bytes()).unwrap();
        if i % 20 == 19 {
            // Stay below the receivers' queue limits.
            thread::sleep(Duration::from_millis(20));
        }
    }
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut replies = 0;
    let mut buf = [0u8; 64];
    while let Ok((n, peer, _)) = socket.recv_from(&mut buf) {
        assert_eq!(n, 4);
        assert!(setup.replica_addrs.iter().any(|a| peer.locator.ip() == *a));
        replies += 1;
        if replies == DATAGRAMS {
            break;
        }
    }
    let served: Vec<u32> = servers.into_iter().map(|s| s.join().unwrap()).collect();
    assert_eq!(served.iter().sum::<u32>(), DATAGRAMS, "served {served:?}");
    assert!(served.iter().all(|&n| n > 50), "anycast spread {served:?}");
    assert_eq!(replies, DATAGRAMS);
}

/// The SAL's plumbing as `ip rule`, table 144 and nftables show it.
fn plumbing_state(host: &Host) -> (bool, bool, bool) {
    let rules = host.ns.ip(["rule", "show"]).unwrap();
    let table = host
        .ns
        .ip(["route", "show", "table", "144"])
        .unwrap_or_default();
    let nft = host
        .ns
        .exec("nft", ["list", "tables"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (
        rules.contains("ipproto"),
        !table.trim().is_empty(),
        nft.contains("sald"),
    )
}

#[test]
fn restarts_leave_no_stale_plumbing() {
    require_root!();
    let net = TopologyBuilder::new("restart", 2)
        .link(0, 1)
        .build()
        .unwrap();
    let dir = Scratch::new("restart");
    let host = net.host(0);
    let rules_before = host.ns.ip(["rule", "show"]).unwrap();
    assert_eq!(plumbing_state(host), (false, false, false));

    // Clean stop: everything undone, rules exactly as before.
    let mut daemon = start_sald(host, &dir, "a", &[]);
    assert!(plumbing_state(host).0 && plumbing_state(host).1);
    daemon.child.terminate(Duration::from_secs(5)).unwrap();
    assert_eq!(plumbing_state(host), (false, false, false));
    assert_eq!(host.ns.ip(["rule", "show"]).unwrap(), rules_before);

    // Crash: plumbing stays behind; the next start cleans it and works.
    let daemon = start_sald(host, &dir, "b", &[]);
    daemon
        .child
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let mut daemon = daemon;
    assert!(wait_until(Duration::from_secs(5), || !daemon.alive()));
    assert!(plumbing_state(host).0, "a crash leaves the rules");
    let mut daemon = start_sald(host, &dir, "c", &[]);
    let peer = start_sald(net.host(1), &dir, "peer", &[]);
    peer.forward("0/0", host.addr().unwrap(), 1);
    let listener =
        ServiceListener::bind_via(daemon.client(), "ab/8".parse::<ServicePrefix>().unwrap(), 4)
            .unwrap();
    let accept = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"ok").unwrap();
    });
    let mut stream =
        ServiceStream::connect_via(peer.client(), svc("ab"), Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "ok");
    accept.join().unwrap();
    assert!(daemon.alive());
    daemon.child.terminate(Duration::from_secs(5)).unwrap();
    assert_eq!(plumbing_state(host), (false, false, false));
    assert_eq!(host.ns.ip(["rule", "show"]).unwrap(), rules_before);
}

#[test]
fn hostile_control_clients_hurt_only_themselves() {
    require_root!();
    let net = TopologyBuilder::new("hostile", 2)
        .link(0, 1)
        .build()
        .unwrap();
    let dir = Scratch::new("hostile");
    let mut daemon = start_sald(net.host(0), &dir, "a", &[]);

    // Garbage without a hello, an absurd frame length, bad JSON after hello.
    let mut raw = UnixStream::connect(&daemon.control).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut raw = UnixStream::connect(&daemon.control).unwrap();
    raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut raw = UnixStream::connect(&daemon.control).unwrap();
    let hello = sal_control::encode_frame(&Request::Hello {
        version: sal_control::PROTOCOL_VERSION,
        client: "hostile".into(),
    })
    .unwrap();
    raw.write_all(&hello).unwrap();
    raw.write_all(&[0, 0, 0, 3, b'{', b'{', b'{']).unwrap();
    // A client that binds a service and vanishes mid-frame.
    let listener = ServiceListener::bind_via(
        daemon.client(),
        "feed/16".parse::<ServicePrefix>().unwrap(),
        4,
    )
    .unwrap();
    drop(listener);
    let mut half = UnixStream::connect(&daemon.control).unwrap();
    half.write_all(&[0, 0, 1]).unwrap();
    drop(half);
    drop(raw);

    thread::sleep(Duration::from_millis(300));
    assert!(daemon.alive(), "sald died");
    // Still serving, and the vanished client's service is unregistered.
    let Response::Rules { rules, .. } = daemon.request(Request::ListRules) else {
        panic!("no rules listing");
    };
    assert!(
        rules.iter().all(|r| r.prefix != "feed/16".parse().unwrap()),
        "{rules:?}"
    );
    let again = ServiceListener::bind_via(
        daemon.client(),
        "feed/16".parse::<ServicePrefix>().unwrap(),
        4,
    );
    assert!(again.is_ok(), "the prefix is free again");

    // An unprivileged user may connect and bind, but not change rules.
    let as_nobody = |request: &str| -> String {
        let script = format!(
            r#"
import json, socket, struct
s = socket.socket(socket.AF_UNIX); s.connect({path:?})
def call(o):
    b = json.dumps(o).encode(); s.sendall(struct.pack(">I", len(b)) + b)
    n = struct.unpack(">I", s.recv(4))[0]; d = b""
    while len(d) < n: d += s.recv(n - len(d))
    return json.loads(d)
call({{"op": "hello", "version": 1, "client": "nobody"}})
print(json.dumps(call({request})))
"#,
            path = daemon.control.to_str().unwrap()
        );
        let output = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "python3", "-c", &script])
            .output()
            .expect("runuser and python3");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let denied = as_nobody(r#"{"op": "add_rule", "prefix": "0/0", "target": {"kind": "drop"}}"#);
    assert!(denied.contains("permission_denied"), "{denied}");
    let bound =
        as_nobody(r#"{"op": "listen", "prefix": "abcd/16", "protocol": "stream", "backlog": 1}"#);
    assert!(bound.contains("listening"), "{bound}");
}

#[test]
fn per_source_tables_follow_the_main_table() {
    require_root!();
    let net = TopologyBuilder::new("follow", 2)
        .link(0, 1)
        .build()
        .unwrap();
    let dir = Scratch::new("follow");
    let host = net.host(0);
    let _daemon = start_sald(host, &dir, "a", &[]);
    let gateway = net.host(1).addr().unwrap().to_string();
    let iface = host.ifaces[0].name.clone();
    let table = || host.ns.ip(["route", "show", "table", "1000"]).unwrap();
    assert!(!table().contains("10.77.0.0/24"), "{}", table());
    // A route added to the main table after start is copied...
    host.ns
        .ip([
            "route",
            "add",
            "10.77.0.0/24",
            "via",
            &gateway,
            "dev",
            &iface,
        ])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || table().contains("10.77.0.0/24")),
        "{}",
        table()
    );
    // ... and a deleted one goes.
    host.ns.ip(["route", "del", "10.77.0.0/24"]).unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || !table().contains("10.77.0.0/24")),
        "{}",
        table()
    );
}

/// Native carriage, a peer sald killed outright: its host answers our
/// packets with ICMP "protocol unreachable" (no SAL there any more), which
/// sald's raw sockets read; the flow is reset a second later instead of
/// after the 30 s peer timeout.
#[test]
fn a_flow_whose_peer_sald_is_killed_is_reset_within_seconds() {
    require_root!();
    let mut pair = common::DaemonPair::new("natgone");
    common::gone::a_flow_is_reset_when_its_peer_sald_is_killed(
        &pair.client,
        &mut pair.server,
        svc("c8"),
    );
}

/// Native carriage, a connect forwarded to a host without sald: refused at
/// once ("protocol unreachable"), not timed out after its retransmissions.
#[test]
fn a_connect_forwarded_to_a_host_without_sald_is_refused_at_once() {
    require_root!();
    let net = TopologyBuilder::new("natnone", 2)
        .link(0, 1)
        .build()
        .unwrap();
    let dir = Scratch::new("natnone");
    let client = start_sald(net.host(0), &dir, "client", &[]);
    client.forward("0/0", net.host(1).addr().unwrap(), 1);
    common::gone::a_connect_to_a_sald_gone_is_refused_at_once(&client, svc("c9"));
    drop((client, dir, net));
}
