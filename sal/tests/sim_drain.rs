//! Draining a listener on the simulator: the service is withdrawn while the
//! flows the listener already admitted complete, SYNs that still arrive
//! are dropped quietly (their clients retry elsewhere), and closing the
//! drained listener once idle resets nobody.

use sal::proto::{ConnectError, Event, FlowState, HostConfig, HostError};
use sal::table::{ListenerId, Target, TargetKey};
use sal::wire::TransportProtocol::Stream;
use sal::{FlowId, ServicePrefix};
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::time::Duration;

mod common;
use common::sim::{establish, loc, pattern, prefix, stream, svc};

const SERVICE: &str = "5e/8";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A client, a service router, and two instances s1 (10.0.0.11) and s2
/// (10.0.0.12) of service 5e/8, both forwarded to by the router.
fn replicated() -> (Network, HostId, HostId, [HostId; 2], [ListenerId; 2]) {
    let mut net = Network::new(21, LinkConditions::default());
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let router_cfg = HostConfig {
        forward: true,
        ..Default::default()
    };
    let router = net.add_host("router", router_cfg, &[("eth0", "10.0.0.254/24")]);
    let s1 = net.add_host("s1", HostConfig::default(), &[("eth0", "10.0.0.11/24")]);
    let s2 = net.add_host("s2", HostConfig::default(), &[("eth0", "10.0.0.12/24")]);
    let to_router = Target::Forward {
        locator: loc("10.0.0.254"),
        weight: 1,
    };
    net.host(client)
        .add_rule(ServicePrefix::DEFAULT, to_router, 0);
    for ip in ["10.0.0.11", "10.0.0.12"] {
        let target = Target::Forward {
            locator: loc(ip),
            weight: 1,
        };
        net.host(router).add_rule(prefix(SERVICE), target, 0);
    }
    let listeners = [s1, s2].map(|s| net.host(s).listen(prefix(SERVICE), Stream, 64).unwrap());
    net.settle();
    (net, client, router, [s1, s2], listeners)
}

fn unregistered(net: &mut Network, host: HostId) -> usize {
    net.sim_host(host)
        .events
        .iter()
        .filter(|e| matches!(e, Event::Unregistered(..)))
        .count()
}

/// Runs until s1 holds at least one admitted flow it has not accepted, and
/// returns the client flows that went to it.
fn queue_flows_on(net: &mut Network, client: HostId, s1: HostId, l1: ListenerId) -> Vec<FlowId> {
    let mut flows = Vec::new();
    for _ in 0..20 {
        flows.push(net.host(client).connect(svc("5e01"), Stream).unwrap());
    }
    assert!(net.run_until(secs(5), |net| net
        .host(s1)
        .listener_pending(l1)
        .is_some_and(|n| n >= 2)));
    flows
}

