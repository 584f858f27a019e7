//! `tun-forwarder`: the baseline "plain user-space TUN forwarder" of
//! DESIGN.md's performance method. It reads every client→server packet from
//! one TUN device and writes it to another, with nothing else in the loop,
//! so its throughput is the packet-rate ceiling of any TUN-attached stack on
//! this machine. Every run also measures kernel TCP over the same veths.
//!
//! Needs root and iperf3. Builds its own namespaces (testnet), so it never
//! touches the machine's interfaces, and removes them on exit.
//!
//! ```text
//!  client ns                      fwd ns                          server ns
//!  eth0 10.1.0.1/24 ── veth ──── eth0 10.1.0.2/24
//!       10.1.0.3/24               eth1 10.1.1.1/24 ──── veth ──── eth0 10.1.1.2/24
//!                                 tun0, tun1 (this program)            10.1.1.3/24
//!  eth1 10.3.0.1/24 ───────────────────── veth ───────────────────── eth1 10.3.0.2/24
//! ```
//!
//! Three measurements, one after the other, iperf3 TCP client→server for
//! `--seconds` (default 5) each, MTU 1500 (`--mtu`):
//!
//! 1. **kernel, direct veth**: 10.3.0.1 → 10.3.0.2, one veth hop;
//! 2. **kernel, forwarded**: 10.1.0.3 → 10.1.1.3, routed by the fwd
//!    namespace's kernel (two veth hops, IP forwarding);
//! 3. **TUN forwarder**: 10.1.0.1 → 10.1.1.2 over the same two veths. Policy
//!    routing in the fwd namespace sends `iif eth0 from 10.1.0.1 to 10.1.1.2`
//!    into `tun0` (table 100) and `iif eth1 from 10.1.1.2 to 10.1.0.1` into
//!    `tun1` (table 101). One thread reads `tun0` and writes what it read to
//!    `tun1`; the packet then enters the kernel on `tun1` and is routed out
//!    of eth1 to the server. Another thread does the same from `tun1` to
//!    `tun0` for the server's ACKs. Every packet crosses user space exactly
//!    once (read + write, no processing).
//!
//! TUN devices here are plain (no `IFF_VNET_HDR`, no offloads), as sald's
//! is: the kernel segments TSO bursts into MTU-sized packets before they
//! reach `tun0`, so case 3 is bound by per-packet cost while cases 1 and 2
//! move 64 KiB GSO super-packets. That gap is the point of the baseline.
//!
//! Writing a packet into a TUN runs the rest of its kernel journey
//! (forwarding, the veth, the receiver's stack) inside that `write(2)`, so
//! the forwarder threads also pay for the kernel work downstream of them,
//! as sald's would. When the forwarder falls behind a burst, the TUN's
//! transmit queue (`--txqueuelen`, kernel default 500) overflows; the
//! program reports those drops and the TCP retransmissions they cause.
//!
//! Output: Gbit/s for each case and the ratios, plus packet counts of the
//! forwarder. Bounded in time: each iperf3 client runs under `timeout`.
//! Run it with `scripts/bench-baselines` (release build) or
//! `cargo run --release -p sald --bin tun-forwarder -- --help`.

use std::os::fd::AsFd as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sald::link::TunDevice;
use testnet::{Netns, NsChild};

#[derive(Parser, Debug)]
#[command(
    about = "Baseline: kernel TCP vs. a plain user-space TUN-to-TUN forwarder (needs root, iperf3)"
)]
struct Args {
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
    /// MTU of every veth and TUN device.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(576..=9000))]
    mtu: u32,
    /// Transmit queue length of the two TUN devices (packets the kernel
    /// may queue for the forwarder to read; 500 is the kernel's default).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    txqueuelen: u32,
}

/// Counters of one forwarding direction.
#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    write_errors: AtomicU64,
}

