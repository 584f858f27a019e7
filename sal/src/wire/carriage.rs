//! How SAL packets travel: inside IPv4 (protocol 144) or as a UDP payload, and
//! the transport checksum, which covers the real addresses of the carriage.

use std::net::Ipv4Addr;

use smoltcp::wire::{checksum, IpProtocol, Ipv4Packet};

use super::{read_u16, Error, Result};

/// IPv4 protocol number of the SAL in native mode.
pub const SAL_IP_PROTOCOL: u8 = 144;
/// UDP port the reference stack uses on the client side of an encapsulated flow.
pub const UDP_CLIENT_PORT: u16 = 54324;
/// UDP port the reference stack uses on the server side of an encapsulated flow.
pub const UDP_SERVER_PORT: u16 = 54325;
/// IPv4 header without options, as this stack emits it.
pub const IPV4_HEADER_LEN: usize = 20;

/// The transport that follows a SAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportProtocol {
    /// A TCP segment (protocol 6).
    Stream,
    /// A UDP-style datagram (protocol 17).
    Datagram,
}

impl TransportProtocol {
    /// The protocol number carried in the SAL base header.
    pub const fn number(self) -> u8 {
        match self {
            TransportProtocol::Stream => 6,
            TransportProtocol::Datagram => 17,
        }
    }

    /// Decodes a protocol number; `None` for anything but 6 and 17.
    pub const fn from_number(number: u8) -> Option<TransportProtocol> {
        match number {
            6 => Some(TransportProtocol::Stream),
            17 => Some(TransportProtocol::Datagram),
            _ => None,
        }
    }

    /// Offset of the checksum field within the transport header.
    const fn checksum_offset(self) -> usize {
        match self {
            TransportProtocol::Stream => 16,
            TransportProtocol::Datagram => 6,
        }
    }

    /// Smallest valid transport header.
    pub const fn min_header_len(self) -> usize {
        match self {
            TransportProtocol::Stream => 20,
            TransportProtocol::Datagram => 8,
        }
    }
}

/// The IPv4 fields of a natively carried SAL packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Carriage {
    /// IP source; a packet relayed by a service router keeps its client's.
    pub src: Ipv4Addr,
    /// IP destination: a host, a service router, or a subnet's broadcast address.
    pub dst: Ipv4Addr,
    /// IP TTL; a service router forwards with one less and drops at 1.
    pub ttl: u8,
    /// IPv4 identification field; only meaningful for diagnostics, since SAL
    /// packets are never fragmented by this stack.
    pub ident: u16,
}

impl Ipv4Carriage {
    /// Writes a 20-byte IPv4 header (protocol 144, DF clear as in the reference
    /// stack) in front of a SAL packet of `sal_len` bytes.
    pub fn emit(&self, buffer: &mut [u8], sal_len: usize) -> Result<()> {
        let total = IPV4_HEADER_LEN + sal_len;
        let total_len = u16::try_from(total).map_err(|_| Error::HeaderTooLong(total))?;
        super::ensure_room(buffer, IPV4_HEADER_LEN)?;
        let mut packet = Ipv4Packet::new_unchecked(&mut buffer[..IPV4_HEADER_LEN]);
        packet.set_version(4);
        packet.set_header_len(IPV4_HEADER_LEN as u8);
        packet.set_dscp(0);
        packet.set_ecn(0);
        packet.set_total_len(total_len);
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_frag_offset(0);
        packet.set_hop_limit(self.ttl);
        packet.set_next_header(IpProtocol::Unknown(SAL_IP_PROTOCOL));
        packet.set_src_addr(self.src);
        packet.set_dst_addr(self.dst);
        packet.fill_checksum();
        Ok(())
    }
}

/// Splits an IPv4 packet into its carriage fields and the SAL packet it carries.
/// Rejects anything that is not an unfragmented, checksum-valid IPv4 packet of
/// protocol 144. Trailing bytes past the IPv4 total length are ignored.
pub fn ipv4_payload(bytes: &[u8]) -> Result<(Ipv4Carriage, &[u8])> {
    let packet = Ipv4Packet::new_checked(bytes).map_err(|_| Error::BadIpv4)?;
    if packet.version() != 4 || !packet.verify_checksum() {
        return Err(Error::BadIpv4);
    }
    if packet.more_frags() || packet.frag_offset() != 0 {
        return Err(Error::BadIpv4);
    }
    if packet.next_header() != IpProtocol::Unknown(SAL_IP_PROTOCOL) {
        return Err(Error::NotSal);
    }
    let carriage = Ipv4Carriage {
        src: packet.src_addr(),
        dst: packet.dst_addr(),
        ttl: packet.hop_limit(),
        ident: packet.ident(),
    };
    let start = usize::from(packet.header_len());
    let end = usize::from(packet.total_len());
    Ok((carriage, &bytes[start..end]))
}

/// Sum of the IPv4 pseudo-header and the segment, with the checksum field read as is.
fn transport_sum(protocol: TransportProtocol, src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    checksum::combine(&[
        checksum::pseudo_header_v4(
            &src,
            &dst,
            IpProtocol::from(protocol.number()),
            segment.len() as u32,
        ),
        checksum::data(segment),
    ])
}

