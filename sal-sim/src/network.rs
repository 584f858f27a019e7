//! The simulated network: hosts on one shared medium, joined by paths of
//! fault nodes.
//!
//! A packet goes to the host owning its destination address, or to every
//! host on the subnet for a subnet broadcast address. On its way it crosses
//! the [`Path`] for its (source, destination) address pair: the one a test
//! set with [`Network::set_path`], else a fresh one from the network's
//! default (one per address pair, since nodes may have state). Time is
//! virtual and jumps straight to the next event (a packet reaching a node
//! or a host, or a host timer), so a minute of lossy transfer runs in well
//! under a second, and events are processed in time order.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sal::locator::Locator;
use sal::proto::{Event, Host, HostConfig, LocalInterface};
use smoltcp::time::{Duration, Instant};

use crate::conditions::LinkConditions;
use crate::nat::{Nat, Translation};
use crate::node::{DropReason, Path, Verdict};
use crate::seed::{seed_or, SeedGuard};
use crate::Packet;

/// Index of a host in a [`Network`].
pub type HostId = usize;

/// Which path a packet crosses: its source and destination addresses.
type PathKey = (Ipv4Addr, Ipv4Addr);

/// A packet on its way: the next node it reaches (`hop`), and when.
#[derive(Debug)]
struct InFlight {
    at: Instant,
    /// Tie-breaker: packets reaching something at one instant keep the
    /// order they were sent in.
    seq: u64,
    hop: usize,
    to: HostId,
    packet: Packet,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One simulated host and what it reported.
pub struct SimHost {
    /// The test's name for the host (`add_host`'s `name`).
    pub name: String,
    /// The protocol core under test, driven by the network's virtual clock.
    pub host: Host,
    /// Every event the host emitted, in order.
    pub events: Vec<Event>,
    /// Packets this host put on the wire.
    pub sent: u64,
    /// Packets delivered to this host.
    pub received: u64,
}

/// Counters of the medium.
#[derive(Debug, Clone, Copy, Default)]
pub struct WireStats {
    /// Packets hosts sent (and [`Network::inject`]ed).
    pub sent: u64,
    /// Lost at random, or dropped by the NAT, by a link that is down or by
    /// the filter.
    pub lost: u64,
    /// Copies added by duplication.
    pub duplicated: u64,
    /// Dropped for exceeding a path's MTU.
    pub too_big: u64,
    /// Dropped by a partition.
    pub partitioned: u64,
    /// Dropped by a full queue in front of a rate limit.
    pub overflowed: u64,
    /// Addressed to nobody.
    pub undeliverable: u64,
    /// Handed to a host.
    pub delivered: u64,
}

/// A test's hook to drop chosen packets: gets each transmit, returns true to drop it.
pub type PacketFilter = Box<dyn FnMut(&Packet) -> bool>;

/// Makes the path of an address pair nobody set a path for.
pub type PathFactory = Box<dyn FnMut() -> Path>;

/// The simulated network. See the module docs.
pub struct Network {
    now: Instant,
    hosts: Vec<SimHost>,
    wire: BinaryHeap<Reverse<InFlight>>,
    paths: HashMap<PathKey, Path>,
    default_path: PathFactory,
    rng: SmallRng,
    seq: u64,
    /// Addresses whose packets are dropped both ways (a link that is down).
    down: HashSet<Ipv4Addr>,
    /// Drops the packets for which it returns true (targeted loss).
    filter: Option<PacketFilter>,
    /// Translates addresses between a private subnet and the rest.
    nat: Option<Nat>,
    /// What the medium did with packets so far.
    pub stats: WireStats,
    /// Where hosts write the packets they send.
    buffer: Vec<u8>,
    /// Last, so that it is dropped (and prints the seed) after the rest.
    seed: SeedGuard,
}

impl Network {
    /// A network whose every link has `conditions`, seeded with `seed`
    /// unless `SIMULATION_SEED` says otherwise (see [`crate::seed`]).
    pub fn new(seed: u64, conditions: LinkConditions) -> Network {
        Network::with_default_path(seed, move || conditions.path())
    }

    /// A network whose links each get a path from `make` (called once per
    /// address pair, when the pair first carries a packet).
    pub fn with_default_path(seed: u64, make: impl FnMut() -> Path + 'static) -> Network {
        let seed = seed_or(seed);
        Network {
            now: Instant::from_millis(0),
            hosts: Vec::new(),
            wire: BinaryHeap::new(),
            paths: HashMap::new(),
            default_path: Box::new(make),
            rng: SmallRng::seed_from_u64(seed),
            seq: 0,
            down: HashSet::new(),
            filter: None,
            nat: None,
            stats: WireStats::default(),
            buffer: vec![0; Packet::MAX_LEN],
            seed: SeedGuard(seed),
        }
    }

    /// The seed this network runs with.
    pub fn seed(&self) -> u64 {
        self.seed.0
    }

