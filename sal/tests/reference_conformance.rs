//! Conformance with the original Serval stack, packet by packet: the
//! reference's packets in `shared/vectors/` are replayed into our hosts
//! (in-process, no reference needed) and our answers are checked field by
//! field against what the reference sends or accepts in the same place.
//!
//! Our flow IDs and numbers are random, so a captured packet that follows
//! one of our answers is rewritten first ([`rewrite`]): its destination
//! flow becomes ours and its `ackno` moves by the same offset from our
//! `verno` as it had from the captured one. UDP checksums do not cover the
//! SAL header, so datagram segments stay valid; TCP is only replayed up to
//! the SYN, whose numbers are the client's own.
//!
//! Two reference datagrams that are not among the shared vectors are
//! embedded below (`REF_UNCONNECTED_*`), byte for byte as the reference
//! stack sent them.

mod common;

use std::net::Ipv4Addr;

use sal::proto::{ConnectError, Event, Host, HostConfig, HostError, LocalInterface, TransmitKind};
use sal::table::Target;
use sal::time::Instant;
use sal::wire::{
    ipv4_payload, readdress_transport_checksum, verify_transport_checksum, ControlFlags,
    ControlRepr, ExtensionKind, SalPacket, SalRepr, SourceRepr, TransportProtocol,
};
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_sim::Packet;

// ---------------------------------------------------------------------------
// Captures and hosts

/// The frames of a capture in `shared/vectors`, numbered from 1 as in the
/// vectors' README; `None` for frames that are not IPv4 (ARP).
fn capture(name: &str) -> Vec<Option<Vec<u8>>> {
    let path = common::vector_path(name);
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("cannot open {} ({e})", path.display()));
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("valid pcap header");
    let mut frames = vec![None];
    while let Some(packet) = reader.next_packet() {
        let frame = packet.expect("valid pcap record").data;
        let ipv4 = frame.len() > 14 && frame[12..14] == [0x08, 0x00];
        frames.push(ipv4.then(|| frame[14..].to_vec()));
    }
    frames
}

