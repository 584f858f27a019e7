//! Flow migration with the real sald on namespaces: a dual-homed client and
//! a dual-homed server joined through a plain kernel router. Each test moves
//! a flow in the middle of a transfer (by command, by taking a link down, by
//! removing an address, or from the server side) and checks that every byte
//! arrived exactly once, in order; one more lets a path die silently under
//! an idle flow, which only the idle probe can notice. Needs root; skips
//! loudly otherwise.
//!
//! ```text
//!  client eth0 10.1.0.1 ── router 10.1.0.2 (wifi)
//!  client eth1 10.1.1.1 ── router 10.1.1.2 (cellular)
//!  router 10.1.2.1 ── server eth0 10.1.2.2
//!  router 10.1.3.1 ── server eth1 10.1.3.2
//! ```

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use sal::table::Target;
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ServiceListener, ServiceStream};
use testnet::{require_root, wait_until, Topology, TopologyBuilder};

mod common;
use common::{Daemon, Sald};

struct Setup {
    // Dropped in this order: the daemons (SIGTERM, so they undo their
    // plumbing), then their scratch directory, then the namespaces.
    client: Daemon,
    server: Daemon,
    _dir: common::Scratch,
    net: Topology,
}

fn setup(label: &str) -> Setup {
    setup_with(label, &[])
}

/// [`setup`], with more flags for the client's sald.
fn setup_with(label: &str, client_flags: &[&str]) -> Setup {
    let net = TopologyBuilder::new(label, 3)
        .link(0, 1)
        .link(0, 1)
        .link(1, 2)
        .link(1, 2)
        .build()
        .unwrap();
    let (client, router, server) = (net.host(0), net.host(1), net.host(2));
    router.ns.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    // Each host has a default route per link; the first one is preferred.
    for (host, gateways) in [
        (client, ["10.1.0.2", "10.1.1.2"]),
        (server, ["10.1.2.1", "10.1.3.1"]),
    ] {
        for (i, gw) in gateways.iter().enumerate() {
            let metric = (100 * (i + 1)).to_string();
            host.ns
                .ip(["route", "add", "default", "via", gw, "metric", &metric])
                .unwrap();
        }
    }
    let dir = common::Scratch::new(label);
    let start = |host: &testnet::Host, name: &str, flags: &[&str]| {
        let ifaces: Vec<&str> = host.ifaces.iter().map(|i| i.name.as_str()).collect();
        common::start_sald(&host.ns, &ifaces, &dir, name, flags)
    };
    let client_d = start(client, "client", client_flags);
    let server_d = start(server, "server", &[]);
    let reply = client_d.request(Request::AddRule {
        prefix: ServicePrefix::DEFAULT,
        target: Target::Forward {
            locator: Locator::Ipv4("10.1.2.2".parse().unwrap()),
            weight: 1,
        },
        priority: 0,
    });
    assert_eq!(reply, Response::Ok);
    Setup {
        client: client_d,
        server: server_d,
        _dir: dir,
        net,
    }
}

/// Streams `len` bytes client -> server; once `at` bytes have arrived, runs
/// `act` with the two flow IDs (client's, server's). Returns whether the
/// server received exactly the bytes sent.
fn transfer_with(s: &Setup, len: usize, at: usize, act: impl FnOnce(FlowId, FlowId)) -> bool {
    let service: ServiceId = "ab01".parse().unwrap();
    let listener =
        ServiceListener::bind_via(s.server.client(), ServicePrefix::exact(service), 4).unwrap();
    let data = Arc::new(common::pattern(len, 7));
    let received = Arc::new(AtomicUsize::new(0));
    let server = {
        let received = received.clone();
        thread::spawn(move || {
            let (mut stream, info) = listener.accept().unwrap();
            let mut got = Vec::with_capacity(len);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = stream.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                received.store(got.len(), Ordering::Relaxed);
            }
            (got, info.flow)
        })
    };
    let stream =
        ServiceStream::connect_via(s.client.client(), service, Some(Duration::from_secs(5)))
            .unwrap();
    let client_flow = stream.flow_id();
    let writer = {
        let data = data.clone();
        thread::spawn(move || {
            let mut stream = stream;
            // Paced a little, so the action lands mid-transfer.
            for chunk in data.chunks(64 * 1024) {
                stream.write_all(chunk).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
            stream.shutdown_write().unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || received.load(Ordering::Relaxed)
            >= at),
        "transfer never reached {at} bytes"
    );
    let server_flow = s.server.request(Request::ListFlows).clone();
    let Response::Flows { flows } = server_flow else {
        panic!("no flows");
    };
    let server_flow = flows
        .iter()
        .find(|f| f.peer_flow == Some(client_flow))
        .unwrap()
        .flow;
    act(client_flow, server_flow);
    writer.join().unwrap();
    let (got, _) = server.join().unwrap();
    got.len() == data.len() && got == *data
}

#[test]
fn manual_migration_keeps_every_byte() {
    require_root!();
    let s = setup("mig-manual");
    let mut checked = None;
    let ok = transfer_with(&s, 12 << 20, 2 << 20, |client_flow, server_flow| {
        let reply = s.client.request(Request::Migrate {
            flow: client_flow,
            iface: "eth1".into(),
        });
        assert_eq!(reply, Response::Ok);
        assert!(wait_until(Duration::from_secs(5), || {
            s.server.flow(server_flow).and_then(|f| f.remote)
                == Some(Locator::Ipv4("10.1.1.1".parse().unwrap()))
        }));
        checked = s.client.flow(client_flow);
    });
    assert!(ok, "bytes lost, duplicated or reordered");
    let info = checked.unwrap();
    assert_eq!(
        (info.interface.as_deref(), info.migrations),
        (Some("eth1"), 1)
    );
}

#[test]
fn link_down_moves_the_flow_by_itself() {
    require_root!();
    let s = setup("mig-down");
    let client_ns = s.net.host(0).ns.name().to_string();
    let ok = transfer_with(&s, 12 << 20, 2 << 20, |client_flow, _| {
        testnet::run_ok(
            std::process::Command::new("ip")
                .args(["-n", &client_ns, "link", "set", "eth0", "down"]),
        )
        .unwrap();
        assert!(wait_until(Duration::from_secs(5), || {
            s.client.flow(client_flow).and_then(|f| f.interface) == Some("eth1".into())
        }));
    });
    assert!(ok, "bytes lost, duplicated or reordered");
    // The link comes back and is routed again: its per-source table
    // (emptied by the kernel when the link went down) follows.
    let client = &s.net.host(0).ns;
    client.ip(["link", "set", "eth0", "up"]).unwrap();
    client
        .ip([
            "route", "add", "default", "via", "10.1.0.2", "metric", "100",
        ])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            client
                .ip(["-4", "route", "show", "table", "1000"])
                .is_ok_and(|t| t.contains("default via 10.1.0.2 dev eth0"))
        }),
        "table 1000 never got its default route back"
    );
}

