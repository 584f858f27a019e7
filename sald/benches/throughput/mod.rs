//! Shared by the throughput benchmarks (`streams`, `udp`): iperf3 over the
//! kernel's TCP, application-to-application SAL streams through the socket
//! shim, and the TUN-forwarder ceiling, each in Gbit/s.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sal::{ServiceId, ServicePrefix};
use socket_shim::{ServiceListener, ServiceStream};
use testnet::Netns;

use crate::common::{Daemon, Sald};

/// A benchmark option from the environment, else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// iperf3 TCP throughput from `client` to an iperf3 server started in
/// `server` at `server_addr`, `streams` parallel, in Gbit/s.
pub fn iperf(
    client: &Netns,
    server: &Netns,
    server_addr: Ipv4Addr,
    streams: u32,
    seconds: u64,
) -> f64 {
    let server = server
        .spawn("iperf3", ["-s", "-1", "-p", "5299"])
        .expect("iperf3 server");
    thread::sleep(Duration::from_millis(300));
    let output = client
        .exec(
            "timeout",
            [
                (seconds + 10).to_string(),
                "iperf3".into(),
                "-c".into(),
                server_addr.to_string(),
                "-p".into(),
                "5299".into(),
                "-t".into(),
                seconds.to_string(),
                "-P".into(),
                streams.to_string(),
                "-J".into(),
            ],
        )
        .expect("iperf3 client");
    drop(server);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// The TUN forwarder's Gbit/s (testnet's baseline, same run).
pub fn tun_forwarder(seconds: u64) -> Option<f64> {
    let options = testnet::tunfwd::Options {
        seconds: u32::try_from(seconds).unwrap_or(60),
        ..testnet::tunfwd::Options::default()
    };
    match testnet::tunfwd::measure(&options) {
        Ok(report) => Some(report.tun.gbps),
        Err(error) => {
            eprintln!("TUN-forwarder baseline unavailable: {error}");
            None
        }
    }
}

/// Application-to-application throughput over `flows` SAL stream flows to
/// `service`, from `client`'s applications to `server`'s, in Gbit/s,
/// measured over `seconds` after half a second of start-up.
pub fn sal_throughput(
    client: &Daemon,
    server: &Daemon,
    service: &str,
    flows: usize,
    seconds: u64,
) -> f64 {
    let service: ServiceId = service.parse().expect("service");
    let listener = ServiceListener::bind_via(server.client(), ServicePrefix::exact(service), 64)
        .expect("bind");
    let received = Arc::new(AtomicU64::new(0));
    let sink = {
        let received = received.clone();
        thread::spawn(move || {
            let mut readers = Vec::new();
            for _ in 0..flows {
                let (mut stream, _) = listener.accept().expect("accept");
                let received = received.clone();
                readers.push(thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }));
            }
            for reader in readers {
                let _ = reader.join();
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..flows)
        .map(|_| {
            let stream =
                ServiceStream::connect_via(client.client(), service, Some(Duration::from_secs(5)))
                    .expect("connect");
            let stop = stop.clone();
            thread::spawn(move || {
                let mut stream = stream;
                let chunk = vec![0x5au8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                }
                let _ = stream.shutdown_write();
            })
        })
        .collect();
    // Measure a window after the start-up, not the start-up itself.
    thread::sleep(Duration::from_millis(500));
    let start_bytes = received.load(Ordering::Relaxed);
    let start = Instant::now();
    thread::sleep(Duration::from_secs(seconds));
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        let _ = writer.join();
    }
    let _ = sink.join();
    bytes as f64 * 8.0 / elapsed / 1e9
}
