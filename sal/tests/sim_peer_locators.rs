//! Locators a peer advertises (ADDRESS extension), on the deterministic
//! simulator: a flow whose path went silent, on a host with nowhere else to
//! go, moves to one only once it answered a path challenge from there.
//!
//! - a multi-homed peer whose first locator stops receiving: the flow
//!   challenges the peer's advertised second locator, the peer answers from
//!   there, and the flow moves there and finishes, byte for byte; until the
//!   answer, that locator got nothing but challenges;
//! - a hostile peer that advertises a victim's address, then falls silent:
//!   the victim gets small path challenges, one per liveness verdict, and
//!   nothing of the flow; the flow never moves there;
//! - a multi-homed peer that moves while its old path is slower: its late
//!   packets from the locator it left draw no challenge (the answer, from
//!   there, would not be followed, and would spend the one the move drew),
//!   and the flow does not go back.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::{Event, HostConfig, TransmitKind};
use sal::wire::{
    AddressRepr, ControlFlags, ControlRepr, SalPacket, SalRepr, TransportProtocol::Stream,
    BASE_HEADER_LEN, CONTROL_LEN,
};
use sal::Locator;
use sal_sim::{LinkConditions, Network, Packet};
use smoltcp::time::Duration;

mod common;
use common::sim::{default_route, establish, pattern, stream};

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The server's first locator, where the flow starts.
const FIRST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The multi-homed server's second locator, which it advertises.
const SECOND: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);
/// An address no host has: what a hostile server advertises.
const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

/// A liveness timeout short enough for several verdicts per test.
fn config() -> HostConfig {
    HostConfig {
        liveness_timeout: ms(500),
        ..HostConfig::default()
    }
}

/// The CONTROL extension of a SAL packet, if any.
fn control_of(payload: &[u8]) -> Option<ControlRepr> {
    let packet = SalPacket::new_checked(payload).ok()?;
    SalRepr::parse(&packet).ok()?.control
}

/// Whether a SAL packet is a path challenge and nothing else: a bare
/// header with CONTROL(RSYN|NACK), no extension, no segment.
fn is_bare_challenge(payload: &[u8]) -> bool {
    control_of(payload).is_some_and(|c| c.flags == ControlFlags::RSYN | ControlFlags::NACK)
        && payload.len() == BASE_HEADER_LEN + CONTROL_LEN
}

/// Whether a SAL packet answers a path challenge.
fn is_answer(payload: &[u8]) -> bool {
    control_of(payload)
        .is_some_and(|c| c.flags == ControlFlags::RSYN | ControlFlags::NACK | ControlFlags::ACK)
}

/// What the wire showed around the server's second locator, in the order
/// it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A path challenge went to it.
    Challenge,
    /// Anything else went to it.
    Other,
    /// The server answered a challenge from it.
    Answer,
}

