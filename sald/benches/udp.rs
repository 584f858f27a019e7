//! UDP encapsulation benchmark: one and four bulk SAL flows carried in UDP,
//! next to the same flows carried natively (IPv4 protocol 144 through the
//! TUN device), kernel TCP, and a QUIC (quinn) bulk transfer, all on the
//! same veth pair in the same run.
//!
//! `cargo bench -p sald --bench udp` (root; iperf3 installed by
//! `scripts/setup`). `BENCH_SECONDS` (default 5) per run. The QUIC figure
//! comes from the `quic-peer` program, which lives in its own crate outside
//! the workspace (`benches/quic-peer/`) so that the normal build never
//! compiles rustls and quinn: `scripts/bench-udp` builds it and runs this
//! benchmark with `QUIC_PEER` pointing at it; without it the QUIC row says
//! how to get it.
//!
//! Topology: two namespaces joined by one veth pair, MTU 1500. sald runs on
//! both ends with the same flags except the carriage (`--udp ADDR:54325`
//! or the TUN). The fallback row is UDP mode with GSO and GRO turned off
//! (`--no-udp-offload`), as on a kernel without them: still batched
//! (`sendmmsg`/`recvmmsg`), one datagram per message.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sal::Locator;
use testnet::{Host, Netns, TopologyBuilder};

#[path = "../tests/common/mod.rs"]
mod common;
mod throughput;
use common::{Daemon, Sald};
use throughput::{env_or, iperf, sal_throughput};

/// The UDP port sald uses on both ends (the reference's server port).
const PORT: u16 = 54325;

/// sald on `host`'s first interface.
fn start(host: &Host, dir: &Path, name: &str, extra: &[&str]) -> Daemon {
    common::start_sald(&host.ns, &[&host.ifaces[0].name], dir, name, extra)
}

/// SAL throughput for 1 and 4 flows with sald started with `extra` on
/// both hosts and the client's default rule toward `server`.
fn sal_pair(
    hosts: (&Host, &Host),
    dir: &Path,
    extra: (&[&str], &[&str]),
    server: Locator,
    seconds: u64,
) -> (f64, f64) {
    let client = start(hosts.0, dir, "client", extra.0);
    let server_daemon = start(hosts.1, dir, "server", extra.1);
    client.forward_to("0/0", server, 1);
    let one = sal_throughput(&client, &server_daemon, "be0c4", 1, seconds);
    let four = sal_throughput(&client, &server_daemon, "be0c5", 4, seconds);
    (one, four)
}

/// The quic-peer program, if built.
fn quic_peer() -> Option<PathBuf> {
    let path = std::env::var_os("QUIC_PEER").map(PathBuf::from)?;
    path.is_file().then_some(path)
}

/// QUIC bulk throughput (quinn) from `client` to `server` at `addr`, over
/// `streams` streams of one connection, in Gbit/s as the server measured
/// it (half a second of start-up skipped, then `seconds`).
fn quic(
    program: &Path,
    client: &Netns,
    server: &Netns,
    addr: SocketAddrV4,
    streams: u32,
    seconds: u64,
) -> Option<f64> {
    let listen = addr.to_string();
    let seconds_text = seconds.to_string();
    let mut command = server.command(program);
    command
        .args(["server", "--listen", &listen, "--seconds", &seconds_text])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let measuring = server.spawn_cmd(command).ok()?;
    std::thread::sleep(Duration::from_millis(300));
    let streams = streams.to_string();
    let mut command = client.command(program);
    command
        .args([
            "client",
            "--connect",
            &listen,
            "--streams",
            &streams,
            "--seconds",
            &seconds_text,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let _client = client.spawn_cmd(command).ok()?;
    let output = measuring
        .wait_with_output(Duration::from_secs(seconds + 15))
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("gbps "))
        .and_then(|v| v.trim().parse().ok())
}

fn main() {
    if !testnet::is_root() {
        eprintln!("udp bench: SKIPPED (needs root for network namespaces)");
        return;
    }
    let seconds = env_or("BENCH_SECONDS", 5);
    let dir = std::env::temp_dir().join(format!("sald-udp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    println!("UDP encapsulation benchmark: {seconds} s per run, MTU 1500, one veth pair");

    let pair = TopologyBuilder::new("budp", 2)
        .link(0, 1)
        .build()
        .expect("namespaces");
    let (h0, h1) = (pair.host(0), pair.host(1));
    let (a0, a1): (Ipv4Addr, Ipv4Addr) = (h0.addr().expect("address"), h1.addr().expect("address"));
    let kernel_1 = iperf(&h0.ns, &h1.ns, a1, 1, seconds);
    let kernel_4 = iperf(&h0.ns, &h1.ns, a1, 4, seconds);
    let native = sal_pair((h0, h1), &dir, (&[], &[]), Locator::Ipv4(a1), seconds);
    let (u0, u1) = (format!("{a0}:{PORT}"), format!("{a1}:{PORT}"));
    let udp = sal_pair(
        (h0, h1),
        &dir,
        (&["--udp", u0.as_str()], &["--udp", u1.as_str()]),
        Locator::Udp(SocketAddrV4::new(a1, PORT)),
        seconds,
    );
    let fallback = sal_pair(
        (h0, h1),
        &dir,
        (
            &["--udp", u0.as_str(), "--no-udp-offload"],
            &["--udp", u1.as_str(), "--no-udp-offload"],
        ),
        Locator::Udp(SocketAddrV4::new(a1, PORT)),
        seconds,
    );
    let quic_program = quic_peer();
    let quic_figures = quic_program.as_ref().map(|program| {
        let addr = SocketAddrV4::new(a1, 4433);
        (
            quic(program, &h0.ns, &h1.ns, addr, 1, seconds),
            quic(program, &h0.ns, &h1.ns, addr, 4, seconds),
        )
    });
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!("bulk throughput, application to application   1 flow Gbit/s   4 flows Gbit/s");
    let row = |name: &str, (one, four): (f64, f64)| {
        println!("  {name:<44} {one:13.2}   {four:14.2}");
    };
    row("kernel TCP (iperf3), same veth pair", (kernel_1, kernel_4));
    row("SAL, native carriage (TUN)", native);
    row("SAL, UDP encapsulation", udp);
    row("SAL, UDP without GSO/GRO (fallback)", fallback);
    match quic_figures {
        Some((Some(one), Some(four))) => {
            row("QUIC (quinn 0.11), 1 connection, N streams", (one, four))
        }
        Some(_) => println!("  QUIC (quinn 0.11): the quic-peer program failed"),
        None => {
            println!("  QUIC (quinn 0.11): not measured (run scripts/bench-udp, or set QUIC_PEER)")
        }
    }
    println!();
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    println!(
        "UDP / native: 1 flow {:.2}x, 4 flows {:.2}x (target: 1 flow >= 1.5x: {})",
        ratio(udp.0, native.0),
        ratio(udp.1, native.1),
        if udp.0 >= 1.5 * native.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "UDP / kernel TCP: 1 flow {:.2}, 4 flows {:.2}",
        ratio(udp.0, kernel_1),
        ratio(udp.1, kernel_4)
    );
    if let Some((Some(one), Some(four))) = quic_figures {
        println!(
            "UDP / QUIC: 1 flow {:.2}x, 4 flows {:.2}x",
            ratio(udp.0, one),
            ratio(udp.1, four)
        );
    }
}
