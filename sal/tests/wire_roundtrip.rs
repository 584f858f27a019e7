//! Property and conformance tests of the SAL wire format (WIRE.md):
//! `SalRepr` emit/parse round trips, robustness on arbitrary bytes, single-byte
//! corruption, and every malformed case WIRE.md names.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use sal::wire::{
    ipv4_payload, AddressRepr, ControlFlags, ControlRepr, Error, ExtensionKind, SalPacket, SalRepr,
    SourceRepr, ADDRESS_BASE_LEN, BASE_HEADER_LEN, CONTROL_LEN, MAX_ADDRESS_ADDRS, MAX_HEADER_LEN,
    MAX_SOURCE_ADDRS, SERVICE_LEN, SOURCE_BASE_LEN,
};
use sal::{FlowId, ServiceId};

// ---------------------------------------------------------------------------
// Strategies

fn flow_id() -> impl Strategy<Value = FlowId> {
    prop_oneof![
        // Edge values first, then anything.
        Just(FlowId::new(1).unwrap()),
        Just(FlowId::new(u32::MAX).unwrap()),
        (1..=u32::MAX).prop_map(|raw| FlowId::new(raw).unwrap()),
    ]
}

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn control() -> impl Strategy<Value = ControlRepr> {
    (any::<u8>(), any::<u32>(), any::<u32>(), any::<[u8; 8]>()).prop_map(
        |(flags, verno, ackno, nonce)| ControlRepr {
            flags: ControlFlags::from_bits(flags),
            verno,
            ackno,
            nonce,
        },
    )
}

fn service() -> impl Strategy<Value = ServiceId> {
    any::<[u8; 32]>().prop_map(ServiceId::from_bytes)
}

fn address() -> impl Strategy<Value = AddressRepr> {
    (
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(ipv4(), 0..=MAX_ADDRESS_ADDRS),
    )
        .prop_map(|(verno, ackno, addrs)| AddressRepr {
            verno,
            ackno,
            addrs: addrs.into_iter().collect(),
        })
}

fn source() -> impl Strategy<Value = SourceRepr> {
    (
        prop::collection::vec(ipv4(), 1..=MAX_SOURCE_ADDRS),
        any::<u16>(),
    )
        .prop_map(|(addrs, client_port)| SourceRepr {
            addrs: addrs.into_iter().collect(),
            client_port,
        })
}

fn sal_repr() -> impl Strategy<Value = SalRepr> {
    (
        flow_id(),
        prop::option::of(flow_id()),
        prop_oneof![Just(6u8), Just(17u8), any::<u8>()],
        prop::option::of(control()),
        // A second SERVICE (the sender's) only ever follows a first.
        prop::option::of((service(), prop::option::of(service()))),
        prop::option::of(address()),
        prop::option::of(source()),
    )
        .prop_map(
            |(src_flow, dst_flow, protocol, control, services, address, source)| SalRepr {
                src_flow: Some(src_flow),
                dst_flow,
                protocol,
                control,
                service: services.map(|(s, _)| s),
                source_service: services.and_then(|(_, s)| s),
                address,
                source,
            },
        )
}

// ---------------------------------------------------------------------------
// Helpers

fn flow(raw: u32) -> FlowId {
    FlowId::new(raw).unwrap()
}

/// Emits `repr` followed by `payload` into a fresh buffer.
fn emit(repr: &SalRepr, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; repr.header_len() + payload.len()];
    let len = repr.emit(&mut bytes).expect("emit");
    assert_eq!(len, repr.header_len());
    bytes[len..].copy_from_slice(payload);
    bytes
}

/// Fills the SAL checksum of a hand-built header (which must have a sane shl).
fn fix_checksum(bytes: &mut [u8]) {
    SalPacket::new_unchecked(bytes).fill_checksum();
}

/// A base header with `shl` words, src flow 1, dst 0, protocol 6, then `exts`,
/// then `payload`; the checksum is filled if the header fits in the buffer.
fn hand_built(shl: u8, exts: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0, 1, 0, 0, 0, 0, shl, 6, 0, 0];
    bytes.extend_from_slice(exts);
    bytes.extend_from_slice(payload);
    let header = usize::from(shl) * 4;
    if header >= BASE_HEADER_LEN && header <= bytes.len() {
        fix_checksum(&mut bytes);
    }
    bytes
}

