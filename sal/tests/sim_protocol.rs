//! Whole-protocol tests on the deterministic simulator: handshakes, transfers
//! under loss, service routers, DROP, DELAY, loops, datagrams.

use std::net::Ipv4Addr;

use sal::proto::{ConnectError, Event, HostConfig, HostError};
use sal::table::Target;
use sal::wire::TransportProtocol::{Datagram, Stream};
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::time::Duration;

mod common;
use common::sim::{establish, pattern};

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

fn prefix(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

fn forward(s: &str, weight: u32) -> Target {
    Target::Forward {
        locator: loc(s),
        weight,
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Client 10.0.0.1 and server 10.0.0.2 on one subnet; the client's default
/// rule points at the server.
fn pair(conditions: LinkConditions, config: HostConfig) -> (Network, HostId, HostId) {
    let mut net = Network::new(7, conditions);
    let client = net.add_host("client", config.clone(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", config, &[("eth0", "10.0.0.2/24")]);
    net.host(client)
        .add_rule(ServicePrefix::DEFAULT, forward("10.0.0.2", 1), 0);
    (net, client, server)
}

fn has_event(net: &mut Network, host: HostId, event: &Event) -> bool {
    net.sim_host(host).events.contains(event)
}

/// Pushes `data` from one flow to another, half-closes, and returns what the
/// receiver read up to end of stream.
fn transfer(
    net: &mut Network,
    from: (HostId, FlowId),
    to: (HostId, FlowId),
    data: &[u8],
    timeout: Duration,
) -> Vec<u8> {
    common::sim::stream(net, from, to, data, timeout, |_, _| {})
}

#[test]
fn stream_connect_transfer_and_close_release_everything() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let service = svc("beef01");
    let listener = net
        .host(server)
        .listen(prefix("beef/16"), Stream, 16)
        .unwrap();
    net.settle();
    assert!(has_event(
        &mut net,
        server,
        &Event::Registered(listener, prefix("beef/16"))
    ));
    let (cflow, sflow) = establish(&mut net, client, server, listener, service);
    let info = net.host(server).flow(sflow).unwrap();
    assert_eq!(info.service, service);
    assert_eq!(info.peer_flow, Some(cflow));
    assert_eq!(info.remote, Some(loc("10.0.0.1")));

    let data = pattern(300_000, 1);
    let got = transfer(&mut net, (client, cflow), (server, sflow), &data, secs(30));
    assert_eq!(got, data);
    // And back the other way.
    let reply = pattern(50_000, 2);
    let got = transfer(&mut net, (server, sflow), (client, cflow), &reply, secs(30));
    assert_eq!(got, reply);

    net.host(client).close(cflow).unwrap();
    net.host(server).close(sflow).unwrap();
    net.run_for(secs(5));
    assert!(has_event(&mut net, client, &Event::Closed(cflow)));
    assert!(has_event(&mut net, server, &Event::Closed(sflow)));
    assert!(net.host(client).flows().is_empty());
    assert!(net.host(server).flows().is_empty());
}

#[test]
fn handshakes_complete_under_twenty_percent_loss() {
    let conditions = LinkConditions {
        loss: 0.2,
        ..Default::default()
    };
    // Servers never repeat a SYN-ACK: a client whose handshake ACK is lost
    // repeats it, as many times as it repeats its SYN here.
    let config = HostConfig {
        control_retries: 10,
        handshake_ack_repeats: 10,
        ..Default::default()
    };
    let (mut net, client, server) = pair(conditions, config);
    let listener = net.host(server).listen(prefix("ab/8"), Stream, 64).unwrap();
    let flows: Vec<FlowId> = (0..40)
        .map(|_| net.host(client).connect(svc("ab01"), Stream).unwrap())
        .collect();
    let mut accepted = 0;
    let ok = net.run_until(secs(120), |net| {
        while net.host(server).accept(listener).is_ok() {
            accepted += 1;
        }
        let connected = flows
            .iter()
            .filter(|f| net.sim_host(client).events.contains(&Event::Connected(**f)))
            .count();
        connected == flows.len() && accepted == flows.len()
    });
    assert!(ok, "accepted {accepted} of {}", flows.len());
    assert!(net.stats.lost > 0, "the medium really lost packets");
    assert!(net.host(client).stats().retransmits > 0);
}

#[test]
fn ten_megabytes_through_a_lossy_reordering_duplicating_path() {
    let conditions = LinkConditions {
        loss: 0.01,
        duplicate: 0.01,
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(2),
        ..Default::default()
    };
    let (mut net, client, server) = pair(conditions, HostConfig::default());
    let listener = net
        .host(server)
        .listen(prefix("cafe/16"), Stream, 4)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("cafe"));
    let data = pattern(10 << 20, 3);
    let got = transfer(&mut net, (client, cflow), (server, sflow), &data, secs(600));
    assert_eq!(got.len(), data.len());
    assert!(got == data, "received bytes differ");
    assert!(net.stats.lost > 0 && net.stats.duplicated > 0);
}

#[test]
fn connect_to_a_drop_rule_fails_at_once_locally_and_fast_through_a_router() {
    let (mut net, client, _server) = pair(LinkConditions::default(), HostConfig::default());
    net.host(client)
        .add_rule(prefix("dead/16"), Target::Drop, 0);
    assert_eq!(
        net.host(client).connect(svc("dead01"), Stream),
        Err(HostError::Connect(ConnectError::NoRoute))
    );

    // Through a router whose rule is DROP: the router answers, no timeout.
    let router_cfg = HostConfig {
        forward: true,
        ..Default::default()
    };
    let router = net.add_host("router", router_cfg, &[("eth0", "10.0.0.3/24")]);
    net.host(router).add_rule(prefix("d0/8"), Target::Drop, 0);
    net.host(client)
        .add_rule(prefix("d0/8"), forward("10.0.0.3", 1), 0);
    let start = net.now();
    let flow = net.host(client).connect(svc("d001"), Stream).unwrap();
    let failed = Event::ConnectFailed(flow, ConnectError::NoRoute);
    assert!(net.run_until(secs(10), |net| has_event(net, client, &failed)));
    assert!(
        net.now() - start < Duration::from_millis(50),
        "took {}",
        net.now() - start
    );
    assert_eq!(net.host(router).stats().refused, 1);
}

#[test]
fn connect_without_listener_is_refused_not_timed_out() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let flow = net.host(client).connect(svc("1234"), Stream).unwrap();
    let failed = Event::ConnectFailed(flow, ConnectError::NoRoute);
    assert!(net.run_until(secs(1), |net| has_event(net, client, &failed)));
    // A listener of the other protocol refuses.
    net.host(server)
        .listen(prefix("77/8"), Datagram, 4)
        .unwrap();
    let flow = net.host(client).connect(svc("77"), Stream).unwrap();
    let refused = Event::ConnectFailed(flow, ConnectError::Refused);
    assert!(net.run_until(secs(1), |net| has_event(net, client, &refused)));
}

/// Client - router - two servers, all on one subnet.
fn routed(weights: [u32; 2]) -> (Network, HostId, HostId, [HostId; 2]) {
    let mut net = Network::new(11, LinkConditions::default());
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let router = net.add_host(
        "router",
        HostConfig {
            forward: true,
            ..Default::default()
        },
        &[("eth0", "10.0.0.254/24")],
    );
    let s1 = net.add_host("s1", HostConfig::default(), &[("eth0", "10.0.0.11/24")]);
    let s2 = net.add_host("s2", HostConfig::default(), &[("eth0", "10.0.0.12/24")]);
    net.host(client)
        .add_rule(ServicePrefix::DEFAULT, forward("10.0.0.254", 1), 0);
    net.host(router)
        .add_rule(prefix("5e/8"), forward("10.0.0.11", weights[0]), 0);
    net.host(router)
        .add_rule(prefix("5e/8"), forward("10.0.0.12", weights[1]), 0);
    (net, client, router, [s1, s2])
}

#[test]
fn router_spreads_connections_by_weight_and_then_leaves_the_path() {
    let (mut net, client, router, servers) = routed([1, 3]);
    let listeners = servers.map(|s| net.host(s).listen(prefix("5e/8"), Stream, 512).unwrap());
    let flows: Vec<FlowId> = (0..200)
        .map(|_| net.host(client).connect(svc("5e01"), Stream).unwrap())
        .collect();
    let mut accepted = [Vec::new(), Vec::new()];
    assert!(net.run_until(secs(30), |net| {
        for i in 0..2 {
            while let Ok(f) = net.host(servers[i]).accept(listeners[i]) {
                accepted[i].push(f);
            }
        }
        accepted[0].len() + accepted[1].len() == flows.len()
    }));
    // Weights 1:3 over 200 connections: expect 50 on s1 (binomial sd ~6.1).
    let s1 = accepted[0].len();
    assert!((26..=74).contains(&s1), "s1 got {s1} of 200");
    // The server answered the client directly, from its own address.
    let remote = net.host(client).flow(flows[0]).unwrap().remote.unwrap();
    assert!(remote == loc("10.0.0.11") || remote == loc("10.0.0.12"));
    let server_flow = net.host(servers[0]).flow(accepted[0][0]).unwrap();
    assert_eq!(
        server_flow.remote,
        Some(loc("10.0.0.1")),
        "SOURCE names the client"
    );

    // Data flows end to end: the router sees none of it.
    let before = net.sim_host(router).received;
    let cflow = net
        .host(servers[0])
        .flow(accepted[0][0])
        .unwrap()
        .peer_flow
        .unwrap();
    let data = pattern(200_000, 4);
    let got = transfer(
        &mut net,
        (client, cflow),
        (servers[0], accepted[0][0]),
        &data,
        secs(30),
    );
    assert_eq!(got, data);
    assert_eq!(net.sim_host(router).received, before);
    assert_eq!(net.host(router).stats().forwarded, 200);
}

#[test]
fn delay_holds_the_syn_until_a_rule_arrives() {
    let (mut net, client, router, servers) = routed([1, 1]);
    net.host(router)
        .add_rule(prefix("de1a/16"), Target::Delay, 0);
    let listener = net
        .host(servers[1])
        .listen(prefix("de1a/16"), Stream, 4)
        .unwrap();
    let flow = net.host(client).connect(svc("de1a01"), Stream).unwrap();
    // At the router: a packet that arrived, not a connect of its own.
    let notified = Event::DelayNotify {
        service: svc("de1a01"),
        connect: None,
    };
    assert!(net.run_until(secs(1), |net| has_event(net, router, &notified)));
    net.run_for(Duration::from_millis(300));
    assert!(net.host(router).stats().delayed >= 1);
    assert!(!has_event(&mut net, client, &Event::Connected(flow)));
    // The controller answers: a FORWARD rule at higher priority than DELAY.
    net.host(router)
        .add_rule(prefix("de1a/16"), forward("10.0.0.12", 1), 1);
    assert!(net.run_until(secs(2), |net| has_event(
        net,
        client,
        &Event::Connected(flow)
    )));
    assert!(net.run_until(secs(1), |net| net.host(servers[1]).accept(listener).is_ok()));
}

#[test]
fn delay_drops_after_its_timeout_and_the_connect_times_out() {
    let (mut net, client, router, _servers) = routed([1, 1]);
    let client_cfg = HostConfig {
        control_retries: 2,
        ..Default::default()
    };
    let impatient = net.add_host("impatient", client_cfg, &[("eth0", "10.0.0.2/24")]);
    let _ = client;
    net.host(impatient)
        .add_rule(ServicePrefix::DEFAULT, forward("10.0.0.254", 1), 0);
    net.host(router)
        .add_rule(prefix("de1a/16"), Target::Delay, 0);
    let flow = net.host(impatient).connect(svc("de1a"), Stream).unwrap();
    let timed_out = Event::ConnectFailed(flow, ConnectError::TimedOut);
    assert!(net.run_until(secs(60), |net| has_event(net, impatient, &timed_out)));
    net.run_for(secs(10));
    let stats = net.host(router).stats();
    assert!(stats.delay_dropped >= 1, "{stats:?}");
}

#[test]
fn local_delay_rule_holds_connect_until_resolved() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    net.host(client)
        .add_rule(prefix("f00d/16"), Target::Delay, 0);
    let listener = net
        .host(server)
        .listen(prefix("f00d/16"), Stream, 4)
        .unwrap();
    let flow = net.host(client).connect(svc("f00d"), Stream).unwrap();
    net.run_for(Duration::from_millis(500));
    assert!(has_event(
        &mut net,
        client,
        &Event::DelayNotify {
            service: svc("f00d"),
            connect: Some(flow),
        }
    ));
    net.host(client)
        .add_rule(prefix("f00d/16"), forward("10.0.0.2", 1), 5);
    assert!(net.run_until(secs(2), |net| has_event(
        net,
        client,
        &Event::Connected(flow)
    )));
    assert!(net.run_until(secs(1), |net| net.host(server).accept(listener).is_ok()));
}

#[test]
fn forwarding_loop_between_two_routers_dies_out() {
    let mut net = Network::new(3, LinkConditions::default());
    let router_cfg = HostConfig {
        forward: true,
        ..Default::default()
    };
    let client_cfg = HostConfig {
        control_retries: 1,
        ..Default::default()
    };
    let client = net.add_host("client", client_cfg, &[("eth0", "10.0.0.1/24")]);
    let r1 = net.add_host("r1", router_cfg.clone(), &[("eth0", "10.0.0.2/24")]);
    let r2 = net.add_host("r2", router_cfg, &[("eth0", "10.0.0.3/24")]);
    net.host(client)
        .add_rule(prefix("100b/16"), forward("10.0.0.2", 1), 0);
    net.host(r1)
        .add_rule(prefix("100b/16"), forward("10.0.0.3", 1), 0);
    net.host(r2)
        .add_rule(prefix("100b/16"), forward("10.0.0.2", 1), 0);
    let flow = net.host(client).connect(svc("100b"), Stream).unwrap();
    let failed = Event::ConnectFailed(flow, ConnectError::TimedOut);
    assert!(net.run_until(secs(30), |net| has_event(net, client, &failed)));
    net.run_for(secs(5));
    let stats = |net: &mut Network, host| net.host(host).stats();
    let looped = stats(&mut net, r1).loop_dropped + stats(&mut net, r2).loop_dropped;
    let forwarded = stats(&mut net, r1).forwarded + stats(&mut net, r2).forwarded;
    // Two SYN transmissions, each forwarded by r1 then r2, and caught by
    // r1 when it came back with r1's address already in SOURCE.
    assert_eq!(looped, 2);
    assert_eq!(forwarded, 2 * 2);
    assert_eq!(
        stats(&mut net, r1).ttl_expired + stats(&mut net, r2).ttl_expired,
        0
    );
    // The network is quiet again.
    let sent = net.stats.sent;
    net.run_for(secs(10));
    assert_eq!(net.stats.sent, sent);
}

#[test]
fn datagrams_are_resolved_per_datagram_and_replies_come_back() {
    let (mut net, client, _router, servers) = routed([1, 1]);
    let listeners = servers.map(|s| net.host(s).listen(prefix("5e/8"), Datagram, 4).unwrap());
    let socket = net.host(client).open_datagram().unwrap();
    for i in 0..100u32 {
        net.host(client)
            .send_to(socket, svc("5e77"), &i.to_be_bytes())
            .unwrap();
    }
    net.run_for(secs(1));
    let mut counts = [0; 2];
    for i in 0..2 {
        let sock = net.host(servers[i]).listener_socket(listeners[i]).unwrap();
        while let Ok(d) = net.host(servers[i]).recv_from(sock) {
            assert_eq!(d.service, Some(svc("5e77")));
            assert_eq!(d.peer.locator, loc("10.0.0.1"));
            assert_eq!(d.peer.flow, socket);
            counts[i] += 1;
            let mut reply = d.data.clone();
            reply.reverse();
            net.host(servers[i])
                .send_reply(sock, d.peer, &reply)
                .unwrap();
        }
    }
    assert_eq!(counts[0] + counts[1], 100);
    assert!(
        counts[0] > 20 && counts[1] > 20,
        "anycast spread {counts:?}"
    );
    net.run_for(secs(1));
    let mut replies = 0;
    while let Ok(d) = net.host(client).recv_from(socket) {
        assert!(d.peer.locator == loc("10.0.0.11") || d.peer.locator == loc("10.0.0.12"));
        replies += 1;
    }
    assert_eq!(replies, 100);
}

#[test]
fn connected_datagram_flow_exchanges_and_closes() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net
        .host(server)
        .listen(prefix("4001/16"), Datagram, 4)
        .unwrap();
    let cflow = net.host(client).connect(svc("4001"), Datagram).unwrap();
    let mut sflow = None;
    assert!(net.run_until(secs(2), |net| {
        sflow = sflow.or_else(|| net.host(server).accept(listener).ok());
        sflow.is_some() && has_event(net, client, &Event::Connected(cflow))
    }));
    let sflow = sflow.unwrap();
    net.host(client)
        .send_datagram(cflow, b"hello serval")
        .unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.host(server).recv_datagram(sflow).unwrap().unwrap(),
        b"hello serval"
    );
    net.host(server)
        .send_datagram(sflow, b"HELLO SERVAL")
        .unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.host(client).recv_datagram(cflow).unwrap().unwrap(),
        b"HELLO SERVAL"
    );
    net.host(server).close(sflow).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.host(client).recv_datagram(cflow),
        Ok(None),
        "peer FIN is end of flow"
    );
    net.host(client).close(cflow).unwrap();
    // The server acknowledged the last FIN: it lingers a while (see
    // `a_lost_last_ack_is_repeated_by_the_lingering_side`).
    net.run_for(secs(3));
    assert!(net.host(client).flows().is_empty());
    assert!(net.host(server).flows().is_empty());
}