    /// The current virtual time (starts at 0; moves only in `step`/`run_*`).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Adds a host with interfaces given as `(name, "10.0.0.1/24")`.
    pub fn add_host(
        &mut self,
        name: &str,
        config: HostConfig,
        interfaces: &[(&str, &str)],
    ) -> HostId {
        self.add_host_on(name, config, interfaces, None)
    }

    /// Adds a host in UDP carriage: its locators are its interfaces'
    /// addresses with UDP port `port`.
    pub fn add_udp_host(
        &mut self,
        name: &str,
        config: HostConfig,
        interfaces: &[(&str, &str)],
        port: u16,
    ) -> HostId {
        self.add_host_on(name, config, interfaces, Some(port))
    }

    fn add_host_on(
        &mut self,
        name: &str,
        mut config: HostConfig,
        interfaces: &[(&str, &str)],
        udp_port: Option<u16>,
    ) -> HostId {
        config.seed = self.rng.random();
        let mut host = Host::new(config, self.now);
        for (ifname, cidr) in interfaces {
            let (addr, len) = cidr.split_once('/').unwrap_or((cidr, "24"));
            let addr: Ipv4Addr = addr.parse().expect("test addresses are valid");
            host.add_interface(LocalInterface {
                name: ifname.to_string(),
                locator: match udp_port {
                    Some(port) => Locator::Udp(SocketAddrV4::new(addr, port)),
                    None => Locator::Ipv4(addr),
                },
                prefix_len: len.parse().expect("test prefix lengths are valid"),
                up: true,
            });
        }
        self.hosts.push(SimHost {
            name: name.to_string(),
            host,
            events: Vec::new(),
            sent: 0,
            received: 0,
        });
        self.hosts.len() - 1
    }

    /// The protocol core of host `id`, to act on as an application would.
    pub fn host(&mut self, id: HostId) -> &mut Host {
        &mut self.hosts[id].host
    }

    /// Host `id` with its event log and packet counters.
    pub fn sim_host(&mut self, id: HostId) -> &mut SimHost {
        &mut self.hosts[id]
    }

    /// Packets from `src` to `dst` cross `path` from now on, instead of the
    /// default (one direction; set the other one too for a whole link).
    /// Packets already past a node of the old path finish on the new one.
    pub fn set_path(&mut self, src: Ipv4Addr, dst: Ipv4Addr, path: Path) {
        self.paths.insert((src, dst), path);
    }

    /// Drops every packet from or to `ip` until [`Network::link_up`].
    pub fn link_down(&mut self, ip: Ipv4Addr) {
        self.down.insert(ip);
    }

    /// Lets packets from and to `ip` through again after
    /// [`Network::link_down`].
    pub fn link_up(&mut self, ip: Ipv4Addr) {
        self.down.remove(&ip);
    }

    /// Drops every packet for which `filter` returns true, until replaced or cleared.
    pub fn set_filter(&mut self, filter: Option<PacketFilter>) {
        self.filter = filter;
    }

    /// Puts a NAT between a private subnet and the rest (`None`: none).
    pub fn set_nat(&mut self, nat: Option<Nat>) {
        self.nat = nat;
    }

    /// The NAT, to rebind it or read its counters.
    pub fn nat_mut(&mut self) -> Option<&mut Nat> {
        self.nat.as_mut()
    }

    /// Injects a packet as if the host at its `src` had sent it.
    pub fn inject(&mut self, transmit: Packet) {
        self.put_on_wire(usize::MAX, transmit);
    }

    /// Hosts that should receive a packet for `to`: its owner (the host
    /// with that very locator first, so that UDP hosts may share an address
    /// on different ports, else the host with its address), or the whole
    /// subnet for a broadcast address.
    fn receivers(&self, from: HostId, to: Locator) -> Vec<HostId> {
        let dst = to.ip();
        let owner = self
            .hosts
            .iter()
            .position(|h| h.host.interfaces().iter().any(|i| i.locator == to))
            .or_else(|| {
                self.hosts
                    .iter()
                    .position(|h| h.host.interfaces().iter().any(|i| i.locator.ip() == dst))
            });
        if let Some(owner) = owner {
            return vec![owner];
        }
        self.hosts
            .iter()
            .enumerate()
            .filter(|(i, h)| {
                *i != from
                    && h.host.interfaces().iter().any(|iface| {
                        let host_bits = 32 - u32::from(iface.prefix_len.min(32));
                        let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
                        let ip = u32::from(iface.locator.ip());
                        ip & mask == u32::from(dst) & mask && u32::from(dst) | mask == u32::MAX
                    })
            })
            .map(|(i, _)| i)
            .collect()
    }

