//! Conformance against the reference capture (WIRE.md, "Reference capture"):
//! packets from the original Serval user-level stack, a TCP flow and a
//! datagram flow between 10.77.0.1 (client) and 10.77.0.2 (server).
//!
//! Every SAL packet must parse with its checksum verified, re-emit to the same
//! header bytes, and pass the transport checksum over the real IPv4 addresses.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;

use pcap_file::pcap::PcapReader;
use sal::wire::{
    ipv4_payload, verify_transport_checksum, ControlFlags, ControlRepr, Error, SalPacket, SalRepr,
    TransportProtocol, BASE_HEADER_LEN,
};
use sal::ServiceId;

const CAPTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/vectors/serval-reference.pcap"
);

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const BROADCAST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 255);
const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const TCP_PAYLOAD_BYTES: usize = 20_000;

/// One SAL packet of the capture, decoded.
#[derive(Debug, Clone)]
struct Captured {
    /// 1-based frame number in the capture, for messages.
    frame: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    shl: u8,
    repr: SalRepr,
    /// The transport segment after the SAL header (empty for SAL-only packets).
    segment: Vec<u8>,
}

impl Captured {
    fn protocol(&self) -> TransportProtocol {
        TransportProtocol::from_number(self.repr.protocol).expect("protocol 6 or 17")
    }

    fn sent_by_client(&self) -> bool {
        self.src == CLIENT
    }

    fn flags(&self) -> Option<ControlFlags> {
        self.repr.control.map(|c| c.flags)
    }

    /// Application bytes carried by the transport segment.
    fn app_payload(&self) -> &[u8] {
        if self.segment.is_empty() {
            return &[];
        }
        match self.protocol() {
            TransportProtocol::Stream => {
                let data_offset = usize::from(self.segment[12] >> 4) * 4;
                &self.segment[data_offset..]
            }
            TransportProtocol::Datagram => &self.segment[8..],
        }
    }

    fn kind(&self) -> &'static str {
        let Some(flags) = self.flags() else {
            return "data";
        };
        let transport = !self.segment.is_empty();
        match (flags.bits(), transport) {
            (0x80, _) => "SYN",
            (0xa0, _) => "SYN-ACK",
            (0x20, true) => "ACK (handshake)",
            (0x20, false) => "ACK (SAL-only)",
            (0x04, false) => "FIN (SAL-only)",
            _ => "other control",
        }
    }
}

