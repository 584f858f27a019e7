//! Connection setup from a Rust async client (socket-shim's tokio API):
//! connect + 64-byte echo + close, sequential and in parallel, through
//! the process's shared connector connection, through a control
//! connection per connect (the library's path before the connector, kept
//! as `connect_via(AsyncControlClient::connect().await?, ..)`: the
//! same-run baseline), and over kernel TCP (tokio `TcpStream`) on the same
//! veth pair.
//!
//! ```text
//! cargo bench -p sald --bench shim_connect
//! ```
//!
//! (root: network namespaces). Two namespaces joined by a veth pair, a sald
//! in each (TUN device); the client sald forwards everything to the
//! server's. The client and the echo server run in this process (a control
//! socket is a path, reachable from any namespace; the kernel TCP sockets
//! are made in the namespaces), each on a current-thread runtime of its
//! own. Environment: `BENCH_MILLIS` (default 3000) per run,
//! `BENCH_PARALLEL` (default `4,16`) the parallel client counts.
//!
//! Measured on the 2-core development VM (loaded by other work), 3 s per
//! run, same run: sequential p50 572 us per connect through a control
//! connection each against 418 us through the shared connector (kernel
//! TCP 84 us); rates 1,714 -> 2,285 conn/s sequential (1.33x), 3,139 ->
//! 4,162 with 4 tasks (1.33x), 4,097 -> 5,611 with 16 (1.37x), 0.21-0.28x
//! kernel TCP's. The saving is the `Hello` round trip and sald's
//! connection setup and teardown per connect.
//!
//! Rows: sequential (one client task: p50/p99 of connect + echo + close),
//! then each parallel count (connections per second); ratios against the
//! per-connect baseline and against kernel TCP.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use sal::ServiceId;
use socket_shim::{AsyncControlClient, AsyncServiceListener, AsyncServiceStream};
use testnet::{Host, TopologyBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[path = "../tests/common/mod.rs"]
mod common;
mod throughput;
use common::{Daemon, Sald};
use throughput::env_or;

/// The service the echo server binds.
const SERVICE: &str = "c0ec71";
/// The kernel TCP echo port.
const PORT: u16 = 7071;
/// Bytes echoed per connection.
const ECHO: usize = 64;

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    done: u64,
    errors: u64,
    p50_us: u64,
    p99_us: u64,
    rate: f64,
}

/// How the client connects.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// `AsyncServiceStream::connect`: the shared connector.
    Shared,
    /// A control connection of its own per connect (`Hello` round trip,
    /// then `Connect`).
    PerConnect,
}

fn start(host: &Host, dir: &Path, name: &str) -> Daemon {
    common::start_sald(&host.ns, &[&host.ifaces[0].name], dir, name, &[])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Reads the 64 bytes, writes them back, waits for the client's close.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut flow: S) {
    let mut buf = [0u8; ECHO];
    if flow.read_exact(&mut buf).await.is_err() {
        return;
    }
    if flow.write_all(&buf).await.is_err() {
        return;
    }
    let _ = flow.read(&mut buf).await;
}

