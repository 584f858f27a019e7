//! Legitimate connects during a SYN flood (issue 12, finding 2).
//!
//! Two namespaces: the client's sald and the attacker on one, the server's
//! sald and an application that greets every flow it accepts on the other.
//! The attacker sends valid SAL SYNs carrying valid TCP SYNs from spoofed
//! addresses (a /16 the server blackholes) through a raw socket, paced at
//! `SYNFLOOD_RATE` per second (default 32,000). The same sequence of
//! legitimate connects (`SYNFLOOD_CONNECTS`, default 40; connect, read
//! the greeting, 5 s limit each) runs without the flood and then during
//! it, in the same run; the figures are the success rate and p50 / p99
//! connect time of each, the flood rate really achieved, and the server
//! sald's resident memory before, at its peak during, and after the flood.
//! Connects are spread over `SYNFLOOD_SECONDS` (default 10), so the flood
//! runs about that long (never more than a minute).
//!
//! Run: `cargo bench -p sald --bench synflood` (root).

use std::net::Ipv4Addr;
use std::time::Duration;

use sal::ServiceId;
use sal_control::{Request, Response, StatsReport};

#[path = "../tests/common/mod.rs"]
mod common;
use common::flood::{connect_once, Flood, Greeter};
use common::{Daemon, Sald};

/// Spoofed sources: 10.200.0.0/16.
const SPOOF: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
/// The flood never runs longer than this, whatever the connects take.
const FLOOD_LIMIT: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(daemon: &Daemon) -> StatsReport {
    match daemon.request(Request::Stats) {
        Response::Stats { stats } => *stats,
        other => panic!("no stats: {other:?}"),
    }
}

/// Success count and connect times of `count` sequential connects, one
/// started every `every` at most; `between` runs after each (to sample
/// memory).
fn connects(
    client: &Daemon,
    service: ServiceId,
    count: usize,
    every: Duration,
    mut between: impl FnMut(),
) -> (usize, Vec<Duration>) {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let started = std::time::Instant::now();
        if let Some(took) = connect_once(client, service) {
            times.push(took);
        }
        between();
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }
    times.sort();
    (times.len(), times)
}

/// The `p`th percentile of sorted `times`, in milliseconds.
fn percentile(times: &[Duration], p: f64) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    let at = ((times.len() as f64 * p / 100.0).ceil() as usize).clamp(1, times.len()) - 1;
    times[at].as_secs_f64() * 1e3
}

fn main() {
    if !testnet::is_root() {
        eprintln!("synflood: needs root (network namespaces, raw sockets); skipped");
        return;
    }
    let rate = env_or("SYNFLOOD_RATE", 32_000);
    let count = env_or("SYNFLOOD_CONNECTS", 40) as usize;
    let seconds = env_or("SYNFLOOD_SECONDS", 10);
    let every = Duration::from_secs(seconds) / count.max(1) as u32;
    let pair = common::DaemonPair::new("synfl");
    let (client, server, net) = (&pair.client, &pair.server, &pair.net);
    let server_ip = net.host(1).addr().expect("address");
    net.host(1)
        .ns
        .ip(["route", "add", "blackhole", "10.200.0.0/16"])
        .expect("blackhole");
    let service: ServiceId = "5f01".parse().unwrap();
    let _app = Greeter::start(server, "5f/8");
    let pid = server.child.id();

    let rss_before = common::rss(pid);
    let (base_ok, base) = connects(client, service, count, every, || {});

    let flood = Flood::start(
        &net.host(0).ns,
        server_ip,
        service,
        SPOOF,
        rate,
        FLOOD_LIMIT,
        rate * FLOOD_LIMIT.as_secs(),
    );
    // Let the flood fill whatever it can fill first.
    std::thread::sleep(Duration::from_secs(1));
    let mut rss_peak = common::rss(pid);
    let (flood_ok, during) = connects(client, service, count, every, || {
        rss_peak = rss_peak.max(common::rss(pid));
    });
    let under_flood = stats(server);
    let (sent, ran) = flood.finish();
    std::thread::sleep(Duration::from_secs(11));
    let rss_after = common::rss(pid);
    let after = stats(server);

    let kib = |b: u64| b >> 10;
    println!("synflood: {count} legitimate connects (5 s limit each), same run");
    println!(
        "  flood: {sent} SYNs in {:.1} s = {:.0} SYN/s achieved (target {rate}/s), spoofed from {SPOOF}/16",
        ran.as_secs_f64(),
        sent as f64 / ran.as_secs_f64()
    );
    println!(
        "  {:<14} {:>9} {:>10} {:>10}",
        "", "success", "p50 ms", "p99 ms"
    );
    for (name, ok, times) in [
        ("no flood", base_ok, &base),
        ("during flood", flood_ok, &during),
    ] {
        println!(
            "  {name:<14} {:>5}/{count:<3} {:>10.2} {:>10.2}",
            ok,
            percentile(times, 50.0),
            percentile(times, 99.0)
        );
    }
    println!(
        "  server sald RSS: {} KiB before, {} KiB peak during (+{} KiB), {} KiB 11 s after",
        kib(rss_before),
        kib(rss_peak),
        kib(rss_peak.saturating_sub(rss_before)),
        kib(rss_after)
    );
    let h = under_flood.host;
    println!(
        "  server during the flood: {} flows, cookies sent {} accepted {}, SYNs in {}; after: {} flows, {} half-open expired",
        under_flood.flows, h.cookies_sent, h.cookies_accepted, h.packets_in, after.flows, after.host.half_open_expired
    );
}
