//! Shared by sald's tests and benchmarks: start a real sald in a namespace
//! or run one in this process, talk to it over its control socket (also as
//! another user).

#![allow(dead_code)]

pub mod flood;
pub mod gone;
pub mod program;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use sal::table::Target;
use sal::Locator;
use sal_control::{Request, Response};
use sald::config::{Config, Flags};
use socket_shim::ControlClient;
pub use testnet::Daemon;
use testnet::Netns;

/// Starts sald in `ns` on `ifaces` with its control socket and log in `dir`
/// (named after `name`); `extra` are more flags. Panics with the log if it
/// does not come up.
pub fn start_sald(ns: &Netns, ifaces: &[&str], dir: &Path, name: &str, extra: &[&str]) -> Daemon {
    start_sald_binary(
        Path::new(env!("CARGO_BIN_EXE_sald")),
        ns,
        ifaces,
        dir,
        name,
        extra,
    )
}

/// [`start_sald`] with another sald binary (a baseline build, say).
pub fn start_sald_binary(
    program: &Path,
    ns: &Netns,
    ifaces: &[&str],
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> Daemon {
    let mut cmd = ns.command(program);
    for iface in ifaces {
        cmd.args(["--iface", iface]);
    }
    let control = dir.join(format!("{name}.sock"));
    cmd.arg("--control").arg(&control).args(extra);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    Daemon::start(ns, cmd, control, dir.join(format!("{name}.log")))
        .unwrap_or_else(|e| panic!("sald on {name}: {e}"))
}

/// Requests to a running sald.
pub trait Sald {
    /// Its control socket.
    fn control_path(&self) -> &Path;

    /// A fresh control connection.
    fn client(&self) -> ControlClient {
        ControlClient::connect_to(self.control_path()).expect("control socket")
    }

    /// One request on a fresh connection.
    fn request(&self, request: Request) -> Response {
        self.client()
            .request(&request)
            .expect("control request")
            .response
    }

    /// Adds a FORWARD target (priority 0) toward a native locator.
    fn forward(&self, prefix: &str, to: Ipv4Addr, weight: u32) {
        self.forward_to(prefix, Locator::Ipv4(to), weight);
    }

    /// Adds a FORWARD target (priority 0).
    fn forward_to(&self, prefix: &str, to: Locator, weight: u32) {
        let response = self.request(Request::AddRule {
            prefix: prefix.parse().expect("prefix"),
            target: Target::Forward {
                locator: to,
                weight,
            },
            priority: 0,
        });
        assert_eq!(response, Response::Ok);
    }

    /// Its counters.
    fn stats(&self) -> sal_control::StatsReport {
        match self.request(Request::Stats) {
            Response::Stats { stats } => *stats,
            other => panic!("no stats: {other:?}"),
        }
    }

    /// Every flow sald lists.
    fn flows(&self) -> Vec<sal::proto::FlowInfo> {
        match self.request(Request::ListFlows) {
            Response::Flows { flows } => flows,
            other => panic!("no flow listing: {other:?}"),
        }
    }

    /// The flow `flow`, if sald lists it.
    fn flow(&self, flow: sal::FlowId) -> Option<sal::proto::FlowInfo> {
        self.flows().into_iter().find(|f| f.flow == flow)
    }

    /// The locator of its first interface.
    fn locator(&self) -> Locator {
        match self.request(Request::ListInterfaces) {
            Response::Interfaces { interfaces, .. } => interfaces[0].locator,
            other => panic!("no interface listing: {other:?}"),
        }
    }
}

impl Sald for Daemon {
    fn control_path(&self) -> &Path {
        &self.control
    }
}

/// A sald run in this process by [`sald::run`] on [`sald::runtime`], on a
/// thread of its own, stopped through its shutdown future.
pub struct InProcess {
    pub control: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Runs a daemon with `config`; waits up to 10 s for its control socket.
    pub fn start(config: Config) -> InProcess {
        InProcess::start_with(config, || {})
    }

    /// [`InProcess::start`], calling `on_thread` first on the daemon's own
    /// thread (where its whole runtime runs).
    pub fn start_with(config: Config, on_thread: fn()) -> InProcess {
        let control = config.control.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            on_thread();
            let runtime = sald::runtime()?;
            runtime.block_on(sald::run(config, async {
                let _ = stopped.await;
            }))
        });
        let mut daemon = InProcess {
            control,
            stop: Some(stop),
            thread: Some(thread),
        };
        let ready = testnet::wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&daemon.control).is_ok()
                || daemon.thread.as_ref().is_some_and(|t| t.is_finished())
        });
        if !ready || daemon.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let error = daemon.stop();
            panic!("in-process sald did not start: {error:?}");
        }
        daemon
    }

    /// Completes the shutdown future and waits for `run` to return.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("sald's thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Sald for InProcess {
    fn control_path(&self) -> &Path {
        &self.control
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Two daemons in this process, UDP mode on loopback (the server on
/// 127.0.0.2, the client on 127.0.0.1), the client's default rule toward
/// the server.
pub struct InProcessPair {
    pub server: InProcess,
    pub client: InProcess,
    _dir: Scratch,
}

impl InProcessPair {
    /// Starts them; `label` names the scratch directory.
    pub fn new(label: &str) -> InProcessPair {
        let dir = Scratch::new(label);
        let server = InProcess::start(udp_config(&dir, "server", [127, 0, 0, 2].into()));
        let client = InProcess::start(udp_config(&dir, "client", [127, 0, 0, 1].into()));
        client.forward_to("0/0", server.locator(), 1);
        InProcessPair {
            server,
            client,
            _dir: dir,
        }
    }
}

/// A sald process in UDP mode on `udp` (an address and port, 0 for any),
/// with its control socket in `dir`; killed on drop. `configure` adds to
/// its command (flags, a descriptor limit).
pub struct SaldProcess {
    child: std::process::Child,
    pub control: PathBuf,
}

impl SaldProcess {
    pub fn start(
        dir: &Path,
        name: &str,
        udp: &str,
        configure: impl FnOnce(&mut std::process::Command),
    ) -> SaldProcess {
        let control = dir.join(format!("{name}.sock"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sald"));
        cmd.args(["--udp", udp, "--control"])
            .arg(&control)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        configure(&mut cmd);
        SaldProcess::spawn(cmd, control, name)
    }

    /// Spawns `cmd`, a sald whose control socket is `control`, and waits
    /// up to 10 s for that socket.
    pub fn spawn(mut cmd: std::process::Command, control: PathBuf, name: &str) -> SaldProcess {
        let child = cmd.spawn().expect("sald");
        let process = SaldProcess { child, control };
        assert!(
            testnet::wait_until(Duration::from_secs(10), || {
                std::os::unix::net::UnixStream::connect(&process.control).is_ok()
            }),
            "sald {name} did not start"
        );
        process
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> u64 {
        rss(self.child.id())
    }

    /// Its process ID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Sald for SaldProcess {
    fn control_path(&self) -> &Path {
        &self.control
    }
}

impl Drop for SaldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration for a daemon in UDP mode on loopback address `ip` (any
/// free port), with its control socket in `dir`. Daemons that talk to each
/// other need different addresses (the SAL tells its own locators by
/// address).
pub fn udp_config(dir: &Path, name: &str, ip: Ipv4Addr) -> Config {
    let control = dir.join(format!("{name}.sock"));
    let udp = format!("{ip}:0");
    let flags = Flags::try_parse_from([
        "sald",
        "--udp",
        udp.as_str(),
        "--control",
        control.to_str().expect("UTF-8 path"),
    ])
    .expect("flags");
    Config::load(flags).expect("config")
}

/// A control connection made as user `uid` (needs root): the connecting
/// thread alone switches its effective user, so sald sees `uid` in the
/// connection's peer credentials.
pub fn client_as(path: &Path, uid: u32) -> socket_shim::Result<ControlClient> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        become_user(uid);
        ControlClient::connect_to(&path)
    })
    .join()
    .expect("connecting thread")
}

/// A raw connection to `path` as user `uid` (see [`client_as`]).
pub fn raw_as(path: &Path, uid: u32) -> std::io::Result<std::os::unix::net::UnixStream> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        become_user(uid);
        std::os::unix::net::UnixStream::connect(&path)
    })
    .join()
    .expect("connecting thread")
}

