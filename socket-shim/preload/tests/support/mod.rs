//! Shared by the shim's integration tests: a sald on loopback UDP (no
//! namespaces needed: client and server share one sald, which DEMUXes the
//! flow to the local listener), the C test program, and child processes
//! that are killed if a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's target directory for this profile (where `sald`,
/// `serval-run` and `libserval_shim.so` are).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or build it first: `cargo build --workspace`)",
        path.display()
    );
    path
}

/// A child process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(what: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            what: what.to_string(),
        }
    }

    /// Waits for the child to print a line containing `marker` on stdout
    /// (which must be piped).
    pub fn wait_ready(&mut self, marker: &str) {
        let stdout = self.child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains(marker) => break,
                Some(Ok(_)) => continue,
                _ => panic!("{} exited before saying {marker:?}", self.what),
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("{} did not finish within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits and asserts a zero exit status.
    pub fn success(&mut self, timeout: Duration) {
        let status = self.wait_timeout(timeout);
        assert!(status.success(), "{} failed: {status}", self.what);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A sald on loopback UDP with a private control socket, stopped on drop
/// with SIGTERM (so it cleans up after itself).
pub struct Sald {
    proc: Proc,
    pub control: PathBuf,
    pub dir: tempfile::TempDir,
    /// Its UDP link's address.
    pub udp: SocketAddrV4,
}

impl Sald {
    pub fn start() -> Sald {
        Sald::start_on(SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_udp_port()))
    }

    /// A sald on loopback UDP that relays nothing (`--no-relays`): the
    /// in-process mode falls back to the daemon path with it. [`start`]'s
    /// relays, as sald does by default in UDP mode.
    ///
    /// [`start`]: Sald::start
    pub fn start_without_relays() -> Sald {
        let udp = SocketAddrV4::new(Ipv4Addr::LOCALHOST, free_udp_port());
        Sald::start_with(udp, &["--no-relays"])
    }

    /// A sald whose UDP link is `udp`.
    pub fn start_on(udp: SocketAddrV4) -> Sald {
        Sald::start_with(udp, &[])
    }

    /// A sald whose UDP link is `udp`, with `extra` arguments.
    pub fn start_with(udp: SocketAddrV4, extra: &[&str]) -> Sald {
        Sald::spawn(udp, extra, None)
    }

    /// A sald whose UDP link is `udp`, with `extra` arguments and, if
    /// given, a socket bound to `udp` passed as a service manager would
    /// (`LISTEN_PID`, `LISTEN_FDS`) and a config file's text.
    fn spawn(udp: SocketAddrV4, extra: &[&str], passed: Option<(UdpSocket, &str)>) -> Sald {
        let dir = tempfile::tempdir().expect("tempdir");
        let control = dir.path().join("sald.sock");
        let log = std::fs::File::create(dir.path().join("sald.log")).expect("log");
        let mut cmd = match &passed {
            None => Command::new(binary("sald")),
            Some((socket, config)) => {
                let file = dir.path().join("sald.toml");
                std::fs::write(&file, config).expect("sald.toml");
                let args = ["--config".as_ref(), file.as_os_str()];
                testnet::socket_activated(&binary("sald"), &args, socket)
            }
        };
        cmd.arg("--udp")
            .arg(udp.to_string())
            .arg("--control")
            .arg(&control)
            .args(extra)
            .env_remove("SERVAL_CONTROL")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let mut proc = Proc::spawn("sald", &mut cmd);
        // The child has its copy.
        drop(passed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&control).is_err() {
            if Instant::now() > deadline || !matches!(proc.child.try_wait(), Ok(None)) {
                let log = std::fs::read_to_string(dir.path().join("sald.log")).unwrap_or_default();
                panic!("sald did not come up:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Sald {
            proc,
            control,
            dir,
            udp,
        }
    }

    /// `serval-run [ARGS] -- PROGRAM...` against this sald.
    pub fn run(&self, args: &[&str], program: &Path, program_args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("serval-run"));
        cmd.args(args)
            .arg("--")
            .arg(program)
            .args(program_args)
            .env("SERVAL_CONTROL", &self.control)
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for Sald {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.proc.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.proc.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Where nobody answers, silently: a UDP socket bound there that never
/// reads. At a port with no socket the kernel answers with an ICMP port
/// unreachable, which sald and a program's own SAL host (the in-process
/// mode), as kernel TCP, take for a refusal: a connect fails at once.
pub struct Silent(UdpSocket);

impl Silent {
    /// Silence at `at` (panics if the address is taken).
    pub fn at(at: SocketAddrV4) -> Silent {
        Silent(UdpSocket::bind(at).expect("bind a silent UDP socket"))
    }

    /// The host comes up where the silence was: a sald on the silent
    /// socket itself, passed to it as a service manager would (so the
    /// address never has no socket, whose refusal would end a connect
    /// that waits for the host), holding the SYNs for `delayed` (a DELAY
    /// rule), those that waited in the socket first, until a program binds
    /// the service.
    pub fn host(self, delayed: &str) -> Sald {
        let address = self.address();
        let config = format!("[[rules]]\nprefix = \"{delayed}\"\ndelay = true\n");
        Sald::spawn(address, &[], Some((self.0, &config)))
    }

    fn address(&self) -> SocketAddrV4 {
        match self.0.local_addr().expect("the silent address") {
            std::net::SocketAddr::V4(address) => address,
            other => panic!("not IPv4: {other}"),
        }
    }
}

/// An address of loopback host `host` where nobody answers, silently,
/// until a host comes up there ([`Silent::host`]).
pub fn far_host(host: u8) -> (SocketAddrV4, Silent) {
    let far = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), free_udp_port());
    (far, Silent::at(far))
}

/// Makes `sald` forward the services of `prefix` to `locator`.
pub fn forward(sald: &Sald, prefix: &str, locator: SocketAddrV4) {
    socket_shim::ControlClient::connect_to(&sald.control)
        .expect("control")
        .request_ok(&sal_control::Request::AddRule {
            prefix: prefix.parse().unwrap(),
            target: sal::table::Target::Forward {
                locator: sal::Locator::Udp(locator),
                weight: 1,
            },
            priority: 0,
        })
        .expect("rule");
}

/// A free UDP port on 127.0.0.1: bound to port 0, noted, released.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
        .port()
}

/// The C test program (tests/c/serval_test.c), compiled once per test
/// binary.
pub fn c_program() -> &'static Path {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM.get_or_init(|| compile_test_c("serval_test"))
}

/// Compiles `tests/c/NAME.c` (against the shim's `serval.h`) into the
/// target directory as `NAME`; returns its path.
pub fn compile_test_c(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let include = manifest.join("../include");
    compile_c(
        &manifest.join(format!("tests/c/{name}.c")),
        name,
        &["-I".as_ref(), include.as_os_str()],
    )
}

/// Compiles the C program `source` (with `-Wall -Wextra -Werror -pthread`
/// and `extra` arguments) into the target directory as `name`, with the
/// `cc` crate's idea of the system C compiler; returns its path.
pub fn compile_c(source: &Path, name: &str, extra: &[&std::ffi::OsStr]) -> PathBuf {
    let out = target_dir().join(name);
    let tmp = target_dir().join(format!("{name}.{}.tmp", std::process::id()));
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .cargo_warnings(false)
        .target(&target)
        .host(&target)
        .opt_level(2)
        .try_get_compiler()
        .unwrap_or_else(|e| panic!("no C compiler (install build-essential): {e}"));
    let output = compiler
        .to_command()
        .args(["-Wall", "-Wextra", "-Werror", "-pthread"])
        .args(extra)
        .arg(source)
        .arg("-o")
        .arg(&tmp)
        .output()
        .expect("running the C compiler");
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&tmp, &out).expect("installing the compiled C program");
    out
}

/// Requires a Debian package's program: fails loudly when root (CI) and it
/// is missing, skips loudly otherwise.
pub fn require_tool(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        return true;
    }
    if testnet::is_root() {
        panic!("`{tool}` is missing: install the Debian package `{package}` (scripts/setup does)");
    }
    eprintln!("\n*** SKIPPED: `{tool}` (package {package}) is not installed ***");
    false
}

/// How many flows a listener on `service` that nobody accepts from takes
/// before it refuses one (`serval_test backlog` under `serval-run
/// RUN_ARGS`), `backlogs` being those of its `listen` calls, in turn.
pub fn flows_taken(
    sald: &Sald,
    run_args: &[&str],
    service: &str,
    backlogs: &[usize],
    limit: Duration,
) -> usize {
    let mut args = vec!["backlog".to_string(), service.to_string()];
    args.extend(backlogs.iter().map(usize::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = sald.run(run_args, c_program(), &args);
    cmd.stdout(Stdio::piped());
    let mut run = Proc::spawn(&format!("serval_test {}", args.join(" ")), &mut cmd);
    let stdout = run.child.stdout.take().expect("stdout");
    let printed = std::io::read_to_string(stdout).expect("its count");
    run.success(limit);
    printed.trim().parse().expect("a count")
}
