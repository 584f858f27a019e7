//! Many flows: one bulk flow alone and beside 1,000 / 10,000 / 100,000
//! idle established flows, sald's resident memory per idle flow, and what
//! is left of it after they all closed. Two namespaces joined by one veth
//! pair, MTU 1500, sald on both ends, release build, every ratio against
//! the same run's "alone".
//!
//! `cargo bench -p sald --bench flows` (root). Environment: `BENCH_SECONDS`
//! (default 5) per throughput run, `BENCH_FLOWS` (default
//! `1000,10000,100000`) the idle flow counts, `BENCH_PERF_DIR` (a
//! directory: each setup run is recorded there with `perf record -g` of
//! both daemons, as `setup-<count>-<alone|beside|after>.data`).
//!
//! Idle flows are held by applications (both ends: this process holds the
//! client ends, a copy of it the server ends) while the descriptor limit
//! allows: each end costs a descriptor in sald and one in the application,
//! and no process here may hold more than its hard `RLIMIT_NOFILE`
//! (20,000, without `CAP_SYS_RESOURCE` to raise it). Beyond that, the idle
//! flows come from an in-process generator (see `generator`) and wait in
//! the server's accept queues: the server's host holds them all and its
//! per-packet work is measured beside them, but no pump or socket is
//! spent on them, and the client daemon has only the bulk flow.
//!
//! For each count: run the bulk flow alone; open the idle flows; wait 4 s
//! (buffers trimmed, sald's heap trimmed); read both daemons' resident
//! memory; run the bulk flow beside them; close the idle flows; run the
//! bulk flow alone again; 10 s later read the memory again. The row's
//! baseline is the mean of its two "alone" runs, one on each side of the
//! "beside" run, so that the machine's drift during the row cancels (its
//! ratio to the first alone is printed too). The server's
//! socket work per packet (`sockets_driven` over packets in and out during
//! the bulk run) shows that work follows the active flow, not the count.
//!
//! Connection setup is measured the same way (see `setup_rate`): 4 client
//! threads open, echo through and close flows for `BENCH_SETUP_MILLIS`
//! (default 2000) before the row's "alone" bulk run, beside the idle
//! flows, and right after they all closed (before the 10 s wait, so the
//! memory read after it includes what those connections left).

use std::net::Ipv4Addr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use sal::wire::TransportProtocol;
use sal::{ServiceId, ServicePrefix};
use sal_control::{Request, Response, StatsReport};
use socket_shim::ControlClient;
use testnet::{wait_until, Host, TopologyBuilder};

#[path = "../tests/common/mod.rs"]
mod common;
mod generator;
mod setup_rate;
mod throughput;
use common::{Daemon, Sald};
use generator::Generator;
use setup_rate::{EchoService, Setup};
use throughput::{env_or, sal_throughput};

/// The generator's address, on the client namespace's loopback device
/// (where the client's sald does not look).
const GENERATOR_ADDR: Ipv4Addr = Ipv4Addr::new(10, 1, 9, 1);
/// Idle flows a listener takes at most (sald's backlog limit).
const BACKLOG: usize = 65_535;
/// Client threads of the connection setup runs.
const SETUP_PARALLEL: usize = 4;

fn start(host: &Host, dir: &Path, name: &str) -> Daemon {
    common::start_sald(&host.ns, &[&host.ifaces[0].name], dir, name, &[])
}

fn stats(daemon: &Daemon) -> StatsReport {
    match daemon.request(Request::Stats) {
        Response::Stats { stats } => *stats,
        other => panic!("no stats: {other:?}"),
    }
}

/// The bulk flow's throughput, and the server's socket work per packet
/// while it ran.
fn bulk(client: &Daemon, server: &Daemon, seconds: u64) -> (f64, f64) {
    let before = stats(server).host;
    let gbps = sal_throughput(client, server, "b0b0", 1, seconds);
    let after = stats(server).host;
    let packets = (after.packets_in + after.packets_out) - (before.packets_in + before.packets_out);
    let driven = after.sockets_driven - before.sockets_driven;
    (gbps, driven as f64 / packets.max(1) as f64)
}