/// Reads the capture and checks every packet's framing, checksums and
/// re-emission; returns the SAL packets and the number of frames skipped.
fn load() -> (Vec<Captured>, BTreeMap<u16, usize>) {
    let file = File::open(CAPTURE).unwrap_or_else(|e| {
        panic!(
            "cannot open the reference capture {CAPTURE}: {e}. It lives in the shared \
             vectors directory beside the workspace (../shared/vectors/ from the \
             workspace root); CI provides it."
        )
    });
    let mut reader = PcapReader::new(file).expect("valid pcap header");
    let mut packets = Vec::new();
    let mut skipped = BTreeMap::new();
    let mut frame = 0;
    while let Some(pcap_packet) = reader.next_packet() {
        let pcap_packet = pcap_packet.expect("valid pcap record");
        frame += 1;
        let data = &pcap_packet.data[..];
        assert_eq!(
            data.len(),
            pcap_packet.orig_len as usize,
            "frame {frame} was cut by the snap length"
        );
        assert!(data.len() >= ETHERNET_HEADER_LEN, "frame {frame} too short");
        let ethertype = u16::from_be_bytes([data[12], data[13]]);
        if ethertype != ETHERTYPE_IPV4 {
            *skipped.entry(ethertype).or_default() += 1;
            continue;
        }
        let ip = &data[ETHERNET_HEADER_LEN..];
        let (carriage, sal) = match ipv4_payload(ip) {
            Ok(split) => split,
            Err(Error::NotSal) => {
                // Not expected in this capture, but not a SAL conformance issue.
                *skipped.entry(ethertype).or_default() += 1;
                continue;
            }
            Err(e) => panic!("frame {frame}: IPv4 header rejected: {e}"),
        };
        let packet = SalPacket::new_checked(sal)
            .unwrap_or_else(|e| panic!("frame {frame}: SAL framing rejected: {e}"));
        assert!(
            packet.verify_checksum(),
            "frame {frame}: SAL checksum wrong"
        );
        let repr = SalRepr::parse(&packet)
            .unwrap_or_else(|e| panic!("frame {frame}: SAL header rejected: {e}"));

        // Re-emission reproduces the header exactly, checksum included.
        let mut emitted = vec![0u8; repr.header_len()];
        let len = repr.emit(&mut emitted).expect("emit");
        assert_eq!(len, packet.header_len(), "frame {frame}: header length");
        assert_eq!(
            emitted,
            packet.header(),
            "frame {frame}: re-emitted header differs"
        );

        let captured = Captured {
            frame,
            src: carriage.src,
            dst: carriage.dst,
            shl: packet.shl(),
            repr,
            segment: packet.payload().to_vec(),
        };
        let protocol = captured.protocol();
        if !captured.segment.is_empty() {
            assert!(
                verify_transport_checksum(protocol, carriage.src, carriage.dst, packet.payload()),
                "frame {frame}: transport checksum wrong"
            );
            let segment = &captured.segment;
            assert_eq!(
                &segment[..4],
                &[0, 0, 0, 0],
                "frame {frame}: transport ports are not both 0"
            );
            let udp_checksum_absent =
                protocol == TransportProtocol::Datagram && segment[6..8] == [0, 0];
            if !udp_checksum_absent {
                // The checksum really covers the addresses the packet was sent with.
                let other = Ipv4Addr::new(10, 77, 0, 3);
                assert!(
                    !verify_transport_checksum(protocol, carriage.src, other, segment),
                    "frame {frame}: transport checksum ignores the destination address"
                );
            }
            if protocol == TransportProtocol::Datagram {
                let udp_len = usize::from(u16::from_be_bytes([segment[4], segment[5]]));
                assert_eq!(udp_len, segment.len(), "frame {frame}: UDP length");
            }
        } else {
            // SAL-only packets are control messages (FIN and its ACK).
            assert!(
                captured.repr.control.is_some(),
                "frame {frame}: SAL-only packet without CONTROL"
            );
        }
        packets.push(captured);
    }
    (packets, skipped)
}

/// The packets of one flow, identified by its transport protocol (the capture
/// holds exactly one flow per protocol).
fn flow(packets: &[Captured], protocol: TransportProtocol) -> Vec<&Captured> {
    packets
        .iter()
        .filter(|p| p.protocol() == protocol)
        .collect()
}

/// Checks the handshake of a flow: SYN to the broadcast address, SYN-ACK,
/// ACK; returns (client flow, server flow, client nonce, server nonce).
fn check_handshake(flow: &[&Captured], service: ServiceId) -> (u32, u32, [u8; 8], [u8; 8]) {
    let syn = flow[0];
    let what = format!("{:?} flow", syn.protocol());
    assert_eq!(syn.kind(), "SYN", "{what}: first packet");
    assert_eq!(syn.src, CLIENT);
    assert_eq!(
        syn.dst, BROADCAST,
        "{what}: SYN goes to the broadcast address"
    );
    assert_eq!(syn.repr.dst_flow, None, "{what}: SYN has dst_flowid 0");
    assert_eq!(syn.repr.service, Some(service));
    assert_eq!(syn.repr.address, None);
    assert_eq!(syn.repr.source, None);
    let syn_control = syn.repr.control.unwrap();
    assert_eq!(syn_control.flags, ControlFlags::SYN);
    assert_eq!(syn.shl, 17, "{what}: base + CONTROL + SERVICE");

    let syn_ack = flow[1];
    assert_eq!(syn_ack.kind(), "SYN-ACK", "{what}: second packet");
    assert_eq!((syn_ack.src, syn_ack.dst), (SERVER, CLIENT));
    assert_eq!(syn_ack.repr.dst_flow, syn.repr.src_flow);
    assert_eq!(syn_ack.repr.service, None, "{what}: SYN-ACK has no SERVICE");
    let syn_ack_control = syn_ack.repr.control.unwrap();
    assert_eq!(syn_ack_control.flags, ControlFlags::SYN | ControlFlags::ACK);
    assert_eq!(
        syn_ack_control.ackno,
        syn_control.verno.wrapping_add(1),
        "{what}: SYN-ACK ackno = SYN verno + 1"
    );

    let ack = flow[2];
    assert_eq!(ack.kind(), "ACK (handshake)", "{what}: third packet");
    assert_eq!((ack.src, ack.dst), (CLIENT, SERVER));
    assert_eq!(ack.repr.src_flow, syn.repr.src_flow);
    assert_eq!(ack.repr.dst_flow, syn_ack.repr.src_flow);
    assert_eq!(ack.repr.service, Some(service));
    let ack_control = ack.repr.control.unwrap();
    assert_eq!(ack_control.flags, ControlFlags::ACK);
    assert_eq!(ack_control.verno, syn_control.verno.wrapping_add(1));
    assert_eq!(ack_control.ackno, syn_ack_control.verno.wrapping_add(1));
    assert_ne!(syn_control.nonce, syn_ack_control.nonce);

    (
        syn.repr.src_flow.unwrap().get(),
        syn_ack.repr.src_flow.unwrap().get(),
        syn_control.nonce,
        syn_ack_control.nonce,
    )
}

