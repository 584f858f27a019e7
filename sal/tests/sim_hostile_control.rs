//! A hostile peer's RSYNs (it knows its own flow's nonce) with fresh
//! `verno`s from a spoofed victim address. Each RSYN-ACK used to join the
//! flow's control queue (unbounded, each retransmitted five times), and a
//! duplicate RSYN resent the whole queue: 5,001 forged packets made 35,001
//! toward the victim. A flow now keeps one answer in flight, refreshed by
//! each newer RSYN, and a duplicate gets that answer alone.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::{HostConfig, TransmitKind};
use sal::wire::{ControlFlags, ControlRepr, SalPacket, SalRepr, TransportProtocol::Stream};
use sal::{FlowId, Locator};
use sal_sim::{LinkConditions, Network, Packet};
use smoltcp::time::Duration;

mod common;
use common::sim::{client_server, default_route, establish, ClientServer};

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

fn rsyn(cflow: FlowId, sflow: FlowId, nonce: [u8; 8], verno: u32) -> Vec<u8> {
    let mut repr = SalRepr::data(cflow, Some(sflow), 6);
    repr.control = Some(ControlRepr {
        flags: ControlFlags::RSYN,
        verno,
        ackno: 0,
        nonce,
    });
    let mut bytes = vec![0u8; repr.header_len()];
    repr.emit(&mut bytes).unwrap();
    bytes
}

#[test]
fn a_peer_s_rsyns_get_one_answer_each_and_no_queue() {
    let ClientServer {
        mut net,
        client,
        server,
        listener,
    } = client_server(5, LinkConditions::default(), HostConfig::default());
    // The client's own control messages tell it its nonce and next verno
    // (the hostile client knows them anyway: they are its own).
    let captured: Rc<RefCell<Option<ControlRepr>>> = Rc::default();
    {
        let captured = captured.clone();
        net.set_filter(Some(Box::new(move |p: &Packet| {
            if p.src.ip() == Ipv4Addr::new(10, 0, 0, 1) {
                let repr = SalPacket::new_checked(&p.payload[..])
                    .ok()
                    .and_then(|pk| SalRepr::parse(&pk).ok());
                if let Some(c) = repr.and_then(|r| r.control) {
                    if c.flags == ControlFlags::ACK {
                        *captured.borrow_mut() = Some(c);
                    }
                }
            }
            false
        })));
    }
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    net.run_for(Duration::from_millis(100));
    let ack = captured.borrow().expect("the client's handshake ACK");
    let (nonce, first_verno) = (ack.nonce, ack.verno);

    let victim = Ipv4Addr::new(10, 0, 0, 99);
    let toward_victim = Rc::new(Cell::new(0u64));
    {
        let seen = toward_victim.clone();
        net.set_filter(Some(Box::new(move |p: &Packet| {
            if p.dst.ip() == victim {
                seen.set(seen.get() + 1);
            }
            false
        })));
    }
    // The hostile client's own stack says nothing more (it only forges).
    net.link_down(Ipv4Addr::new(10, 0, 0, 1));
    const K: u32 = 5_000;
    let before = net.host(server).stats();
    for i in 0..K {
        net.inject(Packet {
            src: Locator::Ipv4(victim),
            dst: loc("10.0.0.2"),
            ttl: 64,
            kind: TransmitKind::Own,
            payload: rsyn(cflow, sflow, nonce, first_verno.wrapping_add(i)),
        });
    }
    net.run_for(Duration::from_millis(10));
    let after_new = toward_victim.get();
    // One duplicate of the last RSYN: the whole queue goes out again.
    net.inject(Packet {
        src: Locator::Ipv4(victim),
        dst: loc("10.0.0.2"),
        ttl: 64,
        kind: TransmitKind::Own,
        payload: rsyn(cflow, sflow, nonce, first_verno.wrapping_add(K - 1)),
    });
    net.run_for(Duration::from_millis(10));
    let after_dup = toward_victim.get();
    net.run_for(Duration::from_secs(40));
    let total = toward_victim.get();
    let stats = net.host(server).stats();
    eprintln!(
        "{} forged packets in; toward victim: {after_new} after the new RSYNs, +{} after one duplicate, {total} after 40 s; server retransmits {} (was {})",
        K + 1,
        after_dup - after_new,
        stats.retransmits,
        before.retransmits,
    );
    // One answer per RSYN (each newer one refreshes the one in flight),
    // and a path challenge or two for the address they came from ...
    assert!(
        after_new <= u64::from(K) + 2,
        "{after_new} packets for {K} RSYNs"
    );
    // ... one packet for the duplicate ...
    assert_eq!(
        after_dup - after_new,
        1,
        "a duplicate gets the answer alone"
    );
    // ... and one answer's retransmissions after that (5 by default) ...
    let retries = u64::from(HostConfig::default().control_retries);
    assert_eq!(
        net.host(server).flow(sflow).and_then(|f| f.remote),
        Some(loc("10.0.0.1")),
        "the flow did not move to the victim"
    );
    // The victim's address is also challenged again, 5 times at most
    // (`nat.rs`, CHALLENGE_RETRIES), in case an answer was lost.
    let challenge_repeats = 5;
    assert!(
        total <= after_dup + retries + challenge_repeats + 1,
        "{total} packets: one answer in flight, retransmitted {retries} times at most"
    );
    assert!(
        stats.retransmits - before.retransmits <= u64::from(K) + retries + 2,
        "retransmits {} -> {}",
        before.retransmits,
        stats.retransmits
    );
}

