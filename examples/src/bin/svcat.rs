//! svcat: netcat for service IDs.
//!
//! `svcat connect SERVICEID` opens a stream flow to a service;
//! `svcat listen [-k] SERVICE` binds a service ID (or prefix) and serves one
//! connection, or with `-k` one after another. Either way stdin goes to the
//! peer and the peer to stdout; end of stdin half-closes the flow, and a
//! connection is over when both directions are closed.
//!
//! With `-u`, datagrams, as the original Serval's programs exchange them:
//! `connect` opens a connected datagram flow (its `udp_client_user`),
//! `connect --unconnected` sends unconnected datagrams (`sendto`, what its
//! `recv_udp_packet_user` reads), and `listen` takes both: connected flows
//! (its `udp_server_user` is one) and unconnected datagrams.
//!
//! Two threads per connection move the data (stdin to the flow, the flow to
//! stdout) with the blocking API of the socket shim, in 64 KiB chunks. One
//! more thread reads stdin for the whole run, so that with `-k` whatever is
//! left of stdin goes to the next connection.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sal::{ServiceId, ServicePrefix};
use serval_cli::one_line;
use socket_shim::{
    ControlClient, DatagramPeer, ServiceDatagram, ServiceDatagramFlow, ServiceListener,
    ServiceStream, MAX_DATAGRAM,
};

/// Size of the chunks copied in each direction.
const CHUNK: usize = 64 * 1024;
/// How often idle waits check whether the connection went away.
const TICK: Duration = Duration::from_millis(100);

const AFTER_HELP: &str = "\
Stdin goes to the peer and the peer to stdout. End of stdin half-closes the
flow (the peer reads end of file); svcat is done with a connection once both
directions are closed.

The control socket is --control PATH, else $SERVAL_CONTROL, else /run/serval/sald.sock.

With -u, each chunk of stdin (at most 1360 bytes) is one datagram. `connect`
opens a connected datagram flow (handshake, then datagrams with one peer; end
of stdin sends our FIN, the peer's FIN ends it); `connect --unconnected` sends
each datagram to the service on its own and prints the replies; `listen`
accepts connected flows and reads unconnected datagrams, and sends stdin to the
latest sender. A datagram refused by the host it went to (a reset) is
\"connection refused\". Broadcast discovery (a service no rule matches) and
relaying through a service router with the client's address are sald's
native mode only: over UDP encapsulation, give a rule.

Service IDs are hex, left-aligned: beef is beef00...00; the original Serval's
service 16385 (htonl(0x4001)) is 00004001.

Examples:
  svcat listen beef              serve one connection to service beef
  svcat listen -k beef/16        serve connections to beef/16, one after another
  svcat connect beef < file      send a file to service beef
  svcat -u connect d00d          exchange datagrams with service d00d over a flow
  svcat -u connect --unconnected 0007   send unconnected datagrams to service 0007
  svcat -u listen 00004001       serve the original Serval's udp_client_user
Errors are one line `svcat: MESSAGE`; the exit status is 1 (2 for usage errors).";

/// netcat for service IDs: stdin to the peer, the peer to stdout.
#[derive(Debug, Parser)]
#[command(
    name = "svcat",
    version,
    after_help = AFTER_HELP,
    disable_help_subcommand = true
)]
struct Cli {
    /// sald's control socket [default: $SERVAL_CONTROL, else /run/serval/sald.sock]
    #[arg(long, value_name = "PATH", global = true)]
    control: Option<PathBuf>,

    /// Report bindings and flows on stderr
    #[arg(short, long, global = true)]
    verbose: bool,