/// Checks what holds for every packet after the handshake: flow IDs, data
/// packets with shl = 3, sender nonces in every control message, and a FIN
/// from each side, each acknowledged.
fn check_rest_of_flow(flow: &[&Captured], ids: (u32, u32, [u8; 8], [u8; 8])) {
    let (client_flow, server_flow, client_nonce, server_nonce) = ids;
    let mut fins: Vec<(&Captured, ControlRepr)> = Vec::new();
    for p in flow {
        let (src, dst) = if p.sent_by_client() {
            (client_flow, server_flow)
        } else {
            (server_flow, client_flow)
        };
        assert_eq!(
            p.repr.src_flow.unwrap().get(),
            src,
            "frame {}: src flow",
            p.frame
        );
        if p.frame != flow[0].frame {
            assert_eq!(
                p.repr.dst_flow.map(|f| f.get()),
                Some(dst),
                "frame {}: dst flow",
                p.frame
            );
        }
        match p.repr.control {
            None => {
                assert_eq!(p.shl, 3, "frame {}: data packets have shl = 3", p.frame);
                assert_eq!(p.repr.service, None);
                assert!(
                    !p.segment.is_empty(),
                    "frame {}: data without transport",
                    p.frame
                );
            }
            Some(control) => {
                let own = if p.sent_by_client() {
                    client_nonce
                } else {
                    server_nonce
                };
                assert_eq!(control.nonce, own, "frame {}: sender's nonce", p.frame);
                if control.flags.contains(ControlFlags::FIN) {
                    assert!(p.segment.is_empty(), "frame {}: FIN is SAL-only", p.frame);
                    fins.push((p, control));
                }
            }
        }
    }
    for from_client in [true, false] {
        let (fin, fin_control) = fins
            .iter()
            .find(|(p, _)| p.sent_by_client() == from_client)
            .unwrap_or_else(|| {
                panic!(
                    "{:?} flow: no FIN from the {}",
                    flow[0].protocol(),
                    if from_client { "client" } else { "server" }
                )
            });
        let acked = flow.iter().any(|p| {
            p.frame > fin.frame
                && p.sent_by_client() != from_client
                && p.repr.control.is_some_and(|c| {
                    c.flags.contains(ControlFlags::ACK)
                        && c.ackno == fin_control.verno.wrapping_add(1)
                })
        });
        assert!(acked, "frame {}: FIN never acknowledged", fin.frame);
    }
}