/// Computes and stores the transport checksum of `segment` (a TCP or UDP header
/// and payload, ports 0) over the pseudo-header of the addresses it is sent with.
pub fn fill_transport_checksum(
    protocol: TransportProtocol,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    segment: &mut [u8],
) -> Result<()> {
    if segment.len() < protocol.min_header_len() || segment.len() > usize::from(u16::MAX) {
        return Err(Error::BufferTooSmall {
            needed: protocol.min_header_len(),
            available: segment.len(),
        });
    }
    let at = protocol.checksum_offset();
    segment[at..at + 2].fill(0);
    let mut sum = !transport_sum(protocol, src, dst, segment);
    if protocol == TransportProtocol::Datagram && sum == 0 {
        // In UDP a transmitted 0 means "no checksum"; RFC 768 sends all ones instead.
        sum = 0xffff;
    }
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Whether the transport checksum of `segment` is right for these addresses.
/// A UDP checksum of 0 means the sender did not compute one and is accepted.
pub fn verify_transport_checksum(
    protocol: TransportProtocol,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    segment: &[u8],
) -> bool {
    if segment.len() < protocol.min_header_len() || segment.len() > usize::from(u16::MAX) {
        return false;
    }
    if protocol == TransportProtocol::Datagram && read_u16(segment, 6) == 0 {
        return true;
    }
    transport_sum(protocol, src, dst, segment) == !0
}

/// RFC 1624 incremental update: `HC' = ~(~HC + ~m + m')` over every changed
/// 16-bit word, for rewriting addresses or ports without re-reading a payload.
pub fn adjust_checksum(check: u16, old: &[u16], new: &[u16]) -> u16 {
    let mut sum = u32::from(!check);
    for &word in old {
        sum += u32::from(!word);
    }
    for &word in new {
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The two 16-bit words of an IPv4 address, as a checksum sees them.
pub fn address_words(addr: Ipv4Addr) -> [u16; 2] {
    let o = addr.octets();
    [
        u16::from_be_bytes([o[0], o[1]]),
        u16::from_be_bytes([o[2], o[3]]),
    ]
}

/// Moves the transport checksum of `segment` from the pseudo-header of
/// `old` (source, destination) to that of `new`: what a service router does
/// when it re-addresses a packet it forwards. Segments too short to hold a
/// checksum, and UDP segments sent without one, are left alone.
pub fn readdress_transport_checksum(
    protocol: TransportProtocol,
    segment: &mut [u8],
    old: (Ipv4Addr, Ipv4Addr),
    new: (Ipv4Addr, Ipv4Addr),
) {
    if segment.len() < protocol.min_header_len() {
        return;
    }
    let at = protocol.checksum_offset();
    let check = read_u16(segment, at);
    if protocol == TransportProtocol::Datagram && check == 0 {
        return;
    }
    let [a, b] = address_words(old.0);
    let [c, d] = address_words(old.1);
    let [e, f] = address_words(new.0);
    let [g, h] = address_words(new.1);
    let mut check = adjust_checksum(check, &[a, b, c, d], &[e, f, g, h]);
    if protocol == TransportProtocol::Datagram && check == 0 {
        check = 0xffff;
    }
    segment[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_round_trip() {
        let carriage = Ipv4Carriage {
            src: Ipv4Addr::new(10, 77, 0, 1),
            dst: Ipv4Addr::new(10, 77, 0, 2),
            ttl: 64,
            ident: 0x1234,
        };
        let mut buf = [0u8; IPV4_HEADER_LEN + 12];
        buf[IPV4_HEADER_LEN..].copy_from_slice(&[7; 12]);
        carriage.emit(&mut buf, 12).unwrap();
        let (parsed, sal) = ipv4_payload(&buf).unwrap();
        assert_eq!(parsed, carriage);
        assert_eq!(sal, &[7; 12]);
        buf[9] = 6;
        assert_eq!(ipv4_payload(&buf).unwrap_err(), Error::BadIpv4);
        assert_eq!(ipv4_payload(&buf[..10]).unwrap_err(), Error::BadIpv4);
    }

    #[test]
    fn transport_checksum_depends_on_addresses() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let c = Ipv4Addr::new(10, 0, 1, 2);
        let mut udp = [0, 0, 0, 0, 0, 12, 0, 0, b'h', b'i', b'!', b'?'];
        fill_transport_checksum(TransportProtocol::Datagram, a, b, &mut udp).unwrap();
        assert!(verify_transport_checksum(
            TransportProtocol::Datagram,
            a,
            b,
            &udp
        ));
        assert!(!verify_transport_checksum(
            TransportProtocol::Datagram,
            a,
            c,
            &udp
        ));
        udp[6..8].fill(0);
        assert!(verify_transport_checksum(
            TransportProtocol::Datagram,
            a,
            c,
            &udp
        ));
        assert!(!verify_transport_checksum(
            TransportProtocol::Stream,
            a,
            b,
            &udp[..8]
        ));
    }
}
