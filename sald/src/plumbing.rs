//! Host-address mode kernel plumbing (DESIGN.md, "Data plane" → Links).
//!
//! In host-address mode the SAL uses the host's own interface addresses as
//! locators. The kernel must hand sald every incoming IPv4 protocol-144
//! packet addressed to one of those addresses, must keep answering
//! everything else (ping, TCP, ...) itself, and must route the packets sald
//! writes into its TUN, whose source is one of the host's own addresses, out
//! of the right interface. [`Plumbing::install`] sets that up and
//! [`Plumbing::remove`] (or Drop) undoes it:
//!
//! For each host address `A` on interface `IF`, TUN `T0` (e.g. `sal0`),
//! routing table `T` (default 144) and rule preference `P` (default 100):
//!
//! | what | why |
//! | --- | --- |
//! | rule `pref P ipproto 144 to A iif IF lookup T` | steers SAL packets for `A` away from local delivery |
//! | the `local` rule moved from pref 0 to `P + 1` | so the rules above are consulted before the `local` table |
//! | `default dev T0` in table `T` | the steered packets are "forwarded" into the TUN |
//! | `conf.IF.forwarding=1` | IPv4 only forwards packets whose *input* device has forwarding on |
//! | `conf.T0.forwarding=1` | the same for packets sald writes into the TUN (they enter the kernel on `T0`) |
//! | `conf.T0.accept_local=1`, `conf.T0.rp_filter=0` | packets from the TUN carry one of our own addresses as source (see below) |
//! | nftables table `ip sald` (the fence) | `conf.IF.forwarding=1` would also forward other transit traffic arriving on `IF`: only protocol 144 to or from the TUN may be forwarded |
//! | table `S + i` for the `i`-th interface `IF` (S default 1000): a copy of the main table's IPv4 routes whose output device is `IF`, and `throw` routes for the main table's other prefixes not through a SAL interface | per-source routing on multi-homed hosts (below) |
//! | rule `pref P + 10 + i from A lookup S + i` for each address `A` of that interface | a packet sent from an interface's address leaves through that interface |
//!
//! ## Per-source routing
//!
//! A flow's locator is one interface's address, and migrating a flow means
//! switching to another interface's address (DESIGN.md, "Interfaces and
//! migration"). With only the main table the kernel would send every packet
//! by the best default route, whatever its source, so a flow moved to
//! `wlan0`'s address would still leave through `eth0`. For that, sald gives
//! each configured interface its own routing table holding a copy of the
//! main table's routes through it (the connected subnet, `default via GW dev
//! IF`, other gateway routes; multipath routes are not copied) and a
//! `from A` rule per address into it, consulted after the `ipproto 144`
//! rules and the moved `local` rule but before the main table. A lookup that
//! finds no route in an interface's table falls through to the main table.
//! The copied default route must not capture traffic the main table sends
//! elsewhere than a SAL interface (replies from `A` to a container on a
//! local bridge, to a VPN peer, to a blackholed prefix), so every other
//! non-default main-table route that does not go through a SAL interface
//! gets a `throw` entry in each interface's table: the lookup fails there
//! and the main table decides, as without sald. Routes through another SAL
//! interface are deliberately not thrown (that is the point), and a default
//! route through a non-SAL interface (a full-tunnel VPN) is bypassed for
//! sources that are SAL addresses. The tables are copied at start-up and
//! brought back in line with the main table whenever it changes (sald
//! follows rtnetlink route events and calls [`Plumbing::refresh_routes`]):
//! routes the operator or a DHCP client adds or deletes later are followed.
//! An interface that goes down loses its copied routes (the kernel flushes
//! them), its sources fall back to the main table meanwhile, and the copies
//! return with the main table's routes through it.
//!
//! The global `net.ipv4.ip_forward` is never touched. When it is already 1
//! the host is a router by the operator's choice, so no fence is installed.
//! The fence also only drops traffic entering through interfaces whose
//! `forwarding` sald itself switched on, so forwarding the operator enabled
//! on other interfaces is left alone.
//!
//! ## What was really needed on this kernel (6.18, measured in namespaces)
//!
//! * `conf.IF.forwarding` and `conf.T0.forwarding` are both required (without
//!   the first nothing reaches the TUN; without the second the kernel counts
//!   `IpInAddrErrors` for packets written to the TUN).
//! * For a packet written to the TUN whose source `A` belongs to the
//!   interface it leaves by, neither `accept_local` nor `rp_filter` matter:
//!   the kernel's source validation does a reverse lookup with
//!   `iif = egress interface, ipproto = 144, dst = A`, which hits our own
//!   `ipproto 144 to A iif IF` rule and resolves to the TUN itself, so the
//!   check passes even with strict `rp_filter`.
//! * When the source is the address of *another* local interface (a flow
//!   whose locator is on `wlan0` while the route to the peer uses `eth0`),
//!   the reverse lookup finds a `local` route: then `accept_local=1` on the
//!   TUN is required, and the effective `rp_filter` of the TUN, which is
//!   `max(conf.all.rp_filter, conf.T0.rp_filter)`, must be 0. We set the
//!   TUN's own value; we do not lower the host-wide `conf.all.rp_filter`
//!   (systemd hosts leave it at 0 and set per-interface values), but log a
//!   warning when it is non-zero.
//! * Forwarded packets have their TTL decremented once on each crossing.
//!
//! ## Ownership
//!
//! The plumbing of a network namespace belongs to one sald. A lock file
//! `<run_dir>/plumbing-<netns>.lock` (flock, `run_dir` defaults to
//! `/run/serval`) makes a second daemon fail fast with
//! [`PlumbingError::Owned`]. Next to it a state file records every change
//! before it is made (previous sysctl values, where the `local` rule was),
//! so plumbing left by a daemon that crashed (lock free, rules still
//! present, state file present) is recognised as stale and removed, with a
//! warning, before installing afresh. Plumbing found without a state file is
//! refused as owned too: it may belong to a sald whose run directory is
//! elsewhere (another mount namespace), and the error says how to remove it
//! by hand. `<netns>` is the namespace's cookie (`SO_NETNS_COOKIE`, never
//! reused), so daemons in different network namespaces never contend. Both
//! files are deleted on a clean removal.
//!
//! Everything here is synchronous (plain netlink sockets, `/proc/sys`
//! writes, the `nft` command): the calls are few and short, they work from
//! `Drop`, and they can be used from inside or outside a tokio runtime.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlag, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlag, RuleMessage};
use netlink_packet_route::{AddressFamily, IpProtocol, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// IP protocol number of native SAL packets (WIRE.md, "Carriage").
pub const SAL_IPPROTO: u8 = 144;
/// Default routing table for packets steered into the TUN.
pub const DEFAULT_TABLE: u32 = 144;
/// Default preference of the `ipproto 144` rules (the `local` rule moves to
/// this plus one).
pub const DEFAULT_RULE_PREF: u32 = 100;
/// Default directory of the lock and state files.
pub const DEFAULT_RUN_DIR: &str = "/run/serval";
/// Name of the nftables table (family `ip`) that holds the fence.
pub const NFT_TABLE: &str = "sald";
/// Default first per-source routing table (interface `i` uses this plus
/// `i`); far from table 144 and from the kernel's 253 to 255.
pub const DEFAULT_SOURCE_TABLE_BASE: u32 = 1000;
/// The per-source `from A` rules sit at `rule_pref` plus this plus the
/// interface's position.
pub const SOURCE_PREF_OFFSET: u32 = 10;

const RT_TABLE_LOCAL: u32 = 255;
const RT_TABLE_MAIN: u32 = 254;
const RT_TABLE_DEFAULT: u32 = 253;
const RULE_PREF_MAIN: u32 = 32766;

// ---------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------

/// Why the plumbing could not be installed or removed. Each variant renders
/// as one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    /// The configuration is unusable (bad interface name, reserved table, ...).
    #[error("invalid plumbing configuration: {0}")]
    Config(String),
    /// An interface named in the configuration does not exist.
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
    /// Another sald holds this namespace's plumbing.
    #[error("another sald owns the plumbing: {}", .evidence.join("; "))]
    Owned {
        /// What shows it (lock held, rules present, nft table present).
        evidence: Vec<String>,
    },
    /// Routing state that is not ours is in the way.
    #[error("conflicting routing state: {0}")]
    Conflict(String),
    /// A netlink request failed.
    #[error("netlink: {op}: {source}")]
    Netlink {
        /// The operation, e.g. `add rule pref 100 ipproto 144 to 10.0.0.1`.
        op: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing a sysctl failed.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The lock or state file could not be used.
    #[error("{}: {source}", .path.display())]
    RunDir {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The nftables fence could not be installed.
    #[error("nftables fence: {0}")]
    Fence(String),
    /// Some undo steps failed (each was attempted; details in the list).
    #[error("removing plumbing: {}", .0.join("; "))]
    Teardown(Vec<String>),
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> PlumbingError {
    let op = op.into();
    move |source| PlumbingError::Netlink { op, source }
}

impl PlumbingError {
    /// The errno behind a netlink failure, if that is what this is.
    fn errno(&self) -> Option<i32> {
        match self {
            PlumbingError::Netlink { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// configuration
// ---------------------------------------------------------------------------

/// One physical interface the SAL uses, and the IPv4 addresses on it that
/// serve as locators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Interface name (`eth0`).
    pub name: String,
    /// Its IPv4 addresses; each gets an `ipproto 144` rule.
    pub addrs: Vec<Ipv4Addr>,
}

/// What [`Plumbing::install`] sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlumbingConfig {
    /// The TUN device (must exist: create it with
    /// [`crate::link::TunLink::open`] first).
    pub tun: String,
    /// The physical interfaces and their addresses.
    pub interfaces: Vec<InterfaceConfig>,
    /// Routing table holding `default dev <tun>` (not 0, 253, 254, 255).
    pub table: u32,
    /// Preference of the `ipproto 144` rules; the `local` rule moves to
    /// `rule_pref + 1`, the per-source rules of interface `i` are at
    /// `rule_pref + 10 + i`.
    pub rule_pref: u32,
    /// First per-source routing table: interface `i` (its position in
    /// `interfaces`) uses table `source_table_base + i`. None of those may
    /// be 0, 253 to 255 or `table`.
    pub source_table_base: u32,
    /// Directory of the lock and state files.
    pub run_dir: PathBuf,
}

impl PlumbingConfig {
    /// A configuration for `tun` with the defaults (table 144, pref 100,
    /// per-source tables from 1000, `/run/serval`) and no interfaces yet.
    pub fn new(tun: impl Into<String>) -> Self {
        PlumbingConfig {
            tun: tun.into(),
            interfaces: Vec::new(),
            table: DEFAULT_TABLE,
            rule_pref: DEFAULT_RULE_PREF,
            source_table_base: DEFAULT_SOURCE_TABLE_BASE,
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
        }
    }

    /// Adds an interface with explicit addresses.
    pub fn interface(mut self, name: impl Into<String>, addrs: Vec<Ipv4Addr>) -> Self {
        self.interfaces.push(InterfaceConfig {
            name: name.into(),
            addrs,
        });
        self
    }

    /// Adds interfaces with the IPv4 addresses they currently carry (asked
    /// from the kernel), which is what `sald --iface eth0` means.
    pub fn discover_interfaces(mut self, names: &[&str]) -> Result<Self, PlumbingError> {
        let mut rtnl = Rtnl::new()?;
        for name in names {
            validate_ifname(name)?;
            let index = rtnl
                .link_index(name)?
                .ok_or_else(|| PlumbingError::UnknownInterface((*name).to_owned()))?;
            let addrs = rtnl
                .ipv4_addrs(index)?
                .into_iter()
                .map(|(a, _)| a)
                .collect();
            self.interfaces.push(InterfaceConfig {
                name: (*name).to_owned(),
                addrs,
            });
        }
        Ok(self)
    }

    /// Where the `local` rule is moved to.
    pub fn local_pref(&self) -> u32 {
        self.rule_pref.saturating_add(1)
    }

    /// The per-source routing table of the `i`-th interface.
    pub fn source_table(&self, i: usize) -> u32 {
        self.source_table_base
            .saturating_add(u32::try_from(i).unwrap_or(u32::MAX))
    }

    /// The preference of the `from A` rules of the `i`-th interface.
    pub fn source_pref(&self, i: usize) -> u32 {
        self.rule_pref
            .saturating_add(SOURCE_PREF_OFFSET)
            .saturating_add(u32::try_from(i).unwrap_or(u32::MAX))
    }

    fn is_source_pref(&self, pref: u32) -> bool {
        (0..self.interfaces.len()).any(|i| self.source_pref(i) == pref)
    }

    fn is_source_table(&self, table: u32) -> bool {
        (0..self.interfaces.len()).any(|i| self.source_table(i) == table)
    }

    fn validate(&self) -> Result<(), PlumbingError> {
        validate_ifname(&self.tun)?;
        for (i, iface) in self.interfaces.iter().enumerate() {
            validate_ifname(&iface.name)?;
            if iface.name == self.tun {
                return Err(PlumbingError::Config(format!(
                    "interface {} is the TUN device",
                    iface.name
                )));
            }
            if self.interfaces[..i].iter().any(|o| o.name == iface.name) {
                return Err(PlumbingError::Config(format!(
                    "interface {} listed twice",
                    iface.name
                )));
            }
            if let Some(a) = iface
                .addrs
                .iter()
                .find(|a| a.is_unspecified() || a.is_multicast() || a.is_broadcast())
            {
                return Err(PlumbingError::Config(format!(
                    "{a} on {} is not a unicast address",
                    iface.name
                )));
            }
        }
        if matches!(
            self.table,
            0 | RT_TABLE_DEFAULT | RT_TABLE_MAIN | RT_TABLE_LOCAL
        ) {
            return Err(PlumbingError::Config(format!(
                "routing table {} is reserved (0, 253, 254, 255)",
                self.table
            )));
        }
        if self.rule_pref == 0 || self.local_pref() >= RULE_PREF_MAIN {
            return Err(PlumbingError::Config(format!(
                "rule preference {} must be between 1 and {}",
                self.rule_pref,
                RULE_PREF_MAIN - 2
            )));
        }
        let n = self.interfaces.len();
        if n > 0 {
            let last_pref =
                u64::from(self.rule_pref) + u64::from(SOURCE_PREF_OFFSET) + n as u64 - 1;
            if last_pref >= u64::from(RULE_PREF_MAIN) {
                return Err(PlumbingError::Config(format!(
                    "rule preference {} leaves no room for the per-source rules of {n} \
                     interface(s) before the main table (pref {RULE_PREF_MAIN})",
                    self.rule_pref
                )));
            }
            let first = u64::from(self.source_table_base);
            let last = first + n as u64 - 1;
            let in_range = |t: u32| (first..=last).contains(&u64::from(t));
            if last > u64::from(u32::MAX)
                || [
                    0,
                    RT_TABLE_DEFAULT,
                    RT_TABLE_MAIN,
                    RT_TABLE_LOCAL,
                    self.table,
                ]
                .into_iter()
                .any(in_range)
            {
                return Err(PlumbingError::Config(format!(
                    "per-source routing tables {first} to {last} overlap table {} or a \
                     reserved table (0, 253, 254, 255)",
                    self.table
                )));
            }
        }
        Ok(())
    }
}

/// Checks a Linux interface name: 1 to 15 bytes, none of `/ : " ' \`, no
/// whitespace (the name also ends up quoted in an nftables script).
pub fn validate_ifname(name: &str) -> Result<(), PlumbingError> {
    let bad = |why: &str| {
        Err(PlumbingError::Config(format!(
            "interface name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .chars()
        .any(|c| matches!(c, '/' | ':' | '"' | '\'' | '\\') || c.is_whitespace() || c.is_control())
    {
        return bad("contains a forbidden character");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// rtnetlink, synchronously
// ---------------------------------------------------------------------------

/// A small synchronous rtnetlink client: the handful of link, address, rule
/// and route operations sald needs at start-up and shut-down.
///
/// Synchronous on purpose: plumbing is undone from `Drop` and from signal
/// handlers' aftermath, where no async runtime may be available, and every
/// call is a single request/response with the kernel. The socket belongs to
/// the network namespace of the thread that created it.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rtnl").field("seq", &self.seq).finish()
    }
}

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

impl Rtnl {
    /// Opens a NETLINK_ROUTE socket in the calling thread's namespace.
    pub fn new() -> Result<Rtnl, PlumbingError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl_err("open socket"))?;
        sock.bind_auto().map_err(nl_err("bind socket"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(nl_err("connect socket"))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and collects the replies: until the ACK for a
    /// plain request, until NLMSG_DONE for a dump.
    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, PlumbingError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut nl =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = seq;
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        self.sock.send(&out, 0).map_err(nl_err(op))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let n = {
                let mut slice: &mut [u8] = &mut self.buf[..];
                self.sock
                    .recv(&mut slice, nix::libc::MSG_TRUNC)
                    .map_err(nl_err(op))?
            };
            if n > self.buf.len() {
                return Err(PlumbingError::Netlink {
                    op: op.to_owned(),
                    source: io::Error::other(format!("reply of {n} bytes truncated")),
                });
            }
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let chunk = &self.buf[off..n];
                let len = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
                let mtype = u16::from_ne_bytes([chunk[4], chunk[5]]);
                let mseq = u32::from_ne_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
                if len < NLMSG_HDRLEN || len > chunk.len() {
                    return Err(PlumbingError::Netlink {
                        op: op.to_owned(),
                        source: io::Error::other("malformed netlink reply"),
                    });
                }
                off += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&chunk[..len]) {
                    Ok(m) => match m.payload {
                        NetlinkPayload::Done(d) => {
                            if d.code != 0 {
                                return Err(PlumbingError::Netlink {
                                    op: op.to_owned(),
                                    source: io::Error::from_raw_os_error(d.code.abs()),
                                });
                            }
                            return Ok(replies);
                        }
                        NetlinkPayload::Error(e) => {
                            if e.code.is_some() {
                                return Err(PlumbingError::Netlink {
                                    op: op.to_owned(),
                                    source: e.to_io(),
                                });
                            }
                            if !dump {
                                return Ok(replies);
                            }
                        }
                        NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                        _ => {}
                    },
                    Err(e) if mtype == NLMSG_DONE || mtype == NLMSG_ERROR => {
                        return Err(PlumbingError::Netlink {
                            op: op.to_owned(),
                            source: io::Error::other(format!("undecodable reply: {e}")),
                        });
                    }
                    Err(e) => {
                        tracing::debug!(%op, "skipping undecodable netlink message: {e}");
                    }
                }
            }
        }
    }

    /// The index of interface `name`, or `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, PlumbingError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(m),
            NLM_F_ACK,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the MTU and the transmit queue length (if given) and brings the
    /// link up (if `up`).
    pub fn set_link(
        &mut self,
        index: u32,
        mtu: Option<u32>,
        queue_len: Option<u32>,
        up: bool,
    ) -> Result<(), PlumbingError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = vec![LinkFlag::Up];
            m.header.change_mask = vec![LinkFlag::Up];
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(len) = queue_len {
            m.attributes.push(LinkAttribute::TxQueueLen(len));
        }
        self.request(
            &format!("set link {index} mtu {mtu:?} txqueuelen {queue_len:?} up {up}"),
            RouteNetlinkMessage::SetLink(m),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// The IPv4 addresses (with prefix length) on interface `index`.
    pub fn ipv4_addrs(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, PlumbingError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let replies = self.request(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(m),
            NLM_F_DUMP,
        )?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index || a.header.family != AddressFamily::Inet {
                continue;
            }
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                })
            });
            if let Some(v) = addr {
                out.push((v, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    fn rules_v4(&mut self) -> Result<Vec<RuleMessage>, PlumbingError> {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        let replies = self.request("dump rules", RouteNetlinkMessage::GetRule(m), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRule(r) if r.header.family == AddressFamily::Inet => {
                    Some(r)
                }
                _ => None,
            })
            .collect())
    }

    fn add_rule(&mut self, op: &str, rule: RuleMessage) -> Result<(), PlumbingError> {
        self.request(
            op,
            RouteNetlinkMessage::NewRule(rule),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn del_rule(&mut self, op: &str, rule: RuleMessage) -> Result<(), PlumbingError> {
        self.request(op, RouteNetlinkMessage::DelRule(rule), NLM_F_ACK)?;
        Ok(())
    }

    fn routes_v4(&mut self, table: u32) -> Result<Vec<RouteMessage>, PlumbingError> {
        let mut routes = self.all_routes_v4()?;
        routes.retain(|r| route_table(r) == table);
        Ok(routes)
    }

    /// Every IPv4 route of every table (one dump).
    fn all_routes_v4(&mut self) -> Result<Vec<RouteMessage>, PlumbingError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let replies = self.request("dump routes", RouteNetlinkMessage::GetRoute(m), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.address_family == AddressFamily::Inet =>
                {
                    Some(r)
                }
                _ => None,
            })
            .collect())
    }

    fn add_default_route(&mut self, table: u32, oif: u32) -> Result<(), PlumbingError> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 0;
        m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Link;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Table(table));
        m.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            &format!("add route default dev #{oif} table {table}"),
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn add_route(&mut self, op: &str, route: RouteMessage) -> Result<(), PlumbingError> {
        self.request(
            op,
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )?;
        Ok(())
    }

    fn del_route(&mut self, op: &str, route: RouteMessage) -> Result<(), PlumbingError> {
        self.request(op, RouteNetlinkMessage::DelRoute(route), NLM_F_ACK)?;
        Ok(())
    }
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn rule_pref(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn rule_ipproto(r: &RuleMessage) -> Option<i32> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::IpProtocol(p) => Some(i32::from(*p)),
        _ => None,
    })
}

fn rule_dst(r: &RuleMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(d) => Some(*d),
        _ => None,
    })
}

