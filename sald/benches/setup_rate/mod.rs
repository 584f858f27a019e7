//! Connection setup rate beside many flows, for the many-flows bench: how
//! fast new flows open (connect, 64-byte echo checked byte for byte,
//! close) while a host holds N idle flows, and right after N flows closed.
//!
//! Work per connection must not grow with the flows a host holds (issue 11
//! §1): a new flow's handshake, its timers and its hand-over touch only that
//! flow. The first measurement of that issue found the opposite: 0.03x of
//! kernel TCP's rate right after 3,000 flows closed, a p50 26 times kernel
//! TCP's. Each row of the many-flows bench therefore measures the rate
//! alone (right before its idle flows open), beside them, and right after
//! they all closed, against that row's own "alone".
//!
//! The clients are threads of the bench process, each with a control
//! connection of its own to the client's sald (one `Connect` round trip
//! per flow, as a program's blocking connects are); the server is a pool
//! of threads each accepting and echoing one flow at a time. Both ends go
//! through sald, so this is the daemons' setup cost, not kernel TCP's: the
//! comparison with kernel TCP is the `connect` bench of the preload.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sal::{ServiceId, ServicePrefix};
use sal_control::{Request, Response};
use socket_shim::{ControlClient, ServiceListener};

/// Bytes each connection echoes.
const ECHO: usize = 64;
/// Server threads: each serves one connection at a time.
const SERVER_THREADS: usize = 8;
/// How long one connect may take before it counts as an error.
const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Setup {
    /// Connections per second (completed, echo intact).
    pub rate: f64,
    /// Median of connect + echo, in microseconds.
    pub p50_us: u64,
    /// Connections that failed (refused, timed out, echo wrong).
    pub errors: u64,
    /// CPU time of both daemons per connection, in microseconds: whether a
    /// slower run did more work or waited more.
    pub daemons_cpu_us: f64,
    /// Both daemons' minor page faults per connection: memory given back
    /// to the system (a trim) and touched again costs one each page.
    pub daemons_faults: f64,
}

/// The echo service the runs connect to: a listener on the server's sald
/// and its threads, which stay until the daemon goes (their accept then
/// fails and they end).
pub struct EchoService {
    service: ServiceId,
}

impl EchoService {
    /// Binds `prefix` on the sald at `server_control` and starts serving;
    /// the runs connect to `service` (inside `prefix`).
    pub fn start(server_control: &Path, prefix: &str, service: &str) -> EchoService {
        let prefix: ServicePrefix = prefix.parse().expect("prefix");
        let control = ControlClient::connect_to(server_control).expect("server control socket");
        let listener = Arc::new(ServiceListener::bind_via(control, prefix, 1024).expect("bind"));
        for _ in 0..SERVER_THREADS {
            let listener = listener.clone();
            thread::spawn(move || {
                while let Ok((mut flow, _)) = listener.accept() {
                    let mut buf = [0u8; ECHO];
                    if flow.read_exact(&mut buf).is_ok() && flow.write_all(&buf).is_ok() {
                        // Wait for the client's close, as a server does.
                        let _ = flow.read(&mut buf);
                    }
                }
            });
        }
        EchoService {
            service: service.parse().expect("service ID"),
        }
    }

    /// Opens, echoes through and closes flows from `parallel` threads for
    /// `millis`, through the sald at `client_control`; `daemons` are the
    /// process IDs of both salds.
    pub fn run(
        &self,
        client_control: &Path,
        daemons: [u32; 2],
        parallel: usize,
        millis: u64,
    ) -> Setup {
        let cpu = || -> u64 {
            let times = daemons.map(testnet::bench::process_cpu_us);
            times.iter().map(|t| t.unwrap_or(0)).sum()
        };
        let faults = || -> u64 {
            let counts = daemons.map(testnet::bench::process_minor_faults);
            counts.iter().map(|c| c.unwrap_or(0)).sum()
        };
        let cpu_before = cpu();
        let faults_before = faults();
        let deadline = Instant::now() + Duration::from_millis(millis);
        let started = Instant::now();
        let workers: Vec<_> = (0..parallel)
            .map(|seed| {
                let control = PathBuf::from(client_control);
                let service = self.service;
                thread::spawn(move || client(&control, service, seed as u8, deadline))
            })
            .collect();
        let mut latencies = Vec::new();
        let mut errors = 0;
        for worker in workers {
            let (done, failed) = worker.join().expect("client thread");
            latencies.extend(done);
            errors += failed;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let spent = cpu().saturating_sub(cpu_before);
        let faulted = faults().saturating_sub(faults_before);
        latencies.sort_unstable();
        Setup {
            rate: latencies.len() as f64 / elapsed,
            p50_us: latencies.get(latencies.len() / 2).copied().unwrap_or(0),
            errors,
            daemons_cpu_us: spent as f64 / latencies.len().max(1) as f64,
            daemons_faults: faulted as f64 / latencies.len().max(1) as f64,
        }
    }
}

/// One client thread: connections one after another until `deadline`;
/// returns each completed one's latency (µs) and the count that failed.
fn client(control: &Path, service: ServiceId, seed: u8, deadline: Instant) -> (Vec<u64>, u64) {
    let mut control = ControlClient::connect_to(control).expect("client control socket");
    let message: Vec<u8> = (0..ECHO as u8).map(|i| i ^ seed).collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    while Instant::now() < deadline {
        let started = Instant::now();
        let reply = control.request(&Request::Connect {
            service,
            protocol: sal::wire::TransportProtocol::Stream,
            timeout_ms: Some(CONNECT_TIMEOUT_MS),
        });
        let flow = match reply {
            Ok(reply) => match (reply.response, reply.fd) {
                (Response::Connected { .. }, Some(fd)) => std::os::unix::net::UnixStream::from(fd),
                _ => {
                    errors += 1;
                    continue;
                }
            },
            // The control connection broke: nothing more to measure.
            Err(_) => return (latencies, errors + 1),
        };
        if echo(flow, &message) {
            latencies.push(started.elapsed().as_micros() as u64);
        } else {
            errors += 1;
        }
    }
    (latencies, errors)
}

/// Sends `message`, reads it back and closes; whether it came back intact.
fn echo(mut flow: std::os::unix::net::UnixStream, message: &[u8]) -> bool {
    let timeout = Some(Duration::from_millis(CONNECT_TIMEOUT_MS));
    let _ = flow.set_read_timeout(timeout);
    let mut back = vec![0u8; message.len()];
    flow.write_all(message).is_ok() && flow.read_exact(&mut back).is_ok() && back == message
}