    /// Datagrams instead of a stream: each chunk of stdin (at most 1360
    /// bytes) is one datagram, each datagram received is written to stdout
    #[arg(short = 'u', long = "udp", global = true)]
    udp: bool,

    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Bind SERVICE and serve one connection; exit when it is closed
    ///
    /// With -u: accept connected datagram flows and read unconnected
    /// datagrams sent to SERVICE, print what arrives, and send stdin to the
    /// latest sender, until interrupted.
    Listen {
        /// Keep listening: serve connections one after another (implied by -u)
        #[arg(short = 'k', long = "keep-listening")]
        keep: bool,
        /// Service ID to bind (hex, e.g. beef), or a prefix (beef/16)
        #[arg(value_name = "SERVICE")]
        service: ServicePrefix,
    },
    /// Connect to SERVICEID; exit when the connection is closed
    ///
    /// With -u: open a connected datagram flow, send stdin as datagrams and
    /// print what comes back; at the end of stdin send our FIN and exit at
    /// the peer's, or once no datagram came for the --timeout. With
    /// --unconnected, send each datagram to SERVICEID on its own instead.
    Connect {
        /// Give up connecting after SECS seconds (default: sald's retry
        /// limit); with -u, also how long to wait for datagrams after the end
        /// of stdin (default 1)
        #[arg(short = 'w', long = "timeout", value_name = "SECS")]
        timeout: Option<u64>,
        /// Datagrams without a flow (sendto): each is resolved on its own,
        /// replies come back to this socket's own service ID. Implies -u
        #[arg(long)]
        unconnected: bool,
        /// Service ID to connect to (hex, e.g. beef)
        #[arg(value_name = "SERVICEID")]
        service: ServiceId,
    },
}

fn main() -> ExitCode {
    let cli: Cli = serval_cli::parse("svcat");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("svcat: {}", one_line(&format!("{error:#}")));
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let path = cli.control.unwrap_or_else(sal_control::control_path);
    let control = ControlClient::connect_as(&path, "svcat")?;
    let mut stdin = spawn_stdin_reader();
    let unconnected = matches!(
        cli.mode,
        Mode::Connect {
            unconnected: true,
            ..
        }
    );
    if cli.udp || unconnected {
        return datagrams(control, cli.mode, cli.verbose, &stdin);
    }
    match cli.mode {
        Mode::Connect {
            timeout, service, ..
        } => {
            let timeout = timeout.map(Duration::from_secs);
            let stream = ServiceStream::connect_via(control, service, timeout)
                .with_context(|| format!("cannot connect to {service}"))?;
            if cli.verbose {
                report("connected", &stream);
            }
            relay(&stream, &mut stdin).map(|_| ())
        }
        Mode::Listen { keep, service } => {
            let backlog = if keep { 16 } else { 1 };
            let listener = ServiceListener::bind_via(control, service, backlog)
                .with_context(|| format!("cannot listen on {service}"))?;
            if cli.verbose {
                if service.len() == sal::id::SERVICE_ID_BITS {
                    eprintln!("svcat: listening on {}", service.id());
                } else {
                    eprintln!("svcat: listening on {service}");
                }
            }
            if !keep {
                // One connection: unbind as soon as it is accepted.
                let (stream, _) = listener.accept().context("accept")?;
                drop(listener);
                if cli.verbose {
                    report("accepted", &stream);
                }
                return relay(&stream, &mut stdin).map(|_| ());
            }
            loop {
                let (stream, _) = listener.accept().context("accept")?;
                if cli.verbose {
                    report("accepted", &stream);
                }
                match relay(&stream, &mut stdin) {
                    Ok(Ended::StdoutGone) => return Ok(()),
                    Ok(Ended::Closed) => {}
                    Err(error) => eprintln!("svcat: {}", one_line(&format!("{error:#}"))),
                }
                if cli.verbose {
                    eprintln!("svcat: flow {} closed", stream.flow_id());
                }
            }
        }
    }
}

fn report(what: &str, stream: &ServiceStream) {
    let info = stream.flow_info();
    let remote = info
        .remote
        .map_or_else(|| "?".to_string(), |r| r.to_string());
    eprintln!(
        "svcat: {what} flow {} for service {} ({} <-> {remote})",
        info.flow, info.service, info.local
    );
}