fn rule_iif(r: &RuleMessage) -> Option<&str> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Iifname(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A rule `pref N lookup local` with no selector: the kernel's default
/// `0: from all lookup local`, or that rule after we moved it.
fn is_plain_local(r: &RuleMessage) -> bool {
    r.header.action == RuleAction::ToTable
        && rule_table(r) == RT_TABLE_LOCAL
        && r.header.src_len == 0
        && r.header.dst_len == 0
        && r.header.tos == 0
        && !r.header.flags.contains(&RuleFlag::Invert)
        && r.attributes.iter().all(|a| match a {
            RuleAttribute::Priority(_) | RuleAttribute::Table(_) | RuleAttribute::Protocol(_) => {
                true
            }
            // the kernel always reports these; u32::MAX (-1) means "unset"
            RuleAttribute::SuppressPrefixLen(v) | RuleAttribute::SuppressIfGroup(v) => {
                *v == u32::MAX
            }
            RuleAttribute::L3MDev(on) => !on,
            _ => false,
        })
}

fn is_sal_rule(r: &RuleMessage, pref: u32) -> bool {
    rule_pref(r) == pref && rule_ipproto(r) == Some(i32::from(SAL_IPPROTO))
}

fn with_pref(r: &RuleMessage, pref: u32) -> RuleMessage {
    let mut r = r.clone();
    r.attributes
        .retain(|a| !matches!(a, RuleAttribute::Priority(_)));
    r.attributes.push(RuleAttribute::Priority(pref));
    r
}

fn sal_rule(pref: u32, table: u32, iface: &str, addr: Ipv4Addr) -> RuleMessage {
    let mut r = RuleMessage::default();
    r.header.family = AddressFamily::Inet;
    r.header.action = RuleAction::ToTable;
    r.header.dst_len = 32;
    r.header.table = u8::try_from(table).unwrap_or(0);
    r.attributes.push(RuleAttribute::Priority(pref));
    r.attributes.push(RuleAttribute::Table(table));
    r.attributes
        .push(RuleAttribute::Destination(IpAddr::V4(addr)));
    r.attributes.push(RuleAttribute::Iifname(iface.to_owned()));
    r.attributes
        .push(RuleAttribute::IpProtocol(IpProtocol::from(i32::from(
            SAL_IPPROTO,
        ))));
    r
}

/// The per-source rule `pref P from A/32 lookup T`.
fn source_rule(pref: u32, table: u32, addr: Ipv4Addr) -> RuleMessage {
    let mut r = RuleMessage::default();
    r.header.family = AddressFamily::Inet;
    r.header.action = RuleAction::ToTable;
    r.header.src_len = 32;
    r.header.table = u8::try_from(table).unwrap_or(0);
    r.attributes.push(RuleAttribute::Priority(pref));
    r.attributes.push(RuleAttribute::Table(table));
    r.attributes.push(RuleAttribute::Source(IpAddr::V4(addr)));
    r
}

fn rule_src(r: &RuleMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(d) => Some(*d),
        _ => None,
    })
}

