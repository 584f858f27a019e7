//! The cost of the shim paths: iperf3 (unmodified) through the translator
//! and through inet mode, next to iperf3 over kernel TCP on the same veth
//! pair and the native Serval stream path (the Rust client library, as in
//! sald's `streams` bench), all measured in this run on the same topology.
//!
//! `cargo bench -p svtrans --bench shim` (root; iperf3 from scripts/setup).
//! `BENCH_SECONDS` (default 5) per run. Target: each shim path at most 20%
//! below the native Serval stream path (ratio >= 0.80).

#[path = "../../preload/tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sal::table::Target;
use sal::{Locator, ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ControlClient, ServiceListener, ServiceStream};
use testnet::{wait_until, Host, NsChild, Topology, TopologyBuilder};

use support::binary;

struct Daemon {
    child: NsChild,
    control: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.terminate(Duration::from_secs(5));
    }
}

impl Daemon {
    fn start(host: &Host, dir: &Path, name: &str) -> Daemon {
        let control = dir.join(format!("{name}.sock"));
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
        let mut cmd = host.ns.command(binary("sald"));
        cmd.args(["--iface", &host.ifaces[0].name, "--control"])
            .arg(&control)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let child = host.ns.spawn_cmd(cmd).expect("sald");
        assert!(
            wait_until(Duration::from_secs(10), || UnixStream::connect(&control)
                .is_ok()),
            "sald {name} did not start"
        );
        Daemon { child, control }
    }

    fn client(&self) -> ControlClient {
        ControlClient::connect_to(&self.control).expect("control socket")
    }
}