/// `-u`: a datagram flow to a service (`connect`), unconnected datagrams to
/// it (`connect --unconnected`), or both from its clients (`listen`).
fn datagrams(control: ControlClient, mode: Mode, verbose: bool, stdin: &StdinChunks) -> Result<()> {
    match mode {
        Mode::Connect {
            timeout,
            service,
            unconnected: false,
        } => {
            let wait = timeout.map(Duration::from_secs);
            let flow = ServiceDatagramFlow::connect_via(control, service, wait)
                .with_context(|| format!("cannot connect to {service}"))?;
            if verbose {
                let info = flow.flow_info();
                eprintln!("svcat: datagram flow {} to {service}", info.flow);
            }
            datagram_flow(&flow, stdin, wait.unwrap_or(Duration::from_secs(1)))
        }
        Mode::Connect {
            timeout,
            service,
            unconnected: true,
        } => {
            let socket =
                ServiceDatagram::open_via(control).context("cannot open a datagram socket")?;
            if verbose {
                eprintln!("svcat: datagram socket {}", socket.socket_id());
            }
            let linger = Duration::from_secs(timeout.unwrap_or(1));
            let latest = Arc::new(Mutex::new(None));
            unconnected(&socket, Some(service), latest, linger, verbose, stdin)
        }
        Mode::Listen { service, .. } => {
            let socket = ServiceDatagram::bind_via(control, service)
                .with_context(|| format!("cannot listen on {service}"))?;
            if verbose {
                eprintln!("svcat: datagram socket {}", socket.socket_id());
            }
            let socket = Arc::new(socket);
            let latest = Arc::new(Mutex::new(None));
            accept_flows(socket.clone(), latest.clone(), verbose);
            unconnected(&socket, None, latest, Duration::MAX, verbose, stdin)
        }
    }
}

/// Where stdin goes when listening: the latest sender.
#[derive(Clone)]
enum Latest {
    /// An unconnected datagram's sender.
    Peer(DatagramPeer),
    /// A connected flow.
    Flow(Arc<ServiceDatagramFlow>),
}

/// A connected datagram flow: stdin to the flow, the flow to stdout. At the
/// end of stdin our FIN goes out; done at the peer's FIN, or after `linger`
/// without a datagram once stdin has ended.
fn datagram_flow(flow: &ServiceDatagramFlow, stdin: &StdinChunks, linger: Duration) -> Result<()> {
    flow.set_read_timeout(Some(TICK))?;
    let receive = |buf: &mut [u8]| match flow.recv(buf) {
        Ok(0) => Received::End,
        Ok(len) => Received::Data(len),
        Err(socket_shim::Error::Io(e)) if timed_out(&e) => Received::Silence,
        Err(e) => Received::Failed(anyhow::Error::new(e).context("receiving")),
    };
    let send = |datagram: &[u8]| flow.send(datagram).map(drop).context("sending");
    // Our FIN: we are done sending, the peer may still answer.
    let finish = || drop(flow.shutdown_write());
    both_ways(linger, stdin, receive, send, finish)
}

/// Unconnected datagrams: to `target` (`connect --unconnected`; done once
/// stdin has ended and nothing came for `linger`), or, listening, from
/// anyone, stdin going to the latest sender, which may also be a flow that
/// [`accept_flows`] took (until interrupted).
fn unconnected(
    socket: &ServiceDatagram,
    target: Option<ServiceId>,
    latest: Arc<Mutex<Option<Latest>>>,
    linger: Duration,
    verbose: bool,
    stdin: &StdinChunks,
) -> Result<()> {
    socket.set_read_timeout(Some(TICK))?;
    let receive = |buf: &mut [u8]| match socket.recv_from(buf) {
        Ok((len, peer, _)) => {
            if verbose {
                let from = peer.service.map(|s| s.to_string()).unwrap_or_default();
                eprintln!(
                    "svcat: {len} bytes from {} flow {} service {from}",
                    peer.locator, peer.flow
                );
            }
            *lock(&latest) = Some(Latest::Peer(peer));
            Received::Data(len)
        }
        Err(socket_shim::Error::Io(e)) if timed_out(&e) => Received::Silence,
        Err(socket_shim::Error::Refused(_)) => match target {
            Some(service) => Received::Failed(anyhow::anyhow!("{service}: connection refused")),
            None => {
                eprintln!("svcat: a datagram was refused");
                Received::Silence
            }
        },
        Err(e) => Received::Failed(anyhow::Error::new(e).context("receiving")),
    };
    let mut warned = false;
    let send = |datagram: &[u8]| -> Result<()> {
        let to = match target {
            Some(service) => {
                return socket
                    .send_to(service, datagram)
                    .map(drop)
                    .context("sending")
            }
            None => lock(&latest).clone(),
        };
        match to {
            Some(Latest::Peer(peer)) => socket.send_reply(peer, datagram).map(drop),
            Some(Latest::Flow(flow)) => flow.send(datagram).map(drop),
            None => {
                if !std::mem::replace(&mut warned, true) {
                    eprintln!("svcat: no datagram received yet; stdin dropped until one is");
                }
                Ok(())
            }
        }
        .context("sending")
    };
    both_ways(linger, stdin, receive, send, || {})
}

