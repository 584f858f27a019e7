//! Graceful shutdown: a stopped sald ends its flows so that its peer is told
//! (FIN, then RST for flows the peer's application keeps open), its own
//! applications read end of file, and it leaves the host as it found it.
//!
//! `stopping_an_in_process_daemon_ends_its_flows_at_both_ends` runs two
//! daemons in this process (`sald::run`, UDP on 127.0.0.1; no root needed)
//! and stops one through its shutdown future. `sigterm_ends_flows_and_
//! restores_the_host` is the acceptance test of the real binary on
//! namespaces (root).

use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use sal::ServicePrefix;
use socket_shim::{ServiceListener, ServiceStream};
use testnet::{require_root, wait_until, TopologyBuilder};

mod common;
use common::{InProcess, Sald, Scratch};

const FLOWS: usize = 10;
/// What the issue allows from the signal to everything being done.
const DEADLINE: Duration = Duration::from_secs(3);

/// A server on `sald` that answers each connection's first byte, then reads
/// to end of file; half of the handlers close their end then (a FIN
/// exchange), the other half keep it open until `release` is dropped (only a
/// reset frees those).
fn serve(sald: &impl Sald, prefix: &str) -> (thread::JoinHandle<usize>, mpsc::Sender<()>) {
    let listener =
        ServiceListener::bind_via(sald.client(), prefix.parse::<ServicePrefix>().unwrap(), 64)
            .unwrap();
    let (release, released) = mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let mut handlers = Vec::new();
        let released = std::sync::Arc::new(std::sync::Mutex::new(released));
        for i in 0..FLOWS {
            let (mut stream, _) = listener.accept().unwrap();
            let released = released.clone();
            handlers.push(thread::spawn(move || {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).unwrap();
                stream.write_all(&byte).unwrap();
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
                if i % 2 == 1 {
                    // Keep the flow open: only the stopped side's reset ends it.
                    let _ = released.lock().unwrap().recv();
                }
                drop(stream);
            }));
        }
        let served = handlers.len();
        for handler in handlers {
            handler.join().unwrap();
        }
        served
    });
    (server, release)
}

/// `FLOWS` flows from `client` to a service, each carrying one byte each
/// way.
fn open_flows(client: &impl Sald, service: &str) -> Vec<ServiceStream> {
    (0..FLOWS)
        .map(|i| {
            let mut stream = ServiceStream::connect_via(
                client.client(),
                service.parse().unwrap(),
                Some(Duration::from_secs(5)),
            )
            .unwrap();
            stream.write_all(&[i as u8]).unwrap();
            let mut back = [0u8; 1];
            stream.read_exact(&mut back).unwrap();
            assert_eq!(back[0], i as u8);
            stream
        })
        .collect()
}

/// Every stream reads end of file or an error (not a timeout) by `deadline`.
fn assert_ended(streams: &mut [ServiceStream], deadline: Instant) {
    for stream in streams {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 64];
        match stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "flow {} delivered {n} bytes after the stop",
                stream.flow_id()
            ),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "flow {} did not end: {e}",
                stream.flow_id()
            ),
        }
    }
}

/// Within [`DEADLINE`] of `stopped`, the stopped side's applications have
/// seen their flows end and the peer lists none.
fn assert_ended_at_both_ends(
    streams: &mut [ServiceStream],
    peer: &impl Sald,
    stopped: Instant,
    log: &str,
) {
    assert_ended(streams, stopped + DEADLINE);
    assert!(
        wait_until(DEADLINE.saturating_sub(stopped.elapsed()), || peer
            .flows()
            .is_empty()),
        "the peer still lists {:?}\n{log}",
        peer.flows()
    );
}

#[test]
fn stopping_an_in_process_daemon_ends_its_flows_at_both_ends() {
    let dir = Scratch::new("inproc-stop");
    let server = InProcess::start(common::udp_config(&dir, "server", [127, 0, 0, 2].into()));
    let mut client = InProcess::start(common::udp_config(&dir, "client", [127, 0, 0, 1].into()));
    client.forward_to("0/0", server.locator(), 1);
    let (served, release) = serve(&server, "5e/8");
    let mut streams = open_flows(&client, "5e01");
    assert_eq!(client.flows().len(), FLOWS);
    assert!(wait_until(Duration::from_secs(2), || server.flows().len() == FLOWS));

    let stopped_at = Instant::now();
    client.stop().expect("sald::run returned an error");
    let took = stopped_at.elapsed();
    assert!(took < DEADLINE, "stopping took {took:?}");
    assert!(!client.control.exists(), "control socket left behind");
    assert_ended_at_both_ends(&mut streams, &server, stopped_at, "");
    drop(release);
    assert_eq!(served.join().unwrap(), FLOWS);
}

/// What the SAL's plumbing changes on a host: policy rules, nftables
/// tables, and the sysctls it may touch.
fn host_state(host: &testnet::Host) -> (String, String, Vec<(String, String)>) {
    let rules = host.ns.ip(["rule", "show"]).unwrap();
    let nft = host
        .ns
        .exec("nft", ["list", "tables"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let iface = &host.ifaces[0].name;
    let sysctls = [
        "net.ipv4.ip_forward".to_string(),
        "net.ipv4.conf.all.forwarding".to_string(),
        "net.ipv4.conf.all.rp_filter".to_string(),
        format!("net.ipv4.conf.{iface}.forwarding"),
        format!("net.ipv4.conf.{iface}.rp_filter"),
        format!("net.ipv4.conf.{iface}.accept_local"),
    ]
    .into_iter()
    .map(|key| {
        let value = host.ns.sysctl(&key).unwrap();
        (key, value)
    })
    .collect();
    (rules, nft, sysctls)
}

#[test]
fn sigterm_ends_flows_and_restores_the_host() {
    require_root!();
    let net = TopologyBuilder::new("sigterm", 2)
        .link(0, 1)
        .build()
        .unwrap();
    let dir = Scratch::new("sigterm");
    let before = host_state(net.host(0));
    let mut client = common::start_sald(
        &net.host(0).ns,
        &[&net.host(0).ifaces[0].name],
        &dir,
        "client",
        &[],
    );
    let server = common::start_sald(
        &net.host(1).ns,
        &[&net.host(1).ifaces[0].name],
        &dir,
        "server",
        &[],
    );
    assert_ne!(host_state(net.host(0)), before, "sald changed nothing?");
    client.forward("0/0", net.host(1).addr().unwrap(), 1);
    let (served, release) = serve(&server, "5e/8");
    let mut streams = open_flows(&client, "5e01");
    assert!(wait_until(Duration::from_secs(2), || server.flows().len() == FLOWS));

    let signalled = Instant::now();
    client
        .child
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = client.child.wait_timeout(DEADLINE).unwrap();
    let log = std::fs::read_to_string(&client.log).unwrap_or_default();
    assert!(status.success(), "sald exited with {status}:\n{log}");
    assert!(
        signalled.elapsed() < DEADLINE,
        "exit took {:?}",
        signalled.elapsed()
    );
    assert_eq!(host_state(net.host(0)), before, "host not restored:\n{log}");
    assert_ended_at_both_ends(&mut streams, &server, signalled, &log);
    drop(release);
    assert_eq!(served.join().unwrap(), FLOWS);
}
