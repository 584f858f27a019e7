//! servd with the real binaries on hosts built from network namespaces: a
//! service router, three server hosts and a client on one LAN, every host
//! running sald and servd; no rule is added by hand. Needs root; skips
//! loudly otherwise.
//!
//! The test process plays the applications, through each host's control
//! socket (as in sald's own namespace tests). It checks, with lease 2 s and
//! refresh 0.5 s:
//! - the client finds its router by broadcast and installs a default route;
//! - a bind on a server reaches the router as a FORWARD rule within 1 s,
//!   and the client (whose only rule is servd's default route) connects by
//!   service ID through the router;
//! - unbinding withdraws at once;
//! - SIGKILL of a server host's sald and servd: the router's rule is gone
//!   within the lease, and new connections go to the other instance;
//! - a host without the shared key cannot announce; once its servd has the
//!   key, its existing binding is announced and gets its share;
//! - with `--default-route delay`, a connect is held, resolved by a query
//!   to the router and completes; an unknown service fails with "no route";
//! - `servalctl service drain` under load: the drained instance leaves the
//!   router's rule, finishes what it admitted, closes once idle, and no
//!   client request fails;
//! - `--weights least-loaded`: flows a server holds for its bound prefix
//!   (reported by its sald, counted by its servd) lower its weight at the
//!   router, and closing them restores it.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sal::table::{Rule, RuleOrigin, Target};
use sal::{ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ControlClient, ServiceListener, ServiceStream};
use testnet::{require_root, wait_until, Host, NsChild, TopologyBuilder};

const LEASE: &str = "2s";
const REFRESH: &str = "500ms";

/// A process in a host namespace, stopped with SIGTERM on drop (sald then
/// removes its plumbing before the namespace goes away).
struct Daemon {
    child: NsChild,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.terminate(Duration::from_secs(5));
    }
}

impl Daemon {
    fn kill(&self) {
        let _ = self.child.signal(nix::sys::signal::Signal::SIGKILL);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// sald is another package's binary: it sits next to ours in the target
/// directory (`cargo test --workspace` builds it for sald's own tests).
fn sald_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let sald = dir.join("sald");
    assert!(
        sald.exists(),
        "{} is missing: build it first (cargo build -p sald)",
        sald.display()
    );
    sald
}

fn scratch_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("servd-test-{}-{label}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spawn(host: &Host, dir: &Path, name: &str, program: &Path, args: &[String]) -> Daemon {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = host.ns.command(program);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let child = host.ns.spawn_cmd(cmd).unwrap();
    Daemon { child, log }
}

struct Node {
    control: PathBuf,
    sald: Daemon,
    servd: Option<Daemon>,
    addr: Ipv4Addr,
}

impl Node {
    fn client(&self) -> ControlClient {
        ControlClient::connect_to(&self.control).unwrap()
    }

    fn rules(&self) -> Vec<Rule> {
        match ControlClient::connect_to(&self.control)
            .and_then(|mut c| c.request(&Request::ListRules))
            .map(|r| r.response)
        {
            Ok(Response::Rules { rules, .. }) => rules,
            _ => Vec::new(),
        }
    }

    /// FORWARD locators at exactly `prefix`.
    fn forwards(&self, prefix: &str) -> Vec<Ipv4Addr> {
        let weights = self.weights(prefix);
        weights.into_iter().map(|(locator, _)| locator).collect()
    }

