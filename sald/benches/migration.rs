//! Migration benchmark: how long data stops flowing when the active link of
//! a dual-homed client goes down mid-transfer, with sald's automatic
//! migration, next to Linux MPTCP on the same topology in the same run.
//!
//! `cargo bench -p sald --bench migration` (root). `BENCH_RUNS` (default 20)
//! transfers per stack; `BENCH_KEEP_LOGS=1` keeps the two sald logs.
//!
//! ```text
//!  phone wifi 10.1.0.1 ── net 10.1.0.2      (kernel router)
//!  phone cell 10.1.1.1 ── net 10.1.1.2
//!                          net 10.1.2.1 ── srv eth0 10.1.2.2
//! ```
//!
//! Each run streams at full speed from the phone to the server, takes `wifi`
//! down administratively after 700 ms, keeps streaming for another second,
//! and reports the longest interval between two reads at the receiver that
//! ends after the command was issued (the data gap; a read timeout is not
//! a read). For sald it also reports the detection time, from issuing
//! `ip link set wifi down` until sald started the move (sald lists each
//! flow's last move to the microsecond), and when data came back after the
//! move. Every flow starts on `wifi` (checked). Between runs the link comes
//! back, sald sees it up, and its default route is restored.
//!
//! The RTT in the bound "2 x RTT + detection" is printed two ways: the
//! network's (ping) and a SAL stream's, application to application.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sal::{ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ControlClient, ServiceListener, ServiceStream};
use testnet::{wait_until, Netns};

#[path = "../tests/common/mod.rs"]
mod common;
use common::Sald;

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

/// The longest stretch without data at the receiver after the cut.
#[derive(Debug, Clone, Copy)]
struct Gap {
    length: Duration,
    /// When data resumed.
    end: Instant,
}

/// Records read times; keeps the longest gap after `cut` (set by the caller).
struct GapMeter {
    last: Instant,
    worst: Gap,
}

impl GapMeter {
    fn new() -> GapMeter {
        GapMeter {
            last: Instant::now(),
            worst: Gap {
                length: Duration::ZERO,
                end: Instant::now(),
            },
        }
    }

