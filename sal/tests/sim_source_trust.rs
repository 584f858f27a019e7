//! What naming someone else in SOURCE gains a sender (README, "SOURCE
//! trust"), on the deterministic simulator. A server answers the client
//! SOURCE names, as the design wants (a service router's SYN keeps its
//! client's address there), so anyone may name a victim and draw answers
//! to it: what a forged IP source draws from kernel TCP, and less. Each
//! SYN draws one SYN-ACK at most, never retransmitted on a timer, no
//! larger than the SYN itself (a many-homed server advertises only the
//! addresses that fit: `handshake::fit_answer`), and the half-open flows
//! it made are gone by the half-open timeout.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::{HostConfig, SynCookies, TransmitKind};
use sal::wire::{ControlFlags, ControlRepr, SalPacket, SalRepr, SourceRepr, TransportProtocol};
use sal::{FlowId, Locator};
use sal_sim::{LinkConditions, Network, Packet};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::TcpControl;

mod common;
use common::sim::{prefix, svc, tcp_segment};

const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
const ATTACKER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// A SYN of flow `n` for `ab01` as service routers would relay it from
/// [`VICTIM`] (SOURCE `[VICTIM, ATTACKER]`, then `hops` more router
/// addresses), sent by [`ATTACKER`]: with no hops, the smallest valid
/// opening there is (a TCP SYN without options).
fn syn_naming_the_victim(n: u32, hops: u8) -> Vec<u8> {
    let mut repr = SalRepr::data(FlowId::new(n).unwrap(), None, 6);
    repr.control = Some(ControlRepr {
        flags: ControlFlags::SYN,
        verno: n,
        ackno: 0,
        nonce: [n as u8; 8],
    });
    repr.service = Some(svc("ab01"));
    let routers = (1..=hops).map(|i| Ipv4Addr::new(10, 9, 0, i));
    repr.source = Some(SourceRepr {
        addrs: [VICTIM, ATTACKER].into_iter().chain(routers).collect(),
        client_port: 0,
    });
    let segment = tcp_segment(TcpControl::Syn, n, None, &[], (ATTACKER, SERVER));
    let mut packet = vec![0; repr.header_len()];
    repr.emit(&mut packet).unwrap();
    packet.extend_from_slice(&segment);
    packet
}

#[test]
fn a_syn_naming_a_victim_in_source_draws_one_answer_no_larger_than_itself() {
    let answers = syns_naming_a_victim(HostConfig::default(), 0);
    assert_eq!(answers, 32, "a repeated SYN is answered again");
}

/// As above, with SYN cookies (nothing kept; the answer is built apart).
#[test]
fn a_syn_cookie_for_a_victim_named_in_source_is_no_larger_than_the_syn() {
    let cookies = HostConfig {
        syn_cookies: SynCookies::Always,
        ..HostConfig::default()
    };
    assert_eq!(syns_naming_a_victim(cookies, 0), 32);
}

/// A long SYN naming the victim opens each flow (its SYN-ACK is fitted to
/// it), then short repeats: the kept SYN-ACK would be larger than they
/// are, so they draw nothing.
#[test]
fn a_shorter_repeat_of_a_syn_naming_a_victim_draws_nothing() {
    let answers = syns_naming_a_victim(HostConfig::default(), 12);
    assert_eq!(answers, 8, "only the long SYNs are answered");
}

