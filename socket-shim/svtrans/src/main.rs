//! `svtrans`: the translator between legacy TCP and Serval services.
//!
//! ```text
//! svtrans ingress --listen ADDR:PORT --service SERVICEID   # TCP clients -> service
//! svtrans egress  --service SERVICEID --to ADDR:PORT       # service -> TCP server
//! ```
//!
//! Each side carries every connection with `splice(2)` in both directions,
//! so bytes never enter user space (see [`mod@relay`] and [`pipes`]). A
//! direction that reaches end of file half-closes the other socket's
//! sending side; the connection ends when both directions have.
//! Backpressure is the kernel's: a blocked splice stops reading from its
//! source.
//!
//! Load never stops the translator: it raises its descriptor limit at
//! start and carries at most as many connections as fit under it
//! ([`limits`]); a connection beyond that, or one it cannot serve for any
//! other reason (out of threads, the server refuses), is refused with one
//! log line (rate-bounded) while the others keep flowing. Egress keeps its
//! service bound: if the binding breaks (sald restarted), it binds again.

mod limits;
mod pipes;
mod relay;

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sal::{ServiceId, ServicePrefix};
use socket_shim::{ServiceListener, ServiceStream};

use limits::{Capacity, LogLimit, Slots};
use pipes::PipePool;
use relay::{relay, reset_on_close};

#[derive(Debug, Parser)]
#[command(
    name = "svtrans",
    version,
    about = "Translate between legacy TCP and Serval services",
    long_about = "ingress: accept legacy TCP clients and carry each connection to a service. \
                  egress: register a service and carry each of its connections to a legacy \
                  TCP server. sald's control socket is SERVAL_CONTROL or /run/serval/sald.sock."
)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Accept TCP connections on ADDR:PORT and connect each to SERVICEID.
    Ingress {
        /// TCP address to listen on.
        #[arg(long, value_name = "ADDR:PORT")]
        listen: SocketAddr,
        /// Service to connect each client to.
        #[arg(long, value_name = "SERVICEID")]
        service: ServiceId,
        /// Connections carried at once (fewer if the descriptor limit
        /// does not allow as many); more are refused.
        #[arg(long, default_value_t = 1024, value_name = "N")]
        max_conns: usize,
        /// Give up connecting to the service after this many milliseconds.
        #[arg(long, value_name = "MS")]
        connect_timeout: Option<u64>,
    },
    /// Register SERVICEID (a prefix with /N) and carry each connection to ADDR:PORT.
    Egress {
        /// Service ID or prefix to register.
        #[arg(long, value_name = "SERVICEID")]
        service: ServicePrefix,
        /// Legacy TCP server.
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        /// Connections carried at once (fewer if the descriptor limit
        /// does not allow as many); more are refused.
        #[arg(long, default_value_t = 1024, value_name = "N")]
        max_conns: usize,
        /// Flows sald may hold established but not yet taken.
        #[arg(long, default_value_t = 128, value_name = "N")]
        backlog: u32,
    },
}

fn main() {
    // SAFETY: setting SIGPIPE to ignored before any thread exists; a peer
    // that goes away then shows as EPIPE on one connection, not the death
    // of the translator.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if let Err(error) = run(serval_cli::parse("svtrans")) {
        eprintln!("svtrans: {error:#}");
        std::process::exit(1);
    }
}

/// What every connection of one translator shares.
struct Shared {
    slots: Arc<Slots>,
    pipes: PipePool,
    refusals: LogLimit,
}

impl Shared {
    /// Sized for the descriptor limit (raised as far as allowed first).
    fn new(max_conns: usize) -> Arc<Shared> {
        let nofile = limits::raise_nofile();
        let capacity = Capacity::for_limit(nofile, max_conns);
        if capacity.connections < max_conns {
            eprintln!(
                "svtrans: the descriptor limit ({nofile}) allows {} connections at once, not {max_conns}",
                capacity.connections
            );
        }
        Arc::new(Shared {
            slots: Arc::new(Slots::new(capacity.connections)),
            pipes: PipePool::new(capacity.pipes),
            refusals: LogLimit::new(Duration::from_secs(1)),
        })
    }

    /// Logs a refused connection (at a bounded rate).
    fn refused(&self, who: impl std::fmt::Display, why: impl std::fmt::Display) {
        self.refusals.log(|| format!("refused {who}: {why}"));
    }
}

fn run(args: Args) -> Result<()> {
    match args.mode {
        Mode::Ingress {
            listen,
            service,
            max_conns,
            connect_timeout,
        } => ingress(
            listen,
            service,
            Shared::new(max_conns),
            connect_timeout.map(Duration::from_millis),
        ),
        Mode::Egress {
            service,
            to,
            max_conns,
            backlog,
        } => egress(service, to, Shared::new(max_conns), backlog),
    }
}

