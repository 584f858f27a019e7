//! Attacks on where a flow goes and on what tells it that its path works,
//! on the deterministic simulator, and the legitimate moves they imitate:
//!
//! - a flow's peer, or anyone who captured one of its control messages,
//!   sends it from a victim's address (replayed, or freshly numbered):
//!   the flow does not go there, and the victim gets no more than it was
//!   sent in its name (only path challenges);
//! - an off-path host that knows a flow's IDs sends it bare headers,
//!   control messages with a made-up nonce and TCP segments with made-up
//!   sequence numbers while its path is dead: none of them counts as the
//!   peer speaking, so the flow still leaves the dead path and finishes;
//! - a NAT that rebinds mid-download is still followed, once the new
//!   address answered a challenge, and nothing but challenges goes there
//!   before; a replayed answer moves nothing;
//! - a receiver that stops reading (a zero window) is not taken for a dead
//!   path: the peer's answers to window probes are evidence enough.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::{Event, HostConfig, HostError, TransmitKind};
use sal::table::Target;
use sal::wire::{
    fill_transport_checksum, ControlFlags, ControlRepr, SalPacket, SalRepr, TransportProtocol,
    TransportProtocol::Stream,
};
use sal::{FlowId, Locator, ServicePrefix};
use sal_sim::{HostId, LinkConditions, Nat, Network, Packet};
use smoltcp::time::{Duration, Instant};

mod common;
use common::sim::{client_server, default_route, establish, pattern, stream, ClientServer};

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The CONTROL extension of a SAL packet, if any.
fn control_of(payload: &[u8]) -> Option<ControlRepr> {
    let packet = SalPacket::new_checked(payload).ok()?;
    SalRepr::parse(&packet).ok()?.control
}

/// A SAL packet from flow `src_flow` to flow `dst_flow` with `control`
/// (if any) and `segment` after the header.
fn sal_packet(
    src_flow: FlowId,
    dst_flow: FlowId,
    control: Option<ControlRepr>,
    segment: &[u8],
) -> Vec<u8> {
    let mut repr = SalRepr::data(src_flow, Some(dst_flow), 6);
    repr.control = control;
    let mut bytes = vec![0u8; repr.header_len()];
    repr.emit(&mut bytes).unwrap();
    bytes.extend_from_slice(segment);
    bytes
}

fn injected(src: Locator, dst: Locator, payload: Vec<u8>) -> Packet {
    Packet {
        src,
        dst,
        ttl: 64,
        kind: TransmitKind::Own,
        payload,
    }
}

/// A TCP segment (ports 0, ACK set) with made-up sequence and
/// acknowledgement numbers and `data`, checksummed for `src` -> `dst`.
fn forged_tcp(src: Ipv4Addr, dst: Ipv4Addr, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
    let mut segment = vec![0u8; 20];
    segment[4..8].copy_from_slice(&seq.to_be_bytes());
    segment[8..12].copy_from_slice(&ack.to_be_bytes());
    segment[12] = 5 << 4;
    segment[13] = 0x10;
    segment[14..16].copy_from_slice(&4096u16.to_be_bytes());
    segment.extend_from_slice(data);
    fill_transport_checksum(TransportProtocol::Stream, src, dst, &mut segment).unwrap();
    segment
}

// ---------------------------------------------------------------------
// Reflection toward a victim

const VICTIM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// A client and a server 20 ms apart with one established stream flow,
/// watched as an attacker and its victim would see them: the client's
/// handshake ACK (the control message a client that attacks knows, or an
/// observer on its path saw) and every packet that goes to [`VICTIM`].
struct VictimWatch {
    net: Network,
    client: HostId,
    server: HostId,
    cflow: FlowId,
    sflow: FlowId,
    ack: ControlRepr,
    to_victim: Rc<RefCell<Vec<Vec<u8>>>>,
}