/// A rule that looks like one of our per-source rules for `cfg`: at one of
/// the per-source preferences, from a single address, into one of the
/// per-source tables, with no other selector.
fn is_source_rule(r: &RuleMessage, cfg: &PlumbingConfig) -> bool {
    r.header.action == RuleAction::ToTable
        && r.header.src_len == 32
        && r.header.dst_len == 0
        && cfg.is_source_pref(rule_pref(r))
        && cfg.is_source_table(rule_table(r))
        && rule_ipproto(r).is_none()
        && rule_iif(r).is_none()
}

/// `route`, a main-table route, as it goes into table `table`.
fn copy_route(route: &RouteMessage, table: u32) -> RouteMessage {
    let mut m = route.clone();
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    // Flags such as `linkdown` are state the kernel reports, not requests.
    m.header.flags.clear();
    m.attributes.retain(|a| {
        !matches!(
            a,
            RouteAttribute::Table(_) | RouteAttribute::CacheInfo(_) | RouteAttribute::Expires(_)
        )
    });
    m.attributes.push(RouteAttribute::Table(table));
    m
}

/// `throw <destination of route>` for table `table`: a lookup there for
/// that prefix fails and the rules after it (the main table) decide.
fn throw_route(route: &RouteMessage, table: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = route.header.destination_prefix_length;
    m.header.tos = route.header.tos;
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Throw;
    m.attributes.extend(
        route
            .attributes
            .iter()
            .filter(|a| matches!(a, RouteAttribute::Destination(_)))
            .cloned(),
    );
    m.attributes.push(RouteAttribute::Table(table));
    m
}

