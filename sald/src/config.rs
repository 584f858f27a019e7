//! sald's configuration: command-line flags, or a TOML file with the keys
//! below. The file has keys for `--iface`, `--udp`, `--forward`,
//! `--no-broadcast` (`broadcast = false`), `--control` and `--tun`, and
//! settings no flag has; `--no-auto-migrate`, `--trust-peer-moves` and the
//! `--*-ms` timers are flags only.
//!
//! ```toml
//! ifaces = ["eth0", "wlan0"]
//! udp = "10.0.0.1:54325"     # UDP encapsulation instead of the TUN
//! forward = true             # service-router mode
//! broadcast = true           # broadcast discovery (native mode; see --no-broadcast)
//! relays = true              # programs' relays (UDP mode: on unless false; see --relays)
//! resolution_lifetime_ms = 5000 # how long a relaying program may cache a
//!                            # route sald resolved for it (0: never; see `Resolve`)
//! control = "/run/serval/sald.sock"
//! tun = "sal0"
//! min_bind_prefix = 16       # shortest prefix an ordinary user may bind
//!                            # (top-level keys go before the first table)
//!
//! [[rules]]                  # static rules installed at start
//! prefix = "beef/16"
//! forward = "10.0.0.2"
//! weight = 1
//! priority = 0
//!
//! [[allow]]                  # who may bind what (root may bind anything);
//! uid = 1000                 # see "Binding" below
//! prefix = "c0ffee/24"
//!
//! [limits]                   # the control socket (defaults shown)
//! clients = 1024             # connections at once, everyone together
//! clients_per_uid = 128      # connections of one ordinary user
//! root_reserve = 32          # of `clients`, kept for root and sald's own user
//! idle_secs = 60             # an ordinary user's connection that holds nothing
//! frame_timeout_ms = 10000   # hello, the rest of a started frame, a response
//! frame_memory = 33554432    # bytes of request frames being read, all clients
//! subscriber_queue = 1024    # events a slow subscriber may fall behind by
//! flows = 4194304            # flows and datagram sockets at once (memory bound)
//! flows_per_uid = 262144     # of those, what one ordinary user may hold (ENOBUFS beyond),
//!                            # and what its listeners' backlogs may queue together
//! bindings_per_uid = 4096    # listeners one ordinary user may hold (ENOBUFS beyond)
//! idle_turns = true          # a user's datagrams may use sald's thread beyond its ration
//!                            # while no one else wants it (false: a hard quarter)
//!
//! [tcp]                      # each stream flow's TCP buffers (defaults shown)
//! min_buffer = 4096          # first allocation of a buffer; it doubles as needed
//! max_send_buffer = 1048576  # most bytes a flow may have queued to send
//! max_recv_buffer = 1048576  # most bytes it may hold received: the window it offers
//! buffer_memory = 1073741824 # all flows' buffers together (default: 1/8 of RAM; 0: none)
//! buffer_memory_per_uid = 268435456 # one user's flows, root's too (default: 1/4 of that; 0: none)
//!
//! [syn]                      # opening handshakes (defaults shown)
//! cookies = "under-pressure" # SYN cookies past the half-open bounds ("never", "always")
//! half_open_limit = 128      # half-open flows one listener keeps (its backlog bounds them too)
//! max_half_open = 1024       # half-open flows the host keeps, all listeners
//! half_open_timeout_ms = 10000 # how long a half-open flow waits for the client's ACK
//! ```
//!
//! Flags given on the command line override the file.
//!
//! ## Memory
//!
//! A flow's TCP buffers hold no memory while it is idle: each is allocated
//! at `min_buffer` when data comes, doubles up to its maximum as the
//! flow's bandwidth-delay product needs, and is given back within a second
//! or two of the flow going quiet. The send buffer takes at most twice the
//! congestion window, so a bulk sender holds what its path needs, not its
//! maximum. The maxima bound what one flow may hold, and the receive maximum
//! is the window a flow offers: raise it for long fat paths (the window
//! scale follows it), lower it to bound a busy host's memory. An idle
//! established flow costs a few KiB in all (sald's share of it included);
//! `[limits] flows` bounds how many there may be.
//!
//! `buffer_memory` bounds all flows' buffers together, as Linux's `tcp_mem`
//! does: once they hold that much, no buffer grows beyond what it holds
//! (one holding nothing may still take its first `min_buffer`), windows
//! offer only what is held, data past it is dropped for the peer to resend,
//! and applications' writes wait, until use falls below 7/8 of it. The
//! default is an eighth of physical memory, at least 64 MiB.
//! `buffer_memory_per_uid` is the same bound for the flows of one user,
//! root and sald's own user included: past it that user's flows, and no
//! one else's, are under pressure, so that one user whose flows leave
//! what peers send unread cannot hold the whole budget.
//!
//! ## Binding
//!
//! Root and sald's own user may bind any prefix. A user with an `[[allow]]`
//! entry may bind what its entries cover, without further checks. When the
//! file has `[[allow]]` entries, other users may not bind at all. Without
//! any, ordinary users may bind like unprivileged processes bind ports:
//! not `/0` nor anything shorter than `min_bind_prefix` (EACCES), nothing
//! that overlaps (covers, equals or lies inside) another user's binding
//! (EADDRINUSE), and nothing an operator's (static) rule already sends
//! elsewhere: a FORWARD, DROP or DELAY rule equal to or inside the prefix, or
//! covering it and itself at least `min_bind_prefix` long (EACCES). Broader
//! operator rules (a `/0` default route) do not stop a bind.