/// The client's ACK of the handshake is lost: the server repeats its
/// SYN-ACK, and the client's answer (a SAL ACK without a TCP segment)
/// establishes the server's flow before its TCP socket is. Reading it then
/// finds nothing yet, not the end of the stream, and the client's data
/// completes the TCP handshake.
#[test]
fn a_lost_handshake_ack_leaves_the_server_waiting_not_at_end_of_stream() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net.host(server).listen(prefix("ac/8"), Stream, 4).unwrap();
    let dropped = std::rc::Rc::new(std::cell::Cell::new(false));
    let seen = dropped.clone();
    net.set_filter(Some(Box::new(move |p| {
        let handshake_ack = sal::wire::SalPacket::new_checked(&p.payload[..])
            .ok()
            .and_then(|packet| sal::wire::SalRepr::parse(&packet).ok())
            .is_some_and(|repr| repr.service.is_some() && repr.dst_flow.is_some());
        let drop = handshake_ack && p.src == loc("10.0.0.1") && !seen.get();
        if drop {
            seen.set(true);
        }
        drop
    })));
    let cflow = net.host(client).connect(svc("ac01"), Stream).unwrap();
    let mut sflow = None;
    assert!(net.run_until(secs(5), |net| {
        sflow = sflow.or_else(|| net.host(server).accept(listener).ok());
        sflow.is_some()
    }));
    let sflow = sflow.unwrap();
    assert!(dropped.get(), "the handshake's ACK was lost");
    assert_eq!(
        net.host(server).recv(sflow, &mut [0; 8]),
        Err(HostError::WouldBlock),
        "nothing yet, not the end of the stream"
    );
    net.host(client).send(cflow, b"data").unwrap();
    let mut got = [0; 8];
    assert!(
        net.run_until(secs(5), |net| net.host(server).recv(sflow, &mut got)
            == Ok(4))
    );
    assert_eq!(&got[..4], b"data");
}

