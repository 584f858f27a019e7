//! Programs that drive their own SAL hosts next to a daemon's, on the
//! simulator in UDP carriage (`docs/in-process-sal.md`): each program is a
//! host on its own port of its machine's address, with one rule, everything
//! to its daemon. A daemon routes its programs' SYNs by its rules though it
//! is no router (`HostConfig::relay_local`), and relays the SYNs of a
//! prefix a program serves to that program (`Host::relay`); after the SYN,
//! the programs talk directly, also two programs on one address. Also: a
//! SYN held by DELAY on either daemon reaches the program once the rule or
//! the relay comes, cookie ACKs open flows only in the program, and a
//! SOURCE naming a loopback client from another machine is dropped.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::{ConnectError, Event, HostConfig, SynCookies, TransmitKind};
use sal::table::Target;
use sal::wire::TransportProtocol::Stream;
use sal::wire::{ControlFlags, ControlRepr, SalRepr, SourceRepr};
use sal::{FlowId, Locator, ServicePrefix};
use sal_sim::{HostId, LinkConditions, Network, Packet};
use smoltcp::time::Duration;
use smoltcp::wire::TcpControl;

mod common;
use common::sim::{default_route, establish, pattern, prefix, stream, svc, tcp_segment};

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
    /// The near daemon's relay of `ab/8`.
    relay: sal::table::ListenerId,
    near: HostId,
    far: HostId,
}

fn machines(daemon_config: HostConfig) -> Machines {
    machines_with(daemon_config, HostConfig::default())
}

/// [`machines`], the serving program's host configured with
/// `server_config`.
fn machines_with(daemon_config: HostConfig, server_config: HostConfig) -> Machines {
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
    let server = one(&mut net, "server", server_config, "10.0.0.2/24", 5000);
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
        relay,
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

/// A SAL SYN for `ab01` from flow `n`, as a router of this stack would
/// have relayed it: SOURCE `addrs` with the client's UDP port `port`.
fn relayed_syn(n: u32, addrs: &[&str], port: u16) -> Vec<u8> {
    let mut repr = SalRepr::data(FlowId::new(n).unwrap(), None, 6);
    repr.control = Some(ControlRepr {
        flags: ControlFlags::SYN,
        verno: n.wrapping_mul(7919),
        ackno: 0,
        nonce: n.to_be_bytes().repeat(2).try_into().unwrap(),
    });
    repr.service = Some(svc("ab01"));
    let mut source = SourceRepr {
        client_port: port,
        ..SourceRepr::default()
    };
    for addr in addrs {
        source.addrs.push(addr.parse().unwrap());
    }
    repr.source = Some(source);
    let mut packet = vec![0; repr.header_len()];
    repr.emit(&mut packet).unwrap();
    let ends = (Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 0, 2));
    packet.extend_from_slice(&tcp_segment(TcpControl::Syn, n, None, &[], ends));
    packet
}

/// Counts the packets the network carries toward addresses `to` picks.
fn count_toward(net: &mut Network, to: fn(Ipv4Addr) -> bool) -> Rc<Cell<u64>> {
    let count = Rc::new(Cell::new(0));
    let seen = count.clone();
    net.set_filter(Some(Box::new(move |p| {
        if to(p.dst.ip()) {
            seen.set(seen.get() + 1);
        }
        false
    })));
    count
}

/// A loopback address names a host only to itself: a SYN that came from
/// another machine with SOURCE naming one as the client was forged, and answering it would send the SYN-ACK to a port on the
/// server's own loopback, to whatever listens there (a resolver, another
/// user's program). Both the relayed program and its daemon drop it
/// unanswered and unforwarded; the same SYN naming the sender's own
/// address is answered.
#[test]
fn a_syn_whose_source_names_loopback_from_another_machine_is_dropped() {
    let mut m = machines(daemon());
    let [_, daemon] = m.daemons;
    let server = m.server;
    let to_loopback = count_toward(&mut m.net, |ip| ip.is_loopback());
    let attacker = loc("udp:10.0.0.9:6666");
    let sources: [&[&str]; 2] = [
        &["127.0.0.1", "10.0.0.9"],
        &["127.0.0.53", "10.0.0.8", "10.0.0.9"],
    ];
    let mut n = 1;
    for to in ["udp:10.0.0.2:5000", "udp:10.0.0.2:7077"] {
        for addrs in sources {
            m.net.inject(Packet {
                src: attacker,
                dst: loc(to),
                ttl: 64,
                kind: TransmitKind::Own,
                payload: relayed_syn(n, addrs, 53),
            });
            n += 1;
        }
    }
    m.net.run_for(Duration::from_secs(1));
    assert_eq!(to_loopback.get(), 0, "nothing went to a loopback address");
    let (server_stats, daemon_stats) = (m.net.host(server).stats(), m.net.host(daemon).stats());
    assert_eq!(server_stats.bad_source, 2, "{server_stats:?}");
    assert_eq!(daemon_stats.bad_source, 2, "{daemon_stats:?}");
    assert_eq!(daemon_stats.forwarded, 0, "the relay forwarded none");
    assert_eq!(m.net.host(server).flow_count(), 0);
    // The check is what dropped them: naming the sender's own address as
    // the client, the same SYN is answered there (also with a loopback
    // hop: a daemon reached at 127.0.0.1 by a program on a real address).
    let to_attacker = count_toward(&mut m.net, |ip| ip == Ipv4Addr::new(10, 0, 0, 9));
    m.net.inject(Packet {
        src: attacker,
        dst: loc("udp:10.0.0.2:5000"),
        ttl: 64,
        kind: TransmitKind::Own,
        payload: relayed_syn(n, &["10.0.0.9", "127.0.0.1"], 6666),
    });
    m.net.run_for(Duration::from_millis(100));
    assert!(to_attacker.get() > 0, "the SYN was answered");
    assert_eq!(m.net.host(server).stats().bad_source, 2);
}