use std::net::SocketAddrV4;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;

use sal::proto::{HostConfig, SynCookies};
use sal::table::Target;
use sal::{Locator, ServicePrefix};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "sald",
    version,
    about = "The Serval service access layer daemon",
    long_about = "Runs the SAL on this host: connects applications to services by service ID, \
                  resolves service IDs through the service table, and carries flows over the \
                  host's interfaces (native IPv4 protocol 144 through a TUN device, or UDP \
                  encapsulation). Logging is controlled by RUST_LOG (default: info)."
)]
pub struct Flags {
    /// Physical interface whose IPv4 address is a SAL locator (repeatable).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// Use UDP encapsulation on this local address and port instead of the
    /// TUN device: needs no privileges, crosses NATs, and several hosts may
    /// share an address on different ports. With 0.0.0.0, each --iface
    /// address is a locator with this port. A UDP socket bound to it that
    /// a service manager passes (LISTEN_PID, LISTEN_FDS) is used instead.
    #[arg(long, value_name = "ADDR:PORT")]
    pub udp: Option<SocketAddrV4>,
    /// Act as a service router: forward SYNs and unconnected datagrams by
    /// FORWARD rules. A relayed packet keeps its client's address as IP
    /// source (native mode: sent through a raw socket, needs CAP_NET_RAW);
    /// over UDP it leaves from the router.
    #[arg(long)]
    pub forward: bool,
    /// No broadcast discovery: a SYN or datagram for a service that no rule
    /// matches fails with "no route" instead of going to the broadcast
    /// address of every interface (as the original Serval does by default;
    /// a host with a default rule, 0/0, never broadcasts). Broadcast
    /// discovery is a native-mode feature: UDP encapsulation never
    /// broadcasts.
    #[arg(long)]
    pub no_broadcast: bool,
    /// Relays, on by default in UDP mode: local programs that drive their
    /// own SAL host (`serval-run --in-process`) may bind services relayed
    /// to their UDP socket (`relay` request), and sald forwards the first
    /// packets such programs send by its rules, as a service router would.
    /// Any process that can send UDP from one of this host's addresses (a
    /// local UDP proxy, NAT hairpinning) gets sald's forwarding. Without
    /// --udp (or `udp` in the file) sald refuses to start.
    #[arg(long, conflicts_with = "no_relays")]
    pub relays: bool,
    /// No relays in UDP mode (see --relays): programs' own SAL hosts are
    /// refused, and `serval-run --in-process` falls back to the daemon path.
    #[arg(long)]
    pub no_relays: bool,
    /// Control socket path (default /run/serval/sald.sock; an unprivileged
    /// sald needs one in a directory it may write).
    #[arg(long, value_name = "PATH", env = "SERVAL_CONTROL")]
    pub control: Option<PathBuf>,
    /// TOML configuration file: static rules, bind permissions, limits,
    /// and the keys of --iface, --udp, --forward, --no-broadcast
    /// (broadcast = false), --control and --tun (see sald/src/config.rs);
    /// flags on the command line override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Name of the TUN device (native mode; default sal0).
    #[arg(long, value_name = "NAME")]
    pub tun: Option<String>,
    /// Do not move flows by themselves when an interface goes down, loses its
    /// address or stops delivering (manual `servalctl migrate` still works).
    #[arg(long)]
    pub no_auto_migrate: bool,
    /// Follow a peer's RSYN to its new address at once, as WIRE.md and the
    /// reference stack do, instead of first checking with a path challenge
    /// that the peer is there. Lets reference Serval peers (which do not
    /// answer challenges) migrate; lets any peer have its flows' data sent
    /// to an address of its choosing, a victim's.
    #[arg(long)]
    pub trust_peer_moves: bool,
    /// A flow with data in flight that hears nothing for this long moves to
    /// another interface, if a probe it sent halfway through went
    /// unanswered too (milliseconds; more than twice the round trip).
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub liveness_ms: u64,
    /// An idle flow that hears nothing for this long probes its path (one
    /// small control exchange), so that a dead path is left before the
    /// application needs it; only on hosts with another interface or a peer
    /// with other addresses. 0: never probe (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub probe_idle_ms: u64,
    /// UDP mode: a flow this host opened never stays silent toward its peer
    /// for longer than this, so that a NAT on the path keeps its mapping
    /// (milliseconds; under the 30 s after which many NATs forget). 0: no
    /// keepalives.
    #[arg(long, value_name = "MS", default_value_t = 25_000)]
    pub keepalive_ms: u64,
    /// Seed for flow IDs and nonces, which makes them predictable (default:
    /// keyed from the operating system's entropy). For reproducible tests only.
    #[arg(long, hide = true)]
    pub seed: Option<u64>,
    /// UDP mode without segmentation and coalescing offloads (UDP GSO and
    /// GRO), as on a kernel without them. For measurements and tests.
    #[arg(long, hide = true)]
    pub no_udp_offload: bool,
}

