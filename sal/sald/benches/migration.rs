//! Migration benchmark: how long data stops flowing when the active link of
//! a dual-homed client goes down mid-transfer, with sald's automatic
//! migration, next to Linux MPTCP on the same topology in the same run.
//!
//! `cargo bench -p sald --bench migration` (root). `BENCH_RUNS` (default 20)
//! transfers per stack.
//!
//! ```text
//!  phone wifi 10.1.0.1 ── net 10.1.0.2      (kernel router)
//!  phone cell 10.1.1.1 ── net 10.1.1.2
//!                          net 10.1.2.1 ── srv eth0 10.1.2.2
//! ```
//!
//! Each run streams at full speed from the phone to the server, takes `wifi`
//! down administratively after 700 ms, keeps streaming for another second,
//! and reports the longest interval between two reads at the receiver after
//! the link went down (the data gap). For sald it also measures the
//! detection time: from `ip link set wifi down` until sald lists the flow on
//! `cell`. Between runs the link comes back and its default route is restored.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sal::control::{Request, Response};
use sal::table::Target;
use sal::{Locator, ServiceId, ServicePrefix};
use socket_shim::{ControlClient, ServiceListener, ServiceStream};
use testnet::{wait_until, Netns};

#[path = "../tests/common/mod.rs"]
mod common;

/// IPPROTO_MPTCP.
const IPPROTO_MPTCP: i32 = 262;
const CUT_AFTER: Duration = Duration::from_millis(700);
const AFTER_CUT: Duration = Duration::from_millis(1000);

fn ip(ns: &Netns, args: &[&str]) {
    let _ = Command::new("ip")
        .arg("-n")
        .arg(ns.name())
        .args(args)
        .stderr(Stdio::null())
        .status();
}

struct Net {
    phone: Netns,
    router: Netns,
    srv: Netns,
}

fn build() -> Net {
    let net = Net {
        phone: Netns::new("mb-phone").expect("netns"),
        router: Netns::new("mb-net").expect("netns"),
        srv: Netns::new("mb-srv").expect("netns"),
    };
    for (a, ia, addr_a, b, ib, addr_b) in [
        (
            &net.phone,
            "wifi",
            "10.1.0.1/24",
            &net.router,
            "p0",
            "10.1.0.2/24",
        ),
        (
            &net.phone,
            "cell",
            "10.1.1.1/24",
            &net.router,
            "p1",
            "10.1.1.2/24",
        ),
        (
            &net.srv,
            "eth0",
            "10.1.2.2/24",
            &net.router,
            "p2",
            "10.1.2.1/24",
        ),
    ] {
        testnet::veth(a, ia, addr_a, b, ib, addr_b).expect("veth");
    }
    net.router
        .set_sysctl("net.ipv4.ip_forward", "1")
        .expect("sysctl");
    ip(
        &net.phone,
        &[
            "route", "add", "default", "via", "10.1.0.2", "metric", "100",
        ],
    );
    ip(
        &net.phone,
        &[
            "route", "add", "default", "via", "10.1.1.2", "metric", "200",
        ],
    );
    ip(&net.srv, &["route", "add", "default", "via", "10.1.2.1"]);
    net
}

fn restore_wifi(net: &Net) {
    ip(&net.phone, &["link", "set", "wifi", "up"]);
    ip(
        &net.phone,
        &[
            "route", "add", "default", "via", "10.1.0.2", "metric", "100",
        ],
    );
    thread::sleep(Duration::from_millis(300));
}

/// Records read times; returns the longest gap after `cut` (set by the caller).
struct GapMeter {
    last: Instant,
    worst: Duration,
}

impl GapMeter {
    fn new() -> GapMeter {
        GapMeter {
            last: Instant::now(),
            worst: Duration::ZERO,
        }
    }

    fn read(&mut self, cut: Option<Instant>) {
        let now = Instant::now();
        if let Some(cut) = cut {
            // The interval that straddles or follows the cut.
            if now > cut {
                self.worst = self.worst.max(now - self.last.max(cut.min(self.last)));
            }
        }
        self.last = now;
    }
}