/// A single-homed client uploads 2 MiB to a dual-homed server (10.0.0.2,
/// and 10.2.0.2, which it advertises). Once 500 kB arrived, the server's
/// first locator stops receiving from the client (its other directions
/// still work). The client, with one interface, challenges the second
/// locator; the server answers from there (the address the challenge
/// reached), and only then does the flow move there and resend its flight.
/// Before, the flow moved there at once, on the server's word alone.
#[test]
fn a_flow_follows_a_multi_homed_peer_to_its_advertised_locator_once_it_answers() {
    let mut net = Network::new(23, LinkConditions::default());
    let client = net.add_host("client", config(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host(
        "server",
        config(),
        &[("eth0", "10.0.0.2/24"), ("eth1", "10.2.0.2/24")],
    );
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let seen = Rc::new(RefCell::new(Vec::<Seen>::new()));
    let cut = Rc::new(Cell::new(false));
    {
        let (seen, cut) = (seen.clone(), cut.clone());
        net.set_filter(Some(Box::new(move |p: &Packet| {
            let (src, dst) = (p.src.ip(), p.dst.ip());
            if dst == SECOND {
                seen.borrow_mut().push(match is_bare_challenge(&p.payload) {
                    true => Seen::Challenge,
                    false => Seen::Other,
                });
            }
            if src == SECOND && is_answer(&p.payload) {
                seen.borrow_mut().push(Seen::Answer);
            }
            cut.get() && src == CLIENT && dst == FIRST
        })));
    }
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let data = pattern(2 << 20, 17);
    let start = net.now();
    let received = stream(
        &mut net,
        (client, cflow),
        (server, sflow),
        &data,
        secs(60),
        |_, received| {
            if received > 500_000 {
                cut.set(true);
            }
        },
    );
    assert!(received == data, "bytes differ");
    assert!(cut.get(), "the transfer outlived the cut");
    assert!(net.now() - start < secs(20), "took {}", net.now() - start);

    // Until the server answered from its second locator, that locator got
    // path challenges and nothing else; then the flow's data.
    let seen = seen.borrow();
    let answered = (seen.iter().position(|s| *s == Seen::Answer))
        .expect("the server answered from its second locator");
    assert!(answered > 0, "a challenge came first");
    assert!(
        seen[..answered].iter().all(|s| *s == Seen::Challenge),
        "only challenges before the answer: {:?}",
        &seen[..answered]
    );
    assert!(seen[answered..].contains(&Seen::Other), "then the data");

    let info = net.host(client).flow(cflow).unwrap();
    assert_eq!(info.remote, Some(Locator::Ipv4(SECOND)), "moved there");
    assert_eq!(info.peer_moves, 1, "once, and never back");
    let stats = net.host(client).stats();
    assert!(stats.path_challenges >= 1);
    assert_eq!(stats.rebindings, 0, "a move to an advertised locator");
    assert!(stats.replayed >= 1, "the flight was resent once proven");
    assert!(net
        .take_events(client)
        .contains(&Event::PeerMoved(cflow, Locator::Ipv4(SECOND))));
}

/// A client uploads to a hostile server, which advertises an address it
/// does not own (no host has it), then falls silent. The client has
/// nowhere else to go, so each liveness verdict challenges that address;
/// nobody answers, so the flow stays where it was until its peer timeout
/// resets it, and the address got only those challenges. Before, each
/// other verdict moved the flow there and sent it the transport's
/// retransmissions.
#[test]
fn a_peer_that_advertises_a_victims_address_and_falls_silent_reflects_only_challenges() {
    let mut net = Network::new(29, LinkConditions::default());
    let client = net.add_host("client", config(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", config(), &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let to_victim = Rc::new(RefCell::new(Vec::<Vec<u8>>::new()));
    let syn_ack = Rc::new(Cell::new(None::<ControlRepr>));
    let silent = Rc::new(Cell::new(false));
    {
        let (to_victim, syn_ack, silent) = (to_victim.clone(), syn_ack.clone(), silent.clone());
        net.set_filter(Some(Box::new(move |p: &Packet| {
            if p.dst.ip() == VICTIM {
                to_victim.borrow_mut().push(p.payload.clone());
            }
            let control = control_of(&p.payload);
            if p.src.ip() == FIRST
                && control.is_some_and(|c| c.flags == ControlFlags::SYN | ControlFlags::ACK)
            {
                syn_ack.set(control);
            }
            silent.get() && p.src.ip() == FIRST
        })));
    }
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());

    // The server's word, with its own nonce: "I am also at the victim's".
    let syn_ack = syn_ack.get().expect("the server's SYN-ACK");
    let mut repr = SalRepr::data(sflow, Some(cflow), Stream.number());
    repr.control = Some(ControlRepr {
        flags: ControlFlags::ACK,
        ..syn_ack
    });
    let mut address = AddressRepr::default();
    address.addrs.push(VICTIM);
    repr.address = Some(address);
    let mut payload = vec![0u8; repr.header_len()];
    repr.emit(&mut payload).unwrap();
    net.inject(Packet {
        src: Locator::Ipv4(FIRST),
        dst: Locator::Ipv4(CLIENT),
        ttl: 64,
        kind: TransmitKind::Own,
        payload,
    });
    net.run_for(ms(50));

    // Then silence, while the client has data in flight.
    silent.set(true);
    let data = pattern(200_000, 19);
    let sent = net.host(client).send(cflow, &data).unwrap();
    assert!(sent > 0);
    let quiet = net.now();
    let mut moved = None;
    net.run_until(secs(40), |net| {
        let remote = net.host(client).flow(cflow).and_then(|f| f.remote);
        if remote.is_some_and(|r| r != Locator::Ipv4(FIRST)) {
            moved = moved.or(remote);
        }
        false
    });
    let elapsed = net.now() - quiet;

    let to_victim = to_victim.borrow();
    let verdicts = elapsed.total_millis() / config().liveness_timeout.total_millis();
    eprintln!(
        "{} packets to the victim in {elapsed}: {} bytes",
        to_victim.len(),
        to_victim.iter().map(Vec::len).sum::<usize>()
    );
    assert!(
        !to_victim.is_empty(),
        "the advertised address was challenged"
    );
    assert!(
        to_victim.len() as u64 <= verdicts + 1,
        "one challenge per liveness verdict at most: {} in {elapsed}",
        to_victim.len()
    );
    for payload in to_victim.iter() {
        assert!(
            is_bare_challenge(payload),
            "only bare path challenges, no segment: {} bytes, {:?}",
            payload.len(),
            control_of(payload)
        );
    }
    assert_eq!(moved, None, "the flow stayed where the server was");
    assert!(!net
        .take_events(client)
        .iter()
        .any(|e| matches!(e, Event::PeerMoved(..))));
    let stats = net.host(client).stats();
    assert_eq!(stats.rebindings, 0);
    assert_eq!(stats.peer_timeouts, 1, "given up on after the peer timeout");
}

/// A dual-homed client (wlan 10.0.0.1, cell 10.1.0.1) uploads 8 MiB to a
/// single-homed server and moves six times between its interfaces; wlan is
/// 40 ms one way, cell 5 ms, so after each move off wlan its last packets
/// there arrive after the move. They draw no path challenge: the client
/// (still there, and advertising it) would answer from there, as it
/// answers every challenge from the address it reached, and the server,
/// which did not seek wlan, would not follow that answer back to it, but
/// the answer would spend the challenge the client's RSYN drew. (Answers
/// from the locator the client left once undid its moves.)
#[test]
fn late_packets_from_a_locator_the_peer_left_do_not_take_the_flow_back() {
    let mut net = Network::new(21, LinkConditions::default());
    let client = net.add_host(
        "client",
        HostConfig::default(),
        &[("wlan", "10.0.0.1/24"), ("cell", "10.1.0.1/24")],
    );
    let server = net.add_host("server", HostConfig::default(), &[("eth0", "10.0.0.2/24")]);
    let slow = LinkConditions {
        delay: ms(40),
        ..LinkConditions::default()
    };
    net.set_path(CLIENT, FIRST, slow.path());
    net.set_path(FIRST, CLIENT, slow.path());
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    // Challenges the server sends anywhere but where the client's latest
    // RSYN came from: drawn by late packets from a locator it left.
    let astray = Rc::new(Cell::new(0u32));
    {
        let (astray, moving_to) = (astray.clone(), Cell::new(None::<Ipv4Addr>));
        net.set_filter(Some(Box::new(move |p: &Packet| {
            let control = control_of(&p.payload);
            if p.dst.ip() == FIRST && control.is_some_and(|c| c.flags == ControlFlags::RSYN) {
                moving_to.set(Some(p.src.ip()));
            }
            if p.src.ip() == FIRST
                && is_bare_challenge(&p.payload)
                && moving_to.get() != Some(p.dst.ip())
            {
                astray.set(astray.get() + 1);
            }
            false
        })));
    }
    let data = pattern(8 << 20, 1);
    let (mut moves, mut next) = (0, 1 << 20);
    let received = stream(
        &mut net,
        (client, cflow),
        (server, sflow),
        &data,
        secs(120),
        |net, received| {
            if received > next && moves < 6 {
                let to = ["cell", "wlan"][moves % 2];
                net.host(client).migrate(cflow, to).unwrap();
                moves += 1;
                next += 1 << 20;
            }
        },
    );
    assert!(received == data, "bytes differ");
    let migrations = net.host(client).flow(cflow).unwrap().migrations;
    assert_eq!(migrations, 6);
    assert_eq!(
        astray.get(),
        0,
        "late packets from a locator the client left drew challenges: their \
         answers would not be followed, and would spend the RSYN's challenge"
    );
    assert_eq!(
        net.host(server).flow(sflow).unwrap().peer_moves,
        migrations,
        "the server followed each move once, and never back"
    );
    assert_eq!(net.host(server).stats().rebindings, 0);
}