/// A static rule from the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Services the rule applies to, matched longest prefix first.
    pub prefix: ServicePrefix,
    /// Locator to forward to; omit together with `drop`/`delay` rules.
    #[serde(default)]
    pub forward: Option<Locator>,
    /// A DROP rule: packets for these services are dropped.
    #[serde(default)]
    pub drop: bool,
    /// A DELAY rule: packets for these services are held while the
    /// controller is asked.
    #[serde(default)]
    pub delay: bool,
    /// FORWARD only: share of traffic relative to the other targets of equal
    /// priority; 0 marks a standby (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Larger wins: only a prefix's highest-priority targets are used
    /// (default 0; 1 or more keeps servd's announced rules as standby).
    #[serde(default)]
    pub priority: u32,
}

fn one() -> u32 {
    1
}

impl RuleConfig {
    /// The table target this entry describes.
    pub fn target(&self) -> Result<Target> {
        match (self.forward, self.drop, self.delay) {
            (Some(locator), false, false) => Ok(Target::Forward {
                locator,
                weight: self.weight,
            }),
            (None, true, false) => Ok(Target::Drop),
            (None, false, true) => Ok(Target::Delay),
            _ => bail!(
                "rule {}: give exactly one of forward = ADDR, drop = true, delay = true",
                self.prefix
            ),
        }
    }
}

/// Who may bind which prefixes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    /// The user this entry lets bind.
    pub uid: u32,
    /// What the user may bind: this prefix and anything inside it.
    pub prefix: ServicePrefix,
}

/// Bounds on the control socket's clients (the `[limits]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Control connections at once, all users together.
    pub clients: usize,
    /// Control connections of one ordinary user.
    pub clients_per_uid: usize,
    /// Connections of `clients` that only root and sald's own user may use.
    pub root_reserve: usize,
    /// An ordinary user's connection that holds no listener, waits for
    /// nothing and sends no request for this long is closed.
    pub idle_secs: u64,
    /// How long a client may take to say hello, to finish a frame it
    /// started, and to take a response.
    pub frame_timeout_ms: u64,
    /// Bytes of request frames being received, all connections together; a
    /// frame that would exceed it closes its connection. An ordinary
    /// user's frames may take an eighth, ordinary users' together three
    /// quarters (the rest is root's and sald's own user's).
    pub frame_memory: usize,
    /// Events a subscriber may fall behind by before the oldest are dropped
    /// (it is then sent a `lagged` event).
    pub subscriber_queue: usize,
    /// Flows and datagram sockets at once, all users together: a bound on
    /// memory (about 3.5 KiB per idle flow, see `memory`), not on speed.
    /// Applications get `ENOBUFS` beyond it.
    pub flows: usize,
    /// Flows and datagram sockets one ordinary user may hold at once
    /// (connected, accepted, still connecting, or opened): a connect or
    /// datagram socket beyond it fails with `ENOBUFS`, so that one user
    /// cannot take every flow (nor sald's descriptors and memory) from the
    /// others. A flow arriving at a user's listener counts once it is
    /// accepted (an accept beyond the share fails with `ENOBUFS` and resets
    /// the flow); until then its listener's backlog bounds it, and a user's
    /// listeners' backlogs are cut to add up to at most this many (each
    /// keeps at least one). Root and sald's own user are not bounded by it.
    pub flows_per_uid: usize,
    /// Bindings (listeners) one ordinary user may hold at once; a bind
    /// beyond it fails with `ENOBUFS`. Every binding is a rule in the
    /// table and, with servd, a route announced to the routers: one user
    /// must not fill them. Root and sald's own user are not bounded by it.
    pub bindings_per_uid: usize,
    /// Whether an ordinary user's datagram sockets may have sald's thread
    /// beyond their user's ration while no one else wants it (the idle
    /// turns of `control::ration`). With `false` the ration is a hard cap,
    /// a quarter of the thread busy or not: the CPU an idle thread would
    /// give a flooder is then left to the machine's other programs, at
    /// the cost of a lone user's datagram rate.
    pub idle_turns: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            clients: 1024,
            clients_per_uid: 128,
            root_reserve: 32,
            idle_secs: 60,
            frame_timeout_ms: 10_000,
            frame_memory: 32 << 20,
            subscriber_queue: 1024,
            flows: sal::proto::HostConfig::default().max_flows,
            flows_per_uid: 1 << 18,
            bindings_per_uid: 4096,
            idle_turns: true,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<()> {
        if self.root_reserve >= self.clients {
            bail!(
                "limits: root_reserve ({}) must be smaller than clients ({})",
                self.root_reserve,
                self.clients
            );
        }
        if self.clients_per_uid == 0
            || self.subscriber_queue == 0
            || self.flows == 0
            || self.flows_per_uid == 0
            || self.bindings_per_uid == 0
        {
            bail!(
                "limits: clients_per_uid, subscriber_queue, flows, flows_per_uid and \
                 bindings_per_uid must be at least 1"
            );
        }
        if self.frame_memory < sal_control::MAX_FRAME {
            bail!(
                "limits: frame_memory must hold at least one frame of {} bytes",
                sal_control::MAX_FRAME
            );
        }
        Ok(())
    }
}

