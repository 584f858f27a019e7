//! The baseline "plain user-space TUN forwarder" of DESIGN.md's performance
//! method. It reads every client→server packet from one TUN device and
//! writes it to another, with nothing else in the loop, so its throughput is
//! the packet-rate ceiling of any TUN-attached stack on this machine. Every
//! run also measures kernel TCP over the same veths.
//!
//! Needs root and iperf3. Builds its own namespaces, so it never touches the
//! machine's interfaces, and removes them when done (also on error).
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
//! [`Options::seconds`] each:
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
//! TUN devices here are plain (no `IFF_VNET_HDR`, no offloads, no packet
//! information), as sald's is: the kernel segments TSO bursts into MTU-sized
//! packets before they reach `tun0`, so case 3 is bound by per-packet cost
//! while cases 1 and 2 move 64 KiB GSO super-packets. That gap is the point
//! of the baseline.
//!
//! Writing a packet into a TUN runs the rest of its kernel journey
//! (forwarding, the veth, the receiver's stack) inside that `write(2)`, so
//! the forwarder threads also pay for the kernel work downstream of them,
//! as sald's would. When the forwarder falls behind a burst, the TUN's
//! transmit queue ([`Options::txqueuelen`], kernel default 500) overflows;
//! the report counts those drops and the TCP retransmissions they cause.
//!
//! Bounded in time: each iperf3 client runs under `timeout`. The
//! `tun-forwarder` program of this crate prints a [`Report`]
//! (`scripts/bench-baselines`); sald's stream benchmark calls [`measure`].

use std::fmt;
use std::os::fd::{AsRawFd as _, BorrowedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::{veth_mtu, wait_until, Error, Netns, NsChild, Result};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// MTU of every veth and TUN device.
    pub mtu: u32,
    /// Transmit queue length of the two TUN devices (packets the kernel may
    /// queue for the forwarder to read; 500 is the kernel's default).
    pub txqueuelen: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seconds: 5,
            mtu: 1500,
            txqueuelen: 500,
        }
    }
}

/// One iperf3 measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Receiver-side throughput.
    pub gbps: f64,
    /// TCP retransmissions the sender counted.
    pub retransmits: u64,
}

/// Everything one [`measure`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// What was asked for.
    pub options: Options,
    /// Kernel TCP over one veth.
    pub direct: Run,
    /// Kernel TCP forwarded by the fwd namespace's kernel.
    pub routed: Run,
    /// TCP through the user-space forwarder.
    pub tun: Run,
    /// Packets (and bytes) the forwarder moved client→server.
    pub forward_packets: u64,
    /// Bytes of those packets (whole IP packets as read from the TUN).
    pub forward_bytes: u64,
    /// Packets it moved server→client.
    pub reverse_packets: u64,
    /// Writes into a TUN that failed.
    pub write_errors: u64,
    /// The kernel's transmit drops of tun0 and tun1 (queue overflows).
    pub tun_drops: [Option<u64>; 2],
}

/// Counters of one forwarding direction.
#[derive(Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    write_errors: AtomicU64,
}

