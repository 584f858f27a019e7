//! Cached resolution through a `Runtime` (`sal_inproc::resolve`): what
//! it must never do (hide the program's own listeners, hold a connect up
//! while the resolver is slow or silent, keep a dead route, hold its
//! control connection forever, raise `SIGPIPE`), with resolvers in this
//! process: functions, and a fake sald on a Unix socket. No root needed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sal::{Locator, ServiceId, ServicePrefix};
use sal_control::{
    decode_body, encode_frame, frame_len, NextHop, Request, ResolvedRoute, Response,
};
use sal_inproc::resolve::{Answer, Resolve, ResolveError, SaldResolver};
use sal_inproc::{Config, Error, Mode, Runtime};

fn service() -> ServiceId {
    "c0ec7001".parse().unwrap()
}

/// A UDP socket that takes datagrams and never answers: a dead next hop
/// (or a silent sald's data port).
fn dead_hop() -> (UdpSocket, Locator) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let addr = match socket.local_addr().expect("addr") {
        std::net::SocketAddr::V4(addr) => addr,
        other => panic!("not v4: {other}"),
    };
    (socket, Locator::Udp(addr))
}

/// A resolver answering a route to `hop` for every service, after
/// `delay`, counting the questions.
#[derive(Debug)]
struct Fixed {
    hop: Mutex<Option<Locator>>,
    delay: Duration,
    lifetime: Duration,
    asked: AtomicUsize,
}

impl Fixed {
    fn new(hop: Option<Locator>, delay: Duration) -> Arc<Fixed> {
        Arc::new(Fixed {
            hop: Mutex::new(hop),
            delay,
            lifetime: Duration::from_secs(60),
            asked: AtomicUsize::new(0),
        })
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

impl Resolve for Fixed {
    fn resolve(&self, service: ServiceId) -> Result<Answer, ResolveError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        thread::sleep(self.delay);
        let route = (*self.hop.lock().unwrap()).map(|locator| ResolvedRoute {
            matched: ServicePrefix::DEFAULT,
            prefix: ServicePrefix::exact(service),
            next_hops: vec![NextHop { locator, weight: 1 }],
        });
        Ok(Answer {
            route,
            lifetime: self.lifetime,
        })
    }
}

/// A runtime on `ip` whose default route is `route`, asking `resolver`.
fn runtime(ip: Ipv4Addr, route: Locator, resolver: Arc<dyn Resolve>) -> Runtime {
    let mut config = Config::new(SocketAddrV4::new(ip, 0), route);
    config.resolver = Some(resolver);
    Runtime::bind(config).expect("bind")
}

/// Waits (up to 5 s) for `what`.
fn eventually(what: impl Fn() -> bool) -> bool {
    let limit = Instant::now() + Duration::from_secs(5);
    while Instant::now() < limit {
        if what() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    what()
}

fn within(millis: u64) -> Mode {
    Mode::Until(Instant::now() + Duration::from_millis(millis))
}

#[test]
fn a_listener_of_the_program_s_own_is_never_hidden_by_a_cached_route() {
    let (_sald, sald) = dead_hop();
    let (_elsewhere, elsewhere) = dead_hop();
    let resolver = Fixed::new(Some(elsewhere), Duration::ZERO);
    let rt = runtime(Ipv4Addr::new(127, 0, 0, 81), sald, resolver.clone());
    let listener = rt.listen("c0ec70/24".parse().unwrap(), 16).unwrap();
    for _ in 0..4 {
        let stream = rt
            .connect(service(), within(3000))
            .expect("connect to own listener");
        listener.accept(within(1000)).expect("accept");
        drop(stream);
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        resolver.asked(),
        0,
        "a service the host routes itself is not asked for"
    );
    assert!(!rt.is_resolved(&service()));
    drop(listener);

    // A route cached before a listener is bound: the listener takes it out.
    let other: ServiceId = "be01".parse().unwrap();
    let _ = rt.connect(other, Mode::NonBlocking).expect("connect");
    assert!(eventually(|| rt.is_resolved(&other)));
    let listener = rt.listen("be/8".parse().unwrap(), 16).unwrap();
    assert!(!rt.is_resolved(&other));
    let _stream = rt
        .connect(other, within(3000))
        .expect("connect to the new listener");
    listener.accept(within(1000)).expect("accept");
}

#[test]
fn a_route_to_the_program_itself_is_not_installed() {
    let (_sald, sald) = dead_hop();
    let resolver = Fixed::new(None, Duration::ZERO);
    let rt = runtime(Ipv4Addr::new(127, 0, 0, 82), sald, resolver.clone());
    *resolver.hop.lock().unwrap() = Some(rt.local());
    let _ = rt.connect(service(), Mode::NonBlocking).expect("connect");
    assert!(eventually(|| resolver.asked() == 1));
    thread::sleep(Duration::from_millis(50));
    assert!(!rt.is_resolved(&service()));
}

#[test]
fn a_slow_resolver_holds_up_no_connect_and_is_asked_once() {
    let (_sald, sald) = dead_hop();
    let resolver = Fixed::new(None, Duration::from_secs(2));
    let rt = runtime(Ipv4Addr::new(127, 0, 0, 83), sald, resolver.clone());
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (rt, barrier) = (rt.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let stream = rt.connect(service(), Mode::NonBlocking).expect("connect");
                let took = started.elapsed();
                drop(stream);
                took
            })
        })
        .collect();
    for handle in handles {
        let took = handle.join().unwrap();
        assert!(
            took < Duration::from_millis(500),
            "a non-blocking connect took {took:?}"
        );
    }
    // A connect with a deadline waits for its SYN's answer, not sald's.
    let started = Instant::now();
    let result = rt.connect(service(), within(300));
    assert!(
        matches!(result, Err(Error::WouldBlock)),
        "{:?}",
        result.map(drop)
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(eventually(|| resolver.asked() >= 1));
    assert_eq!(resolver.asked(), 1, "one question for all the threads");
}

