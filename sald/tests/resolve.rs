//! Cached resolution (`Request::Resolve`, `docs/in-process-sal.md`): a
//! program that drives its own SAL host sends its first SYN to a service
//! through sald, asks sald how it routes the service, and sends the next
//! SYNs straight there until the answer's lifetime runs out.
//!
//! ```text
//!  client program ──first SYN──> sald ──relay──> server program
//!        │  (Resolve: "udp:server, for 60 s")          ^
//!        └──────────── next SYNs, direct ──────────────┘
//! ```
//!
//! The programs are `sal-inproc` runtimes in this test's threads; sald runs
//! in this process too, in UDP mode on a loopback address, with relays on.
//! sald's `forwarded` counter tells how many SYNs it relayed. No root
//! needed.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sal::table::{Target, TargetKey};
use sal::{ServiceId, ServicePrefix};
use sal_control::{NextHop, Request, ResolvedRoute, Response};
use sal_inproc::resolve::LEARNED_LIFETIME;
use sal_inproc::{Config, Error, Mode, Runtime};
use socket_shim::ControlClient;

mod common;
use common::{InProcess, Sald, Scratch};

/// How long one connection may take.
const LIMIT: Duration = Duration::from_secs(10);

fn prefix() -> ServicePrefix {
    "c0ec70/24".parse().unwrap()
}

fn service() -> ServiceId {
    "c0ec7001".parse().unwrap()
}

/// A sald in UDP mode in this process on `ip` (any port), relays on,
/// answers lasting `lifetime_ms`.
fn sald(dir: &Path, ip: Ipv4Addr, lifetime_ms: u64) -> InProcess {
    let mut config = common::udp_config(dir, "sald", ip);
    config.relays = true;
    config.resolution_lifetime_ms = lifetime_ms;
    InProcess::start(config)
}

/// How many SYNs sald forwarded (relayed to a program) so far.
fn forwarded(sald: &InProcess) -> u64 {
    sald.stats().host.forwarded
}

