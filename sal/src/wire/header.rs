//! The SAL base header and the whole-header `Repr`.

use smoltcp::wire::checksum;

use super::ext::{
    AddressExt, AddressRepr, ControlExt, ControlFlags, ControlRepr, ExtensionKind, Extensions,
    ServiceExt, SourceExt, SourceRepr, CONTROL_LEN, SERVICE_LEN,
};
use super::{ensure_room, read_u16, read_u32, Error, Result};
use crate::id::{FlowId, ServiceId};

/// Base header: src_flowid (4), dst_flowid (4), shl (1), protocol (1), check (2).
pub const BASE_HEADER_LEN: usize = 12;
/// `shl` is one byte of 32-bit words.
pub const MAX_HEADER_LEN: usize = 255 * 4;

mod field {
    use core::ops::Range;
    pub const SRC_FLOW: Range<usize> = 0..4;
    pub const DST_FLOW: Range<usize> = 4..8;
    pub const SHL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECK: Range<usize> = 10..12;
}

/// Zero-copy view of a SAL packet: base header, extensions, then the transport
/// segment. `new_checked` validates the header length and the framing of every
/// extension, so accessors never index out of bounds.
#[derive(Debug, Clone)]
pub struct SalPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> SalPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic on short input.
    /// Use for buffers this process is about to fill.
    pub const fn new_unchecked(buffer: T) -> SalPacket<T> {
        SalPacket { buffer }
    }

    /// Wraps a buffer after [`SalPacket::check_len`].
    pub fn new_checked(buffer: T) -> Result<SalPacket<T>> {
        let packet = SalPacket::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Validates what WIRE.md requires of every received packet: the base header
    /// is present, `12 <= shl * 4 <= len`, and the extensions tile the header
    /// exactly with lengths their types allow.
    pub fn check_len(&self) -> Result<()> {
        let bytes = self.buffer.as_ref();
        if bytes.len() < BASE_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let words = bytes[field::SHL];
        let header = usize::from(words) * 4;
        if header < BASE_HEADER_LEN {
            return Err(Error::HeaderTooShort {
                words,
                bytes: header,
            });
        }
        if header > bytes.len() {
            return Err(Error::HeaderPastPacket {
                header,
                packet: bytes.len(),
            });
        }
        self.extensions().try_for_each(|ext| ext.map(drop))
    }

    /// Gives the wrapped buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Sender's flow ID (raw; 0 only in a reset answering a packet that had
    /// no destination flow, see [`SalRepr::src_flow`]).
    pub fn src_flow_id(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SRC_FLOW.start)
    }

    /// Receiver's flow ID, 0 while not yet known.
    pub fn dst_flow_id(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::DST_FLOW.start)
    }

    /// Header length in 32-bit words.
    pub fn shl(&self) -> u8 {
        self.buffer.as_ref()[field::SHL]
    }

    /// Header length in bytes, base header and extensions included.
    pub fn header_len(&self) -> usize {
        usize::from(self.shl()) * 4
    }

    /// Transport protocol number that follows the header (6 stream, 17 datagram).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The `check` field as stored (see [`SalPacket::verify_checksum`]).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECK.start)
    }

    /// The whole SAL header.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// Whether `check` is right: the ones'-complement sum over the header only.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.header()) == !0
    }

    /// The extensions, PAD bytes skipped.
    pub fn extensions(&self) -> Extensions<'_> {
        Extensions::new(self.header(), BASE_HEADER_LEN)
    }

    /// The transport segment after the SAL header (empty for SAL-only packets).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> SalPacket<T> {
    /// Writes `src_flowid`, the sender's own flow ID (raw; 0 only in such resets).
    pub fn set_src_flow_id(&mut self, value: u32) {
        self.buffer.as_mut()[field::SRC_FLOW].copy_from_slice(&value.to_be_bytes());
    }

    /// Writes `dst_flowid`, the receiver's flow ID (0 while not yet known).
    pub fn set_dst_flow_id(&mut self, value: u32) {
        self.buffer.as_mut()[field::DST_FLOW].copy_from_slice(&value.to_be_bytes());
    }

    /// Writes `shl`, the header length in 32-bit words, extensions included.
    pub fn set_shl(&mut self, words: u8) {
        self.buffer.as_mut()[field::SHL] = words;
    }

    /// Writes the transport protocol number (6 stream, 17 datagram).
    pub fn set_protocol(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = value;
    }

    /// Writes `check` as given; [`SalPacket::fill_checksum`] computes it.
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECK].copy_from_slice(&value.to_be_bytes());
    }

    /// Computes and stores `check` over the header as it now stands.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = !checksum::data(self.header());
        self.set_checksum(sum);
    }

    /// The header bytes, for rewriting in place.
    pub fn header_mut(&mut self) -> &mut [u8] {
        let len = self.header_len();
        &mut self.buffer.as_mut()[..len]
    }

    /// The transport segment, for rewriting in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let len = self.header_len();
        &mut self.buffer.as_mut()[len..]
    }
}