impl VictimWatch {
    fn new(seed: u64) -> VictimWatch {
        let conditions = LinkConditions {
            delay: ms(20),
            ..Default::default()
        };
        let ClientServer {
            mut net,
            client,
            server,
            listener,
        } = client_server(seed, conditions, HostConfig::default());
        let captured: Rc<RefCell<Option<ControlRepr>>> = Rc::default();
        let to_victim = Rc::new(RefCell::new(Vec::<Vec<u8>>::new()));
        let (seen, sent) = (captured.clone(), to_victim.clone());
        net.set_filter(Some(Box::new(move |p: &Packet| {
            if p.dst.ip() == VICTIM {
                sent.borrow_mut().push(p.payload.clone());
            }
            if p.src.ip() == CLIENT {
                if let Some(c) = control_of(&p.payload).filter(|c| c.flags == ControlFlags::ACK) {
                    *seen.borrow_mut() = Some(c);
                }
            }
            false
        })));
        let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
        let ack = captured.borrow().expect("the client's handshake ACK");
        VictimWatch {
            net,
            client,
            server,
            cflow,
            sflow,
            ack,
            to_victim,
        }
    }

    /// Bytes sent to the victim, and how many of them were the flow's data.
    fn to_victim(&self) -> (u64, usize) {
        let packets = self.to_victim.borrow();
        let bytes = packets.iter().map(|p| p.len() as u64).sum();
        let data = (packets.iter())
            .filter_map(|p| {
                SalPacket::new_checked(&p[..])
                    .ok()
                    .map(|s| s.payload().len())
            })
            .sum();
        (bytes, data)
    }
}

/// A client's own RSYNs (it knows its nonce and numbers them afresh) from
/// a victim's address during a download: the flow answers each at the
/// victim's address, as a peer that moved must be answered, and challenges
/// the address, but sends it none of the download until the victim answers
/// the challenge, which it cannot. Before, each RSYN moved the flow there
/// and resent its whole flight.
#[test]
fn rsyns_from_a_victims_address_move_nothing_until_it_answers() {
    let mut w = VictimWatch::new(7);
    let (server, client, cflow, sflow, ack) = (w.server, w.client, w.cflow, w.sflow, w.ack);
    let data = pattern(64 << 20, 5);
    let from_victim = Rc::new(Cell::new(0u64));
    let (mut sent, mut next) = (0u32, None::<Instant>);
    let from = from_victim.clone();
    let received = stream(
        &mut w.net,
        (server, sflow),
        (client, cflow),
        &data,
        secs(60),
        |net, received| {
            let now = net.now();
            if received < 4 << 20 || sent >= 40 || next.is_some_and(|t| now < t) {
                return;
            }
            let rsyn = ControlRepr {
                flags: ControlFlags::RSYN,
                verno: ack.verno.wrapping_add(sent),
                ..ack
            };
            let payload = sal_packet(cflow, sflow, Some(rsyn), &[]);
            from.set(from.get() + payload.len() as u64);
            net.inject(injected(Locator::Ipv4(VICTIM), loc("10.0.0.2"), payload));
            sent += 1;
            next = Some(now + ms(50));
        },
    );
    assert!(received == data, "bytes differ");
    assert_eq!(sent, 40);
    let (to_victim, data_to_victim) = w.to_victim();
    eprintln!(
        "{} bytes of RSYNs from the victim's address, {to_victim} bytes to it ({data_to_victim} of them the flow's data)",
        from_victim.get(),
    );
    assert_eq!(data_to_victim, 0, "none of the download went to the victim");
    assert!(
        to_victim <= 2 * from_victim.get(),
        "{to_victim} bytes reflected for {}",
        from_victim.get()
    );
    assert_eq!(
        w.net.host(server).flow(sflow).unwrap().remote,
        Some(Locator::Ipv4(CLIENT)),
        "the flow stayed where the client is"
    );
}