/// Reads packets from `from` and writes them to `to` until `stop`. Both
/// devices are non-blocking; poll(2) with a short timeout lets the thread
/// notice `stop`.
fn pump(
    from: &tun_tap::Iface,
    to: &tun_tap::Iface,
    stop: &AtomicBool,
    c: &Counters,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the descriptor belongs to `from`, which outlives this
        // borrow (it is only used for the poll call below).
        let fd = unsafe { BorrowedFd::borrow_raw(from.as_raw_fd()) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
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

fn failed(what: impl Into<String>, reason: impl fmt::Display) -> Error {
    Error::Measurement {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Runs an iperf3 server in `server` on `addr` and an iperf3 client in
/// `client` from `src`; returns the receiver-side throughput and the
/// sender's TCP retransmission count.
fn iperf(
    client: &Netns,
    server: &Netns,
    src: &str,
    addr: &str,
    port: u16,
    seconds: u32,
) -> Result<Run> {
    let what = format!("iperf3 {src} -> {addr}");
    let mut cmd = server.command("iperf3");
    cmd.args(["-s", "-1", "-B", addr, "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _server: NsChild = server.spawn_cmd(cmd)?;
    let listening = wait_until(Duration::from_secs(5), || {
        server
            .exec_ok("ss", ["-Htln", "sport", "=", &format!(":{port}")])
            .map(|o| !o.trim().is_empty())
            .unwrap_or(false)
    });
    if !listening {
        return Err(failed(
            what,
            format!("server on {addr}:{port} did not start"),
        ));
    }
    let limit = (seconds + 15).to_string();
    let port = port.to_string();
    let seconds = seconds.to_string();
    let out = client.exec(
        "timeout",
        [
            limit.as_str(),
            "iperf3",
            "-c",
            addr,
            "-B",
            src,
            "-p",
            &port,
            "-t",
            &seconds,
            "--connect-timeout",
            "3000",
            "-J",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        failed(
            &what,
            format!(
                "output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })?;
    if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
        return Err(failed(what, err));
    }
    let bps = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| failed(&what, "JSON without end.sum_received.bits_per_second"))?;
    let retransmits = json
        .pointer("/end/sum_sent/retransmits")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    Ok(Run {
        gbps: bps / 1e9,
        retransmits,
    })
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
    veth_mtu(
        &client,
        "eth0",
        "10.1.0.1/24",
        &fwd,
        "eth0",
        "10.1.0.2/24",
        mtu,
    )?;
    veth_mtu(
        &fwd,
        "eth1",
        "10.1.1.1/24",
        &server,
        "eth0",
        "10.1.1.2/24",
        mtu,
    )?;
    veth_mtu(
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

/// Creates TUN device `name` in `ns` (no packet information, non-blocking,
/// IPv6 off so that router solicitations do not show up), sets its MTU and
/// queue length and brings it up.
fn create_tun(ns: &Netns, name: &str, mtu: u32, txqueuelen: u32) -> Result<tun_tap::Iface> {
    let context = format!("creating TUN device {name} in {}", ns.name());
    let tun = ns
        .run(|| {
            let tun = tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tun)?;
            let fd = tun.as_raw_fd();
            let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
            fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
            Ok::<_, std::io::Error>(tun)
        })?
        .map_err(|source| Error::Io { context, source })?;
    ns.set_sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1")
        .or_else(|e| match e {
            // No IPv6 in this kernel: nothing to switch off.
            Error::Io { .. } => Ok(()),
            other => Err(other),
        })?;
    ns.set_sysctl(&format!("net.ipv4.conf.{name}.rp_filter"), "0")?;
    ns.ip([
        "link",
        "set",
        name,
        "mtu",
        &mtu.to_string(),
        "txqueuelen",
        &txqueuelen.to_string(),
        "up",
    ])?;
    Ok(tun)
}

/// Measures the three cases (see the module documentation) on namespaces it
/// builds and removes. Needs root, `iperf3`, `ss` and `timeout`.
pub fn measure(options: &Options) -> Result<Report> {
    crate::ensure_iproute2()?;
    for tool in ["iperf3", "ss", "timeout"] {
        if !crate::tool_available(tool) {
            return Err(Error::MissingTool {
                tool,
                hint: "apt-get install -y iperf3 iproute2 coreutils",
            });
        }
    }
    let net = build(options.mtu)?;
    let seconds = options.seconds;
    let direct = iperf(
        &net.client,
        &net.server,
        "10.3.0.1",
        "10.3.0.2",
        5201,
        seconds,
    )?;
    let routed = iperf(
        &net.client,
        &net.server,
        "10.1.0.3",
        "10.1.1.3",
        5202,
        seconds,
    )?;

    // The TUN path.
    let tun0 = Arc::new(create_tun(
        &net.fwd,
        "tun0",
        options.mtu,
        options.txqueuelen,
    )?);
    let tun1 = Arc::new(create_tun(
        &net.fwd,
        "tun1",
        options.mtu,
        options.txqueuelen,
    )?);
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
    let threads = [
        (tun0.clone(), tun1.clone(), forward.clone()),
        (tun1.clone(), tun0.clone(), reverse.clone()),
    ]
    .map(|(from, to, c)| {
        let stop = stop.clone();
        std::thread::spawn(move || pump(&from, &to, &stop, &c))
    });
    let tun = iperf(
        &net.client,
        &net.server,
        "10.1.0.1",
        "10.1.1.2",
        5203,
        seconds,
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("forwarder thread: {e}"),
            Err(_) => eprintln!("forwarder thread panicked"),
        }
    }
    let tun = tun?;
    let tun_drops = [
        tun_tx_dropped(&net.fwd, "tun0"),
        tun_tx_dropped(&net.fwd, "tun1"),
    ];
    Ok(Report {
        options: *options,
        direct,
        routed,
        tun,
        forward_packets: forward.packets.load(Ordering::Relaxed),
        forward_bytes: forward.bytes.load(Ordering::Relaxed),
        reverse_packets: reverse.packets.load(Ordering::Relaxed),
        write_errors: forward.write_errors.load(Ordering::Relaxed)
            + reverse.write_errors.load(Ordering::Relaxed),
        tun_drops,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "tun-forwarder baseline: iperf3 TCP client->server, {} s per run, MTU {}, TUN txqueuelen {}",
            o.seconds, o.mtu, o.txqueuelen
        )?;
        let line = |f: &mut fmt::Formatter<'_>, label: &str, run: &Run| {
            writeln!(
                f,
                "  {label:<37}{:8.2} Gbit/s  ({} retransmits)",
                run.gbps, run.retransmits
            )
        };
        line(f, "kernel TCP, direct veth", &self.direct)?;
        line(f, "kernel TCP, forwarded by fwd ns", &self.routed)?;
        line(f, "TUN forwarder (user space, 1 copy)", &self.tun)?;
        writeln!(
            f,
            "  ratio TUN / direct veth {:.3}, TUN / kernel forwarded {:.3}",
            self.tun.gbps / self.direct.gbps,
            self.tun.gbps / self.routed.gbps
        )?;
        let (fp, secs) = (self.forward_packets, f64::from(o.seconds));
        writeln!(
            f,
            "  forwarder: {fp} packets client->server (avg {:.0} B, ~{:.0} kpps), {} server->client, {} write errors",
            if fp > 0 {
                self.forward_bytes as f64 / fp as f64
            } else {
                0.0
            },
            fp as f64 / secs / 1e3,
            self.reverse_packets,
            self.write_errors
        )?;
        let drops = |d: Option<u64>| d.map_or("?".into(), |d| d.to_string());
        write!(
            f,
            "  TUN queue overflows (kernel tx drops): tun0 {}, tun1 {}",
            drops(self.tun_drops[0]),
            drops(self.tun_drops[1])
        )
    }
}