/// A parsed SAL header.
///
/// Known extensions appear at most once, except SERVICE, which may appear
/// twice: the destination service, then (on unconnected datagrams) the
/// sender's own service ID, as the reference stack sends them. Emission
/// order is canonical: CONTROL, SERVICE, the sender's SERVICE, ADDRESS,
/// SOURCE, which is the order the reference stack uses for everything it
/// sends (a SYN-ACK: CONTROL then SOURCE; a router appends SOURCE after the
/// rest); since every known extension is a multiple of 4 bytes, emitted
/// headers need no PAD. Unknown extensions and PAD are accepted on parse and
/// not re-emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalRepr {
    /// The sender's flow ID. `None` (0 on the wire) only in a reset: the
    /// reference stack answers a packet that had no destination flow (an
    /// unconnected datagram) with a RST whose source flow is that 0. Any
    /// other packet with source flow 0 fails to parse.
    pub src_flow: Option<FlowId>,
    /// `None` on the wire is 0: SYNs and unconnected datagrams.
    pub dst_flow: Option<FlowId>,
    /// Transport protocol number (6 stream, 17 datagram); kept raw so that
    /// anything received re-emits unchanged.
    pub protocol: u8,
    /// The CONTROL extension: flags, `verno`/`ackno` and the sender's nonce.
    pub control: Option<ControlRepr>,
    /// The service a SYN or an unconnected datagram is addressed to.
    pub service: Option<ServiceId>,
    /// The sender's own service ID (a second SERVICE extension), carried by
    /// unconnected datagrams so that the receiver can answer that service.
    pub source_service: Option<ServiceId>,
    /// The ADDRESS extension: the sender's other locators, for multi-homing.
    pub address: Option<AddressRepr>,
    /// The SOURCE extension: the path service routers recorded (client first).
    pub source: Option<SourceRepr>,
}

impl SalRepr {
    /// A header with no extensions (`shl = 3`), as on data packets.
    pub fn data(src_flow: FlowId, dst_flow: Option<FlowId>, protocol: u8) -> SalRepr {
        SalRepr {
            src_flow: Some(src_flow),
            dst_flow,
            protocol,
            control: None,
            service: None,
            source_service: None,
            address: None,
            source: None,
        }
    }

    /// Parses a checked packet, verifying the SAL checksum.
    pub fn parse<T: AsRef<[u8]>>(packet: &SalPacket<T>) -> Result<SalRepr> {
        if !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        SalRepr::parse_unverified(packet)
    }

    /// Parses a checked packet without looking at the checksum (for tools that
    /// show broken packets, and for callers that verified it themselves).
    pub fn parse_unverified<T: AsRef<[u8]>>(packet: &SalPacket<T>) -> Result<SalRepr> {
        let mut repr = SalRepr {
            src_flow: FlowId::new(packet.src_flow_id()),
            dst_flow: FlowId::new(packet.dst_flow_id()),
            protocol: packet.protocol(),
            control: None,
            service: None,
            source_service: None,
            address: None,
            source: None,
        };
        for ext in packet.extensions() {
            let ext = ext?;
            let duplicate = match ext.kind {
                ExtensionKind::Control => repr
                    .control
                    .replace(ControlRepr::parse(&ControlExt::new_checked(ext.bytes)?))
                    .is_some(),
                ExtensionKind::Service => {
                    let id = ServiceExt::new_checked(ext.bytes)?.service_id();
                    match (repr.service, repr.source_service) {
                        (None, _) => repr.service = Some(id),
                        (Some(_), None) => repr.source_service = Some(id),
                        (Some(_), Some(_)) => return Err(Error::DuplicateExtension(ext.kind)),
                    }
                    false
                }
                ExtensionKind::Address => repr
                    .address
                    .replace(AddressRepr::parse(&AddressExt::new_checked(ext.bytes)?))
                    .is_some(),
                ExtensionKind::Source => repr
                    .source
                    .replace(SourceRepr::parse(&SourceExt::new_checked(ext.bytes)?))
                    .is_some(),
                ExtensionKind::Pad | ExtensionKind::Unknown(_) => false,
            };
            if duplicate {
                return Err(Error::DuplicateExtension(ext.kind));
            }
        }
        let reset = repr
            .control
            .is_some_and(|c| c.flags.contains(ControlFlags::RST));
        if repr.src_flow.is_none() && !reset {
            return Err(Error::ZeroSourceFlow);
        }
        Ok(repr)
    }