/// The side that acknowledges the last FIN keeps the flow a few control
/// timeouts: when that acknowledgement is lost, the peer's repeated FIN is
/// answered and the peer lets go at once, instead of retrying for half a
/// minute against a host that forgot the flow.
#[test]
fn a_lost_last_ack_is_repeated_by_the_lingering_side() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net.host(server).listen(prefix("1a/8"), Stream, 4).unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("1a"));
    // The server finishes first; then the client, whose FIN the server's
    // acknowledgement ends the flow with. That acknowledgement is lost.
    net.host(server).close(sflow).unwrap();
    net.run_for(secs(1));
    assert_eq!(net.host(client).recv(cflow, &mut [0; 8]), Ok(0));
    let dropped = std::rc::Rc::new(std::cell::Cell::new(0));
    let count = dropped.clone();
    net.set_filter(Some(Box::new(move |p| {
        // The server's last SAL ACK rides on its TCP ACK: both are lost.
        let ack = carries_sal_ack(&p.payload);
        let drop = ack && p.src == loc("10.0.0.2") && count.get() == 0;
        if drop {
            count.set(1);
        }
        drop
    })));
    net.host(client).close(cflow).unwrap();
    let closed = Event::Closed(cflow);
    assert!(net.run_until(secs(2), |net| has_event(net, client, &closed)));
    assert_eq!(dropped.get(), 1, "the last ACK was lost");
    assert!(net.host(server).flow(sflow).is_some(), "the server lingers");
    net.run_for(secs(3));
    assert!(net.host(server).flows().is_empty(), "and then lets go");
}