/// Buffer memory pressure on one daemon (see `servalctl stats`): times
/// the host's budget, a group's (one user's flows), or a listener's flows
/// nobody accepted came under pressure, and segments dropped because of
/// it. The bench runs everything as root, whose flows have a group of
/// their own: a bulk flow beside idle ones must not reach it.
#[derive(Debug, Clone, Copy, Default)]
struct Pressure {
    host: u64,
    group: u64,
    unaccepted: u64,
    dropped: u64,
}

impl Pressure {
    fn of(daemon: &Daemon) -> Pressure {
        let host = stats(daemon).host;
        Pressure {
            host: host.buffer_pressures,
            group: host.group_buffer_pressures,
            unaccepted: host.unaccepted_buffer_pressures,
            dropped: host.pressure_dropped,
        }
    }

    /// What came since `before`.
    fn since(self, before: Pressure) -> Pressure {
        Pressure {
            host: self.host - before.host,
            group: self.group - before.group,
            unaccepted: self.unaccepted - before.unaccepted,
            dropped: self.dropped - before.dropped,
        }
    }
}

/// How the idle flows of one run were held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// By applications, both ends.
    Applications,
    /// By the generator, in the server's accept queues.
    Generator,
}

/// One row of the report.
struct Row {
    flows: usize,
    held: Held,
    /// The bulk flow alone, measured right before the idle flows opened
    /// and right after they all closed.
    alone: [f64; 2],
    gbps: f64,
    work: f64,
    /// Resident memory of the client and server daemons: before the idle
    /// flows opened, with them idle, and 10 s after they closed.
    rss: [[u64; 3]; 2],
    open_secs: f64,
    /// Connection setup: alone, beside the idle flows, right after they
    /// closed.
    setup: [Setup; 3],
    /// Buffer pressure on the client and server daemons from the row's
    /// first run to the end of the bulk run beside the idle flows.
    pressure: [Pressure; 2],
}

/// What a row needs besides the daemons.
struct Bench<'a> {
    client: &'a Daemon,
    server: &'a Daemon,
    seconds: u64,
    echo: &'a EchoService,
    setup_millis: u64,
}

impl Bench<'_> {
    /// One setup run; `label` names its profile (see `BENCH_PERF_DIR`).
    fn setup(&self, label: &str) -> Setup {
        let daemons = [self.client.child.id(), self.server.child.id()];
        let _profile = std::env::var_os("BENCH_PERF_DIR")
            .map(|dir| Profile::start(&Path::new(&dir).join(format!("{label}.data")), daemons));
        (self.echo).run(
            &self.client.control,
            daemons,
            SETUP_PARALLEL,
            self.setup_millis,
        )
    }
}

/// `perf record` of the daemons while it lives (a diagnosis aid: where
/// did a slower setup run spend its time).
struct Profile(std::process::Child);

