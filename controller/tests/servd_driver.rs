//! servd's driver in-process against a fake sald (a Unix socket speaking
//! the control protocol, served by threads of this test) and a UDP peer
//! played by the test. No privileges needed.
//!
//! Covers what only the driver does: rule changes batched into
//! `ApplyRules`, the fallback to one request per rule for a sald that
//! refuses batches, reading datagrams while sald is slow, reconnecting
//! (and resyncing) when sald restarts, and withdrawing and cleaning up on
//! shutdown.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use controller::servd::driver::{serve, Args};
use controller::servd::sald_link::{Backoff, LinkOptions};
use controller::servd::wire::{self, Message, Node};
use controller::servd::Keyring;
use sal::proto::LocalInterface;
use sal::table::{Rule, RuleOrigin, ServiceTable, Target, TargetKey};
use sal::{Locator, ServicePrefix};
use sal_control::{
    decode_body, encode_frame, frame_len, ControlEvent, ErrorKind, Request, Response, RuleChange,
    RuleFailure, PROTOCOL_VERSION,
};

fn p(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

/// How the fake sald treats `ApplyRules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batches {
    Served,
    /// As a sald that cannot decode the request: an error, then it hangs up.
    Unknown,
}

/// The fake sald's state, shared by its threads and the test.
struct State {
    batches: Batches,
    /// Added to the handling of every request.
    delay: Duration,
    table: ServiceTable,
    origins: HashMap<(ServicePrefix, TargetKey), RuleOrigin>,
    /// Sizes of the `ApplyRules` requests received.
    applied: Vec<usize>,
    /// `AddRuleWithOrigin` / `DelRule` requests received.
    single: usize,
    subscriptions: usize,
    subscribers: Vec<UnixStream>,
    connections: Vec<UnixStream>,
}

impl State {
    fn new(batches: Batches) -> State {
        State {
            batches,
            delay: Duration::ZERO,
            table: ServiceTable::new(),
            origins: HashMap::new(),
            applied: Vec::new(),
            single: 0,
            subscriptions: 0,
            subscribers: Vec::new(),
            connections: Vec::new(),
        }
    }

    fn rules(&self) -> Vec<Rule> {
        common::rules_with_origins(&self.table, &self.origins)
    }

    fn change(&mut self, change: RuleChange) -> Result<(), (ErrorKind, String)> {
        match change {
            RuleChange::Add {
                prefix,
                target,
                priority,
                origin,
            } => {
                self.table.add(prefix, target, priority);
                self.origins.insert((prefix, target.key()), origin);
                Ok(())
            }
            RuleChange::Del { prefix, target } => {
                let result = match target {
                    Some(key) => self.table.remove_target(&prefix, &key).map(|_| ()),
                    None => self.table.remove(&prefix).map(|_| ()),
                };
                result.map_err(|e| (ErrorKind::NotFound, e.to_string()))
            }
        }
    }