    /// FORWARD targets at exactly `prefix` with their weights.
    fn weights(&self, prefix: &str) -> Vec<(Ipv4Addr, u32)> {
        let prefix: ServicePrefix = prefix.parse().unwrap();
        let mut out: Vec<_> = self
            .rules()
            .iter()
            .filter(|r| r.prefix == prefix)
            .flat_map(|r| r.targets().to_vec())
            .filter_map(|e| match e.target {
                Target::Forward { locator, weight } => Some((locator.ip(), weight)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    fn logs(&self) -> String {
        format!(
            "--- sald ---\n{}\n--- servd ---\n{}",
            self.sald.log(),
            self.servd.as_ref().map(Daemon::log).unwrap_or_default()
        )
    }
}

fn start_node(host: &Host, dir: &Path, name: &str, forward: bool) -> Node {
    let control = dir.join(format!("{name}.sock"));
    let mut args = vec![
        "--iface".to_string(),
        host.ifaces[0].name.clone(),
        "--control".into(),
        control.display().to_string(),
    ];
    if forward {
        args.push("--forward".into());
    }
    let sald = spawn(host, dir, &format!("{name}-sald"), &sald_binary(), &args);
    let ready = wait_until(Duration::from_secs(10), || {
        UnixStream::connect(&control).is_ok()
    });
    assert!(ready, "sald on {name} did not come up:\n{}", sald.log());
    Node {
        control,
        sald,
        servd: None,
        addr: host.addr().unwrap(),
    }
}

fn start_servd(host: &Host, dir: &Path, node: &mut Node, name: &str, extra: &[String]) {
    // Routers listen on the wildcard address: broadcast solicitations of
    // hosts that discover their router do not reach a unicast-bound socket.
    let listen = if extra.iter().any(|a| a == "--router") {
        "0.0.0.0:54326".to_string()
    } else {
        format!("{}:54326", node.addr)
    };
    let mut args = vec![
        "--control".to_string(),
        node.control.display().to_string(),
        "--listen".into(),
        listen,
        "--name".into(),
        name.into(),
    ];
    if !extra.iter().any(|a| a == "--lease") {
        args.extend([
            "--lease".into(),
            LEASE.into(),
            "--refresh".into(),
            REFRESH.into(),
        ]);
    }
    args.extend_from_slice(extra);
    let servd = spawn(
        host,
        dir,
        &format!("{name}-servd"),
        Path::new(env!("CARGO_BIN_EXE_servd")),
        &args,
    );
    node.servd = Some(servd);
}

fn svc(s: &str) -> ServiceId {
    s.parse().unwrap()
}

/// Serves connections on `prefix`, answering each with `tag`.
fn serve(node: &Node, prefix: &str, tag: u8) -> thread::JoinHandle<()> {
    let listener =
        ServiceListener::bind_via(node.client(), prefix.parse::<ServicePrefix>().unwrap(), 64)
            .unwrap();
    thread::spawn(move || loop {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let _ = stream.write_all(&[tag]);
        let _ = stream.shutdown_write();
    })
}

/// One connection from the client: which server answered.
fn ask(client: &Node, service: &str) -> Result<u8, String> {
    let mut stream =
        ServiceStream::connect_via(client.client(), svc(service), Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    answer.first().copied().ok_or_else(|| "empty answer".into())
}

#[test]
fn binds_become_routes_and_crashes_expire() {
    require_root!();
    let started = Instant::now();
    let net = TopologyBuilder::new("servd", 5)
        .lan(&[0, 1, 2, 3, 4])
        .build()
        .unwrap();
    let dir = scratch_dir("servd");
    let key = dir.join("domain.key");
    std::fs::write(&key, "a shared key for the test domain\n").unwrap();
    let keyed = vec!["--key-file".to_string(), key.display().to_string()];
    let router_addr = net.host(0).addr().unwrap();
    let mut upstream = vec!["--upstream".to_string(), format!("{router_addr}:54326")];
    upstream.extend_from_slice(&keyed);

    let mut router = start_node(net.host(0), &dir, "router", true);
    let mut s1 = start_node(net.host(1), &dir, "s1", false);
    let mut s2 = start_node(net.host(2), &dir, "s2", false);
    let mut client = start_node(net.host(3), &dir, "client", false);
    let mut s3 = start_node(net.host(4), &dir, "s3", false);
    let mut router_args = vec!["--router".to_string()];
    router_args.extend_from_slice(&keyed);
    start_servd(net.host(0), &dir, &mut router, "router", &router_args);
    start_servd(net.host(1), &dir, &mut s1, "s1", &upstream);
    start_servd(net.host(2), &dir, &mut s2, "s2", &upstream);
    // The client is not told where its router is: it finds it by broadcast.
    start_servd(net.host(3), &dir, &mut client, "client", &keyed);
    // s3 starts outside the domain: no key.
    start_servd(net.host(4), &dir, &mut s3, "s3", &upstream[..2]);

    // The client discovers the router and learns its default route from it.
    let default_route = wait_until(Duration::from_secs(5), || {
        client.forwards("0/0") == vec![router_addr]
    });
    assert!(default_route, "no default route:\n{}", client.logs());

    // 1. Bind on s1: the router has the rule within 1 s, the client connects.
    let bound = Instant::now();
    let _s1_server = serve(&s1, "5e00/16", 1);
    let reachable = wait_until(Duration::from_secs(1), || {
        router.forwards("5e00/16") == vec![s1.addr]
    });
    let registration = bound.elapsed();
    assert!(
        reachable,
        "router has no rule 1 s after the bind:\n{}\n{}",
        router.logs(),
        s1.logs()
    );
    assert_eq!(ask(&client, "5e0077"), Ok(1), "{}", router.logs());
    let connected = bound.elapsed();
    let rule = router
        .rules()
        .into_iter()
        .find(|r| r.prefix == "5e00/16".parse().unwrap())
        .unwrap();
    let origin = &rule.targets()[0].origin;
    assert!(
        matches!(origin, RuleOrigin::Announced { by, expires_unix_ms: Some(_) } if by.starts_with("s1")),
        "{origin:?}"
    );

    // 2. Unbinding withdraws at once (the service's process went away).
    let short_lived =
        ServiceListener::bind_via(s2.client(), "abcd/16".parse::<ServicePrefix>().unwrap(), 4)
            .unwrap();
    assert!(wait_until(Duration::from_secs(1), || {
        router.forwards("abcd/16") == vec![s2.addr]
    }));
    let unbound = Instant::now();
    drop(short_lived);
    assert!(
        wait_until(Duration::from_secs(1), || router
            .forwards("abcd/16")
            .is_empty()),
        "withdrawal did not arrive"
    );
    let withdrawal = unbound.elapsed();

    // 3. A host without the key cannot announce.
    let _s3_server = serve(&s3, "5e00/16", 3);
    let _s2_server = serve(&s2, "5e00/16", 2);
    assert!(wait_until(Duration::from_secs(1), || {
        router.forwards("5e00/16") == vec![s1.addr, s2.addr]
    }));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        router.forwards("5e00/16"),
        vec![s1.addr, s2.addr],
        "an unauthenticated host got in"
    );

    // 4. SIGKILL of s1's sald and servd: gone within the lease; new
    // connections go to s2.
    s1.servd.as_ref().unwrap().kill();
    s1.sald.kill();
    let killed = Instant::now();
    let expired = wait_until(Duration::from_secs(4), || {
        router.forwards("5e00/16") == vec![s2.addr]
    });
    let failover = killed.elapsed();
    assert!(expired, "s1's rule outlived its lease:\n{}", router.logs());
    assert!(
        failover <= Duration::from_millis(2300),
        "s1's rule took {failover:?} to expire (lease {LEASE})"
    );
    for _ in 0..10 {
        assert_eq!(ask(&client, "5e0077"), Ok(2));
    }

    // 5. s3's servd restarts with the key: it finds the binding already in
    // its sald, announces it, and s3 gets its share of new connections.
    drop(s3.servd.take());
    start_servd(net.host(4), &dir, &mut s3, "s3-keyed", &upstream);
    assert!(
        wait_until(Duration::from_secs(2), || {
            router.forwards("5e00/16") == vec![s2.addr, s3.addr]
        }),
        "third instance not announced:\n{}\n{}",
        router.logs(),
        s3.logs()
    );
    let mut counts = [0usize; 4];
    for _ in 0..40 {
        let who = ask(&client, "5e0077").unwrap();
        counts[usize::from(who)] += 1;
    }
    assert!(counts[2] >= 8 && counts[3] >= 8, "shares {counts:?}");
    // 6. On-demand resolution: the client's servd restarts with a /0 DELAY
    // instead of the default route (the old default route, adopted from the
    // previous run, goes one lease later). A connect is held, resolved by a
    // query to the router, and goes straight to an instance; an unknown
    // service fails with "no route".
    drop(client.servd.take());
    let mut delay = upstream.clone();
    delay.extend(["--default-route".to_string(), "delay".into()]);
    start_servd(net.host(3), &dir, &mut client, "client-delay", &delay);
    assert!(
        wait_until(Duration::from_secs(4), || client.forwards("0/0").is_empty()
            && client
                .rules()
                .iter()
                .any(|r| r.prefix == ServicePrefix::DEFAULT)),
        "the default route was not replaced by a DELAY:\n{}",
        client.logs()
    );
    let resolving = Instant::now();
    let who = ask(&client, "5e0077");
    let resolved = resolving.elapsed();
    assert!(matches!(who, Ok(2 | 3)), "{who:?}\n{}", client.logs());
    assert_eq!(client.forwards("5e00/16"), vec![s2.addr, s3.addr]);
    let refused = ask(&client, "0bad");
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("no route")),
        "{refused:?}"
    );

    eprintln!(
        "servd netns: bind-to-rule {registration:?}, bind-to-connect {connected:?}, \
         withdrawal {withdrawal:?}, failover after SIGKILL {failover:?} \
         (lease {LEASE}, refresh {REFRESH}), shares {counts:?}, \
         DELAY-resolved connect {resolved:?}, total {:?}",
        started.elapsed()
    );
    // Stop the daemons, then remove their logs and sockets (kept on failure).
    drop((router, s1, s2, client, s3));
    let _ = std::fs::remove_dir_all(&dir);
}

/// One datagram to the router's servd, sent from inside `host`.
fn send_from(host: &Host, to: std::net::SocketAddr, bytes: &[u8]) {
    host.ns
        .run(|| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            socket.send_to(bytes, to).unwrap();
        })
        .unwrap();
}

#[test]
fn forgeries_are_refused_sald_restarts_are_survived_and_sigterm_withdraws() {
    use controller::servd::wire::{self, Announcement, Message, Node};
    require_root!();
    let net = TopologyBuilder::new("servd-sec", 3)
        .lan(&[0, 1, 2])
        .build()
        .unwrap();
    let dir = scratch_dir("servd-sec");
    let router_addr = net.host(0).addr().unwrap();
    let servd_port = std::net::SocketAddr::new(router_addr.into(), 54326);
    // A long lease: what goes away within a second was withdrawn, not expired.
    let timers = [
        "--lease".to_string(),
        "10s".into(),
        "--refresh".into(),
        "2s".into(),
    ];
    let mut router = start_node(net.host(0), &dir, "router", true);
    let mut server = start_node(net.host(1), &dir, "server", false);
    let mut router_args = vec!["--router".to_string()];
    router_args.extend_from_slice(&timers);
    start_servd(net.host(0), &dir, &mut router, "router", &router_args);
    let mut server_args = vec!["--upstream".to_string(), format!("{servd_port}")];
    server_args.extend_from_slice(&timers);
    start_servd(net.host(1), &dir, &mut server, "server", &server_args);
    // The operator's default route on the router.
    let operator: Ipv4Addr = "10.255.0.1".parse().unwrap();
    router
        .client()
        .request_ok(&Request::AddRule {
            prefix: ServicePrefix::DEFAULT,
            target: Target::Forward {
                locator: sal::Locator::Ipv4(operator),
                weight: 1,
            },
            priority: 0,
        })
        .unwrap();
    // Give the router's servd time to list the operator's rule.
    thread::sleep(Duration::from_millis(300));

    let _listener = serve(&server, "7e57/16", 1);
    assert!(
        wait_until(Duration::from_secs(3), || router.forwards("7e57/16")
            == vec![server.addr]),
        "not announced:\n{}",
        server.logs()
    );

    // An attacker on the LAN (host 2) claims /0 at priority 4e9, points the
    // live service at a third host, and announces a /8.
    let attacker = net.host(2);
    let third: Ipv4Addr = "10.255.0.77".parse().unwrap();
    let forged = Message::Announce {
        from: Node {
            name: "evil".into(),
            epoch: 666,
            locators: vec![sal::Locator::Ipv4(third)],
        },
        lease_ms: 60_000,
        entries: ["0/0", "7e57/16", "ab/8"]
            .iter()
            .map(|prefix| Announcement {
                prefix: prefix.parse().unwrap(),
                weight: 1000,
                priority: 4_000_000_000,
                load: 0,
            })
            .collect(),
        full: true,
    };
    send_from(attacker, servd_port, &wire::encode(&forged, None).unwrap());
    thread::sleep(Duration::from_millis(500));
    assert_eq!(router.forwards("0/0"), vec![operator]);
    assert_eq!(router.forwards("7e57/16"), vec![server.addr]);
    assert!(router.forwards("ab/8").is_empty());
    let log = router.logs();
    assert!(
        log.contains("refused an announced prefix") && log.contains("refused announced locators"),
        "refusals not logged:\n{log}"
    );

    // The server's sald restarts: the service went with it (withdrawn at
    // once), servd keeps running, finds the new sald and announces the
    // service again once it is bound again.
    let status = server.sald.child.terminate(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "sald exited with {status}");
    assert!(
        wait_until(Duration::from_secs(1), || router
            .forwards("7e57/16")
            .is_empty()),
        "not withdrawn when sald went away:\n{}",
        server.logs()
    );
    drop(_listener);
    // The same control path as before.
    let restarted = start_node(net.host(1), &dir, "server", false);
    server.sald = restarted.sald;
    let _listener = serve(&server, "7e57/16", 2);
    assert!(
        wait_until(Duration::from_secs(5), || router.forwards("7e57/16")
            == vec![server.addr]),
        "not announced again after the sald restart:\n{}",
        server.logs()
    );
    let log = server.logs();
    assert!(
        log.contains("lost sald") && log.contains("connected to sald again"),
        "{log}"
    );

    // SIGTERM: servd exits 0 and the router's rule is gone at once.
    let mut servd = server.servd.take().unwrap();
    let stopped = Instant::now();
    let status = servd.child.terminate(Duration::from_secs(3)).unwrap();
    assert!(
        status.success(),
        "servd exited with {status}:\n{}",
        servd.log()
    );
    assert!(
        wait_until(Duration::from_secs(1), || router
            .forwards("7e57/16")
            .is_empty()),
        "not withdrawn on SIGTERM:\n{}",
        router.logs()
    );
    eprintln!(
        "servd SIGTERM: exit 0 and withdrawal in {:?} (lease 10 s)",
        stopped.elapsed()
    );
    drop((router, server));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes each answer of the drain test carries after its tag.
const ANSWER_LEN: usize = 32 * 1024;

/// An instance for the drain test: accepts without blocking (so that it
/// can stop and close its listener when told), answers each connection
/// after 100 ms (so that connections are in flight at any moment) with its
/// tag and `ANSWER_LEN` bytes, and records when it accepted each (when the
/// `try_accept` that took it began, so that one taken before a drain
/// answered is never recorded after it).
fn serve_slowly(
    node: &Node,
    prefix: &str,
    tag: u8,
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<Instant>>>,
) -> thread::JoinHandle<()> {
    let listener =
        ServiceListener::bind_via(node.client(), prefix.parse::<ServicePrefix>().unwrap(), 64)
            .unwrap();
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let taking = Instant::now();
            match listener.try_accept() {
                Ok(Some((mut stream, _))) => {
                    accepted.lock().unwrap().push(taking);
                    thread::spawn(move || {
                        thread::sleep(Duration::from_millis(100));
                        let mut answer = vec![tag; 1 + ANSWER_LEN];
                        answer[1..].fill(0x5a);
                        let _ = stream.write_all(&answer);
                        let _ = stream.shutdown_write();
                    });
                }
                Ok(None) => thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("accept failed: {e}"),
            }
        }
        listener.close().unwrap();
    })
}

