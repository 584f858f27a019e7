//! Fuzzes native carriage: `ipv4_payload`, then the SAL parser on what it
//! returns, and the transport checksum check on the segment.
//!
//! When the low bit of the first byte is set, the first byte is dropped and the
//! IPv4 and SAL checksums are filled in before parsing, so that the fuzzer gets
//! past them; otherwise the bytes are parsed as they are.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sal::wire::{
    ipv4_payload, verify_transport_checksum, SalPacket, SalRepr, TransportProtocol, BASE_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(data);
        return;
    }
    let mut bytes = rest.to_vec();
    fix_ipv4_checksum(&mut bytes);
    let ip_header = bytes.first().map_or(0, |b| usize::from(b & 0x0f) * 4);
    if bytes.len() >= ip_header + BASE_HEADER_LEN && ip_header >= 20 {
        let sal = &mut bytes[ip_header..];
        let header = usize::from(sal[8]) * 4;
        if (BASE_HEADER_LEN..=sal.len()).contains(&header) {
            SalPacket::new_unchecked(sal).fill_checksum();
        }
    }
    check(&bytes);
});

/// Internet checksum of the IPv4 header, if the IHL leaves one to fill.
fn fix_ipv4_checksum(bytes: &mut [u8]) {
    let Some(&first) = bytes.first() else { return };
    let len = usize::from(first & 0x0f) * 4;
    if len < 20 || len > bytes.len() {
        return;
    }
    bytes[10] = 0;
    bytes[11] = 0;
    let mut sum: u32 = bytes[..len]
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    bytes[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn check(data: &[u8]) {
    let Ok((carriage, sal)) = ipv4_payload(data) else {
        return;
    };
    assert!(sal.len() <= data.len());
    let Ok(packet) = SalPacket::new_checked(sal) else {
        return;
    };
    let Ok(repr) = SalRepr::parse(&packet) else {
        return;
    };
    let mut out = vec![0u8; repr.header_len()];
    repr.emit(&mut out).expect("a parsed repr emits");
    let reparsed = SalPacket::new_checked(&out[..]).expect("emitted header is framed");
    assert_eq!(SalRepr::parse(&reparsed), Ok(repr.clone()));
    if let Some(protocol) = TransportProtocol::from_number(repr.protocol) {
        let _ = verify_transport_checksum(protocol, carriage.src, carriage.dst, packet.payload());
    }
}