/// A descriptor held back so that, when the process is out of them, one
/// can be freed to accept and refuse the waiting client rather than leave
/// it (and the accept loop) spinning.
struct Spare(Option<File>);

impl Spare {
    fn new() -> Spare {
        Spare(File::open("/dev/null").ok())
    }

    /// Runs `f` with the spare descriptor released.
    fn released<T>(&mut self, f: impl FnOnce() -> T) -> T {
        self.0 = None;
        let result = f();
        self.0 = File::open("/dev/null").ok();
        result
    }
}

fn out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn ingress(
    listen: SocketAddr,
    service: ServiceId,
    shared: Arc<Shared>,
    timeout: Option<Duration>,
) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let mut spare = Spare::new();
    eprintln!("svtrans: ingress {listen} -> service {service}");
    loop {
        let (tcp, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) if out_of_descriptors(&error) => {
                // Take the waiting client off the queue and refuse it.
                if let Ok((tcp, peer)) = spare.released(|| listener.accept()) {
                    reset_on_close(&tcp);
                    shared.refused(peer, "out of file descriptors");
                }
                continue;
            }
            Err(error) => {
                // ECONNABORTED and the like concern one client; ENOBUFS and
                // ENOMEM pass: a short pause, never an exit.
                shared.refused("a client", format_args!("accept: {error}"));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Some(slot) = shared.slots.try_acquire() else {
            reset_on_close(&tcp);
            shared.refused(peer, "at the connection limit");
            continue;
        };
        let carrier = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ingress".into())
            .spawn(move || {
                let _slot = slot;
                let flow = match timeout {
                    Some(t) => ServiceStream::connect_timeout(service, t),
                    None => ServiceStream::connect(service),
                };
                match flow {
                    Ok(flow) => {
                        let (flow, _) = flow.into_parts();
                        if let Err(error) = relay(&tcp, &flow, &carrier.pipes) {
                            eprintln!("svtrans: {peer}: {error}");
                        }
                    }
                    Err(error) => {
                        reset_on_close(&tcp);
                        carrier.refused(peer, format_args!("connecting to {service}: {error}"));
                    }
                }
            });
        if let Err(error) = spawned {
            // The closure (and with it the client's socket) is dropped:
            // the client sees its connection closed.
            shared.refused("a client", format_args!("cannot start a thread: {error}"));
        }
    }
}

/// Binds `service`, retrying with backoff; gives up only at start, when
/// nothing was ever bound (a configuration error worth an exit).
fn bind(service: ServicePrefix, backlog: u32, first: bool) -> Result<ServiceListener> {
    let mut delay = Duration::from_millis(100);
    loop {
        match ServiceListener::bind(service, backlog) {
            Ok(listener) => return Ok(listener),
            Err(error) if first => {
                return Err(error).with_context(|| format!("registering service {service}"))
            }
            Err(error) => {
                if delay == Duration::from_millis(100) {
                    eprintln!("svtrans: cannot bind {service} again yet ({error}); retrying");
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn egress(service: ServicePrefix, to: SocketAddr, shared: Arc<Shared>, backlog: u32) -> Result<()> {
    let mut listener = bind(service, backlog, true)?;
    eprintln!("svtrans: egress service {service} -> {to}");
    loop {
        let (flow, info) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) => {
                // The control connection that holds the binding is broken
                // or out of step (sald restarted, or a descriptor could not
                // be received): bind again on a new one.
                eprintln!("svtrans: lost the binding of {service} ({error}); binding again");
                drop(listener);
                listener = bind(service, backlog, false)?;
                eprintln!("svtrans: {service} bound again");
                continue;
            }
        };
        let who = format!("flow {}", info.flow);
        let Some(slot) = shared.slots.try_acquire() else {
            shared.refused(who, "at the connection limit");
            continue;
        };
        let carrier = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("egress".into())
            .spawn(move || {
                let _slot = slot;
                let (flow, _) = flow.into_parts();
                match TcpStream::connect(to) {
                    Ok(tcp) => {
                        if let Err(error) = relay(&tcp, &flow, &carrier.pipes) {
                            eprintln!("svtrans: {who}: {error}");
                        }
                    }
                    Err(error) => carrier.refused(who, format_args!("connecting to {to}: {error}")),
                }
            });
        if let Err(error) = spawned {
            shared.refused("a flow", format_args!("cannot start a thread: {error}"));
        }
    }
}