    /// Length of the emitted header in bytes.
    pub fn header_len(&self) -> usize {
        super::BASE_HEADER_LEN
            + self.control.map_or(0, |_| CONTROL_LEN)
            + self.service.map_or(0, |_| SERVICE_LEN)
            + self.source_service.map_or(0, |_| SERVICE_LEN)
            + self.address.as_ref().map_or(0, AddressRepr::buffer_len)
            + self.source.as_ref().map_or(0, SourceRepr::buffer_len)
    }

    /// Writes the header at the start of `buffer` and fills its checksum.
    /// Bytes after the header (the transport segment) are left alone.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<usize> {
        if self.service.is_none() && self.source_service.is_some() {
            return Err(Error::SourceServiceAlone);
        }
        let len = self.header_len();
        if len > super::MAX_HEADER_LEN {
            return Err(Error::HeaderTooLong(len));
        }
        ensure_room(buffer, len)?;
        let mut packet = SalPacket::new_unchecked(&mut buffer[..len]);
        packet.set_src_flow_id(self.src_flow.map_or(0, FlowId::get));
        packet.set_dst_flow_id(self.dst_flow.map_or(0, FlowId::get));
        // `len` is a multiple of 4 no larger than 1020, so it fits in a byte of words.
        packet.set_shl((len / 4) as u8);
        packet.set_protocol(self.protocol);
        let exts = &mut buffer[BASE_HEADER_LEN..len];
        let mut at = 0;
        if let Some(control) = &self.control {
            control.emit(&mut exts[at..])?;
            at += CONTROL_LEN;
        }
        for service in [&self.service, &self.source_service].into_iter().flatten() {
            ServiceExt::<&[u8]>::emit(service, &mut exts[at..])?;
            at += SERVICE_LEN;
        }
        if let Some(address) = &self.address {
            address.emit(&mut exts[at..])?;
            at += address.buffer_len();
        }
        if let Some(source) = &self.source {
            source.emit(&mut exts[at..])?;
        }
        SalPacket::new_unchecked(&mut buffer[..len]).fill_checksum();
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ControlFlags;
    use std::net::Ipv4Addr;

    fn flow(raw: u32) -> FlowId {
        FlowId::new(raw).unwrap()
    }

    /// The SYN header of the reference capture's TCP flow.
    const REFERENCE_SYN: &str = "0000000200000000110616be101480008b2e0b1000000000fef78a969a722dc0\
         202400000000400100000000000000000000000000000000000000000000000000000000";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn parses_reference_syn() {
        let bytes = hex(REFERENCE_SYN);
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum());
        let repr = SalRepr::parse(&packet).unwrap();
        assert_eq!(repr.src_flow, Some(flow(2)));
        assert_eq!(repr.dst_flow, None);
        assert_eq!(repr.protocol, 6);
        let control = repr.control.unwrap();
        assert_eq!(control.flags, ControlFlags::SYN);
        assert_eq!(control.verno, 0x8b2e0b10);
        assert_eq!(repr.service.unwrap(), "00004001".parse().unwrap());
        let mut out = vec![0u8; repr.header_len()];
        repr.emit(&mut out).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn rejects_bad_shl_and_checksum() {
        let mut bytes = hex(REFERENCE_SYN);
        assert_eq!(
            SalPacket::new_checked(&bytes[..11]).unwrap_err(),
            Error::Truncated
        );
        bytes[8] = 2;
        assert!(matches!(
            SalPacket::new_checked(&bytes[..]).unwrap_err(),
            Error::HeaderTooShort { words: 2, .. }
        ));
        bytes[8] = 18;
        assert!(matches!(
            SalPacket::new_checked(&bytes[..]).unwrap_err(),
            Error::HeaderPastPacket { header: 72, .. }
        ));
        // shl ending inside the SERVICE extension.
        bytes[8] = 9;
        assert!(matches!(
            SalPacket::new_checked(&bytes[..]).unwrap_err(),
            Error::ExtensionPastHeader { offset: 32, .. }
        ));
        bytes[8] = 17;
        bytes[20] ^= 1;
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(SalRepr::parse(&packet).unwrap_err(), Error::BadChecksum);
    }

    #[test]
    fn rejects_duplicates_and_zero_source_flow() {
        let mut repr = SalRepr::data(flow(1), None, 17);
        repr.control = Some(ControlRepr::default());
        let mut bytes = vec![0u8; 52];
        repr.emit(&mut bytes).unwrap();
        // Append a second CONTROL by hand.
        bytes.copy_within(12..32, 32);
        bytes[8] = 13;
        let mut packet = SalPacket::new_unchecked(&mut bytes[..]);
        packet.fill_checksum();
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            SalRepr::parse(&packet).unwrap_err(),
            Error::DuplicateExtension(ExtensionKind::Control)
        );