/// One connection's work on the client side.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut flow: S) -> std::io::Result<()> {
    let sent = [0x5a; ECHO];
    flow.write_all(&sent).await?;
    let mut got = [0u8; ECHO];
    flow.read_exact(&mut got).await?;
    if got != sent {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

/// `parallel` tasks each repeating `one` for `millis`; latencies of the
/// successful ones.
async fn measure<F, Fut>(parallel: usize, millis: u64, one: F) -> Run
where
    F: Fn() -> Fut + Clone + 'static,
    Fut: Future<Output = std::io::Result<()>> + 'static,
{
    let started = Instant::now();
    let deadline = started + Duration::from_millis(millis);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let one = one.clone();
        tasks.spawn_local(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                match one().await {
                    Ok(()) => latencies.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(joined) = tasks.join_next().await {
        let (l, e) = joined.expect("client task");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Run {
        done: latencies.len() as u64,
        errors,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
    }
}

/// One SAL run on a fresh current-thread runtime.
fn sal_run(via: Via, service: ServiceId, parallel: usize, millis: u64) -> Run {
    let local = tokio::task::LocalSet::new();
    runtime().block_on(
        local.run_until(measure(parallel, millis, move || async move {
            let flow = match via {
                Via::Shared => AsyncServiceStream::connect(service).await?,
                Via::PerConnect => {
                    let control = AsyncControlClient::connect().await?;
                    AsyncServiceStream::connect_via(control, service, None).await?
                }
            };
            exchange(flow).await
        })),
    )
}

/// One kernel TCP run, its sockets made in the client namespace.
fn kernel_run(client: &Host, to: SocketAddr, parallel: usize, millis: u64) -> Run {
    client
        .ns
        .run(|| {
            let local = tokio::task::LocalSet::new();
            runtime().block_on(
                local.run_until(measure(parallel, millis, move || async move {
                    exchange(tokio::net::TcpStream::connect(to).await?).await
                })),
            )
        })
        .expect("client namespace")
}

fn main() {
    if !testnet::is_root() {
        eprintln!("shim_connect bench: SKIPPED (needs root for network namespaces)");
        return;
    }
    let millis = env_or("BENCH_MILLIS", 3000);
    let parallel: Vec<usize> = std::env::var("BENCH_PARALLEL")
        .unwrap_or_else(|_| "4,16".into())
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    common::raise_fd_limit(1 << 16);
    let dir = std::env::temp_dir().join(format!("shim-connect-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let pair = TopologyBuilder::new("rconn", 2)
        .link(0, 1)
        .build()
        .expect("namespaces");
    let server_addr: Ipv4Addr = pair.host(1).addr().expect("address");
    let ns0 = &pair.host(0).ns;
    ns0.set_sysctl("net.ipv4.tcp_tw_reuse", "1")
        .expect("sysctl");
    ns0.set_sysctl("net.ipv4.ip_local_port_range", "1024 65000")
        .expect("sysctl");
    let client_sald = start(pair.host(0), &dir, "client");
    let server_sald = start(pair.host(1), &dir, "server");
    client_sald.forward("0/0", server_addr, 1);
    // The library's connects go to the client's sald; set before any
    // other thread of ours starts.
    std::env::set_var("SERVAL_CONTROL", &client_sald.control);
    let service: ServiceId = SERVICE.parse().expect("service");

    // Both echo servers, on one thread and runtime.
    let tcp = pair
        .host(1)
        .ns
        .run(|| std::net::TcpListener::bind((server_addr, PORT)))
        .expect("server namespace")
        .expect("TCP listener");
    tcp.set_nonblocking(true).expect("non-blocking");
    let server_control = server_sald.control.clone();
    let (ready, is_ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let local = tokio::task::LocalSet::new();
        runtime().block_on(local.run_until(async move {
            let tcp = tokio::net::TcpListener::from_std(tcp).expect("TCP listener");
            let control = AsyncControlClient::connect_to(&server_control)
                .await
                .expect("server sald");
            let sal = AsyncServiceListener::bind_via(control, service, 1024)
                .await
                .expect("bind");
            ready.send(()).expect("ready");
            loop {
                tokio::select! {
                    Ok((flow, _)) = tcp.accept() => {
                        let _ = flow.set_nodelay(true);
                        tokio::task::spawn_local(echo(flow));
                    }
                    Ok((flow, _)) = sal.accept() => {
                        tokio::task::spawn_local(echo(flow));
                    }
                }
            }
        }));
    });
    is_ready.recv().expect("echo servers up");
    let to = SocketAddr::from((server_addr, PORT));

    println!(
        "Rust async connect + {ECHO}-byte echo + close, {millis} ms per run, two namespaces, a sald each (TUN)"
    );
    let counts: Vec<usize> = std::iter::once(1).chain(parallel.iter().copied()).collect();
    let mut rows = Vec::new();
    for &p in &counts {
        let kernel = kernel_run(pair.host(0), to, p, millis);
        let shared = sal_run(Via::Shared, service, p, millis);
        let per_connect = sal_run(Via::PerConnect, service, p, millis);
        rows.push((p, kernel, shared, per_connect));
    }
    drop((client_sald, server_sald));
    drop(pair);
    let _ = std::fs::remove_dir_all(&dir);
    report(&rows);
}

fn report(rows: &[(usize, Run, Run, Run)]) {
    for (p, kernel, shared, per_connect) in rows {
        println!();
        println!(
            "{} {:>9} {:>8} {:>8} {:>7} {:>7}   {:>10} {:>9}",
            if *p == 1 {
                "sequential (1 task)         ".to_string()
            } else {
                format!("{p:<2} parallel tasks           ")
            },
            "conn/s",
            "p50 us",
            "p99 us",
            "errors",
            "done",
            "/ baseline",
            "/ kernel"
        );
        for (name, run) in [
            ("kernel TCP", kernel),
            ("SAL, per-connect baseline", per_connect),
            ("SAL, shared connector", shared),
        ] {
            println!(
                "  {name:<26} {:9.0} {:8} {:8} {:7} {:7}   {:>10} {:9.2}",
                run.rate,
                run.p50_us,
                run.p99_us,
                run.errors,
                run.done,
                if name.starts_with("SAL") {
                    format!("{:.2}", run.rate / per_connect.rate.max(f64::MIN_POSITIVE))
                } else {
                    String::new()
                },
                run.rate / kernel.rate.max(f64::MIN_POSITIVE)
            );
        }
        println!(
            "  p50: shared {:.2}x the baseline's, {:.2}x kernel's",
            shared.p50_us as f64 / per_connect.p50_us.max(1) as f64,
            shared.p50_us as f64 / kernel.p50_us.max(1) as f64
        );
    }
}
