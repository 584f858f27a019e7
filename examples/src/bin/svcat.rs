//! svcat: netcat for service IDs.
//!
//! `svcat connect SERVICEID` opens a stream flow to a service;
//! `svcat listen [-k] SERVICE` binds a service ID (or prefix) and serves one
//! connection, or with `-k` one after another. Either way stdin goes to the
//! peer and the peer to stdout; end of stdin half-closes the flow, and a
//! connection is over when both directions are closed.
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
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sal::{ServiceId, ServicePrefix};
use socket_shim::{
    ControlClient, DatagramPeer, ServiceDatagram, ServiceListener, ServiceStream, MAX_DATAGRAM,
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

Examples:
  svcat listen beef              serve one connection to service beef
  svcat listen -k beef/16        serve connections to beef/16, one after another
  svcat connect beef < file      send a file to service beef
  svcat -u connect d00d          exchange datagrams with service d00d
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

    /// Datagrams instead of a stream: each chunk of stdin (at most 1400
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
    /// With -u: print the datagrams sent to SERVICE and send stdin as
    /// replies to the latest sender, until interrupted.
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
    /// With -u: send stdin as datagrams to SERVICEID and print the replies;
    /// exit once stdin has ended and no reply came for the --timeout.
    Connect {
        /// Give up connecting after SECS seconds (default: sald's retry
        /// limit); with -u, how long to wait for replies after the end of
        /// stdin (default 1)
        #[arg(short = 'w', long = "timeout", value_name = "SECS")]
        timeout: Option<u64>,
        /// Service ID to connect to (hex, e.g. beef)
        #[arg(value_name = "SERVICEID")]
        service: ServiceId,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("svcat: {}", one_line(&format!("{error:#}")));
            ExitCode::from(1)
        }
    }
}

/// Help and version as clap prints them; usage errors as one line, status 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(2)
        }
        _ => {
            let text = error.to_string();
            let first = text.lines().next().unwrap_or("invalid usage");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("svcat: {}; see 'svcat --help'", one_line(first));
            ExitCode::from(2)
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run(cli: Cli) -> Result<()> {
    let path = cli.control.unwrap_or_else(sal_control::control_path);
    let control = ControlClient::connect_as(&path, "svcat")?;
    let mut stdin = spawn_stdin_reader();
    if cli.udp {
        return datagrams(control, cli.mode, cli.verbose, &stdin);
    }
    match cli.mode {
        Mode::Connect { timeout, service } => {
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

/// `-u`: datagrams to a service (`connect`) or from its clients (`listen`).
fn datagrams(control: ControlClient, mode: Mode, verbose: bool, stdin: &StdinChunks) -> Result<()> {
    let (socket, target, linger) = match mode {
        Mode::Connect { timeout, service } => {
            let socket =
                ServiceDatagram::open_via(control).context("cannot open a datagram socket")?;
            let linger = Duration::from_secs(timeout.unwrap_or(1));
            (socket, Some(service), linger)
        }
        Mode::Listen { service, .. } => {
            let socket = ServiceDatagram::bind_via(control, service)
                .with_context(|| format!("cannot listen on {service}"))?;
            (socket, None, Duration::MAX)
        }
    };
    if verbose {
        eprintln!("svcat: datagram socket {}", socket.socket_id());
    }
    socket.set_read_timeout(Some(TICK))?;
    let stdin_done = AtomicBool::new(false);
    let last_peer: Mutex<Option<DatagramPeer>> = Mutex::new(None);
    thread::scope(|scope| {
        let receiver = scope.spawn(|| -> Result<()> {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut idle = Duration::ZERO;
            let stdout = io::stdout();
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((len, peer, _)) => {
                        idle = Duration::ZERO;
                        if verbose {
                            eprintln!(
                                "svcat: {len} bytes from {} flow {}",
                                peer.locator, peer.flow
                            );
                        }
                        *last_peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer);
                        let mut out = stdout.lock();
                        match out.write_all(&buf[..len]).and_then(|()| out.flush()) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                            Err(e) => {
                                return Err(anyhow::Error::new(e).context("writing to stdout"))
                            }
                        }
                    }
                    Err(socket_shim::Error::Io(e))
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        if stdin_done.load(Ordering::Relaxed) {
                            idle = idle.saturating_add(TICK);
                            if idle >= linger {
                                return Ok(());
                            }
                        }
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("receiving")),
                }
            }
        });
        let sent = send_stdin_datagrams(&socket, target, &last_peer, stdin, &receiver);
        stdin_done.store(true, Ordering::Relaxed);
        let received = receiver
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the receiving thread panicked")));
        sent.and(received)
    })
}

/// Sends stdin as datagrams (to `target`, else replies to the latest sender)
/// until the end of stdin or until the receiving side is done.
fn send_stdin_datagrams(
    socket: &ServiceDatagram,
    target: Option<ServiceId>,
    last_peer: &Mutex<Option<DatagramPeer>>,
    stdin: &StdinChunks,
    receiver: &thread::ScopedJoinHandle<'_, Result<()>>,
) -> Result<()> {
    let mut warned = false;
    while !receiver.is_finished() {
        let chunk = match stdin.recv_timeout(TICK) {
            Ok(Ok(chunk)) => chunk,
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("reading stdin")),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        for datagram in chunk.chunks(MAX_DATAGRAM) {
            match target {
                Some(service) => {
                    socket.send_to(service, datagram).context("sending")?;
                }
                None => {
                    let peer = *last_peer.lock().unwrap_or_else(|e| e.into_inner());
                    match peer {
                        Some(peer) => {
                            socket.send_reply(peer, datagram).context("sending")?;
                        }
                        None if !warned => {
                            eprintln!(
                                "svcat: no datagram received yet; stdin dropped until one is"
                            );
                            warned = true;
                        }
                        None => {}
                    }
                }
            }
        }
    }
    Ok(())
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
