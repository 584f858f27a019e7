//! The echo server and client on the in-process engine (`sal-inproc`),
//! written as a C program's threads would be: blocking calls on socket-like
//! objects, no event loop of their own. What stage 3 of
//! `docs/in-process-sal.md` puts behind unmodified programs, less the
//! interposition itself.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use sal::{Locator, ServiceId, ServicePrefix};
use sal_inproc::{Config, Mode, Runtime, Stream};

use super::{Tally, MESSAGE};

/// Server threads, each accepting and serving one flow at a time (the
/// kernel TCP server has 32; on 2 CPUs, more threads mean more context
/// switches between them, though only one of the waiting threads watches
/// the engine's socket and only one each object).
const SERVER_THREADS: usize = 8;
/// How long one connection may take before it counts as failed.
const CONNECTION_LIMIT: Duration = Duration::from_secs(2);
/// How long a client waits at the end for its flows' teardown to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Listens for `service` on an engine bound at `addr`, echoing every flow
/// until its client half-closes. Never returns; `ready` is called once
/// listening.
pub fn serve(addr: SocketAddrV4, service: ServiceId, ready: impl FnOnce()) -> ! {
    // A server's engine routes no SYN of its own.
    let config = Config::new(addr, Locator::Udp(addr));
    let runtime = Runtime::bind(config).expect("engine");
    let listener = runtime
        .listen(ServicePrefix::exact(service), 1024)
        .expect("listen");
    ready();
    std::thread::scope(|s| {
        for _ in 0..SERVER_THREADS {
            s.spawn(|| loop {
                if let Ok(stream) = listener.accept(Mode::Blocking) {
                    echo(&stream);
                }
            });
        }
    });
    unreachable!("server threads never end")
}

/// Writes back what `stream` brings until its end, then closes it.
fn echo(stream: &Stream) {
    let mut buf = [0u8; 4096];
    let limit = Instant::now() + CONNECTION_LIMIT;
    while let Ok(n) = stream.read(&mut buf, Mode::Until(limit)) {
        if n == 0 || stream.write(&buf[..n], Mode::Until(limit)).is_err() {
            break;
        }
    }
}

/// One client thread: its own engine at `local`, routing to `route`,
/// connecting to `service` until `until`, then (after `measured`) waiting
/// for the teardown of its flows.
pub fn client(
    route: SocketAddrV4,
    local: Ipv4Addr,
    service: ServiceId,
    until: Instant,
    measured: impl FnOnce(),
) -> Tally {
    let mut tally = Tally::default();
    let config = Config::new(SocketAddrV4::new(local, 0), Locator::Udp(route));
    let Ok(runtime) = Runtime::bind(config) else {
        tally.errors += 1;
        measured();
        return tally;
    };
    while Instant::now() < until {
        let start = Instant::now();
        let ok = connection(&runtime, service, start + CONNECTION_LIMIT);
        tally.record(ok, start);
    }
    measured();
    let limit = Instant::now() + DRAIN_LIMIT;
    while runtime.flow_count() > 0 && Instant::now() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    tally.left = runtime.flow_count() as u64;
    tally
}

/// Connect, send [`MESSAGE`], read it back exactly, close.
fn connection(runtime: &Runtime, service: ServiceId, limit: Instant) -> bool {
    let Ok(stream) = runtime.connect(service, Mode::Until(limit)) else {
        return false;
    };
    if stream.finish_connect(Mode::Until(limit)).is_err() {
        return false;
    }
    let sent = stream.write(MESSAGE, Mode::Until(limit));
    if !matches!(sent, Ok(n) if n == MESSAGE.len()) {
        return false;
    }
    let mut got = [0u8; 64];
    let mut have = 0;
    while have < got.len() {
        match stream.read(&mut got[have..], Mode::Until(limit)) {
            Ok(0) | Err(_) => return false,
            Ok(n) => have += n,
        }
    }
    got == *MESSAGE && stream.close().is_ok()
}