/// The control flags of `payload`, a SAL packet with a CONTROL extension
/// (alone, or riding on a TCP segment).
fn control_flags(payload: &[u8]) -> Option<sal::wire::ControlFlags> {
    let packet = sal::wire::SalPacket::new_checked(payload).ok()?;
    let repr = sal::wire::SalRepr::parse(&packet).ok()?;
    Some(repr.control?.flags)
}

/// Whether `payload` carries a SAL ACK (CONTROL(ACK) and nothing else,
/// alone or riding on a TCP segment).
fn carries_sal_ack(payload: &[u8]) -> bool {
    control_flags(payload) == Some(sal::wire::ControlFlags::ACK)
}

/// The client finishes first, and every acknowledgement of its FIN is
/// lost (a daemon too busy to read its packets drops them). The server
/// finishes later: once the client acknowledged its FIN, it has nothing
/// left to wait for and lets the flow go. The client's next repeat of its
/// FIN finds no flow there; it is answered with a RST echoing the
/// client's nonce, and the client lets go then, not once its FIN runs out
/// of retries half a minute after it was sent.
#[test]
fn a_fin_repeated_to_a_host_that_let_the_flow_go_is_answered() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net.host(server).listen(prefix("1b/8"), Stream, 4).unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("1b"));
    let lossy = std::rc::Rc::new(std::cell::Cell::new(true));
    let dropped = std::rc::Rc::new(std::cell::Cell::new(0));
    let (on, count) = (lossy.clone(), dropped.clone());
    net.set_filter(Some(Box::new(move |p| {
        let drop = on.get() && p.src == loc("10.0.0.2") && carries_sal_ack(&p.payload);
        if drop {
            count.set(count.get() + 1);
        }
        drop
    })));
    net.host(client).close(cflow).unwrap();
    // The FIN and its repeats at 0.5 and 1.5 s go unacknowledged.
    net.run_for(secs(2));
    assert!(
        dropped.get() >= 3,
        "{} acknowledgements lost",
        dropped.get()
    );
    assert_eq!(net.host(server).recv(sflow, &mut [0; 8]), Ok(0));
    net.host(server).close(sflow).unwrap();
    let sclosed = Event::Closed(sflow);
    assert!(net.run_until(secs(1), |net| has_event(net, server, &sclosed)));
    assert!(net.host(client).flow(cflow).is_some(), "its FIN unanswered");
    lossy.set(false);
    // The next repeat, 3.5 s after the FIN, is answered.
    let closed = Event::Closed(cflow);
    assert!(
        net.run_until(secs(2), |net| has_event(net, client, &closed)),
        "the client still holds its flow"
    );
    assert_eq!(net.host(client).stats().peer_timeouts, 0, "not given up on");
    assert!(net.host(server).flows().is_empty());
}

