//! What the Wireshark dissector (`serval.lua` beside this crate) must show
//! for each SAL packet of a capture, computed with the protocol core's own
//! parser (`sal::wire`, itself checked against the reference captures).
//!
//! The test in `tests/tshark.rs` runs `tshark` with the dissector over every
//! capture in `shared/vectors/` and compares each decoded field with
//! [`expected_packets`]; this crate holds no dissector logic of its own.

use std::net::Ipv4Addr;
use std::path::Path;

use pcap_file::pcap::PcapReader;
use sal::wire::{
    ipv4_payload, AddressExt, ControlExt, ExtensionKind, SalPacket, ServiceExt, SourceExt,
};

const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_PROTO_UDP: u8 = 17;
/// The UDP ports the dissector registers for UDP-encapsulated SAL (WIRE.md,
/// "Carriage": the reference's client and server ports).
pub const UDP_PORTS: [u16; 2] = [54324, 54325];

/// A CONTROL extension's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// The flags byte.
    pub flags: u8,
    /// The sender's control message number.
    pub verno: u32,
    /// The next number expected from the peer.
    pub ackno: u32,
    /// The sender's nonce.
    pub nonce: [u8; 8],
}

/// An ADDRESS extension's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Its own version number.
    pub verno: u32,
    /// Its own acknowledgement number.
    pub ackno: u32,
    /// The advertised locators.
    pub addresses: Vec<Ipv4Addr>,
}

/// How a SAL packet travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carriage {
    /// IPv4 protocol 144.
    Native,
    /// The payload of a UDP datagram.
    Udp {
        /// UDP source port.
        src_port: u16,
        /// UDP destination port.
        dst_port: u16,
        /// The UDP length field.
        length: u16,
    },
}

/// The fields of one SAL packet, as the dissector must decode them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPacket {
    /// 1-based frame number in the capture.
    pub frame: usize,
    /// Native or UDP-encapsulated.
    pub carriage: Carriage,
    /// Base header: source flow ID.
    pub src_flow: u32,
    /// Base header: destination flow ID.
    pub dst_flow: u32,
    /// Header length in 32-bit words.
    pub shl: u8,
    /// Transport protocol number.
    pub protocol: u8,
    /// The checksum field as sent.
    pub checksum: u16,
    /// Whether the checksum is right.
    pub checksum_good: bool,
    /// The CONTROL extension, if any.
    pub control: Option<Control>,
    /// The SERVICE extension's service ID, if any.
    pub service_id: Option<[u8; 32]>,
    /// The SOURCE extension's addresses (empty without one).
    pub source: Vec<Ipv4Addr>,
    /// The ADDRESS extension, if any.
    pub address: Option<Address>,
    /// The transport segment after the SAL header (empty for SAL-only packets).
    pub segment: Vec<u8>,
}

/// Every SAL packet of an Ethernet capture, native (IPv4 protocol 144) or
/// UDP-encapsulated on [`UDP_PORTS`], with its expected fields. Frames that
/// carry no SAL packet are skipped; a SAL packet the core cannot frame is an
/// error (the captures hold none).
pub fn expected_packets(capture: &Path) -> Result<Vec<ExpectedPacket>, String> {
    let file = std::fs::File::open(capture).map_err(|e| format!("{}: {e}", capture.display()))?;
    let mut reader = PcapReader::new(file).map_err(|e| format!("{}: {e}", capture.display()))?;
    let mut packets = Vec::new();
    let mut frame = 0;
    while let Some(pcap) = reader.next_packet() {
        frame += 1;
        let pcap = pcap.map_err(|e| format!("frame {frame}: {e}"))?;
        let data = &pcap.data;
        if data.len() < ETHERNET_HEADER_LEN
            || u16::from_be_bytes([data[12], data[13]]) != ETHERTYPE_IPV4
        {
            continue;
        }
        let Some((carriage, sal)) = sal_bytes(&data[ETHERNET_HEADER_LEN..]) else {
            continue;
        };
        packets.push(decode(frame, carriage, sal).map_err(|e| format!("frame {frame}: {e}"))?);
    }
    Ok(packets)
}

/// The SAL packet inside an IPv4 packet: protocol 144, or UDP to or from one
/// of [`UDP_PORTS`].
fn sal_bytes(ip: &[u8]) -> Option<(Carriage, &[u8])> {
    if let Ok((_, sal)) = ipv4_payload(ip) {
        return Some((Carriage::Native, sal));
    }
    let header_len = usize::from(*ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != IP_PROTO_UDP {
        return None;
    }
    let udp = ip.get(header_len..)?;
    let port = |at: usize| Some(u16::from_be_bytes([*udp.get(at)?, *udp.get(at + 1)?]));
    let (src_port, dst_port, length) = (port(0)?, port(2)?, port(4)?);
    if !UDP_PORTS.contains(&src_port) && !UDP_PORTS.contains(&dst_port) {
        return None;
    }
    let carriage = Carriage::Udp {
        src_port,
        dst_port,
        length,
    };
    Some((carriage, udp.get(8..)?))
}

fn decode(frame: usize, carriage: Carriage, bytes: &[u8]) -> Result<ExpectedPacket, String> {
    let packet = SalPacket::new_checked(bytes).map_err(|e| e.to_string())?;
    let mut expected = ExpectedPacket {
        frame,
        carriage,
        src_flow: packet.src_flow_id(),
        dst_flow: packet.dst_flow_id(),
        shl: packet.shl(),
        protocol: packet.protocol(),
        checksum: packet.checksum(),
        checksum_good: packet.verify_checksum(),
        control: None,
        service_id: None,
        source: Vec::new(),
        address: None,
        segment: packet.payload().to_vec(),
    };
    for ext in packet.extensions() {
        let ext = ext.map_err(|e| e.to_string())?;
        let err = |e: sal::wire::Error| e.to_string();
        match ext.kind {
            ExtensionKind::Control => {
                let control = ControlExt::new_checked(ext.bytes).map_err(err)?;
                expected.control = Some(Control {
                    flags: control.flags().bits(),
                    verno: control.verno(),
                    ackno: control.ackno(),
                    nonce: control.nonce(),
                });
            }
            ExtensionKind::Service => {
                let service = ServiceExt::new_checked(ext.bytes).map_err(err)?;
                expected.service_id = Some(*service.service_id().as_bytes());
            }
            ExtensionKind::Source => {
                let source = SourceExt::new_checked(ext.bytes).map_err(err)?;
                expected.source = source.addresses().collect();
            }
            ExtensionKind::Address => {
                let address = AddressExt::new_checked(ext.bytes).map_err(err)?;
                expected.address = Some(Address {
                    verno: address.verno(),
                    ackno: address.ackno(),
                    addresses: address.addresses().collect(),
                });
            }
            ExtensionKind::Pad | ExtensionKind::Unknown(_) => {}
        }
    }
    Ok(expected)
}
