//! Hostile packets against the handshake and teardown (issue 12, findings
//! 1, 2, 3 and 13), on the deterministic simulator: opening segments that
//! are not SYNs, SYN floods from spoofed sources, SYNs that name a victim
//! in SOURCE, and peers that vanish mid-flow.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::{ConnectError, Event, HostConfig, HostError, SynCookies, TransmitKind};
use sal::wire::TransportProtocol::{Datagram, Stream};
use sal::wire::{ControlFlags, ControlRepr, SalPacket, SalRepr, SourceRepr};
use sal::{FlowId, Locator, ServiceId};
use sal_sim::{HostId, LinkConditions, Network, Packet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

mod common;
use common::sim::{default_route, establish, sal_data, tcp_segment};

const SERVER: &str = "10.0.0.2";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

fn pair(config: HostConfig) -> (Network, HostId, HostId) {
    let mut net = Network::new(12, LinkConditions::default());
    let client = net.add_host("client", config.clone(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", config, &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, SERVER);
    (net, client, server)
}

/// A pair whose hosts answer every SYN with a cookie, and a listener on
/// the server.
fn cookies_always(
    prefix: &str,
    protocol: sal::wire::TransportProtocol,
) -> (Network, HostId, HostId, sal::table::ListenerId) {
    let config = HostConfig {
        syn_cookies: SynCookies::Always,
        ..HostConfig::default()
    };
    let (mut net, client, server) = pair(config);
    let listener = net
        .host(server)
        .listen(prefix.parse().unwrap(), protocol, 8)
        .unwrap();
    (net, client, server, listener)
}

/// What the TCP segment of a forged SAL SYN looks like.
#[derive(Clone, Copy)]
enum Segment {
    /// A proper opening SYN.
    Syn,
    /// Only ACK set (finding 1's packet).
    AckOnly,
    SynAck,
    Rst,
    BadChecksum,
    /// Cut in the middle of its header.
    Truncated,
}

/// A TCP segment (ports 0) from `src` to `dst`, checksummed for them.
fn tcp(kind: Segment, src: Ipv4Addr, dst: Ipv4Addr, seq: u32) -> Vec<u8> {
    let (control, ack_number) = match kind {
        Segment::AckOnly => (TcpControl::None, Some(TcpSeqNumber(7))),
        Segment::SynAck => (TcpControl::Syn, Some(TcpSeqNumber(7))),
        Segment::Rst => (TcpControl::Rst, None),
        _ => (TcpControl::Syn, None),
    };
    let repr = TcpRepr {
        src_port: 0,
        dst_port: 0,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number,
        window_len: 65535,
        window_scale: Some(7),
        max_seg_size: Some(1448),
        sack_permitted: true,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let mut bytes = vec![0; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut bytes[..]),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        &ChecksumCapabilities::default(),
    );
    match kind {
        Segment::BadChecksum => bytes[16] ^= 0x55,
        Segment::Truncated => bytes.truncate(14),
        _ => {}
    }
    bytes
}

/// A SAL SYN for `service` from flow `n`, carrying `segment`, with an
/// optional SOURCE extension.
fn sal_syn(n: u32, service: ServiceId, segment: &[u8], source: Option<&[Ipv4Addr]>) -> Vec<u8> {
    let mut repr = SalRepr::data(FlowId::new(n).unwrap(), None, 6);
    repr.control = Some(ControlRepr {
        flags: ControlFlags::SYN,
        verno: n.wrapping_mul(7919),
        ackno: 0,
        nonce: n.to_be_bytes().repeat(2).try_into().unwrap(),
    });
    repr.service = Some(service);
    repr.source = source.map(|addrs| {
        let mut source = SourceRepr::default();
        for &addr in addrs {
            source.addrs.push(addr);
        }
        source
    });
    let mut packet = vec![0; repr.header_len()];
    repr.emit(&mut packet).unwrap();
    packet.extend_from_slice(segment);
    packet
}

fn inject(net: &mut Network, src: Ipv4Addr, dst: &str, payload: Vec<u8>) {
    net.inject(Packet {
        src: Locator::Ipv4(src),
        dst: loc(dst),
        ttl: 64,
        kind: TransmitKind::Own,
        payload,
    });
}

/// Counts the packets put on the wire toward `to` (and lets them pass).
fn count_toward(net: &mut Network, to: Ipv4Addr) -> Rc<Cell<u64>> {
    let count = Rc::new(Cell::new(0));
    let seen = count.clone();
    net.set_filter(Some(Box::new(move |p| {
        if p.dst.ip() == to {
            seen.set(seen.get() + 1);
        }
        false
    })));
    count
}

/// Finding 1: a SAL SYN whose TCP segment is not an opening SYN keeps
/// nothing and earns no answer; the listener keeps serving.
#[test]
fn a_syn_whose_segment_is_not_an_opening_syn_keeps_nothing_and_gets_no_answer() {
    let (mut net, client, server) = pair(HostConfig::default());
    let listener = net
        .host(server)
        .listen("5a/8".parse().unwrap(), Stream, 128)
        .unwrap();
    let attacker: Ipv4Addr = "10.0.0.66".parse().unwrap();
    let answers = count_toward(&mut net, attacker);
    let kinds = [
        Segment::AckOnly,
        Segment::SynAck,
        Segment::Rst,
        Segment::BadChecksum,
        Segment::Truncated,
    ];
    for n in 1..=130 {
        let kind = kinds[n as usize % kinds.len()];
        let segment = tcp(kind, attacker, SERVER.parse().unwrap(), n);
        inject(
            &mut net,
            attacker,
            SERVER,
            sal_syn(n, svc("5a01"), &segment, None),
        );
    }
    net.run_for(secs(1));
    let stats = net.host(server).stats();
    assert_eq!(net.host(server).flow_count(), 0, "no state for any of them");
    assert_eq!(net.host(server).half_open_count(), 0);
    assert_eq!(answers.get(), 0, "no answer either");
    assert_eq!(stats.bad_syn + stats.bad_checksum + stats.malformed, 130);
    assert!(stats.bad_syn >= 78 && stats.bad_checksum >= 26, "{stats:?}");
    // The listener serves a real client at once.
    establish(&mut net, client, server, listener, svc("5a01"));
}

/// Finding 2: a flood of valid SYNs from spoofed sources. Past the
/// half-open limit every SYN is answered with a cookie and nothing is kept;
/// the half-open flows expire; legitimate clients connect throughout.
#[test]
fn a_syn_flood_keeps_at_most_the_half_open_limit_and_clients_still_connect() {
    let config = HostConfig {
        half_open_limit: 32,
        ..HostConfig::default()
    };
    let (mut net, client, server) = pair(config);
    let listener = net
        .host(server)
        .listen("f1/8".parse().unwrap(), Stream, 128)
        .unwrap();
    let server_ip: Ipv4Addr = SERVER.parse().unwrap();
    let mut connected = 0;
    for round in 0..10u32 {
        // 2,000 spoofed SYNs, then one real connect.
        for i in 0..2_000u32 {
            let n = round * 2_000 + i + 1;
            let spoofed = Ipv4Addr::from(0x0a63_0000 | n);
            let segment = tcp(Segment::Syn, spoofed, server_ip, n);
            inject(
                &mut net,
                spoofed,
                SERVER,
                sal_syn(n, svc("f101"), &segment, None),
            );
        }
        let flow = net.host(client).connect(svc("f101"), Stream).unwrap();
        let ok = net.run_until(secs(5), |net| {
            net.sim_host(client)
                .events
                .contains(&Event::Connected(flow))
                && net.host(server).accept(listener).is_ok()
        });
        connected += usize::from(ok);
        assert!(net.host(server).half_open_count() <= 32);
        assert!(
            net.host(server).flow_count() <= 32 + 10,
            "only half-open and real flows"
        );
    }
    assert_eq!(connected, 10, "every legitimate connect got through");
    let stats = net.host(server).stats();
    assert!(stats.cookies_sent >= 19_000, "{stats:?}");
    assert_eq!(stats.cookies_accepted, 10, "the real clients, from cookies");
    // Nobody answers the spoofed SYN-ACKs: the half-open flows expire.
    net.run_for(secs(11));
    assert_eq!(net.host(server).half_open_count(), 0);
    assert_eq!(net.host(server).flow_count(), 10);
    assert!(net.host(server).stats().half_open_expired >= 32);
}

/// Finding 2, the cookie path itself: with cookies always on, the server
/// keeps nothing per SYN; a client whose handshake ACK is lost repeats it,
/// and the repeat builds the flow; a forged ACK builds nothing.
#[test]
fn cookie_handshakes_survive_a_lost_ack_and_refuse_forged_ones() {
    let (mut net, client, server, listener) = cookies_always("c0/8", Stream);
    let dropped = Rc::new(Cell::new(0));
    let seen = dropped.clone();
    net.set_filter(Some(Box::new(move |p| {
        let repr = SalPacket::new_checked(&p.payload[..])
            .ok()
            .and_then(|packet| SalRepr::parse(&packet).ok());
        let handshake_ack = repr.is_some_and(|r| r.service.is_some() && r.dst_flow.is_some());
        let drop = handshake_ack && seen.get() == 0;
        seen.set(seen.get() + u32::from(drop));
        drop
    })));
    let cflow = net.host(client).connect(svc("c001"), Stream).unwrap();
    assert_eq!(net.host(server).flow_count(), 0);
    let mut sflow = None;
    assert!(net.run_until(secs(5), |net| {
        sflow = sflow.or_else(|| net.host(server).accept(listener).ok());
        sflow.is_some()
    }));
    assert_eq!(dropped.get(), 1, "the first handshake ACK was lost");
    let sflow = sflow.unwrap();
    assert_eq!(
        net.host(server).half_open_count(),
        0,
        "nothing was half-open"
    );
    // Data both ways on the rebuilt flow.
    net.host(server).send(sflow, b"hello").unwrap();
    net.run_for(Duration::from_millis(100));
    let mut buf = [0; 16];
    assert_eq!(net.host(client).recv(cflow, &mut buf), Ok(5));
    net.host(client).send(cflow, b"world").unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.host(server).recv(sflow, &mut buf), Ok(5));

    // A forged handshake ACK: a made-up flow ID, verno and ISN.
    let mut forged = SalRepr::data(FlowId::new(4242).unwrap(), FlowId::new(0xdead), 6);
    forged.control = Some(ControlRepr {
        flags: ControlFlags::ACK,
        verno: 2,
        ackno: 99,
        nonce: [1; 8],
    });
    forged.service = Some(svc("c001"));
    let mut packet = vec![0; forged.header_len()];
    forged.emit(&mut packet).unwrap();
    let attacker: Ipv4Addr = "10.0.0.66".parse().unwrap();
    let mut segment = tcp(Segment::AckOnly, attacker, SERVER.parse().unwrap(), 1);
    segment[13] = 0x10;
    packet.extend_from_slice(&segment);
    let before = net.host(server).stats().cookies_rejected;
    inject(&mut net, attacker, SERVER, packet);
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.host(server).stats().cookies_rejected, before + 1);
    assert_eq!(net.host(server).flow_count(), 1, "only the real flow");
}

/// Finding 3: SYNs that name a victim as the client (SOURCE[0]) earn the
/// victim at most one packet each, however long the server waits, both
/// while the server keeps half-open flows and once it answers with cookies.
#[test]
fn syns_naming_a_victim_earn_it_at_most_one_packet_each() {
    let config = HostConfig {
        half_open_limit: 50,
        ..HostConfig::default()
    };
    let (mut net, _client, server) = pair(config);
    net.host(server)
        .listen("3e/8".parse().unwrap(), Stream, 128)
        .unwrap();
    let victim: Ipv4Addr = "10.0.0.99".parse().unwrap();
    let attacker: Ipv4Addr = "10.0.0.66".parse().unwrap();
    let toward_victim = count_toward(&mut net, victim);
    for n in 1..=200u32 {
        // As a router would have forwarded it: SOURCE = [client, router].
        let segment = tcp(Segment::Syn, attacker, SERVER.parse().unwrap(), n);
        let source = [victim, attacker];
        inject(
            &mut net,
            attacker,
            SERVER,
            sal_syn(n, svc("3e01"), &segment, Some(&source)),
        );
    }
    net.run_for(secs(60));
    let stats = net.host(server).stats();
    assert!(
        toward_victim.get() <= 200,
        "{} packets",
        toward_victim.get()
    );
    assert!(toward_victim.get() >= 150, "the SYNs were answered");
    assert!(stats.cookies_sent > 0, "{stats:?}");
    assert_eq!(stats.retransmits, 0, "no SYN-ACK was resent");
    assert_eq!(net.host(server).flow_count(), 0, "all expired");
}

/// Finding 13: a peer that vanishes. A FIN it never acknowledges, data it
/// never acknowledges, a SYN nobody answers: each flow ends within 60 s,
/// the application sees the error, and the flow is no longer listed.
#[test]
fn flows_whose_peer_vanished_are_freed_within_a_minute_with_an_error() {
    let (mut net, client, server) = pair(HostConfig::default());
    let listener = net
        .host(server)
        .listen("d0/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let (closing, _) = establish(&mut net, client, server, listener, svc("d001"));
    let (sending, _) = establish(&mut net, client, server, listener, svc("d001"));
    let (reading, _) = establish(&mut net, client, server, listener, svc("d001"));
    // The server's host is gone (its sald killed, its cable pulled).
    net.link_down(SERVER.parse().unwrap());
    let start = net.now();
    net.host(client).close(closing).unwrap();
    net.host(client).send(sending, b"into the void").unwrap();
    net.host(client).shutdown(reading).unwrap();
    let connecting = net.host(client).connect(svc("d001"), Stream).unwrap();
    let mut errors = (None, None, None);
    let done = net.run_until(secs(60), |net| {
        let mut buf = [0; 8];
        if errors.0.is_none() {
            errors.0 = net
                .host(client)
                .send(sending, b"x")
                .err()
                .filter(|e| *e == HostError::Reset);
        }
        if errors.1.is_none() {
            errors.1 = net
                .host(client)
                .recv(reading, &mut buf)
                .err()
                .filter(|e| *e == HostError::Reset);
        }
        if errors.2.is_none() {
            errors.2 = net.sim_host(client).events.iter().find_map(|e| match e {
                Event::ConnectFailed(f, error) if *f == connecting => Some(*error),
                _ => None,
            });
        }
        let closed = net
            .sim_host(client)
            .events
            .contains(&Event::Closed(closing));
        closed && errors.0.is_some() && errors.1.is_some() && errors.2.is_some()
    });
    assert!(done, "after {}: {errors:?}", net.now() - start);
    assert_eq!(errors.2, Some(ConnectError::TimedOut));
    // The application closes what it was told is dead: nothing is left.
    net.host(client).close(sending).unwrap();
    net.host(client).close(reading).unwrap();
    net.run_for(Duration::from_millis(10));
    assert!(
        net.host(client).flows().is_empty(),
        "{:?}",
        net.host(client).flows()
    );
    assert!(net.now() - start <= secs(60));
    assert!(net.host(client).stats().peer_timeouts >= 2);
}

/// A datagram flow opens from a cookie too (no TCP: the cookie is the flow
/// ID and `verno`), and carries datagrams both ways.
#[test]
fn datagram_flows_open_from_cookies_too() {
    let (mut net, client, server, listener) =
        cookies_always("da/8", sal::wire::TransportProtocol::Datagram);
    let cflow = net
        .host(client)
        .connect(svc("da01"), sal::wire::TransportProtocol::Datagram)
        .unwrap();
    let mut sflow = None;
    assert!(net.run_until(secs(5), |net| {
        sflow = sflow.or_else(|| net.host(server).accept(listener).ok());
        sflow.is_some()
            && net
                .sim_host(client)
                .events
                .contains(&Event::Connected(cflow))
    }));
    let sflow = sflow.unwrap();
    let stats = net.host(server).stats();
    assert_eq!((stats.cookies_sent, stats.cookies_accepted), (1, 1));
    net.host(client).send_datagram(cflow, b"ping").unwrap();
    net.run_for(Duration::from_millis(50));
    assert_eq!(
        net.host(server).recv_datagram(sflow).unwrap().unwrap(),
        b"ping"
    );
    net.host(server).send_datagram(sflow, b"pong").unwrap();
    net.run_for(Duration::from_millis(50));
    assert_eq!(
        net.host(client).recv_datagram(cflow).unwrap().unwrap(),
        b"pong"
    );
}

/// Found by the `host_input` fuzz target: a packet whose source is a
/// broadcast address (the subnet's or 255.255.255.255), or whose SOURCE
/// names one as the client, earned an answer to that address, to every
/// host on the subnet: a path challenge for a packet on a live flow, a
/// SYN-ACK or a refusal for a SYN. Such packets are now dropped unanswered
/// (RFC 1122 has hosts discard them), and the flow carries on.
#[test]
fn packets_from_broadcast_sources_earn_no_answer() {
    let (mut net, client, server) = pair(HostConfig::default());
    let listener = net
        .host(server)
        .listen("b0/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("b001"));
    let subnet: Ipv4Addr = "10.0.0.255".parse().unwrap();
    let attacker: Ipv4Addr = "10.0.0.66".parse().unwrap();
    let to_subnet = count_toward(&mut net, subnet);
    let server_ip: Ipv4Addr = SERVER.parse().unwrap();
    for src in [subnet, Ipv4Addr::BROADCAST] {
        // On the live flow, from "elsewhere": the server would challenge
        // the new address.
        let mut packet = vec![0; SalRepr::data(cflow, Some(sflow), 6).header_len()];
        SalRepr::data(cflow, Some(sflow), 6)
            .emit(&mut packet)
            .unwrap();
        packet.extend_from_slice(&tcp(Segment::AckOnly, src, server_ip, 1));
        inject(&mut net, src, SERVER, packet);
        // A SYN for the service, and one for a service nobody has.
        for (n, service) in [(1, svc("b001")), (2, svc("e001"))] {
            let segment = tcp(Segment::Syn, src, server_ip, n);
            inject(&mut net, src, SERVER, sal_syn(n, service, &segment, None));
        }
    }
    // SYNs relayed for a "client" at the subnet's broadcast address.
    for (n, service) in [(3, svc("b001")), (4, svc("e001"))] {
        let segment = tcp(Segment::Syn, attacker, server_ip, n);
        let source = [subnet, attacker];
        let syn = sal_syn(n, service, &segment, Some(&source));
        inject(&mut net, attacker, SERVER, syn);
    }
    net.run_for(secs(1));
    assert_eq!(to_subnet.get(), 0, "nothing was sent to the subnet");
    let stats = net.host(server).stats();
    assert_eq!(stats.bad_source, 8, "{stats:?}");
    assert_eq!(net.host(server).flow_count(), 1, "only the real flow");
    assert_eq!(stats.path_challenges, 0);
    // The flow carries on.
    net.host(client).send(cflow, b"still here").unwrap();
    net.run_for(Duration::from_millis(100));
    let mut buf = [0; 16];
    assert_eq!(net.host(server).recv(sflow, &mut buf), Ok(10));
}

/// A SOURCE extension names the client and at least the router that added
/// it; WIRE.md calls one with fewer than two addresses malformed (the
/// reference drops the whole packet). Taken as relayed, a lone address was
/// an answer-to address any sender could set: the server sent its SYN-ACK
/// there, to a host that never asked.
#[test]
fn a_syn_whose_source_names_one_address_is_dropped_as_malformed() {
    let (mut net, _client, server) = pair(HostConfig::default());
    net.host(server)
        .listen("b0/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let attacker: Ipv4Addr = "10.0.0.66".parse().unwrap();
    let victim: Ipv4Addr = "10.0.0.77".parse().unwrap();
    let server_ip: Ipv4Addr = SERVER.parse().unwrap();
    let to_victim = count_toward(&mut net, victim);
    let segment = tcp(Segment::Syn, attacker, server_ip, 1);
    let syn = sal_syn(1, svc("b001"), &segment, Some(&[victim]));
    inject(&mut net, attacker, SERVER, syn);
    net.run_for(secs(1));
    assert_eq!(to_victim.get(), 0, "nothing was sent to the named address");
    let stats = net.host(server).stats();
    assert_eq!(stats.malformed, 1, "{stats:?}");
    assert_eq!(net.host(server).flow_count(), 0);
    // The same SYN relayed properly (client, router) is answered, at the
    // client's address.
    let to_attacker = count_toward(&mut net, attacker);
    let router: Ipv4Addr = "10.0.0.1".parse().unwrap();
    // Checksummed as sent, from the router (WIRE.md).
    let segment = tcp(Segment::Syn, router, server_ip, 2);
    let syn = sal_syn(2, svc("b001"), &segment, Some(&[attacker, router]));
    inject(&mut net, router, SERVER, syn);
    net.run_for(Duration::from_millis(100));
    let stats = net.host(server).stats();
    assert!(
        to_attacker.get() >= 1,
        "the relayed SYN was answered: {stats:?}"
    );
    assert_eq!(net.host(server).stats().malformed, 1);
}

/// Two programs behind one address in UDP carriage (one host's programs,
/// or hosts behind one NAT) whose SYNs happen to carry the same flow ID
/// are two clients: each gets its own half-open flow and its own SYN-ACK,
/// at its own port. Keyed by address alone, the second SYN was taken for
/// the first one's retransmission, and its client was never answered.
#[test]
fn clients_sharing_an_address_and_a_flow_id_each_get_a_syn_ack() {
    let mut net = Network::new(13, LinkConditions::default());
    let server = net.add_udp_host(
        "server",
        HostConfig::default(),
        &[("eth0", "10.0.0.2/24")],
        54325,
    );
    net.host(server)
        .listen("5a/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let shared: Ipv4Addr = "10.0.0.100".parse().unwrap();
    let server_ip: Ipv4Addr = SERVER.parse().unwrap();
    let answers = Rc::new(std::cell::RefCell::new(Vec::new()));
    let seen = answers.clone();
    net.set_filter(Some(Box::new(move |p: &Packet| {
        if p.dst.ip() == shared {
            seen.borrow_mut().push(p.dst);
        }
        false
    })));
    let ports = [40000, 40001];
    for port in ports {
        let segment = tcp(Segment::Syn, shared, server_ip, 9);
        net.inject(Packet {
            src: Locator::Udp(std::net::SocketAddrV4::new(shared, port)),
            dst: loc("udp:10.0.0.2:54325"),
            ttl: 64,
            kind: TransmitKind::Own,
            payload: sal_syn(9, svc("5a01"), &segment, None),
        });
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.host(server).half_open_count(), 2);
    let mut answered: Vec<u16> = answers
        .borrow()
        .iter()
        .filter_map(|dst| match dst {
            Locator::Udp(addr) => Some(addr.port()),
            Locator::Ipv4(_) => None,
        })
        .collect();
    answered.sort();
    assert_eq!(answered, ports, "one SYN-ACK to each client's port");
}

/// A data segment that arrives before the handshake's ACK completes the
/// handshake (the ACK was lost), but it carries no nonce: only TCP's own
/// check that it acknowledges the SYN-ACK shows it comes from the client.
/// A blind forger who guessed both flow IDs used to establish a flow
/// spoofed from a victim with any segment at all.
#[test]
fn data_before_the_ack_must_acknowledge_the_syn_ack() {
    let (mut net, _client, server) = pair(HostConfig::default());
    let listener = net
        .host(server)
        .listen("da/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let victim: Ipv4Addr = "10.0.0.99".parse().unwrap();
    let server_ip: Ipv4Addr = SERVER.parse().unwrap();
    // What the forger would have to guess: the server's flow ID and ISN
    // from the SYN-ACK, which goes to the victim.
    let syn_ack: Rc<Cell<Option<(FlowId, u32)>>> = Rc::default();
    let seen = syn_ack.clone();
    net.set_filter(Some(Box::new(move |p| {
        if p.dst.ip() == victim {
            let packet = SalPacket::new_checked(&p.payload[..]).unwrap();
            let repr = SalRepr::parse(&packet).unwrap();
            let tcp = TcpPacket::new_checked(&p.payload[repr.header_len()..]).unwrap();
            seen.set(Some((repr.src_flow.unwrap(), tcp.seq_number().0 as u32)));
        }
        false
    })));
    let client_flow = FlowId::new(77).unwrap();
    let segment = tcp(Segment::Syn, victim, server_ip, 1000);
    inject(
        &mut net,
        victim,
        SERVER,
        sal_syn(77, svc("da01"), &segment, None),
    );
    net.run_for(Duration::from_millis(10));
    let (server_flow, server_isn) = syn_ack.get().expect("a SYN-ACK toward the victim");
    let data = |ack: u32| {
        let segment = tcp_segment(
            TcpControl::Psh,
            1001,
            Some(ack),
            b"hello",
            (victim, server_ip),
        );
        sal_data(client_flow, server_flow, &segment)
    };
    // Right flow IDs, wrong acknowledgement numbers: nothing established.
    for wrong in [
        0u32,
        1,
        server_isn,
        server_isn.wrapping_add(2),
        server_isn ^ 0x8000_0000,
    ] {
        inject(&mut net, victim, SERVER, data(wrong));
        net.run_for(Duration::from_millis(10));
        assert_eq!(
            net.host(server).accept(listener),
            Err(HostError::WouldBlock),
            "ack {wrong:#x} (ISN {server_isn:#x}) established the flow"
        );
    }
    // The right acknowledgement from anywhere but the client's address
    // establishes nothing either.
    let elsewhere: Ipv4Addr = "10.0.0.98".parse().unwrap();
    let segment = tcp_segment(
        TcpControl::Psh,
        1001,
        Some(server_isn.wrapping_add(1)),
        b"hello",
        (elsewhere, server_ip),
    );
    inject(
        &mut net,
        elsewhere,
        SERVER,
        sal_data(client_flow, server_flow, &segment),
    );
    net.run_for(Duration::from_millis(10));
    assert_eq!(
        net.host(server).accept(listener),
        Err(HostError::WouldBlock)
    );
    // What only the client (or an on-path observer) can send does.
    inject(&mut net, victim, SERVER, data(server_isn.wrapping_add(1)));
    net.run_for(Duration::from_millis(10));
    let flow = net.host(server).accept(listener).expect("established");
    let mut got = [0; 8];
    assert_eq!(net.host(server).recv(flow, &mut got), Ok(5));
    assert_eq!(&got[..5], b"hello");
}

/// A DELAY rule's queue is shared by everyone who sends first packets: one
/// source may hold a sixteenth of it, and a stream's first packet is held
/// only if its segment is an opening SYN. 1,024 packets from one sender
/// (205 a second keep them there) used to fill it, and every legitimate
/// client's SYN was dropped.
#[test]
fn one_sender_cannot_fill_the_delay_queue() {
    let (mut net, client, server) = pair(HostConfig::default());
    net.host(server)
        .add_rule("de/8".parse().unwrap(), sal::table::Target::Delay, 0);
    let attacker: Ipv4Addr = "10.0.0.66".parse().unwrap();
    let server_ip: Ipv4Addr = SERVER.parse().unwrap();
    for n in 1..=2048u32 {
        let mut service = [0u8; 32];
        service[0] = 0xde;
        service[1..5].copy_from_slice(&n.to_be_bytes());
        // Half of them not opening SYNs at all.
        let kind = if n % 2 == 0 {
            Segment::Syn
        } else {
            Segment::AckOnly
        };
        let segment = tcp(kind, attacker, server_ip, n);
        inject(
            &mut net,
            attacker,
            SERVER,
            sal_syn(n, ServiceId::from_bytes(service), &segment, None),
        );
    }
    net.run_for(Duration::from_millis(10));
    let stats = net.host(server).stats();
    let share = HostConfig::default().delay_queue_limit / 16;
    assert_eq!(stats.delayed as usize, share, "{stats:?}");
    assert_eq!(stats.bad_syn, 1024, "the non-SYNs were not held");
    assert_eq!(stats.delay_dropped as usize, 1024 - share);
    // A client's SYN is held all the same.
    net.host(client).connect(svc("de01"), Stream).unwrap();
    net.run_for(Duration::from_millis(100));
    let after = net.host(server).stats();
    assert_eq!(
        after.delayed,
        stats.delayed + 1,
        "the client's SYN was held"
    );
    assert_eq!(after.delay_dropped, stats.delay_dropped);
}

/// A datagram socket's queue is bounded in bytes as well as in datagrams:
/// by count alone, one sender of 60 KB datagrams (UDP carriage delivers
/// them reassembled) made one socket nobody read hold 15 MB.
#[test]
fn a_datagram_socket_s_queue_is_bounded_in_bytes() {
    let (mut net, _client, server) = pair(HostConfig::default());
    let listener = net
        .host(server)
        .listen("d9/8".parse().unwrap(), Datagram, 8)
        .unwrap();
    let socket = net.host(server).listener_socket(listener).unwrap();
    let attacker: Ipv4Addr = "10.0.0.66".parse().unwrap();
    let datagram = |src: Ipv4Addr, n: u32, len: usize| {
        let mut repr = SalRepr::data(FlowId::new(n).unwrap(), None, 17);
        repr.service = Some(svc("d901"));
        let mut segment = vec![0u8; 8 + len];
        segment[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
        sal::wire::fill_transport_checksum(Datagram, src, SERVER.parse().unwrap(), &mut segment)
            .unwrap();
        let mut packet = vec![0; repr.header_len()];
        repr.emit(&mut packet).unwrap();
        packet.extend_from_slice(&segment);
        packet
    };
    // Straight into the host: the simulator's wire stands for a 1500-byte
    // MTU, sald's UDP link reads datagrams up to 65,507 bytes.
    let now = net.now();
    for n in 1..=300u32 {
        let bytes = datagram(attacker, n, 60_000);
        net.host(server)
            .handle_packet(now, Locator::Ipv4(attacker), loc(SERVER), 64, &bytes);
    }
    let legit: Ipv4Addr = "10.0.0.1".parse().unwrap();
    inject(&mut net, legit, SERVER, datagram(legit, 4242, 10));
    net.run_for(Duration::from_millis(10));
    let (mut held, mut count, mut from_legit) = (0, 0, false);
    while let Ok(received) = net.host(server).recv_from(socket) {
        held += received.data.len();
        count += 1;
        from_legit |= received.peer.locator == Locator::Ipv4(legit);
    }
    let bound = HostConfig::default().datagram_queue_bytes;
    assert!(held <= bound, "{count} datagrams, {held} bytes held");
    assert_eq!(count, 5, "four of 60 KB and the small one");
    assert!(from_legit);
    assert_eq!(net.host(server).stats().datagram_overflow, 296);
}