/// Frame `n` of a capture, as (source, destination, TTL, SAL packet).
fn frame(frames: &[Option<Vec<u8>>], n: usize) -> (Ipv4Addr, Ipv4Addr, u8, Vec<u8>) {
    let ip = frames[n].as_ref().expect("an IPv4 frame");
    let (carriage, sal) = ipv4_payload(ip).expect("a SAL packet");
    (carriage.src, carriage.dst, carriage.ttl, sal.to_vec())
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

/// The reference's service 16385 (`htonl(0x4001)`) in our text form.
fn ref_service() -> ServiceId {
    svc("00004001")
}

fn now() -> Instant {
    Instant::from_millis(1)
}

/// A host with one /24 interface per address.
fn host(addrs: &[&str], config: HostConfig) -> Host {
    let mut host = Host::new(config, Instant::from_millis(0));
    for (i, addr) in addrs.iter().enumerate() {
        host.add_interface(LocalInterface {
            name: format!("eth{i}"),
            locator: loc(addr),
            prefix_len: 24,
            up: true,
        });
    }
    host
}

fn router_config() -> HostConfig {
    HostConfig {
        forward: true,
        ..HostConfig::default()
    }
}

fn discovery_config() -> HostConfig {
    HostConfig {
        broadcast_discovery: true,
        ..HostConfig::default()
    }
}

/// Hands a packet to the host and runs it; returns what it sent.
fn feed(host: &mut Host, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, sal: &[u8]) -> Vec<Packet> {
    host.handle_packet(now(), Locator::Ipv4(src), Locator::Ipv4(dst), ttl, sal);
    sent(host)
}

/// Runs the host and drains what it sent.
fn sent(host: &mut Host) -> Vec<Packet> {
    host.poll(now());
    drain(host)
}

/// What the host has to send now, without running it.
fn drain(host: &mut Host) -> Vec<Packet> {
    let mut buffer = vec![0; Packet::MAX_LEN];
    std::iter::from_fn(|| Packet::next_from(host, now(), &mut buffer)).collect()
}

/// The events once lingering flows are gone: a flow that had its peer's
/// FIN answers repeats of it for a few control timeouts before it is
/// released (see `teardown.rs`).
fn events_after_linger(host: &mut Host) -> Vec<Event> {
    host.poll(now() + sal::time::Duration::from_secs(30));
    events(host)
}

fn events(host: &mut Host) -> Vec<Event> {
    std::iter::from_fn(|| host.poll_event()).collect()
}

fn parse(payload: &[u8]) -> (SalRepr, Vec<u8>) {
    let packet = SalPacket::new_checked(payload).expect("framed");
    assert!(packet.verify_checksum(), "SAL checksum");
    let repr = SalRepr::parse(&packet).expect("parses");
    (repr, packet.payload().to_vec())
}

fn control(repr: &SalRepr) -> ControlRepr {
    repr.control.expect("a CONTROL extension")
}

/// Extension types and lengths in wire order.
fn layout(payload: &[u8]) -> Vec<(ExtensionKind, usize)> {
    SalPacket::new_checked(payload)
        .unwrap()
        .extensions()
        .map(|e| e.map(|e| (e.kind, e.bytes.len())).unwrap())
        .collect()
}

/// A captured SAL packet with some fields changed, checksum refilled.
fn rewrite(sal: &[u8], change: impl FnOnce(&mut SalRepr)) -> Vec<u8> {
    let (mut repr, segment) = parse(sal);
    change(&mut repr);
    let mut out = vec![0u8; repr.header_len() + segment.len()];
    let len = repr.emit(&mut out).unwrap();
    out[len..].copy_from_slice(&segment);
    out
}

/// Addresses a captured packet to our flow `to` and moves its `ackno` from
/// the captured `verno` base of our side to ours.
fn to_our_flow(sal: &[u8], to: FlowId, base: (u32, u32)) -> Vec<u8> {
    rewrite(sal, |repr| {
        repr.dst_flow = Some(to);
        if let Some(control) = &mut repr.control {
            let offset = control.ackno.wrapping_sub(base.0);
            control.ackno = base.1.wrapping_add(offset);
        }
    })
}

/// The UDP-style segment's checksum field.
fn udp_checksum(segment: &[u8]) -> u16 {
    u16::from_be_bytes([segment[6], segment[7]])
}

// ---------------------------------------------------------------------------
// reference-broadcast-syn.pcap: a reference client without a service rule
// broadcasts its SYN.

const BROADCAST_SYN: &str = "reference-broadcast-syn.pcap";

#[test]
fn a_broadcast_syn_for_a_bound_service_is_answered_once() {
    let frames = capture(BROADCAST_SYN);
    let (src, dst, ttl, syn) = frame(&frames, 1);
    assert_eq!(dst, ip("10.77.1.255"));
    let (syn_repr, syn_tcp) = parse(&syn);
    let mut server = host(&["10.77.1.2"], HostConfig::default());
    server
        .listen(
            ServicePrefix::exact(ref_service()),
            TransportProtocol::Stream,
            8,
        )
        .unwrap();

    let out = feed(&mut server, src, dst, ttl, &syn);
    assert_eq!(out.len(), 1, "exactly one SYN-ACK");
    let reply = &out[0];
    assert_eq!(
        (reply.src, reply.dst, reply.kind),
        (loc("10.77.1.2"), loc("10.77.1.1"), TransmitKind::Own)
    );
    assert_eq!(SalPacket::new_checked(&reply.payload[..]).unwrap().shl(), 8);
    let (repr, tcp) = parse(&reply.payload);
    assert_eq!(repr.dst_flow, FlowId::new(2));
    assert_eq!(repr.protocol, 6);
    assert!(repr.service.is_none() && repr.source.is_none() && repr.address.is_none());
    let c = control(&repr);
    assert_eq!(c.flags, ControlFlags::SYN | ControlFlags::ACK);
    assert_eq!(c.ackno, 0xd84cfffe);
    assert_ne!(c.nonce, control(&syn_repr).nonce);
    assert_eq!(&tcp[0..4], &[0, 0, 0, 0], "TCP ports 0");
    assert_eq!(tcp[13] & 0x3f, 0x12, "TCP SYN|ACK");
    let isn = u32::from_be_bytes(syn_tcp[4..8].try_into().unwrap());
    assert_eq!(isn, 0xfae6e4b9);
    assert_eq!(u32::from_be_bytes(tcp[8..12].try_into().unwrap()), isn + 1);
    assert!(verify_transport_checksum(
        TransportProtocol::Stream,
        ip("10.77.1.2"),
        ip("10.77.1.1"),
        &tcp
    ));

    // The retransmission (9 s later) gets the same SYN-ACK, no new flow.
    let (src, dst, ttl, again) = frame(&frames, 2);
    let out = feed(&mut server, src, dst, ttl, &again);
    assert_eq!(out.len(), 1);
    let (repeat, _) = parse(&out[0].payload);
    assert_eq!(control(&repeat).verno, c.verno);
    assert_eq!(server.flows().len(), 1);
}

#[test]
fn a_broadcast_syn_is_never_forwarded_refused_or_answered_by_its_sender() {
    let frames = capture(BROADCAST_SYN);
    let (src, dst, ttl, syn) = frame(&frames, 1);

    // A service router with a rule for the service, no listener.
    let mut router = host(&["10.77.1.2"], router_config());
    router.add_rule(
        ServicePrefix::exact(ref_service()),
        Target::Forward {
            locator: loc("10.77.9.9"),
            weight: 1,
        },
        0,
    );
    assert!(feed(&mut router, src, dst, ttl, &syn).is_empty());
    let stats = router.stats();
    assert_eq!(
        (stats.forwarded, stats.refused, stats.broadcast_dropped),
        (0, 0, 1)
    );

    // A plain host without the service: someone else's SYN.
    let mut other = host(&["10.77.1.3"], HostConfig::default());
    assert!(feed(&mut other, src, dst, ttl, &syn).is_empty());
    assert_eq!(other.stats().refused, 0);

    // The client hears its own broadcast back: nothing, even with the
    // service bound.
    let mut sender = host(&["10.77.1.1"], HostConfig::default());
    sender
        .listen(
            ServicePrefix::exact(ref_service()),
            TransportProtocol::Stream,
            8,
        )
        .unwrap();
    assert!(feed(&mut sender, src, dst, ttl, &syn).is_empty());
    assert_eq!(sender.stats().broadcast_dropped, 1);
    assert!(sender.flows().is_empty());
}

// ---------------------------------------------------------------------------
// reference-datagram-flow.pcap: the reference udp_client_user opens a
// connected datagram flow to us, sends one datagram and closes.

#[test]
fn a_reference_datagram_client_gets_a_flow_with_both_fins() {
    let frames = capture("reference-datagram-flow.pcap");
    let client = ip("10.77.1.1");
    let mut server = host(&["10.77.1.2"], HostConfig::default());
    let listener = server
        .listen(
            ServicePrefix::exact(ref_service()),
            TransportProtocol::Datagram,
            8,
        )
        .unwrap();
    events(&mut server);

    // #1 SYN -> our SYN-ACK.
    let (src, dst, ttl, syn) = frame(&frames, 1);
    let out = feed(&mut server, src, dst, ttl, &syn);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, Locator::Ipv4(client));
    assert_eq!(
        SalPacket::new_checked(&out[0].payload[..]).unwrap().shl(),
        8
    );
    let (repr, udp) = parse(&out[0].payload);
    assert_eq!((repr.protocol, repr.dst_flow), (17, FlowId::new(2)));
    let ours = repr.src_flow.unwrap();
    let c = control(&repr);
    assert_eq!(c.flags, ControlFlags::SYN | ControlFlags::ACK);
    assert_eq!(c.ackno, 0x29dab587);
    assert_eq!(&udp[..6], &[0, 0, 0, 0, 0, 8], "an empty UDP header");
    assert!(
        udp_checksum(&udp) == 0
            || verify_transport_checksum(TransportProtocol::Datagram, dst, client, &udp)
    );
    let (w, nonce) = (c.verno, c.nonce);
    let base = (0x768058a4, w);

    // #3 the handshake ACK: no answer, the flow waits to be accepted.
    let (src, dst, ttl, ack) = frame(&frames, 3);
    assert!(feed(&mut server, src, dst, ttl, &to_our_flow(&ack, ours, base)).is_empty());
    assert!(events(&mut server).contains(&Event::Incoming(listener)));
    assert_eq!(server.accept(listener), Ok(ours));

    // #4 data.
    let (src, dst, ttl, data) = frame(&frames, 4);
    assert!(feed(&mut server, src, dst, ttl, &to_our_flow(&data, ours, base)).is_empty());
    assert_eq!(
        server.recv_datagram(ours),
        Ok(Some(b"hello serval".to_vec()))
    );

    // #5 the reference's FIN: a bare ACK, and end of file for the application.
    let (src, dst, ttl, fin) = frame(&frames, 5);
    let out = feed(&mut server, src, dst, ttl, &to_our_flow(&fin, ours, base));
    assert_eq!(out.len(), 1);
    let (repr, segment) = parse(&out[0].payload);
    assert!(segment.is_empty());
    assert_eq!(
        SalPacket::new_checked(&out[0].payload[..]).unwrap().shl(),
        8
    );
    let c = control(&repr);
    assert_eq!(c.flags, ControlFlags::ACK, "exactly ACK");
    assert_eq!((c.verno, c.ackno, c.nonce), (w + 1, 0x29dab588, nonce));
    assert_eq!(server.recv_datagram(ours), Ok(None));

    // Our application closes: our own FIN, numbered like the ACK.
    server.close(ours).unwrap();
    let out = sent(&mut server);
    assert_eq!(out.len(), 1);
    let (repr, segment) = parse(&out[0].payload);
    assert!(segment.is_empty());
    let c = control(&repr);
    assert_eq!(c.flags, ControlFlags::FIN, "exactly FIN");
    assert_eq!((c.verno, c.ackno, c.nonce), (w + 1, 0x29dab588, nonce));

    // The reference's ACK of it (as in serval-reference.pcap #56) ends the flow.
    let mut reference_ack = SalRepr::data(FlowId::new(2).unwrap(), Some(ours), 17);
    reference_ack.control = Some(ControlRepr {
        flags: ControlFlags::ACK,
        verno: 0x29dab588,
        ackno: w + 2,
        nonce: [0xb9, 0x0f, 0x7d, 0xf1, 0x73, 0x07, 0xd4, 0xf8],
    });
    let mut bytes = vec![0u8; reference_ack.header_len()];
    reference_ack.emit(&mut bytes).unwrap();
    assert!(feed(&mut server, client, ip("10.77.1.2"), 64, &bytes).is_empty());
    assert!(events_after_linger(&mut server).contains(&Event::Closed(ours)));

    // #7, a stray TCP FIN of an older flow.
    let unknown = server.stats().unknown_flow;
    let (src, dst, ttl, stray) = frame(&frames, 7);
    assert!(feed(&mut server, dst, src, ttl, &stray).is_empty());
    assert_eq!(server.stats().unknown_flow, unknown + 1);
}

