//! `svtrans`: the translator between legacy TCP and Serval services.
//!
//! ```text
//! svtrans ingress --listen ADDR:PORT --service SERVICEID   # TCP clients -> service
//! svtrans egress  --service SERVICEID --to ADDR:PORT       # service -> TCP server
//! ```
//!
//! Each side carries every connection with `splice(2)` through a pipe, in
//! both directions, so bytes never enter user space: the TCP socket and the
//! flow (a Unix stream socket from sald) are both sockets, and splice needs
//! a pipe between two sockets. A direction that reaches end of file
//! half-closes the other socket's sending side; the connection ends when
//! both directions have. Backpressure is the kernel's: a blocked splice
//! stops reading from its source. The number of connections carried at once
//! is bounded (`--max-conns`); above it the translator stops accepting,
//! which leaves new connections in the listen backlog (TCP) or sald's
//! backlog (service).

mod relay;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sal::{ServiceId, ServicePrefix};
use socket_shim::{ServiceListener, ServiceStream};

use relay::{relay, Slots};

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
        /// Connections carried at once.
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
        /// Connections carried at once.
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
    if let Err(error) = run(Args::parse()) {
        eprintln!("svtrans: {error:#}");
        std::process::exit(1);
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
            max_conns,
            connect_timeout.map(Duration::from_millis),
        ),
        Mode::Egress {
            service,
            to,
            max_conns,
            backlog,
        } => egress(service, to, max_conns, backlog),
    }
}

fn ingress(
    listen: SocketAddr,
    service: ServiceId,
    max: usize,
    timeout: Option<Duration>,
) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let slots = Arc::new(Slots::new(max));
    eprintln!("svtrans: ingress {listen} -> service {service}");
    loop {
        let slot = slots.acquire();
        let (tcp, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("svtrans: accept: {error}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
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
                        if let Err(error) = relay(tcp, flow) {
                            eprintln!("svtrans: {peer}: {error}");
                        }
                    }
                    // The client sees its connection reset.
                    Err(error) => eprintln!("svtrans: {peer}: connecting to {service}: {error}"),
                }
            });
        if let Err(error) = spawned {
            eprintln!("svtrans: cannot start a connection thread: {error}");
        }
    }
}

fn egress(service: ServicePrefix, to: SocketAddr, max: usize, backlog: u32) -> Result<()> {
    let listener = ServiceListener::bind(service, backlog)
        .with_context(|| format!("registering service {service}"))?;
    let slots = Arc::new(Slots::new(max));
    eprintln!("svtrans: egress service {service} -> {to}");
    loop {
        let slot = slots.acquire();
        let (flow, info) = listener
            .accept()
            .context("accepting from sald (is it still running?)")?;
        let spawned = std::thread::Builder::new()
            .name("egress".into())
            .spawn(move || {
                let _slot = slot;
                let (flow, _) = flow.into_parts();
                match TcpStream::connect(to) {
                    Ok(tcp) => {
                        if let Err(error) = relay(tcp, flow) {
                            eprintln!("svtrans: flow {}: {error}", info.flow);
                        }
                    }
                    Err(error) => {
                        eprintln!("svtrans: flow {}: connecting to {to}: {error}", info.flow)
                    }
                }
            });
        if let Err(error) = spawned {
            eprintln!("svtrans: cannot start a connection thread: {error}");
        }
    }
}