/// A host that gives up on its SAL FIN (unacknowledged through all its
/// repeats) resets the flow. The peer may only have lost the FINs (a
/// daemon too busy to read its packets drops them): a peer that closed
/// first and waits for that FIN (orphaned) lets its flow go on the RST,
/// not after its orphan timeout.
#[test]
fn a_fin_given_up_on_resets_the_flow_for_the_peer() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net.host(server).listen(prefix("1c/8"), Stream, 4).unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("1c"));
    net.host(server).close(sflow).unwrap();
    net.run_for(secs(1));
    assert_eq!(net.host(client).recv(cflow, &mut [0; 8]), Ok(0));
    let lost = std::rc::Rc::new(std::cell::Cell::new(0));
    let count = lost.clone();
    net.set_filter(Some(Box::new(move |p| {
        let fin = p.src == loc("10.0.0.1")
            && control_flags(&p.payload)
                .is_some_and(|flags| flags.contains(sal::wire::ControlFlags::FIN));
        count.set(count.get() + usize::from(fin));
        fin
    })));
    net.host(client).close(cflow).unwrap();
    let closed = Event::Closed(sflow);
    let orphan_timeout = HostConfig::default().orphan_timeout;
    assert!(
        net.run_until(orphan_timeout - secs(10), |net| has_event(
            net, server, &closed
        )),
        "the server waited out its orphan timeout"
    );
    assert!(lost.get() > 3, "{} FINs lost", lost.get());
    assert_eq!(net.host(client).stats().peer_timeouts, 1, "FIN given up on");
    assert_eq!(net.host(server).stats().orphans_reset, 0);
    assert!(net.host(client).flows().is_empty());
    assert!(net.host(server).flows().is_empty());
}