// ---------------------------------------------------------------------------
// serval-reference.pcap #42-#56: the reference's connected datagram flow,
// found by broadcast; our client in the reference client's place.

#[test]
fn our_datagram_client_speaks_the_reference_flow() {
    let frames = capture("serval-reference.pcap");
    let server = ip("10.77.0.2");
    let mut client = host(&["10.77.0.1"], discovery_config());
    let flow = client
        .connect(ref_service(), TransportProtocol::Datagram)
        .unwrap();

    // The SYN: no rule, so by broadcast, exactly as #42 (the reference's
    // default rule does the same).
    let out = sent(&mut client);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].src, out[0].dst, out[0].kind),
        (
            loc("10.77.0.1"),
            loc("10.77.0.255"),
            TransmitKind::Broadcast
        )
    );
    let (_, _, _, ref_syn) = frame(&frames, 42);
    assert_eq!(layout(&out[0].payload), layout(&ref_syn));
    let (repr, udp) = parse(&out[0].payload);
    let (_, ref_udp) = parse(&ref_syn);
    assert_eq!(udp, ref_udp, "UDP header and checksum byte for byte");
    assert_eq!((repr.dst_flow, repr.src_flow), (None, Some(flow)));
    assert_eq!(repr.service, Some(ref_service()));
    let c = control(&repr);
    assert_eq!((c.flags, c.ackno), (ControlFlags::SYN, 0));
    let (a, nonce) = (c.verno, c.nonce);
    let base = (0xd1d9ca43, a);

    // #43 SYN-ACK -> connected, and the handshake ACK as #44.
    let (src, dst, ttl, syn_ack) = frame(&frames, 43);
    let out = feed(
        &mut client,
        src,
        dst,
        ttl,
        &to_our_flow(&syn_ack, flow, base),
    );
    assert!(events(&mut client).contains(&Event::Connected(flow)));
    assert_eq!(
        client.flow(flow).unwrap().remote,
        Some(Locator::Ipv4(server))
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, Locator::Ipv4(server));
    let (_, _, _, ref_ack) = frame(&frames, 44);
    assert_eq!(layout(&out[0].payload), layout(&ref_ack));
    let (repr, udp) = parse(&out[0].payload);
    assert_eq!(repr.dst_flow, FlowId::new(6));
    assert_eq!(repr.service, Some(ref_service()));
    let c = control(&repr);
    assert_eq!(c.flags, ControlFlags::ACK);
    assert_eq!((c.verno, c.ackno, c.nonce), (a + 1, 0x590c8f6e, nonce));
    assert_eq!(&udp[..6], &[0, 0, 0, 0, 0, 8]);

    // Data as #45, byte for byte below the SAL header.
    client.send_datagram(flow, b"hello serval").unwrap();
    let out = sent(&mut client);
    let (_, _, _, ref_data) = frame(&frames, 45);
    assert_eq!(
        SalPacket::new_checked(&out[0].payload[..]).unwrap().shl(),
        3
    );
    assert_eq!(parse(&out[0].payload).1, parse(&ref_data).1);

    // #46 the echo.
    let (src, dst, ttl, echo) = frame(&frames, 46);
    feed(&mut client, src, dst, ttl, &to_our_flow(&echo, flow, base));
    assert_eq!(
        client.recv_datagram(flow),
        Ok(Some(b"HELLO SERVAL".to_vec()))
    );

    // #53 the server's FIN -> our ACK as #54; our close -> our FIN as #55.
    let (src, dst, ttl, fin) = frame(&frames, 53);
    let out = feed(&mut client, src, dst, ttl, &to_our_flow(&fin, flow, base));
    assert_eq!(out.len(), 1);
    let c = control(&parse(&out[0].payload).0);
    assert_eq!(
        (c.flags, c.verno, c.ackno),
        (ControlFlags::ACK, a + 1, 0x590c8f6f)
    );
    assert_eq!(client.recv_datagram(flow), Ok(None));
    client.close(flow).unwrap();
    let out = sent(&mut client);
    assert_eq!(out.len(), 1);
    let c = control(&parse(&out[0].payload).0);
    assert_eq!(
        (c.flags, c.verno, c.ackno),
        (ControlFlags::FIN, a + 1, 0x590c8f6f)
    );

    // #56 the server's ACK of our FIN ends the flow.
    let (src, dst, ttl, last) = frame(&frames, 56);
    assert!(feed(&mut client, src, dst, ttl, &to_our_flow(&last, flow, base)).is_empty());
    assert!(events_after_linger(&mut client).contains(&Event::Closed(flow)));
}