#[test]
fn control_messages_from_a_victims_address_reflect_no_more_than_they_carry() {
    let mut w = VictimWatch::new(5);
    let (server, client, cflow, sflow, ack) = (w.server, w.client, w.cflow, w.sflow, w.ack);
    // While 64 MB go from the server to the client, once 4 MB arrived:
    // every 200 ms the "client" speaks from the victim's address, then 30
    // ms later from its own (as a client that wants its download sent to
    // the victim would), 20 times: a replay of its handshake ACK, and, as
    // only the client itself could, ACKs numbered afresh.
    let data = pattern(64 << 20, 3);
    let from_victim = Rc::new(Cell::new(0u64));
    let (mut toggles, mut next, mut away) = (0u32, None::<Instant>, false);
    let from = from_victim.clone();
    let received = stream(
        &mut w.net,
        (server, sflow),
        (client, cflow),
        &data,
        secs(60),
        |net, received| {
            let now = net.now();
            if received < 4 << 20 || toggles >= 20 || next.is_some_and(|t| now < t) {
                return;
            }
            let control = match toggles % 2 {
                0 => ack,
                _ => ControlRepr {
                    verno: ack.verno.wrapping_add(toggles),
                    ackno: ack.ackno.wrapping_add(toggles),
                    ..ack
                },
            };
            let payload = sal_packet(cflow, sflow, Some(control), &[]);
            let src = if away {
                next = Some(now + ms(170));
                toggles += 1;
                CLIENT
            } else {
                next = Some(now + ms(30));
                from.set(from.get() + payload.len() as u64);
                VICTIM
            };
            away = !away;
            net.inject(injected(Locator::Ipv4(src), loc("10.0.0.2"), payload));
        },
    );
    assert!(received == data, "bytes differ");
    assert_eq!(toggles, 20);
    let stats = w.net.host(server).stats();
    let (to_victim, _) = w.to_victim();
    eprintln!(
        "{} bytes sent from the victim's address, {to_victim} bytes sent to it; server: {} path challenges, {} rebindings",
        from_victim.get(),
        stats.path_challenges,
        stats.rebindings
    );
    assert!(from_victim.get() > 0);
    // Before the fix: about 2.4 MB of the download went to the victim.
    assert!(
        to_victim <= 2 * from_victim.get(),
        "{to_victim} bytes reflected for {}",
        from_victim.get()
    );
    // What the victim got is path challenges, nothing of the flow's data.
    for payload in w.to_victim.borrow().iter() {
        let control = control_of(payload).expect("CONTROL");
        assert_eq!(control.flags, ControlFlags::RSYN | ControlFlags::NACK);
        assert_eq!(
            SalPacket::new_checked(&payload[..])
                .unwrap()
                .payload()
                .len(),
            0
        );
    }
    assert_eq!(stats.rebindings, 0);
    assert_eq!(
        w.net.host(server).flow(sflow).unwrap().remote,
        Some(Locator::Ipv4(CLIENT)),
        "the flow stayed where the client is"
    );
}

// ---------------------------------------------------------------------
// A dead path kept "alive" by forgeries

/// A dual-homed client (wlan 10.0.0.1, cell 10.1.0.1) and server (eth0
/// 10.0.0.2, eth1 10.2.0.2), liveness timeout 500 ms, one stream flow on
/// wlan <-> eth0.
struct Pair {
    net: Network,
    client: HostId,
    server: HostId,
    cflow: FlowId,
    sflow: FlowId,
}

fn dual_homed_pair() -> Pair {
    let config = HostConfig {
        liveness_timeout: ms(500),
        ..HostConfig::default()
    };
    let mut net = Network::new(21, LinkConditions::default());
    let client = net.add_host(
        "client",
        config.clone(),
        &[("wlan", "10.0.0.1/24"), ("cell", "10.1.0.1/24")],
    );
    let server = net.add_host(
        "server",
        config,
        &[("eth0", "10.0.0.2/24"), ("eth1", "10.2.0.2/24")],
    );
    net.host(client).add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: loc("10.0.0.2"),
            weight: 1,
        },
        0,
    );
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    Pair {
        net,
        client,
        server,
        cflow,
        sflow,
    }
}

