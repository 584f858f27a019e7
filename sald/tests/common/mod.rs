//! Shared by sald's tests and benchmarks: start a real sald in a namespace
//! or run one in this process, talk to it over its control socket (also as
//! another user).

#![allow(dead_code)]

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
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_sald"));
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
            Response::Interfaces { interfaces } => interfaces[0].locator,
            other => panic!("no interface listing: {other:?}"),
        }
    }
}

impl Sald for Daemon {
    fn control_path(&self) -> &Path {
        &self.control
    }
}

/// A sald run in this process by [`sald::run`], on a thread of its own,
/// stopped through its shutdown future.
pub struct InProcess {
    pub control: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Runs a daemon with `config`; waits up to 10 s for its control socket.
    pub fn start(config: Config) -> InProcess {
        let control = config.control.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
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
fn become_user(uid: u32) {
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
