//! servd benchmarks (a program, not a timed test: `cargo bench -p controller
//! --bench servd`).
//!
//! 1. Scale, in-process (always): one router controller, 100k services
//!    announced by 1000 simulated hosts (100 each, HMAC on), applied to a
//!    real `ServiceTable` standing in for sald: install rate, memory, and
//!    the CPU cost of one full refresh round.
//! 2. Resolution cache, in-process (always): a client controller with
//!    `--default-route delay` resolves 100k services through that router
//!    (positive answers: FORWARD rules), another 100k that nobody has
//!    (negative answers: exact DROP rules), then a flood of 100k more
//!    unknown ones against a full cache (`max_cached` 100k): memory per
//!    cached answer, servd and the table together, and what the flood
//!    pushes out.
//! 3. Namespaces (root, and a built `sald` next to this program or in
//!    target/debug): router, two servers, client, lease 2 s, refresh
//!    0.5 s. Registration-to-reachable latency (bind on a server until a
//!    client's connect through the router succeeds) and failover time
//!    (SIGKILL of a server host's sald and servd until the router's rule is
//!    gone), medians over 20 runs.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use controller::servd::{Config, Controller, DefaultRoute, Key, Keyring, SaldAction};
use sal::proto::LocalInterface;
use sal::table::{ServiceTable, Target};
use sal::{ServiceId, ServicePrefix};
use sal_control::{ControlEvent, Request, Response};
use socket_shim::{ControlClient, ServiceListener, ServiceStream};
use testnet::{wait_until, Host, NsChild, TopologyBuilder};