/// Runs `net` until `client`'s `flow` is connected (10 s at most), and
/// its handshake's last ACK had time to reach the server.
fn connected(net: &mut Network, client: HostId, flow: FlowId) -> bool {
    let done = net.run_until(Duration::from_secs(10), |net| {
        net.sim_host(client)
            .events
            .contains(&Event::Connected(flow))
    });
    net.run_for(Duration::from_millis(100));
    done
}

/// A relay bound before its client's daemon knows the way: that daemon
/// holds its program's SYN under DELAY (as while its controller is asked),
/// and once the FORWARD rule comes the SYN goes on to the server's
/// daemon, whose relay sends it to the program, and the programs talk.
#[test]
fn a_syn_held_by_delay_reaches_the_relayed_program_once_the_rule_comes() {
    let mut m = machines(daemon());
    let [far_daemon, near_daemon] = m.daemons;
    let (far, server, listener) = (m.far, m.server, m.listener);
    m.net
        .host(far_daemon)
        .remove_rule(&ServicePrefix::DEFAULT)
        .unwrap();
    (m.net.host(far_daemon)).add_rule(ServicePrefix::DEFAULT, Target::Delay, 0);
    let flow = m.net.host(far).connect(svc("ab01"), Stream).unwrap();
    m.net.run_for(Duration::from_millis(300));
    let held = m.net.host(far_daemon).stats();
    assert_eq!((held.delayed, held.forwarded), (1, 0), "{held:?}");
    assert!(m
        .net
        .sim_host(far_daemon)
        .events
        .contains(&Event::DelayNotify {
            service: svc("ab01"),
            connect: None,
        }));
    assert_eq!(m.net.host(near_daemon).stats().packets_in, 0);
    // The resolution: the daemon's rule gains its FORWARD target.
    default_route(&mut m.net, far_daemon, "udp:10.0.0.2:7077");
    assert!(connected(&mut m.net, far, flow), "the held SYN went on");
    let sflow = m
        .net
        .host(server)
        .accept(listener)
        .expect("the program's flow");
    let data = pattern(50_000, 8);
    let timeout = Duration::from_secs(30);
    assert!(
        stream(
            &mut m.net,
            (far, flow),
            (server, sflow),
            &data,
            timeout,
            |_, _| {}
        ) == data
    );
    let remote = m.net.host(server).flow(sflow).unwrap().remote;
    assert_eq!(remote, Some(loc("udp:10.0.0.1:6000")));
    assert_eq!(m.net.host(far_daemon).stats().forwarded, 1);
    assert_eq!(m.net.host(near_daemon).stats().forwarded, 1);
    assert_eq!(m.net.host(near_daemon).flow_count(), 0);
}

/// The other order on the relaying daemon itself: a SYN held there under
/// DELAY before the program bound its relay goes to the program once the
/// relay is bound (its DEMUX rule releases what DELAY held).
#[test]
fn a_syn_held_by_delay_goes_to_a_relay_bound_after_it() {
    let mut m = machines(daemon());
    let [_, near_daemon] = m.daemons;
    let (near, server, listener) = (m.near, m.server, m.listener);
    m.net.host(near_daemon).close_listener(m.relay).unwrap();
    (m.net.host(near_daemon)).add_rule(ServicePrefix::DEFAULT, Target::Delay, 0);
    let flow = m.net.host(near).connect(svc("ab01"), Stream).unwrap();
    m.net.run_for(Duration::from_millis(300));
    assert_eq!(m.net.host(near_daemon).stats().delayed, 1);
    (m.net.host(near_daemon))
        .relay(prefix("ab/8"), loc("udp:10.0.0.2:5000"))
        .unwrap();
    assert!(connected(&mut m.net, near, flow), "the held SYN went on");
    assert!(m.net.host(server).accept(listener).is_ok());
    assert_eq!(m.net.host(near_daemon).stats().forwarded, 1);
    assert_eq!(m.net.host(near_daemon).flow_count(), 0);
}