/// Reads packets from `from` and writes them to `to` until `stop`.
/// Both devices are non-blocking; poll(2) with a short timeout lets the
/// thread notice `stop`.
fn pump(from: &TunDevice, to: &TunDevice, stop: &AtomicBool, c: &Counters) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        loop {
            match from.recv(&mut buf) {
                Ok(n) => match to.send(&buf[..n]) {
                    Ok(_) => {
                        c.packets.fetch_add(1, Ordering::Relaxed);
                        c.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        c.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Runs an iperf3 server in `server` on `addr` and an iperf3 client in
/// `client` from `src`; returns the receiver-side throughput in Gbit/s and
/// the sender's TCP retransmission count.
fn iperf(
    client: &Netns,
    server: &Netns,
    src: &str,
    addr: &str,
    port: u16,
    seconds: u32,
) -> Result<Run> {
    let mut cmd = server.command("iperf3");
    cmd.args(["-s", "-1", "-B", addr, "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server: NsChild = server.spawn_cmd(cmd).context("starting iperf3 server")?;
    let listening = testnet::wait_until(Duration::from_secs(5), || {
        server
            .exec_ok("ss", ["-Htln", "sport", "=", &format!(":{port}")])
            .map(|o| !o.trim().is_empty())
            .unwrap_or(false)
    });
    if !listening {
        bail!("iperf3 server on {addr}:{port} did not start");
    }
    let limit = (seconds + 15).to_string();
    let out = client
        .exec(
            "timeout",
            [
                limit.as_str(),
                "iperf3",
                "-c",
                addr,
                "-B",
                src,
                "-p",
                &port.to_string(),
                "-t",
                &seconds.to_string(),
                "--connect-timeout",
                "3000",
                "-J",
            ],
        )
        .context("running iperf3 client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "iperf3 output is not JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3 {src} -> {addr}: {err}");
    }
    let bps = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    let retransmits = json
        .pointer("/end/sum_sent/retransmits")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    Ok(Run {
        gbps: bps / 1e9,
        retransmits,
    })
}

/// One iperf3 measurement.
struct Run {
    gbps: f64,
    retransmits: u64,
}

/// Packets the kernel dropped because the forwarder did not read `tun` fast
/// enough (the TUN's transmit queue overflowed).
fn tun_tx_dropped(fwd: &Netns, tun: &str) -> Option<u64> {
    let out = fwd.ip(["-s", "-j", "link", "show", "dev", tun]).ok()?;
    let json: serde_json::Value = serde_json::from_str(&out).ok()?;
    json.pointer("/0/stats64/tx/dropped")?.as_u64()
}

struct Net {
    client: Netns,
    fwd: Netns,
    server: Netns,
}

fn build(mtu: u32) -> Result<Net> {
    let client = Netns::new("tunfwd-client")?;
    let fwd = Netns::new("tunfwd-fwd")?;
    let server = Netns::new("tunfwd-server")?;
    let mtu = Some(mtu);
    testnet::veth_mtu(
        &client,
        "eth0",
        "10.1.0.1/24",
        &fwd,
        "eth0",
        "10.1.0.2/24",
        mtu,
    )?;
    testnet::veth_mtu(
        &fwd,
        "eth1",
        "10.1.1.1/24",
        &server,
        "eth0",
        "10.1.1.2/24",
        mtu,
    )?;
    testnet::veth_mtu(
        &client,
        "eth1",
        "10.3.0.1/24",
        &server,
        "eth1",
        "10.3.0.2/24",
        mtu,
    )?;
    client.ip(["addr", "add", "10.1.0.3/24", "dev", "eth0"])?;
    server.ip(["addr", "add", "10.1.1.3/24", "dev", "eth0"])?;
    client.ip(["route", "add", "10.1.1.0/24", "via", "10.1.0.2"])?;
    server.ip(["route", "add", "10.1.0.0/24", "via", "10.1.1.1"])?;
    fwd.set_sysctl("net.ipv4.ip_forward", "1")?;
    fwd.set_sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    fwd.set_sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    Ok(Net {
        client,
        fwd,
        server,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !testnet::is_root() {
        bail!("tun-forwarder needs root (it builds network namespaces and TUN devices)");
    }
    testnet::ensure_iproute2()?;
    for tool in ["iperf3", "ss", "timeout"] {
        if !testnet::tool_available(tool) {
            bail!("`{tool}` not found: install it (apt-get install -y iperf3 iproute2 coreutils)");
        }
    }
    let started = Instant::now();
    let net = build(args.mtu).context("building the namespaces")?;

    println!(
        "tun-forwarder baseline: iperf3 TCP client->server, {} s per run, MTU {}, TUN txqueuelen {}",
        args.seconds, args.mtu, args.txqueuelen
    );
    let direct = iperf(
        &net.client,
        &net.server,
        "10.3.0.1",
        "10.3.0.2",
        5201,
        args.seconds,
    )
    .context("kernel, direct veth")?;
    println!(
        "  kernel TCP, direct veth              {:8.2} Gbit/s  ({} retransmits)",
        direct.gbps, direct.retransmits
    );
    let routed = iperf(
        &net.client,
        &net.server,
        "10.1.0.3",
        "10.1.1.3",
        5202,
        args.seconds,
    )
    .context("kernel, forwarded")?;
    println!(
        "  kernel TCP, forwarded by fwd ns      {:8.2} Gbit/s  ({} retransmits)",
        routed.gbps, routed.retransmits
    );

    // The TUN path.
    let mtu = args.mtu;
    let (tun0, tun1) = net.fwd.run(move || -> Result<(TunDevice, TunDevice)> {
        let t0 = TunDevice::create("tun0", mtu)?;
        let t1 = TunDevice::create("tun1", mtu)?;
        t0.set_nonblocking(true)?;
        t1.set_nonblocking(true)?;
        Ok((t0, t1))
    })??;
    let qlen = args.txqueuelen.to_string();
    for tun in ["tun0", "tun1"] {
        net.fwd
            .set_sysctl(&format!("net.ipv4.conf.{tun}.rp_filter"), "0")?;
        net.fwd.ip(["link", "set", tun, "txqueuelen", &qlen])?;
    }
    let f = &net.fwd;
    f.ip(["route", "add", "default", "dev", "tun0", "table", "100"])?;
    f.ip(["route", "add", "default", "dev", "tun1", "table", "101"])?;
    f.ip([
        "rule", "add", "pref", "100", "iif", "eth0", "from", "10.1.0.1", "to", "10.1.1.2",
        "lookup", "100",
    ])?;
    f.ip([
        "rule", "add", "pref", "101", "iif", "eth1", "from", "10.1.1.2", "to", "10.1.0.1",
        "lookup", "101",
    ])?;

    let stop = Arc::new(AtomicBool::new(false));
    let forward = Arc::new(Counters::default());
    let reverse = Arc::new(Counters::default());
    let tun0 = Arc::new(tun0);
    let tun1 = Arc::new(tun1);
    let threads = [
        (tun0.clone(), tun1.clone(), forward.clone()),
        (tun1.clone(), tun0.clone(), reverse.clone()),
    ]
    .map(|(from, to, c)| {
        let stop = stop.clone();
        std::thread::spawn(move || pump(&from, &to, &stop, &c))
    });
    let tun_result = iperf(
        &net.client,
        &net.server,
        "10.1.0.1",
        "10.1.1.2",
        5203,
        args.seconds,
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("forwarder thread: {e}"),
            Err(_) => eprintln!("forwarder thread panicked"),
        }
    }
    let tun = tun_result.context("TUN forwarder")?;
    let fp = forward.packets.load(Ordering::Relaxed);
    let fb = forward.bytes.load(Ordering::Relaxed);
    let rp = reverse.packets.load(Ordering::Relaxed);
    let errs =
        forward.write_errors.load(Ordering::Relaxed) + reverse.write_errors.load(Ordering::Relaxed);
    println!(
        "  TUN forwarder (user space, 1 copy)   {:8.2} Gbit/s  ({} retransmits)",
        tun.gbps, tun.retransmits
    );
    println!(
        "  ratio TUN / direct veth {:.3}, TUN / kernel forwarded {:.3}",
        tun.gbps / direct.gbps,
        tun.gbps / routed.gbps
    );
    let secs = f64::from(args.seconds);
    println!(
        "  forwarder: {fp} packets client->server (avg {:.0} B, ~{:.0} kpps), {rp} server->client, {errs} write errors",
        if fp > 0 { fb as f64 / fp as f64 } else { 0.0 },
        fp as f64 / secs / 1e3
    );
    println!(
        "  TUN queue overflows (kernel tx drops): tun0 {}, tun1 {}",
        tun_tx_dropped(&net.fwd, "tun0").map_or("?".into(), |d| d.to_string()),
        tun_tx_dropped(&net.fwd, "tun1").map_or("?".into(), |d| d.to_string())
    );
    drop((tun0, tun1));
    drop(net);
    println!(
        "  (total {:.1} s, namespaces removed)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