fn check_err(bytes: &[u8]) -> Error {
    match SalPacket::new_checked(bytes) {
        Err(e) => e,
        Ok(packet) => match SalRepr::parse(&packet) {
            Err(e) => e,
            Ok(repr) => panic!("malformed packet {bytes:02x?} parsed as {repr:?}"),
        },
    }
}

/// Exercises every accessor of a checked packet, so that a view that passed
/// `new_checked` is known not to index out of bounds.
fn touch_everything(packet: &SalPacket<&[u8]>) {
    let _ = (
        packet.src_flow_id(),
        packet.dst_flow_id(),
        packet.shl(),
        packet.protocol(),
        packet.checksum(),
        packet.verify_checksum(),
        packet.header().len(),
        packet.payload().len(),
    );
    for ext in packet.extensions() {
        let _ = ext.expect("new_checked validated the framing");
    }
    let _ = SalRepr::parse_unverified(packet);
    if let Ok(repr) = SalRepr::parse(packet) {
        let mut out = vec![0u8; repr.header_len()];
        repr.emit(&mut out).expect("a parsed repr emits");
        let again = SalRepr::parse(&SalPacket::new_checked(&out[..]).unwrap()).unwrap();
        assert_eq!(again, repr);
    }
}

/// Byte offsets of the original header that a change may legitimately alter
/// without the re-emitted header reproducing it: the type/reserved byte and the
/// length byte of each extension (a different type or length re-frames the
/// header), and the reserved fields, which parse ignores and emit writes as 0.
fn non_canonical_offsets(repr: &SalRepr) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = BASE_HEADER_LEN;
    if repr.control.is_some() {
        offsets.extend([at, at + 1, at + 3]);
        at += CONTROL_LEN;
    }
    for _ in repr.service.iter().chain(&repr.source_service) {
        offsets.extend([at, at + 1, at + 2, at + 3]);
        at += SERVICE_LEN;
    }
    if let Some(address) = &repr.address {
        offsets.extend([at, at + 1, at + 2, at + 3]);
        at += address.buffer_len();
    }
    if repr.source.is_some() {
        offsets.extend([at, at + 1, at + 2, at + 3]);
    }
    offsets
}