        let mut zero = [0u8; 12];
        zero[8] = 3;
        SalPacket::new_unchecked(&mut zero[..]).fill_checksum();
        let packet = SalPacket::new_checked(&zero[..]).unwrap();
        assert_eq!(SalRepr::parse(&packet).unwrap_err(), Error::ZeroSourceFlow);
    }

    /// The reference's answer to an unconnected datagram it does not take
    /// (`reference-datagram-reset.pcap` #2): source flow 0, CONTROL(ACK|RST)
    /// with everything else 0.
    #[test]
    fn a_reset_may_come_from_flow_zero() {
        let mut bytes = hex("00000000f2601440081100001014280000000000000000000000000000000000");
        SalPacket::new_unchecked(&mut bytes[..]).fill_checksum();
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        let repr = SalRepr::parse(&packet).unwrap();
        assert_eq!(repr.src_flow, None);
        assert_eq!(repr.dst_flow, Some(flow(0xf2601440)));
        let control = repr.control.unwrap();
        assert_eq!(control.flags, ControlFlags::ACK | ControlFlags::RST);
        let mut out = vec![0u8; repr.header_len()];
        repr.emit(&mut out).unwrap();
        assert_eq!(out, bytes);
        // The same without RST is malformed.
        bytes[14] = 0x20;
        SalPacket::new_unchecked(&mut bytes[..]).fill_checksum();
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(SalRepr::parse(&packet).unwrap_err(), Error::ZeroSourceFlow);
    }

    #[test]
    fn two_services_are_destination_then_sender_and_a_third_is_refused() {
        let mut repr = SalRepr::data(flow(4), None, 17);
        repr.service = Some("0007".parse().unwrap());
        repr.source_service = Some("0006".parse().unwrap());
        let mut bytes = vec![0u8; repr.header_len()];
        assert_eq!(repr.emit(&mut bytes).unwrap(), 12 + 36 + 36);
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        let kinds: Vec<_> = packet.extensions().map(|e| e.unwrap().kind).collect();
        assert_eq!(kinds, [ExtensionKind::Service, ExtensionKind::Service]);
        assert_eq!(SalRepr::parse(&packet).unwrap(), repr);
        // Append a third SERVICE by hand.
        let mut three = bytes.clone();
        three.extend_from_within(12..48);
        three[8] = 30;
        SalPacket::new_unchecked(&mut three[..]).fill_checksum();
        let packet = SalPacket::new_checked(&three[..]).unwrap();
        assert_eq!(
            SalRepr::parse(&packet).unwrap_err(),
            Error::DuplicateExtension(ExtensionKind::Service)
        );
        // A sender's service alone would read back as the destination.
        repr.service = None;
        assert_eq!(repr.emit(&mut bytes), Err(Error::SourceServiceAlone));
    }

    #[test]
    fn all_extensions_round_trip() {
        let mut repr = SalRepr::data(flow(0xdead), Some(flow(9)), 6);
        repr.control = Some(ControlRepr {
            flags: ControlFlags::RSYN,
            verno: 1,
            ackno: 2,
            nonce: [3; 8],
        });
        repr.service = Some("beef".parse().unwrap());
        let mut address = AddressRepr {
            verno: 4,
            ackno: 5,
            ..Default::default()
        };
        address.addrs.push(Ipv4Addr::new(10, 0, 0, 1));
        repr.address = Some(address);
        let mut source = SourceRepr::default();
        source.addrs.push(Ipv4Addr::new(10, 0, 0, 2));
        source.addrs.push(Ipv4Addr::new(10, 0, 0, 3));
        repr.source = Some(source);
        let mut bytes = vec![0u8; repr.header_len() + 5];
        let len = repr.emit(&mut bytes).unwrap();
        assert_eq!(len, 12 + 20 + 36 + 16 + 12);
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload().len(), 5);
        assert_eq!(SalRepr::parse(&packet).unwrap(), repr);
    }

    #[test]
    fn pads_are_accepted() {
        // Base header + 4 PAD bytes.
        let mut bytes = [0u8; 16];
        bytes[3] = 1;
        bytes[8] = 4;
        SalPacket::new_unchecked(&mut bytes[..]).fill_checksum();
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        let repr = SalRepr::parse(&packet).unwrap();
        assert_eq!(repr, SalRepr::data(flow(1), None, 0));
    }

    #[test]
    fn emit_reports_small_buffer() {
        let repr = SalRepr::data(flow(1), None, 6);
        assert_eq!(
            repr.emit(&mut [0u8; 8]).unwrap_err(),
            Error::BufferTooSmall {
                needed: 12,
                available: 8
            }
        );
    }
}