/// One receive of a datagram socket or flow, as [`both_ways`] sees it.
enum Received {
    /// This many bytes of a datagram.
    Data(usize),
    /// The flow ended (the peer's FIN).
    End,
    /// Nothing for a tick.
    Silence,
    /// An error that ends it all.
    Failed(anyhow::Error),
}

/// Datagrams both ways: `receive` runs on a thread of its own and its
/// datagrams go to stdout, until the flow ends, stdout goes away, or
/// nothing came for `linger` since stdin ended; meanwhile every chunk of
/// stdin is cut into datagrams for `send`, and `finish` runs at the end of
/// stdin.
fn both_ways(
    linger: Duration,
    stdin: &StdinChunks,
    mut receive: impl FnMut(&mut [u8]) -> Received + Send,
    mut send: impl FnMut(&[u8]) -> Result<()>,
    finish: impl FnOnce(),
) -> Result<()> {
    let stdin_done = AtomicBool::new(false);
    thread::scope(|scope| {
        let receiver = scope.spawn(|| -> Result<()> {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut idle = Idle::new(linger, &stdin_done);
            loop {
                match receive(&mut buf) {
                    Received::Data(len) => {
                        idle.heard();
                        if !to_stdout(&buf[..len])? {
                            return Ok(());
                        }
                    }
                    Received::End => return Ok(()),
                    Received::Silence if idle.over() => return Ok(()),
                    Received::Silence => {}
                    Received::Failed(error) => return Err(error),
                }
            }
        });
        let sent = (|| -> Result<()> {
            while !receiver.is_finished() {
                let chunk = match stdin.recv_timeout(TICK) {
                    Ok(Ok(chunk)) => chunk,
                    Ok(Err(e)) => return Err(anyhow::Error::new(e).context("reading stdin")),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                for datagram in chunk.chunks(MAX_DATAGRAM) {
                    send(datagram)?;
                }
            }
            Ok(())
        })();
        finish();
        stdin_done.store(true, Ordering::Relaxed);
        let received = receiver
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the receiving thread panicked")));
        sent.and(received)
    })
}

/// Accepts the connected datagram flows of a bound socket, each relayed to
/// stdout by a thread of its own until the peer's FIN (then dropped: our
/// FIN). Detached: `listen` runs until interrupted.
fn accept_flows(socket: Arc<ServiceDatagram>, latest: Arc<Mutex<Option<Latest>>>, verbose: bool) {
    thread::spawn(move || loop {
        let flow = match socket.accept() {
            Ok(flow) => Arc::new(flow),
            Err(error) => {
                eprintln!("svcat: accept: {}", one_line(&error.to_string()));
                return;
            }
        };
        if verbose {
            let info = flow.flow_info();
            eprintln!(
                "svcat: accepted datagram flow {} from {:?}",
                info.flow, info.remote
            );
        }
        *lock(&latest) = Some(Latest::Flow(flow.clone()));
        let latest = latest.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok(len @ 1..) = flow.recv(&mut buf) {
                *lock(&latest) = Some(Latest::Flow(flow.clone()));
                if !matches!(to_stdout(&buf[..len]), Ok(true)) {
                    break;
                }
            }
            let mut latest = lock(&latest);
            if matches!(&*latest, Some(Latest::Flow(f)) if Arc::ptr_eq(f, &flow)) {
                *latest = None;
            }
            if verbose {
                eprintln!("svcat: datagram flow {} closed", flow.flow_id());
            }
        });
    });
}

/// How long a datagram receiver has heard nothing since stdin ended.
struct Idle<'a> {
    idle: Duration,
    linger: Duration,
    stdin_done: &'a AtomicBool,
}