fn main() {
    let router = scale();
    cache(router);
    if !testnet::is_root() {
        println!("namespace benchmarks skipped: not root");
        return;
    }
    match sald_binary() {
        Some(sald) => namespaces(&sald),
        None => println!("namespace benchmarks skipped: no sald binary (cargo build -p sald)"),
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Bytes the allocator has handed out and not yet had back (glibc's
/// count): unlike RSS, not masked by memory an earlier section freed.
fn heap_in_use() -> u64 {
    // SAFETY: `mallinfo2` takes no arguments and only reads glibc's own
    // statistics under its locks.
    let info = unsafe { nix::libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

fn interface(ip: Ipv4Addr) -> LocalInterface {
    serde_json::from_value(serde_json::json!({
        "name": "eth0",
        "locator": sal::Locator::Ipv4(ip),
        "prefix_len": 16,
    }))
    .expect("a valid interface")
}

fn apply(table: &mut ServiceTable, action: SaldAction) {
    match action {
        SaldAction::Add {
            prefix,
            target,
            priority,
            ..
        } => {
            table.add(prefix, target, priority);
        }
        SaldAction::Remove { prefix, key } => {
            let _ = table.remove_target(&prefix, &key);
        }
    }
}

/// Builds the router of section 1 and returns it, knowing 100k services
/// (`0x<host>_<service>` in the first 64 bits of each /64).
fn scale() -> Controller {
    const HOSTS: u32 = 1000;
    const PER_HOST: u32 = 100;
    let key = b"benchmark shared key 0123456789".to_vec();
    let lease = Duration::from_secs(30);
    let refresh = Duration::from_secs(10);
    let router_addr = ROUTER_ADDR;
    let start = Instant::now();
    let base = |name: String| Config {
        name,
        lease,
        refresh,
        keys: Keyring::with_signing(Key::new("domain", &key).expect("a long enough key")),
        ..Config::default()
    };

    // Simulated hosts produce their real (batched, tagged) announcements.
    let mut hosts = Vec::new();
    let mut datagrams: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for h in 0..HOSTS {
        let ip = Ipv4Addr::from(0x0a00_0000 | (h + 2));
        let mut config = base(format!("host{h}"));
        config.upstreams = vec![router_addr];
        let mut host = Controller::new(config, start, u64::from(h) + 1);
        host.set_interfaces(start, vec![interface(ip)]);
        for s in 0..PER_HOST {
            let id = ServiceId::from_words([u64::from(h) << 32 | u64::from(s), 0, 0, 0]);
            host.handle_local_event(
                start,
                ControlEvent::Registered {
                    prefix: ServicePrefix::new(id, 64),
                },
            );
        }
        while let Some(t) = host.poll_transmit() {
            datagrams.push((SocketAddr::new(ip.into(), 54326), t.bytes));
        }
        hosts.push((ip, host));
    }
    let bytes: usize = datagrams.iter().map(|(_, d)| d.len()).sum();

    let mut config = base("router".into());
    config.router = true;
    let mut router = Controller::new(config, start, 999_999);
    router.set_interfaces(start, vec![interface(Ipv4Addr::new(10, 255, 0, 1))]);
    let mut table = ServiceTable::new();
    let rss_before = rss_bytes();
    let t0 = Instant::now();
    let mut controller_time = Duration::ZERO;
    let mut installs = 0u64;
    for (src, datagram) in &datagrams {
        let c = Instant::now();
        router.handle_message(start, *src, datagram);
        while router.poll_transmit().is_some() {}
        controller_time += c.elapsed();
        while let Some(action) = router.poll_action() {
            installs += 1;
            apply(&mut table, action);
        }
    }
    let install = t0.elapsed();
    let rss_after = rss_bytes();
    assert_eq!(table.len(), (HOSTS * PER_HOST) as usize);

    // Full refresh rounds from every host, nothing changed. The second one
    // also re-reports every rule's expiry to sald (every half lease).
    let mut rounds = Vec::new();
    for round in 1..=2u32 {
        let later = start + refresh * round;
        let mut refresh_datagrams = Vec::new();
        for (ip, host) in &mut hosts {
            host.handle_timeout(later);
            while let Some(t) = host.poll_transmit() {
                refresh_datagrams.push((SocketAddr::new((*ip).into(), 54326), t.bytes));
            }
        }
        let t1 = Instant::now();
        let mut refresh_actions = 0u64;
        for (src, datagram) in &refresh_datagrams {
            router.handle_message(later, *src, datagram);
            while router.poll_transmit().is_some() {}
            while let Some(action) = router.poll_action() {
                refresh_actions += 1;
                apply(&mut table, action);
            }
        }
        rounds.push((refresh_datagrams.len(), t1.elapsed(), refresh_actions));
    }
    println!("== servd scale: one router, {HOSTS} hosts x {PER_HOST} services, HMAC on ==");
    println!(
        "announcements: {} datagrams, {:.1} MB; router learned {} entries",
        datagrams.len(),
        bytes as f64 / 1e6,
        router.learned_entries()
    );
    println!(
        "install: {:.0} ms total, {:.0} rules/s ({:.0} ms in the controller, the rest in the table)",
        install.as_secs_f64() * 1e3,
        installs as f64 / install.as_secs_f64(),
        controller_time.as_secs_f64() * 1e3
    );
    println!(
        "memory: router process RSS +{:.1} MB ({:.0} B per service) for controller state \
         and table; table alone {:.1} MB",
        rss_after.saturating_sub(rss_before) as f64 / 1e6,
        rss_after.saturating_sub(rss_before) as f64 / f64::from(HOSTS * PER_HOST),
        table.memory_bytes() as f64 / 1e6
    );
    for (round, (datagrams, cost, actions)) in rounds.iter().enumerate() {
        println!(
            "refresh round {} ({datagrams} datagrams, lease {lease:?}, refresh {refresh:?}): \
             {:.0} ms CPU in the router's controller, {:.1}% of one core at that interval; \
             {actions} rule updates sent to sald (expiries re-reported every half lease)",
            round + 1,
            cost.as_secs_f64() * 1e3,
            100.0 * cost.as_secs_f64() / refresh.as_secs_f64()
        );
    }
    router
}

/// The router's address in sections 1 and 2.
const ROUTER_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)), 54326);

/// Section 2: see the module docs. `router` knows the services of section 1.
fn cache(mut router: Controller) {
    const CACHED: usize = 100_000;
    /// Fewer than servd's bound on pending queries (10,000).
    const BATCH: u64 = 5_000;
    let client_ip = Ipv4Addr::new(10, 254, 0, 2);
    let client_addr = SocketAddr::new(client_ip.into(), 54326);
    let start = Instant::now();
    let key = b"benchmark shared key 0123456789".to_vec();
    // Epochs name senders for replay protection: unlike section 1's hosts'.
    let new_client = |name: &str, epoch: u64| {
        let config = Config {
            name: name.into(),
            upstreams: vec![ROUTER_ADDR],
            default_route: DefaultRoute::Delay,
            max_cached: CACHED,
            // Every DELAY notification of a batch comes at one instant:
            // this section measures the cache, not the query rate bound.
            query_rate: u32::MAX,
            keys: Keyring::with_signing(Key::new("domain", &key).expect("a long enough key")),
            ..Config::default()
        };
        let mut client = Controller::new(config, start, epoch);
        client.set_interfaces(start, vec![interface(client_ip)]);
        while client.poll_transmit().is_some() {}
        while client.poll_action().is_some() {}
        client
    };
    // Resolves `services` one batch at a time, each query and answer
    // carried between the two controllers as a datagram; returns the
    // elapsed time.
    let resolve = |router: &mut Controller,
                   client: &mut Controller,
                   table: &mut ServiceTable,
                   services: &mut dyn Iterator<Item = ServiceId>| {
        let t0 = Instant::now();
        let mut batch = Vec::with_capacity(BATCH as usize);
        loop {
            batch.clear();
            batch.extend(services.take(BATCH as usize));
            if batch.is_empty() {
                return t0.elapsed();
            }
            for &service in &batch {
                client.handle_local_event(
                    start,
                    ControlEvent::DelayNotify {
                        service,
                        connect: false,
                        uid: None,
                    },
                );
            }
            while let Some(query) = client.poll_transmit() {
                router.handle_message(start, client_addr, &query.bytes);
                while let Some(answer) = router.poll_transmit() {
                    client.handle_message(start, ROUTER_ADDR, &answer.bytes);
                }
            }
            while router.poll_action().is_some() {}
            while let Some(action) = client.poll_action() {
                apply(table, action);
            }
        }
    };
    let known = |i: u64| {
        let (host, service) = (i / 100, i % 100);
        ServiceId::from_words([host << 32 | service, 0x5e, 0, 0])
    };
    let unknown = |i: u64| ServiceId::from_words([u64::MAX - i, 0xbad, 0, 0]);

    println!("== servd resolution cache: --default-route delay, max_cached {CACHED} ==");
    let per_entry = |before: u64, after: u64| after.saturating_sub(before) as f64 / CACHED as f64;

    let mut positive = new_client("client-positive", 2_000_001);
    let mut positive_table = ServiceTable::new();
    let before = heap_in_use();
    let took = resolve(
        &mut router,
        &mut positive,
        &mut positive_table,
        &mut (0..CACHED as u64).map(known),
    );
    let after = heap_in_use();
    let stats = positive.stats();
    assert_eq!(
        positive_table.len(),
        CACHED,
        "every known service got its FORWARD rule"
    );
    println!(
        "positive: {} answers in {:.0} ms ({:.1} us each, both controllers); {} rules; \
         heap +{:.0} B per cached answer (servd and table), table alone {:.0} B per rule",
        stats.answers,
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / CACHED as f64,
        positive_table.len(),
        per_entry(before, after),
        positive_table.memory_bytes() as f64 / CACHED as f64,
    );

    let mut negative = new_client("client-negative", 2_000_002);
    let mut negative_table = ServiceTable::new();
    let before = heap_in_use();
    let took = resolve(
        &mut router,
        &mut negative,
        &mut negative_table,
        &mut (0..CACHED as u64).map(unknown),
    );
    let after = heap_in_use();
    assert_eq!(
        negative_table.len(),
        CACHED,
        "every unknown service got its DROP rule"
    );
    println!(
        "negative: {} answers in {:.0} ms; heap +{:.0} B per cached answer, table alone {:.0} B per rule",
        negative.stats().negative_answers,
        took.as_secs_f64() * 1e3,
        per_entry(before, after),
        negative_table.memory_bytes() as f64 / CACHED as f64,
    );
    drop((negative, negative_table));

    // A flood of unknown services against the full cache of positive answers.
    let before = heap_in_use();
    resolve(
        &mut router,
        &mut positive,
        &mut positive_table,
        &mut (CACHED as u64..2 * CACHED as u64).map(unknown),
    );
    let after = heap_in_use();
    let stats = positive.stats();
    let forwards = (0..CACHED as u64)
        .filter(|&i| {
            positive_table.longest_match(&known(i)).is_some_and(|rule| {
                rule.targets()
                    .iter()
                    .any(|t| matches!(t.target, Target::Forward { .. }))
            })
        })
        .count();
    println!(
        "flood of {CACHED} unknown services on the full positive cache: {} evicted, \
         {forwards} of {CACHED} FORWARD rules kept, table {} rules, heap {:+.1} MB",
        stats.cache_evicted,
        positive_table.len(),
        (after as f64 - before as f64) / 1e6,
    );
}

// ----- namespaces -------------------------------------------------------

const LEASE: &str = "2s";
const REFRESH: &str = "500ms";
const RUNS: usize = 20;

fn sald_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile = exe.parent()?.parent()?;
    [
        profile.join("sald"),
        profile.parent()?.join("debug").join("sald"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

struct Proc(NsChild);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.terminate(Duration::from_secs(5));
    }
}

fn spawn(host: &Host, dir: &Path, name: &str, program: &Path, args: &[String]) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let mut cmd = host.ns.command(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    Proc(host.ns.spawn_cmd(cmd).expect("spawn"))
}

struct Node {
    control: PathBuf,
    sald: Option<Proc>,
    servd: Option<Proc>,
    addr: Ipv4Addr,
}

fn start(host: &Host, dir: &Path, sald: &Path, name: &str, servd_args: &[String]) -> Node {
    let control = dir.join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&control);
    let mut args = vec![
        "--iface".to_string(),
        host.ifaces[0].name.clone(),
        "--control".into(),
        control.display().to_string(),
    ];
    if servd_args.iter().any(|a| a == "--router") {
        args.push("--forward".into());
    }
    let sald = spawn(host, dir, &format!("{name}-sald"), sald, &args);
    assert!(
        wait_until(Duration::from_secs(10), || UnixStream::connect(&control)
            .is_ok()),
        "sald on {name} did not start"
    );
    let addr = host.addr().expect("an address");
    let mut args = vec![
        "--control".to_string(),
        control.display().to_string(),
        "--listen".into(),
        format!("{addr}:54326"),
        "--name".into(),
        name.into(),
        "--lease".into(),
        LEASE.into(),
        "--refresh".into(),
        REFRESH.into(),
    ];
    args.extend_from_slice(servd_args);
    let servd = spawn(
        host,
        dir,
        &format!("{name}-servd"),
        Path::new(env!("CARGO_BIN_EXE_servd")),
        &args,
    );
    Node {
        control,
        sald: Some(sald),
        servd: Some(servd),
        addr,
    }
}

impl Node {
    fn client(&self) -> ControlClient {
        ControlClient::connect_to(&self.control).expect("control socket")
    }

    fn forwards(&self, prefix: &ServicePrefix) -> Vec<Ipv4Addr> {
        let Ok(Response::Rules { rules, .. }) = ControlClient::connect_to(&self.control)
            .and_then(|mut c| c.request(&Request::ListRules))
            .map(|r| r.response)
        else {
            return Vec::new();
        };
        let mut out: Vec<Ipv4Addr> = rules
            .iter()
            .filter(|r| r.prefix == *prefix)
            .flat_map(|r| r.targets().to_vec())
            .filter_map(|e| match e.target {
                Target::Forward { locator, .. } => Some(locator.ip()),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn connect_once(client: &Node, service: ServiceId) -> Option<u8> {
    let mut stream =
        ServiceStream::connect_via(client.client(), service, Some(Duration::from_millis(500)))
            .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    answer.first().copied()
}

fn namespaces(sald: &Path) {
    let net = TopologyBuilder::new("servdbench", 4)
        .lan(&[0, 1, 2, 3])
        .build()
        .expect("topology");
    let dir = std::env::temp_dir().join(format!("servd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let router_addr = net.host(0).addr().expect("address");
    let upstream = vec!["--upstream".to_string(), format!("{router_addr}:54326")];
    let router = start(net.host(0), &dir, sald, "router", &["--router".into()]);
    let s1 = start(net.host(1), &dir, sald, "s1", &upstream);
    let mut s2 = start(net.host(2), &dir, sald, "s2", &upstream);
    let client = start(net.host(3), &dir, sald, "client", &upstream);
    assert!(
        wait_until(Duration::from_secs(5), || client
            .forwards(&ServicePrefix::DEFAULT)
            .contains(&router_addr)),
        "no default route on the client"
    );

    // Registration to reachable.
    let mut latencies = Vec::new();
    for run in 0..RUNS {
        let prefix: ServicePrefix = format!("7e{run:02x}/16").parse().expect("prefix");
        let service: ServiceId = format!("7e{run:02x}01").parse().expect("id");
        let t0 = Instant::now();
        let listener = ServiceListener::bind_via(s1.client(), prefix, 8).expect("bind");
        let server = std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.write_all(&[1]);
                let _ = stream.shutdown_write();
            }
            listener
        });
        loop {
            if connect_once(&client, service) == Some(1) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "never reachable");
            std::thread::sleep(Duration::from_millis(2));
        }
        latencies.push(t0.elapsed());
        drop(server.join());
    }

    // Failover after SIGKILL of s2's host daemons.
    let prefix: ServicePrefix = "f000/16".parse().expect("prefix");
    let service: ServiceId = "f00001".parse().expect("id");
    let s1_listener = ServiceListener::bind_via(s1.client(), prefix, 64).expect("bind");
    std::thread::spawn(move || loop {
        let Ok((mut stream, _)) = s1_listener.accept() else {
            return;
        };
        let _ = stream.write_all(&[1]);
        let _ = stream.shutdown_write();
    });
    let mut failovers = Vec::new();
    for run in 0..RUNS {
        if run > 0 {
            s2 = start(net.host(2), &dir, sald, &format!("s2-{run}"), &upstream);
        }
        let s2_listener = ServiceListener::bind_via(s2.client(), prefix, 64).expect("bind");
        assert!(
            wait_until(Duration::from_secs(5), || s1_listener_ready(
                &router, &prefix, &s1, &s2
            )),
            "both instances never announced"
        );
        for proc in [s2.servd.take(), s2.sald.take()].into_iter().flatten() {
            let _ = proc.0.signal(nix::sys::signal::Signal::SIGKILL);
            drop(proc);
        }
        let t0 = Instant::now();
        assert!(
            wait_until(Duration::from_secs(5), || router.forwards(&prefix)
                == vec![s1.addr]),
            "the dead instance's rule stayed"
        );
        failovers.push(t0.elapsed());
        assert_eq!(connect_once(&client, service), Some(1));
        drop(s2_listener);
    }
    println!("== servd namespaces: router, 2 servers, client; lease {LEASE}, refresh {REFRESH} ==");
    println!(
        "registration to reachable (bind until a client connect through the router succeeds): \
         median {:.1} ms over {RUNS} runs (min {:.1}, max {:.1})",
        median(latencies.clone()).as_secs_f64() * 1e3,
        latencies
            .iter()
            .min()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3,
        latencies
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3,
    );
    println!(
        "failover after SIGKILL of an instance host's sald+servd (until the router's rule is gone): \
         median {:.0} ms over {RUNS} runs (min {:.0}, max {:.0}); bound: lease",
        median(failovers.clone()).as_secs_f64() * 1e3,
        failovers.iter().min().copied().unwrap_or_default().as_secs_f64() * 1e3,
        failovers.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    drop((router, s1, client));
    let _ = std::fs::remove_dir_all(&dir);
}

fn s1_listener_ready(router: &Node, prefix: &ServicePrefix, s1: &Node, s2: &Node) -> bool {
    router.forwards(prefix) == vec![s1.addr, s2.addr]
}