// ---------------------------------------------------------------------------
// reference-datagram-reset.pcap: our unconnected datagrams, and the reset
// with which a reference listener refuses them.

#[test]
fn unconnected_datagrams_have_the_reference_form_and_resets_refuse_them() {
    let frames = capture("reference-datagram-reset.pcap");
    let reference = ip("10.77.1.1");
    let mut client = host(&["10.77.1.2"], HostConfig::default());
    client.add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: Locator::Ipv4(reference),
            weight: 1,
        },
        0,
    );
    let socket = client.open_datagram().unwrap();
    assert!(
        events(&mut client).is_empty(),
        "an unbound socket registers nothing"
    );
    let own = client.datagram_service(socket).unwrap();
    assert_ne!(own, ServiceId::ZERO);
    let listed = client.table().get(&ServicePrefix::exact(own)).unwrap();
    let Target::Demux { listener } = listed.targets()[0].target else {
        panic!("the socket's own ID is a DEMUX rule");
    };
    assert!(client.is_ephemeral(listener));

    client
        .send_to(socket, ref_service(), b"hello serval\n")
        .unwrap();
    let out = sent(&mut client);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, Locator::Ipv4(reference));
    // The reference form (ref-unconnected-datagrams-broadcast #1): base,
    // SERVICE(destination), SERVICE(sender), UDP.
    assert_eq!(layout(&out[0].payload), layout(&hex(REF_UNCONNECTED_BOUND)));
    let (repr, udp) = parse(&out[0].payload);
    assert_eq!(
        (repr.src_flow, repr.dst_flow, repr.control),
        (Some(socket), None, None)
    );
    assert_eq!(
        (repr.service, repr.source_service),
        (Some(ref_service()), Some(own))
    );
    // Same addresses and payload as the capture's #1: the same segment.
    let (_, _, _, captured) = frame(&frames, 1);
    assert_eq!(udp, parse(&captured).1);
    client.send_to(socket, ref_service(), b"quit\n").unwrap();
    let (again, _) = parse(&sent(&mut client)[0].payload);
    assert_eq!(
        again.source_service,
        Some(own),
        "one ID for the socket's life"
    );

    // #2, the reference's ACK|RST (flow 0, all zero): a refusal, once.
    let (src, dst, ttl, reset) = frame(&frames, 2);
    let reset = rewrite(&reset, |r| r.dst_flow = Some(socket));
    let before = client.stats();
    assert!(feed(&mut client, src, dst, ttl, &reset).is_empty());
    let after = client.stats();
    assert_eq!(
        (after.malformed, after.stale),
        (before.malformed, before.stale)
    );
    assert_eq!(after.datagram_refused, 1);
    assert!(events(&mut client).contains(&Event::Datagram(socket)));
    assert_eq!(
        client.recv_from(socket),
        Err(HostError::Connect(ConnectError::Refused))
    );
    assert_eq!(client.recv_from(socket), Err(HostError::WouldBlock));

    // The same reset from a host the socket never sent to: ignored.
    feed(&mut client, ip("10.77.1.3"), dst, ttl, &reset);
    assert_eq!(client.stats().stale, after.stale + 1);
    assert_eq!(client.recv_from(socket), Err(HostError::WouldBlock));

    // Closing the socket withdraws its ID.
    client.close_datagram(socket).unwrap();
    assert!(client.table().get(&ServicePrefix::exact(own)).is_none());
    assert!(events(&mut client).is_empty(), "no Unregistered either");
}