#[test]
fn a_drained_listener_keeps_what_it_admitted_and_new_connections_go_elsewhere() {
    let (mut net, client, router, [s1, s2], [l1, l2]) = replicated();
    // An established flow on s1 that will carry data across the drain.
    let (cflow, sflow) = establish(&mut net, client, s1, l1, svc("5e01"));
    let first = queue_flows_on(&mut net, client, s1, l1);

    net.host(s1).drain_listener(l1).unwrap();
    assert!(net.host(s1).is_draining(l1));
    assert_eq!(net.host(s1).bound_listener(&prefix(SERVICE)), None);
    assert_eq!(net.host(s2).bound_listener(&prefix(SERVICE)), Some(l2));
    net.settle();
    assert_eq!(
        unregistered(&mut net, s1),
        1,
        "the service is withdrawn at once"
    );
    // Draining again changes nothing.
    net.host(s1).drain_listener(l1).unwrap();
    net.settle();
    assert_eq!(unregistered(&mut net, s1), 1);

    // The router has not heard of the drain yet: new connections it sends
    // to s1 are dropped there without a reset ...
    let late: Vec<FlowId> = (0..20)
        .map(|_| net.host(client).connect(svc("5e02"), Stream).unwrap())
        .collect();
    net.run_for(Duration::from_millis(100));
    assert!(
        net.host(s1).stats().drained_syns > 0,
        "some SYNs went to s1"
    );
    assert_eq!(net.host(s1).stats().refused, 0);
    // ... until the withdrawal reaches it (servd removes the route), and
    // their retransmitted SYNs reach s2.
    let gone = TargetKey::Forward {
        locator: loc("10.0.0.11"),
    };
    net.host(router)
        .remove_rule_target(&prefix(SERVICE), &gone)
        .unwrap();

    // Every client connects; s1 hands over exactly what it had admitted.
    let mut on_s1 = Vec::new();
    let mut on_s2 = Vec::new();
    let all: Vec<FlowId> = first.iter().chain(&late).copied().collect();
    let ok = net.run_until(secs(30), |net| {
        while let Ok(f) = net.host(s1).accept(l1) {
            on_s1.push(f);
        }
        while let Ok(f) = net.host(s2).accept(l2) {
            on_s2.push(f);
        }
        let events = &net.sim_host(client).events;
        all.iter().all(|f| events.contains(&Event::Connected(*f)))
            && on_s1.len() + on_s2.len() == all.len()
    });
    let failed: Vec<&Event> = net
        .sim_host(client)
        .events
        .iter()
        .filter(|e| matches!(e, Event::ConnectFailed(..)))
        .collect();
    assert!(ok && failed.is_empty(), "connections failed: {failed:?}");
    assert_eq!(on_s1.len() + on_s2.len(), all.len());
    assert!(
        !on_s1.is_empty(),
        "flows admitted before the drain were accepted on s1"
    );
    let late_on_s1 = net
        .host(s1)
        .flows()
        .iter()
        .filter(|f| f.service == svc("5e02"))
        .count();
    assert_eq!(
        late_on_s1, 0,
        "no connection made after the drain reached s1"
    );
    assert_eq!(net.host(s1).listener_pending(l1), Some(0));

    // The flow established before the drain still carries data both ways.
    let data = pattern(200_000, 5);
    let got = stream(
        &mut net,
        (client, cflow),
        (s1, sflow),
        &data,
        secs(30),
        |_, _| {},
    );
    assert_eq!(got, data);

    // Idle, the drained listener closes without resetting anyone and
    // without a second `Unregistered` (s2 still serves).
    net.host(s1).close_listener(l1).unwrap();
    net.settle();
    assert_eq!(unregistered(&mut net, s1), 1);
    assert_eq!(net.host(s1).listener_count(), 0);
    let client_events = &net.sim_host(client).events;
    assert!(
        !client_events
            .iter()
            .any(|e| matches!(e, Event::ConnectFailed(_, ConnectError::Refused))),
        "nobody was refused"
    );
    for f in &on_s1 {
        assert!(
            net.host(s1).flow(*f).is_some(),
            "accepted flow {f} survives the close"
        );
    }
}

fn settled(net: &mut Network, host: HostId, listener: ListenerId) -> usize {
    let said = Event::Settled(listener);
    net.sim_host(host)
        .events
        .iter()
        .filter(|e| **e == said)
        .count()
}

