//! Runs `tshark` with `serval.lua` over every capture in `shared/vectors/`
//! (and over two captures made here: a corrupted checksum, and UDP
//! encapsulation) and checks every decoded field against the protocol core's
//! parser. Needs `tshark` (installed by `scripts/setup`); fails when it is
//! missing rather than passing without checking anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use serval_wireshark::{expected_packets, Carriage, ExpectedPacket};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors");
const DISSECTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/serval.lua");

/// Fields asked of tshark, in column order.
const FIELDS: &[&str] = &[
    "frame.number",
    "serval.src_flow",
    "serval.dst_flow",
    "serval.shl",
    "serval.protocol",
    "serval.checksum",
    "serval.checksum.status",
    "serval.flags",
    "serval.verno",
    "serval.ackno",
    "serval.nonce",
    "serval.service_id",
    "serval.source",
    "serval.address",
    "serval.address_verno",
    "serval.address_ackno",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.len",
    "udp.srcport",
    "udp.length",
    "_ws.malformed",
];

/// One frame's fields as tshark printed them (empty string: absent).
type Row = BTreeMap<&'static str, String>;

fn tshark(capture: &Path) -> BTreeMap<usize, Row> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-X")
        .arg(format!("lua_script:{DISSECTOR}"))
        .arg("-r")
        .arg(capture)
        .args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a"])
        .args(["-E", "aggregator=,"]);
    for field in FIELDS {
        cmd.args(["-e", field]);
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run tshark ({e}): install it with scripts/setup (apt-get install tshark)"
        ),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tshark failed on {}: {stderr}",
        capture.display()
    );
    // A Lua error is printed but does not make tshark fail.
    assert!(
        !stderr.contains("Lua") && !stderr.contains("lua_"),
        "the dissector raised an error on {}: {stderr}",
        capture.display()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .map(|line| {
            let row: Row = FIELDS
                .iter()
                .copied()
                .zip(
                    line.split('\t')
                        .map(str::to_owned)
                        .chain(std::iter::repeat(String::new())),
                )
                .collect();
            let frame = row["frame.number"].parse().expect("frame number");
            (frame, row)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn addresses(list: &[Ipv4Addr]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The transport fields tshark must print for a segment handed to its TCP
/// or UDP dissector: (tcp.seq_raw, tcp.ack_raw, tcp.len) or (udp.length).
fn transport_fields(packet: &ExpectedPacket) -> [(&'static str, String); 7] {
    let segment = &packet.segment;
    let mut fields = [
        ("tcp.srcport", String::new()),
        ("tcp.dstport", String::new()),
        ("tcp.seq_raw", String::new()),
        ("tcp.ack_raw", String::new()),
        ("tcp.len", String::new()),
        ("udp.srcport", String::new()),
        ("udp.length", String::new()),
    ];
    let (mut udp_ports, mut udp_lengths) = (Vec::new(), Vec::new());
    if let Carriage::Udp {
        src_port, length, ..
    } = packet.carriage
    {
        udp_ports.push(src_port.to_string());
        udp_lengths.push(length.to_string());
    }
    if packet.protocol == 6 && segment.len() >= 20 {
        let header_len = usize::from(segment[12] >> 4) * 4;
        fields[0].1 = "0".into();
        fields[1].1 = "0".into();
        fields[2].1 = be32(&segment[4..8]).to_string();
        fields[3].1 = be32(&segment[8..12]).to_string();
        fields[4].1 = segment.len().saturating_sub(header_len).to_string();
    } else if packet.protocol == 17 && segment.len() >= 8 {
        udp_ports.push("0".into());
        udp_lengths.push(u16::from_be_bytes([segment[4], segment[5]]).to_string());
    }
    fields[5].1 = udp_ports.join(",");
    fields[6].1 = udp_lengths.join(",");
    fields
}

/// What tshark must print for `packet`, field by field.
fn wanted(packet: &ExpectedPacket) -> Vec<(&'static str, String)> {
    let control = packet.control.as_ref();
    let address = packet.address.as_ref();
    let mut fields = vec![
        ("serval.src_flow", format!("0x{:08x}", packet.src_flow)),
        ("serval.dst_flow", format!("0x{:08x}", packet.dst_flow)),
        ("serval.shl", packet.shl.to_string()),
        ("serval.protocol", packet.protocol.to_string()),
        ("serval.checksum", format!("0x{:04x}", packet.checksum)),
        (
            "serval.checksum.status",
            u8::from(packet.checksum_good).to_string(),
        ),
        (
            "serval.flags",
            control.map_or(String::new(), |c| format!("0x{:02x}", c.flags)),
        ),
        (
            "serval.verno",
            control.map_or(String::new(), |c| c.verno.to_string()),
        ),
        (
            "serval.ackno",
            control.map_or(String::new(), |c| c.ackno.to_string()),
        ),
        (
            "serval.nonce",
            control.map_or(String::new(), |c| hex(&c.nonce)),
        ),
        (
            "serval.service_id",
            packet.service_id.map_or(String::new(), |id| hex(&id)),
        ),
        ("serval.source", addresses(&packet.source)),
        (
            "serval.address",
            address.map_or(String::new(), |a| addresses(&a.addresses)),
        ),
        (
            "serval.address_verno",
            address.map_or(String::new(), |a| a.verno.to_string()),
        ),
        (
            "serval.address_ackno",
            address.map_or(String::new(), |a| a.ackno.to_string()),
        ),
        ("_ws.malformed", String::new()),
    ];
    fields.extend(transport_fields(packet));
    fields
}

/// Checks tshark's decode of `capture` against the core's; returns how many
/// SAL packets it held.
fn check_capture(capture: &Path) -> usize {
    let expected = expected_packets(capture).unwrap_or_else(|e| panic!("{e}"));
    let rows = tshark(capture);
    let mut mismatches = Vec::new();
    for packet in &expected {
        let Some(row) = rows.get(&packet.frame) else {
            mismatches.push(format!("frame {}: not in tshark's output", packet.frame));
            continue;
        };
        for (field, want) in wanted(packet) {
            if row[field] != want {
                mismatches.push(format!(
                    "frame {} {field}: tshark says {:?}, the core says {want:?}",
                    packet.frame, row[field]
                ));
            }
        }
    }
    // Frames that are not SAL must not be claimed by the dissector.
    for (frame, row) in &rows {
        if !row["serval.src_flow"].is_empty() && !expected.iter().any(|p| p.frame == *frame) {
            mismatches.push(format!("frame {frame}: decoded as SAL but is not SAL"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{}:\n{}",
        capture.display(),
        mismatches.join("\n")
    );
    expected.len()
}

fn captures() -> Vec<PathBuf> {
    let mut list: Vec<PathBuf> = std::fs::read_dir(VECTORS)
        .unwrap_or_else(|e| panic!("{VECTORS}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pcap"))
        .collect();
    list.sort();
    list
}

#[test]
fn every_vector_decodes_like_the_core_parses_it() {
    let list = captures();
    assert!(
        list.len() >= 5,
        "expected the five vector captures, found {list:?}"
    );
    for capture in list {
        let count = check_capture(&capture);
        assert!(count > 0, "{}: no SAL packet", capture.display());
        if capture
            .file_name()
            .is_some_and(|n| n == "serval-reference.pcap")
        {
            assert_eq!(count, 52, "the reference capture holds 52 SAL packets");
        }
    }
}

/// Rewrites the frames of a vector through `edit` into a temporary capture.
fn rewrite(vector: &str, name: &str, edit: impl Fn(&[u8]) -> Vec<u8>) -> PathBuf {
    let source = Path::new(VECTORS).join(vector);
    let mut reader = PcapReader::new(File::open(&source).expect("open vector")).expect("pcap");
    let header = reader.header();
    let path = std::env::temp_dir().join(format!("serval-wireshark-{}-{name}", std::process::id()));
    let mut writer =
        PcapWriter::with_header(File::create(&path).expect("create"), header).expect("pcap writer");
    while let Some(packet) = reader.next_packet() {
        let packet = packet.expect("packet");
        let data = edit(&packet.data);
        let out = PcapPacket::new(packet.timestamp, data.len() as u32, &data);
        writer.write_packet(&out).expect("write");
    }
    path
}

fn is_native_sal(frame: &[u8]) -> bool {
    frame.len() > 34 && frame[12..14] == [0x08, 0x00] && frame[23] == 144
}

/// Ones' complement checksum of an IPv4 header.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .map(|(_, w)| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn a_bad_checksum_is_flagged_and_the_fields_still_decode() {
    // Flip the SAL checksum of every SAL packet (IPv4 header is 20 bytes here).
    let path = rewrite("serval-reference.pcap", "badsum.pcap", |frame| {
        let mut frame = frame.to_vec();
        if is_native_sal(&frame) {
            frame[14 + 20 + 10] ^= 0x5a;
        }
        frame
    });
    let expected = expected_packets(&path).expect("parse");
    assert!(expected.iter().all(|p| !p.checksum_good));
    let count = check_capture(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(count, 52);
}

#[test]
fn udp_encapsulated_packets_decode_too() {
    // Each native SAL packet re-wrapped as UDP 54324 -> 54325 (checksum 0).
    let path = rewrite("reference-router-forwarded.pcap", "udp.pcap", |frame| {
        if !is_native_sal(frame) {
            return frame.to_vec();
        }
        let ip_len = usize::from(frame[14] & 0x0f) * 4;
        let sal = &frame[14 + ip_len..14 + usize::from(u16::from_be_bytes([frame[16], frame[17]]))];
        let mut out = frame[..14 + ip_len].to_vec();
        let total = (ip_len + 8 + sal.len()) as u16;
        out[16..18].copy_from_slice(&total.to_be_bytes());
        out[23] = 17;
        let check = ipv4_checksum(&out[14..14 + ip_len]);
        out[24..26].copy_from_slice(&check.to_be_bytes());
        out.extend_from_slice(&54324u16.to_be_bytes());
        out.extend_from_slice(&54325u16.to_be_bytes());
        out.extend_from_slice(&(8 + sal.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(sal);
        out
    });
    let count = check_capture(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(count, 33, "every frame of the router capture is SAL");
}