#[test]
fn resets_from_a_broadcast_address_do_not_refuse_a_broadcast_datagram() {
    let frames = capture("reference-datagram-reset.pcap");
    let mut client = host(&["10.77.1.2"], discovery_config());
    let socket = client.open_datagram().unwrap();
    client.send_to(socket, ref_service(), b"anyone?").unwrap();
    let out = sent(&mut client);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].dst, out[0].kind),
        (loc("10.77.1.255"), TransmitKind::Broadcast)
    );
    let (_, udp) = parse(&out[0].payload);
    assert!(verify_transport_checksum(
        TransportProtocol::Datagram,
        ip("10.77.1.2"),
        ip("10.77.1.255"),
        &udp
    ));
    // A reference host without the service answers with the broadcast
    // address as source (serval_sal_send_reset).
    let (_, dst, ttl, reset) = frame(&frames, 2);
    let reset = rewrite(&reset, |r| r.dst_flow = Some(socket));
    feed(&mut client, ip("10.77.1.255"), dst, ttl, &reset);
    assert_eq!(client.recv_from(socket), Err(HostError::WouldBlock));
    assert_eq!(client.stats().datagram_refused, 0);
}

// ---------------------------------------------------------------------------
// ref-unconnected-datagrams-broadcast: the reference's own unconnected
// datagrams, broadcast by a socket bound to 0006 (#1) and by an unbound
// one (#2, random service ID), and our answer to them.

/// `ref-unconnected-datagrams-broadcast.pcap` #1, 10.77.1.1 -> 10.77.1.255
/// (SAL packet): src_flow 4, shl 21, SERVICE(0007), SERVICE(0006), UDP
/// ports 0, length 23, checksum 0x8a7e, `ref-unconnected`.
const REF_UNCONNECTED_BOUND: &str =
    "00000004000000001511aa952024000000070000000000000000000000000000\
     0000000000000000000000000000000020240000000600000000000000000000\
     00000000000000000000000000000000000000000000000000178a7e7265662d\
     756e636f6e6e6563746564";