/// What identifies a route within one table: kind, destination, gateway,
/// device and metric.
fn route_key(r: &RouteMessage) -> String {
    let metric = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    format!("{} metric {}", describe_route(r), metric.unwrap_or(0))
}

fn route_has_gateway(r: &RouteMessage) -> bool {
    r.attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Gateway(_)))
}

fn show_route_addr(a: &RouteAddress) -> String {
    match a {
        RouteAddress::Inet(v) => v.to_string(),
        RouteAddress::Inet6(v) => v.to_string(),
        other => format!("{other:?}"),
    }
}

fn describe_route(r: &RouteMessage) -> String {
    let mut s = String::new();
    if r.header.kind != RouteType::Unicast {
        s.push_str(&format!("{:?} ", r.header.kind).to_lowercase());
    }
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => Some(show_route_addr(d)),
        _ => None,
    });
    match dst {
        Some(d) => s.push_str(&format!("{d}/{}", r.header.destination_prefix_length)),
        None => s.push_str("default"),
    }
    if let Some(g) = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => Some(g),
        _ => None,
    }) {
        s.push_str(&format!(" via {}", show_route_addr(g)));
    }
    if let Some(o) = route_oif(r) {
        s.push_str(&format!(" dev #{o}"));
    }
    s
}

fn describe_rule(r: &RuleMessage) -> String {
    let mut s = format!("pref {}", rule_pref(r));
    if let Some(src) = rule_src(r) {
        s.push_str(&format!(" from {src}/{}", r.header.src_len));
    }
    if let Some(p) = rule_ipproto(r) {
        s.push_str(&format!(" ipproto {p}"));
    }
    if let Some(d) = rule_dst(r) {
        s.push_str(&format!(" to {d}/{}", r.header.dst_len));
    }
    if let Some(i) = rule_iif(r) {
        s.push_str(&format!(" iif {i}"));
    }
    s.push_str(&format!(" lookup {}", rule_table(r)));
    s
}

// ---------------------------------------------------------------------------
// sysctl, nft, namespace identity
// ---------------------------------------------------------------------------

fn conf_path(ifname: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{ifname}/{key}")
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const ALL_RP_FILTER: &str = "/proc/sys/net/ipv4/conf/all/rp_filter";

fn read_sysctl(path: &str) -> Result<String, PlumbingError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| PlumbingError::Sysctl {
            path: path.to_owned(),
            source,
        })
}

fn write_sysctl(path: &str, value: &str) -> Result<(), PlumbingError> {
    fs::write(path, value).map_err(|source| PlumbingError::Sysctl {
        path: path.to_owned(),
        source,
    })
}

fn nft_run(args: &[&str], script: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            "`nft` not found: install nftables".to_owned()
        } else {
            format!("running nft: {e}")
        }
    })?;
    if let Some(script) = script {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing nft script: {e}"))?;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`nft {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft_table_exists() -> bool {
    nft_run(&["list", "table", "ip", NFT_TABLE], None).is_ok()
}

/// The fence: forwarded IPv4 traffic touching the TUN must be protocol 144;
/// anything else entering through the interfaces whose forwarding we turned
/// on is dropped. Other forwarding is not ours to judge (policy accept).
fn fence_script(tun: &str, fenced: &[String]) -> String {
    let mut s = format!(
        "table ip {NFT_TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\toifname \"{tun}\" ip protocol {SAL_IPPROTO} accept\n\
         \t\tiifname \"{tun}\" ip protocol {SAL_IPPROTO} accept\n\
         \t\tiifname \"{tun}\" counter drop\n\
         \t\toifname \"{tun}\" counter drop\n"
    );
    if !fenced.is_empty() {
        let set: Vec<String> = fenced.iter().map(|n| format!("\"{n}\"")).collect();
        s.push_str(&format!(
            "\t\tiifname {{ {} }} counter drop\n",
            set.join(", ")
        ));
    }
    s.push_str("\t}\n}\n");
    s
}

#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_NETNS_COOKIE: nix::libc::c_int = 71;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_NETNS_COOKIE: nix::libc::c_int = 0x50;

/// The calling thread's network namespace: an fd on it (to come back to it
/// from another thread) and a stable identity for file names.
#[derive(Debug)]
struct NetnsHandle {
    id: String,
    file: File,
}

fn current_netns_id() -> io::Result<String> {
    use nix::sys::socket::{socket, AddressFamily as SockFamily, SockFlag, SockType};
    let sock = socket(
        SockFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: `sock` is an open socket for the duration of the call; the
    // option value pointer and length describe `cookie`, a live u64 that the
    // kernel writes at most `len` bytes into.
    let rc = unsafe {
        nix::libc::getsockopt(
            sock.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 && len as usize == std::mem::size_of::<u64>() {
        return Ok(format!("netns-c{cookie}"));
    }
    // Kernels before 5.14: fall back to the nsfs inode (may be reused after
    // the namespace dies, which only matters for stale state files).
    let ino = fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(format!("netns-i{ino}"))
}

impl NetnsHandle {
    fn current() -> io::Result<Self> {
        Ok(NetnsHandle {
            id: current_netns_id()?,
            file: File::open("/proc/thread-self/ns/net")?,
        })
    }
}

// ---------------------------------------------------------------------------
// state file
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SysctlChange {
    path: String,
    old: String,
    new: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AddrRule {
    iface: String,
    addr: Ipv4Addr,
}

/// A per-source routing table we fill (every route in it is ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SourceTable {
    iface: String,
    table: u32,
}

/// A per-source rule `pref <pref> from <addr> lookup <table>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SourceRule {
    iface: String,
    addr: Ipv4Addr,
    pref: u32,
    table: u32,
}

/// Everything we changed, in order, so it can be undone by us or, after a
/// crash, by the next sald.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    pid: u32,
    tun: String,
    table: u32,
    rule_pref: u32,
    local_pref: u32,
    router: bool,
    fence: bool,
    sysctls: Vec<SysctlChange>,
    route: bool,
    rules: Vec<AddrRule>,
    local_moved_from: Option<u32>,
    #[serde(default)]
    source_tables: Vec<SourceTable>,
    #[serde(default)]
    source_rules: Vec<SourceRule>,
}

fn read_state(path: &Path) -> Option<State> {
    let text = fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("ignoring unreadable plumbing state {}: {e}", path.display());
            None
        }
    }
}