impl Profile {
    fn start(output: &Path, pids: [u32; 2]) -> Option<Profile> {
        let pids = format!("{},{}", pids[0], pids[1]);
        let child = std::process::Command::new("perf")
            .args(["record", "-q", "-g", "-F", "1999", "-p", &pids, "-o"])
            .arg(output)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("perf record: {e}"))
            .ok()?;
        // Let it attach before the run starts.
        thread::sleep(Duration::from_millis(300));
        Some(Profile(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.0.wait();
    }
}

fn wait_no_flows(daemons: [&Daemon; 2], timeout: Duration) {
    let gone = wait_until(timeout, || daemons.iter().all(|d| stats(d).flows == 0));
    if !gone {
        eprintln!(
            "flows left after {timeout:?}: {} and {}",
            stats(daemons[0]).flows,
            stats(daemons[1]).flows
        );
    }
}

/// One row: the bulk flow alone, then `open` opens `count` idle flows
/// (returning what closes them), memory is read, the bulk flow runs beside
/// them, they close, and memory is read again 10 s later.
fn measure(
    bench: &Bench,
    count: usize,
    held: Held,
    open: impl FnOnce() -> Box<dyn FnOnce()>,
) -> Row {
    let Bench {
        client,
        server,
        seconds,
        ..
    } = *bench;
    let pids = [client.child.id(), server.child.id()];
    let pressed = [client, server].map(Pressure::of);
    // Setup first: the bulk run gives sald time to trim what the short
    // flows left before the memory is read.
    let setup_alone = bench.setup(&format!("setup-{count}-alone"));
    let (alone, _) = bulk(client, server, seconds);
    wait_no_flows([client, server], Duration::from_secs(30));
    let before = pids.map(common::rss);
    let started = Instant::now();
    let close = open();
    let open_secs = started.elapsed().as_secs_f64();
    assert_eq!(stats(server).flows, count);
    thread::sleep(Duration::from_secs(4));
    let idle = pids.map(common::rss);
    // In the order of the "alone" runs: setup, then the bulk flow (right
    // after a bulk run, setup measured 0.87-0.91 of alone at 1,000 and
    // 10,000 flows; before it, 0.96-1.03).
    let setup_beside = bench.setup(&format!("setup-{count}-beside"));
    let (gbps, work) = bulk(client, server, seconds);
    let pressure = [client, server].map(Pressure::of);
    let pressure = [0, 1].map(|i| pressure[i].since(pressed[i]));
    close();
    wait_no_flows([client, server], Duration::from_secs(60));
    let setup_after = bench.setup(&format!("setup-{count}-after"));
    wait_no_flows([client, server], Duration::from_secs(30));
    // The other side of the "alone" bracket: this machine's throughput
    // drifts by 20-30% within a run, and one "alone" run on one side of
    // the "beside" run made its ratio move with that drift (0.75-1.19 at
    // 100,000 flows for the same build). Like the one before, it comes
    // after a setup run and before a memory read.
    let (alone_after, _) = bulk(client, server, seconds);
    wait_no_flows([client, server], Duration::from_secs(30));
    thread::sleep(Duration::from_secs(10));
    let closed = pids.map(common::rss);
    Row {
        flows: count,
        held,
        alone: [alone, alone_after],
        gbps,
        work,
        rss: [0, 1].map(|i| [before[i], idle[i], closed[i]]),
        open_secs,
        setup: [setup_alone, setup_beside, setup_after],
        pressure,
    }
}

/// Idle flows held by applications: client ends here, server ends in a
/// flow holder process.
fn with_application_flows(bench: &Bench, count: usize) -> Row {
    let Bench { client, server, .. } = *bench;
    measure(bench, count, Held::Applications, || {
        let mut holder = common::FlowHolder::start(&[], &server.control, "1d1e/16", count);
        let opened = common::open_flows(&client.control, "1d1e01".parse().unwrap(), count, 8);
        holder.wait_accepted();
        Box::new(move || {
            common::close_gradually(opened);
            drop(holder);
        })
    })
}

/// Idle flows from the generator, left in the server's accept queues.
fn with_generated_flows(net: &testnet::Topology, bench: &Bench, count: usize) -> Row {
    let server = bench.server;
    measure(bench, count, Held::Generator, || {
        // One listener per 65,535 flows (the backlog bound). Bound with a
        // bare `Listen` and no accept queue (`Deliver`): the flows wait in
        // sald's own queue as plain state. Fed into a queue nobody reads,
        // a few hundred of them would sit there as sockets in flight, and
        // while any unix socket is in flight every close of one on the
        // host wakes the kernel's unix garbage collector (before Linux
        // 6.19): a cost of this bench's never-accepting listeners, not of
        // idle flows.
        let listeners: Vec<ControlClient> = (0..count.div_ceil(BACKLOG))
            .map(|i| {
                let prefix: ServicePrefix = format!("9e{i:02x}/16").parse().unwrap();
                let mut control = server.client();
                let listen = Request::Listen {
                    prefix,
                    protocol: TransportProtocol::Stream,
                    backlog: BACKLOG as u32,
                };
                match control.request(&listen).expect("listen").response {
                    Response::Listening { .. } => control,
                    other => panic!("listen: {other:?}"),
                }
            })
            .collect();
        let services: Vec<ServiceId> = (0..listeners.len())
            .map(|i| format!("9e{i:02x}01").parse().unwrap())
            .collect();
        let generator = Generator::start(
            &net.host(0).ns,
            GENERATOR_ADDR,
            net.host(1).addr().unwrap(),
            services,
            count,
        );
        let established = generator.wait_established(count, Duration::from_secs(300));
        assert_eq!(established, count, "generated flows established");
        Box::new(move || {
            // Unbinding resets what waits in the accept queues.
            drop(listeners);
            thread::sleep(Duration::from_secs(1));
            drop(generator);
        })
    })
}

fn main() {
    if common::hold_flows_if_asked() {
        return;
    }
    if !testnet::is_root() {
        eprintln!("flows bench: SKIPPED (needs root for network namespaces)");
        return;
    }
    let seconds = env_or("BENCH_SECONDS", 5);
    let setup_millis = env_or("BENCH_SETUP_MILLIS", 2000);
    let counts: Vec<usize> = std::env::var("BENCH_FLOWS")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let limit = common::raise_fd_limit(1 << 20);
    // This process holds the client ends; sald holds one end of each of
    // its flows: keep a margin for everything else.
    let app_limit = limit.saturating_sub(2_000) as usize;
    let dir = std::env::temp_dir().join(format!("sald-flows-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let net = TopologyBuilder::new("flows", 2)
        .link(0, 1)
        .build()
        .expect("namespaces");
    let client = start(net.host(0), &dir, "client");
    let server = start(net.host(1), &dir, "server");
    client.forward("0/0", net.host(1).addr().unwrap(), 1);
    // The generator's address, and the server's way back to it.
    net.host(0)
        .ns
        .ip(["addr", "add", &format!("{GENERATOR_ADDR}/32"), "dev", "lo"])
        .expect("generator address");
    net.host(1)
        .ns
        .ip([
            "route",
            "add",
            &format!("{GENERATOR_ADDR}/32"),
            "via",
            &net.host(0).addr().unwrap().to_string(),
        ])
        .expect("route to the generator");

    println!(
        "SAL many-flows benchmark: {seconds} s per throughput run, MTU 1500, descriptor limit {limit}"
    );
    let echo = EchoService::start(&server.control, "5e70/16", "5e7001");
    let bench = Bench {
        client: &client,
        server: &server,
        seconds,
        echo: &echo,
        setup_millis,
    };
    let (alone, alone_work) = bulk(&client, &server, seconds);
    let mut rows = Vec::new();
    for &count in &counts {
        let row = if count <= app_limit {
            with_application_flows(&bench, count)
        } else {
            with_generated_flows(&net, &bench, count)
        };
        eprintln!(
            "{count} idle flows: {:.2} Gbit/s, opened in {:.1} s",
            row.gbps, row.open_secs
        );
        rows.push(row);
    }
    let (again, _) = bulk(&client, &server, seconds);
    drop((client, server, net));
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!("one bulk flow beside N idle established flows (application to application)");
    println!(
        "(each row's \"alone\" is the bulk flow measured right before that row's idle flows opened and right \
         after they all closed; \"/ alone\" is \"beside\" over their mean, \"/ before\" over the first)"
    );
    println!(
        "  idle flows   held by        alone Gbit/s (before, after)   beside Gbit/s   / alone   / before   \
         socket work per packet (server)"
    );
    println!("  0            -                 {alone:7.2}                                                         {alone_work:.3}");
    for row in &rows {
        let held = match row.held {
            Held::Applications => "applications",
            Held::Generator => "generator (*)",
        };
        let [before, after] = row.alone;
        println!(
            "  {:<10}   {held:<13}     {before:7.2}  {after:7.2}                {:7.2}   {:7.3}    {:7.3}   {:.3}",
            row.flows,
            row.gbps,
            row.gbps / ((before + after) / 2.0),
            row.gbps / before,
            row.work
        );
    }
    println!("  0 (at the end)                 {again:7.2}");
    println!();
    println!(
        "buffer memory pressure from a row's first run to the end of its bulk run beside the idle flows \
         (times the host's budget / root's group's / a listener's unaccepted flows' came under it; segments dropped)"
    );
    println!("  idle flows   daemon     host    group   unaccepted   dropped");
    for row in &rows {
        for (i, name) in ["client", "server"].iter().enumerate() {
            let p = row.pressure[i];
            println!(
                "  {:<10}   {name:<6} {:8} {:8} {:12} {:9}",
                row.flows, p.host, p.group, p.unaccepted, p.dropped
            );
        }
    }
    println!();
    println!(
        "sald resident memory (KiB): before opening / with N idle flows / 10 s after all closed"
    );
    println!("  idle flows   daemon   before     idle   per idle flow (bytes)   closed   closed - before (limit: 10% + 8 MiB)");
    for row in &rows {
        for (i, name) in ["client", "server"].iter().enumerate() {
            let [before, idle, closed] = row.rss[i];
            let per_flow = idle.saturating_sub(before) / row.flows.max(1) as u64;
            let allowed = before / 10 + (8 << 20);
            let left = closed as i64 - before as i64;
            println!(
                "  {:<10}   {name:<6} {:8} {:8}   {:>21}   {:6}   {:+} KiB ({})",
                row.flows,
                before >> 10,
                idle >> 10,
                if row.held == Held::Generator && i == 0 {
                    "- (no idle flows)".to_string()
                } else {
                    per_flow.to_string()
                },
                closed >> 10,
                left >> 10,
                if left <= allowed as i64 {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
    println!();
    println!(
        "connection setup (connect + 64-byte echo + close, {SETUP_PARALLEL} client threads, {setup_millis} ms each, \
         through both daemons): alone right before the idle flows opened / beside them / right after they all closed"
    );
    println!(
        "  idle flows   alone conn/s  p50 us  cpu us/c  flt/c   beside conn/s  p50 us  cpu us/c  flt/c  / alone   \
         after close conn/s  p50 us  cpu us/c  flt/c  / alone   errors"
    );
    for row in &rows {
        let [alone, beside, after] = row.setup;
        println!(
            "  {:<10}   {:12.0} {:7} {:9.0} {:6.1}   {:13.0} {:7} {:9.0} {:6.1} {:8.3}   {:18.0} {:7} {:9.0} {:6.1} {:8.3}   {}",
            row.flows,
            alone.rate,
            alone.p50_us,
            alone.daemons_cpu_us,
            alone.daemons_faults,
            beside.rate,
            beside.p50_us,
            beside.daemons_cpu_us,
            beside.daemons_faults,
            beside.rate / alone.rate.max(1.0),
            after.rate,
            after.p50_us,
            after.daemons_cpu_us,
            after.daemons_faults,
            after.rate / alone.rate.max(1.0),
            alone.errors + beside.errors + after.errors
        );
    }
    println!(
        "  (cpu us/c: both daemons' CPU time per connection; flt/c: their minor page faults per connection)"
    );
    println!();
    println!("targets: >= 0.9x alone at 10,000, >= 0.8x at 100,000; <= 8192 bytes per idle flow");
    if rows.iter().any(|r| r.held == Held::Generator) {
        println!(
            "(*) more flows than the descriptor limit ({limit}) lets applications hold: generated \
             from {GENERATOR_ADDR} and left in the server's accept queues (no pump, no descriptor); \
             its per-flow memory is the host's state and sald's tables only"
        );
    }
}
