//! Fuzzes the SAL header parser: `SalPacket::new_checked`, the accessors, and
//! `SalRepr::parse`; whatever parses must emit and re-parse to the same repr.
//!
//! Random bytes almost never carry a valid SAL checksum, so when the low bit of
//! the first byte is set the target fills in the checksum first (and the first
//! byte is dropped); this lets the fuzzer reach the extension and repr logic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sal::wire::{SalPacket, SalRepr, BASE_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        check(data);
        return;
    }
    let mut bytes = rest.to_vec();
    if bytes.len() >= BASE_HEADER_LEN {
        let header = usize::from(bytes[8]) * 4;
        if (BASE_HEADER_LEN..=bytes.len()).contains(&header) {
            SalPacket::new_unchecked(&mut bytes[..]).fill_checksum();
        }
    }
    check(&bytes);
});

fn check(data: &[u8]) {
    let Ok(packet) = SalPacket::new_checked(data) else {
        return;
    };
    // A checked view never indexes out of bounds.
    let _ = (
        packet.src_flow_id(),
        packet.dst_flow_id(),
        packet.protocol(),
        packet.checksum(),
        packet.payload().len(),
    );
    assert!(packet.header_len() >= BASE_HEADER_LEN && packet.header_len() <= data.len());
    for ext in packet.extensions() {
        ext.expect("new_checked validated the extension framing");
    }
    let unverified = SalRepr::parse_unverified(&packet);
    let verified = SalRepr::parse(&packet);
    if packet.verify_checksum() {
        assert_eq!(verified, unverified);
    }
    let Ok(repr) = unverified else {
        return;
    };
    let mut out = vec![0u8; repr.header_len()];
    let len = repr.emit(&mut out).expect("a parsed repr emits");
    assert_eq!(len, out.len());
    assert!(len <= packet.header_len(), "emit never adds bytes");
    let reparsed = SalPacket::new_checked(&out[..]).expect("emitted header is framed");
    assert!(reparsed.verify_checksum());
    assert_eq!(SalRepr::parse(&reparsed), Ok(repr));
}