fn write_state(path: &Path, state: &State) -> Result<(), PlumbingError> {
    let io = |source| PlumbingError::RunDir {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("state.tmp");
    let text = serde_json::to_string_pretty(state).map_err(|e| io(io::Error::other(e)))?;
    fs::write(&tmp, text).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

// ---------------------------------------------------------------------------
// inspection of what is already there
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Found {
    sal_rules: Vec<RuleMessage>,
    moved_local: Option<RuleMessage>,
    source_rules: Vec<RuleMessage>,
    nft_table: bool,
}

impl Found {
    fn any(&self) -> bool {
        !self.sal_rules.is_empty()
            || self.moved_local.is_some()
            || !self.source_rules.is_empty()
            || self.nft_table
    }

    fn describe(&self, cfg: &PlumbingConfig) -> Vec<String> {
        let mut v = Vec::new();
        if !self.sal_rules.is_empty() {
            v.push(format!(
                "rule pref {} ipproto {SAL_IPPROTO} exists ({})",
                cfg.rule_pref,
                self.sal_rules
                    .iter()
                    .map(describe_rule)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.moved_local.is_some() {
            v.push(format!("the local rule is at pref {}", cfg.local_pref()));
        }
        if !self.source_rules.is_empty() {
            v.push(format!(
                "per-source rules exist ({})",
                self.source_rules
                    .iter()
                    .map(describe_rule)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.nft_table {
            v.push(format!("nft table ip {NFT_TABLE} exists"));
        }
        v
    }
}

fn inspect(rtnl: &mut Rtnl, cfg: &PlumbingConfig) -> Result<Found, PlumbingError> {
    let rules = rtnl.rules_v4()?;
    let sal_rules = rules
        .iter()
        .filter(|r| is_sal_rule(r, cfg.rule_pref))
        .cloned()
        .collect();
    let moved_local = rules
        .iter()
        .find(|r| is_plain_local(r) && rule_pref(r) == cfg.local_pref())
        .cloned();
    let source_rules = rules
        .iter()
        .filter(|r| is_source_rule(r, cfg))
        .cloned()
        .collect();
    Ok(Found {
        sal_rules,
        moved_local,
        source_rules,
        nft_table: nft_table_exists(),
    })
}

/// Deletes every IPv4 route in `table` (one of our per-source tables).
fn flush_table(rtnl: &mut Rtnl, table: u32) -> Result<(), PlumbingError> {
    for r in rtnl.routes_v4(table)? {
        let op = format!("delete route {} table {table}", describe_route(&r));
        match rtnl.del_route(&op, r) {
            Err(e) if e.errno() == Some(nix::libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Removes plumbing left by a sald that died without undoing it.
fn cleanup_stale(
    rtnl: &mut Rtnl,
    cfg: &PlumbingConfig,
    state: Option<&State>,
    found: &Found,
) -> Result<(), PlumbingError> {
    if let Some(state) = state {
        for c in state.sysctls.iter().rev() {
            match read_sysctl(&c.path) {
                Ok(cur) if cur == c.new => write_sysctl(&c.path, &c.old)?,
                Ok(cur) => tracing::warn!(
                    "stale plumbing: {} is {cur}, not {} as sald left it; not restoring {}",
                    c.path,
                    c.new,
                    c.old
                ),
                Err(_) => {} // the interface is gone
            }
        }
    }
    if let Some(moved) = &found.moved_local {
        let orig = state.and_then(|s| s.local_moved_from).unwrap_or(0);
        let rules = rtnl.rules_v4()?;
        let has_orig = rules
            .iter()
            .any(|r| is_plain_local(r) && rule_pref(r) < cfg.local_pref());
        if !has_orig {
            rtnl.add_rule(
                &format!("restore local rule at pref {orig}"),
                with_pref(moved, orig),
            )?;
        }
        rtnl.del_rule(
            &format!("delete local rule at pref {}", cfg.local_pref()),
            moved.clone(),
        )?;
    }
    for r in &found.sal_rules {
        rtnl.del_rule(
            &format!("delete stale rule {}", describe_rule(r)),
            r.clone(),
        )?;
    }
    // Per-source rules: the ones recorded (even if the previous sald used
    // other preferences) and the ones matching this configuration.
    let mut stale_tables: Vec<u32> = Vec::new();
    if let Some(state) = state {
        for r in &state.source_rules {
            match rtnl.del_rule(
                &format!(
                    "delete stale rule pref {} from {} lookup {}",
                    r.pref, r.addr, r.table
                ),
                source_rule(r.pref, r.table, r.addr),
            ) {
                Err(e) if e.errno() == Some(nix::libc::ENOENT) => {}
                other => other?,
            }
        }
        stale_tables.extend(state.source_tables.iter().map(|t| t.table));
    }
    for r in &found.source_rules {
        match rtnl.del_rule(
            &format!("delete stale rule {}", describe_rule(r)),
            r.clone(),
        ) {
            Err(e) if e.errno() == Some(nix::libc::ENOENT) => {}
            other => other?,
        }
        stale_tables.push(rule_table(r));
    }
    stale_tables.sort_unstable();
    stale_tables.dedup();
    for t in stale_tables {
        flush_table(rtnl, t)?;
    }
    for r in rtnl.routes_v4(cfg.table)? {
        if r.header.destination_prefix_length == 0 {
            rtnl.del_route(
                &format!("delete stale default route in table {}", cfg.table),
                r,
            )?;
        }
    }
    if found.nft_table {
        nft_run(&["delete", "table", "ip", NFT_TABLE], None).map_err(PlumbingError::Fence)?;
    }
    Ok(())
}

fn check_conflicts(rtnl: &mut Rtnl, cfg: &PlumbingConfig) -> Result<(), PlumbingError> {
    for r in rtnl.rules_v4()? {
        let pref = rule_pref(&r);
        if pref == 0 || pref > cfg.local_pref() || is_plain_local(&r) {
            continue;
        }
        return Err(PlumbingError::Conflict(format!(
            "rule {} sits between the local rule (pref 0) and pref {}: moving the local rule \
             after sald's rules would let it see locally-delivered traffic; choose a lower rule \
             preference than {pref}",
            describe_rule(&r),
            cfg.local_pref()
        )));
    }
    let routes = rtnl.routes_v4(cfg.table)?;
    if !routes.is_empty() {
        return Err(PlumbingError::Conflict(format!(
            "routing table {} already holds {} route(s); choose another table",
            cfg.table,
            routes.len()
        )));
    }
    for i in 0..cfg.interfaces.len() {
        let table = cfg.source_table(i);
        let routes = rtnl.routes_v4(table)?;
        if !routes.is_empty() {
            return Err(PlumbingError::Conflict(format!(
                "per-source routing table {table} (for {}) already holds {} route(s); choose \
                 another source table base than {}",
                cfg.interfaces[i].name,
                routes.len(),
                cfg.source_table_base
            )));
        }
    }
    Ok(())
}

/// Takes the exclusive lock on `path`; `None` when another process holds
/// it.
///
/// The owner unlinks the file when it removes its plumbing (so lock files
/// of short-lived namespaces do not pile up in /run/serval). A contender
/// may have opened the old file just before the unlink and then lock an
/// orphaned inode, so after locking we check that `path` still names the
/// inode we hold, and start over if not.
fn acquire_lock(path: &Path) -> Result<Option<Flock<File>>, PlumbingError> {
    let run_err = |source| PlumbingError::RunDir {
        path: path.to_owned(),
        source,
    };
    for _ in 0..10 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(run_err)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(run_err(errno.into())),
        };
        let held = lock.metadata().map_err(run_err)?;
        match fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(Some(lock)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(run_err(e)),
        }
    }
    Err(run_err(io::Error::other(
        "lock file keeps being replaced; is another sald starting and stopping in a loop?",
    )))
}

// ---------------------------------------------------------------------------
// the plumbing
// ---------------------------------------------------------------------------

/// Installed host-address mode plumbing; undone by [`Plumbing::remove`] or,
/// best effort, on Drop (which also runs on panic unwinding; the daemon
/// calls `remove()` after SIGINT/SIGTERM).
#[derive(Debug)]
pub struct Plumbing {
    cfg: PlumbingConfig,
    rtnl: Rtnl,
    netns: NetnsHandle,
    state: State,
    state_path: PathBuf,
    lock_path: PathBuf,
    removed: bool,
    // Declared last: released only after the undo in Drop has run.
    _lock: Flock<File>,
}

impl Plumbing {
    /// Installs the recipe described in the module documentation for
    /// `cfg`, in the calling thread's network namespace.
    ///
    /// Fails with [`PlumbingError::Owned`] when another live sald holds this
    /// namespace's lock. Plumbing left by a crashed sald is removed first
    /// (with a warning). On any error, whatever was already changed is
    /// undone before returning.
    pub fn install(cfg: &PlumbingConfig) -> Result<Plumbing, PlumbingError> {
        cfg.validate()?;
        let netns = NetnsHandle::current().map_err(|source| PlumbingError::RunDir {
            path: PathBuf::from("/proc/thread-self/ns/net"),
            source,
        })?;
        fs::create_dir_all(&cfg.run_dir).map_err(|source| PlumbingError::RunDir {
            path: cfg.run_dir.clone(),
            source,
        })?;
        let lock_path = cfg.run_dir.join(format!("plumbing-{}.lock", netns.id));
        let state_path = cfg.run_dir.join(format!("plumbing-{}.state", netns.id));
        let mut rtnl = Rtnl::new()?;
        let Some(lock) = acquire_lock(&lock_path)? else {
            let mut evidence = vec![format!("lock file {} held", lock_path.display())];
            if let Ok(found) = inspect(&mut rtnl, cfg) {
                evidence.extend(found.describe(cfg));
            }
            return Err(PlumbingError::Owned { evidence });
        };
        // We hold the lock, so no sald using this run directory is running.
        // Plumbing that is present was left by one that crashed if its state
        // file is here (it is written before the first change). Without a
        // state file it belongs to someone else (a sald with another run
        // directory, e.g. in another mount namespace, or a manual setup):
        // not ours to delete.
        let found = inspect(&mut rtnl, cfg)?;
        let stale_state = read_state(&state_path);
        if found.any() && stale_state.is_none() {
            let mut evidence = found.describe(cfg);
            evidence.push(format!(
                "no state file {} (not left by a sald using this run directory; if no sald \
                 runs in this network namespace, remove it by hand: ip rule del pref {}; \
                 ip rule add pref 0 lookup local; ip rule del pref {}; ip rule del pref {} to {} \
                 and ip route flush table {} to {}; nft delete table ip {NFT_TABLE})",
                state_path.display(),
                cfg.rule_pref,
                cfg.local_pref(),
                cfg.source_pref(0),
                cfg.source_pref(cfg.interfaces.len().saturating_sub(1)),
                cfg.source_table(0),
                cfg.source_table(cfg.interfaces.len().saturating_sub(1)),
            ));
            return Err(PlumbingError::Owned { evidence });
        }
        if let Some(stale) = &stale_state {
            let mut what = found.describe(cfg);
            what.push(format!("state file of pid {}", stale.pid));
            tracing::warn!(
                "removing stale plumbing left by a sald that did not shut down cleanly: {}",
                what.join("; ")
            );
            cleanup_stale(&mut rtnl, cfg, Some(stale), &found)?;
            fs::remove_file(&state_path).map_err(|source| PlumbingError::RunDir {
                path: state_path.clone(),
                source,
            })?;
        }
        check_conflicts(&mut rtnl, cfg)?;

        let tun_index = rtnl
            .link_index(&cfg.tun)?
            .ok_or_else(|| PlumbingError::UnknownInterface(cfg.tun.clone()))?;
        for iface in &cfg.interfaces {
            rtnl.link_index(&iface.name)?
                .ok_or_else(|| PlumbingError::UnknownInterface(iface.name.clone()))?;
        }
        let router = read_sysctl(IP_FORWARD)? == "1";

        let mut p = Plumbing {
            cfg: cfg.clone(),
            rtnl,
            netns,
            state: State {
                pid: std::process::id(),
                tun: cfg.tun.clone(),
                table: cfg.table,
                rule_pref: cfg.rule_pref,
                local_pref: cfg.local_pref(),
                router,
                ..State::default()
            },
            state_path,
            lock_path,
            removed: false,
            _lock: lock,
        };
        match p.save().and_then(|()| p.apply(tun_index)) {
            Ok(()) => Ok(p),
            Err(e) => {
                let failures = p.teardown();
                for f in failures {
                    tracing::warn!("while rolling back failed plumbing: {f}");
                }
                p.removed = true;
                Err(e)
            }
        }
    }

    fn save(&self) -> Result<(), PlumbingError> {
        write_state(&self.state_path, &self.state)
    }

    fn save_logged(&self) {
        if let Err(e) = self.save() {
            tracing::warn!("could not record plumbing state: {e}");
        }
    }

    fn set_sysctl(&mut self, path: String, value: &str) -> Result<(), PlumbingError> {
        let old = read_sysctl(&path)?;
        if old == value {
            return Ok(());
        }
        // Record before writing: a crash in between must still be undone.
        self.state.sysctls.push(SysctlChange {
            path: path.clone(),
            old,
            new: value.to_owned(),
        });
        self.save()?;
        write_sysctl(&path, value)
    }

    fn apply(&mut self, tun_index: u32) -> Result<(), PlumbingError> {
        let cfg = self.cfg.clone();
        // 1. The fence goes in before any forwarding is switched on, so there
        //    is no window in which the host forwards transit traffic.
        let mut fenced = Vec::new();
        for iface in &cfg.interfaces {
            if read_sysctl(&conf_path(&iface.name, "forwarding"))? != "1" {
                fenced.push(iface.name.clone());
            }
        }
        if self.state.router {
            tracing::info!("net.ipv4.ip_forward is 1: the host is a router already; no fence");
        } else {
            self.state.fence = true;
            self.save()?;
            nft_run(&["-f", "-"], Some(&fence_script(&cfg.tun, &fenced))).map_err(|e| {
                PlumbingError::Fence(format!(
                    "{e} (sald needs nftables to fence off transit traffic when the host is not a router)"
                ))
            })?;
        }
        // 2. sysctls.
        for iface in &cfg.interfaces {
            self.set_sysctl(conf_path(&iface.name, "forwarding"), "1")?;
        }
        self.set_sysctl(conf_path(&cfg.tun, "forwarding"), "1")?;
        self.set_sysctl(conf_path(&cfg.tun, "accept_local"), "1")?;
        self.set_sysctl(conf_path(&cfg.tun, "rp_filter"), "0")?;
        if read_sysctl(ALL_RP_FILTER).is_ok_and(|v| v != "0") {
            tracing::warn!(
                "net.ipv4.conf.all.rp_filter is not 0: SAL packets whose source address belongs to \
                 another interface than the one they leave by will be dropped by reverse-path filtering"
            );
        }
        // 3. default route into the TUN.
        self.state.route = true;
        self.save()?;
        self.rtnl.add_default_route(cfg.table, tun_index)?;
        // 4. one rule per address.
        for iface in &cfg.interfaces {
            for addr in &iface.addrs {
                self.add_rule_for(&iface.name, *addr)?;
            }
        }
        // 5. move the local rule behind ours.
        let rules = self.rtnl.rules_v4()?;
        let locals: Vec<&RuleMessage> = rules
            .iter()
            .filter(|r| is_plain_local(r) && rule_pref(r) <= cfg.rule_pref)
            .collect();
        if let Some(local) = locals.first() {
            let from = rule_pref(local);
            self.state.local_moved_from = Some(from);
            self.save()?;
            self.rtnl.add_rule(
                &format!("add local rule at pref {}", cfg.local_pref()),
                with_pref(local, cfg.local_pref()),
            )?;
            self.rtnl.del_rule(
                &format!("delete local rule at pref {from}"),
                (*local).clone(),
            )?;
            if locals.len() > 1 {
                tracing::warn!(
                    "more than one `lookup local` rule before pref {}; moved only the first",
                    cfg.rule_pref
                );
            }
        } else if !rules.iter().any(is_plain_local) {
            tracing::warn!(
                "no `lookup local` rule found: local delivery is already unusual on this host"
            );
        }
        // 6. per-source routing: one table per interface, one rule per
        //    address.
        for (i, iface) in cfg.interfaces.iter().enumerate() {
            self.state.source_tables.push(SourceTable {
                iface: iface.name.clone(),
                table: cfg.source_table(i),
            });
            self.save()?;
            self.sync_routes([i])?;
            for addr in &iface.addrs {
                self.add_source_rule_for(i, *addr)?;
            }
        }
        Ok(())
    }

    /// Makes the per-source tables of `interfaces` (positions in the
    /// configuration) match the main table: a copy of every IPv4 route
    /// through the interface, and a `throw` for every other non-default
    /// route that does not go through another SAL interface (a container
    /// bridge, a VPN, a blackhole), so that the main table keeps deciding
    /// those and the copied default route does not capture them. Entries the
    /// main table no longer justifies are deleted. One route dump serves
    /// every table. Returns how many routes it added or deleted.
    fn sync_routes(
        &mut self,
        interfaces: impl IntoIterator<Item = usize>,
    ) -> Result<usize, PlumbingError> {
        let mut sal_indexes = Vec::new();
        for iface in &self.cfg.interfaces {
            let index = self
                .rtnl
                .link_index(&iface.name)?
                .ok_or_else(|| PlumbingError::UnknownInterface(iface.name.clone()))?;
            sal_indexes.push(index);
        }
        let routes = self.rtnl.all_routes_v4()?;
        let main: Vec<&RouteMessage> = routes
            .iter()
            .filter(|r| route_table(r) == RT_TABLE_MAIN)
            .collect();
        let (mut changes, mut failed) = (0, None);
        for i in interfaces {
            let (table, index) = (self.cfg.source_table(i), sal_indexes[i]);
            let mut copies = Vec::new();
            let mut throws = Vec::new();
            for r in &main {
                let oif = route_oif(r);
                let unicast = r.header.kind == RouteType::Unicast;
                if unicast && oif == Some(index) {
                    copies.push(copy_route(r, table));
                } else if r.header.destination_prefix_length > 0
                    && !(unicast && oif.is_some_and(|o| sal_indexes.contains(&o)))
                {
                    throws.push(throw_route(r, table));
                }
            }
            // Routes without a gateway (the connected subnet) first: they
            // make the gateways of the others reachable.
            copies.sort_by_key(route_has_gateway);
            let wanted: Vec<RouteMessage> = copies.into_iter().chain(throws).collect();
            let present: Vec<&RouteMessage> =
                routes.iter().filter(|r| route_table(r) == table).collect();
            // A table that cannot be synced does not stop the others.
            match self.replace_table(table, present, wanted) {
                Ok(n) => changes += n,
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(changes), Err)
    }

    /// Deletes the routes of `present` (table `table`) that are not in
    /// `wanted` and adds those of `wanted` that are missing; returns how many.
    fn replace_table(
        &mut self,
        table: u32,
        present: Vec<&RouteMessage>,
        wanted: Vec<RouteMessage>,
    ) -> Result<usize, PlumbingError> {
        let present_keys: std::collections::HashSet<String> =
            present.iter().map(|r| route_key(r)).collect();
        let wanted_keys: std::collections::HashSet<String> = wanted.iter().map(route_key).collect();
        let mut changes = 0;
        for r in present {
            if wanted_keys.contains(&route_key(r)) {
                continue;
            }
            let stale = copy_route(r, table);
            let op = format!("delete route {} table {table}", describe_route(&stale));
            match self.rtnl.del_route(&op, stale) {
                Err(e) if e.errno() == Some(nix::libc::ESRCH) => {}
                other => other?,
            }
            changes += 1;
        }
        for r in wanted {
            if present_keys.contains(&route_key(&r)) {
                continue;
            }
            let op = format!("add route {} table {table}", describe_route(&r));
            match self.rtnl.add_route(&op, r) {
                Err(e) if e.errno() == Some(nix::libc::EEXIST) => {}
                other => other?,
            }
            changes += 1;
        }
        Ok(changes)
    }

    /// Brings every per-source table back in line with the main table (sald
    /// calls this when rtnetlink reports a change of the main table: a route
    /// added or deleted by hand or by a DHCP client, a link that came back).
    /// Returns how many routes it added or deleted.
    pub fn refresh_routes(&mut self) -> Result<usize, PlumbingError> {
        self.sync_routes(0..self.cfg.interfaces.len())
    }

    fn add_source_rule_for(&mut self, i: usize, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        let rule = SourceRule {
            iface: self.cfg.interfaces[i].name.clone(),
            addr,
            pref: self.cfg.source_pref(i),
            table: self.cfg.source_table(i),
        };
        if self.state.source_rules.contains(&rule) {
            return Ok(());
        }
        self.state.source_rules.push(rule.clone());
        self.save()?;
        let op = format!(
            "add rule pref {} from {addr} lookup {}",
            rule.pref, rule.table
        );
        match self
            .rtnl
            .add_rule(&op, source_rule(rule.pref, rule.table, addr))
        {
            Err(e) if e.errno() == Some(nix::libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    fn del_source_rule(&mut self, rule: &SourceRule) -> Result<(), PlumbingError> {
        let op = format!(
            "delete rule pref {} from {} lookup {}",
            rule.pref, rule.addr, rule.table
        );
        match self
            .rtnl
            .del_rule(&op, source_rule(rule.pref, rule.table, rule.addr))
        {
            Err(e) if e.errno() == Some(nix::libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    fn add_rule_for(&mut self, iface: &str, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        self.state.rules.push(AddrRule {
            iface: iface.to_owned(),
            addr,
        });
        self.save()?;
        let op = format!(
            "add rule pref {} ipproto {SAL_IPPROTO} to {addr} iif {iface} lookup {}",
            self.cfg.rule_pref, self.cfg.table
        );
        match self.rtnl.add_rule(
            &op,
            sal_rule(self.cfg.rule_pref, self.cfg.table, iface, addr),
        ) {
            Err(e) if e.errno() == Some(nix::libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Steers protocol-144 packets for a new address of a configured
    /// interface into the TUN (sald calls this when rtnetlink reports an
    /// address was added).
    pub fn add_address(&mut self, iface: &str, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        let Some(i) = self.cfg.interfaces.iter().position(|i| i.name == iface) else {
            return Err(PlumbingError::UnknownInterface(iface.to_owned()));
        };
        if self.cfg.interfaces[i].addrs.contains(&addr) {
            return Ok(());
        }
        self.add_rule_for(iface, addr)?;
        self.cfg.interfaces[i].addrs.push(addr);
        // The new address brings its connected route into the main table
        // (and the link may have flapped, which empties the copy): refresh
        // the interface's table, then route the new source through it.
        if let Err(e) = self.sync_routes([i]) {
            tracing::warn!("refreshing the per-source routes of {iface}: {e}");
        }
        self.add_source_rule_for(i, addr)
    }

    /// Removes the rules of an address that went away. Unknown addresses
    /// are ignored.
    pub fn remove_address(&mut self, iface: &str, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        let Some(i) = self.cfg.interfaces.iter().position(|i| i.name == iface) else {
            return Err(PlumbingError::UnknownInterface(iface.to_owned()));
        };
        self.cfg.interfaces[i].addrs.retain(|a| *a != addr);
        let before = self.state.rules.len();
        self.state
            .rules
            .retain(|r| !(r.iface == iface && r.addr == addr));
        let had_rule = self.state.rules.len() != before;
        let (gone, kept): (Vec<SourceRule>, Vec<SourceRule>) =
            std::mem::take(&mut self.state.source_rules)
                .into_iter()
                .partition(|r| r.iface == iface && r.addr == addr);
        self.state.source_rules = kept;
        if !had_rule && gone.is_empty() {
            return Ok(());
        }
        self.save_logged();
        let mut result = Ok(());
        for r in &gone {
            if let Err(e) = self.del_source_rule(r) {
                result = Err(e);
            }
        }
        if had_rule {
            self.del_rule_for(iface, addr)?;
        }
        result
    }

    fn del_rule_for(&mut self, iface: &str, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        let op = format!(
            "delete rule pref {} ipproto {SAL_IPPROTO} to {addr} iif {iface}",
            self.cfg.rule_pref
        );
        match self.rtnl.del_rule(
            &op,
            sal_rule(self.cfg.rule_pref, self.cfg.table, iface, addr),
        ) {
            Err(e) if e.errno() == Some(nix::libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// The configuration in force (addresses included).
    pub fn config(&self) -> &PlumbingConfig {
        &self.cfg
    }

    /// Whether `net.ipv4.ip_forward` was 1 at start (then there is no fence).
    pub fn host_was_router(&self) -> bool {
        self.state.router
    }

    /// Whether the nftables fence was installed.
    pub fn fence_installed(&self) -> bool {
        self.state.fence
    }

    /// The sysctls changed so far, as `(path, previous value, our value)`.
    pub fn changed_sysctls(&self) -> Vec<(String, String, String)> {
        self.state
            .sysctls
            .iter()
            .map(|c| (c.path.clone(), c.old.clone(), c.new.clone()))
            .collect()
    }

    /// The lock file this plumbing holds.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Undoes everything and releases the lock, best effort: every step is
    /// attempted even if an earlier one fails, failures are logged (tracing,
    /// warn level). Use [`Plumbing::try_remove`] to get them as an error.
    pub fn remove(self) {
        let _ = self.try_remove();
    }

    /// Like [`Plumbing::remove`], also returning the failed steps.
    pub fn try_remove(mut self) -> Result<(), PlumbingError> {
        let failures = self.teardown();
        self.removed = true;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(PlumbingError::Teardown(failures))
        }
    }

    /// Runs the undo in the namespace the plumbing was installed in, even if
    /// the caller's thread is elsewhere (sysctl writes and `nft` act on the
    /// calling thread's namespace).
    fn teardown(&mut self) -> Vec<String> {
        let here = current_netns_id().ok();
        if here.as_deref() == Some(self.netns.id.as_str()) {
            return self.teardown_here();
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = nix::sched::setns(
                    self.netns.file.as_fd(),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                ) {
                    return vec![format!("entering the plumbing's network namespace: {e}")];
                }
                self.teardown_here()
            })
            .join()
            .unwrap_or_else(|_| vec!["teardown thread panicked".to_owned()])
        })
    }

    fn teardown_here(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut fail = |what: String| note_failure(&mut failures, what);
        // Forwarding off first: from here on nothing transits.
        for c in std::mem::take(&mut self.state.sysctls).into_iter().rev() {
            match read_sysctl(&c.path) {
                Ok(cur) if cur == c.new => {
                    if let Err(e) = write_sysctl(&c.path, &c.old) {
                        fail(e.to_string());
                    }
                }
                Ok(cur) => tracing::warn!(
                    "{} was changed to {cur} while sald ran; leaving it (was {} before sald)",
                    c.path,
                    c.old
                ),
                // The interface (typically the TUN, already closed) is gone.
                Err(_) => tracing::debug!("{} is gone; nothing to restore", c.path),
            }
        }
        if let Some(from) = self.state.local_moved_from.take() {
            let local_pref = self.cfg.local_pref();
            match self.rtnl.rules_v4() {
                Ok(rules) => {
                    let moved = rules
                        .iter()
                        .find(|r| is_plain_local(r) && rule_pref(r) == local_pref);
                    let back = rules
                        .iter()
                        .any(|r| is_plain_local(r) && rule_pref(r) == from);
                    if let Some(moved) = moved {
                        if !back {
                            if let Err(e) = self.rtnl.add_rule(
                                &format!("restore local rule at pref {from}"),
                                with_pref(moved, from),
                            ) {
                                fail(e.to_string());
                            }
                        }
                        if let Err(e) = self.rtnl.del_rule(
                            &format!("delete local rule at pref {local_pref}"),
                            moved.clone(),
                        ) {
                            fail(e.to_string());
                        }
                    } else if !back {
                        fail(format!(
                            "the local rule is neither at pref {local_pref} nor at {from}"
                        ));
                    }
                }
                Err(e) => fail(e.to_string()),
            }
        }
        for r in std::mem::take(&mut self.state.rules) {
            if let Err(e) = self.del_rule_for(&r.iface, r.addr) {
                fail(e.to_string());
            }
        }
        for r in std::mem::take(&mut self.state.source_rules) {
            if let Err(e) = self.del_source_rule(&r) {
                fail(e.to_string());
            }
        }
        for t in std::mem::take(&mut self.state.source_tables) {
            if let Err(e) = flush_table(&mut self.rtnl, t.table) {
                fail(e.to_string());
            }
        }
        if std::mem::take(&mut self.state.route) {
            match self.rtnl.routes_v4(self.cfg.table) {
                Ok(routes) => {
                    let tun_index = self.rtnl.link_index(&self.cfg.tun).ok().flatten();
                    for r in routes {
                        if r.header.destination_prefix_length == 0
                            && tun_index.is_some()
                            && route_oif(&r) == tun_index
                        {
                            if let Err(e) = self.rtnl.del_route(
                                &format!("delete default route in table {}", self.cfg.table),
                                r,
                            ) {
                                if e.errno() != Some(nix::libc::ESRCH) {
                                    fail(e.to_string());
                                }
                            }
                        }
                    }
                }
                Err(e) => fail(e.to_string()),
            }
        }
        if std::mem::take(&mut self.state.fence) {
            if let Err(e) = nft_run(&["delete", "table", "ip", NFT_TABLE], None) {
                fail(e);
            }
        }
        // Only once everything is undone. If a step failed, the state file
        // (still holding the full record on disk) stays, so the next sald
        // treats the leftovers as stale and retries the cleanup. The lock
        // file goes while we still hold the lock (see `acquire_lock`); the
        // lock itself is released when `self` is dropped.
        if !failures.is_empty() {
            return failures;
        }
        for path in [&self.state_path, &self.lock_path] {
            if let Err(e) = fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    note_failure(&mut failures, format!("{}: {e}", path.display()));
                }
            }
        }
        failures
    }
}

fn note_failure(failures: &mut Vec<String>, what: String) {
    tracing::warn!("plumbing teardown: {what}");
    failures.push(what);
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        if !self.removed {
            self.removed = true;
            let _ = self.teardown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        let ok = PlumbingConfig::new("sal0").interface("eth0", vec![Ipv4Addr::new(10, 0, 0, 1)]);
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.table = 254;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.rule_pref = 0;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.rule_pref = 32765;
        assert!(bad.validate().is_err());
        let bad = ok.clone().interface("eth0", vec![]);
        assert!(bad.validate().is_err());
        let bad = ok.clone().interface("sal0", vec![]);
        assert!(bad.validate().is_err());
        let bad = PlumbingConfig::new("sal0\"; flush ruleset");
        assert!(bad.validate().is_err());
        let bad = PlumbingConfig::new("sal0").interface("eth1", vec![Ipv4Addr::UNSPECIFIED]);
        assert!(bad.validate().is_err());
        // per-source tables must not hit table 144 or the kernel's tables
        let two = ok
            .clone()
            .interface("eth1", vec![Ipv4Addr::new(10, 0, 1, 1)]);
        assert!(two.validate().is_ok());
        assert_eq!((two.source_table(0), two.source_table(1)), (1000, 1001));
        assert_eq!((two.source_pref(0), two.source_pref(1)), (110, 111));
        for base in [143, 144, 252, 253, 254, 255, 0] {
            let mut bad = two.clone();
            bad.source_table_base = base;
            assert!(bad.validate().is_err(), "base {base}");
        }
        let mut bad = two.clone();
        bad.source_table_base = u32::MAX;
        assert!(bad.validate().is_err());
        let mut fine = two.clone();
        fine.source_table_base = 256;
        assert!(fine.validate().is_ok());
        let mut bad = two.clone();
        bad.rule_pref = 32755;
        assert!(bad.validate().is_err());
        let mut fine = two.clone();
        fine.rule_pref = 32754;
        assert!(fine.validate().is_ok());
    }

    #[test]
    fn source_rule_predicates() {
        let cfg = PlumbingConfig::new("sal0")
            .interface("eth0", vec![Ipv4Addr::new(10, 0, 0, 1)])
            .interface("eth1", vec![Ipv4Addr::new(10, 0, 1, 1)]);
        let r = source_rule(111, 1001, Ipv4Addr::new(10, 0, 1, 1));
        assert!(is_source_rule(&r, &cfg));
        assert!(!is_sal_rule(&r, 111));
        assert!(!is_plain_local(&r));
        assert_eq!(describe_rule(&r), "pref 111 from 10.0.1.1/32 lookup 1001");
        assert!(!is_source_rule(
            &source_rule(112, 1001, Ipv4Addr::new(10, 0, 1, 1)),
            &cfg
        ));
        assert!(!is_source_rule(
            &source_rule(111, 1002, Ipv4Addr::new(10, 0, 1, 1)),
            &cfg
        ));
        let s = sal_rule(110, 1000, "eth0", Ipv4Addr::new(10, 0, 0, 1));
        assert!(!is_source_rule(&s, &cfg));
    }

    #[test]
    fn copied_route_goes_to_the_source_table() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Unicast;
        r.attributes.push(RouteAttribute::Table(254));
        r.attributes
            .push(RouteAttribute::Gateway(Ipv4Addr::new(10, 0, 0, 254).into()));
        r.attributes.push(RouteAttribute::Oif(3));
        let c = copy_route(&r, 1000);
        assert_eq!(route_table(&c), 1000);
        assert_eq!(c.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(route_has_gateway(&c));
        assert_eq!(describe_route(&c), "default via 10.0.0.254 dev #3");
        assert_eq!(route_table(&copy_route(&r, 200)), 200);
        assert_eq!(copy_route(&r, 200).header.table, 200);

        let mut net = r.clone();
        net.header.destination_prefix_length = 16;
        net.attributes.push(RouteAttribute::Destination(
            Ipv4Addr::new(172, 17, 0, 0).into(),
        ));
        let t = throw_route(&net, 1001);
        assert_eq!(t.header.kind, RouteType::Throw);
        assert_eq!(route_table(&t), 1001);
        assert!(!route_has_gateway(&t) && route_oif(&t).is_none());
        assert_eq!(describe_route(&t), "throw 172.17.0.0/16");
    }

    #[test]
    fn fence_script_shape() {
        let s = fence_script("sal0", &["eth0".to_owned(), "eth1".to_owned()]);
        assert!(s.contains("table ip sald"));
        assert!(s.contains("type filter hook forward priority 0; policy accept;"));
        assert!(s.contains("oifname \"sal0\" ip protocol 144 accept"));
        assert!(s.contains("iifname \"sal0\" ip protocol 144 accept"));
        assert!(s.contains("iifname { \"eth0\", \"eth1\" } counter drop"));
        let s = fence_script("sal0", &[]);
        assert!(!s.contains("iifname {"));
    }

    #[test]
    fn sal_rule_round_trip_predicates() {
        let r = sal_rule(100, 144, "eth0", Ipv4Addr::new(10, 0, 0, 1));
        assert!(is_sal_rule(&r, 100));
        assert!(!is_sal_rule(&r, 101));
        assert!(!is_plain_local(&r));
        assert_eq!(rule_table(&r), 144);
        assert_eq!(rule_iif(&r), Some("eth0"));
        assert_eq!(
            describe_rule(&r),
            "pref 100 ipproto 144 to 10.0.0.1/32 iif eth0 lookup 144"
        );
        let mut local = RuleMessage::default();
        local.header.family = AddressFamily::Inet;
        local.header.action = RuleAction::ToTable;
        local.header.table = 255;
        local.attributes.push(RuleAttribute::Table(255));
        assert!(is_plain_local(&local));
        assert_eq!(rule_pref(&with_pref(&local, 101)), 101);
    }

    #[test]
    fn state_round_trip() {
        let s = State {
            pid: 7,
            tun: "sal0".into(),
            sysctls: vec![SysctlChange {
                path: "/proc/sys/x".into(),
                old: "0".into(),
                new: "1".into(),
            }],
            rules: vec![AddrRule {
                iface: "eth0".into(),
                addr: Ipv4Addr::new(10, 0, 0, 1),
            }],
            local_moved_from: Some(0),
            source_tables: vec![SourceTable {
                iface: "eth0".into(),
                table: 1000,
            }],
            source_rules: vec![SourceRule {
                iface: "eth0".into(),
                addr: Ipv4Addr::new(10, 0, 0, 1),
                pref: 110,
                table: 1000,
            }],
            ..State::default()
        };
        let text = serde_json::to_string(&s).expect("serialize");
        let back: State = serde_json::from_str(&text).expect("parse");
        assert_eq!(s, back);
        // state files written before per-source routing still parse
        let old = r#"{"pid":1,"tun":"sal0","table":144,"rule_pref":100,"local_pref":101,
            "router":false,"fence":true,"sysctls":[],"route":true,"rules":[],
            "local_moved_from":0}"#;
        let back: State = serde_json::from_str(old).expect("parse old state");
        assert!(back.source_tables.is_empty() && back.source_rules.is_empty());
    }
}
