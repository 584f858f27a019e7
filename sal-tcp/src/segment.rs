//! TCP segments in and out of caller-supplied buffers.
//!
//! The SAL carries TCP segments whose ports are both 0 (flows are named by
//! flow IDs), which smoltcp's `TcpRepr::parse` rejects; [`parse`] reads the
//! same fields with smoltcp's public `TcpPacket` and `TcpOption` and ignores
//! the ports. [`emit`] writes a header with smoltcp's `TcpRepr::emit` after the
//! payload has been copied straight into place, so the payload is copied once,
//! from wherever it lives, and the checksum covers the caller's pseudo-header.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, Ipv4Address, TcpControl, TcpOption, TcpPacket, TcpRepr, TcpTimestampRepr,
};

/// Largest TCP header (with options): reserve this much in front of the
/// payload when sizing transmit buffers.
pub const MAX_HEADER_LEN: usize = 60;

/// Why a received segment could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// Shorter than its header, a header length that lies, a malformed
    /// option, or an impossible flag combination (e.g. SYN and FIN).
    #[error("malformed TCP segment")]
    Malformed,
}

/// Parse a TCP segment (header and payload) whose checksum the caller has
/// verified. Ports are not looked at.
pub fn parse(segment: &[u8]) -> Result<TcpRepr<'_>, SegmentError> {
    let packet = TcpPacket::new_checked(segment).map_err(|_| SegmentError::Malformed)?;
    let control = match (packet.syn(), packet.fin(), packet.rst(), packet.psh()) {
        (false, false, false, false) => TcpControl::None,
        (false, false, false, true) => TcpControl::Psh,
        (true, false, false, _) => TcpControl::Syn,
        (false, true, false, _) => TcpControl::Fin,
        (false, false, true, _) => TcpControl::Rst,
        _ => return Err(SegmentError::Malformed),
    };
    let mut repr = TcpRepr {
        src_port: packet.src_port(),
        dst_port: packet.dst_port(),
        control,
        seq_number: packet.seq_number(),
        ack_number: packet.ack().then(|| packet.ack_number()),
        window_len: packet.window_len(),
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: packet.payload(),
    };
    let mut options = packet.options();
    while !options.is_empty() {
        let (rest, option) = TcpOption::parse(options).map_err(|_| SegmentError::Malformed)?;
        match option {
            TcpOption::EndOfList => break,
            TcpOption::MaxSegmentSize(value) => repr.max_seg_size = Some(value),
            // RFC 7323: a shift above 14 is treated as 14.
            TcpOption::WindowScale(value) => repr.window_scale = Some(value.min(14)),
            TcpOption::SackPermitted => repr.sack_permitted = true,
            TcpOption::SackRange(ranges) => repr.sack_ranges = ranges,
            TcpOption::TimeStamp { tsval, tsecr } => {
                repr.timestamp = Some(TcpTimestampRepr::new(tsval, tsecr))
            }
            TcpOption::NoOperation | TcpOption::Unknown { .. } => {}
        }
        options = rest;
    }
    Ok(repr)
}

/// Write `repr` (whose own `payload` is ignored) followed by `payload_len`
/// bytes that `fill` writes in place into `out`, with ports 0 and the
/// checksum over the IPv4 pseudo-header `src` -> `dst`. Returns the segment
/// length, or `None` (nothing written) if `out` is too short.
pub(crate) fn emit(
    repr: &TcpRepr<'_>,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
    src: Ipv4Address,
    dst: Ipv4Address,
    out: &mut [u8],
) -> Option<usize> {
    let header_repr = TcpRepr {
        src_port: 0,
        dst_port: 0,
        payload: &[],
        ..*repr
    };
    let header_len = header_repr.header_len();
    let total = header_len + payload_len;
    let out = out.get_mut(..total)?;
    fill(&mut out[header_len..]);
    let mut packet = TcpPacket::new_unchecked(out);
    header_repr.emit(
        &mut packet,
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        &ChecksumCapabilities::default(),
    );
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::TcpSeqNumber;

    const SRC: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const DST: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    fn repr() -> TcpRepr<'static> {
        TcpRepr {
            src_port: 0,
            dst_port: 0,
            control: TcpControl::Syn,
            seq_number: TcpSeqNumber(1234),
            ack_number: Some(TcpSeqNumber(99)),
            window_len: 5000,
            window_scale: Some(7),
            max_seg_size: Some(1448),
            sack_permitted: true,
            sack_ranges: [None; 3],
            timestamp: Some(TcpTimestampRepr::new(5, 6)),
            payload: &[],
        }
    }

    #[test]
    fn emit_then_parse_round_trips_with_zero_ports_and_a_valid_checksum() {
        let mut out = [0xAA; 100];
        let len = emit(
            &repr(),
            3,
            |p| p.copy_from_slice(b"xyz"),
            SRC,
            DST,
            &mut out,
        )
        .unwrap();
        assert_eq!(len, repr().header_len() + 3);
        let packet = TcpPacket::new_checked(&out[..len]).unwrap();
        assert!(packet.verify_checksum(&SRC.into(), &DST.into()));
        // Another destination (a migrated flow) does not verify.
        let other = Ipv4Address::new(10, 0, 0, 3);
        assert!(!packet.verify_checksum(&SRC.into(), &other.into()));
        let parsed = parse(&out[..len]).unwrap();
        assert_eq!(
            parsed,
            TcpRepr {
                payload: b"xyz",
                ..repr()
            }
        );
    }

    #[test]
    fn emit_refuses_a_short_buffer() {
        let mut out = [0; 30];
        assert_eq!(emit(&repr(), 0, |_| {}, SRC, DST, &mut out), None);
    }

    #[test]
    fn parse_rejects_garbage_without_panicking() {
        assert_eq!(parse(&[0; 10]), Err(SegmentError::Malformed));
        let mut out = [0; 40];
        let len = emit(&repr(), 0, |_| {}, SRC, DST, &mut out).unwrap();
        // SYN and FIN together.
        out[13] |= 0x01;
        assert_eq!(parse(&out[..len]), Err(SegmentError::Malformed));
        // Header length beyond the segment.
        out[12] = 0xF0;
        assert_eq!(parse(&out[..len]), Err(SegmentError::Malformed));
    }
}
