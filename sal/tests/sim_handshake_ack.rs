//! A client that holds the ACK of its handshake for its application's first
//! write (`stream.hold_handshake_ack`): the ACK and the first bytes cross in
//! one packet, so the server's accept finds the request already there; with
//! no write, the ACK goes at the delayed-ACK timer, or at once when the
//! caller releases it (its application is about to wait for the server).

use std::cell::RefCell;
use std::rc::Rc;

use sal::proto::{Event, HostConfig};
use sal::wire::TransportProtocol::Stream;
use sal::wire::{ControlFlags, SalPacket, SalRepr};
use sal::FlowId;
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::time::{Duration, Instant};

mod common;
use common::sim::{default_route, pattern, prefix, svc};

/// What the client sent, packet by packet: whether the packet
/// acknowledged a control message, whether it named the service, and the
/// bytes after the SAL header.
#[derive(Debug, Clone, Copy)]
struct Sent {
    ack: bool,
    service: bool,
    segment: usize,
}

struct Pair {
    net: Network,
    client: HostId,
    server: HostId,
    sent: Rc<RefCell<Vec<Sent>>>,
}

fn pair(hold: bool) -> Pair {
    let mut config = HostConfig::default();
    config.stream.hold_handshake_ack = hold;
    let mut net = Network::new(11, LinkConditions::default());
    let client = net.add_host("client", config.clone(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", config, &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let sent = Rc::new(RefCell::new(Vec::new()));
    let log = Rc::clone(&sent);
    net.set_filter(Some(Box::new(move |packet| {
        if packet.src.ip().octets() == [10, 0, 0, 1] {
            let packet_bytes = &packet.payload;
            let parsed = SalPacket::new_checked(&packet_bytes[..])
                .ok()
                .and_then(|p| SalRepr::parse(&p).ok().map(|r| (r, p.header_len())));
            if let Some((repr, header)) = parsed {
                log.borrow_mut().push(Sent {
                    ack: repr
                        .control
                        .is_some_and(|c| c.flags.contains(ControlFlags::ACK)),
                    service: repr.service.is_some(),
                    segment: packet_bytes.len() - header,
                });
            }
        }
        false
    })));
    Pair {
        net,
        client,
        server,
        sent,
    }
}

/// Connects and runs until the client's flow is established (the SYN-ACK
/// is in); returns the flow and the server's listener.
fn connected(pair: &mut Pair) -> (FlowId, sal::table::ListenerId) {
    let (client, server) = (pair.client, pair.server);
    let listener = pair
        .net
        .host(server)
        .listen(prefix("beef/16"), Stream, 16)
        .unwrap();
    pair.net.settle();
    let flow = pair
        .net
        .host(client)
        .connect(svc("beef01"), Stream)
        .unwrap();
    let ok = pair.net.run_until(Duration::from_secs(5), |net| {
        net.sim_host(client)
            .events
            .contains(&Event::Connected(flow))
    });
    assert!(ok, "the handshake did not reach the client");
    (flow, listener)
}

/// Runs until the server accepted a flow; returns it and when.
fn accepted(pair: &mut Pair, listener: sal::table::ListenerId) -> (FlowId, Instant) {
    let server = pair.server;
    let mut flow = None;
    let ok = pair.net.run_until(Duration::from_secs(5), |net| {
        flow = flow.or_else(|| net.host(server).accept(listener).ok());
        flow.is_some()
    });
    assert!(ok, "the server accepted nothing");
    (flow.unwrap(), pair.net.now())
}

#[test]
fn the_first_write_rides_with_a_held_handshake_ack() {
    let mut pair = pair(true);
    let (flow, listener) = connected(&mut pair);
    let request = pattern(64, 1);
    assert_eq!(pair.net.host(pair.client).send(flow, &request), Ok(64));
    let (accepted, _) = accepted(&mut pair, listener);
    // The request is there at accept: no wait for another packet.
    let mut buf = [0u8; 128];
    assert_eq!(pair.net.host(pair.server).recv(accepted, &mut buf), Ok(64));
    assert_eq!(&buf[..64], &request[..]);
    let sent = pair.sent.borrow().clone();
    assert_eq!(sent.len(), 2, "SYN, then ACK and data: {sent:?}");
    let third = sent[1];
    assert!(third.ack && third.service, "the handshake's ACK: {third:?}");
    // 20 bytes of TCP header and the 64 bytes.
    assert_eq!(third.segment, 20 + 64, "{third:?}");
}

#[test]
fn without_the_hold_the_first_write_is_a_packet_of_its_own() {
    let mut pair = pair(false);
    let (flow, listener) = connected(&mut pair);
    assert_eq!(
        pair.net.host(pair.client).send(flow, &pattern(64, 1)),
        Ok(64)
    );
    accepted(&mut pair, listener);
    pair.net.run_for(Duration::from_millis(50));
    let sent = pair.sent.borrow().clone();
    assert!(sent.len() >= 3, "SYN, ACK, data: {sent:?}");
    assert!(sent[1].ack && sent[1].service && sent[1].segment == 20);
    assert_eq!(sent[2].segment, 20 + 64, "{sent:?}");
}

/// How long after the client's flow is established the server accepts it,
/// with no write: the handshake ACK's one-way trip, and its hold if any.
fn accept_lag(hold: bool, release: bool) -> (Duration, Vec<Sent>) {
    let mut pair = pair(hold);
    let (_, listener) = connected(&mut pair);
    let established = pair.net.now();
    if release {
        pair.net.host(pair.client).release_held_acks();
    }
    let (_, at) = accepted(&mut pair, listener);
    let sent = pair.sent.borrow().clone();
    (at - established, sent)
}

#[test]
fn a_held_handshake_ack_goes_alone_at_the_delayed_ack_timer() {
    let (trip, _) = accept_lag(false, false);
    let (held, sent) = accept_lag(true, false);
    let ack_delay = HostConfig::default().stream.ack_delay.unwrap();
    assert_eq!(held, trip + ack_delay, "one way {trip:?}");
    assert!(
        sent[1].ack && sent[1].service && sent[1].segment == 20,
        "{sent:?}"
    );
}

#[test]
fn a_released_handshake_ack_goes_at_once() {
    let (trip, _) = accept_lag(false, false);
    let (released, _) = accept_lag(true, true);
    assert_eq!(released, trip);
}

#[test]
fn a_large_first_write_under_the_handshake_header_fits_the_mtu_and_arrives_whole() {
    let mut pair = pair(true);
    let (flow, listener) = connected(&mut pair);
    let data = pattern(200_000, 7);
    let (client, server) = (pair.client, pair.server);
    let sent = pair.net.host(client).send(flow, &data).unwrap();
    let (accepted, _) = accepted(&mut pair, listener);
    let mut received = Vec::new();
    let mut offset = sent;
    let ok = pair.net.run_until(Duration::from_secs(30), |net| {
        if offset < data.len() {
            offset += net.host(client).send(flow, &data[offset..]).unwrap_or(0);
        }
        let mut buf = [0u8; 65536];
        while let Ok(n) = net.host(server).recv(accepted, &mut buf) {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        received.len() == data.len()
    });
    assert!(ok, "{} of {} bytes arrived", received.len(), data.len());
    assert!(received == data, "the bytes differ");
    assert_eq!(
        pair.net.host(client).stats().too_big,
        0,
        "a packet was too big"
    );
    let first = pair.sent.borrow()[1];
    assert!(
        first.ack && first.service && first.segment > 1000,
        "{first:?}"
    );
}