impl<'a> Idle<'a> {
    fn new(linger: Duration, stdin_done: &'a AtomicBool) -> Idle<'a> {
        Idle {
            idle: Duration::ZERO,
            linger,
            stdin_done,
        }
    }

    /// A datagram arrived.
    fn heard(&mut self) {
        self.idle = Duration::ZERO;
    }

    /// One more silent tick: whether the receiver is done waiting.
    fn over(&mut self) -> bool {
        if self.stdin_done.load(Ordering::Relaxed) {
            self.idle = self.idle.saturating_add(TICK);
        }
        self.idle >= self.linger
    }
}

/// Writes a datagram to stdout; false once stdout is gone.
fn to_stdout(data: &[u8]) -> Result<bool> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match out.write_all(data).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

fn timed_out(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Chunks of stdin; the channel closes at end of stdin. Read errors are
/// passed on once, then the channel closes too.
type StdinChunks = Receiver<io::Result<Vec<u8>>>;

/// Reads stdin for the whole run, a chunk at a time, at most two chunks
/// ahead of the connection that consumes them.
fn spawn_stdin_reader() -> StdinChunks {
    let (tx, rx) = sync_channel(1);
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        loop {
            let mut chunk = vec![0u8; CHUNK];
            match stdin.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send(Ok(chunk)).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// How a connection ended.
enum Ended {
    /// Both directions closed.
    Closed,
    /// Stdout was closed (e.g. `svcat ... | head`): nothing more to do.
    StdoutGone,
}

/// Moves data both ways until both directions are closed: the peer's (end
/// of file read from the flow) and ours (end of stdin, or the flow gone).
fn relay(stream: &ServiceStream, stdin: &mut StdinChunks) -> Result<Ended> {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let stop = &stop;
        let writer = scope.spawn(move || stdin_to_flow(stream, stdin, stop));
        let received = flow_to_stdout(stream);
        if matches!(received, Ok(Ended::StdoutGone)) {
            return Ok(Ended::StdoutGone);
        }
        // The peer is done sending; wait for our side to finish too, unless
        // the flow disappears altogether (then nothing can be sent anyway).
        while !writer.is_finished() {
            if hung_up(stream) {
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
        let sent = writer
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the stdin thread panicked")));
        let ended = received.context("receiving")?;
        sent.context("sending")?;
        Ok(ended)
    })
}

/// The flow to stdout, until end of file.
fn flow_to_stdout(mut stream: &ServiceStream) -> io::Result<Ended> {
    let mut buf = vec![0u8; CHUNK];
    let stdout = io::stdout();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(Ended::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut out = stdout.lock();
        match out.write_all(&buf[..n]).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Ended::StdoutGone),
            Err(e) => return Err(e).context_io("writing to stdout"),
        }
    }
}

/// Stdin to the flow; half-closes the flow at end of stdin. Returns early
/// when `stop` is set, and quietly when the peer is gone.
fn stdin_to_flow(mut stream: &ServiceStream, stdin: &StdinChunks, stop: &AtomicBool) -> Result<()> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match stdin.recv_timeout(TICK) {
            Ok(Ok(chunk)) => match stream.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if peer_gone(&e) => return Ok(()),
                Err(e) => return Err(e.into()),
            },
            Ok(Err(e)) => {
                let _ = stream.shutdown_write();
                return Err(anyhow::Error::new(e).context("reading stdin"));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return match stream.shutdown_write() {
                    Err(e) if !peer_gone(&e) && e.kind() != io::ErrorKind::NotConnected => {
                        Err(e.into())
                    }
                    _ => Ok(()),
                };
            }
        }
    }
}

fn peer_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Waits up to one tick for the flow's socket to be hung up (sald closed its
/// end: the flow is over in both directions).
fn hung_up(stream: &ServiceStream) -> bool {
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(stream),
        PollFlags::empty(),
    )];
    let tick = PollTimeout::from(TICK.as_millis() as u16);
    match poll(&mut fds, tick) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => false,
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => true,
    }
}

/// Adds context to an `io::Result` while keeping it an `io::Error`.
trait IoContext<T> {
    fn context_io(self, what: &str) -> io::Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context_io(self, what: &str) -> io::Result<T> {
        self.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}
