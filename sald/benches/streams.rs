//! Stream benchmark of the whole stack: application to application through
//! the socket shim and two sald daemons, next to same-run baselines.
//!
//! `cargo bench -p sald --bench streams` (root; iperf3 installed by
//! `scripts/setup`). Options through the environment: `BENCH_SECONDS`
//! (default 5) per throughput run, `BENCH_CONNECTIONS` (default 300) per
//! latency run, `SALD_BASELINE` (a path to another sald binary, e.g. one
//! built from an earlier commit): its one- and four-flow throughput is
//! measured on the same pair in the same run, as the "before" of a change.
//!
//! Topologies (built with testnet, removed on exit):
//! - throughput: two namespaces joined by one veth pair, MTU 1500;
//!   the SAL figures use sald on both ends, the kernel figures iperf3 over
//!   the same veth pair;
//! - connection rate and latency: the same pair ("direct"), and a LAN of
//!   client, service router and server ("via router").
//!
//! The TUN-forwarder ceiling comes from `testnet::tunfwd` (the baseline the
//! `tun-forwarder` program prints), measured in this process right before:
//! one copy through user space per packet, the packet-rate ceiling of any
//! TUN-attached stack here.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use sal::{ServiceId, ServicePrefix};
use socket_shim::{ServiceListener, ServiceStream};
use testnet::{Host, TopologyBuilder};

#[path = "../tests/common/mod.rs"]
mod common;
mod throughput;
use common::{Daemon, Sald};
use throughput::{env_or, iperf, sal_throughput, tun_forwarder};

/// sald on `host`'s first interface.
fn start(host: &Host, dir: &Path, name: &str, extra: &[&str]) -> Daemon {
    common::start_sald(&host.ns, &[&host.ifaces[0].name], dir, name, extra)
}

/// Connections per second and connect latency percentiles (ms).
fn connect_rate(client: &Daemon, server: &Daemon, count: usize, service: &str) -> (f64, f64, f64) {
    let service: ServiceId = service.parse().expect("service");
    let listener = ServiceListener::bind_via(server.client(), ServicePrefix::exact(service), 256)
        .expect("bind");
    let acceptor = thread::spawn(move || {
        for _ in 0..count {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let _ = stream.write_all(b"!");
        }
    });
    let mut latencies = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        let mut stream =
            ServiceStream::connect_via(client.client(), service, Some(Duration::from_secs(5)))
                .expect("connect");
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        let mut byte = [0u8; 1];
        let _ = stream.read_exact(&mut byte);
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    let _ = acceptor.join();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (rate, pick(0.5), pick(0.99))
}

fn main() {
    if !testnet::is_root() {
        eprintln!("streams bench: SKIPPED (needs root for network namespaces)");
        return;
    }
    let seconds = env_or("BENCH_SECONDS", 5);
    let connections = env_or("BENCH_CONNECTIONS", 300) as usize;
    let dir = std::env::temp_dir().join(format!("sald-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");

    println!("SAL stream benchmark: {seconds} s per throughput run, MTU 1500, {connections} connections per latency run");
    let ceiling = tun_forwarder(seconds);

    let pair = TopologyBuilder::new("bench", 2)
        .link(0, 1)
        .build()
        .expect("namespaces");
    let server_addr = pair.host(1).addr().expect("address");
    let (ns0, ns1) = (&pair.host(0).ns, &pair.host(1).ns);
    let kernel_1 = iperf(ns0, ns1, server_addr, 1, seconds);
    let kernel_4 = iperf(ns0, ns1, server_addr, 4, seconds);
    let client = start(pair.host(0), &dir, "client", &[]);
    let server = start(pair.host(1), &dir, "server", &[]);
    client.forward("0/0", server_addr, 1);
    let sal_1 = sal_throughput(&client, &server, "be0c4", 1, seconds);
    let sal_4 = sal_throughput(&client, &server, "be0c4", 4, seconds);
    let direct = connect_rate(&client, &server, connections, "c0");
    drop((client, server));
    let baseline = std::env::var_os("SALD_BASELINE").map(PathBuf::from);
    let baseline = baseline.map(|program| {
        let start = |host: &Host, name| {
            common::start_sald_binary(&program, &host.ns, &[&host.ifaces[0].name], &dir, name, &[])
        };
        let client = start(pair.host(0), "bclient");
        let server = start(pair.host(1), "bserver");
        client.forward("0/0", server_addr, 1);
        let one = sal_throughput(&client, &server, "be0c4", 1, seconds);
        let four = sal_throughput(&client, &server, "be0c4", 4, seconds);
        (program, one, four)
    });
    drop(pair);

    let lan = TopologyBuilder::new("benchr", 3)
        .lan(&[0, 1, 2])
        .build()
        .expect("namespaces");
    let client = start(lan.host(0), &dir, "rclient", &[]);
    let router = start(lan.host(1), &dir, "router", &["--forward"]);
    let server = start(lan.host(2), &dir, "rserver", &[]);
    client.forward("0/0", lan.host(1).addr().expect("address"), 1);
    router.forward("0/0", lan.host(2).addr().expect("address"), 1);
    let routed = connect_rate(&client, &server, connections, "c1");
    drop((client, router, server, lan));
    let _ = std::fs::remove_dir_all(&dir);

    let ceiling_text = ceiling.map_or("unavailable".to_string(), |c| format!("{c:.2} Gbit/s"));
    println!();
    println!("throughput (application to application)   Gbit/s   / kernel TCP   / TUN forwarder");
    let ratio = |x: f64, base: Option<f64>| base.map_or("-".into(), |b| format!("{:.3}", x / b));
    println!("  kernel TCP, 1 flow, same veth pair      {kernel_1:7.2}");
    println!("  kernel TCP, 4 flows                     {kernel_4:7.2}");
    println!("  TUN forwarder ceiling (1 copy/packet)   {ceiling_text}");
    println!(
        "  SAL, 1 flow                             {sal_1:7.2}   {:>12}   {:>13}",
        ratio(sal_1, Some(kernel_1)),
        ratio(sal_1, ceiling)
    );
    println!(
        "  SAL, 4 flows                            {sal_4:7.2}   {:>12}   {:>13}",
        ratio(sal_4, Some(kernel_4)),
        ratio(sal_4, ceiling)
    );
    if let Some((program, one, four)) = &baseline {
        println!("  baseline sald ({}):", program.display());
        println!(
            "    1 flow                                {one:7.2}   {:>12}   {:>13}   this/baseline {:.2}",
            ratio(*one, Some(kernel_1)),
            ratio(*one, ceiling),
            sal_1 / one
        );
        println!(
            "    4 flows                               {four:7.2}   {:>12}   {:>13}   this/baseline {:.2}",
            ratio(*four, Some(kernel_4)),
            ratio(*four, ceiling),
            sal_4 / four
        );
    }
    if let Some(c) = ceiling {
        let met = sal_1 >= 0.4 * c;
        println!(
            "  target: 1 flow >= 40% of the TUN-forwarder ceiling: {} ({:.0}%)",
            if met { "met" } else { "NOT met" },
            100.0 * sal_1 / c
        );
    }
    println!();
    println!("connections (connect + 1-byte answer)   conn/s   p50 connect ms   p99 connect ms");
    println!(
        "  direct                                {:7.0}   {:14.2}   {:14.2}",
        direct.0, direct.1, direct.2
    );
    println!(
        "  via service router                    {:7.0}   {:14.2}   {:14.2}",
        routed.0, routed.1, routed.2
    );
    println!(
        "  router / direct: rate {:.2}, p50 {:.2}",
        routed.0 / direct.0,
        routed.1 / direct.1
    );
}