/// Under a SYN flood a relayed program's host answers with SYN cookies;
/// the client's ACK that carries the cookie goes to the program, which
/// opens the flow: its daemon opens none. And a cookie ACK that reaches
/// the daemon for a relayed prefix opens nothing there either, even one
/// carrying a cookie the daemon itself minted while it served the prefix
/// (before the program took it over): a relay's flows are its program's.
#[test]
fn cookie_acks_for_a_relayed_prefix_open_flows_only_in_the_program() {
    let cookies = HostConfig {
        syn_cookies: SynCookies::Always,
        ..daemon()
    };
    let program = HostConfig {
        syn_cookies: SynCookies::Always,
        ..HostConfig::default()
    };
    let mut m = machines_with(cookies, program);
    let [_, near_daemon] = m.daemons;
    let (near, far, server, listener) = (m.near, m.far, m.server, m.listener);
    for (client, seed) in [(near, 10), (far, 12)] {
        both_ways(&mut m.net, client, server, listener, seed);
    }
    let stats = m.net.host(server).stats();
    assert_eq!(
        (stats.cookies_sent, stats.cookies_accepted),
        (2, 2),
        "{stats:?}"
    );
    let stats = m.net.host(near_daemon).stats();
    assert_eq!(
        (stats.cookies_sent, stats.cookies_rejected),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(m.net.host(near_daemon).flow_count(), 0);
    // The daemon serves the prefix itself for a while, under cookies: the
    // client's ACK to its cookie is held back (as if late)...
    m.net.host(near_daemon).close_listener(m.relay).unwrap();
    let own = (m.net.host(near_daemon))
        .listen(prefix("ab/8"), Stream, 8)
        .unwrap();
    let held: Rc<RefCell<Vec<Packet>>> = Rc::default();
    let keep = held.clone();
    let (from, to) = (loc("udp:10.0.0.2:6000"), loc("udp:10.0.0.2:7077"));
    m.net.set_filter(Some(Box::new(move |p| {
        let ack = p.src == from && p.dst == to && !is_syn(&p.payload);
        if ack {
            keep.borrow_mut().push(p.clone());
        }
        ack
    })));
    let flow = m.net.host(near).connect(svc("ab01"), Stream).unwrap();
    m.net.run_for(Duration::from_millis(100));
    assert!(m
        .net
        .sim_host(near)
        .events
        .contains(&Event::Connected(flow)));
    assert_eq!(m.net.host(near_daemon).stats().cookies_sent, 1);
    let ack = held.borrow().first().cloned().expect("the cookie ACK");
    m.net.set_filter(None);
    // ...until the program took the prefix over: then it opens nothing.
    m.net.host(near_daemon).close_listener(own).unwrap();
    (m.net.host(near_daemon))
        .relay(prefix("ab/8"), loc("udp:10.0.0.2:5000"))
        .unwrap();
    m.net.inject(ack);
    m.net.run_for(Duration::from_millis(100));
    let stats = m.net.host(near_daemon).stats();
    assert_eq!(stats.cookies_accepted, 0, "{stats:?}");
    assert_eq!(stats.cookies_rejected, 1, "{stats:?}");
    assert_eq!(m.net.host(near_daemon).flow_count(), 0);
}

/// Whether a SAL packet is a SYN (a first packet: no destination flow).
fn is_syn(payload: &[u8]) -> bool {
    let packet = sal::wire::SalPacket::new_checked(payload).unwrap();
    SalRepr::parse(&packet).unwrap().dst_flow.is_none()
}

/// A program whose daemon relays a prefix to it, but that does not listen
/// on it yet (between its `bind`, which makes the relay, and its
/// `listen`): the SYN relayed meanwhile waits in the program's host
/// (`Host::reserve`) and opens a flow once it listens. Unreserved, the same
/// SYN is refused with "no route", which is what a SYN that a DELAY rule
/// at the daemon held until the relay came used to meet.
#[test]
fn a_syn_relayed_before_the_program_listens_waits_for_its_listen() {
    let mut m = machines(daemon());
    let (near, server) = (m.near, m.server);
    // As a program's host: everything else goes to its daemon.
    default_route(&mut m.net, server, "udp:10.0.0.2:7077");
    m.net.host(server).close_listener(m.listener).unwrap();
    m.net.host(server).reserve(prefix("ab/8"));
    let flow = m.net.host(near).connect(svc("ab01"), Stream).unwrap();
    m.net.run_for(Duration::from_millis(300));
    assert_eq!(m.net.host(server).stats().delayed, 1, "held, not refused");
    let listener = m
        .net
        .host(server)
        .listen(prefix("ab/8"), Stream, 8)
        .unwrap();
    assert!(
        connected(&mut m.net, near, flow),
        "the held SYN opened a flow"
    );
    assert!(m.net.host(server).accept(listener).is_ok());

    // A reservation given up: what it held is refused.
    m.net.host(server).close_listener(listener).unwrap();
    m.net.host(server).reserve(prefix("ab/8"));
    let flow = m.net.host(near).connect(svc("ab02"), Stream).unwrap();
    m.net.run_for(Duration::from_millis(300));
    assert_eq!(m.net.host(server).stats().delayed, 2);
    m.net.host(server).unreserve(&prefix("ab/8"));
    let refused = m.net.run_until(Duration::from_secs(5), |net| {
        net.sim_host(near)
            .events
            .contains(&Event::ConnectFailed(flow, ConnectError::NoRoute))
    });
    assert!(refused, "an unreserved SYN is refused");
}