/// A service router, two server hosts and a client on one LAN, each with
/// sald and servd (the client's servd only if asked), pointed at the
/// router; the namespaces go when `net` is dropped.
struct Lan {
    net: testnet::Topology,
    dir: PathBuf,
    router_addr: Ipv4Addr,
    router: Node,
    s1: Node,
    s2: Node,
    client: Node,
}

impl Lan {
    /// Starts it; `router_args` are added to the router's servd flags.
    fn start(label: &str, router_args: &[&str], client_servd: bool) -> Lan {
        let net = TopologyBuilder::new(label, 4)
            .lan(&[0, 1, 2, 3])
            .build()
            .unwrap();
        let dir = scratch_dir(label);
        let router_addr = net.host(0).addr().unwrap();
        let upstream = vec!["--upstream".to_string(), format!("{router_addr}:54326")];
        let mut router = start_node(net.host(0), &dir, "router", true);
        let mut s1 = start_node(net.host(1), &dir, "s1", false);
        let mut s2 = start_node(net.host(2), &dir, "s2", false);
        let mut client = start_node(net.host(3), &dir, "client", false);
        let mut args = vec!["--router".to_string()];
        args.extend(router_args.iter().map(|a| a.to_string()));
        start_servd(net.host(0), &dir, &mut router, "router", &args);
        start_servd(net.host(1), &dir, &mut s1, "s1", &upstream);
        start_servd(net.host(2), &dir, &mut s2, "s2", &upstream);
        if client_servd {
            start_servd(net.host(3), &dir, &mut client, "client", &upstream);
        }
        Lan {
            net,
            dir,
            router_addr,
            router,
            s1,
            s2,
            client,
        }
    }
}