// ---------------------------------------------------------------------------
// Round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn repr_round_trips(repr in sal_repr(), payload in prop::collection::vec(any::<u8>(), 0..64)) {
        let expected_len = BASE_HEADER_LEN
            + repr.control.map_or(0, |_| CONTROL_LEN)
            + repr.service.map_or(0, |_| SERVICE_LEN)
            + repr.source_service.map_or(0, |_| SERVICE_LEN)
            + repr.address.as_ref().map_or(0, |a| ADDRESS_BASE_LEN + 4 * a.addrs.len())
            + repr.source.as_ref().map_or(0, |s| SOURCE_BASE_LEN + 4 * s.addrs.len());
        prop_assert_eq!(repr.header_len(), expected_len);
        prop_assert!(expected_len.is_multiple_of(4) && expected_len <= MAX_HEADER_LEN);

        let bytes = emit(&repr, &payload);
        let packet = SalPacket::new_checked(&bytes[..]).expect("emitted header is well framed");
        prop_assert_eq!(usize::from(packet.shl()) * 4, expected_len);
        prop_assert_eq!(packet.header_len(), expected_len);
        prop_assert_eq!(packet.payload(), &payload[..]);
        prop_assert!(packet.verify_checksum());
        prop_assert_eq!(packet.src_flow_id(), repr.src_flow.map_or(0, FlowId::get));
        prop_assert_eq!(packet.dst_flow_id(), repr.dst_flow.map_or(0, FlowId::get));
        prop_assert_eq!(packet.protocol(), repr.protocol);
        let parsed = SalRepr::parse(&packet).expect("emitted header parses");
        prop_assert_eq!(&parsed, &repr);

        // Canonical order: CONTROL, SERVICE, SERVICE, ADDRESS, SOURCE; no PAD.
        let kinds: Vec<ExtensionKind> = packet.extensions().map(|e| e.unwrap().kind).collect();
        let mut expected_kinds = Vec::new();
        if repr.control.is_some() { expected_kinds.push(ExtensionKind::Control); }
        if repr.service.is_some() { expected_kinds.push(ExtensionKind::Service); }
        if repr.source_service.is_some() { expected_kinds.push(ExtensionKind::Service); }
        if repr.address.is_some() { expected_kinds.push(ExtensionKind::Address); }
        if repr.source.is_some() { expected_kinds.push(ExtensionKind::Source); }
        prop_assert_eq!(kinds, expected_kinds);

        // Emitting into a buffer too small by one byte fails without panicking.
        let mut short = vec![0u8; expected_len - 1];
        let is_buffer_too_small = matches!(repr.emit(&mut short), Err(Error::BufferTooSmall { .. }));
        prop_assert!(is_buffer_too_small);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        if let Ok(packet) = SalPacket::new_checked(&bytes[..]) {
            touch_everything(&packet);
        }
        if let Ok((_, sal)) = ipv4_payload(&bytes) {
            if let Ok(packet) = SalPacket::new_checked(sal) {
                touch_everything(&packet);
            }
        }
    }

    /// Random bytes rarely get past the shl check; this keeps a plausible base
    /// header (shl within the buffer, valid checksum) so the extension walker
    /// and the typed views see random extension regions.
    #[test]
    fn arbitrary_extension_regions_never_panic(
        src in 1..=u32::MAX,
        exts in prop::collection::vec(
            prop_oneof![
                any::<u8>(),
                // Bias towards type nibbles 0..=4 and small lengths.
                (0u8..=5).prop_map(|t| t << 4),
                0u8..=40,
            ],
            0..400,
        ),
        extra in 0usize..8,
    ) {
        let words = (BASE_HEADER_LEN + exts.len()) / 4;
        let shl = u8::try_from(words).unwrap();
        let mut bytes = hand_built(shl, &exts, &[]);
        bytes[..4].copy_from_slice(&src.to_be_bytes());
        bytes.extend(std::iter::repeat_n(0xa5, extra));
        fix_checksum(&mut bytes);
        if let Ok(packet) = SalPacket::new_checked(&bytes[..]) {
            touch_everything(&packet);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any single-byte change to a valid header is caught: the framing check or
    /// the checksum rejects it. (The ones'-complement sum changes for every
    /// single-byte change, so it is in fact always caught.)
    #[test]
    fn single_byte_corruption_is_detected(
        repr in sal_repr(),
        masks in prop::collection::vec(1u8..=255, 4),
    ) {
        let original = emit(&repr, &[]);
        for at in 0..original.len() {
            for &mask in &masks {
                let mut bytes = original.clone();
                bytes[at] ^= mask;
                let outcome = SalPacket::new_checked(&bytes[..]).map(|p| {
                    (p.verify_checksum(), SalRepr::parse(&p))
                });
                match outcome {
                    Err(_) | Ok((_, Err(_))) => {}
                    Ok((checksum_ok, Ok(parsed))) => {
                        // Allowed by the contract: it must then be exactly what it says.
                        prop_assert!(checksum_ok);
                        let reemitted = emit(&parsed, &[]);
                        prop_assert_eq!(&reemitted[..], &bytes[..reemitted.len()]);
                    }
                }
                // The stronger fact: nothing gets through. (A smaller shl drops
                // bytes from the sum, so there a pass is possible in principle.)
                let shorter = at == 8 && bytes[8] < original[8];
                if let (false, Ok(packet)) = (shorter, SalPacket::new_checked(&bytes[..])) {
                    prop_assert!(
                        !packet.verify_checksum(),
                        "byte {} ^ {:#04x} not detected", at, mask
                    );
                }
            }
        }
    }

    /// The same corruption with the checksum recomputed afterwards (a buggy or
    /// malicious sender): the packet either fails to parse, or parses to a repr
    /// that re-emits to exactly the corrupted bytes, unless the change hit a
    /// byte that parse does not keep (extension type/length, reserved fields).
    #[test]
    fn corruption_with_fixed_checksum_parses_faithfully_or_fails(
        repr in sal_repr(),
        masks in prop::collection::vec(1u8..=255, 4),
    ) {
        let original = emit(&repr, &[]);
        let loose = non_canonical_offsets(&repr);
        for at in 0..original.len() {
            if (10..12).contains(&at) {
                continue; // recomputing the checksum undoes the change
            }
            for &mask in &masks {
                let mut bytes = original.clone();
                bytes[at] ^= mask;
                if SalPacket::new_checked(&bytes[..]).is_err() {
                    continue;
                }
                fix_checksum(&mut bytes);
                let packet = SalPacket::new_checked(&bytes[..]).unwrap();
                let Ok(parsed) = SalRepr::parse(&packet) else { continue };
                let reemitted = emit(&parsed, &[]);
                let header = packet.header();
                if reemitted[..] != header[..] {
                    prop_assert!(
                        loose.contains(&at),
                        "byte {} ^ {:#04x}: parsed {:?} re-emits differently", at, mask, parsed
                    );
                    // Whatever it parsed to is stable.
                    let again = SalRepr::parse(&SalPacket::new_checked(&reemitted[..]).unwrap());
                    prop_assert_eq!(again, Ok(parsed.clone()));
                }
                if at != 8 && !loose.contains(&at) {
                    // A field byte changed: the repr must differ from the original,
                    // unless src flow became 0 (which fails to parse above).
                    prop_assert_ne!(&parsed, &repr);
                }
            }
        }
    }
}

/// Every single-byte value at every offset of the reference SYN header.
#[test]
fn reference_syn_exhaustive_corruption() {
    let mut repr = SalRepr::data(flow(2), None, 6);
    repr.control = Some(ControlRepr {
        flags: ControlFlags::SYN,
        verno: 0x8b2e0b10,
        ackno: 0,
        nonce: *b"\xfe\xf7\x8a\x96\x9a\x72\x2d\xc0",
    });
    repr.service = Some("00004001".parse().unwrap());
    let original = emit(&repr, &[0u8; 28]);
    assert_eq!(&original[8..12], &[0x11, 0x06, 0x16, 0xbe]);
    for at in 0..repr.header_len() {
        for mask in 1..=255u8 {
            let mut bytes = original.clone();
            bytes[at] ^= mask;
            let Ok(packet) = SalPacket::new_checked(&bytes[..]) else {
                continue;
            };
            if let Ok(parsed) = SalRepr::parse(&packet) {
                // Only a shorter shl could, by a 1 in 65535 chance, still verify,
                // and then it must describe the shorter header exactly.
                assert!(
                    at == 8 && bytes[8] < original[8],
                    "byte {at} ^ {mask:#04x} parsed"
                );
                assert_eq!(emit(&parsed, &[]), packet.header());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Malformed packets, one test per case WIRE.md names

#[test]
fn shl_below_base_header_is_rejected() {
    for shl in 0..3u8 {
        let mut bytes = hand_built(3, &[], &[0; 40]);
        bytes[8] = shl;
        assert_eq!(
            check_err(&bytes),
            Error::HeaderTooShort {
                words: shl,
                bytes: usize::from(shl) * 4
            }
        );
    }
}

#[test]
fn shl_past_packet_is_rejected() {
    // Header claims 4 words (16 bytes) but only 15 bytes are there.
    let bytes = hand_built(4, &[0, 0, 0], &[]);
    assert_eq!(
        check_err(&bytes),
        Error::HeaderPastPacket {
            header: 16,
            packet: 15
        }
    );
    // Largest shl against a full-size header buffer one byte short.
    let mut bytes = vec![0u8; MAX_HEADER_LEN - 1];
    bytes[3] = 1;
    bytes[8] = 255;
    bytes[9] = 6;
    assert_eq!(
        check_err(&bytes),
        Error::HeaderPastPacket {
            header: MAX_HEADER_LEN,
            packet: MAX_HEADER_LEN - 1
        }
    );
    // The exact size is accepted (all PAD).
    bytes.push(0);
    fix_checksum(&mut bytes);
    let packet = SalPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(
        SalRepr::parse(&packet).unwrap(),
        SalRepr::data(flow(1), None, 6)
    );
}

#[test]
fn header_not_ending_on_extension_boundary_is_rejected() {
    let mut control = vec![0u8; CONTROL_LEN];
    control[0] = 0x10;
    control[1] = CONTROL_LEN as u8;
    // shl covers only the first 16 bytes of a 20-byte CONTROL (the rest is payload).
    let bytes = hand_built(7, &control, &[0; 8]);
    assert_eq!(
        check_err(&bytes),
        Error::ExtensionPastHeader {
            offset: 12,
            len: CONTROL_LEN as u8
        }
    );
    // The header ends right after an extension's type byte.
    let bytes = hand_built(4, &[0x00, 0x00, 0x00, 0x20], &[0x24; 8]);
    assert_eq!(
        check_err(&bytes),
        Error::ExtensionMissingLength { offset: 15 }
    );
    // Ending exactly after the CONTROL is fine.
    let bytes = hand_built(8, &control, &[0; 8]);
    let packet = SalPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(
        SalRepr::parse(&packet).unwrap().control,
        Some(ControlRepr::default())
    );
}

#[test]
fn zero_and_one_length_extensions_are_rejected() {
    for kind in [1u8, 2, 3, 4, 5, 0xf] {
        for len in [0u8, 1] {
            let bytes = hand_built(4, &[kind << 4, len, 0, 0], &[]);
            assert_eq!(
                check_err(&bytes),
                Error::ExtensionTooShort { offset: 12, len },
                "type {kind} len {len}"
            );
        }
    }
}

#[test]
fn extension_running_past_header_is_rejected() {
    // Unknown type 9 with length 8 in a 4-byte extension region, followed by
    // payload bytes so the packet itself is long enough.
    let bytes = hand_built(4, &[0x90, 8, 0, 0], &[0; 16]);
    assert_eq!(
        check_err(&bytes),
        Error::ExtensionPastHeader { offset: 12, len: 8 }
    );
    // SOURCE whose length points one word past shl.
    let bytes = hand_built(5, &[0x40, 12, 0, 0, 10, 0, 0, 1], &[10, 0, 0, 2]);
    assert_eq!(
        check_err(&bytes),
        Error::ExtensionPastHeader {
            offset: 12,
            len: 12
        }
    );
    // An unknown type of sane length is skipped.
    let bytes = hand_built(5, &[0x90, 8, 1, 2, 3, 4, 5, 6], &[]);
    let packet = SalPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(
        SalRepr::parse(&packet).unwrap(),
        SalRepr::data(flow(1), None, 6)
    );
}

#[test]
fn source_with_zero_or_21_addresses_is_rejected() {
    let source = |n: usize| {
        let len = SOURCE_BASE_LEN + 4 * n;
        let mut ext = vec![0x40, len as u8, 0, 0];
        for i in 0..n {
            ext.extend_from_slice(&[10, 0, 0, i as u8 + 1]);
        }
        ext
    };
    for n in [0usize, 21] {
        let ext = source(n);
        let shl = ((BASE_HEADER_LEN + ext.len()) / 4) as u8;
        let bytes = hand_built(shl, &ext, &[]);
        assert_eq!(
            check_err(&bytes),
            Error::ExtensionBadLength {
                kind: ExtensionKind::Source,
                len: (SOURCE_BASE_LEN + 4 * n) as u8
            },
            "{n} addresses"
        );
    }
    for n in [1usize, 20] {
        let ext = source(n);
        let shl = ((BASE_HEADER_LEN + ext.len()) / 4) as u8;
        let bytes = hand_built(shl, &ext, &[]);
        let packet = SalPacket::new_checked(&bytes[..]).unwrap();
        let parsed = SalRepr::parse(&packet).unwrap();
        assert_eq!(parsed.source.unwrap().addrs.len(), n);
    }
    // And an empty SOURCE cannot be emitted.
    let mut repr = SalRepr::data(flow(1), None, 6);
    repr.source = Some(SourceRepr::default());
    assert!(repr.emit(&mut [0u8; 64]).is_err());
}

#[test]
fn truncated_packets_are_rejected() {
    let mut repr = SalRepr::data(flow(7), Some(flow(8)), 17);
    repr.control = Some(ControlRepr::default());
    repr.service = Some("beef".parse().unwrap());
    let bytes = emit(&repr, &[]);
    for cut in 0..bytes.len() {
        let err = check_err(&bytes[..cut]);
        if cut < BASE_HEADER_LEN {
            assert_eq!(err, Error::Truncated, "cut at {cut}");
        } else {
            assert_eq!(
                err,
                Error::HeaderPastPacket {
                    header: bytes.len(),
                    packet: cut
                }
            );
        }
    }
}

#[test]
fn wrong_lengths_for_fixed_size_types_are_rejected() {
    // CONTROL of 24 bytes, SERVICE of 32, ADDRESS of 14.
    for (kind, len) in [
        (ExtensionKind::Control, 24u8),
        (ExtensionKind::Service, 32),
        (ExtensionKind::Address, 14),
        (ExtensionKind::Source, 10),
    ] {
        let mut ext = vec![0u8; usize::from(len)];
        ext[0] = kind.nibble() << 4;
        ext[1] = len;
        ext.resize(usize::from(len).next_multiple_of(4), 0);
        let shl = ((BASE_HEADER_LEN + ext.len()) / 4) as u8;
        let bytes = hand_built(shl, &ext, &[]);
        assert_eq!(
            check_err(&bytes),
            Error::ExtensionBadLength { kind, len },
            "{kind:?}"
        );
    }
}

#[test]
fn bad_checksum_zero_flow_and_duplicates_are_rejected() {
    let mut bytes = emit(&SalRepr::data(flow(5), None, 6), &[1, 2, 3]);
    bytes[11] ^= 0x40;
    assert_eq!(check_err(&bytes), Error::BadChecksum);
    // The checksum does not cover the payload.
    bytes[11] ^= 0x40;
    bytes[13] ^= 0xff;
    assert!(SalRepr::parse(&SalPacket::new_checked(&bytes[..]).unwrap()).is_ok());

    let zero = hand_built(3, &[], &[]);
    let mut zero = zero.clone();
    zero[3] = 0;
    fix_checksum(&mut zero);
    assert_eq!(check_err(&zero), Error::ZeroSourceFlow);

    let mut service = vec![0u8; SERVICE_LEN];
    service[0] = 0x20;
    service[1] = SERVICE_LEN as u8;
    // Two SERVICE extensions are a destination and a sender; a third is one
    // too many.
    let thrice = [service.clone(), service.clone(), service].concat();
    let bytes = hand_built(((BASE_HEADER_LEN + thrice.len()) / 4) as u8, &thrice, &[]);
    assert_eq!(
        check_err(&bytes),
        Error::DuplicateExtension(ExtensionKind::Service)
    );
}

/// The ADDRESS length is one byte, so at most (255 - 12) / 4 = 60 addresses
/// can be expressed; the largest repr must emit a correctly framed extension.
#[test]
fn largest_address_extension_round_trips() {
    assert!(ADDRESS_BASE_LEN + 4 * MAX_ADDRESS_ADDRS <= usize::from(u8::MAX));
    let mut repr = SalRepr::data(flow(1), Some(flow(2)), 6);
    repr.address = Some(AddressRepr {
        verno: 1,
        ackno: 2,
        addrs: (0..MAX_ADDRESS_ADDRS)
            .map(|i| Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8))
            .collect(),
    });
    repr.source = Some(SourceRepr {
        addrs: (0..MAX_SOURCE_ADDRS)
            .map(|i| Ipv4Addr::new(10, 2, 0, i as u8))
            .collect(),
        client_port: 54324,
    });
    repr.control = Some(ControlRepr::default());
    repr.service = Some(ServiceId::from_bytes([0xff; 32]));
    let bytes = emit(&repr, &[]);
    let packet = SalPacket::new_checked(&bytes[..]).expect("well framed");
    assert_eq!(SalRepr::parse(&packet).unwrap(), repr);
}

#[test]
fn ipv4_carriage_rejects_garbage_without_panicking() {
    let mut frame = vec![0u8; 20];
    frame[0] = 0x45;
    frame[2..4].copy_from_slice(&20u16.to_be_bytes());
    frame[9] = 144;
    // Bad IPv4 checksum.
    assert_eq!(ipv4_payload(&frame).unwrap_err(), Error::BadIpv4);
    for cut in 0..frame.len() {
        assert!(ipv4_payload(&frame[..cut]).is_err());
    }
}