/// #2 of the same capture: src_flow 5, the sender's service is a random
/// 256-bit ID (`serval_autobind`).
const REF_UNCONNECTED_AUTOBOUND: &str =
    "0000000500000000151120e92024000000070000000000000000000000000000\
     0000000000000000000000000000000020240000\
     83e6c0fd6a736822cb645b0822c4f8b9dbcf7672095fa037d23ab7e0399b70bc\
     0000000000178a7e7265662d756e636f6e6e6563746564";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn reference_datagrams_are_delivered_with_their_sender_and_answered_in_kind() {
    let (sender, broadcast) = (ip("10.77.1.1"), ip("10.77.1.255"));
    let mut receiver = host(&["10.77.1.3"], HostConfig::default());
    let listener = receiver
        .listen(
            ServicePrefix::exact(svc("0007")),
            TransportProtocol::Datagram,
            8,
        )
        .unwrap();
    let socket = receiver.listener_socket(listener).unwrap();
    assert_eq!(receiver.datagram_service(socket), Some(svc("0007")));

    assert!(feed(
        &mut receiver,
        sender,
        broadcast,
        64,
        &hex(REF_UNCONNECTED_BOUND)
    )
    .is_empty());
    let got = receiver.recv_from(socket).unwrap();
    assert_eq!(got.data, b"ref-unconnected");
    assert_eq!(got.service, Some(svc("0007")));
    assert_eq!(got.peer.locator, Locator::Ipv4(sender));
    assert_eq!(got.peer.flow, FlowId::new(4).unwrap());
    assert_eq!(got.peer.service, Some(svc("0006")));

    feed(
        &mut receiver,
        sender,
        broadcast,
        64,
        &hex(REF_UNCONNECTED_AUTOBOUND),
    );
    let autobound = receiver.recv_from(socket).unwrap();
    assert_eq!(
        autobound.peer.service,
        Some(svc(
            "83e6c0fd6a736822cb645b0822c4f8b9dbcf7672095fa037d23ab7e0399b70bc"
        ))
    );

    // The answer: what the reference's init_state_process delivers (the form
    // of fix-two-service-datagram-accepted-by-ref.pcap, which a reference
    // recv_udp_packet_user took): to the sender's service at its address,
    // no destination flow, both services.
    receiver.send_reply(socket, got.peer, b"back").unwrap();
    let out = sent(&mut receiver);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].src, out[0].dst, out[0].kind),
        (loc("10.77.1.3"), Locator::Ipv4(sender), TransmitKind::Own)
    );
    assert_eq!(
        SalPacket::new_checked(&out[0].payload[..]).unwrap().shl(),
        21
    );
    let (repr, udp) = parse(&out[0].payload);
    assert_eq!((repr.src_flow, repr.dst_flow), (Some(socket), None));
    assert_eq!(repr.service, Some(svc("0006")));
    assert_eq!(repr.source_service, Some(svc("0007")));
    assert!(verify_transport_checksum(
        TransportProtocol::Datagram,
        ip("10.77.1.3"),
        sender,
        &udp
    ));

    // A service router with a rule for 0007 does not forward the broadcast.
    let mut router = host(&["10.77.1.4"], router_config());
    router.add_rule(
        ServicePrefix::exact(svc("0007")),
        Target::Forward {
            locator: loc("10.77.1.3"),
            weight: 1,
        },
        0,
    );
    assert!(feed(
        &mut router,
        sender,
        broadcast,
        64,
        &hex(REF_UNCONNECTED_BOUND)
    )
    .is_empty());
    assert_eq!(router.stats().broadcast_dropped, 1);
}

#[test]
fn replies_in_the_reference_form_reach_an_unbound_socket() {
    let mut a = host(&["10.77.1.2"], HostConfig::default());
    a.add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: loc("10.77.1.3"),
            weight: 1,
        },
        0,
    );
    let mut b = host(&["10.77.1.3"], HostConfig::default());
    let listener = b
        .listen(
            ServicePrefix::exact(svc("0007")),
            TransportProtocol::Datagram,
            8,
        )
        .unwrap();
    let served = b.listener_socket(listener).unwrap();
    let socket = a.open_datagram().unwrap();
    a.send_to(socket, svc("0007"), b"ping").unwrap();
    let out = sent(&mut a);
    feed(
        &mut b,
        ip("10.77.1.2"),
        ip("10.77.1.3"),
        64,
        &out[0].payload,
    );
    let got = b.recv_from(served).unwrap();
    assert_eq!(got.peer.service, a.datagram_service(socket));
    b.send_reply(served, got.peer, b"pong").unwrap();
    let reply = sent(&mut b);
    feed(
        &mut a,
        ip("10.77.1.3"),
        ip("10.77.1.2"),
        64,
        &reply[0].payload,
    );
    let answer = a.recv_from(socket).unwrap();
    assert_eq!(answer.data, b"pong");
    assert_eq!(answer.peer.service, Some(svc("0007")));
}

// ---------------------------------------------------------------------------
// reference-router-forwarded.pcap: a reference service router's output.

const ROUTED: &str = "reference-router-forwarded.pcap";

/// The client's SYN as it reached the router (before the router added
/// SOURCE): #1 without SOURCE, to 10.77.2.254, TCP checksum for that.
fn client_syn(frames: &[Option<Vec<u8>>]) -> Vec<u8> {
    let (src, dst, _, routed) = frame(frames, 1);
    let mut syn = rewrite(&routed, |r| r.source = None);
    let header = SalPacket::new_checked(&syn[..]).unwrap().header_len();
    readdress_transport_checksum(
        TransportProtocol::Stream,
        &mut syn[header..],
        (src, dst),
        (src, ip("10.77.2.254")),
    );
    syn
}

fn router_to(next: &str, addrs: &[&str]) -> Host {
    let mut router = host(addrs, router_config());
    router.add_rule(
        ServicePrefix::exact(ref_service()),
        Target::Forward {
            locator: loc(next),
            weight: 1,
        },
        0,
    );
    router
}