#[test]
fn a_connect_by_a_cached_route_that_fails_forgets_it() {
    let (_sald, sald) = dead_hop();
    let (_dead, dead) = dead_hop();
    let resolver = Fixed::new(Some(dead), Duration::ZERO);
    let rt = runtime(Ipv4Addr::new(127, 0, 0, 84), sald, resolver.clone());
    // Asked by a first connect; dropped unanswered, by the default route:
    // nothing to forget.
    drop(rt.connect(service(), Mode::NonBlocking).expect("connect"));
    assert!(eventually(|| rt.is_resolved(&service())));
    // A deadline passed on the way to the dead hop.
    assert!(matches!(
        rt.connect(service(), within(200)),
        Err(Error::WouldBlock)
    ));
    assert!(
        !rt.is_resolved(&service()),
        "the dead route stayed after a deadline"
    );
    // Asked again; a non-blocking connect given up before its answer.
    drop(rt.connect(service(), Mode::NonBlocking).expect("connect"));
    assert!(eventually(|| rt.is_resolved(&service())));
    let stream = rt.connect(service(), Mode::NonBlocking).expect("connect");
    assert!(matches!(
        stream.finish_connect(within(100)),
        Err(Error::WouldBlock)
    ));
    assert!(
        rt.is_resolved(&service()),
        "not yet a failure: the stream waits on"
    );
    drop(stream);
    assert!(
        !rt.is_resolved(&service()),
        "the dead route stayed after a give-up"
    );
    assert_eq!(resolver.asked(), 2);
}

/// What a [`FakeSald`] saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// It answered a `Resolve`.
    Answered,
    /// It closed a connection after its answers.
    Closed,
    /// A client closed its connection.
    Eof,
}

/// A sald on a Unix socket that answers `Hello` and `Resolve` (no route,
/// 60 s), closing a connection after `answers` resolutions.
struct FakeSald {
    path: PathBuf,
    seen: Receiver<Seen>,
}

impl FakeSald {
    fn start(name: &str, answers: usize) -> FakeSald {
        let dir = std::env::temp_dir().join(format!("sal-inproc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sald.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tell, seen) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tell = tell.clone();
                thread::spawn(move || serve(stream, answers, &tell));
            }
        });
        FakeSald { path, seen }
    }

    /// The next thing it saw, within 4 s.
    fn next(&self) -> Option<Seen> {
        self.seen.recv_timeout(Duration::from_secs(4)).ok()
    }
}

