//! `testnet`: the network-namespace harness every real-interface test in the
//! workspace uses (DESIGN.md, "Testing", item 4).
//!
//! Hosts are network namespaces (`ip netns add`), joined by veth pairs
//! (point to point) or by a bridge that lives in a namespace of its own (a
//! "LAN"). Everything is owned by Drop guards, so a test that fails or panics
//! still tears down what it built: [`Netns`] kills every process still running
//! in its namespace and deletes it, [`NsChild`] kills the program it guards.
//!
//! Safety rails, because these tests run as root on developer machines and CI:
//!
//! - nothing here touches the namespace the test runs in (the host's own
//!   interfaces, routes and rules): every `ip` call is `ip -n NS ...` or
//!   `ip netns exec NS ...` on a namespace this process created;
//! - addresses given to [`veth`], [`Netns::add_addr`] and the topology builder
//!   must be inside 10.0.0.0/8;
//! - namespace names are unique per process and per test
//!   (`sv-<pid>-<n>-<label>`), so tests can run in parallel, and namespaces
//!   left behind by a process that was SIGKILLed are removed the next time
//!   the harness starts.
//!
//! Tests that need root call [`require_root!`] first; when not root the test
//! returns early and prints `SKIPPED (needs root): <test name>` straight to
//! the terminal (bypassing libtest's output capture), so a skip is never
//! mistaken for a pass.
//!
//! `iproute2` (the `ip` command) is required; when it is missing every
//! constructor fails with [`Error::MissingTool`], which says so.
//!
//! [`tunfwd`] is the plain TUN-to-TUN forwarder baseline of the performance
//! method, built on this harness (the `tun-forwarder` program prints it).
//! [`conntrack::flush`] makes a namespace's NAT forget its mappings.
//! [`mod@bench`] holds what the connection benchmarks share.

#![warn(missing_docs)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod bench;
pub mod conntrack;
pub mod tunfwd;

/// Everything that can go wrong while building or driving a test network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line tool the harness drives is not installed.
    #[error("`{tool}` not found: {hint}")]
    MissingTool {
        /// The program that was looked for.
        tool: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// A name or address given to the harness was refused before anything ran.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of value (interface name, address, ...).
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the error message.
        command: String,
        /// Exit status, rendered.
        status: String,
        /// What the command printed on stderr (trimmed).
        stderr: String,
    },
    /// An I/O error (spawning a program, opening a namespace file, ...).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` into a test namespace failed.
    #[error("entering network namespace {ns}: {source}")]
    Setns {
        /// The namespace name.
        ns: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A measurement (see [`tunfwd`]) could not be taken.
    #[error("{what}: {reason}")]
    Measurement {
        /// What was measured.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A guarded program did not finish in time.
    #[error("{what} did not finish within {timeout:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// Result type of the harness.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

// ---------------------------------------------------------------------------
// root / tools
// ---------------------------------------------------------------------------

/// True when the effective user is root (namespace tests need CAP_NET_ADMIN
/// and CAP_SYS_ADMIN; we simply ask for root, as CI runs as root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns `true` (the caller must return) when not root, after printing
/// `SKIPPED (needs root): <test_name>` loudly on the terminal.
///
/// The message is written with `io::stderr()` directly rather than
/// `eprintln!`, because libtest captures the `print!` family and shows it
/// only for failing tests: a skip must be visible in a passing run.
pub fn skip_unless_root(test_name: &str) -> bool {
    if is_root() {
        return false;
    }
    // One write, so parallel tests do not interleave their messages.
    let msg = format!(
        "\n*** SKIPPED (needs root): {test_name} ***\n    (network-namespace test; run as root to execute it)\n"
    );
    let _ = io::stderr().lock().write_all(msg.as_bytes());
    true
}

/// Expands to the path of the enclosing function (`crate::module::test_fn`),
/// used by [`require_root!`] to name the skipped test.
#[macro_export]
macro_rules! function_name {
    () => {{
        fn __f() {}
        fn __type_name_of<T>(_: T) -> &'static str {
            ::std::any::type_name::<T>()
        }
        let name = __type_name_of(__f);
        name.strip_suffix("::__f").unwrap_or(name)
    }};
}

/// First statement of a namespace test: when not root, prints
/// `SKIPPED (needs root): <test>` and returns from the test.
///
/// `require_root!()` returns `()`; `require_root!(value)` returns `value`
/// (for tests returning `Result`, e.g. `require_root!(Ok(()))`).
#[macro_export]
macro_rules! require_root {
    () => {
        if $crate::skip_unless_root($crate::function_name!()) {
            return;
        }
    };
    ($ret:expr) => {
        if $crate::skip_unless_root($crate::function_name!()) {
            return $ret;
        }
    };
}

/// Checks once per process that `ip` (iproute2) is installed.
pub fn ensure_iproute2() -> Result<()> {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    let ok = *PRESENT.get_or_init(|| {
        Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    if ok {
        Ok(())
    } else {
        Err(Error::MissingTool {
            tool: "ip",
            hint: "install iproute2 (apt-get install -y iproute2); namespace tests build hosts with it",
        })
    }
}

/// Checks that an arbitrary program is on PATH (e.g. `nft`, `iperf3`).
pub fn tool_available(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.is_file()
        })
    })
}

