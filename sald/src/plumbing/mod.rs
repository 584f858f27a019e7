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
//! | nftables table `ip sald` (the fence) | `conf.IF.forwarding=1` would also forward other transit traffic arriving on `IF`: only protocol 144 may be forwarded (to or from the TUN, or other hosts' SAL packets crossing a router host) |
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
//! * Forwarded packets have their TTL decremented once on each crossing
//!   (sald makes up for it: [`crate::link::tun_egress_ttl`]).
//! * Broadcasts and packets whose source is not one of our addresses cannot
//!   go through the TUN (delivered locally; reverse-path filtered unless
//!   `conf.all.rp_filter` is 0): sald sends those through a raw socket
//!   ([`crate::raw`]), on the output path, which this plumbing and the fence
//!   do not touch.
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
//! writes, the `nft` command): the calls are few, they work from `Drop`,
//! and they can be used from inside or outside a tokio runtime. sald makes
//! them on a thread of their own ([`PlumbingWorker`]), never on the thread
//! that carries packets.
//!
//! ## Modules
//!
//! | module | what |
//! | --- | --- |
//! | `config` | [`PlumbingConfig`]: TUN, interfaces, tables, preferences |
//! | `installed` | [`Plumbing`]: install, follow addresses and routes, remove |
//! | `rtnl` | [`Rtnl`], the synchronous rtnetlink client (also used by [`crate::link`]) |
//! | `messages` | building, recognising and describing rules and routes |
//! | `sysctl`, `nft`, `netns` | `/proc/sys`, the nftables fence, namespace identity |
//! | `state`, `lock` | the state file and the lock file in the run directory |
//! | `inspect` | what is already there: live owner, stale leftovers, conflicts |
//! | `worker` | [`PlumbingWorker`], the thread the daemon runs all of it on |

mod config;
mod error;
mod inspect;
mod installed;
mod lock;
mod messages;
mod netns;
pub(crate) use netns::netns_cookie;
mod nft;
mod rtnl;
mod state;
mod sysctl;
mod worker;

pub use config::{
    validate_ifname, InterfaceConfig, PlumbingConfig, DEFAULT_RULE_PREF, DEFAULT_RUN_DIR,
    DEFAULT_SOURCE_TABLE_BASE, DEFAULT_TABLE, SOURCE_PREF_OFFSET,
};
pub use error::PlumbingError;
pub use installed::Plumbing;
pub use nft::NFT_TABLE;
pub use rtnl::Rtnl;
pub use worker::PlumbingWorker;

/// IP protocol number of native SAL packets (WIRE.md, "Carriage").
pub const SAL_IPPROTO: u8 = 144;