fn serve(mut stream: UnixStream, answers: usize, tell: &mpsc::Sender<Seen>) {
    let mut answered = 0;
    loop {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).is_err() {
            let _ = tell.send(Seen::Eof);
            return;
        }
        let mut body = vec![0u8; frame_len(prefix).unwrap()];
        stream.read_exact(&mut body).unwrap();
        let response = match decode_body::<Request>(&body).unwrap() {
            Request::Hello { version, .. } => Response::Hello {
                version,
                server: "fake".into(),
            },
            Request::Resolve { .. } => Response::Resolved {
                route: None,
                lifetime_ms: 60_000,
            },
            other => panic!("unexpected {other:?}"),
        };
        stream.write_all(&encode_frame(&response).unwrap()).unwrap();
        if matches!(response, Response::Resolved { .. }) {
            let _ = tell.send(Seen::Answered);
            answered += 1;
            if answered == answers {
                drop(stream);
                let _ = tell.send(Seen::Closed);
                return;
            }
        }
    }
}

#[test]
fn the_resolver_lets_its_control_connection_go_when_idle() {
    let fake = FakeSald::start("idle", usize::MAX);
    let (_sald, sald) = dead_hop();
    let rt = runtime(
        Ipv4Addr::new(127, 0, 0, 85),
        sald,
        Arc::new(SaldResolver::new(&fake.path)),
    );
    drop(rt.connect(service(), Mode::NonBlocking).expect("connect"));
    assert_eq!(fake.next(), Some(Seen::Answered));
    assert_eq!(fake.next(), Some(Seen::Eof), "the connection is held on");
    drop(rt);
}

#[test]
fn a_connection_sald_closed_raises_no_sigpipe() {
    let fake = FakeSald::start("sigpipe", 1);
    let resolver = SaldResolver::new(&fake.path);
    // In a thread of its own, with SIGPIPE blocked: a SIGPIPE raised by
    // a write stays pending there (blocked signals are kept even when
    // ignored, as Rust programs ignore this one).
    let pending = thread::spawn(move || {
        let mut block = nix::sys::signal::SigSet::empty();
        block.add(nix::sys::signal::Signal::SIGPIPE);
        block.thread_block().unwrap();
        resolver.resolve(service()).expect("first question");
        assert_eq!(fake.next(), Some(Seen::Answered));
        assert_eq!(fake.next(), Some(Seen::Closed));
        // On the connection sald closed: EPIPE, then a fresh connection.
        let again = resolver.resolve(service());
        assert!(again.is_ok(), "{again:?}");
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        // SAFETY: sigpending writes the calling thread's pending set into
        // the (zeroed) set it is given.
        let set = unsafe {
            assert_eq!(libc::sigpending(set.as_mut_ptr()), 0);
            set.assume_init()
        };
        // SAFETY: reads the set sigpending filled.
        unsafe { libc::sigismember(&set, libc::SIGPIPE) == 1 }
    });
    assert!(!pending.join().unwrap(), "a write raised SIGPIPE");
}

#[test]
fn a_silent_or_full_sald_bounds_the_resolver_s_wait() {
    let dir = std::env::temp_dir().join(format!("sal-inproc-silent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Accepts, never answers.
    let silent = dir.join("silent.sock");
    let listener = UnixListener::bind(&silent).unwrap();
    let holder = thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let started = Instant::now();
    let answer = SaldResolver::new(&silent).resolve(service());
    assert!(answer.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(holder.join());
    // Never accepts, its backlog full: the connect itself is bounded.
    let full = dir.join("full.sock");
    let _listener = UnixListener::bind(&full).unwrap();
    let mut held = Vec::new();
    for _ in 0..10_000 {
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let addr = nix::sys::socket::UnixAddr::new(&full).unwrap();
        if nix::sys::socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).is_err() {
            break;
        }
        held.push(fd);
    }
    let (tell, told) = mpsc::channel();
    let started = Instant::now();
    thread::spawn(move || {
        let _ = tell.send(SaldResolver::new(&full).resolve(service()).is_err());
    });
    let failed = told.recv_timeout(Duration::from_secs(10));
    assert_eq!(failed, Ok(true), "the resolver waited on a full backlog");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