/// A drained listener says when it holds nothing more for the application
/// (`Event::Settled`), so that whoever waits to close it need not keep
/// looking: once, when its last flow is accepted (or taken, to be handed
/// on), and not before; a serving listener never says so.
#[test]
fn a_drained_listener_says_when_its_last_flow_is_accepted() {
    let (mut net, client, _router, [s1, s2], [l1, l2]) = replicated();
    queue_flows_on(&mut net, client, s1, l1);
    net.host(s1).drain_listener(l1).unwrap();
    // Every flow s1 admitted completes its handshake and waits in its
    // queue; the ones the router sent to s2 are accepted there.
    net.run_for(secs(2));
    while net.host(s2).accept(l2).is_ok() {}
    let queued = net.host(s1).listener_pending(l1).unwrap();
    assert!(queued >= 2, "{queued} pending");
    for left in (0..queued).rev() {
        // Taken to be handed on (as sald's `Deliver` does) or accepted,
        // a flow is no longer pending.
        let host = net.host(s1);
        let taken = if left % 2 == 0 {
            host.take(l1)
        } else {
            host.accept(l1)
        };
        taken.unwrap();
        net.settle();
        assert_eq!(net.host(s1).listener_pending(l1), Some(left));
        let expected = usize::from(left == 0);
        assert_eq!(settled(&mut net, s1, l1), expected, "{left} left");
    }
    assert_eq!(settled(&mut net, s2, l2), 0, "s2 serves");
}

#[test]
fn closing_a_drained_listener_leaves_a_new_binding_of_the_prefix_alone() {
    let (mut net, _client, _router, [s1, _], [l1, _]) = replicated();
    net.host(s1).drain_listener(l1).unwrap();
    // A new instance binds the same prefix on the same host while the old
    // one drains.
    let fresh = net.host(s1).listen(prefix(SERVICE), Stream, 8).unwrap();
    assert_eq!(net.host(s1).bound_listener(&prefix(SERVICE)), Some(fresh));
    net.settle();
    net.sim_host(s1).events.clear();
    net.host(s1).close_listener(l1).unwrap();
    net.settle();
    assert_eq!(unregistered(&mut net, s1), 0, "the prefix is still served");
    assert_eq!(net.host(s1).bound_listener(&prefix(SERVICE)), Some(fresh));
    assert!(!net.host(s1).is_draining(fresh));
    // Draining what is not there is an error.
    assert_eq!(
        net.host(s1).drain_listener(l1),
        Err(HostError::NoSuchListener(l1))
    );
    assert_eq!(net.host(s1).listener_pending(l1), None);
}

#[test]
fn without_a_drain_closing_resets_the_queue() {
    // The baseline the drain exists for: closing a listener with flows
    // waiting for accept resets them.
    let (mut net, client, _router, [s1, _], [l1, _]) = replicated();
    let flows = queue_flows_on(&mut net, client, s1, l1);
    net.run_for(Duration::from_millis(200));
    net.host(s1).close_listener(l1).unwrap();
    net.run_for(secs(2));
    let dead = |net: &mut Network, state| {
        flows
            .iter()
            .filter(|f| net.host(client).flow(**f).is_some_and(|i| i.state == state))
            .count()
    };
    let reset = dead(&mut net, FlowState::Dead);
    assert!(reset > 0);
    assert_eq!(net.host(s1).stats().drained_syns, 0);
}