/// A server on `config` with eight addresses takes 32 SYNs that name a
/// victim in SOURCE: 8 flows, each opened by a SYN with `first_hops`
/// router addresses in SOURCE, then repeated three times with none.
/// Checks what the victim gets, and returns how many answers it got.
fn syns_naming_a_victim(config: HostConfig, first_hops: u8) -> usize {
    let mut net = Network::new(
        31,
        LinkConditions {
            delay: Duration::from_millis(10),
            ..Default::default()
        },
    );
    // Eight addresses: a SYN-ACK would advertise the other seven
    // (ADDRESS, 4 bytes each), which makes it larger than the smallest SYN.
    let names: Vec<(String, String)> = (0..8)
        .map(|i| {
            (
                format!("eth{i}"),
                format!("10.{}.0.2/24", [0, 2, 3, 4, 5, 6, 7, 8][i]),
            )
        })
        .collect();
    let interfaces: Vec<(&str, &str)> = (names.iter())
        .map(|(name, cidr)| (name.as_str(), cidr.as_str()))
        .collect();
    let server = net.add_host("server", config, &interfaces);
    net.host(server)
        .listen(prefix("ab/8"), TransportProtocol::Stream, 64)
        .unwrap();
    let to_victim = Rc::new(RefCell::new(Vec::<(Instant, Vec<u8>)>::new()));
    let seen = to_victim.clone();
    let clock = Rc::new(RefCell::new(Instant::from_millis(0)));
    let now = clock.clone();
    net.set_filter(Some(Box::new(move |p: &Packet| {
        if p.dst.ip() == VICTIM {
            seen.borrow_mut().push((*now.borrow(), p.payload.clone()));
        }
        false
    })));
    let run_until = |net: &mut Network, until: Instant| {
        while net.now() < until {
            *clock.borrow_mut() = net.now();
            if !net.step(until) {
                break;
            }
        }
    };
    // When each SYN went, and its length, 250 ms apart.
    let mut sent = Vec::<(Instant, usize)>::new();
    for round in 0..4 {
        for n in 1..=8u32 {
            let syn = syn_naming_the_victim(n, if round == 0 { first_hops } else { 0 });
            sent.push((net.now(), syn.len()));
            net.inject(Packet {
                src: Locator::Ipv4(ATTACKER),
                dst: Locator::Ipv4(SERVER),
                ttl: 64,
                kind: TransmitKind::Own,
                payload: syn,
            });
            let until = net.now() + Duration::from_millis(250);
            run_until(&mut net, until);
        }
    }
    // Well past the half-open timeout.
    let end = net.now() + HostConfig::default().half_open_timeout * 3;
    run_until(&mut net, end);
    let answers = to_victim.borrow();
    let syn_bytes: usize = sent.iter().map(|(_, len)| len).sum();
    let answer_bytes: usize = answers.iter().map(|(_, p)| p.len()).sum();
    eprintln!(
        "{} SYNs ({syn_bytes} bytes) drew {} packets ({answer_bytes} bytes) to the victim",
        sent.len(),
        answers.len()
    );
    assert!(
        !answers.is_empty(),
        "the server answers the client SOURCE names"
    );
    assert!(answers.len() <= sent.len());
    assert!(
        answer_bytes <= syn_bytes,
        "{answer_bytes} bytes for {syn_bytes}"
    );
    let last = sent.last().unwrap().0;
    for (at, payload) in answers.iter() {
        // The SYN that drew it: the last one before it (none is resent
        // on a timer, so each answer follows its SYN by a link's delay).
        assert!(
            *at <= last + Duration::from_millis(100),
            "an answer at {at}, the last SYN at {last}"
        );
        let (_, syn_len) = (sent.iter()).rev().find(|(t, _)| t <= at).unwrap();
        assert!(
            payload.len() <= *syn_len,
            "an answer of {} bytes to a SYN of {syn_len}",
            payload.len()
        );
        let packet = SalPacket::new_checked(&payload[..]).unwrap();
        let repr = SalRepr::parse(&packet).unwrap();
        let flags = repr.control.map(|c| c.flags);
        assert_eq!(flags, Some(ControlFlags::SYN | ControlFlags::ACK));
        // What fits of the advertisement stays.
        let advertised = repr.address.map_or(0, |a| a.addrs.len());
        assert!(
            (1..=7).contains(&advertised),
            "{advertised} addresses advertised"
        );
    }
    assert_eq!(net.host(server).flow_count(), 0, "half-open flows left");
    answers.len()
}
