//! Wire compatibility with the original Serval stack: the reference capture's
//! SYN, replayed into our server, must draw a SYN-ACK that a reference client
//! would accept; and the SYN our client sends must have the reference layout.

mod common;

use std::net::Ipv4Addr;

use sal::proto::{Host, HostConfig, LocalInterface};
use sal::time::Instant;
use sal::wire::{
    ipv4_payload, verify_transport_checksum, ControlFlags, SalPacket, SalRepr, TransportProtocol,
};
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_sim::Packet;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

fn host(ip: Ipv4Addr) -> Host {
    let mut host = Host::new(HostConfig::default(), Instant::from_millis(0));
    host.add_interface(LocalInterface {
        name: "veth0".into(),
        locator: Locator::Ipv4(ip),
        prefix_len: 24,
        up: true,
    });
    host
}

/// TCP MSS option value of a SYN or SYN-ACK segment.
fn mss(segment: &[u8]) -> Option<u16> {
    let header = usize::from(segment[12] >> 4) * 4;
    let mut options = &segment[20..header];
    while let [kind, rest @ ..] = options {
        match kind {
            0 => return None,
            1 => options = rest,
            2 => return Some(u16::from_be_bytes([rest[1], rest[2]])),
            _ => options = &options[usize::from(rest[0]).max(2)..],
        }
    }
    None
}

#[test]
fn reference_syn_draws_a_conforming_syn_ack() {
    let packets = common::reference_ipv4_packets();
    let (carriage, syn_bytes) = ipv4_payload(&packets[0]).unwrap();
    assert_eq!(
        carriage.dst,
        Ipv4Addr::new(10, 77, 0, 255),
        "the SYN is the broadcast one"
    );
    let syn = SalRepr::parse(&SalPacket::new_checked(syn_bytes).unwrap()).unwrap();
    let syn_control = syn.control.unwrap();
    let syn_tcp = SalPacket::new_checked(syn_bytes)
        .unwrap()
        .payload()
        .to_vec();

    let mut server = host(SERVER);
    let service: ServiceId = "00004001".parse().unwrap();
    server
        .listen(ServicePrefix::exact(service), TransportProtocol::Stream, 8)
        .unwrap();
    let now = Instant::from_millis(1);
    server.handle_packet(
        now,
        Locator::Ipv4(carriage.src),
        Locator::Ipv4(carriage.dst),
        carriage.ttl,
        syn_bytes,
    );
    server.poll(now);
    let mut buffer = vec![0; Packet::MAX_LEN];
    let reply = Packet::next_from(&mut server, now, &mut buffer).expect("a SYN-ACK");
    assert!(
        Packet::next_from(&mut server, now, &mut buffer).is_none(),
        "exactly one packet"
    );

    // Straight back to the client, from the server's own address.
    assert_eq!(reply.src, Locator::Ipv4(SERVER));
    assert_eq!(reply.dst, Locator::Ipv4(CLIENT));
    let packet = SalPacket::new_checked(&reply.payload[..]).unwrap();
    assert!(packet.verify_checksum());
    assert_eq!(
        packet.shl(),
        8,
        "base header + CONTROL, like the reference SYN-ACK"
    );
    let repr = SalRepr::parse(&packet).unwrap();
    assert_eq!(
        repr.dst_flow,
        FlowId::new(2),
        "addressed to the client's flow"
    );
    assert_eq!(repr.protocol, 6);
    assert!(repr.service.is_none() && repr.source.is_none() && repr.address.is_none());
    let control = repr.control.unwrap();
    assert_eq!(control.flags, ControlFlags::SYN | ControlFlags::ACK);
    assert_eq!(control.ackno, syn_control.verno.wrapping_add(1));
    assert_ne!(
        control.nonce, syn_control.nonce,
        "the server announces its own nonce"
    );

    // The piggybacked TCP SYN-ACK: ports 0, acknowledging the client's ISN,
    // MSS 1448, checksummed over the real addresses.
    let tcp = packet.payload();
    assert_eq!(&tcp[0..4], &[0, 0, 0, 0]);
    assert_eq!(tcp[13] & 0x3f, 0x12, "SYN|ACK");
    let client_isn = u32::from_be_bytes(syn_tcp[4..8].try_into().unwrap());
    let ack = u32::from_be_bytes(tcp[8..12].try_into().unwrap());
    assert_eq!(ack, client_isn.wrapping_add(1));
    assert_eq!(mss(tcp), Some(1448));
    assert!(verify_transport_checksum(
        TransportProtocol::Stream,
        SERVER,
        CLIENT,
        tcp
    ));
}

#[test]
fn our_syn_has_the_reference_layout() {
    let packets = common::reference_ipv4_packets();
    let (_, reference) = ipv4_payload(&packets[0]).unwrap();
    let reference = SalPacket::new_checked(reference).unwrap();

    let mut client = host(CLIENT);
    client.add_rule(
        ServicePrefix::DEFAULT,
        sal::table::Target::Forward {
            locator: Locator::Ipv4(Ipv4Addr::new(10, 77, 0, 255)),
            weight: 1,
        },
        0,
    );
    let service: ServiceId = "00004001".parse().unwrap();
    let flow = client.connect(service, TransportProtocol::Stream).unwrap();
    let now = Instant::from_millis(1);
    client.poll(now);
    let mut buffer = vec![0; Packet::MAX_LEN];
    let syn = Packet::next_from(&mut client, now, &mut buffer).expect("a SYN");
    assert_eq!(syn.dst, Locator::Ipv4(Ipv4Addr::new(10, 77, 0, 255)));
    let packet = SalPacket::new_checked(&syn.payload[..]).unwrap();
    assert_eq!(packet.shl(), reference.shl(), "base + CONTROL + SERVICE");
    assert_eq!(packet.dst_flow_id(), 0);
    assert_eq!(packet.src_flow_id(), flow.get());
    // Same extension types, lengths and order as the reference SYN.
    let layout = |p: &SalPacket<&[u8]>| -> Vec<(sal::wire::ExtensionKind, usize)> {
        p.extensions()
            .map(|e| e.map(|e| (e.kind, e.bytes.len())).unwrap())
            .collect()
    };
    assert_eq!(layout(&packet), layout(&reference));
    let repr = SalRepr::parse(&packet).unwrap();
    assert_eq!(repr.control.unwrap().flags, ControlFlags::SYN);
    assert_eq!(repr.control.unwrap().ackno, 0);
    assert_eq!(repr.service, Some(service));
    let tcp = packet.payload();
    assert_eq!(&tcp[0..4], &[0, 0, 0, 0]);
    assert_eq!(tcp[13] & 0x3f, 0x02, "SYN");
    assert_eq!(mss(tcp), Some(1448));
    assert!(verify_transport_checksum(
        TransportProtocol::Stream,
        CLIENT,
        Ipv4Addr::new(10, 77, 0, 255),
        tcp
    ));
}
