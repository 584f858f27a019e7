//! Programs that drive their own SAL hosts next to a daemon's, on the
//! simulator in UDP carriage (`docs/in-process-sal.md`): each program is a
//! host on its own port of its machine's address, with one rule, everything
//! to its daemon. A daemon routes its programs' SYNs by its rules though it
//! is no router (`HostConfig::relay_local`), and relays the SYNs of a
//! prefix a program serves to that program (`Host::relay`); after the SYN,
//! the programs talk directly, also two programs on one address.

use sal::proto::{ConnectError, Event, HostConfig};
use sal::wire::TransportProtocol::Stream;
use sal::Locator;
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::time::Duration;

mod common;
use common::sim::{default_route, establish, pattern, prefix, stream, svc};

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

/// A daemon's host: no router, but routing for its programs.
fn daemon() -> HostConfig {
    HostConfig {
        relay_local: true,
        ..HostConfig::default()
    }
}

/// Streams `len` bytes each way between `client` and `server` (whose
/// listener takes `ab/8`) and checks them; returns where the server's flow
/// has its client.
fn both_ways(
    net: &mut Network,
    client: HostId,
    server: HostId,
    listener: sal::table::ListenerId,
    seed: u64,
) -> Locator {
    let (cflow, sflow) = establish(net, client, server, listener, svc("ab01"));
    let up = pattern(100_000, seed);
    let timeout = Duration::from_secs(60);
    assert!(
        stream(
            net,
            (client, cflow),
            (server, sflow),
            &up,
            timeout,
            |_, _| {}
        ) == up
    );
    let down = pattern(100_000, seed + 1);
    assert!(
        stream(
            net,
            (server, sflow),
            (client, cflow),
            &down,
            timeout,
            |_, _| {}
        ) == down
    );
    net.host(server).flow(sflow).unwrap().remote.unwrap()
}

#[test]
fn two_hosts_on_one_address_stream_to_each_other() {
    let mut net = Network::new(71, LinkConditions::default());
    let server = net.add_udp_host(
        "server",
        HostConfig::default(),
        &[("udp", "10.0.0.1/24")],
        5000,
    );
    let client = net.add_udp_host(
        "client",
        HostConfig::default(),
        &[("udp", "10.0.0.1/24")],
        6000,
    );
    default_route(&mut net, client, "udp:10.0.0.1:5000");
    let listener = net.host(server).listen(prefix("ab/8"), Stream, 8).unwrap();
    // Each host's segments for the other go out: the other is not the
    // host itself, though it has its address.
    let remote = both_ways(&mut net, client, server, listener, 1);
    assert_eq!(remote, loc("udp:10.0.0.1:6000"));
}

/// Two machines, 10.0.0.1 and 10.0.0.2, each with a daemon on port 7077;
/// on 10.0.0.2 a serving program (port 5000, `ab/8` relayed to it by its
/// daemon) and a client program (6000), on 10.0.0.1 another client program
/// (6000). The daemon of 10.0.0.1 sends every service to 10.0.0.2's.
struct Machines {
    net: Network,
    daemons: [HostId; 2],
    server: HostId,
    listener: sal::table::ListenerId,
    near: HostId,
    far: HostId,
}

fn machines(daemon_config: HostConfig) -> Machines {
    let mut net = Network::new(72, LinkConditions::default());
    let one = |net: &mut Network, name: &str, config: HostConfig, ip: &str, port: u16| {
        net.add_udp_host(name, config, &[("udp", ip)], port)
    };
    let far_daemon = one(
        &mut net,
        "daemon1",
        daemon_config.clone(),
        "10.0.0.1/24",
        7077,
    );
    let near_daemon = one(&mut net, "daemon2", daemon_config, "10.0.0.2/24", 7077);
    let server = one(
        &mut net,
        "server",
        HostConfig::default(),
        "10.0.0.2/24",
        5000,
    );
    let near = one(&mut net, "near", HostConfig::default(), "10.0.0.2/24", 6000);
    let far = one(&mut net, "far", HostConfig::default(), "10.0.0.1/24", 6000);
    default_route(&mut net, near, "udp:10.0.0.2:7077");
    default_route(&mut net, far, "udp:10.0.0.1:7077");
    default_route(&mut net, far_daemon, "udp:10.0.0.2:7077");
    let listener = net.host(server).listen(prefix("ab/8"), Stream, 8).unwrap();
    let relay = net
        .host(near_daemon)
        .relay(prefix("ab/8"), loc("udp:10.0.0.2:5000"))
        .unwrap();
    assert_eq!(
        net.host(near_daemon).listener_relay(relay),
        Some(loc("udp:10.0.0.2:5000"))
    );
    Machines {
        net,
        daemons: [far_daemon, near_daemon],
        server,
        listener,
        near,
        far,
    }
}

#[test]
fn programs_reach_a_relayed_program_through_their_daemons_syns_only() {
    let mut m = machines(daemon());
    let (server, listener) = (m.server, m.listener);
    // From beside it: its daemon relays the SYN, and the server answers
    // the client's own port, not the daemon's, on their shared address.
    let remote = both_ways(&mut m.net, m.near, server, listener, 2);
    assert_eq!(remote, loc("udp:10.0.0.2:6000"));
    // From the other machine: its daemon forwards the SYN to the server's
    // daemon, though neither is a router, which relays it.
    let remote = both_ways(&mut m.net, m.far, server, listener, 4);
    assert_eq!(remote, loc("udp:10.0.0.1:6000"));
    let [far_daemon, near_daemon] = m.daemons;
    let (far_stats, near_stats) = (
        m.net.host(far_daemon).stats(),
        m.net.host(near_daemon).stats(),
    );
    assert_eq!(far_stats.forwarded, 1);
    assert_eq!(near_stats.forwarded, 2);
    // The SYNs, nothing else: 200 KB went by each time.
    assert_eq!((far_stats.packets_in, far_stats.packets_out), (1, 1));
    assert_eq!((near_stats.packets_in, near_stats.packets_out), (2, 2));
}

#[test]
fn a_daemon_that_does_not_route_for_its_programs_refuses_their_syns() {
    let mut m = machines(HostConfig::default());
    let far = m.far;
    let flow = m.net.host(far).connect(svc("ab01"), Stream).unwrap();
    m.net.run_for(Duration::from_secs(2));
    assert!(
        m.net
            .sim_host(far)
            .events
            .contains(&Event::ConnectFailed(flow, ConnectError::NoRoute)),
        "{:?}",
        m.net.sim_host(far).events
    );
    // A relay still relays: the program beside the server is served.
    let (near, server, listener) = (m.near, m.server, m.listener);
    both_ways(&mut m.net, near, server, listener, 6);
}