// ---------------------------------------------------------------------------
// running commands
// ---------------------------------------------------------------------------

fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Runs `cmd` to completion, failing with [`Error::Command`] on a non-zero
/// exit; returns stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running `{}`", render(cmd))))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: render(cmd),
            status: status_text(out.status),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------
// validation
// ---------------------------------------------------------------------------

/// Validates a Linux interface name (1..=15 bytes, no '/', ':', whitespace
/// or quotes).
pub fn check_ifname(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::Invalid {
            what: "interface name",
            value: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name.chars().any(|c| {
        c == '/' || c == ':' || c == '"' || c == '\'' || c.is_whitespace() || c.is_control()
    }) {
        return bad("must not contain '/', ':', quotes or whitespace");
    }
    Ok(())
}

/// Parses `A.B.C.D/len` and checks that it lies inside 10.0.0.0/8: the
/// harness refuses any other range so a mistake can never collide with a
/// real network.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = |reason| Error::Invalid {
        what: "address",
        value: cidr.to_owned(),
        reason,
    };
    let (a, l) = cidr
        .split_once('/')
        .ok_or_else(|| bad("expected A.B.C.D/LEN"))?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
    let len: u8 = l.parse().map_err(|_| bad("bad prefix length"))?;
    if len > 32 {
        return Err(bad("prefix length above 32"));
    }
    if addr.octets()[0] != 10 {
        return Err(bad("test addresses must be inside 10.0.0.0/8"));
    }
    Ok((addr, len))
}

// ---------------------------------------------------------------------------
// namespaces
// ---------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);
const PREFIX: &str = "sv-";

fn ip_netns_pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in namespace `name` (never ourselves), waiting up to
/// two seconds for them to go.
fn kill_all_in(name: &str) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids: Vec<i32> = ip_netns_pids(name)
            .into_iter()
            .filter(|&p| p != me)
            .collect();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn delete_ns(name: &str) {
    kill_all_in(name);
    let res = Command::new("ip")
        .args(["netns", "del", name])
        .stdin(Stdio::null())
        .output();
    match res {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let _ = writeln!(
                io::stderr(),
                "testnet: `ip netns del {name}` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Err(e) => {
            let _ = writeln!(io::stderr(), "testnet: `ip netns del {name}`: {e}");
        }
    }
}

/// Deletes namespaces named `sv-<pid>-...` whose creating process no longer
/// exists (left by a test binary that was SIGKILLed, where no Drop ran).
/// Runs once per process, from the first [`Netns::new`].
pub fn remove_orphans() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 0 || pid == std::process::id() as i32 {
            continue;
        }
        // kill(pid, 0): ESRCH means the creator is gone.
        if let Err(nix::errno::Errno::ESRCH) = kill(Pid::from_raw(pid), None) {
            let _ = writeln!(io::stderr(), "testnet: removing orphaned namespace {name}");
            delete_ns(&name);
        }
    }
}