/// Writes at full speed until told to stop, then half-closes. A write
/// timeout keeps a stalled flow from hanging the benchmark.
fn full_speed<W: Write>(
    mut stream: W,
    stop: &AtomicBool,
    set_timeout: impl FnOnce(&W),
    shutdown: impl FnOnce(&W),
) {
    set_timeout(&stream);
    let chunk = vec![7u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    shutdown(&stream);
}

/// Reads until end of stream (bounded), returning the longest gap after the cut.
fn drain<R: Read>(mut stream: R, cut: &std::sync::Mutex<Option<Instant>>) -> Duration {
    let mut meter = GapMeter::new();
    let mut buf = vec![0u8; 1 << 16];
    // Until the writer half-closes, bounded in case it cannot.
    let deadline = Instant::now() + CUT_AFTER + AFTER_CUT + Duration::from_secs(8);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => meter.read(*cut.lock().expect("lock")),
            Err(_) => meter.read(None),
        }
    }
    meter.worst
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Streams at full speed from `write` while `read` drains; cuts wifi after
/// CUT_AFTER. Returns (gap, cut instant).
fn run_one(
    net: &Net,
    writer: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    reader: impl FnOnce(Arc<std::sync::Mutex<Option<Instant>>>) -> Duration + Send + 'static,
    on_cut: impl FnOnce(Instant),
) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(std::sync::Mutex::new(None));
    let reader = {
        let cut = cut.clone();
        thread::spawn(move || reader(cut))
    };
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || writer(stop))
    };
    thread::sleep(CUT_AFTER);
    ip(&net.phone, &["link", "set", "wifi", "down"]);
    let at = Instant::now();
    *cut.lock().expect("lock") = Some(at);
    on_cut(at);
    thread::sleep(AFTER_CUT);
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    reader.join().unwrap_or(Duration::MAX)
}

fn sal_runs(net: &Net, dir: &Path, runs: usize) -> (Vec<f64>, Vec<f64>) {
    let start =
        |ns: &Netns, name: &str, ifaces: &[&str]| common::start_sald(ns, ifaces, dir, name, &[]);
    let phone = start(&net.phone, "phone", &["wifi", "cell"]);
    let srv = start(&net.srv, "srv", &["eth0"]);
    let reply = ControlClient::connect_to(&phone.control)
        .and_then(|mut c| {
            c.request(&Request::AddRule {
                prefix: ServicePrefix::DEFAULT,
                target: Target::Forward {
                    locator: Locator::Ipv4(Ipv4Addr::new(10, 1, 2, 2)),
                    weight: 1,
                },
                priority: 0,
            })
        })
        .expect("rule");
    assert_eq!(reply.response, Response::Ok);
    let service: ServiceId = "b16".parse().expect("service");
    let (mut gaps, mut detections) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let listener = ServiceListener::bind_via(
            ControlClient::connect_to(&srv.control).expect("control"),
            ServicePrefix::exact(service),
            1,
        )
        .expect("bind");
        let stream = ServiceStream::connect_via(
            ControlClient::connect_to(&phone.control).expect("control"),
            service,
            Some(Duration::from_secs(5)),
        )
        .expect("connect");
        let flow = stream.flow_id();
        let (server_stream, _) = listener.accept().expect("accept");
        drop(listener);
        let phone_control = phone.control.clone();
        let mut detection = None;
        let gap = run_one(
            net,
            move |stop| {
                full_speed(
                    stream,
                    &stop,
                    |s| drop(s.set_write_timeout(Some(Duration::from_secs(2)))),
                    |s| drop(s.shutdown_write()),
                )
            },
            move |cut| {
                let stream = server_stream;
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                drain(stream, &cut)
            },
            |cut| {
                let moved = wait_until(Duration::from_secs(3), || {
                    let flows = ControlClient::connect_to(&phone_control)
                        .and_then(|mut c| c.request(&Request::ListFlows))
                        .map(|r| r.response);
                    matches!(flows, Ok(Response::Flows { flows }) if flows.iter().any(|f| f.flow == flow && f.interface.as_deref() == Some("cell")))
                });
                if moved {
                    detection = Some(cut.elapsed());
                }
            },
        );
        gaps.push(gap.as_secs_f64() * 1e3);
        if let Some(d) = detection {
            detections.push(d.as_secs_f64() * 1e3);
        }
        restore_wifi(net);
    }
    (gaps, detections)
}