#[test]
fn a_late_server_of_a_retransmitted_syn_is_reset_and_forgets_its_half_open_flow() {
    // s1's answers are slow (700 ms one way, above the 500 ms SYN timeout),
    // and the router learns to send the service to s2 meanwhile: the
    // client's retransmitted SYN gets its flow established with s2, and
    // s1's late SYN-ACK earns a RST instead of silence, so that s1 forgets
    // the half-open flow at once (not after half a minute of SYN-ACKs),
    // which is what lets a drained s1 become idle.
    let (mut net, client, router, [s1, s2], [l1, l2]) = replicated();
    let slow = sal_sim::LinkConditions {
        delay: Duration::from_millis(700),
        ..Default::default()
    };
    net.set_path(
        "10.0.0.11".parse().unwrap(),
        "10.0.0.1".parse().unwrap(),
        slow.path(),
    );
    let s1_target = TargetKey::Forward {
        locator: loc("10.0.0.11"),
    };
    let s2_target = TargetKey::Forward {
        locator: loc("10.0.0.12"),
    };
    net.host(router)
        .remove_rule_target(&prefix(SERVICE), &s2_target)
        .unwrap();
    let flow = net.host(client).connect(svc("5e03"), Stream).unwrap();
    assert!(net.run_until(secs(1), |net| net.host(s1).listener_pending(l1) == Some(1)));
    net.host(s1).drain_listener(l1).unwrap();
    net.host(router)
        .remove_rule_target(&prefix(SERVICE), &s1_target)
        .unwrap();
    let to_s2 = Target::Forward {
        locator: loc("10.0.0.12"),
        weight: 1,
    };
    net.host(router).add_rule(prefix(SERVICE), to_s2, 0);
    let mut accepted = None;
    assert!(net.run_until(secs(5), |net| {
        accepted = accepted.or_else(|| net.host(s2).accept(l2).ok());
        accepted.is_some()
    }));
    assert!(net
        .sim_host(client)
        .events
        .contains(&Event::Connected(flow)));
    let start = net.now();
    assert!(
        net.run_until(secs(30), |net| net.host(s1).listener_pending(l1) == Some(0)),
        "s1 still holds the half-open flow"
    );
    assert!(
        net.now() - start < secs(2),
        "s1 forgot it only after {}",
        net.now() - start
    );
    assert_eq!(
        settled(&mut net, s1, l1),
        1,
        "s1 said its last half-open flow died"
    );
    assert!(net.host(s1).flows().is_empty());
    assert_eq!(
        net.host(client).flow(flow).map(|f| f.state),
        Some(FlowState::Established),
        "the client's flow with s2 is untouched"
    );
}

#[test]
fn a_drained_listener_that_closed_drops_late_syns_for_a_while() {
    // On a loaded network the withdrawal may reach the router after the
    // drained (and idle) listener closed: the SYNs the router still sends
    // to s1 are dropped quietly, as while it drained, and retransmitted to
    // s2 once the router knows; none fails with "no route".
    let (mut net, client, router, [s1, _], [l1, _]) = replicated();
    net.host(s1).drain_listener(l1).unwrap();
    net.host(s1).close_listener(l1).unwrap();
    let connect_all = |net: &mut Network, service| -> Vec<FlowId> {
        (0..20)
            .map(|_| net.host(client).connect(svc(service), Stream).unwrap())
            .collect()
    };
    let late = connect_all(&mut net, "5e03");
    net.run_for(Duration::from_millis(100));
    assert!(
        net.host(s1).stats().drained_syns > 0,
        "some SYNs went to s1"
    );
    assert_eq!(net.host(s1).stats().refused, 0);
    let s1_route = Target::Forward {
        locator: loc("10.0.0.11"),
        weight: 1,
    };
    net.host(router)
        .remove_rule_target(&prefix(SERVICE), &s1_route.key())
        .unwrap();
    let connected = |net: &mut Network, flows: &[FlowId]| {
        let events = &net.sim_host(client).events;
        flows
            .iter()
            .filter(|f| events.contains(&Event::Connected(**f)))
            .count()
    };
    assert!(net.run_until(secs(5), |net| connected(net, &late) == late.len()));
    let failed = |net: &mut Network| {
        net.sim_host(client)
            .events
            .iter()
            .filter(|e| matches!(e, Event::ConnectFailed(_, ConnectError::NoRoute)))
            .count()
    };
    assert_eq!(failed(&mut net), 0);

    // The linger ends: a route to s1 that outlived it (no refresh will
    // renew it) meets the refusal any host that lacks a service gives.
    net.run_for(HostConfig::default().drained_linger);
    net.host(router).add_rule(prefix(SERVICE), s1_route, 0);
    let stale = connect_all(&mut net, "5e04");
    net.run_for(Duration::from_millis(300));
    let refused = failed(&mut net);
    assert!(refused > 0, "s1 refuses again");
    assert_eq!(refused + connected(&mut net, &stale), stale.len());
}