/// Each stream flow's TCP buffers (the `[tcp]` table; see "Memory").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpBuffers {
    /// First allocation of a buffer, bytes; it doubles as data needs.
    pub min_buffer: usize,
    /// Most bytes a flow may have queued to send (sent or not).
    pub max_send_buffer: usize,
    /// Most bytes a flow may hold received and unread: the window it offers.
    pub max_recv_buffer: usize,
    /// Bytes all flows' buffers may hold together before none may grow
    /// (see "Memory"). Absent: [`default_buffer_memory`]; 0: no budget.
    pub buffer_memory: Option<usize>,
    /// Bytes the buffers of one user's flows (root's too) may hold together
    /// before that user's flows (only) may not grow (see "Memory").
    /// Absent: a quarter of `buffer_memory`; 0: no such bound.
    pub buffer_memory_per_uid: Option<usize>,
}

/// The smallest default buffer budget: 64 full-size flows' worth of
/// receive buffers at the default maxima.
const MIN_DEFAULT_BUFFER_MEMORY: usize = 64 << 20;

/// The budget when none is configured: an eighth of physical memory (Linux
/// sizes `tcp_mem` likewise from memory: its hard limit is about 3/32 of
/// it), at least [`MIN_DEFAULT_BUFFER_MEMORY`]; 1 GiB if the size of
/// memory cannot be read.
pub fn default_buffer_memory() -> usize {
    physical_memory().map_or(1 << 30, |bytes| (bytes / 8).max(MIN_DEFAULT_BUFFER_MEMORY))
}

/// Bytes of physical memory, if the system says.
fn physical_memory() -> Option<usize> {
    // SAFETY: `sysconf` takes a constant and reads no memory of ours.
    let (pages, page) = unsafe {
        (
            nix::libc::sysconf(nix::libc::_SC_PHYS_PAGES),
            nix::libc::sysconf(nix::libc::_SC_PAGESIZE),
        )
    };
    let (pages, page) = (usize::try_from(pages).ok()?, usize::try_from(page).ok()?);
    pages.checked_mul(page).filter(|&bytes| bytes > 0)
}

impl Default for TcpBuffers {
    fn default() -> Self {
        let config = sal::proto::default_stream_config();
        TcpBuffers {
            min_buffer: config.min_buffer,
            max_send_buffer: config.max_send_buffer,
            max_recv_buffer: config.max_recv_buffer,
            buffer_memory: None,
            buffer_memory_per_uid: None,
        }
    }
}

impl TcpBuffers {
    /// The SAL's TCP settings with these buffer bounds.
    pub fn stream_config(&self) -> sal::tcp::Config {
        sal::tcp::Config {
            min_buffer: self.min_buffer,
            max_send_buffer: self.max_send_buffer,
            max_recv_buffer: self.max_recv_buffer,
            ..sal::proto::default_stream_config()
        }
    }

    /// The host's buffer budget (`None`: no budget).
    pub fn memory_budget(&self) -> Option<usize> {
        match self.buffer_memory {
            None => Some(default_buffer_memory()),
            Some(0) => None,
            Some(bytes) => Some(bytes),
        }
    }

    /// One user's share of the buffer budget (`None`: no
    /// bound of its own; see `buffer_memory_per_uid`). The default, a
    /// quarter of the budget, is at least one flow's maxima (as a share
    /// set by hand must be).
    pub fn memory_budget_per_uid(&self) -> Option<usize> {
        let one_flow = self.max_send_buffer.saturating_add(self.max_recv_buffer);
        match self.buffer_memory_per_uid {
            Some(0) => None,
            Some(bytes) => Some(bytes),
            None => self.memory_budget().map(|total| (total / 4).max(one_flow)),
        }
    }

    fn validate(&self) -> Result<()> {
        self.stream_config()
            .validate()
            .map_err(|e| anyhow::anyhow!("tcp: {e}"))?;
        let one_flow = self.max_send_buffer.saturating_add(self.max_recv_buffer);
        for (key, budget) in [
            ("buffer_memory", self.buffer_memory),
            ("buffer_memory_per_uid", self.buffer_memory_per_uid),
        ] {
            if let Some(budget) = budget.filter(|&b| b != 0 && b < one_flow) {
                bail!("tcp: {key} {budget} is less than one flow's maxima ({one_flow}); 0 means no budget");
            }
        }
        Ok(())
    }
}