/// An MPTCP socket (a plain TCP socket object over IPPROTO_MPTCP).
fn mptcp_socket() -> std::io::Result<i32> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd =
        unsafe { nix::libc::socket(nix::libc::AF_INET, nix::libc::SOCK_STREAM, IPPROTO_MPTCP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn mptcp_runs(net: &Net, runs: usize) -> Option<Vec<f64>> {
    for ns in [&net.phone, &net.srv] {
        let _ = ns.set_sysctl("net.mptcp.enabled", "1");
        ip(
            ns,
            &[
                "mptcp",
                "limits",
                "set",
                "subflow",
                "2",
                "add_addr_accepted",
                "2",
            ],
        );
    }
    ip(
        &net.phone,
        &[
            "mptcp", "endpoint", "add", "10.1.1.1", "dev", "cell", "subflow",
        ],
    );
    let server_addr = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 2), 5500);
    let listener = net
        .srv
        .run(move || -> std::io::Result<TcpListener> {
            let fd = mptcp_socket()?;
            // SAFETY: `fd` is a fresh socket we own; TcpListener takes it over.
            let socket = unsafe { socket2_from(fd) };
            socket.set_reuse_address(true)?;
            socket.bind(&std::net::SocketAddr::V4(server_addr).into())?;
            socket.listen(8)?;
            Ok(socket.into())
        })
        .ok()?
        .ok()?;
    let listener = Arc::new(listener);
    let mut gaps = Vec::new();
    for _ in 0..runs {
        let phone = net.phone.name().to_string();
        let client = net
            .phone
            .run(move || -> std::io::Result<TcpStream> {
                let fd = mptcp_socket()?;
                // SAFETY: as above.
                let socket = unsafe { socket2_from(fd) };
                socket.connect(&std::net::SocketAddr::V4(server_addr).into())?;
                Ok(socket.into())
            })
            .ok()?
            .ok()?;
        let _ = phone;
        let (server_stream, _) = listener.accept().ok()?;
        // Let the second subflow join before the cut.
        thread::sleep(Duration::from_millis(200));
        let gap = run_one(
            net,
            move |stop| {
                full_speed(
                    client,
                    &stop,
                    |s| drop(s.set_write_timeout(Some(Duration::from_secs(2)))),
                    |s| drop(s.shutdown(std::net::Shutdown::Write)),
                )
            },
            move |cut| {
                let stream = server_stream;
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                drain(stream, &cut)
            },
            |_| {},
        );
        gaps.push(gap.as_secs_f64() * 1e3);
        restore_wifi(net);
        ip(&net.phone, &["mptcp", "endpoint", "flush"]);
        ip(
            &net.phone,
            &[
                "mptcp", "endpoint", "add", "10.1.1.1", "dev", "cell", "subflow",
            ],
        );
    }
    Some(gaps)
}

/// Wraps a raw socket fd.
///
/// # Safety
/// `fd` must be an open socket owned by the caller, not used elsewhere.
unsafe fn socket2_from(fd: i32) -> socket2::Socket {
    // SAFETY: upheld by the caller.
    unsafe { socket2::Socket::from_raw_fd(fd) }
}

fn rtt_ms(net: &Net) -> f64 {
    let output = net
        .phone
        .exec("ping", ["-c", "5", "-i", "0.2", "-q", "10.1.2.2"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // rtt min/avg/max/mdev = 0.045/0.061/0.080/0.012 ms
    output
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn main() {
    if !testnet::is_root() {
        eprintln!("migration bench: SKIPPED (needs root for network namespaces)");
        return;
    }
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("sald-migbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let net = build();
    let rtt = rtt_ms(&net);
    println!("migration benchmark: {runs} runs per stack, wifi cut after {CUT_AFTER:?} of a full-speed transfer");
    println!("  RTT phone -> server: {rtt:.3} ms");
    let (mut sal, mut detection) = sal_runs(&net, &dir, runs);
    let mptcp = mptcp_runs(&net, runs);
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);

    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!();
    println!("data gap after an administrative link-down   median ms   max ms");
    let sal_median = median(&mut sal);
    println!(
        "  sald, auto-migration                        {sal_median:9.1}   {:6.1}",
        max(&sal)
    );
    let detection_median = if detection.is_empty() {
        f64::NAN
    } else {
        median(&mut detection)
    };
    println!("  (sald detection + move, as servalctl sees it: median {detection_median:.1} ms)");
    match mptcp {
        Some(mut mptcp) if !mptcp.is_empty() => {
            let mptcp_median = median(&mut mptcp);
            println!(
                "  Linux MPTCP, two subflows                   {mptcp_median:9.1}   {:6.1}",
                max(&mptcp)
            );
            println!(
                "  target: median no worse than MPTCP's: {} (ratio {:.2})",
                if sal_median <= mptcp_median {
                    "met"
                } else {
                    "NOT met"
                },
                sal_median / mptcp_median
            );
        }
        _ => println!("  Linux MPTCP: unavailable on this kernel (no baseline)"),
    }
    let bound = 2.0 * rtt + detection_median;
    println!(
        "  target: median under 2 x RTT + detection = {bound:.1} ms: {}",
        if sal_median < bound { "met" } else { "NOT met" }
    );
}