/// A serving program: its own runtime on `ip`, listening for [`prefix`],
/// registered with sald as a relay; echoes every flow in a thread of its
/// own and counts them.
struct Server {
    runtime: Runtime,
    /// The relay lasts as long as this connection.
    relay: Option<ControlClient>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ip: Ipv4Addr, sald: &InProcess) -> Server {
        let mut server = Server::unregistered(ip, sald);
        server.relay(&sald.control);
        server
    }

    /// A serving program sald knows nothing of (reached by a FORWARD rule
    /// of sald's).
    fn unregistered(ip: Ipv4Addr, sald: &InProcess) -> Server {
        let config = Config::new(SocketAddrV4::new(ip, 0), sald.locator());
        let runtime = Runtime::bind(config).expect("server bind");
        let listener = runtime.listen(prefix(), 64).expect("listen");
        let (accepted, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let wait = Mode::Until(Instant::now() + Duration::from_millis(50));
                    match listener.accept(wait) {
                        Ok(stream) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let got = read_to_end(&stream);
                            let _ = stream.write(&got, until());
                            let _ = stream.close();
                        }
                        Err(Error::WouldBlock) => {}
                        Err(error) => panic!("accept: {error}"),
                    }
                }
            })
        };
        Server {
            runtime,
            relay: None,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// Registers the prefix with sald (again), retrying while another
    /// program's binding of it is still being taken down.
    fn relay(&mut self, control: &Path) {
        let request = Request::Relay {
            prefix: prefix(),
            locator: None,
        };
        let limit = Instant::now() + LIMIT;
        loop {
            let mut client = ControlClient::connect_to(control).expect("control socket");
            let udp = self.runtime.udp_fd();
            match client.request_with_fd(&request, udp) {
                Ok(reply) if matches!(reply.response, Response::Relaying { .. }) => {
                    self.relay = Some(client);
                    return;
                }
                other if Instant::now() > limit => panic!("relay refused: {other:?}"),
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn until() -> Mode {
    Mode::Until(Instant::now() + LIMIT)
}

fn read_to_end(stream: &sal_inproc::Stream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf, until()) {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client program's runtime on `ip`, its one route to `sald`, asking
/// the sald at `resolver` (if any) for routes.
fn client(ip: Ipv4Addr, sald: &InProcess, resolver: Option<PathBuf>) -> Runtime {
    let mut config = Config::new(SocketAddrV4::new(ip, 0), sald.locator());
    if let Some(control) = resolver {
        config = config.with_sald_resolver(control);
    }
    Runtime::bind(config).expect("client bind")
}

/// One connection to [`service`]: connect, send, read the echo, close.
fn echo(client: &Runtime) {
    let stream = client.connect(service(), until()).expect("connect");
    stream.write(b"ping", until()).expect("write");
    stream.shutdown_write().expect("shutdown");
    assert_eq!(read_to_end(&stream), b"ping");
    stream.close().expect("close");
}

/// Waits (up to [`LIMIT`]) until `client`'s resolver thread's answer
/// for [`service`] is in (it comes after the first connect, not with it).
fn resolved(client: &Runtime) -> bool {
    let limit = Instant::now() + LIMIT;
    while !client.is_resolved(&service()) && Instant::now() < limit {
        thread::sleep(Duration::from_millis(2));
    }
    client.is_resolved(&service())
}

/// Points sald's rule for [`prefix`] at `server` (and at nothing else).
fn route_to(sald: &InProcess, server: &Server, before: Option<&Server>) {
    if let Some(before) = before {
        let request = Request::DelRule {
            prefix: prefix(),
            target: Some(TargetKey::Forward {
                locator: before.runtime.local(),
            }),
        };
        assert_eq!(sald.request(request), Response::Ok);
    }
    sald.forward_to(&prefix().to_string(), server.runtime.local(), 1);
}

/// sald at `ip` (answers living a minute), a program serving [`prefix`]
/// that sald's rule points at, and a client whose resolver has its answer
/// in after one echo through sald.
fn resolved_at(name: &str, ip: Ipv4Addr) -> (Scratch, InProcess, Server, Runtime) {
    let dir = Scratch::new(name);
    let sald = sald(&dir, ip, 60_000);
    let server = Server::unregistered(ip, &sald);
    route_to(&sald, &server, None);
    let cached = client(ip, &sald, Some(sald.control.clone()));
    echo(&cached);
    assert!(resolved(&cached), "no answer");
    (dir, sald, server, cached)
}

#[test]
fn after_the_first_syn_a_program_connects_straight_to_the_service_sald_resolved() {
    let ip = Ipv4Addr::new(127, 0, 0, 21);
    let (_dir, sald, server, cached) = resolved_at("resolve1", ip);
    for _ in 0..9 {
        echo(&cached);
    }
    assert_eq!(server.accepted(), 10);
    assert_eq!(forwarded(&sald), 1, "sald relayed more than the first SYN");
    assert!(cached.is_resolved(&service()));
    // Without a resolver, every SYN goes through sald.
    let uncached = client(ip, &sald, None);
    for _ in 0..3 {
        echo(&uncached);
    }
    assert_eq!(forwarded(&sald), 4);
    assert!(!uncached.is_resolved(&service()));
    drop((cached, uncached, server, sald));
}

#[test]
fn a_connect_by_a_route_to_a_program_gone_goes_through_sald_at_once() {
    // The SYN to the program's closed port comes back as an ICMP port
    // unreachable. The route goes, and the SYN goes again at once by the
    // default route, through sald, which knows where the service went:
    // the connect reaches the new program instead of being refused (or
    // waiting out its SYN retransmissions, half a minute). The next
    // connect asks sald again.
    let ip = Ipv4Addr::new(127, 0, 0, 27);
    let (_dir, sald, gone, cached) = resolved_at("resolve6", ip);
    echo(&cached);
    assert_eq!((gone.accepted(), forwarded(&sald)), (2, 1));
    let next = Server::unregistered(ip, &sald);
    route_to(&sald, &next, Some(&gone));
    drop(gone);
    // Rerouted at once: without the reroute, the connect would be refused
    // (or, without the report, wait out its SYN retransmissions).
    echo(&cached);
    let stats = cached.host_stats();
    assert_eq!((stats.unreachable_hops, stats.rerouted_syns), (1, 1));
    assert_eq!((next.accepted(), forwarded(&sald)), (1, 2));
    assert!(!cached.is_resolved(&service()), "the dead route stayed");
    echo(&cached);
    assert_eq!(next.accepted(), 2);
    drop((cached, next, sald));
}

/// With nowhere else to go (sald's rule for the service gone with its
/// program), the connect whose SYN came back from the program's closed
/// port goes to sald, which has no route for it: it fails at once, not
/// after its SYN retransmissions.
#[test]
fn a_connect_by_a_route_to_a_program_gone_with_nothing_else_fails_at_once() {
    let ip = Ipv4Addr::new(127, 0, 0, 28);
    let (_dir, sald, gone, cached) = resolved_at("resolve7", ip);
    let request = Request::DelRule {
        prefix: prefix(),
        target: Some(TargetKey::Forward {
            locator: gone.runtime.local(),
        }),
    };
    assert_eq!(sald.request(request), Response::Ok);
    drop(gone);
    let started = Instant::now();
    let refused = cached.connect(service(), until());
    let took = started.elapsed();
    assert!(
        matches!(refused, Err(Error::NoRoute)),
        "{:?}",
        refused.err()
    );
    // Its SYN retransmissions would take 15 s and more.
    assert!(took < Duration::from_secs(5), "failed after {took:?}");
    let stats = cached.host_stats();
    assert_eq!((stats.unreachable_hops, stats.rerouted_syns), (1, 1));
    drop((cached, sald));
}

#[test]
fn behind_another_host_s_sald_the_relayed_program_is_learned_for_a_second() {
    // The client's sald forwards the service to the server's sald, which
    // relays it to its program: the client's answer names the server's
    // sald, and the program answering from beside it is learned, so that
    // neither sald sees the SYNs after the second, for a second at most.
    let (client_dir, server_dir) = (Scratch::new("resolve5c"), Scratch::new("resolve5s"));
    let (client_ip, server_ip) = (Ipv4Addr::new(127, 0, 0, 25), Ipv4Addr::new(127, 0, 0, 26));
    let server_sald = sald(&server_dir, server_ip, 60_000);
    let server = Server::start(server_ip, &server_sald);
    let client_sald = sald(&client_dir, client_ip, 60_000);
    client_sald.forward_to(&prefix().to_string(), server_sald.locator(), 1);
    let cached = client(client_ip, &client_sald, Some(client_sald.control.clone()));
    // Through both salds; then, by the answer, through the server's.
    echo(&cached);
    assert!(resolved(&cached), "no answer");
    let started = Instant::now();
    for _ in 0..9 {
        echo(&cached);
    }
    let took = started.elapsed();
    assert_eq!(server.accepted(), 10);
    if took < LEARNED_LIFETIME {
        assert_eq!(
            (forwarded(&client_sald), forwarded(&server_sald)),
            (1, 2),
            "SYNs relayed by the client's sald and the server's"
        );
    }
    // Once the learned route ran out, the client asks its sald again.
    thread::sleep(LEARNED_LIFETIME);
    let before = (forwarded(&client_sald), forwarded(&server_sald));
    let started = Instant::now();
    echo(&cached);
    assert!(resolved(&cached), "no new answer");
    for _ in 0..3 {
        echo(&cached);
    }
    let after = (forwarded(&client_sald), forwarded(&server_sald));
    // (Too slow a machine learns again within the part: not counted.)
    assert!(
        started.elapsed() >= LEARNED_LIFETIME || after.1 - before.1 == 2,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.0 - before.0,
        1,
        "after the learned route ran out: through both salds, the server's, then straight"
    );
    drop((cached, server, client_sald, server_sald));
}

#[test]
fn a_rule_changed_at_sald_reaches_the_program_once_the_answer_ran_out() {
    // The part within the answer's lifetime must run within it: on a
    // machine too loaded for that, the whole scenario runs again.
    for attempt in 0..3 {
        if rule_changed_at_sald(attempt) {
            return;
        }
    }
    panic!("three attempts too slow to test the answer's lifetime");
}

/// One run of the scenario; false if it was too slow to tell.
fn rule_changed_at_sald(attempt: u32) -> bool {
    let dir = Scratch::new(&format!("resolve2-{attempt}"));
    let ip = Ipv4Addr::new(127, 0, 0, 22);
    let lifetime = Duration::from_millis(3000);
    let sald = sald(&dir, ip, lifetime.as_millis() as u64);
    let old = Server::unregistered(ip, &sald);
    let new = Server::unregistered(ip, &sald);
    route_to(&sald, &old, None);
    let cached = client(ip, &sald, Some(sald.control.clone()));
    // The answer is given after this instant, so it runs out after
    // `asked + lifetime`.
    let asked = Instant::now();
    echo(&cached);
    assert!(resolved(&cached), "no answer");
    // ... and before this one, so it has run out by `answered + lifetime`.
    let answered = Instant::now();
    echo(&cached);
    assert_eq!((old.accepted(), forwarded(&sald)), (2, 1));
    // The service moves at sald.
    route_to(&sald, &new, Some(&old));
    echo(&cached);
    if asked.elapsed() >= lifetime {
        return false;
    }
    assert_eq!(
        (old.accepted(), new.accepted(), forwarded(&sald)),
        (3, 0, 1),
        "within its lifetime the answer stands"
    );
    thread::sleep(
        (answered + lifetime + Duration::from_millis(100))
            .saturating_duration_since(Instant::now()),
    );
    echo(&cached);
    assert!(resolved(&cached), "no new answer");
    echo(&cached);
    assert_eq!(
        (old.accepted(), new.accepted(), forwarded(&sald)),
        (3, 2, 2),
        "once it ran out: through sald to the new program once, then straight to it"
    );
    drop((cached, new, old, sald));
    true
}

#[test]
fn without_answers_every_syn_goes_through_sald_and_connects_still_work() {
    let dir = Scratch::new("resolve3");
    let ip = Ipv4Addr::new(127, 0, 0, 23);
    // Lifetime 0: sald answers no routes.
    let sald = sald(&dir, ip, 0);
    let server = Server::start(ip, &sald);
    let cached = client(ip, &sald, Some(sald.control.clone()));
    for _ in 0..4 {
        echo(&cached);
    }
    assert!(!cached.is_resolved(&service()));
    assert_eq!(forwarded(&sald), 4);
    let answer = sald.request(Request::Resolve { service: service() });
    assert_eq!(
        answer,
        Response::Resolved {
            route: None,
            lifetime_ms: 60_000
        }
    );
    // A resolver that cannot be reached (or a sald that does not know
    // the request) leaves the default route too.
    let nowhere = client(ip, &sald, Some(dir.join("no-sald.sock")));
    for _ in 0..2 {
        echo(&nowhere);
    }
    assert_eq!(forwarded(&sald), 6);
    assert_eq!(server.accepted(), 6);
    drop((cached, nowhere, server, sald));
}

#[test]
fn sald_answers_forward_rules_and_relays_and_asks_to_be_asked_for_the_rest() {
    let dir = Scratch::new("resolve4");
    let ip = Ipv4Addr::new(127, 0, 0, 24);
    let sald = sald(&dir, ip, 5000);
    let resolve = |service: &str| {
        sald.request(Request::Resolve {
            service: service.parse().unwrap(),
        })
    };
    let each_time = Response::Resolved {
        route: None,
        lifetime_ms: 5000,
    };
    assert_eq!(resolve("abcd"), each_time, "no rule");
    // FORWARD: the active group's hops with their weights.
    let hop = |s: &str, weight| NextHop {
        locator: s.parse().unwrap(),
        weight,
    };
    sald.forward_to("be/8", "udp:127.0.0.99:5000".parse().unwrap(), 3);
    sald.forward_to("be/8", "udp:127.0.0.98:5000".parse().unwrap(), 0);
    let Response::Resolved {
        route: Some(route),
        lifetime_ms: 5000,
    } = resolve("be01")
    else {
        panic!("no route for a FORWARD rule");
    };
    let mut hops = route.next_hops.clone();
    hops.sort_by_key(|h| h.weight);
    assert_eq!(
        hops,
        [hop("udp:127.0.0.98:5000", 0), hop("udp:127.0.0.99:5000", 3)]
    );
    assert_eq!(route.matched, "be/8".parse().unwrap());
    assert_eq!(route.prefix, ServicePrefix::exact("be01".parse().unwrap()));
    // A higher-priority DROP, a native next hop, sald's own locator: no.
    let add = |prefix: &str, target, priority| {
        let request = Request::AddRule {
            prefix: prefix.parse().unwrap(),
            target,
            priority,
        };
        assert_eq!(sald.request(request), Response::Ok);
    };
    add("be/8", Target::Drop, 1);
    assert_eq!(resolve("be01"), each_time, "DROP");
    add("ce/8", Target::Delay, 0);
    assert_eq!(resolve("ce01"), each_time, "DELAY");
    sald.forward("de/8", Ipv4Addr::new(10, 0, 0, 1), 1);
    assert_eq!(resolve("de01"), each_time, "native next hop");
    sald.forward_to("df/8", sald.locator(), 1);
    assert_eq!(resolve("df01"), each_time, "sald itself");
    // More hops than a client takes: none.
    for port in 0..=16 {
        sald.forward_to(
            "fa/8",
            format!("udp:127.0.0.97:{}", 5000 + port).parse().unwrap(),
            1,
        );
    }
    assert_eq!(resolve("fa01"), each_time, "17 hops");
    // A listener sald serves: ask each time; a relay: its program.
    let mut listening = sald.client();
    let listen = Request::Listen {
        prefix: "ee/8".parse().unwrap(),
        protocol: sal::wire::TransportProtocol::Stream,
        backlog: 4,
    };
    let reply = listening.request(&listen).expect("listen");
    assert!(matches!(reply.response, Response::Listening { .. }));
    assert_eq!(resolve("ee01"), each_time, "served by sald");
    let server = Server::start(ip, &sald);
    // A relay's answer lasts a second at most (its port may change hands
    // once the relay is dropped).
    let Response::Resolved {
        route: Some(ResolvedRoute { next_hops, .. }),
        lifetime_ms: 1000,
    } = resolve("c0ec7001")
    else {
        panic!("no route to a relay, or not capped to a second");
    };
    assert_eq!(
        next_hops,
        [NextHop {
            locator: server.runtime.local(),
            weight: 1
        }]
    );
    drop((listening, server, sald));
}
