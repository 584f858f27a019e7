//! What the engine, hostile-input and many-flow tests share: two engines on
//! 127.0.0.1 (the client routing its SYNs straight to the server), an echo
//! server, forged SAL packets, and the process's resident memory and
//! descriptor count.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sal::wire::{ControlFlags, ControlRepr, SalRepr};
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_inproc::{Config, Error, Listener, Mode, Runtime, Stream};

pub fn service() -> ServiceId {
    "c0ec7002".parse().unwrap()
}

pub fn loopback() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)
}

/// The UDP address of an engine.
pub fn udp_addr(runtime: &Runtime) -> SocketAddrV4 {
    match runtime.local() {
        Locator::Udp(addr) => addr,
        other => panic!("an engine's locator is udp:, not {other}"),
    }
}

/// A server engine listening on [`service`] with `backlog`.
pub fn server(backlog: usize) -> (Runtime, Listener) {
    let config = Config::new(
        loopback(),
        Locator::Udp(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9)),
    );
    let runtime = Runtime::bind(config).expect("server bind");
    let listener = runtime
        .listen(ServicePrefix::exact(service()), backlog)
        .expect("listen");
    (runtime, listener)
}

/// A client engine whose SYNs go to `server`.
pub fn client(server: &Runtime) -> Runtime {
    Runtime::bind(Config::new(loopback(), server.local())).expect("client bind")
}

/// `len` bytes that differ with `seed` and position.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A small generator for the forger (no need for a cryptographic one).
pub struct Forger(u64);

impl Forger {
    pub fn new(seed: u64) -> Forger {
        Forger(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Reads exactly `buf.len()` bytes by `deadline`.
pub fn read_exact(stream: &Stream, buf: &mut [u8], deadline: Instant) -> Result<(), Error> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..], Mode::Until(deadline))? {
            0 => return Err(Error::Reset),
            n => got += n,
        }
    }
    Ok(())
}