#[test]
fn garbage_and_spoofed_packets_are_counted_and_change_nothing() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net.host(server).listen(prefix("aa/8"), Stream, 4).unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("aa"));
    let now = net.now();
    let src = loc("10.0.0.9");
    let dst = loc("10.0.0.2");
    net.host(server)
        .handle_packet(now, src, dst, 64, &[1, 2, 3]);
    net.host(server).handle_packet(now, src, dst, 64, &[0; 64]);
    // A RST for the server's flow with a made-up nonce.
    let mut rst = sal::wire::SalRepr::data(cflow, Some(sflow), 6);
    rst.control = Some(sal::wire::ControlRepr {
        flags: sal::wire::ControlFlags::RST,
        verno: 0,
        ackno: 0,
        nonce: [0x55; 8],
    });
    let mut bytes = vec![0u8; rst.header_len()];
    rst.emit(&mut bytes).unwrap();
    net.host(server).handle_packet(now, src, dst, 64, &bytes);
    let stats = net.host(server).stats();
    assert_eq!(stats.malformed, 2);
    assert_eq!(stats.bad_nonce, 1);
    let data = pattern(10_000, 5);
    assert_eq!(
        transfer(&mut net, (client, cflow), (server, sflow), &data, secs(10)),
        data
    );
    let _ = Ipv4Addr::LOCALHOST;
}