#[test]
fn reference_capture_conforms() {
    let (packets, skipped) = load();
    let service: ServiceId = "00004001".parse().unwrap();

    // Summary.
    let mut kinds: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for p in &packets {
        let protocol = match p.protocol() {
            TransportProtocol::Stream => "stream",
            TransportProtocol::Datagram => "datagram",
        };
        *kinds.entry((protocol, p.kind())).or_default() += 1;
    }
    eprintln!("reference capture: {} SAL packets", packets.len());
    for ((protocol, kind), count) in &kinds {
        eprintln!("  {protocol:>8} {kind:<16} {count}");
    }
    for (ethertype, count) in &skipped {
        eprintln!("  skipped ethertype {ethertype:#06x}: {count} frames");
    }

    assert!(!packets.is_empty(), "no SAL packets in the capture");
    assert!(
        skipped.get(&0x0806).copied().unwrap_or(0) > 0,
        "expected ARP frames to be skipped"
    );
    for p in &packets {
        assert!(
            [CLIENT, SERVER].contains(&p.src),
            "frame {}: unexpected source {}",
            p.frame,
            p.src
        );
        assert!(p.shl as usize * 4 >= BASE_HEADER_LEN);
    }

    // The first SAL packet is the TCP SYN.
    assert_eq!(packets[0].protocol(), TransportProtocol::Stream);
    assert_eq!(packets[0].kind(), "SYN");

    let stream = flow(&packets, TransportProtocol::Stream);
    let datagram = flow(&packets, TransportProtocol::Datagram);
    assert!(stream.len() > 3 && datagram.len() > 3);
    // The datagram flow starts after the stream flow has ended.
    assert!(stream.last().unwrap().frame < datagram[0].frame);

    let stream_ids = check_handshake(&stream, service);
    check_rest_of_flow(&stream, stream_ids);
    let datagram_ids = check_handshake(&datagram, service);
    check_rest_of_flow(&datagram, datagram_ids);

    // The handshakes carry the transport's own handshake segments.
    let tcp_flags = |p: &Captured| p.segment[13];
    assert_eq!(tcp_flags(stream[0]) & 0x12, 0x02, "TCP SYN in the SAL SYN");
    assert_eq!(
        tcp_flags(stream[1]) & 0x12,
        0x12,
        "TCP SYN-ACK in the SAL SYN-ACK"
    );
    assert_eq!(
        datagram[0].segment.len(),
        8,
        "empty UDP header in the datagram SYN"
    );

    // 20,000 bytes of TCP payload, all from the server to the client.
    let tcp_bytes = |from_client: bool| -> usize {
        stream
            .iter()
            .filter(|p| p.sent_by_client() == from_client)
            .map(|p| p.app_payload().len())
            .sum()
    };
    let (to_server, to_client) = (tcp_bytes(true), tcp_bytes(false));
    eprintln!("  TCP payload: client->server {to_server} bytes, server->client {to_client} bytes");
    assert_eq!(to_client, TCP_PAYLOAD_BYTES, "server -> client TCP payload");
    assert_eq!(to_server, 0, "client -> server TCP payload");
    let largest = stream.iter().map(|p| p.app_payload().len()).max().unwrap();
    eprintln!("  largest TCP segment payload: {largest} bytes");
    assert!(largest <= 1448, "segments fit the 1448-byte MSS of WIRE.md");

    // The datagram flow is an echo exchange: every request comes back
    // (the reference echo server upper-cases it).
    let requests: Vec<&[u8]> = datagram
        .iter()
        .filter(|p| p.sent_by_client() && !p.app_payload().is_empty())
        .map(|p| p.app_payload())
        .collect();
    let replies: Vec<&[u8]> = datagram
        .iter()
        .filter(|p| !p.sent_by_client() && !p.app_payload().is_empty())
        .map(|p| p.app_payload())
        .collect();
    for r in requests.iter().chain(&replies) {
        eprintln!("  datagram payload {:?}", String::from_utf8_lossy(r));
    }
    assert!(!requests.is_empty(), "no datagram requests");
    assert_eq!(requests.len(), replies.len(), "every request is answered");
    for (request, reply) in requests.iter().zip(&replies) {
        assert!(
            request.eq_ignore_ascii_case(reply),
            "reply {reply:?} does not echo {request:?}"
        );
    }
}