/// How a listener takes SYNs (the `[syn]` table; see "SYN floods" in the
/// README): half-open flows up to the bounds, then cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynConfig {
    /// When SYNs are answered with cookies.
    pub cookies: SynCookies,
    /// Half-open flows one listener keeps at most (its backlog bounds them
    /// too).
    pub half_open_limit: usize,
    /// Half-open flows the host keeps at most, all listeners together.
    pub max_half_open: usize,
    /// How long a half-open flow waits for its client's ACK.
    pub half_open_timeout_ms: u64,
}

impl Default for SynConfig {
    fn default() -> Self {
        let host = HostConfig::default();
        SynConfig {
            cookies: host.syn_cookies,
            half_open_limit: host.half_open_limit,
            max_half_open: host.max_half_open,
            half_open_timeout_ms: host.half_open_timeout.total_millis(),
        }
    }
}

impl SynConfig {
    /// Writes these settings into the host's configuration.
    pub fn apply(&self, host: &mut HostConfig) {
        host.syn_cookies = self.cookies;
        host.half_open_limit = self.half_open_limit;
        host.max_half_open = self.max_half_open;
        host.half_open_timeout = sal::time::Duration::from_millis(self.half_open_timeout_ms);
    }

    fn validate(&self) -> Result<()> {
        if self.half_open_timeout_ms == 0 {
            bail!("syn: half_open_timeout_ms must be at least 1");
        }
        if self.cookies == SynCookies::Never
            && (self.half_open_limit == 0 || self.max_half_open == 0)
        {
            bail!("syn: with cookies = \"never\", a half-open limit of 0 refuses every connection");
        }
        Ok(())
    }
}

fn default_min_bind_prefix() -> u16 {
    16
}

/// A few seconds: a program asks again for a service it connects to at
/// most that often, and a rule changed at sald reaches it at most that
/// late.
fn default_resolution_lifetime_ms() -> u64 {
    5000
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// As `--iface`: interfaces whose IPv4 addresses are locators.
    #[serde(default)]
    pub ifaces: Vec<String>,
    /// As `--udp`: UDP encapsulation on this address and port.
    pub udp: Option<SocketAddrV4>,
    /// As `--forward`: act as a service router.
    #[serde(default)]
    pub forward: bool,
    /// Broadcast discovery (`--no-broadcast` turns it off); on unless false.
    pub broadcast: Option<bool>,
    /// As `--relays` / `--no-relays`: programs' relays (default: on in
    /// UDP mode).
    pub relays: Option<bool>,
    /// As `--control`: the control socket's path.
    pub control: Option<PathBuf>,
    /// How long a program with its own SAL host may use a route sald
    /// resolved for it (`Request::Resolve`), milliseconds; 0: sald
    /// answers no routes, every SYN comes through it.
    #[serde(default = "default_resolution_lifetime_ms")]
    pub resolution_lifetime_ms: u64,
    /// As `--tun`: the TUN device's name (native mode).
    pub tun: Option<String>,
    /// Static rules installed at start (`[[rules]]`).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Who may bind which prefixes (`[[allow]]`); see "Binding".
    #[serde(default)]
    pub allow: Vec<AllowConfig>,
    /// Shortest prefix an ordinary user may bind (see "Binding").
    #[serde(default = "default_min_bind_prefix")]
    pub min_bind_prefix: u16,
    /// The `[limits]` table: bounds on control clients and flows.
    #[serde(default)]
    pub limits: Limits,
    /// The `[tcp]` table: each stream flow's buffer bounds.
    #[serde(default)]
    pub tcp: TcpBuffers,
    /// The `[syn]` table: half-open bounds and SYN cookies.
    #[serde(default)]
    pub syn: SynConfig,
}

/// The effective configuration.
#[derive(Debug)]
pub struct Config {
    /// Interfaces whose IPv4 addresses are locators (flags over file).
    pub ifaces: Vec<String>,
    /// UDP mode's local address and port; `None`: native mode (TUN).
    pub udp: Option<SocketAddrV4>,
    /// Service-router mode: SYNs and unconnected datagrams are forwarded by
    /// FORWARD rules.
    pub forward: bool,
    /// Broadcast discovery for services no rule matches (native mode only).
    pub broadcast_discovery: bool,
    /// Relays for programs with their own SAL host (UDP mode only).
    pub relays: bool,
    /// The control socket's path (default `/run/serval/sald.sock`).
    pub control: PathBuf,
    /// How long a program may use a route sald resolved for it
    /// (`Request::Resolve`), milliseconds; 0: none is answered.
    pub resolution_lifetime_ms: u64,
    /// The TUN device's name in native mode (default `sal0`).
    pub tun: String,
    /// Seed for flow IDs and nonces, for reproducible tests; `None`: random.
    pub seed: Option<u64>,
    /// UDP mode: use GSO and GRO where the kernel offers them.
    pub udp_offload: bool,
    /// Flows move by themselves off an interface that goes down, loses its
    /// address or stops delivering.
    pub auto_migrate: bool,
    /// Follow a peer's RSYN without a path challenge (`--trust-peer-moves`).
    pub trust_peer_moves: bool,
    /// Silence after which a flow with data in flight moves (milliseconds).
    pub liveness_ms: u64,
    /// 0: never.
    pub probe_idle_ms: u64,
    /// UDP keepalive interval; 0: none.
    pub keepalive_ms: u64,
    /// Static rules, installed at start.
    pub rules: Vec<RuleConfig>,
    /// `[[allow]]` entries: who may bind which prefixes.
    pub allow: Vec<AllowConfig>,
    /// Shortest prefix an ordinary user may bind (at least 1: nobody but
    /// root and `[[allow]]`ed users binds `/0`).
    pub min_bind_prefix: u16,
    /// Bounds on control clients and flows.
    pub limits: Limits,
    /// Each stream flow's TCP buffer bounds.
    pub tcp: TcpBuffers,
    /// Half-open bounds and SYN cookies.
    pub syn: SynConfig,
}