#[test]
fn closing_with_unread_data_resets_the_peer_instead_of_stalling_it() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net
        .host(server)
        .listen(prefix("c105/16"), Stream, 4)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("c105"));
    let data = pattern(200_000, 9);
    let mut sent = 0;
    net.run_until(secs(2), |net| {
        if let Ok(n) = net.host(client).send(cflow, &data[sent..]) {
            sent += n;
        }
        sent == data.len()
    });
    net.run_for(Duration::from_millis(200));
    // The server application goes away without reading a byte.
    net.host(server).close(sflow).unwrap();
    let mut reset = false;
    assert!(net.run_until(secs(5), |net| {
        if matches!(net.host(client).send(cflow, b"more"), Err(HostError::Reset)) {
            reset = true;
        }
        reset
    }));
    net.host(client).close(cflow).unwrap();
    net.run_for(secs(1));
    assert!(net.host(client).flows().is_empty());
    assert!(net.host(server).flows().is_empty());
}

/// A flow its application closed waits for the peer's FIN only so long
/// (`HostConfig::orphan_timeout`): a peer that never closes its side, and
/// keeps answering, cannot hold the flow's state for ever. It is reset
/// then, which the peer's application sees. A flow whose application only
/// shut its sending down still wants what the peer sends: it waits.
#[test]
fn a_closed_flow_waits_for_a_peer_that_never_finishes_only_so_long() {
    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net.host(server).listen(prefix("0f/8"), Stream, 4).unwrap();
    let (closed, closed_peer) = establish(&mut net, client, server, listener, svc("0f01"));
    let (shut, shut_peer) = establish(&mut net, client, server, listener, svc("0f02"));
    net.host(client).close(closed).unwrap();
    net.host(client).shutdown(shut).unwrap();
    let timeout = HostConfig::default().orphan_timeout;
    net.run_for(timeout - secs(5));
    assert!(
        net.host(client).flow(closed).is_some(),
        "still waiting for the peer's FIN"
    );
    net.run_for(secs(15));
    assert!(has_event(&mut net, client, &Event::Closed(closed)));
    assert!(net.host(client).flow(closed).is_none());
    assert_eq!(net.host(client).stats().orphans_reset, 1);
    assert!(matches!(
        net.host(server).send(closed_peer, b"late"),
        Err(HostError::Reset)
    ));
    net.host(server).close(closed_peer).unwrap();
    // The half-closed flow is untouched, and still carries the peer's data.
    net.run_for(timeout);
    assert!(net.host(client).flow(shut).is_some());
    let got = transfer(
        &mut net,
        (server, shut_peer),
        (client, shut),
        b"answer",
        secs(5),
    );
    assert_eq!(got, b"answer");
    net.host(client).close(shut).unwrap();
    net.host(server).close(shut_peer).unwrap();
    net.run_for(secs(5));
    assert!(net.host(client).flows().is_empty());
    assert!(net.host(server).flows().is_empty());
    assert_eq!(net.host(client).stats().orphans_reset, 1);
}