#[test]
fn our_router_forwards_byte_for_byte_as_the_reference_router() {
    let frames = capture(ROUTED);
    let (_, _, ref_ttl, routed) = frame(&frames, 1);
    let syn = client_syn(&frames);
    assert_eq!(SalPacket::new_checked(&syn[..]).unwrap().shl(), 17);
    let mut router = router_to("10.77.3.1", &["10.77.2.254", "10.77.3.254"]);
    let out = feed(&mut router, ip("10.77.2.1"), ip("10.77.2.254"), 64, &syn);
    assert_eq!(out.len(), 1);
    let relayed = &out[0];
    assert_eq!(
        (relayed.src, relayed.dst, relayed.kind),
        (loc("10.77.2.1"), loc("10.77.3.1"), TransmitKind::Relay),
        "the client's address stays the source"
    );
    assert_eq!((relayed.ttl, ref_ttl), (63, 63), "one hop, one TTL");
    assert_eq!(relayed.payload, routed, "the reference router's packet");
    assert_eq!(router.stats().forwarded, 1);

    // The packet back at the same router (SOURCE already holds it): a loop.
    assert!(feed(&mut router, ip("10.77.2.1"), ip("10.77.2.254"), 63, &routed).is_empty());
    assert_eq!(router.stats().loop_dropped, 1);

    // No TTL left: dropped.
    assert!(feed(&mut router, ip("10.77.2.1"), ip("10.77.2.254"), 1, &syn).is_empty());
    assert_eq!(router.stats().ttl_expired, 1);
}

#[test]
fn a_second_router_appends_the_address_it_was_reached_at() {
    let frames = capture(ROUTED);
    let (src, dst, ttl, routed) = frame(&frames, 1);
    let mut second = router_to("10.77.4.1", &["10.77.3.1", "10.77.4.254"]);
    let out = feed(&mut second, src, dst, ttl, &routed);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].src, out[0].dst, out[0].ttl),
        (loc("10.77.2.1"), loc("10.77.4.1"), 62)
    );
    assert_eq!(
        SalPacket::new_checked(&out[0].payload[..]).unwrap().shl(),
        21
    );
    let (repr, tcp) = parse(&out[0].payload);
    let hops: Vec<Ipv4Addr> = repr.source.unwrap().addrs.to_vec();
    assert_eq!(hops, [ip("10.77.2.1"), ip("10.77.2.254"), ip("10.77.3.1")]);
    assert!(verify_transport_checksum(
        TransportProtocol::Stream,
        ip("10.77.2.1"),
        ip("10.77.4.1"),
        &tcp
    ));
}

#[test]
fn our_server_answers_a_routed_syn_directly_with_the_path_echoed() {
    let frames = capture(ROUTED);
    let (src, dst, ttl, routed) = frame(&frames, 1);
    let mut server = host(&["10.77.3.1"], HostConfig::default());
    server
        .listen(
            ServicePrefix::exact(ref_service()),
            TransportProtocol::Stream,
            8,
        )
        .unwrap();
    let out = feed(&mut server, src, dst, ttl, &routed);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].src, out[0].dst),
        (loc("10.77.3.1"), loc("10.77.2.1"))
    );
    // The reference server's form (fix-router-form-at-ref-server #2):
    // base, CONTROL, SOURCE of three addresses; shl 12.
    assert_eq!(
        SalPacket::new_checked(&out[0].payload[..]).unwrap().shl(),
        12
    );
    assert_eq!(
        layout(&out[0].payload),
        [(ExtensionKind::Control, 20), (ExtensionKind::Source, 16)]
    );
    let (repr, tcp) = parse(&out[0].payload);
    assert_eq!(repr.dst_flow, FlowId::new(3));
    assert_eq!(control(&repr).ackno, 0xcad42b05);
    let hops: Vec<Ipv4Addr> = repr.source.unwrap().addrs.to_vec();
    assert_eq!(hops, [ip("10.77.2.1"), ip("10.77.2.254"), ip("10.77.3.1")]);
    assert!(verify_transport_checksum(
        TransportProtocol::Stream,
        ip("10.77.3.1"),
        ip("10.77.2.1"),
        &tcp
    ));
}

#[test]
fn our_client_takes_a_syn_ack_that_carries_the_path() {
    let mut client = host(&["10.77.2.1"], HostConfig::default());
    client.add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: loc("10.77.2.254"),
            weight: 1,
        },
        0,
    );
    let flow = client
        .connect(ref_service(), TransportProtocol::Datagram)
        .unwrap();
    let syn = sent(&mut client);
    assert_eq!(syn[0].dst, loc("10.77.2.254"));
    let verno = control(&parse(&syn[0].payload).0).verno;
    // A reference server's SYN-ACK through the router: CONTROL, SOURCE of
    // three addresses, an empty UDP header with checksum 0.
    let mut syn_ack = SalRepr::data(FlowId::new(4).unwrap(), Some(flow), 17);
    syn_ack.control = Some(ControlRepr {
        flags: ControlFlags::SYN | ControlFlags::ACK,
        verno: 0xc78c9ae5,
        ackno: verno.wrapping_add(1),
        nonce: [0xef, 0x8c, 0xf1, 0xae, 0x20, 0x30, 0x47, 0x89],
    });
    let mut source = SourceRepr::default();
    for hop in ["10.77.2.1", "10.77.2.254", "10.77.3.1"] {
        source.addrs.push(ip(hop));
    }
    syn_ack.source = Some(source);
    let mut bytes = vec![0u8; syn_ack.header_len() + 8];
    let len = syn_ack.emit(&mut bytes).unwrap();
    bytes[len + 5] = 8;
    let out = feed(&mut client, ip("10.77.3.1"), ip("10.77.2.1"), 63, &bytes);
    assert!(events(&mut client).contains(&Event::Connected(flow)));
    assert_eq!(client.flow(flow).unwrap().remote, Some(loc("10.77.3.1")));
    assert_eq!(out.len(), 1, "the handshake ACK");
    assert_eq!(out[0].dst, loc("10.77.3.1"));
}