    fn put_on_wire(&mut self, from: HostId, mut transmit: Packet) {
        self.stats.sent += 1;
        if let Some(h) = self.hosts.get_mut(from) {
            h.sent += 1;
        }
        let now = self.now;
        if let Some(nat) = self.nat.as_mut() {
            if nat.translate(&mut transmit, now) == Translation::Dropped {
                self.stats.lost += 1;
                return;
            }
        }
        let (src, dst) = (transmit.src.ip(), transmit.dst.ip());
        let filtered = self.filter.as_mut().is_some_and(|f| f(&transmit));
        if filtered || self.down.contains(&src) || self.down.contains(&dst) {
            self.stats.lost += 1;
            return;
        }
        let receivers = self.receivers(from, transmit.dst);
        if receivers.is_empty() {
            self.stats.undeliverable += 1;
        }
        if !self.paths.contains_key(&(src, dst)) {
            let path = (self.default_path)();
            self.paths.insert((src, dst), path);
        }
        for to in receivers {
            let packet = InFlight {
                at: self.now,
                seq: self.next_seq(),
                hop: 0,
                to,
                packet: transmit.clone(),
            };
            self.advance(packet);
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Takes a packet through the nodes it reaches by now, then queues it
    /// for the next node (or the host) at the time it gets there.
    fn advance(&mut self, mut p: InFlight) {
        let key = (p.packet.src.ip(), p.packet.dst.ip());
        while p.at <= self.now {
            let Some(node) = self
                .paths
                .get_mut(&key)
                .and_then(|path| path.node_mut(p.hop))
            else {
                break;
            };
            match node.process(&p.packet, p.at, &mut self.rng) {
                Verdict::Pass(at) => p.at = at.max(p.at),
                Verdict::Duplicate(at, again) => {
                    self.stats.duplicated += 1;
                    let copy = InFlight {
                        at: again.max(p.at),
                        seq: self.next_seq(),
                        hop: p.hop + 1,
                        to: p.to,
                        packet: p.packet.clone(),
                    };
                    self.wire.push(Reverse(copy));
                    p.at = at.max(p.at);
                }
                Verdict::Drop(reason) => {
                    let counter = match reason {
                        DropReason::Loss => &mut self.stats.lost,
                        DropReason::TooBig => &mut self.stats.too_big,
                        DropReason::Partition => &mut self.stats.partitioned,
                        DropReason::QueueFull => &mut self.stats.overflowed,
                    };
                    *counter += 1;
                    return;
                }
            }
            p.hop += 1;
        }
        self.wire.push(Reverse(p));
    }

    /// Processes everything on the wire due by now, in time order: packets
    /// reaching nodes move on, packets reaching hosts are delivered.
    fn run_wire(&mut self) {
        while self.wire.peek().is_some_and(|p| p.0.at <= self.now) {
            let Some(Reverse(p)) = self.wire.pop() else {
                break;
            };
            let key = (p.packet.src.ip(), p.packet.dst.ip());
            if self.paths.get(&key).is_some_and(|path| p.hop < path.len()) {
                self.advance(p);
                continue;
            }
            self.stats.delivered += 1;
            let h = &mut self.hosts[p.to];
            h.received += 1;
            let t = p.packet;
            h.host
                .handle_packet(self.now, t.src, t.dst, t.ttl, &t.payload);
        }
    }

    /// Moves every host's transmits to the wire and its events to its log.
    fn collect(&mut self) {
        for id in 0..self.hosts.len() {
            while let Some(t) =
                Packet::next_from(&mut self.hosts[id].host, self.now, &mut self.buffer)
            {
                self.put_on_wire(id, t);
            }
            while let Some(e) = self.hosts[id].host.poll_event() {
                self.hosts[id].events.push(e);
            }
        }
    }

    /// Polls every host at the current time and collects what they produced.
    pub fn settle(&mut self) {
        let now = self.now;
        for h in &mut self.hosts {
            h.host.poll(now);
        }
        self.collect();
    }

    /// Advances to the next event (at most `limit`) and processes it.
    /// Returns false when nothing at all is scheduled before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.settle();
        let next_packet = self.wire.peek().map(|p| p.0.at);
        let next_timer = self
            .hosts
            .iter_mut()
            .filter_map(|h| h.host.poll_timeout())
            .min();
        let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
            return false;
        };
        if next > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(next);
        self.run_wire();
        self.settle();
        true
    }

    /// Runs until `done` returns true (checked after every step) or `timeout`
    /// of virtual time passes; returns whether `done` became true. `done` may
    /// act on the network (an application pumping data, say).
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Network) -> bool,
    ) -> bool {
        let limit = self.now + timeout;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= limit {
                return false;
            }
            if !self.step(limit) {
                // Nothing is scheduled before the limit: only `done` can change that.
                self.now = limit;
                return done(self);
            }
        }
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    /// Removes and returns the events a host emitted so far.
    pub fn take_events(&mut self, id: HostId) -> Vec<Event> {
        std::mem::take(&mut self.hosts[id].events)
    }
}