    fn forwards(&self, prefix: &str) -> Vec<Locator> {
        self.table
            .get(&p(prefix))
            .map(|rule| {
                rule.targets()
                    .iter()
                    .filter_map(|e| match e.target {
                        Target::Forward { locator, .. } => Some(locator),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A fake sald listening at `path`.
struct FakeSald {
    path: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

fn read_frame(stream: &mut UnixStream) -> Option<Request> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).ok()?;
    let len = frame_len(prefix).ok()?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    decode_body(&body).ok()
}

fn write_frame(stream: &mut UnixStream, response: &Response) -> bool {
    stream.write_all(&encode_frame(response).unwrap()).is_ok()
}

fn interface() -> LocalInterface {
    serde_json::from_value(serde_json::json!({
        "name": "lo",
        "locator": Locator::Ipv4("127.0.0.1".parse().unwrap()),
        "prefix_len": 8,
    }))
    .unwrap()
}

fn serve_connection(mut stream: UnixStream, state: Arc<Mutex<State>>) {
    loop {
        let Some(request) = read_frame(&mut stream) else {
            return;
        };
        let delay = state.lock().unwrap().delay;
        std::thread::sleep(delay);
        let response = {
            let mut state = state.lock().unwrap();
            match request {
                Request::Hello { .. } => Response::Hello {
                    version: PROTOCOL_VERSION,
                    server: "fake sald".into(),
                },
                Request::Subscribe => {
                    state.subscriptions += 1;
                    state.subscribers.push(stream.try_clone().unwrap());
                    Response::Ok
                }
                Request::ListInterfaces => Response::Interfaces {
                    interfaces: vec![interface()],
                    relays: false,
                },
                Request::ListRules => Response::Rules {
                    rules: state.rules(),
                    broadcast_discovery: false,
                },
                Request::ApplyRules { changes } => match state.batches {
                    Batches::Served => {
                        state.applied.push(changes.len());
                        let failures = changes
                            .into_iter()
                            .enumerate()
                            .filter_map(|(index, change)| {
                                state
                                    .change(change)
                                    .err()
                                    .map(|(kind, message)| RuleFailure {
                                        index,
                                        kind,
                                        message,
                                    })
                            })
                            .collect();
                        Response::Applied { failures }
                    }
                    Batches::Unknown => {
                        state.applied.push(changes.len());
                        drop(state);
                        let error = Response::error(ErrorKind::InvalidRequest, "unknown op");
                        write_frame(&mut stream, &error);
                        return;
                    }
                },
                Request::AddRuleWithOrigin {
                    prefix,
                    target,
                    priority,
                    origin,
                } => {
                    state.single += 1;
                    let _ = state.change(RuleChange::Add {
                        prefix,
                        target,
                        priority,
                        origin,
                    });
                    Response::Ok
                }
                Request::DelRule { prefix, target } => {
                    state.single += 1;
                    match state.change(RuleChange::Del { prefix, target }) {
                        Ok(()) => Response::Ok,
                        Err((kind, message)) => Response::Error { kind, message },
                    }
                }
                other => Response::error(ErrorKind::InvalidRequest, format!("{other:?}")),
            }
        };
        if !write_frame(&mut stream, &response) {
            return;
        }
    }
}

impl FakeSald {
    fn start(path: &Path, state: Arc<Mutex<State>>) -> FakeSald {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (stop, state) = (stop.clone(), state.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            state
                                .lock()
                                .unwrap()
                                .connections
                                .push(stream.try_clone().unwrap());
                            let state = state.clone();
                            std::thread::spawn(move || serve_connection(stream, state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        FakeSald {
            path: path.to_path_buf(),
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Pushes an event to every subscriber.
    fn event(&self, event: ControlEvent) {
        let mut state = self.state();
        for subscriber in &mut state.subscribers {
            write_frame(
                subscriber,
                &Response::Event {
                    event: event.clone(),
                },
            );
        }
    }

    /// Stops listening and hangs up on everybody; the table is lost.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        let _ = acceptor.join();
        let mut state = self.state();
        for connection in state.connections.drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
        state.subscribers.clear();
        state.table = ServiceTable::new();
        state.origins.clear();
        drop(state);
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for FakeSald {
    fn drop(&mut self) {
        self.stop();
    }
}

/// servd running in-process on a thread of its own; stopped on drop.
struct Servd {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    addr: SocketAddr,
}

fn free_udp_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Servd {
    fn start(control: &Path, extra: &[&str]) -> Servd {
        // servd's logs, shown for failing tests (RUST_LOG=debug for more).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_test_writer()
            .try_init();
        let addr = free_udp_port();
        let mut argv = vec![
            "servd".to_string(),
            "--control".into(),
            control.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--name".into(),
            "under-test".into(),
            "--no-discover".into(),
            "--lease".into(),
            "10s".into(),
            "--refresh".into(),
            "5s".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Args::parse_from(argv);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = LinkOptions {
            backoff: Backoff {
                first: Duration::from_millis(20),
                max: Duration::from_millis(200),
            },
            ..LinkOptions::default()
        };
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(args, options, async {
                let _ = stopped.await;
            }))
        });
        Servd {
            stop: Some(stop),
            thread: Some(thread),
            addr,
        }
    }

    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops servd (as SIGTERM would) and returns its result.
    fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().expect("servd panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Servd {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A UDP peer of servd played by the test.
struct Peer {
    socket: UdpSocket,
    epoch: u64,
}

impl Peer {
    fn new() -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Peer {
            socket,
            epoch: 4242,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn node(&self) -> Node {
        Node {
            name: "peer".into(),
            epoch: self.epoch,
            locators: vec![Locator::Ipv4("127.0.0.1".parse().unwrap())],
        }
    }

    fn send(&self, to: SocketAddr, message: &Message) {
        let bytes = wire::encode(message, None).unwrap();
        self.socket.send_to(&bytes, to).unwrap();
    }

    /// Messages received within `timeout`.
    fn receive(&self, timeout: Duration) -> Vec<Message> {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = [0u8; 9000];
        while Instant::now() < end {
            if let Ok((len, _)) = self.socket.recv_from(&mut buf) {
                if let Ok((message, _)) = wire::decode(&buf[..len], &Keyring::none()) {
                    out.push(message);
                }
            }
        }
        out
    }

    /// Waits for a message matching `pick`.
    fn wait_for<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut(&Message) -> Option<T>,
    ) -> Option<T> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 9000];
        while Instant::now() < end {
            if let Ok((len, _)) = self.socket.recv_from(&mut buf) {
                if let Ok((message, _)) = wire::decode(&buf[..len], &Keyring::none()) {
                    if let Some(found) = pick(&message) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }
}

/// 300 /32 prefixes announced to a router, in 6 datagrams.
fn announce_many(peer: &Peer, router: SocketAddr) -> usize {
    let mut total = 0;
    for batch in 0..6u32 {
        let entries = (0..50u32)
            .map(|i| wire::Announcement {
                prefix: p(&format!("{:08x}/32", 0xa000_0000 | (batch * 50 + i))),
                weight: 1,
                priority: 0,
                load: 0,
            })
            .collect::<Vec<_>>();
        total += entries.len();
        peer.send(
            router,
            &Message::Announce {
                from: peer.node(),
                lease_ms: 10_000,
                entries,
                full: true,
            },
        );
    }
    total
}

fn scratch(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("servd-driver-{label}-"))
        .tempdir()
        .unwrap()
}

/// A router servd on a fake sald that has subscribed, and a peer.
fn router_on_fake_sald(
    label: &str,
    batches: Batches,
) -> (tempfile::TempDir, FakeSald, Servd, Peer) {
    let dir = scratch(label);
    let sald = FakeSald::start(
        &dir.path().join("sald.sock"),
        Arc::new(Mutex::new(State::new(batches))),
    );
    let servd = Servd::start(&sald.path, &["--router"]);
    assert!(wait_until(Duration::from_secs(5), || sald
        .state()
        .subscriptions
        == 1));
    (dir, sald, servd, Peer::new())
}

/// Waits until the fake sald holds `rules` rules.
fn installed(sald: &FakeSald, rules: usize, timeout: Duration) {
    assert!(
        wait_until(timeout, || sald.state().table.len() == rules),
        "{} rules installed, not {rules}",
        sald.state().table.len()
    );
}

#[test]
fn rule_changes_go_to_sald_in_batches() {
    let (_dir, sald, mut servd, peer) = router_on_fake_sald("batch", Batches::Served);
    let announced = announce_many(&peer, servd.addr);
    installed(&sald, announced, Duration::from_secs(5));
    let state = sald.state();
    let requests = state.applied.len();
    assert_eq!(state.single, 0, "no per-rule requests");
    assert_eq!(state.applied.iter().sum::<usize>(), announced);
    assert!(requests <= 6, "{requests} batches for {announced} rules");
    drop(state);
    servd.stop().unwrap();
}

#[test]
fn a_sald_without_batches_gets_one_request_per_rule() {
    let (_dir, sald, mut servd, peer) = router_on_fake_sald("fallback", Batches::Unknown);
    let announced = announce_many(&peer, servd.addr);
    installed(&sald, announced, Duration::from_secs(10));
    let state = sald.state();
    assert_eq!(state.applied.len(), 1, "one batch tried, then no more");
    assert_eq!(state.single, announced);
    // The hang-up after the refused batch was not taken for sald leaving.
    assert_eq!(state.subscriptions, 1);
    drop(state);
    assert!(servd.running());
    servd.stop().unwrap();
}

#[test]
fn datagrams_are_answered_while_sald_is_slow() {
    let (_dir, sald, mut servd, peer) = router_on_fake_sald("slow", Batches::Unknown);
    // From now on every request takes sald 20 ms: 300 rules, one request
    // each, keep it busy for 6 s.
    sald.state().delay = Duration::from_millis(20);
    announce_many(&peer, servd.addr);
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    peer.send(
        servd.addr,
        &Message::Solicit {
            from: peer.node(),
            nonce: 7,
        },
    );
    let advert = peer.wait_for(Duration::from_secs(3), |m| {
        matches!(m, Message::Advert { .. }).then_some(())
    });
    let answered = asked.elapsed();
    let installed = sald.state().table.len();
    assert!(advert.is_some(), "no advert while sald was busy");
    assert!(
        answered < Duration::from_secs(1),
        "advert after {answered:?}"
    );
    assert!(installed < 300, "sald was not slow after all ({installed})");
    sald.state().delay = Duration::ZERO;
    servd.stop().unwrap();
}

#[test]
fn servd_survives_a_sald_restart_and_cleans_up_when_stopped() {
    let dir = scratch("restart");
    let path = dir.path().join("sald.sock");
    let state = Arc::new(Mutex::new(State::new(Batches::Served)));
    let mut sald = FakeSald::start(&path, state.clone());
    let router = Peer::new();
    let upstream = router.addr().to_string();
    let mut servd = Servd::start(&path, &["--upstream", &upstream]);
    // The host solicits its upstream; the test answers as a router at
    // 127.0.0.1, so servd installs a default route toward it.
    let solicited = router.wait_for(Duration::from_secs(5), |m| match m {
        Message::Solicit { nonce, .. } => Some(*nonce),
        _ => None,
    });
    assert!(solicited.is_some(), "no solicit");
    assert!(wait_until(Duration::from_secs(5), || sald
        .state()
        .subscriptions
        == 1));
    router.send(
        servd.addr,
        &Message::Advert {
            from: router.node(),
            nonce: solicited.unwrap(),
        },
    );
    let home: Locator = Locator::Ipv4("127.0.0.1".parse().unwrap());
    assert!(wait_until(Duration::from_secs(5), || {
        sald.state().forwards("0/0") == vec![home]
    }));
    let announced = |m: &Message, prefix: &str| match m {
        Message::Announce { entries, .. } => entries.iter().any(|e| e.prefix == p(prefix)),
        _ => false,
    };
    let register_and_see_it_announced = |sald: &FakeSald| {
        sald.event(ControlEvent::Registered {
            prefix: p("beef/16"),
        });
        let seen = router.wait_for(Duration::from_secs(3), |m| {
            announced(m, "beef/16").then_some(())
        });
        assert!(seen.is_some(), "beef/16 not announced");
    };
    let withdrawn = |m: &Message, prefix: &str| match m {
        Message::Withdraw { prefixes, .. } => prefixes.contains(&p(prefix)),
        _ => false,
    };
    register_and_see_it_announced(&sald);

    // sald restarts: its registrations and rules are gone. servd withdraws
    // the service at once, keeps running, and reconnects.
    sald.stop();
    assert!(router
        .wait_for(Duration::from_secs(3), |m| withdrawn(m, "beef/16")
            .then_some(()))
        .is_some());
    std::thread::sleep(Duration::from_millis(300));
    assert!(servd.running(), "servd exited when sald went away");
    sald = FakeSald::start(&path, state);
    assert!(
        wait_until(Duration::from_secs(5), || sald.state().subscriptions == 2),
        "servd did not subscribe again"
    );
    // Resynced: its default route is back in the new sald.
    assert!(wait_until(Duration::from_secs(5), || {
        sald.state().forwards("0/0") == vec![home]
    }));
    register_and_see_it_announced(&sald);

    // Stopping: the announcement is withdrawn and the default route removed.
    servd.stop().expect("a clean exit");
    let after: Vec<Message> = router.receive(Duration::from_millis(300));
    assert!(
        after.iter().any(|m| withdrawn(m, "beef/16")),
        "no withdrawal on stop: {after:?}"
    );
    assert!(sald.state().forwards("0/0").is_empty());
}

#[test]
fn a_lagged_subscription_resynchronises_registrations() {
    let dir = scratch("lagged");
    let path = dir.path().join("sald.sock");
    let state = Arc::new(Mutex::new(State::new(Batches::Served)));
    let sald = FakeSald::start(&path, state);
    let router = Peer::new();
    let upstream = router.addr().to_string();
    let _servd = Servd::start(&path, &["--upstream", &upstream]);
    assert!(wait_until(Duration::from_secs(5), || sald
        .state()
        .subscriptions
        == 1));
    // A service gets bound while servd's subscription has fallen behind:
    // its Registered event is among those sald dropped.
    sald.state().table.add(
        p("cafe/16"),
        Target::Demux {
            listener: sal::table::ListenerId(7),
        },
        0,
    );
    sald.event(ControlEvent::Lagged { missed: 1 });
    let announced = router.wait_for(Duration::from_secs(5), |m| match m {
        Message::Announce { entries, .. } => entries
            .iter()
            .any(|e| e.prefix == p("cafe/16"))
            .then_some(()),
        _ => None,
    });
    assert!(
        announced.is_some(),
        "the registration missed while lagging was never announced"
    );
}
