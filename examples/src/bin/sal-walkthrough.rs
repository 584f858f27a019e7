//! A guided tour of the SAL core, runnable without privileges: builds a small
//! service table, resolves service IDs through it, and builds, prints and
//! re-parses the packets of a connection handshake as they go on the wire.
//!
//! This is the README's demo until sald lands; it exercises exactly the code
//! that sald's data plane runs.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use sal::table::{ListenerId, Resolution, ServiceTable, Target};
use sal::wire::{
    fill_transport_checksum, ipv4_payload, verify_transport_checksum, ControlFlags, ControlRepr,
    Ipv4Carriage, SalPacket, SalRepr, TransportProtocol, IPV4_HEADER_LEN,
};
use sal::{FlowId, Locator, ServiceId, ServicePrefix};

#[derive(Parser)]
#[command(about = "Resolve service IDs through a service table and build SAL packets")]
struct Args {
    /// Service IDs to resolve (hex, left-aligned, e.g. `beef01`).
    #[arg(default_values_t = ["beef0001".to_string(), "beef0002".to_string(), "c0ffee".to_string(), "dead".to_string(), "1234".to_string()])]
    services: Vec<String>,
    /// How many connections to spread over the weighted replicas of `c0ffee/24`.
    #[arg(long, default_value_t = 1000)]
    connections: u32,
    /// Seed for the weighted choice, for reproducible output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn prefix(text: &str) -> ServicePrefix {
    text.parse().expect("built-in prefixes are valid")
}

fn forward(ip: [u8; 4], weight: u32) -> Target {
    Target::Forward {
        locator: Locator::Ipv4(Ipv4Addr::from(ip)),
        weight,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut rng = SmallRng::seed_from_u64(args.seed);

    println!("== 1. A service table");
    let mut table = ServiceTable::new();
    table.add(prefix("beef/16"), forward([10, 0, 1, 1], 1), 0);
    table.add(
        prefix("beef0001"),
        Target::Demux {
            listener: ListenerId(1),
        },
        0,
    );
    table.add(prefix("c0ffee/24"), forward([10, 0, 2, 1], 1), 0);
    table.add(prefix("c0ffee/24"), forward([10, 0, 2, 2], 3), 0);
    table.add(prefix("de/8"), Target::Drop, 0);
    table.add(ServicePrefix::DEFAULT, forward([10, 0, 0, 255], 1), 0);
    for rule in table.rules() {
        for entry in rule.targets() {
            println!(
                "  {:<14} {:?} priority {}",
                rule.prefix.to_string(),
                entry.target,
                entry.priority
            );
        }
    }

    println!("\n== 2. Longest-prefix-match resolution");
    for text in &args.services {
        let id: ServiceId = text
            .parse()
            .with_context(|| format!("bad service ID {text:?}"))?;
        let matched = table
            .longest_match(&id)
            .map_or("none".to_string(), |rule| rule.prefix.to_string());
        let resolution = table.resolve(&id, 0, &mut rng);
        println!("  {:<10} matches {:<14} -> {:?}", text, matched, resolution);
    }

    println!(
        "\n== 3. Weighted FORWARD: {} connections to c0ffee01",
        args.connections
    );
    let target: ServiceId = "c0ffee01".parse()?;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..args.connections {
        if let Resolution::Forward(locator) = table.resolve(&target, 0, &mut rng) {
            *counts.entry(locator.to_string()).or_insert(0u32) += 1;
        }
    }
    for (locator, count) in &counts {
        println!(
            "  {locator:<10} {count:>6} ({:.1}%)",
            100.0 * f64::from(*count) / f64::from(args.connections)
        );
    }
    println!("  (weights 1:3, so expect about 25% / 75%)");

    println!("\n== 4. The SYN a client sends to service 00004001");
    let client = Ipv4Addr::new(10, 77, 0, 1);
    let server = Ipv4Addr::new(10, 77, 0, 2);
    let mut syn = SalRepr::data(FlowId::new(2).context("flow id")?, None, 6);
    syn.control = Some(ControlRepr {
        flags: ControlFlags::SYN,
        verno: 0x8b2e0b10,
        ackno: 0,
        nonce: *b"\xfe\xf7\x8a\x96\x9a\x72\x2d\xc0",
    });
    syn.service = Some("00004001".parse()?);
    // A minimal TCP SYN with ports 0, as the transport segment.
    let mut tcp = [0u8; 20];
    tcp[4..8].copy_from_slice(&0xa1304ef3u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    let sal_len = syn.header_len() + tcp.len();
    let mut frame = vec![0u8; IPV4_HEADER_LEN + sal_len];
    Ipv4Carriage {
        src: client,
        dst: server,
        ttl: 64,
        ident: 1,
    }
    .emit(&mut frame, sal_len)?;
    let header_len = syn.emit(&mut frame[IPV4_HEADER_LEN..])?;
    let segment = &mut frame[IPV4_HEADER_LEN + header_len..];
    segment.copy_from_slice(&tcp);
    fill_transport_checksum(TransportProtocol::Stream, client, server, segment)?;
    for (i, chunk) in frame.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        println!("  {:04x}  {}", i * 16, hex.join(" "));
    }

    println!("\n== 5. Parsed back");
    let (carriage, sal_bytes) = ipv4_payload(&frame)?;
    let packet = SalPacket::new_checked(sal_bytes)?;
    let repr = SalRepr::parse(&packet)?;
    println!(
        "  IPv4 {} -> {} ttl {}",
        carriage.src, carriage.dst, carriage.ttl
    );
    println!(
        "  SAL  src_flow {:?} dst_flow {:?} shl {} protocol {} check {:#06x} (valid)",
        repr.src_flow,
        repr.dst_flow,
        packet.shl(),
        repr.protocol,
        packet.checksum()
    );
    if let Some(control) = repr.control {
        println!(
            "       CONTROL {:?} verno {:#x} ackno {:#x}",
            control.flags, control.verno, control.ackno
        );
    }
    if let Some(service) = repr.service {
        println!("       SERVICE {service}");
    }
    let ok = verify_transport_checksum(
        TransportProtocol::Stream,
        carriage.src,
        carriage.dst,
        packet.payload(),
    );
    println!(
        "  TCP  {} bytes, checksum over the real addresses {}",
        packet.payload().len(),
        if ok { "valid" } else { "INVALID" }
    );
    anyhow::ensure!(ok, "transport checksum did not verify");
    Ok(())
}