/// Switches the calling thread's effective user to `uid`: the raw system
/// call, which (unlike glibc's `seteuid`) changes this thread only. Callers
/// are threads that end right after.
pub fn become_user(uid: u32) {
    // SAFETY: a plain system call with integer arguments; -1 leaves the real
    // and saved user IDs unchanged. It affects only the calling thread.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_setresuid,
            -1 as nix::libc::c_long,
            nix::libc::c_long::from(uid),
            -1 as nix::libc::c_long,
        )
    };
    assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
}

/// `len` pseudo-random bytes from `seed` (xorshift32), to check transfers
/// byte for byte.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A scratch directory for control sockets and logs, removed on drop (drop
/// it after the daemons that use it).
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sald-test-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Raises this process's descriptor limit, soft and hard, to at least
/// `want` (root may raise the hard limit up to `/proc/sys/fs/nr_open`), so
/// that it can hold that many flows and daemons started after inherit it.
/// Returns the soft limit now.
pub fn raise_fd_limit(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(hard);
    let target = want.min(ceiling).max(soft);
    if target > soft && setrlimit(Resource::RLIMIT_NOFILE, target, target.max(hard)).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit").0
}

/// Resident memory of process `pid`, bytes (`VmRSS`).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// Opens `count` stream flows to `service` through the control socket at
/// `control`, over `connections` control connections at once (each asks
/// for its share one after another); returns their sockets.
pub fn open_flows(
    control: &Path,
    service: sal::ServiceId,
    count: usize,
    connections: usize,
) -> Vec<std::os::unix::net::UnixStream> {
    let per = count.div_ceil(connections);
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let control = control.to_owned();
            let n = per.min(count.saturating_sub(i * per));
            std::thread::spawn(move || {
                let mut client = ControlClient::connect_to(&control).expect("control socket");
                (0..n)
                    .map(|_| {
                        let reply = client
                            .request(&Request::Connect {
                                service,
                                protocol: sal::wire::TransportProtocol::Stream,
                                timeout_ms: Some(10_000),
                            })
                            .expect("connect request");
                        match (reply.response, reply.fd) {
                            (Response::Connected { .. }, Some(fd)) => {
                                std::os::unix::net::UnixStream::from(fd)
                            }
                            (other, _) => panic!("connect failed: {other:?}"),
                        }
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().expect("connecting thread"))
        .collect()
}

/// Accepts `count` flows of `listener` (on its own control connection, one
/// after another) and returns their sockets.
pub fn accept_flows(
    listener: &socket_shim::ServiceListener,
    count: usize,
) -> Vec<socket_shim::ServiceStream> {
    (0..count)
        .map(|_| listener.accept().expect("accept").0)
        .collect()
}

/// Set in the environment of a re-executed test or bench binary to make it
/// a flow holder (see [`FlowHolder`]): `CONTROL_PATH PREFIX COUNT`.
pub const HOLDER_ENV: &str = "SALD_TEST_HOLD_FLOWS";

/// Another process that binds a prefix on a daemon, accepts flows and keeps
/// them open until dropped: this same binary, re-executed as the holder.
/// Descriptors are limited per process (here 20,000, and without
/// `CAP_SYS_RESOURCE` no process may raise that), so the two ends of
/// 10,000 flows cannot all live in one process.
pub struct FlowHolder {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
}

impl FlowHolder {
    /// Starts the holder (this binary run with `args`, which must make it
    /// call [`hold_flows_if_asked`]) for `count` flows of `prefix` on the
    /// daemon at `control`; returns once the prefix is bound.
    pub fn start(args: &[&str], control: &Path, prefix: &str, count: usize) -> FlowHolder {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(args)
            .env(
                HOLDER_ENV,
                format!("{} {prefix} {count}", control.display()),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("flow holder");
        let stdout = child.stdout.take().expect("holder's stdout");
        let mut holder = FlowHolder {
            child,
            lines: std::io::BufReader::new(stdout).lines(),
        };
        holder.expect("bound");
        holder
    }

    /// Reads the holder's output up to its line `HOLDER <what>`.
    fn expect(&mut self, what: &str) {
        let wanted = format!("HOLDER {what}");
        for line in self.lines.by_ref() {
            if line.expect("holder's output") == wanted {
                return;
            }
        }
        panic!("the flow holder ended before saying {what:?}");
    }

    /// Waits until the holder has accepted all its flows.
    pub fn wait_accepted(&mut self) {
        self.expect("accepted");
    }

    /// The holder's process ID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FlowHolder {
    fn drop(&mut self) {
        // End of its stdin: it closes its flows and exits.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The holder's side of [`FlowHolder`]: if this process was started as a
/// holder, binds, accepts, holds until its stdin ends, and returns true.
pub fn hold_flows_if_asked() -> bool {
    let Ok(spec) = std::env::var(HOLDER_ENV) else {
        return false;
    };
    let mut parts = spec.split(' ');
    let (Some(control), Some(prefix), Some(count)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("bad {HOLDER_ENV}: {spec:?}");
    };
    let count: usize = count.parse().expect("count");
    raise_fd_limit(count as u64 + 1024);
    let control_client = ControlClient::connect_to(control).expect("control socket");
    let backlog = u32::try_from(count).unwrap_or(u32::MAX).saturating_add(16);
    let listener = socket_shim::ServiceListener::bind_via(
        control_client,
        prefix.parse::<sal::ServicePrefix>().expect("prefix"),
        backlog,
    )
    .expect("bind");
    println!("HOLDER bound");
    let flows = accept_flows(&listener, count);
    println!("HOLDER accepted");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    close_gradually(flows);
    true
}

/// Closes flows (any sockets) a hundred at a time, 50 ms apart (2,000 a
/// second, which even a debug build of sald keeps up with on an idle
/// machine): ten thousand flows closed at once make a burst of packets far
/// larger than the TUN device's queue, and what it drops costs
/// retransmission timeouts. A starved sald (a loaded machine) falls behind
/// even at this pace and drops too: callers that wait for the flows to go
/// must allow for a close under loss.
pub fn close_gradually<T>(flows: Vec<T>) {
    let mut flows = flows.into_iter().peekable();
    while flows.peek().is_some() {
        flows.by_ref().take(100).for_each(drop);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two hosts joined by a veth pair, a sald on each, the client's default
/// rule toward the server. Dropped in order: the daemons (SIGTERM, so they
/// undo their plumbing), their scratch directory, the namespaces.
pub struct DaemonPair {
    pub client: Daemon,
    pub server: Daemon,
    _dir: Scratch,
    pub net: testnet::Topology,
}

impl DaemonPair {
    /// Builds it; `label` names the namespaces and the scratch directory.
    pub fn new(label: &str) -> DaemonPair {
        let net = testnet::TopologyBuilder::new(label, 2)
            .link(0, 1)
            .build()
            .expect("namespaces");
        let dir = Scratch::new(label);
        let start = |host: &testnet::Host, name| {
            start_sald(&host.ns, &[&host.ifaces[0].name], &dir, name, &[])
        };
        let client = start(net.host(0), "client");
        let server = start(net.host(1), "server");
        client.forward("0/0", net.host(1).addr().expect("address"), 1);
        DaemonPair {
            client,
            server,
            _dir: dir,
            net,
        }
    }
}

/// A UDP locator where nobody answers, silently
/// ([`testnet::silent_hole`]).
pub fn silent_hole() -> Locator {
    Locator::Udp(testnet::silent_hole())
}