#[test]
fn address_removal_moves_the_flow_by_itself() {
    require_root!();
    let s = setup("mig-addr");
    let ok = transfer_with(&s, 12 << 20, 2 << 20, |client_flow, _| {
        s.net
            .host(0)
            .ns
            .ip(["addr", "del", "10.1.0.1/24", "dev", "eth0"])
            .unwrap();
        assert!(wait_until(Duration::from_secs(5), || {
            s.client.flow(client_flow).and_then(|f| f.interface) == Some("eth1".into())
        }));
    });
    assert!(ok, "bytes lost, duplicated or reordered");
}

#[test]
fn server_side_migration_keeps_every_byte() {
    require_root!();
    let s = setup("mig-server");
    let ok = transfer_with(&s, 12 << 20, 2 << 20, |client_flow, server_flow| {
        let reply = s.server.request(Request::Migrate {
            flow: server_flow,
            iface: "eth1".into(),
        });
        assert_eq!(reply, Response::Ok);
        assert!(wait_until(Duration::from_secs(5), || {
            s.client.flow(client_flow).and_then(|f| f.remote)
                == Some(Locator::Ipv4("10.1.3.2".parse().unwrap()))
        }));
    });
    assert!(ok, "bytes lost, duplicated or reordered");
}

#[test]
fn an_idle_flow_leaves_a_silently_dead_path() {
    require_root!();
    let s = setup_with(
        "mig-probe",
        &["--probe-idle-ms", "500", "--liveness-ms", "500"],
    );
    let service: ServiceId = "ab02".parse().unwrap();
    let listener =
        ServiceListener::bind_via(s.server.client(), ServicePrefix::exact(service), 4).unwrap();
    let echo = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        while stream.read_exact(&mut buf).is_ok() {
            stream.write_all(&buf).unwrap();
        }
    });
    let mut stream =
        ServiceStream::connect_via(s.client.client(), service, Some(Duration::from_secs(5)))
            .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 5];
    stream.write_all(b"hello").unwrap();
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"hello");
    let flow = stream.flow_id();
    assert_eq!(
        s.client.flow(flow).and_then(|f| f.interface).as_deref(),
        Some("eth0")
    );
    // The router silently drops everything to and from the client's wifi
    // address: no link event, no error, and nothing in flight on the flow.
    let router = &s.net.host(1).ns;
    for rule in [
        "add table ip silent",
        "add chain ip silent drops { type filter hook forward priority 0 ; }",
        "add rule ip silent drops ip saddr 10.1.0.1 drop",
        "add rule ip silent drops ip daddr 10.1.0.1 drop",
    ] {
        router
            .exec_ok("nft", rule.split(' ').collect::<Vec<_>>())
            .unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            s.client.flow(flow).and_then(|f| f.interface).as_deref() == Some("eth1")
        }),
        "the flow stayed on the dead path"
    );
    let Response::Stats { stats } = s.client.request(Request::Stats) else {
        panic!("no stats");
    };
    assert!(stats.host.probes >= 1);
    // The application never noticed.
    stream.write_all(b"again").unwrap();
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"again");
    drop(stream);
    echo.join().unwrap();
}