#[test]
fn a_drained_instance_leaves_under_load_without_a_failed_request() {
    require_root!();
    let Lan {
        net: _net,
        dir,
        router_addr,
        router,
        s1,
        s2,
        client,
    } = Lan::start("servd-drain", &[], true);
    assert!(
        wait_until(Duration::from_secs(5), || client.forwards("0/0")
            == vec![router_addr]),
        "no default route:\n{}",
        client.logs()
    );
    let stops = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let accepted = [
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    ];
    let servers: Vec<_> = [&s1, &s2]
        .iter()
        .enumerate()
        .map(|(i, node)| {
            serve_slowly(
                node,
                "5e00/16",
                i as u8 + 1,
                stops[i].clone(),
                accepted[i].clone(),
            )
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(3), || router.forwards("5e00/16")
            == vec![s1.addr, s2.addr]),
        "instances not announced:\n{}",
        router.logs()
    );

    // Four clients, one request after another each, until told to stop.
    const CLIENTS: usize = 4;
    let done = Arc::new(AtomicBool::new(false));
    let control = client.control.clone();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let done = done.clone();
            let control = control.clone();
            thread::spawn(move || {
                let (mut ok, mut failed) = ([0usize; 3], Vec::new());
                while !done.load(Ordering::SeqCst) {
                    let answer = ControlClient::connect_to(&control)
                        .and_then(|c| {
                            ServiceStream::connect_via(
                                c,
                                svc("5e0077"),
                                Some(Duration::from_secs(10)),
                            )
                        })
                        .map_err(|e| e.to_string())
                        .and_then(|mut stream| {
                            let mut answer = Vec::new();
                            stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
                            Ok(answer)
                        });
                    match answer {
                        Ok(a) if a.len() == 1 + ANSWER_LEN && matches!(a[0], 1 | 2) => {
                            ok[usize::from(a[0])] += 1
                        }
                        Ok(a) => failed.push(format!("short answer: {} bytes", a.len())),
                        Err(e) => failed.push(e),
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(1500));
    let drained_at = Instant::now();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_servalctl"))
        .arg("--control")
        .arg(&s1.control)
        .args(["service", "drain", "5e00/16", "--wait", "10"])
        .output()
        .unwrap();
    let idle_at = Instant::now();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("0 admitted connections not accepted"),
        "servalctl: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Idle: s1 closes its listener; nothing it admitted is reset.
    stops[0].store(true, Ordering::SeqCst);
    let withdrawn = wait_until(Duration::from_secs(1), || {
        router.forwards("5e00/16") == vec![s2.addr]
    });
    let withdrawal = drained_at.elapsed();
    assert!(
        withdrawn,
        "the router still forwards to s1:\n{}\n{}",
        router.logs(),
        s1.logs()
    );
    thread::sleep(Duration::from_millis(1500));
    done.store(true, Ordering::SeqCst);
    let mut ok = [0usize; 3];
    let mut failed = Vec::new();
    for handle in clients {
        let (o, f) = handle.join().unwrap();
        for i in 0..3 {
            ok[i] += o[i];
        }
        failed.extend(f);
    }
    stops[1].store(true, Ordering::SeqCst);
    for server in servers {
        server.join().unwrap();
    }
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    let s1_accepts = accepted[0].lock().unwrap().clone();
    let late = s1_accepts.iter().filter(|t| **t > idle_at).count();
    let after_drain = accepted[1]
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > idle_at)
        .count();
    // The drain answers once s1's program has taken every flow s1
    // admitted out of its accept queue (`Core::pending`), and a drained
    // listener admits nothing new: s1 accepts nothing after the answer.
    // (It used to answer once the flows were in the queue, and a flow
    // delivered just before could be taken just after: seen in CI.)
    assert_eq!(late, 0, "s1 accepted {late} connections after it was idle");
    assert!(ok[1] > 0 && ok[2] > 0, "both instances served: {ok:?}");
    assert!(after_drain > 0, "s2 took the load after the drain");
    let text = s1.logs();
    assert!(text.contains("service drained"), "{text}");
    eprintln!(
        "servd drain: requests ok {} (s1 {}, s2 {}), failed 0, drain-to-idle {:?}, \
         drain-to-withdrawal at the router {withdrawal:?}, s1 SYNs dropped while draining {}",
        ok[1] + ok[2],
        ok[1],
        ok[2],
        idle_at - drained_at,
        drained_syns(&s1)
    );
    drop((router, s1, s2, client));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SYNs a host dropped for a drained listener's prefix.
fn drained_syns(node: &Node) -> u64 {
    match node.client().request(&Request::Stats).map(|r| r.response) {
        Ok(Response::Stats { stats }) => stats.host.drained_syns,
        _ => 0,
    }
}

#[test]
fn least_loaded_weights_follow_the_flows_a_server_holds() {
    require_root!();
    let Lan {
        net: _net,
        router,
        s1,
        s2,
        client,
        ..
    } = Lan::start("servd-load", &["--weights", "least-loaded"], false);
    let listeners: Vec<_> = [&s1, &s2]
        .iter()
        .map(|node| {
            ServiceListener::bind_via(
                node.client(),
                "10ad/16".parse::<ServicePrefix>().unwrap(),
                64,
            )
            .unwrap()
        })
        .collect();
    let even = |w: &[(Ipv4Addr, u32)]| w.len() == 2 && w[0].1 == w[1].1;
    assert!(
        wait_until(Duration::from_secs(3), || even(&router.weights("10ad/16"))),
        "instances not announced alike: {:?}\n{}",
        router.weights("10ad/16"),
        router.logs()
    );
    // Six flows to s1 only (the client has no servd: a static rule sends
    // them there), held open at both ends.
    client
        .client()
        .request_ok(&Request::AddRule {
            prefix: "10ad/16".parse().unwrap(),
            target: Target::Forward {
                locator: sal::Locator::Ipv4(s1.addr),
                weight: 1,
            },
            priority: 0,
        })
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..6 {
        let stream = ServiceStream::connect_via(
            client.client(),
            svc("10ad01"),
            Some(Duration::from_secs(3)),
        )
        .expect("connect to s1");
        let (accepted, _) = listeners[0].accept().expect("accept on s1");
        held.push((stream, accepted));
    }
    let s1_lighter = |w: &[(Ipv4Addr, u32)], lighter: bool| {
        let weight = |addr| w.iter().find(|(a, _)| *a == addr).map(|(_, w)| *w);
        match (weight(s1.addr), weight(s2.addr)) {
            (Some(one), Some(two)) => (one < two) == lighter && one != two,
            _ => false,
        }
    };
    assert!(
        wait_until(Duration::from_secs(3), || s1_lighter(
            &router.weights("10ad/16"),
            true
        )),
        "s1's load did not lower its weight: {:?}\n{}\n{}",
        router.weights("10ad/16"),
        router.logs(),
        s1.logs()
    );
    drop(held);
    assert!(
        wait_until(Duration::from_secs(3), || even(&router.weights("10ad/16"))),
        "closed flows still weigh on s1: {:?}\n{}",
        router.weights("10ad/16"),
        s1.logs()
    );
}
