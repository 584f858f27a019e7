//! A deterministic network simulator for whole topologies of [`Host`]s.
//!
//! Hosts are joined by one shared medium: a packet goes to the host owning
//! its destination address, or to every host on the subnet for a subnet
//! broadcast address. Each packet independently suffers the configured loss,
//! duplication, delay and jitter (jitter reorders), and packets larger than
//! the MTU are dropped. Time is virtual and advances straight to the next
//! packet arrival or host timer, so a minute of lossy transfer runs in well
//! under a second. Everything is seeded: a failing run replays exactly.
//!
//! Modelled after neqo's `test-fixture` simulator; used by the protocol tests.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::Ipv4Addr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use smoltcp::time::{Duration, Instant};

use sal::locator::Locator;
use sal::proto::{Event, Host, HostConfig, LocalInterface, Transmit};
use sal::wire::IPV4_HEADER_LEN;

/// What the medium does to packets.
#[derive(Debug, Clone, Copy)]
pub struct LinkConditions {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// One-way delay of every packet.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet; reorders.
    pub jitter: Duration,
    /// Largest IPv4 packet carried (SAL packet + 20 bytes).
    pub mtu: usize,
}

impl Default for LinkConditions {
    fn default() -> Self {
        LinkConditions {
            loss: 0.0,
            duplicate: 0.0,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(0),
            mtu: 1500,
        }
    }
}

/// Index of a host in a [`Network`].
pub type HostId = usize;

/// A packet on the wire.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    arrival: Instant,
    seq: u64,
    to: HostId,
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    payload: Vec<u8>,
}

/// One simulated host and what it reported.
pub struct SimHost {
    pub name: String,
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
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub too_big: u64,
    pub undeliverable: u64,
    pub delivered: u64,
}

/// The simulated network. See the module docs.
pub struct Network {
    now: Instant,
    hosts: Vec<SimHost>,
    wire: BinaryHeap<Reverse<InFlight>>,
    conditions: LinkConditions,
    rng: SmallRng,
    seq: u64,
    /// Addresses whose packets are dropped both ways (a link that is down).
    down: HashSet<Ipv4Addr>,
    /// Drops the packets for which it returns true (targeted loss).
    filter: Option<PacketFilter>,
    pub stats: WireStats,
}

/// A test's hook to drop chosen packets: gets each transmit, returns true to drop it.
pub type PacketFilter = Box<dyn FnMut(&Transmit) -> bool>;

impl Network {
    pub fn new(seed: u64, conditions: LinkConditions) -> Network {
        Network {
            now: Instant::from_millis(0),
            hosts: Vec::new(),
            wire: BinaryHeap::new(),
            conditions,
            rng: SmallRng::seed_from_u64(seed),
            seq: 0,
            down: HashSet::new(),
            filter: None,
            stats: WireStats::default(),
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    pub fn conditions_mut(&mut self) -> &mut LinkConditions {
        &mut self.conditions
    }

    /// Adds a host with interfaces given as `(name, "10.0.0.1/24")`.
    pub fn add_host(
        &mut self,
        name: &str,
        mut config: HostConfig,
        interfaces: &[(&str, &str)],
    ) -> HostId {
        config.seed = self.rng.random();
        let mut host = Host::new(config, self.now);
        for (ifname, cidr) in interfaces {
            let (addr, len) = cidr.split_once('/').unwrap_or((cidr, "24"));
            host.add_interface(LocalInterface {
                name: ifname.to_string(),
                locator: Locator::Ipv4(addr.parse().expect("test addresses are valid")),
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

    pub fn host(&mut self, id: HostId) -> &mut Host {
        &mut self.hosts[id].host
    }

    pub fn sim_host(&mut self, id: HostId) -> &mut SimHost {
        &mut self.hosts[id]
    }

    /// Drops every packet from or to `ip` until [`Network::link_up`].
    pub fn link_down(&mut self, ip: Ipv4Addr) {
        self.down.insert(ip);
    }

    pub fn link_up(&mut self, ip: Ipv4Addr) {
        self.down.remove(&ip);
    }

    /// Drops every packet for which `filter` returns true, until replaced or cleared.
    pub fn set_filter(&mut self, filter: Option<PacketFilter>) {
        self.filter = filter;
    }

    /// Injects a packet as if `src` had sent it.
    pub fn inject(&mut self, transmit: Transmit) {
        self.put_on_wire(usize::MAX, transmit);
    }

    /// Hosts that should receive a packet for `dst`: its owner, or the whole
    /// subnet for a broadcast address.
    fn receivers(&self, from: HostId, dst: Ipv4Addr) -> Vec<HostId> {
        let owner = self
            .hosts
            .iter()
            .position(|h| h.host.interfaces().iter().any(|i| i.locator.ip() == dst));
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

    fn put_on_wire(&mut self, from: HostId, transmit: Transmit) {
        self.stats.sent += 1;
        if let Some(h) = self.hosts.get_mut(from) {
            h.sent += 1;
        }
        if transmit.payload.len() + IPV4_HEADER_LEN > self.conditions.mtu {
            self.stats.too_big += 1;
            return;
        }
        let (src, dst) = (transmit.src.ip(), transmit.dst.ip());
        let filtered = self.filter.as_mut().is_some_and(|f| f(&transmit));
        if filtered || self.down.contains(&src) || self.down.contains(&dst) {
            self.stats.lost += 1;
            return;
        }
        let receivers = self.receivers(from, dst);
        if receivers.is_empty() {
            self.stats.undeliverable += 1;
        }
        for to in receivers {
            if self.rng.random_bool(self.conditions.loss) {
                self.stats.lost += 1;
                continue;
            }
            let copies = if self.rng.random_bool(self.conditions.duplicate) {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let jitter = self.conditions.jitter.total_micros();
                let extra = if jitter > 0 {
                    self.rng.random_range(0..=jitter)
                } else {
                    0
                };
                self.seq += 1;
                self.wire.push(Reverse(InFlight {
                    arrival: self.now + self.conditions.delay + Duration::from_micros(extra),
                    seq: self.seq,
                    to,
                    src: src.octets(),
                    dst: dst.octets(),
                    ttl: transmit.ttl,
                    payload: transmit.payload.clone(),
                }));
            }
        }
    }

    /// Moves every host's transmits to the wire and its events to its log.
    fn collect(&mut self) {
        for id in 0..self.hosts.len() {
            while let Some(t) = self.hosts[id].host.poll_transmit() {
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

    /// Advances to the next arrival or timer (at most `limit`) and processes
    /// it. Returns false when nothing at all is scheduled before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.settle();
        let next_packet = self.wire.peek().map(|p| p.0.arrival);
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
        while self.wire.peek().is_some_and(|p| p.0.arrival <= self.now) {
            let Some(Reverse(packet)) = self.wire.pop() else {
                break;
            };
            self.stats.delivered += 1;
            let h = &mut self.hosts[packet.to];
            h.received += 1;
            let src = Locator::Ipv4(Ipv4Addr::from(packet.src));
            let dst = Locator::Ipv4(Ipv4Addr::from(packet.dst));
            h.host
                .handle_packet(self.now, src, dst, packet.ttl, &packet.payload);
        }
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