/// A network namespace owned by the test: created by [`Netns::new`],
/// deleted on Drop after every process still running in it was killed.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `sv-<pid>-<n>-<label>` (label sanitised to `[A-Za-z0-9_-]`,
    /// at most 32 characters) and brings its loopback up.
    pub fn new(label: &str) -> Result<Netns> {
        ensure_iproute2()?;
        static ORPHANS: OnceLock<()> = OnceLock::new();
        ORPHANS.get_or_init(remove_orphans);
        let clean: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{clean}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name, as used by `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS...`, failing on a non-zero exit; returns stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A `Command` that runs `program` inside the namespace
    /// (`ip netns exec NS program`); add arguments and stdio as needed and
    /// pass it to [`Netns::spawn_cmd`] or run it directly.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args...` inside the namespace to completion and returns
    /// its full output, whatever the exit status.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args).stdin(Stdio::null());
        c.output()
            .map_err(io_err(format!("running `{}`", render(&c))))
    }

    /// Like [`Netns::exec`] but fails on a non-zero exit; returns stdout.
    pub fn exec_ok<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        run_ok(&mut c)
    }

    /// Starts `program args...` inside the namespace, stdin and stdout
    /// discarded, stderr inherited. The returned guard kills it on Drop.
    pub fn spawn<I, S>(&self, program: &str, args: I) -> Result<NsChild>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(program);
        c.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        self.spawn_cmd(c)
    }

    /// Starts a prepared command (normally built with [`Netns::command`]) and
    /// guards it.
    pub fn spawn_cmd(&self, mut cmd: Command) -> Result<NsChild> {
        let what = render(&cmd);
        let child = cmd.spawn().map_err(io_err(format!("spawning `{what}`")))?;
        Ok(NsChild {
            child: Some(child),
            what,
        })
    }

    /// Runs `f` on a fresh thread that has entered this namespace with
    /// `setns(2)` (network namespace only), and returns its result.
    ///
    /// Network namespaces are per thread, so sockets, netlink, TUN devices
    /// and `/proc/sys/net` accessed from `f` are this namespace's, while the
    /// rest of the test process stays where it was. Use
    /// `/proc/thread-self/...` rather than `/proc/self/...` inside `f`
    /// (`/proc/self` is the main thread). Child processes spawned from `f`
    /// inherit the namespace. A panic in `f` is propagated.
    pub fn run<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(io_err(format!("opening {path}")))?;
        let ns = self.name.clone();
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| Error::Setns { ns, source })?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Reads a sysctl of this namespace (`key` in dotted or slashed form,
    /// e.g. `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key);
        self.run(|| std::fs::read_to_string(&path))?
            .map(|s| s.trim().to_owned())
            .map_err(io_err(format!("reading {path}")))
    }

    /// Writes a sysctl of this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key);
        self.run(|| std::fs::write(&path, value))?
            .map_err(io_err(format!("writing {path}")))
    }

    /// Adds `cidr` (inside 10.0.0.0/8) to `ifname` and brings it up.
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        check_ifname(ifname)?;
        parse_cidr(cidr)?;
        self.ip(["addr", "add", cidr, "dev", ifname])?;
        self.ip(["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// PIDs of the processes whose network namespace this is.
    pub fn pids(&self) -> Vec<i32> {
        ip_netns_pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_ns(&self.name);
    }
}

/// `net.ipv4.conf.eth0.forwarding` → `/proc/sys/net/ipv4/conf/eth0/forwarding`.
///
/// A key containing '/' is taken as a path below /proc/sys (so interface
/// names with dots can be expressed as `net/ipv4/conf/eth0.5/forwarding`).
pub fn sysctl_path(key: &str) -> String {
    if key.contains('/') {
        format!("/proc/sys/{}", key.trim_start_matches('/'))
    } else {
        format!("/proc/sys/{}", key.replace('.', "/"))
    }
}

/// Creates a veth pair `a:if_a` — `b:if_b` (created directly inside the
/// namespaces, never in the caller's), assigns the addresses (`"10.x.y.z/len"`;
/// an empty string means none) and brings both ends up.
pub fn veth(
    a: &Netns,
    if_a: &str,
    addr_a: &str,
    b: &Netns,
    if_b: &str,
    addr_b: &str,
) -> Result<()> {
    veth_mtu(a, if_a, addr_a, b, if_b, addr_b, None)
}

/// [`veth`] with an explicit MTU on both ends.
pub fn veth_mtu(
    a: &Netns,
    if_a: &str,
    addr_a: &str,
    b: &Netns,
    if_b: &str,
    addr_b: &str,
    mtu: Option<u32>,
) -> Result<()> {
    check_ifname(if_a)?;
    check_ifname(if_b)?;
    for addr in [addr_a, addr_b] {
        if !addr.is_empty() {
            parse_cidr(addr)?;
        }
    }
    a.ip([
        "link",
        "add",
        if_a,
        "type",
        "veth",
        "peer",
        "name",
        if_b,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname, addr) in [(a, if_a, addr_a), (b, if_b, addr_b)] {
        if let Some(mtu) = mtu {
            ns.ip(["link", "set", ifname, "mtu", &mtu.to_string()])?;
        }
        if !addr.is_empty() {
            ns.ip(["addr", "add", addr, "dev", ifname])?;
        }
        ns.ip(["link", "set", ifname, "up"])?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// guarded children
// ---------------------------------------------------------------------------

/// A program started in a namespace; SIGKILLed and reaped on Drop.
#[derive(Debug)]
pub struct NsChild {
    child: Option<Child>,
    what: String,
}

impl NsChild {
    /// The process id (the program itself: `ip netns exec` execs it).
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The underlying `Child` (e.g. to take its piped stdout).
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Non-blocking: the exit status if the program has finished.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c
                .try_wait()
                .map_err(io_err(format!("waiting for `{}`", self.what))),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for the program to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: self.what.clone(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` (e.g. SIGTERM to test a daemon's clean shutdown).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = Pid::from_raw(self.id() as i32);
        kill(pid, signal).map_err(|e| Error::Io {
            context: format!("signalling `{}`", self.what),
            source: io::Error::from_raw_os_error(e as i32),
        })
    }

    /// SIGTERM, then SIGKILL if still running after `grace`; returns the
    /// exit status.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        let _ = self.signal(Signal::SIGTERM);
        match self.wait_timeout(grace) {
            Ok(st) => Ok(st),
            Err(Error::Timeout { .. }) => {
                let _ = self.signal(Signal::SIGKILL);
                self.wait_timeout(Duration::from_secs(5))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for exit and collects piped stdout/stderr
    /// (whatever was configured as piped). On timeout the program is killed.
    pub fn wait_with_output(mut self, timeout: Duration) -> Result<Output> {
        let st = self.wait_timeout(timeout);
        let Some(child) = self.child.take() else {
            return Err(Error::Timeout {
                what: self.what.clone(),
                timeout,
            });
        };
        match st {
            Ok(_) => child
                .wait_with_output()
                .map_err(io_err(format!("collecting output of `{}`", self.what))),
            Err(e) => {
                self.child = Some(child);
                Err(e)
            }
        }
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// silence
// ---------------------------------------------------------------------------

/// A loopback UDP address where nobody answers, silently: a socket of
/// the test binary's, bound for its whole run, that never reads. A SAL
/// connect forwarded there waits out its SYN's retransmissions. (A port
/// nobody is bound to would not do: the kernel answers it with an ICMP
/// port unreachable, which sald and the programs' SAL hosts take for a
/// refusal, as kernel TCP does: the connect fails at once.)
pub fn silent_hole() -> std::net::SocketAddrV4 {
    static HOLE: std::sync::OnceLock<(std::net::UdpSocket, std::net::SocketAddrV4)> =
        std::sync::OnceLock::new();
    let (_, hole) = HOLE.get_or_init(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.9:0").expect("bind the hole");
        let hole = match socket.local_addr().expect("the hole's address") {
            std::net::SocketAddr::V4(hole) => hole,
            other => panic!("not IPv4: {other}"),
        };
        (socket, hole)
    });
    *hole
}

// ---------------------------------------------------------------------------
// waiting
// ---------------------------------------------------------------------------

/// `program args...` as a service manager starts it with `socket` passed
/// (systemd's socket activation, `sd_listen_fds(3)`): the socket at
/// descriptor 3, `LISTEN_FDS=1`, and `LISTEN_PID` the process's own id (a
/// shell that `exec`s keeps its id).
pub fn socket_activated(
    program: &std::path::Path,
    args: &[&OsStr],
    socket: &impl std::os::fd::AsRawFd,
) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@""#)
        .arg(program)
        .args(args);
    let fd = socket.as_raw_fd();
    // SAFETY: only async-signal-safe calls (`fcntl`, `dup2`) between fork
    // and exec, on a descriptor the child holds.
    unsafe {
        cmd.pre_exec(move || {
            use nix::fcntl::{fcntl, FcntlArg, FdFlag};
            match fd {
                // `dup2` onto itself would keep close-on-exec set.
                3 => fcntl(3, FcntlArg::F_SETFD(FdFlag::empty())).map(drop),
                _ => nix::unistd::dup2(fd, 3).map(drop),
            }
            .map_err(std::io::Error::from)
        })
    };
    cmd
}

/// Polls `cond` every 20 ms until it is true or `timeout` elapses; returns
/// whether it became true. Tests use it instead of fixed sleeps.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for(timeout, || cond().then_some(())).is_some()
}

/// Polls `f` every 20 ms until it yields `Some` or `timeout` elapses.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// topologies
// ---------------------------------------------------------------------------

/// One interface of a host built by [`TopologyBuilder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIface {
    /// Interface name inside the host namespace (`eth0`, `eth1`, ...).
    pub name: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Prefix length of the attached subnet.
    pub prefix_len: u8,
    /// For a point-to-point link: the index of the host at the other end and
    /// its address. `None` for a LAN interface.
    pub peer: Option<(usize, Ipv4Addr)>,
}

/// A host: a namespace and its interfaces, in the order they were attached.
#[derive(Debug)]
pub struct Host {
    /// The namespace.
    pub ns: Netns,
    /// Interfaces (`eth0`, `eth1`, ... in attachment order).
    pub ifaces: Vec<HostIface>,
}

impl Host {
    /// The interface called `name`, if any.
    pub fn iface(&self, name: &str) -> Option<&HostIface> {
        self.ifaces.iter().find(|i| i.name == name)
    }

    /// The address of the first interface (convenient for one-link hosts).
    pub fn addr(&self) -> Option<Ipv4Addr> {
        self.ifaces.first().map(|i| i.addr)
    }
}

/// Hosts joined by point-to-point veth links and optionally one LAN.
/// Dropping it deletes every namespace.
#[derive(Debug)]
pub struct Topology {
    /// The hosts, by index.
    pub hosts: Vec<Host>,
    /// The bridge namespace of the LAN, if one was requested.
    pub lan: Option<Netns>,
}

impl Topology {
    /// Host `i`. Panics if out of range (test code indexes its own topology).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}

/// Builds a [`Topology`].
///
/// Addressing is fixed and documented so tests can rely on it:
/// point-to-point link `k` (in the order of [`TopologyBuilder::link`] calls)
/// is `10.1.k.1/24` on its first host and `10.1.k.2/24` on its second; LAN
/// member `m` (in the order given to [`TopologyBuilder::lan`]) is
/// `10.2.0.(m+1)/24`. Host interfaces are named `eth0`, `eth1`, ... in the
/// order links are declared (LAN last); the LAN namespace holds bridge `br0`
/// and ports `p0`, `p1`, ...
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    label: String,
    hosts: usize,
    links: Vec<(usize, usize)>,
    lan: Vec<usize>,
    mtu: Option<u32>,
}

impl TopologyBuilder {
    /// `hosts` hosts, labelled `<label>-h<i>`.
    pub fn new(label: &str, hosts: usize) -> Self {
        TopologyBuilder {
            label: label.to_owned(),
            hosts,
            links: Vec::new(),
            lan: Vec::new(),
            mtu: None,
        }
    }

    /// A point-to-point veth link between hosts `a` and `b`.
    pub fn link(mut self, a: usize, b: usize) -> Self {
        self.links.push((a, b));
        self
    }

    /// A LAN (a bridge in its own namespace) joining `members`.
    pub fn lan(mut self, members: &[usize]) -> Self {
        self.lan = members.to_vec();
        self
    }

    /// MTU of every veth (default: the kernel's, 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Creates everything; on error, whatever was created is torn down.
    pub fn build(self) -> Result<Topology> {
        let bad = |reason| Error::Invalid {
            what: "topology",
            value: self.label.clone(),
            reason,
        };
        if self.links.len() > 256 || self.lan.len() > 250 {
            return Err(bad("at most 256 links and 250 LAN members"));
        }
        if self
            .links
            .iter()
            .any(|&(a, b)| a >= self.hosts || b >= self.hosts || a == b)
            || self.lan.iter().any(|&m| m >= self.hosts)
        {
            return Err(bad(
                "link or LAN member refers to a missing host (or a host to itself)",
            ));
        }
        let mut hosts = Vec::with_capacity(self.hosts);
        for i in 0..self.hosts {
            hosts.push(Host {
                ns: Netns::new(&format!("{}-h{i}", self.label))?,
                ifaces: Vec::new(),
            });
        }
        let mut topo = Topology { hosts, lan: None };
        for (k, &(a, b)) in self.links.iter().enumerate() {
            let addr_a = Ipv4Addr::new(10, 1, k as u8, 1);
            let addr_b = Ipv4Addr::new(10, 1, k as u8, 2);
            let if_a = format!("eth{}", topo.hosts[a].ifaces.len());
            let if_b = format!("eth{}", topo.hosts[b].ifaces.len());
            veth_mtu(
                &topo.hosts[a].ns,
                &if_a,
                &format!("{addr_a}/24"),
                &topo.hosts[b].ns,
                &if_b,
                &format!("{addr_b}/24"),
                self.mtu,
            )?;
            topo.hosts[a].ifaces.push(HostIface {
                name: if_a,
                addr: addr_a,
                prefix_len: 24,
                peer: Some((b, addr_b)),
            });
            topo.hosts[b].ifaces.push(HostIface {
                name: if_b,
                addr: addr_b,
                prefix_len: 24,
                peer: Some((a, addr_a)),
            });
        }
        if !self.lan.is_empty() {
            let lan = Netns::new(&format!("{}-lan", self.label))?;
            lan.ip(["link", "add", "br0", "type", "bridge"])?;
            lan.ip(["link", "set", "br0", "up"])?;
            for (m, &h) in self.lan.iter().enumerate() {
                let addr = Ipv4Addr::new(10, 2, 0, m as u8 + 1);
                let host_if = format!("eth{}", topo.hosts[h].ifaces.len());
                let port = format!("p{m}");
                veth_mtu(
                    &topo.hosts[h].ns,
                    &host_if,
                    &format!("{addr}/24"),
                    &lan,
                    &port,
                    "",
                    self.mtu,
                )?;
                lan.ip(["link", "set", &port, "master", "br0"])?;
                topo.hosts[h].ifaces.push(HostIface {
                    name: host_if,
                    addr,
                    prefix_len: 24,
                    peer: None,
                });
            }
            topo.lan = Some(lan);
        }
        Ok(topo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_validation() {
        assert_eq!(
            parse_cidr("10.1.2.3/24").ok(),
            Some((Ipv4Addr::new(10, 1, 2, 3), 24))
        );
        assert!(parse_cidr("192.168.1.1/24").is_err());
        assert!(parse_cidr("10.1.2.3").is_err());
        assert!(parse_cidr("10.1.2.3/33").is_err());
        assert!(parse_cidr("10.1.2/8").is_err());
    }

    #[test]
    fn ifname_validation() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a-very-long-name0").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("a/b").is_err());
    }

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward"),
            "/proc/sys/net/ipv4/ip_forward"
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.5/forwarding"),
            "/proc/sys/net/ipv4/conf/eth0.5/forwarding"
        );
    }

    #[test]
    fn function_name_names_the_test() {
        let n = function_name!();
        assert!(n.ends_with("tests::function_name_names_the_test"), "{n}");
    }

    #[test]
    fn namespace_lifecycle_and_topology() {
        require_root!();
        let name;
        let orphan: Child;
        {
            let topo = TopologyBuilder::new("selftest", 3)
                .link(0, 1)
                .lan(&[0, 1, 2])
                .mtu(1400)
                .build()
                .expect("build topology");
            let h0 = topo.host(0);
            name = h0.ns.name().to_owned();
            assert_eq!(h0.ifaces[0].addr, Ipv4Addr::new(10, 1, 0, 1));
            assert_eq!(h0.ifaces[1].addr, Ipv4Addr::new(10, 2, 0, 1));
            // p2p and LAN reachability, through the kernel
            let peer = topo.host(1).ifaces[0].addr;
            let lan2 = topo.host(2).ifaces[0].addr;
            for dst in [peer, lan2] {
                let ok = h0.ns.run(move || {
                    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
                    s.connect((dst, 9)).ok()?;
                    Some(())
                });
                assert!(matches!(ok, Ok(Some(()))));
            }
            let link = h0.ns.ip(["link", "show", "eth0"]).expect("ip link");
            assert!(link.contains("mtu 1400"), "{link}");
            // a long-running process gets killed on teardown
            let _sleeper = h0.ns.spawn("sleep", ["30"]).expect("spawn");
            orphan = h0
                .ns
                .command("sleep")
                .arg("30")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn");
            assert!(wait_until(Duration::from_secs(2), || h0.ns.pids().len() >= 2));
            assert_eq!(h0.ns.sysctl("net.ipv4.ip_forward").expect("sysctl"), "0");
            h0.ns
                .set_sysctl("net.ipv4.conf.eth0.forwarding", "1")
                .expect("set");
            assert_eq!(
                h0.ns
                    .sysctl("net.ipv4.conf.eth0.forwarding")
                    .expect("sysctl"),
                "1"
            );
        }
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
        // the unguarded process was killed by the namespace's teardown
        let mut orphan = orphan;
        let status = orphan.wait().expect("wait");
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn refuses_non_test_addresses() {
        require_root!();
        let a = Netns::new("refuse-a").expect("ns");
        let b = Netns::new("refuse-b").expect("ns");
        let err = veth(&a, "x0", "192.168.7.1/24", &b, "x1", "10.0.0.2/24").unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
    }
}

/// A daemon (sald, servd ...) running in a namespace: started with its
/// output in a log file, ready once its Unix control socket accepts
/// connections, and stopped with SIGTERM on drop so that it can undo its
/// own set-up (sald removes its plumbing and lock files) before the
/// namespace goes away.
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: NsChild,
    /// Its control socket.
    pub control: std::path::PathBuf,
    /// Where its stdout and stderr go.
    pub log: std::path::PathBuf,
}

impl Daemon {
    /// Starts `cmd` (made with [`Netns::command`], arguments included) with
    /// stdout and stderr in `log`, and waits up to 10 s for `control` to
    /// accept connections. On failure the error carries the log.
    pub fn start(
        ns: &Netns,
        mut cmd: Command,
        control: impl Into<std::path::PathBuf>,
        log: impl Into<std::path::PathBuf>,
    ) -> Result<Daemon> {
        let (control, log) = (control.into(), log.into());
        let file = File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let copy = file
            .try_clone()
            .map_err(io_err(format!("cloning {}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(copy).stderr(file);
        let mut child = ns.spawn_cmd(cmd)?;
        let ready = wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&control).is_ok()
                || !matches!(child.try_wait(), Ok(None))
        });
        if !ready || !matches!(child.try_wait(), Ok(None)) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(Error::Io {
                context: format!(
                    "daemon with control socket {} did not start:\n{text}",
                    control.display()
                ),
                source: io::Error::other("not ready"),
            });
        }
        Ok(Daemon {
            child,
            control,
            log,
        })
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.terminate(Duration::from_secs(5));
    }
}