/// Reads until end of stream, by `deadline`.
pub fn read_to_end(stream: &Stream, deadline: Instant) -> Result<Vec<u8>, Error> {
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf, Mode::Until(deadline))? {
            0 => return Ok(got),
            n => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes all of `buf` by `deadline`.
pub fn write_all(stream: &Stream, buf: &[u8], deadline: Instant) -> Result<(), Error> {
    let mut sent = 0;
    while sent < buf.len() {
        sent += stream.write(&buf[sent..], Mode::Until(deadline))?;
    }
    Ok(())
}

/// One echo exchange of `msg` on `stream`: what came back, by `deadline`.
pub fn echo(stream: &Stream, msg: &[u8], deadline: Instant) -> Result<Vec<u8>, Error> {
    write_all(stream, msg, deadline)?;
    let mut back = vec![0; msg.len()];
    read_exact(stream, &mut back, deadline)?;
    Ok(back)
}

/// A server that echoes every accepted stream (one thread each) until end
/// of stream. A stream's first 4 bytes are a hello, the client's flow ID:
/// the server notes it with its own flow ID (for the forger), and echoes
/// it as the rest.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    /// (client's flow ID, server's flow ID) of each stream that said hello.
    pub pairs: Arc<Mutex<Vec<(u32, u32)>>>,
    /// What went wrong in an echo thread (none expected).
    pub errors: Arc<Mutex<Vec<String>>>,
    accepting: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl EchoServer {
    pub fn start(listener: Listener) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let pairs = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let accepting = {
            let (stop, pairs, errors) = (stop.clone(), pairs.clone(), errors.clone());
            thread::spawn(move || {
                let mut echoes = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let until = Instant::now() + Duration::from_millis(50);
                    let stream = match listener.accept(Mode::Until(until)) {
                        Ok(stream) => stream,
                        Err(Error::WouldBlock) => continue,
                        Err(error) => {
                            // Recorded once a pause (EMFILE would repeat
                            // at once, and fill the list).
                            errors.lock().unwrap().push(format!("accept: {error}"));
                            thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    let (pairs, errors) = (pairs.clone(), errors.clone());
                    echoes.push(thread::spawn(move || {
                        if let Err(error) = serve_echo(&stream, &pairs) {
                            errors.lock().unwrap().push(format!("echo: {error}"));
                        }
                    }));
                }
                echoes
            })
        };
        EchoServer {
            stop,
            pairs,
            errors,
            accepting: Some(accepting),
        }
    }

    /// Stops accepting, and waits for every echo thread (whose clients
    /// must have closed) by `deadline`.
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        let echoes = self
            .accepting
            .take()
            .unwrap()
            .join()
            .expect("accept thread");
        for echo in echoes {
            echo.join().expect("echo thread");
        }
        self.errors.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    /// A test that panics before [`EchoServer::stop`] leaves no accept
    /// thread running into the binary's other tests.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sets a flag when dropped: a test's worker threads stop even if the test
/// panics before it tells them to.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn serve_echo(stream: &Stream, pairs: &Mutex<Vec<(u32, u32)>>) -> Result<(), Error> {
    let deadline = || Instant::now() + Duration::from_secs(30);
    let mut hello = [0u8; 4];
    read_exact(stream, &mut hello, deadline())?;
    pairs
        .lock()
        .unwrap()
        .push((u32::from_be_bytes(hello), stream.id().get()));
    write_all(stream, &hello, deadline())?;
    let mut buf = vec![0; 64 * 1024];
    loop {
        match stream.read(&mut buf, Mode::Until(deadline()))? {
            0 => return stream.shutdown_write(),
            n => write_all(stream, &buf[..n], deadline())?,
        }
    }
}

/// A client stream to the echo server, past its hello.
pub fn echo_client(client: &Runtime, deadline: Instant) -> Result<Stream, Error> {
    let stream = client.connect(service(), Mode::Until(deadline))?;
    let hello = stream.id().get().to_be_bytes();
    if echo(&stream, &hello, deadline)? != hello {
        return Err(Error::Reset);
    }
    Ok(stream)
}

/// A TCP header (no options): ports 0 (the SAL ignores them), `flags` as
/// in the TCP header's byte 13, checksum 0 (UDP carriage only frames it).
pub fn tcp_header(seq: u32, ack: u32, flags: u8) -> [u8; 20] {
    let mut header = [0u8; 20];
    header[4..8].copy_from_slice(&seq.to_be_bytes());
    header[8..12].copy_from_slice(&ack.to_be_bytes());
    header[12] = 5 << 4;
    header[13] = flags;
    header[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    header
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A well-formed SAL SYN for `service` from flow `flow`, with nonce
/// `nonce`, carrying a TCP SYN.
pub fn sal_syn(flow: u32, service: ServiceId, nonce: [u8; 8], isn: u32) -> Vec<u8> {
    let mut repr = SalRepr::data(FlowId::new(flow.max(1)).unwrap(), None, 6);
    repr.control = Some(ControlRepr {
        flags: ControlFlags::SYN,
        verno: flow,
        ackno: 0,
        nonce,
    });
    repr.service = Some(service);
    let mut packet = vec![0; repr.header_len()];
    repr.emit(&mut packet).unwrap();
    packet.extend_from_slice(&tcp_header(isn, 0, TCP_SYN));
    packet
}

/// A SAL control message on the flow `src` → `dst` (`flags`, `nonce`,
/// `verno`), with `segment` after it.
pub fn sal_control(
    src: u32,
    dst: u32,
    flags: ControlFlags,
    nonce: [u8; 8],
    verno: u32,
    segment: &[u8],
) -> Vec<u8> {
    let mut repr = SalRepr::data(FlowId::new(src.max(1)).unwrap(), FlowId::new(dst.max(1)), 6);
    repr.control = Some(ControlRepr {
        flags,
        verno,
        ackno: verno.wrapping_add(1),
        nonce,
    });
    let mut packet = vec![0; repr.header_len()];
    repr.emit(&mut packet).unwrap();
    packet.extend_from_slice(segment);
    packet
}

/// A SAL data packet (no extensions) on the flow `src` → `dst`.
pub fn sal_data(src: u32, dst: u32, segment: &[u8]) -> Vec<u8> {
    let repr = SalRepr::data(FlowId::new(src.max(1)).unwrap(), FlowId::new(dst.max(1)), 6);
    let mut packet = vec![0; repr.header_len()];
    repr.emit(&mut packet).unwrap();
    packet.extend_from_slice(segment);
    packet
}

/// A raw IPv4 socket (root only): sends UDP datagrams from any source
/// address and port, to forge packets from a real peer's address.
pub struct Spoofer(OwnedFd);

impl Spoofer {
    /// `None` without the privilege.
    pub fn open() -> Option<Spoofer> {
        // SAFETY: socket(2) with constant arguments; a valid descriptor is
        // owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        // SAFETY: `fd` is a new descriptor nobody else owns.
        (fd >= 0).then(|| Spoofer(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends `payload` in a UDP datagram from `from` to `to` (errors
    /// ignored: a forger does not care).
    pub fn send(&self, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) {
        let total = 28 + payload.len();
        let mut packet = Vec::with_capacity(total);
        packet.extend_from_slice(&[0x45, 0]);
        packet.extend_from_slice(&(total as u16).to_be_bytes());
        // ID 0 (filled in), DF, TTL 64, UDP, checksum 0 (filled in).
        packet.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        packet.extend_from_slice(&from.ip().octets());
        packet.extend_from_slice(&to.ip().octets());
        packet.extend_from_slice(&from.port().to_be_bytes());
        packet.extend_from_slice(&to.port().to_be_bytes());
        packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0]);
        packet.extend_from_slice(payload);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(to.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: the buffer and the address are valid for their lengths
        // for the duration of the call.
        unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
    }
}

/// The process's resident memory, bytes.
pub fn rss() -> usize {
    rss_of("self")
}

/// A process's resident memory (`pid`, or `self`), bytes.
pub fn rss_of(pid: &str) -> usize {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: usize = (statm.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(1) as usize
}

/// The process's open descriptors.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// A server process: this test binary run again for the ignored test
/// `test` (with `SAL_INPROC_CHILD` set, and `envs`), killed if the test
/// ends early.
pub struct ServerProcess(pub std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a [`ServerProcess`] prints after its locator.
pub type ServerLines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

impl ServerProcess {
    /// Starts the server of the ignored test `test` (its stdin piped when
    /// `stdin`), and reads the locator it prints (`SERVER udp:ADDR`).
    pub fn spawn(
        test: &str,
        envs: &[(&str, String)],
        stdin: bool,
    ) -> (ServerProcess, SocketAddrV4, ServerLines) {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", test, "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env("SAL_INPROC_CHILD", "1")
            .envs(envs.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::piped());
        if stdin {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().expect("the server process");
        let stdout = child.stdout.take().unwrap();
        let server = ServerProcess(child);
        let mut lines = std::io::BufReader::new(stdout).lines();
        let locator = loop {
            let line = lines.next().expect("the server's locator").unwrap();
            // After the harness's "test NAME ... ".
            if let Some((_, locator)) = line.split_once("SERVER udp:") {
                break locator.trim().parse::<SocketAddrV4>().expect("a locator");
            }
        };
        (server, locator, lines)
    }
}