// ---------------------------------------------------------------------------
// Broadcast discovery on the client side, several interfaces.

#[test]
fn discovery_broadcasts_on_every_interface_and_the_first_answer_wins() {
    let mut client = host(&["10.77.1.2", "10.77.5.2"], discovery_config());
    let flow = client
        .connect(ref_service(), TransportProtocol::Datagram)
        .unwrap();
    let out = sent(&mut client);
    let targets: Vec<_> = out.iter().map(|t| (t.src, t.dst, t.kind)).collect();
    assert_eq!(
        targets,
        [
            (
                loc("10.77.1.2"),
                loc("10.77.1.255"),
                TransmitKind::Broadcast
            ),
            (
                loc("10.77.5.2"),
                loc("10.77.5.255"),
                TransmitKind::Broadcast
            )
        ]
    );
    // The same SAL header; each segment checksummed for its own addresses.
    let (first, first_udp) = parse(&out[0].payload);
    let (second, second_udp) = parse(&out[1].payload);
    assert_eq!(first, second);
    for (t, udp) in out.iter().zip([&first_udp, &second_udp]) {
        assert!(verify_transport_checksum(
            TransportProtocol::Datagram,
            t.src.ip(),
            t.dst.ip(),
            udp
        ));
    }
    // Retransmissions go out on both again.
    client.poll(Instant::from_millis(600));
    let again = drain(&mut client);
    assert_eq!(again.len(), 2);

    // A server on the second link answers: the flow lives there.
    let c = control(&first);
    let mut syn_ack = SalRepr::data(FlowId::new(9).unwrap(), Some(flow), 17);
    syn_ack.control = Some(ControlRepr {
        flags: ControlFlags::SYN | ControlFlags::ACK,
        verno: 77,
        ackno: c.verno.wrapping_add(1),
        nonce: [7; 8],
    });
    let mut bytes = vec![0u8; syn_ack.header_len() + 8];
    let len = syn_ack.emit(&mut bytes).unwrap();
    bytes[len + 5] = 8;
    feed(&mut client, ip("10.77.5.9"), ip("10.77.5.2"), 64, &bytes);
    let info = client.flow(flow).unwrap();
    assert_eq!(
        (info.local, info.remote),
        (loc("10.77.5.2"), Some(loc("10.77.5.9")))
    );
    assert!(events(&mut client).contains(&Event::Connected(flow)));

    // Without discovery, no rule is no route.
    let mut quiet = host(&["10.77.1.2"], HostConfig::default());
    assert_eq!(
        quiet.connect(ref_service(), TransportProtocol::Datagram),
        Err(HostError::Connect(ConnectError::NoRoute))
    );
}

// ---------------------------------------------------------------------------
// Half-closed datagram flows: each side's FIN says it is done sending (as
// the reference stack's), not that it stopped listening.

/// Moves packets between two hosts until neither sends anything.
fn exchange(a: &mut Host, b: &mut Host) {
    for _ in 0..16 {
        let (to_b, to_a) = (sent(a), sent(b));
        if to_b.is_empty() && to_a.is_empty() {
            return;
        }
        for t in to_b {
            b.handle_packet(now(), t.src, t.dst, t.ttl, &t.payload);
        }
        for t in to_a {
            a.handle_packet(now(), t.src, t.dst, t.ttl, &t.payload);
        }
    }
    panic!("the hosts never went quiet");
}

#[test]
fn a_datagram_flow_receives_after_its_own_fin() {
    let mut a = host(&["10.77.1.1"], HostConfig::default());
    let mut b = host(&["10.77.1.2"], HostConfig::default());
    a.add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: loc("10.77.1.2"),
            weight: 1,
        },
        0,
    );
    let listener = b
        .listen(
            ServicePrefix::exact(ref_service()),
            TransportProtocol::Datagram,
            8,
        )
        .unwrap();
    let client = a
        .connect(ref_service(), TransportProtocol::Datagram)
        .unwrap();
    exchange(&mut a, &mut b);
    let server = b.accept(listener).unwrap();

    a.send_datagram(client, b"question").unwrap();
    a.shutdown(client).unwrap();
    exchange(&mut a, &mut b);
    assert_eq!(b.recv_datagram(server), Ok(Some(b"question".to_vec())));
    assert_eq!(b.recv_datagram(server), Ok(None), "the client's FIN");
    assert_eq!(a.send_datagram(client, b"more"), Err(HostError::SendClosed));

    b.send_datagram(server, b"answer").unwrap();
    b.close(server).unwrap();
    exchange(&mut a, &mut b);
    assert_eq!(a.recv_datagram(client), Ok(Some(b"answer".to_vec())));
    assert_eq!(a.recv_datagram(client), Ok(None), "the server's FIN");
    assert!(events_after_linger(&mut b).contains(&Event::Closed(server)));
    assert!(a.flow(client).is_some(), "until the application closes it");
    a.close(client).unwrap();
    exchange(&mut a, &mut b);
    assert!(events_after_linger(&mut a).contains(&Event::Closed(client)));
}