    fn read(&mut self, cut: Option<Instant>) {
        let now = Instant::now();
        // Every interval that ends after the cut (the one that straddles it
        // included).
        if cut.is_some_and(|cut| now > cut) && now - self.last > self.worst.length {
            self.worst = Gap {
                length: now - self.last,
                end: now,
            };
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
fn drain<R: Read>(mut stream: R, cut: &std::sync::Mutex<Option<Instant>>) -> Gap {
    let mut meter = GapMeter::new();
    let mut buf = vec![0u8; 1 << 16];
    // Until the writer half-closes, bounded in case it cannot.
    let deadline = Instant::now() + CUT_AFTER + AFTER_CUT + Duration::from_secs(8);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => meter.read(*cut.lock().expect("lock")),
            // A read timeout is not data: the gap goes on.
            Err(_) => {}
        }
    }
    meter.worst
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Streams at full speed from `write` while `read` drains; cuts wifi after
/// CUT_AFTER (`on_cut` runs right after). Returns the receiver's gap.
fn run_one(
    net: &Net,
    writer: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    reader: impl FnOnce(Arc<std::sync::Mutex<Option<Instant>>>) -> Gap + Send + 'static,
    on_cut: impl FnOnce(Instant),
) -> Gap {
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
    // The cut starts when the command is issued: the link goes down while
    // `ip` runs, and data may resume before it returns.
    let at = Instant::now();
    *cut.lock().expect("lock") = Some(at);
    ip(&net.phone, &["link", "set", "wifi", "down"]);
    on_cut(at);
    thread::sleep(AFTER_CUT);
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    reader.join().unwrap_or(Gap {
        length: Duration::MAX,
        end: Instant::now(),
    })
}

/// Whether sald counts `wifi` as up (the kernel reports a link coming back
/// up up to a second late; a flow opened before that starts on `cell`).
fn wifi_up(phone: &common::Daemon) -> bool {
    matches!(phone.request(Request::ListInterfaces), Response::Interfaces { interfaces, .. } if interfaces.iter().any(|i| i.name == "wifi" && i.up))
}

/// Median round trip of a 64-byte message over a SAL stream, application to
/// application, on an idle path: the RTT a SAL flow sees (user-space stacks
/// at both ends add to the network's RTT).
fn sal_rtt_ms(phone: &common::Daemon, srv: &common::Daemon) -> f64 {
    let service: ServiceId = "b17".parse().expect("service");
    let listener = ServiceListener::bind_via(
        ControlClient::connect_to(&srv.control).expect("control"),
        ServicePrefix::exact(service),
        1,
    )
    .expect("bind");
    let echo = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        while stream.read_exact(&mut buf).is_ok() {
            if stream.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut stream = ServiceStream::connect_via(
        ControlClient::connect_to(&phone.control).expect("control"),
        service,
        Some(Duration::from_secs(5)),
    )
    .expect("connect");
    let mut rtts = Vec::new();
    let mut buf = [7u8; 64];
    for _ in 0..200 {
        let start = Instant::now();
        stream.write_all(&buf).expect("echo write");
        stream.read_exact(&mut buf).expect("echo read");
        rtts.push(start.elapsed().as_secs_f64() * 1e3);
    }
    drop(stream);
    let _ = echo.join();
    median(&mut rtts)
}

/// Figures of the sald runs.
struct SalFigures {
    gaps: Vec<f64>,
    /// From issuing `ip link set wifi down` until sald started the move.
    detections: Vec<f64>,
    /// From sald starting the move until data resumed at the receiver.
    recoveries: Vec<f64>,
    rtt: f64,
}

fn sal_runs(net: &Net, dir: &Path, runs: usize) -> SalFigures {
    let start =
        |ns: &Netns, name: &str, ifaces: &[&str]| common::start_sald(ns, ifaces, dir, name, &[]);
    let phone = start(&net.phone, "phone", &["wifi", "cell"]);
    let srv = start(&net.srv, "srv", &["eth0"]);
    phone.forward("0/0", Ipv4Addr::new(10, 1, 2, 2), 1);
    let rtt = sal_rtt_ms(&phone, &srv);
    let service: ServiceId = "b16".parse().expect("service");
    let (mut gaps, mut detections, mut recoveries) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        assert!(
            wait_until(Duration::from_secs(5), || wifi_up(&phone)),
            "sald never saw wifi come back up"
        );
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
        let starts_on = phone.flow(flow).and_then(|f| f.interface);
        assert_eq!(
            starts_on.as_deref(),
            Some("wifi"),
            "the flow must start on wifi"
        );
        let mut moved = None;
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
                // When sald started the move: the moment of the reply that
                // first shows the flow on cell, less the move's age.
                let mut moved_at = None;
                wait_until(Duration::from_secs(3), || {
                    let Some(info) = phone.flow(flow) else {
                        return false;
                    };
                    match (info.interface.as_deref(), info.last_migration_us_ago) {
                        (Some("cell"), Some(ago)) => {
                            moved_at = Instant::now().checked_sub(Duration::from_micros(ago));
                            true
                        }
                        _ => false,
                    }
                });
                moved = moved_at.map(|at| (cut, at));
            },
        );
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let gap_ms = ms(gap.length);
        gaps.push(gap_ms);
        match moved {
            Some((cut, at)) => {
                // Signed offsets from the moment the command was issued.
                let offset = |t: Instant| match t.checked_duration_since(cut) {
                    Some(after) => ms(after),
                    None => -ms(cut - t),
                };
                let (detection, recovery) = (offset(at), ms(gap.end.saturating_duration_since(at)));
                eprintln!(
                    "  sald run {run:2}: gap {gap_ms:6.2} ms; from the command: data stopped {:+.2}, sald moved {detection:+.2}, data back {:+.2} ms",
                    offset(gap.end - gap.length),
                    offset(gap.end)
                );
                detections.push(detection);
                recoveries.push(recovery);
            }
            None => eprintln!("  sald run {run:2}: gap {gap_ms:7.2} ms, flow never listed on cell"),
        }
        restore_wifi(net);
    }
    SalFigures {
        gaps,
        detections,
        recoveries,
        rtt,
    }
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
        gaps.push(gap.length.as_secs_f64() * 1e3);
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
    let ping_rtt = rtt_ms(&net);
    println!("migration benchmark: {runs} runs per stack, wifi cut after {CUT_AFTER:?} of a full-speed transfer");
    let mut sal = sal_runs(&net, &dir, runs);
    let mptcp = mptcp_runs(&net, runs);
    drop(net);
    if std::env::var_os("BENCH_KEEP_LOGS").is_some() {
        println!("  sald logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }

    println!(
        "  RTT phone -> server: network (ping) {ping_rtt:.3} ms, SAL stream app to app {:.3} ms",
        sal.rtt
    );
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!();
    println!("data gap after an administrative link-down   median ms   max ms");
    let sal_median = median(&mut sal.gaps);
    println!(
        "  sald, auto-migration                        {sal_median:9.2}   {:6.2}",
        max(&sal.gaps)
    );
    let detection_median = if sal.detections.is_empty() {
        f64::NAN
    } else {
        median(&mut sal.detections)
    };
    println!(
        "  (detection: `ip link set down` issued -> sald starts the move, median {detection_median:.2} ms;"
    );
    let recovery_median = if sal.recoveries.is_empty() {
        f64::NAN
    } else {
        median(&mut sal.recoveries)
    };
    println!(
        "   data back after sald starts the move: median {recovery_median:.2} ms, max {:.2} ms)",
        max(&sal.recoveries)
    );
    match mptcp {
        Some(mut mptcp) if !mptcp.is_empty() => {
            let mptcp_median = median(&mut mptcp);
            println!(
                "  Linux MPTCP, two subflows                   {mptcp_median:9.2}   {:6.2}",
                max(&mptcp)
            );
            println!(
                "  target: median no worse than MPTCP's: {} (ratio {:.3})",
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
    for (label, rtt) in [("SAL RTT", sal.rtt), ("network RTT", ping_rtt)] {
        let bound = 2.0 * rtt + detection_median;
        println!(
            "  target: median under 2 x {label} + detection = {bound:.2} ms: {}; data back after the move {recovery_median:.2} ms vs 2 x {label} {:.2} ms",
            if sal_median < bound { "met" } else { "NOT met" },
            2.0 * rtt
        );
    }
}
