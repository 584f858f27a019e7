//! The engine beside many idle flows. The server engine runs in a child
//! process (this test binary again, running the ignored
//! `child_serves_idle_flows`), so that each end's descriptors and memory
//! are its own and each process stays under its descriptor limit. The
//! client holds N idle flows to it (N = 2,000, or `SAL_INPROC_IDLE_FLOWS`:
//! 10,000 for a manual run); an echo and a bulk transfer beside them stay
//! byte-exact, and the idle flows still work after. Prints the cost figures
//! (descriptors and memory per flow on each side, echo round trips with
//! and without the idle flows): measured, not asserted, as a timed test
//! must not (DESIGN.md, "Performance method").
//!
//! The server echoes every stream through `epoll` on the streams' readable
//! eventfds: one thread for all of them, as an event loop would.

mod common;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use sal::Locator;
use sal_inproc::{Config, Error, Listener, Mode, Runtime, Stream};

/// Flows held idle, from `SAL_INPROC_IDLE_FLOWS`.
fn idle_flows() -> usize {
    std::env::var("SAL_INPROC_IDLE_FLOWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

/// Raises the soft descriptor limit to at least `need` (to the hard one at
/// most); returns it.
fn raise_fd_limit(need: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit for the call's duration.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if limit.rlim_cur < need {
        limit.rlim_cur = need.min(limit.rlim_max);
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    limit.rlim_cur
}

/// Eventfds a process holds (`/proc/PID/fd`).
fn eventfds(pid: &str) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("eventfd"))
        .count()
}

/// Descriptors a process holds.
fn fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// Echoes every stream `listener` accepts, all of them from one thread
/// waiting in `epoll` on their readable eventfds, until `stop`.
fn epoll_echo(listener: Listener, stop: Arc<AtomicBool>) -> Vec<JoinHandle> {
    let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll"));
    // Each accepted stream, until it ends (then its registration is removed
    // before it goes, as its eventfd may be reused).
    let streams: Arc<Mutex<Vec<Option<Arc<Stream>>>>> = Arc::default();
    let accepting = {
        let (epoll, streams, stop) = (epoll.clone(), streams.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let until = Instant::now() + Duration::from_millis(50);
                let stream = match listener.accept(Mode::Until(until)) {
                    Ok(stream) => Arc::new(stream),
                    Err(Error::WouldBlock) => continue,
                    Err(error) => panic!("accept: {error}"),
                };
                let mut streams = streams.lock().unwrap();
                let event = EpollEvent::new(EpollFlags::EPOLLIN, streams.len() as u64);
                epoll
                    .add(stream.readable_fd().unwrap(), event)
                    .expect("epoll add");
                streams.push(Some(stream));
            }
        })
    };
    let echoing = thread::spawn(move || {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut buf = vec![0; 64 * 1024];
        while !stop.load(Ordering::Relaxed) {
            let ready = epoll
                .wait(&mut events, EpollTimeout::from(50u16))
                .expect("epoll wait");
            for event in &events[..ready] {
                let slot = event.data() as usize;
                let Some(stream) = streams.lock().unwrap()[slot].clone() else {
                    continue;
                };
                loop {
                    match stream.read(&mut buf, Mode::NonBlocking) {
                        Ok(0) => {
                            let _ = stream.shutdown_write();
                            let _ = epoll.delete(stream.readable_fd().unwrap());
                            streams.lock().unwrap()[slot] = None;
                            break;
                        }
                        Ok(n) => {
                            let deadline = Instant::now() + Duration::from_secs(30);
                            write_all(&stream, &buf[..n], deadline).expect("echo write");
                        }
                        Err(Error::WouldBlock) => break,
                        Err(error) => panic!("echo read: {error}"),
                    }
                }
            }
        }
        // The streams close here, after their registrations.
        drop(epoll);
    });
    vec![accepting, echoing]
}

type JoinHandle = thread::JoinHandle<()>;

/// The server: run by [`an_exchange_beside_many_idle_flows_is_byte_exact`]
/// in a child process. Prints its locator, serves until its stdin closes.
#[test]
#[ignore = "the server process of an_exchange_beside_many_idle_flows_is_byte_exact"]
fn child_serves_idle_flows() {
    if std::env::var_os("SAL_INPROC_CHILD").is_none() {
        return;
    }
    raise_fd_limit(2 * idle_flows() as u64 + 512);
    let (server, listener) = server(1024);
    println!("SERVER {}", server.local());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = epoll_echo(listener, stop.clone());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    println!("FLOWS {}", server.flow_count());
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("server thread");
    }
}

/// `rounds` echo round trips of 64 bytes on `stream`, three times: how
/// long the fastest three took (the machine is noisy).
fn time_echoes(stream: &Stream, rounds: u32) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for round in 0..rounds {
                let msg = pattern(64, round);
                let deadline = Instant::now() + Duration::from_secs(10);
                let back = echo(stream, &msg, deadline).expect("echo");
                assert!(back == msg, "echo {round} differs");
            }
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Sends `len` bytes through the echo and checks what comes back.
fn bulk(stream: &Arc<Stream>, len: usize, seed: u32) {
    let sent = pattern(len, seed);
    let writer = {
        let (stream, sent) = (stream.clone(), sent.clone());
        thread::spawn(move || write_all(&stream, &sent, Instant::now() + Duration::from_secs(60)))
    };
    let mut back = vec![0; len];
    read_exact(stream, &mut back, Instant::now() + Duration::from_secs(60)).expect("bulk read");
    writer.join().unwrap().expect("bulk write");
    assert!(back == sent, "bulk transfer differs");
}

