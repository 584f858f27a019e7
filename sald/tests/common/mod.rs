//! Shared by sald's namespace tests and benchmarks: start a real sald in a
//! namespace, and talk to it over its control socket.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::Path;

use sal::table::Target;
use sal::Locator;
use sal_control::{Request, Response};
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
    /// A fresh control connection.
    fn client(&self) -> ControlClient;
    /// One request on a fresh connection.
    fn request(&self, request: Request) -> Response;
    /// Adds a FORWARD target (priority 0).
    fn forward(&self, prefix: &str, to: Ipv4Addr, weight: u32);
    /// The flow `flow`, if sald lists it.
    fn flow(&self, flow: sal::FlowId) -> Option<sal::proto::FlowInfo>;
}

impl Sald for Daemon {
    fn client(&self) -> ControlClient {
        ControlClient::connect_to(&self.control).expect("control socket")
    }

    fn request(&self, request: Request) -> Response {
        self.client()
            .request(&request)
            .expect("control request")
            .response
    }

    fn forward(&self, prefix: &str, to: Ipv4Addr, weight: u32) {
        let response = self.request(Request::AddRule {
            prefix: prefix.parse().expect("prefix"),
            target: Target::Forward {
                locator: Locator::Ipv4(to),
                weight,
            },
            priority: 0,
        });
        assert_eq!(response, Response::Ok);
    }

    fn flow(&self, flow: sal::FlowId) -> Option<sal::proto::FlowInfo> {
        match self.request(Request::ListFlows) {
            Response::Flows { flows } => flows.into_iter().find(|f| f.flow == flow),
            _ => None,
        }
    }
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