/// What a short request costs on the wire, as the connect bench's C client
/// does it: connect, 64 bytes each way, close (the client first, the server
/// as soon as it reads end of stream). Three SAL+TCP handshake packets,
/// the request and its answer, and three to close, each SAL message riding
/// on a TCP segment: the client's SAL FIN on its TCP FIN, the server's
/// `FIN|ACK` (its SAL FIN, acknowledging the client's) on its TCP FIN-ACK,
/// and the client's SAL ACK on its TCP ACK: 8, where sending each SAL FIN
/// and its ACK alone (as the reference stack does) took 12. A pure ACK of
/// the client's FIN (smoltcp's habit) made it 13.
#[test]
fn a_short_request_takes_eight_packets() {
    short_request_packets(false);
}

/// The same, with the server's flow handed on as sald's `Deliver` does
/// ([`Host::take`], then [`Host::accepted`] once its program reads): the
/// cap on the window of a flow nobody has accepted is lifted then, which
/// must not cost a window update of its own (a guard: the lifted cap
/// offers a window more than twice the last, which a pure ACK could
/// announce).
#[test]
fn a_short_request_handed_on_takes_eight_packets_too() {
    short_request_packets(true);
}

/// A packet as the test's filter saw it: from the client or the server,
/// its CONTROL flags, and the length of its transport segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    from_client: bool,
    control: Option<sal::wire::ControlFlags>,
    segment: usize,
}

fn short_request_packets(handed_on: bool) {
    use std::cell::RefCell;
    use std::rc::Rc;

    use sal::wire::{ControlFlags, SalPacket, SalRepr};

    let (mut net, client, server) = pair(LinkConditions::default(), HostConfig::default());
    let listener = net
        .host(server)
        .listen(prefix("beef/16"), Stream, 16)
        .unwrap();
    net.settle();
    let packets = Rc::new(RefCell::new(Vec::new()));
    let log = packets.clone();
    net.set_filter(Some(Box::new(move |packet| {
        let bytes = &packet.payload[..];
        let parsed = SalPacket::new_checked(bytes)
            .ok()
            .and_then(|p| SalRepr::parse(&p).ok().map(|r| (r, p.header_len())));
        if let Some((repr, header)) = parsed {
            log.borrow_mut().push(Seen {
                from_client: packet.src.ip() == Ipv4Addr::new(10, 0, 0, 1),
                control: repr.control.map(|c| c.flags),
                segment: bytes.len() - header,
            });
        }
        false
    })));
    let (cflow, sflow) = if handed_on {
        let cflow = net.host(client).connect(svc("beef01"), Stream).unwrap();
        let mut sflow = None;
        assert!(net.run_until(secs(5), |net| {
            sflow = sflow.or_else(|| net.host(server).take(listener).ok());
            sflow.is_some()
        }));
        (cflow, sflow.unwrap())
    } else {
        establish(&mut net, client, server, listener, svc("beef01"))
    };
    let mut buf = [0u8; 256];
    net.host(client).send(cflow, &[7; 64]).unwrap();
    assert!(
        net.run_until(secs(1), |net| net.host(server).recv(sflow, &mut buf)
            == Ok(64))
    );
    if handed_on {
        // Seen by the pump before the program's answer comes.
        net.host(server).accepted(sflow).unwrap();
        net.run_for(Duration::from_micros(200));
    }
    net.host(server).send(sflow, &[7; 64]).unwrap();
    assert!(
        net.run_until(secs(1), |net| net.host(client).recv(cflow, &mut buf)
            == Ok(64))
    );
    net.host(client).close(cflow).unwrap();
    assert!(
        net.run_until(secs(1), |net| net.host(server).recv(sflow, &mut buf)
            == Ok(0))
    );
    net.host(server).close(sflow).unwrap();
    net.run_for(secs(5));
    assert!(
        net.host(client).flow(cflow).is_none(),
        "client flow released"
    );
    assert!(
        net.host(server).flow(sflow).is_none(),
        "server flow released"
    );
    let packets = packets.borrow();
    assert_eq!(packets.len(), 8, "{packets:#?}");
    // The close, from the client's TCP FIN on (each a bare TCP segment).
    let (fin, ack) = (ControlFlags::FIN, ControlFlags::ACK);
    let close: Vec<(bool, Option<ControlFlags>, bool)> = packets[5..]
        .iter()
        .map(|p| (p.from_client, p.control, p.segment > 0))
        .collect();
    assert_eq!(
        close,
        [
            (true, Some(fin), true),        // our SAL FIN on our TCP FIN
            (false, Some(fin | ack), true), // its FIN|ACK on its TCP FIN-ACK
            (true, Some(ack), true),        // the last ACK on the TCP ACK
        ],
        "{packets:#?}"
    );
}