#[test]
fn an_exchange_beside_many_idle_flows_is_byte_exact() {
    let wanted = idle_flows();
    let limit = raise_fd_limit(2 * wanted as u64 + 512);
    let n = wanted.min((limit as usize).saturating_sub(512) / 2);
    if n < wanted {
        eprintln!("descriptor limit {limit}: {n} idle flows, not {wanted}");
    }
    if n == 0 {
        eprintln!("skipped: a descriptor limit of {limit} leaves no room for idle flows");
        return;
    }
    let envs = [("SAL_INPROC_IDLE_FLOWS", n.to_string())];
    let (mut server, locator, mut lines) =
        ServerProcess::spawn("child_serves_idle_flows", &envs, true);
    let server_pid = server.0.id().to_string();
    let client = Runtime::bind(Config::new(loopback(), Locator::Udp(locator))).expect("bind");

    let measured = Arc::new(client.connect(service(), Mode::Blocking).expect("connect"));
    // Warm up (buffers, wakers, spare eventfds).
    time_echoes(&measured, 50);
    let empty = time_echoes(&measured, 200);

    let snapshot = |pid: &str| (fds(pid), eventfds(pid), rss_of(pid));
    let (client_before, server_before) = (snapshot("self"), snapshot(&server_pid));
    let opening = Instant::now();
    let bound = Duration::from_secs(30) + Duration::from_millis(20) * n as u32;
    let idle: Vec<Stream> = (0..n)
        .map(|i| {
            assert!(opening.elapsed() < bound, "{i} flows opened in {bound:?}");
            client
                .connect(
                    service(),
                    Mode::Until(Instant::now() + Duration::from_secs(10)),
                )
                .unwrap_or_else(|e| panic!("idle flow {i}: {e}"))
        })
        .collect();
    let opened = opening.elapsed();
    // The server has accepted them all once their eventfds are there.
    let waiting = Instant::now();
    while eventfds(&server_pid) < server_before.1 + n {
        assert!(
            waiting.elapsed() < bound,
            "the server never accepted them all"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let (client_after, server_after) = (snapshot("self"), snapshot(&server_pid));
    let client_flows = client.flow_count();

    let beside = time_echoes(&measured, 200);
    bulk(&measured, 4 << 20, 7);

    // The idle flows still work: a sample of them echoes a message.
    let deadline = Instant::now() + Duration::from_secs(10);
    for k in (0..n).step_by((n / 16).max(1)) {
        let msg = format!("ping {k}");
        let back = echo(&idle[k], msg.as_bytes(), deadline).expect("idle echo");
        assert_eq!(back, msg.as_bytes(), "idle flow {k}");
    }

    drop(idle);
    let closing = Instant::now();
    while client.flow_count() > 1 {
        assert!(
            closing.elapsed() < Duration::from_secs(30),
            "client flows left after closing: {}",
            client.flow_count()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let closed = closing.elapsed();
    let after = time_echoes(&measured, 200);

    measured.shutdown_write().expect("shutdown");
    let rest = read_to_end(&measured, Instant::now() + Duration::from_secs(10)).expect("end");
    assert!(rest.is_empty());
    drop(server.0.stdin.take());
    let server_flows = lines
        .find_map(|line| {
            let line = line.ok()?;
            line.split_once("FLOWS ")?.1.trim().parse::<usize>().ok()
        })
        .expect("the server's flow count");
    let status = server.0.wait().expect("the server process");
    assert!(status.success(), "the server process failed: {status}");

    assert_eq!(client_flows, n + 1, "client flows");
    // Two eventfds per connected stream, one per accepted stream (its
    // writable one is made only if it waits for room, which these never
    // do), and nothing else per flow.
    assert_eq!(client_after.1 - client_before.1, 2 * n, "client eventfds");
    assert_eq!(
        client_after.0 - client_before.0,
        2 * n,
        "client descriptors"
    );
    assert_eq!(server_after.1 - server_before.1, n, "server eventfds");

    let per = |a: usize, b: usize| (b as f64 - a as f64) / n as f64;
    eprintln!(
        "{n} idle flows: opened in {opened:?}, the client's closed in {closed:?}; \
         server flows at the end: {server_flows}"
    );
    eprintln!(
        "descriptors per flow: client {:.2}, server {:.2} (eventfds: {:.2}, {:.2})",
        per(client_before.0, client_after.0),
        per(server_before.0, server_after.0),
        per(client_before.1, client_after.1),
        per(server_before.1, server_after.1),
    );
    eprintln!(
        "RSS per flow: client {:.0} bytes ({} -> {} KiB), server {:.0} bytes ({} -> {} KiB)",
        per(client_before.2, client_after.2),
        client_before.2 / 1024,
        client_after.2 / 1024,
        per(server_before.2, server_after.2),
        server_before.2 / 1024,
        server_after.2 / 1024,
    );
    eprintln!(
        "200 echo round trips (fastest of 3): {empty:?} without idle flows, {beside:?} beside \
         {n} (ratio {:.2}), {after:?} after closing them (ratio {:.2})",
        beside.as_secs_f64() / empty.as_secs_f64(),
        beside.as_secs_f64() / after.as_secs_f64(),
    );
}