/// What an off-path host that knows both flow IDs (and nothing else) sends
/// to `dst` as the flow's peer (`src_flow` -> `dst_flow`) from `src`:
/// a bare base header, an ACK with a made-up nonce, and TCP segments with
/// made-up sequence numbers (one empty, one with data), with right
/// checksums.
fn forgeries(
    src: Locator,
    dst: Locator,
    src_flow: FlowId,
    dst_flow: FlowId,
    n: u32,
) -> Vec<Packet> {
    let bad_nonce = ControlRepr {
        flags: ControlFlags::ACK,
        nonce: [0x66; 8],
        ..ControlRepr::default()
    };
    let guess = n.wrapping_mul(0x9e37_79b9);
    let tcp_ack = forged_tcp(src.ip(), dst.ip(), guess, guess ^ 0x5555_5555, &[]);
    let tcp_data = forged_tcp(src.ip(), dst.ip(), !guess, guess, b"forged");
    [
        sal_packet(src_flow, dst_flow, None, &[]),
        sal_packet(src_flow, dst_flow, Some(bad_nonce), &[]),
        sal_packet(src_flow, dst_flow, None, &tcp_ack),
        sal_packet(src_flow, dst_flow, None, &tcp_data),
    ]
    .into_iter()
    .map(|payload| injected(src, dst, payload))
    .collect()
}