fn seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// Runs an iperf3 client command (already wrapped as needed) and returns
/// the received Gbit/s.
fn iperf_client(mut cmd: Command) -> f64 {
    let output = cmd.stdin(Stdio::null()).output().expect("iperf3 client");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let gbps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    if gbps == 0.0 {
        eprintln!(
            "iperf3 client failed: {}{}",
            String::from_utf8_lossy(&output.stdout)
                .chars()
                .take(400)
                .collect::<String>(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    gbps
}

fn iperf_args(addr: &str, port: u16, secs: u64) -> Vec<String> {
    vec![
        "-c".into(),
        addr.into(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        secs.to_string(),
        "-J".into(),
    ]
}

fn env_cmd(host: &Host, control: &Path, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = host.ns.command(program);
    cmd.env("SERVAL_CONTROL", control)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Native Serval stream throughput, one flow, through the Rust library.
fn native(client: &Daemon, server: &Daemon, secs: u64) -> f64 {
    let service: ServiceId = "be0c5".parse().expect("service");
    let listener =
        ServiceListener::bind_via(server.client(), ServicePrefix::exact(service), 8).expect("bind");
    let received = Arc::new(AtomicU64::new(0));
    let sink = {
        let received = received.clone();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 20];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut stream =
        ServiceStream::connect_via(client.client(), service, Some(Duration::from_secs(5)))
            .expect("connect");
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let chunk = vec![0x5au8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = stream.shutdown_write();
        })
    };
    thread::sleep(Duration::from_millis(500));
    let start_bytes = received.load(Ordering::Relaxed);
    let start = Instant::now();
    thread::sleep(Duration::from_secs(secs));
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = sink.join();
    bytes as f64 * 8.0 / elapsed / 1e9
}

fn main() {
    if !testnet::is_root() {
        eprintln!("shim bench: SKIPPED (needs root for network namespaces)");
        return;
    }
    let secs = seconds();
    let dir = tempfile::tempdir().expect("scratch dir");
    let pair: Topology = TopologyBuilder::new("shimbench", 2)
        .link(0, 1)
        .build()
        .expect("namespaces");
    let server_addr: Ipv4Addr = pair.host(1).addr().expect("address");
    let (h0, h1) = (pair.host(0), pair.host(1));
    println!("shim benchmark: {secs} s per run, one TCP connection / flow, MTU 1500, veth pair");

    // Kernel TCP over the same veth pair.
    let kernel = {
        let _server = h1
            .ns
            .spawn("iperf3", ["-s", "-1", "-p", "5301"])
            .expect("iperf3 -s");
        thread::sleep(Duration::from_millis(300));
        let mut cmd = h0.ns.command("iperf3");
        cmd.args(iperf_args(&server_addr.to_string(), 5301, secs));
        iperf_client(cmd)
    };

    let client = Daemon::start(h0, dir.path(), "client");
    let server = Daemon::start(h1, dir.path(), "server");
    let response = client
        .client()
        .request(&Request::AddRule {
            prefix: "0/0".parse().expect("prefix"),
            target: Target::Forward {
                locator: Locator::Ipv4(server_addr),
                weight: 1,
            },
            priority: 0,
        })
        .expect("rule")
        .response;
    assert_eq!(response, Response::Ok);

    let native = native(&client, &server, secs);

    // iperf3 through the translator.
    let translator = {
        let _iperf = h1
            .ns
            .spawn("iperf3", ["-s", "-1", "-B", "127.0.0.1", "-p", "5302"])
            .expect("iperf3 -s");
        let svtrans = binary("svtrans");
        let mut egress = env_cmd(h1, &server.control, &svtrans);
        egress.args(["egress", "--service", "51a1", "--to", "127.0.0.1:5302"]);
        let _egress = h1.ns.spawn_cmd(egress).expect("egress");
        let mut ingress = env_cmd(h0, &client.control, &svtrans);
        ingress.args(["ingress", "--listen", "127.0.0.1:5303", "--service", "51a1"]);
        let _ingress = h0.ns.spawn_cmd(ingress).expect("ingress");
        thread::sleep(Duration::from_millis(500));
        let mut cmd = h0.ns.command("iperf3");
        cmd.args(iperf_args("127.0.0.1", 5303, secs))
            .env("SERVAL_CONTROL", &client.control);
        iperf_client(cmd)
    };

    // iperf3 through inet mode (both ends preloaded).
    let inet = {
        let run = binary("serval-run");
        let mut srv = env_cmd(h1, &server.control, &run);
        srv.args([
            "--map",
            "5304=51a2",
            "--",
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5304",
        ]);
        let _srv = h1.ns.spawn_cmd(srv).expect("iperf3 -s in inet mode");
        thread::sleep(Duration::from_millis(500));
        let mut cmd = h0.ns.command(&run);
        cmd.args(["--map", "5304=51a2", "--", "iperf3"])
            .args(iperf_args("10.250.0.1", 5304, secs))
            .env("SERVAL_CONTROL", &client.control);
        iperf_client(cmd)
    };
    drop((client, server, pair));

    let ratio = |x: f64, base: f64| {
        if base > 0.0 {
            format!("{:.3}", x / base)
        } else {
            "-".into()
        }
    };
    println!();
    println!("path                                   Gbit/s   / native SAL   / kernel TCP");
    println!(
        "  kernel TCP (iperf3), same veth     {kernel:8.3}   {:>12}   {:>10}",
        ratio(kernel, native),
        "1.000"
    );
    println!(
        "  native SAL stream (Rust library)   {native:8.3}   {:>12}   {:>10}",
        "1.000",
        ratio(native, kernel)
    );
    println!(
        "  iperf3 through svtrans             {translator:8.3}   {:>12}   {:>10}",
        ratio(translator, native),
        ratio(translator, kernel)
    );
    println!(
        "  iperf3 through inet mode           {inet:8.3}   {:>12}   {:>10}",
        ratio(inet, native),
        ratio(inet, kernel)
    );
    println!();
    let verdict = |x: f64| {
        if native > 0.0 && x / native >= 0.8 {
            "meets"
        } else {
            "MISSES"
        }
    };
    println!(
        "target (shim path >= 0.80 x native SAL): translator {}, inet mode {}",
        verdict(translator),
        verdict(inet)
    );
}
