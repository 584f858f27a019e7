//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test file uses its own subset

pub mod sim;
pub mod tap;

use std::path::PathBuf;

/// Path of the reference capture (WIRE.md), read in place from `shared/`.
pub fn reference_capture_path() -> PathBuf {
    vector_path("serval-reference.pcap")
}

/// Path of a capture in `shared/vectors`, read in place.
pub fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors")).join(name)
}

/// The IPv4 packets of the reference capture, Ethernet headers stripped,
/// other ethertypes (ARP) skipped.
pub fn reference_ipv4_packets() -> Vec<Vec<u8>> {
    let path = reference_capture_path();
    let file = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "cannot open the reference capture {} ({e}); it lives in shared/vectors beside the repository",
            path.display()
        )
    });
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("valid pcap header");
    let mut packets = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("valid pcap record");
        let frame = &packet.data;
        if frame.len() > 14 && frame[12..14] == [0x08, 0x00] {
            packets.push(frame[14..].to_vec());
        }
    }
    packets
}