/// Runs a 2 MiB upload; once 500 kB arrived the wlan path (10.0.0.1 <->
/// 10.0.0.2) silently dies. With `attack`, an off-path host sends each end
/// [`forgeries`] every 300 ms, from its own address and from the peer's
/// other one. Returns the bytes the server read (up to the end of the
/// stream, within 60 s) and the client's migrations.
fn upload_over_a_dying_path(attack: bool) -> (Vec<u8>, u32) {
    let mut p = dual_homed_pair();
    let (client, server, cflow, sflow) = (p.client, p.server, p.cflow, p.sflow);
    let data = pattern(2 << 20, 7);
    let (wlan, eth0) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let (mut sent, mut shut, mut cut) = (0, false, false);
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut next_forgery = p.net.now();
    let mut n = 0;
    let end = p.net.now() + secs(60);
    // Steps of 50 ms at most, so that the forgeries go out on time
    // whatever the hosts have to do.
    'run: while p.net.now() < end {
        p.net.run_until(ms(50), |_| false);
        while sent < data.len() {
            let stop = (sent + 65536).min(data.len());
            match p.net.host(client).send(cflow, &data[sent..stop]) {
                Ok(k) => sent += k,
                Err(HostError::WouldBlock) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        if sent == data.len() && !shut {
            p.net.host(client).shutdown(cflow).unwrap();
            shut = true;
        }
        loop {
            match p.net.host(server).recv(sflow, &mut buf) {
                Ok(0) => break 'run,
                Ok(k) => received.extend_from_slice(&buf[..k]),
                Err(HostError::WouldBlock) => break,
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        if !cut && received.len() > 500_000 {
            p.net.set_filter(Some(Box::new(move |pk: &Packet| {
                let (s, d) = (pk.src.ip(), pk.dst.ip());
                (s == wlan && d == eth0) || (s == eth0 && d == wlan)
            })));
            cut = true;
        }
        if attack && cut && p.net.now() >= next_forgery {
            next_forgery = p.net.now() + ms(300);
            n += 1;
            for from in [loc("10.9.9.9"), loc("10.2.0.2")] {
                for packet in forgeries(from, loc("10.0.0.1"), sflow, cflow, n) {
                    p.net.inject(packet);
                }
            }
            for from in [loc("10.9.9.9"), loc("10.1.0.1")] {
                for packet in forgeries(from, loc("10.0.0.2"), cflow, sflow, n) {
                    p.net.inject(packet);
                }
            }
        }
    }
    let migrations = p.net.host(client).flow(cflow).unwrap().migrations;
    eprintln!(
        "attack={attack}: {} bytes in {}, client migrations {migrations}, {n} rounds of forgeries; client stats {:?}",
        received.len(),
        p.net.now(),
        p.net.host(client).stats()
    );
    (received, migrations)
}

#[test]
fn forgeries_do_not_keep_a_dead_path_alive() {
    // The control: the flow leaves the dead path and finishes.
    let (received, migrations) = upload_over_a_dying_path(false);
    assert!(received == pattern(2 << 20, 7), "baseline: bytes differ");
    assert!(migrations >= 1);
    // Before the fix the forged packets reset the liveness clock and the
    // upload stalled at about 500 kB for good.
    let (received, migrations) = upload_over_a_dying_path(true);
    assert_eq!(received.len(), 2 << 20, "under attack: the upload stalled");
    assert!(
        received == pattern(2 << 20, 7),
        "under attack: bytes differ"
    );
    assert!(migrations >= 1, "the flow left the dead path");
}

// ---------------------------------------------------------------------
// NAT rebinding, the legitimate case

const SERVER: &str = "udp:10.0.0.2:54325";
const PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const REBOUND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
const PRIVATE: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

/// What the wire showed around a NAT rebinding.
#[derive(Default)]
struct Seen {
    rebound_at: Option<Instant>,
    /// Server packets that reached the client after the rebinding (so
    /// through a new mapping: the old one drops them), with when they
    /// were sent and whether they were path challenges.
    through_new: Vec<(Instant, bool)>,
    /// The client's answers to path challenges, with when they were sent.
    answers: Vec<(Instant, Packet)>,
    /// The client's bare ACKs (with its nonce).
    client_acks: Vec<Packet>,
}

#[test]
fn a_nat_rebinding_is_followed_once_the_new_address_answers_and_a_replayed_answer_moves_nothing() {
    let mut net = Network::new(
        41,
        LinkConditions {
            delay: ms(5),
            ..LinkConditions::default()
        },
    );
    let client = net.add_udp_host(
        "client",
        HostConfig::default(),
        &[("eth0", "10.9.0.1/24")],
        54324,
    );
    let server = net.add_udp_host(
        "server",
        HostConfig::default(),
        &[("eth0", "10.0.0.2/24")],
        54325,
    );
    net.set_nat(Some(Nat::new(
        (Ipv4Addr::new(10, 9, 0, 0), 24),
        PUBLIC,
        secs(30),
    )));
    default_route(&mut net, client, SERVER);
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let seen = Rc::new(RefCell::new(Seen::default()));
    let clock = Rc::new(Cell::new(Instant::from_millis(0)));
    {
        let (seen, clock) = (seen.clone(), clock.clone());
        net.set_filter(Some(Box::new(move |p: &Packet| {
            let mut seen = seen.borrow_mut();
            let control = control_of(&p.payload);
            if p.dst == loc(SERVER) && control.is_some_and(|c| c.flags == ControlFlags::ACK) {
                seen.client_acks.push(p.clone());
            }
            if seen.rebound_at.is_none() {
                return false;
            }
            let now = clock.get();
            if p.src == loc(SERVER) && p.dst.ip() == PRIVATE {
                let challenge =
                    control.is_some_and(|c| c.flags == ControlFlags::RSYN | ControlFlags::NACK);
                seen.through_new.push((now, challenge));
            }
            if p.dst == loc(SERVER) {
                match control.map(|c| c.flags) {
                    Some(f) if f == ControlFlags::RSYN | ControlFlags::NACK | ControlFlags::ACK => {
                        seen.answers.push((now, p.clone()))
                    }
                    _ => {}
                }
            }
            false
        })));
    }
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let data = pattern(4 << 20, 6);
    let received = stream(
        &mut net,
        (server, sflow),
        (client, cflow),
        &data,
        secs(60),
        |net, received| {
            clock.set(net.now());
            let mut seen = seen.borrow_mut();
            if seen.rebound_at.is_none() && received >= 1 << 20 {
                net.nat_mut().unwrap().rebind(REBOUND);
                seen.rebound_at = Some(net.now());
            }
        },
    );
    assert!(received == data, "bytes differ");
    let remote = net.host(server).flow(sflow).unwrap().remote.unwrap();
    assert_eq!(remote.ip(), REBOUND, "the server followed the NAT");
    let stats = net.host(server).stats();
    assert_eq!(stats.rebindings, 1);
    assert!(stats.path_challenges >= 1);
    assert!(
        stats.replayed > 0,
        "the flight was resent once the path was proven"
    );
    // Until the answer reached the server (5 ms after it left), the new
    // address got path challenges and nothing else.
    let seen = seen.borrow();
    let (answered, answer) = seen.answers.first().cloned().expect("the client answered");
    let proven = answered + ms(5);
    let before: Vec<bool> = (seen.through_new.iter())
        .filter(|(at, _)| *at < proven)
        .map(|(_, challenge)| *challenge)
        .collect();
    assert!(!before.is_empty(), "the new address was challenged");
    assert!(
        before.iter().all(|c| *c),
        "only challenges before the answer: {before:?}"
    );
    assert!(
        seen.through_new.iter().any(|(at, c)| *at >= proven && !c),
        "then the data"
    );

    // A replay: someone who saw the answer sends it again, from elsewhere,
    // after getting the server to challenge that address with a replayed
    // ACK of the client's. The challenge there has a fresh token.
    let ack = seen
        .client_acks
        .last()
        .cloned()
        .expect("an ACK of the client's");
    drop(seen);
    let elsewhere = loc("udp:10.0.0.66:54324");
    let bad_nonce = stats.bad_nonce;
    net.run_for(ms(200));
    net.inject(Packet {
        src: elsewhere,
        ..ack
    });
    net.run_for(ms(50));
    net.inject(Packet {
        src: elsewhere,
        ..answer
    });
    net.run_for(ms(50));
    let stats = net.host(server).stats();
    assert_eq!(stats.rebindings, 1, "the replayed answer moved nothing");
    assert_eq!(stats.bad_nonce, bad_nonce + 1);
    assert_eq!(net.host(server).flow(sflow).unwrap().remote, Some(remote));
    assert!(!net
        .take_events(server)
        .iter()
        .any(|e| matches!(e, Event::PeerMoved(_, to) if *to == elsewhere)));
}

// ---------------------------------------------------------------------
// A receiver that stops reading

#[test]
fn a_receiver_that_stops_reading_is_not_taken_for_a_dead_path() {
    // The server reads nothing for 45 s, longer than the 30 s after which a
    // silent peer is given up: its window closes, and the client sees
    // nothing new from it, only its answers to the client's window probes.
    let mut net = Network::new(
        9,
        LinkConditions {
            delay: ms(10),
            ..LinkConditions::default()
        },
    );
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", HostConfig::default(), &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let data = pattern(8 << 20, 11);
    let start = net.now();
    let mut sent = 0;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    let done = net.run_until(secs(120), |net| {
        while sent < data.len() {
            match net
                .host(client)
                .send(cflow, &data[sent..(sent + 65536).min(data.len())])
            {
                Ok(n) => sent += n,
                Err(HostError::WouldBlock) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        if net.now() < start + secs(45) {
            return false;
        }
        loop {
            match net.host(server).recv(sflow, &mut buf) {
                Ok(0) | Err(HostError::WouldBlock) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) => panic!("recv failed: {e}"),
            }
        }
        received.len() == data.len()
    });
    let stats = net.host(client).stats();
    assert!(
        done,
        "stalled at {} of {} bytes: {stats:?}",
        received.len(),
        data.len()
    );
    assert!(received == data, "bytes differ");
    assert_eq!(stats.peer_timeouts, 0);
}