/// A SYN-ACK must acknowledge the client's SYN exactly (`ackno` = its
/// `verno` + 1): taken cumulatively, half of all `ackno`s would do, and a
/// blind forger who guessed a connecting flow's ID would take the connect
/// over with even odds.
#[test]
fn a_syn_ack_must_acknowledge_the_syn_exactly() {
    let mut net = Network::new(6, LinkConditions::default());
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    // Nobody answers at 10.0.0.3: the connect waits, as a forger likes.
    default_route(&mut net, client, "10.0.0.3");
    let syn: Rc<RefCell<Option<SalRepr>>> = Rc::default();
    {
        let syn = syn.clone();
        net.set_filter(Some(Box::new(move |p: &Packet| {
            let repr = SalPacket::new_checked(&p.payload[..])
                .ok()
                .and_then(|pk| SalRepr::parse(&pk).ok());
            if let Some(repr) =
                repr.filter(|r| r.control.is_some_and(|c| c.flags == ControlFlags::SYN))
            {
                syn.borrow_mut().get_or_insert(repr);
            }
            false
        })));
    }
    let cflow = net
        .host(client)
        .connect("cd".parse().unwrap(), Stream)
        .unwrap();
    net.run_for(Duration::from_millis(50));
    let syn = syn.borrow().clone().expect("the client's SYN");
    let syn_control = syn.control.unwrap();
    let forged = |ackno: u32| {
        let mut repr = SalRepr::data(FlowId::new(0x0909_0909).unwrap(), syn.src_flow, 6);
        repr.control = Some(ControlRepr {
            flags: ControlFlags::SYN | ControlFlags::ACK,
            verno: 77,
            ackno,
            nonce: [7; 8],
        });
        let mut bytes = vec![0u8; repr.header_len()];
        repr.emit(&mut bytes).unwrap();
        Packet {
            src: loc("10.0.0.66"),
            dst: loc("10.0.0.1"),
            ttl: 64,
            kind: TransmitKind::Own,
            payload: bytes,
        }
    };
    let connected = |net: &mut Network| {
        net.sim_host(client)
            .events
            .contains(&sal::proto::Event::Connected(cflow))
    };
    for ahead in [2u32, 3, 1000, 1 << 30] {
        net.inject(forged(syn_control.verno.wrapping_add(ahead)));
        net.run_for(Duration::from_millis(5));
        assert!(
            !connected(&mut net),
            "a SYN-ACK acknowledging {ahead} ahead was taken"
        );
    }
    // The exact answer is taken (the forger would need to guess it).
    net.inject(forged(syn_control.verno.wrapping_add(1)));
    net.run_for(Duration::from_millis(5));
    assert!(connected(&mut net), "the exact SYN-ACK");
}

/// `validate_peer_moves: false` (sald's `--trust-peer-moves`): an RSYN
/// moves the flow at once, as WIRE.md describes and reference peers (which
/// do not answer path challenges) need; by default it moves nothing until
/// the new address answers one.
#[test]
fn a_trusted_rsyn_moves_the_flow_at_once_an_untrusted_one_waits() {
    for validate in [true, false] {
        let config = HostConfig {
            validate_peer_moves: validate,
            ..HostConfig::default()
        };
        let ClientServer {
            mut net,
            client,
            server,
            listener,
        } = client_server(8, LinkConditions::default(), config);
        let captured: Rc<RefCell<Option<ControlRepr>>> = Rc::default();
        {
            let captured = captured.clone();
            net.set_filter(Some(Box::new(move |p: &Packet| {
                let repr = SalPacket::new_checked(&p.payload[..])
                    .ok()
                    .and_then(|pk| SalRepr::parse(&pk).ok());
                if p.src.ip() == Ipv4Addr::new(10, 0, 0, 1) {
                    if let Some(c) = repr.and_then(|r| r.control) {
                        if c.flags == ControlFlags::ACK {
                            *captured.borrow_mut() = Some(c);
                        }
                    }
                }
                false
            })));
        }
        let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
        let ack = captured.borrow().expect("the client's handshake ACK");
        net.link_down(Ipv4Addr::new(10, 0, 0, 1));
        net.inject(Packet {
            src: loc("10.0.0.77"),
            dst: loc("10.0.0.2"),
            ttl: 64,
            kind: TransmitKind::Own,
            payload: rsyn(cflow, sflow, ack.nonce, ack.verno),
        });
        net.run_for(Duration::from_millis(50));
        let remote = net.host(server).flow(sflow).and_then(|f| f.remote);
        let expected = if validate { "10.0.0.1" } else { "10.0.0.77" };
        assert_eq!(
            remote,
            Some(loc(expected)),
            "validate_peer_moves: {validate}"
        );
    }
}