impl Config {
    /// Merges flags over the config file (if any) over defaults.
    pub fn load(flags: Flags) -> Result<Config> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig {
                min_bind_prefix: default_min_bind_prefix(),
                resolution_lifetime_ms: default_resolution_lifetime_ms(),
                ..FileConfig::default()
            },
        };
        file.limits.validate()?;
        file.tcp.validate()?;
        file.syn.validate()?;
        for rule in &file.rules {
            rule.target()?;
        }
        let ifaces = if flags.ifaces.is_empty() {
            file.ifaces
        } else {
            flags.ifaces
        };
        let udp = flags.udp.or(file.udp);
        if ifaces.is_empty() && udp.is_none_or(|a| a.ip().is_unspecified()) {
            bail!("no interface given: use --iface IFACE (repeatable), or --udp ADDR:PORT with a specific address");
        }
        // Flags over the file; unset, on in UDP mode (and only there).
        let relays = match (flags.relays, flags.no_relays, file.relays) {
            (true, _, _) => true,
            (_, true, _) => false,
            (_, _, Some(set)) => set,
            _ => udp.is_some(),
        };
        if relays && udp.is_none() {
            // Silently off would leave an operator who asked for relays
            // with programs refused and no word why.
            bail!("--relays needs --udp (relays = true needs udp = \"ADDR:PORT\"): programs' relays exist only in UDP mode");
        }
        Ok(Config {
            ifaces,
            udp,
            forward: flags.forward || file.forward,
            broadcast_discovery: !flags.no_broadcast
                && file.broadcast.unwrap_or(true)
                && udp.is_none(),
            relays,
            control: flags
                .control
                .or(file.control)
                .unwrap_or_else(|| sal_control::DEFAULT_CONTROL_PATH.into()),
            resolution_lifetime_ms: file.resolution_lifetime_ms,
            tun: flags.tun.or(file.tun).unwrap_or_else(|| "sal0".into()),
            seed: flags.seed,
            udp_offload: !flags.no_udp_offload,
            auto_migrate: !flags.no_auto_migrate,
            trust_peer_moves: flags.trust_peer_moves,
            liveness_ms: flags.liveness_ms,
            probe_idle_ms: flags.probe_idle_ms,
            keepalive_ms: flags.keepalive_ms,
            rules: file.rules,
            allow: file.allow,
            min_bind_prefix: file.min_bind_prefix.clamp(1, 256),
            limits: file.limits,
            tcp: file.tcp,
            syn: file.syn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_config_parses_rules_and_allow() {
        let text = r#"
            ifaces = ["eth0"]
            forward = true
            [[rules]]
            prefix = "beef/16"
            forward = "10.0.0.2"
            weight = 3
            [[rules]]
            prefix = "de/8"
            drop = true
            [[allow]]
            uid = 1000
            prefix = "c0ffee/24"
        "#;
        let file: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(file.rules.len(), 2);
        assert!(matches!(
            file.rules[0].target().unwrap(),
            Target::Forward { weight: 3, .. }
        ));
        assert_eq!(file.rules[1].target().unwrap(), Target::Drop);
        assert_eq!(file.allow[0].uid, 1000);
        assert_eq!(file.min_bind_prefix, 16);
        assert_eq!(file.limits, Limits::default());
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        assert_eq!(file.broadcast, None);
        let file: FileConfig =
            toml::from_str("min_bind_prefix = 24\n[limits]\nclients_per_uid = 4").unwrap();
        assert_eq!(file.min_bind_prefix, 24);
        assert_eq!(file.limits.clients_per_uid, 4);
        assert_eq!(file.limits.clients, Limits::default().clients);
        let bad = Limits {
            root_reserve: 2000,
            ..Limits::default()
        };
        assert!(bad.validate().is_err());
        let file: FileConfig =
            toml::from_str("[limits]\nflows_per_uid = 64\nbindings_per_uid = 8").unwrap();
        assert_eq!(file.limits.flows_per_uid, 64);
        assert_eq!(file.limits.bindings_per_uid, 8);
        assert!(file.limits.idle_turns);
        let file: FileConfig = toml::from_str("[limits]\nidle_turns = false").unwrap();
        assert!(!file.limits.idle_turns);
        let none = Limits {
            flows_per_uid: 0,
            ..Limits::default()
        };
        assert!(none.validate().is_err(), "a user must be allowed one flow");
    }

    #[test]
    fn relays_need_udp_mode() {
        let load = |args: &[&str]| {
            let flags = Flags::try_parse_from(["sald", "--iface", "eth0"].iter().chain(args));
            Config::load(flags.unwrap())
        };
        let refused = load(&["--relays"]).unwrap_err().to_string();
        assert!(refused.starts_with("--relays needs --udp"), "{refused}");
        assert!(
            load(&["--relays", "--udp", "10.0.0.1:54325"])
                .unwrap()
                .relays
        );
        // On by default in UDP mode, off in native mode, and off when asked.
        assert!(load(&["--udp", "10.0.0.1:54325"]).unwrap().relays);
        assert!(!load(&[]).unwrap().relays);
        assert!(
            !load(&["--udp", "10.0.0.1:54325", "--no-relays"])
                .unwrap()
                .relays
        );
        assert!(
            Flags::try_parse_from(["sald", "--relays", "--no-relays"]).is_err(),
            "contradictory"
        );
        // The file's key alike.
        let dir = std::env::temp_dir().join(format!("sald-relays-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sald.toml");
        std::fs::write(&file, "relays = true\n").unwrap();
        let file_arg = file.to_str().unwrap();
        assert!(load(&["--config", file_arg]).is_err());
        assert!(
            load(&["--config", file_arg, "--udp", "10.0.0.1:54325"])
                .unwrap()
                .relays
        );
        std::fs::write(&file, "relays = false\n").unwrap();
        let udp = ["--config", file_arg, "--udp", "10.0.0.1:54325"];
        assert!(!load(&udp).unwrap().relays, "off in the file");
        let flag = [&udp[..], &["--relays"]].concat();
        assert!(load(&flag).unwrap().relays, "the flag over the file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn resolution_lifetime_defaults_to_a_few_seconds_and_reads_from_the_file() {
        let load = |args: &[&str]| {
            let flags = Flags::try_parse_from(["sald", "--iface", "eth0"].iter().chain(args));
            Config::load(flags.unwrap()).unwrap().resolution_lifetime_ms
        };
        assert_eq!(load(&[]), 5000);
        let dir = std::env::temp_dir().join(format!("sald-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sald.toml");
        std::fs::write(&file, "min_bind_prefix = 24\n").unwrap();
        assert_eq!(load(&["--config", file.to_str().unwrap()]), 5000);
        std::fs::write(&file, "resolution_lifetime_ms = 0\n").unwrap();
        assert_eq!(load(&["--config", file.to_str().unwrap()]), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn broadcast_discovery_is_on_in_native_mode_unless_turned_off() {
        let load = |args: &[&str]| {
            let flags = Flags::try_parse_from(["sald", "--iface", "eth0"].iter().chain(args));
            Config::load(flags.unwrap()).unwrap().broadcast_discovery
        };
        assert!(load(&[]));
        assert!(!load(&["--no-broadcast"]));
        assert!(!load(&["--udp", "10.0.0.1:54325"]), "UDP never broadcasts");
    }

    #[test]
    fn tcp_buffers_are_settings_checked_at_load() {
        let file: FileConfig = toml::from_str(
            "[tcp]\nmin_buffer = 8192\nmax_send_buffer = 4194304\nmax_recv_buffer = 2097152",
        )
        .unwrap();
        let stream = file.tcp.stream_config();
        assert_eq!(
            (
                stream.min_buffer,
                stream.max_send_buffer,
                stream.max_recv_buffer
            ),
            (8192, 4 << 20, 2 << 20)
        );
        assert!(!stream.nagle, "the SAL's other settings are kept");
        assert_eq!(
            toml::from_str::<FileConfig>("").unwrap().tcp,
            TcpBuffers::default()
        );
        let too_small_max = TcpBuffers {
            min_buffer: 65536,
            max_recv_buffer: 4096,
            ..TcpBuffers::default()
        };
        assert!(too_small_max.validate().is_err());
        assert!(toml::from_str::<FileConfig>("[tcp]\nmax_buffer = 1").is_err());
        assert_eq!(Limits::default().flows, 1 << 22);
    }

    #[test]
    fn buffer_memory_budget_defaults_to_a_share_of_memory() {
        let tcp = toml::from_str::<FileConfig>("").unwrap().tcp;
        let budget = tcp.memory_budget().unwrap();
        assert_eq!(budget, default_buffer_memory());
        assert!(budget >= MIN_DEFAULT_BUFFER_MEMORY);
        let set: FileConfig = toml::from_str("[tcp]\nbuffer_memory = 268435456").unwrap();
        set.tcp.validate().unwrap();
        assert_eq!(set.tcp.memory_budget(), Some(256 << 20));
        let none: FileConfig = toml::from_str("[tcp]\nbuffer_memory = 0").unwrap();
        none.tcp.validate().unwrap();
        assert_eq!(none.tcp.memory_budget(), None);
        let tiny: FileConfig = toml::from_str("[tcp]\nbuffer_memory = 65536").unwrap();
        assert!(tiny.tcp.validate().is_err(), "less than one flow");
        // A user's share: a quarter of the budget unless set.
        assert_eq!(set.tcp.memory_budget_per_uid(), Some(64 << 20));
        assert_eq!(none.tcp.memory_budget_per_uid(), None);
        let share: FileConfig = toml::from_str("[tcp]\nbuffer_memory_per_uid = 33554432").unwrap();
        share.tcp.validate().unwrap();
        assert_eq!(share.tcp.memory_budget_per_uid(), Some(32 << 20));
        // A quarter of a budget of one flow would be less than a flow.
        let small: FileConfig = toml::from_str("[tcp]\nbuffer_memory = 2097152").unwrap();
        small.tcp.validate().unwrap();
        assert_eq!(small.tcp.memory_budget_per_uid(), Some(2 << 20));
        let unbounded: FileConfig = toml::from_str("[tcp]\nbuffer_memory_per_uid = 0").unwrap();
        assert_eq!(unbounded.tcp.memory_budget_per_uid(), None);
        let tiny: FileConfig = toml::from_str("[tcp]\nbuffer_memory_per_uid = 65536").unwrap();
        assert!(tiny.tcp.validate().is_err(), "less than one flow");
    }

    #[test]
    fn syn_settings_reach_the_host_and_are_checked_at_load() {
        let file: FileConfig = toml::from_str(
            "[syn]\ncookies = \"always\"\nhalf_open_limit = 16\nmax_half_open = 64\nhalf_open_timeout_ms = 2500",
        )
        .unwrap();
        file.syn.validate().unwrap();
        let mut host = HostConfig::default();
        file.syn.apply(&mut host);
        assert_eq!(host.syn_cookies, SynCookies::Always);
        assert_eq!((host.half_open_limit, host.max_half_open), (16, 64));
        assert_eq!(host.half_open_timeout.total_millis(), 2500);

        // The defaults are the host's own.
        let defaults = HostConfig::default();
        let mut host = HostConfig {
            syn_cookies: SynCookies::Never,
            half_open_limit: 1,
            ..HostConfig::default()
        };
        toml::from_str::<FileConfig>("")
            .unwrap()
            .syn
            .apply(&mut host);
        assert_eq!(host.syn_cookies, defaults.syn_cookies);
        assert_eq!(host.half_open_limit, defaults.half_open_limit);
        assert_eq!(host.max_half_open, defaults.max_half_open);
        assert_eq!(host.half_open_timeout, defaults.half_open_timeout);

        for bad in [
            "[syn]\nhalf_open_timeout_ms = 0",
            "[syn]\ncookies = \"never\"\nmax_half_open = 0",
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            assert!(file.syn.validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<FileConfig>("[syn]\ncookies = \"sometimes\"").is_err());
        assert!(toml::from_str::<FileConfig>("[syn]\nbacklog = 1").is_err());
    }

    /// The example at the top of this file, as an operator would copy it.
    fn documented_sample() -> String {
        let source = include_str!("config.rs");
        let start = source.find("//! ```toml\n").expect("the sample") + "//! ```toml\n".len();
        let end = start + source[start..].find("//! ```\n").expect("its end");
        source[start..end]
            .lines()
            .map(|line| line.strip_prefix("//!").unwrap_or(line))
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn documented_sample_loads_and_shows_the_defaults() {
        let text = documented_sample();
        let file: FileConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        file.limits.validate().unwrap();
        file.tcp.validate().unwrap();
        file.syn.validate().unwrap();
        assert_eq!(
            file.rules[0].target().unwrap(),
            Target::Forward {
                locator: "10.0.0.2".parse().unwrap(),
                weight: 1,
            }
        );
        assert_eq!((file.allow[0].uid, file.min_bind_prefix), (1000, 16));
        // "defaults shown": the sample's values are the real defaults (the
        // buffer budgets depend on the machine's memory).
        assert_eq!(file.limits, Limits::default());
        assert_eq!(file.syn, SynConfig::default());
        let tcp = TcpBuffers {
            buffer_memory: None,
            buffer_memory_per_uid: None,
            ..file.tcp
        };
        assert_eq!(tcp, TcpBuffers::default());
    }

    #[test]
    fn rule_needs_exactly_one_action() {
        let rule: RuleConfig =
            toml::from_str("prefix = \"ab/8\"\ndrop = true\ndelay = true").unwrap();
        assert!(rule.target().is_err());
    }
}
