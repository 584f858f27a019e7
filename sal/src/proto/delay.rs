//! The DELAY queue: first packets and connects held until a rule appears.
//!
//! A DELAY rule says "the controller is being asked": rather than refusing a
//! SYN for a service nobody has resolved yet, the host keeps it, tells the
//! controller ([`Event::DelayNotify`]), and routes it again as soon as the
//! table changes. Holding costs memory, so the queue is bounded host-wide
//! and every entry expires after `delay_timeout`; a held local connect
//! then fails as timed out.
//!
//! Every entry gets the same timeout and time never goes back, so the queue
//! is in deadline order: expiry looks only at its front.
//!
//! Anyone may send first packets, so one source may hold at most a
//! sixteenth of the queue ([`DelayQueue::per_source`]), and a stream's
//! first packet is held only if its segment is an opening SYN. One sender
//! used to fill the whole queue with 1,024 garbage packets every timeout
//! (205 a second), and every other client's SYN was dropped.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use smoltcp::time::{Duration, Instant};

use super::flow::Endpoint;
use super::{ConnectError, Event, Host};
use crate::id::{FlowId, ServiceId, ServicePrefix};
use crate::locator::Locator;
use crate::table::Target;

/// What a DELAY rule holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Held {
    /// A first packet received from the network (or sent unconnected by a
    /// local socket), to be routed again when a rule appears.
    Packet {
        service: ServiceId,
        src: Locator,
        dst: Locator,
        ttl: u8,
        packet: Vec<u8>,
    },
    /// A local `connect` whose SYN waits for a route.
    Connect { flow: FlowId },
}

/// What to do with a held entry when the table changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recheck {
    /// Still under a DELAY rule: keep holding it.
    Keep,
    /// Routable now: hand it back.
    Release,
    /// Moot (its flow is gone): drop it silently.
    Forget,
}

/// The held entries, oldest (and so earliest deadline) first.
#[derive(Debug)]
pub(super) struct DelayQueue {
    entries: VecDeque<(Instant, Held)>,
    limit: usize,
    timeout: Duration,
    /// Packets held per source address (those holding any).
    sources: HashMap<Ipv4Addr, usize>,
}

impl DelayQueue {
    /// A queue holding at most `limit` packets, each for `timeout`.
    pub fn new(limit: usize, timeout: Duration) -> DelayQueue {
        DelayQueue {
            entries: VecDeque::new(),
            limit,
            timeout,
            sources: HashMap::new(),
        }
    }

    /// The most packets one source address may have held: a sixteenth of
    /// the limit (at least one).
    pub fn per_source(&self) -> usize {
        (self.limit / 16).max(1)
    }

    /// Holds an entry until `now` + the timeout; packets only while fewer
    /// than the limit are held, and fewer than [`DelayQueue::per_source`]
    /// from their source (a local connect is always held: it is the
    /// application's own, and bounded by the flow limit). Returns whether
    /// the entry is held.
    pub fn hold(&mut self, now: Instant, held: Held) -> bool {
        if let Held::Packet { src, .. } = &held {
            let from_source = self.sources.get(&src.ip()).copied().unwrap_or(0);
            if self.entries.len() >= self.limit || from_source >= self.per_source() {
                return false;
            }
            *self.sources.entry(src.ip()).or_default() += 1;
        }
        // Never before the last deadline, even if the caller's clock went
        // back: the queue stays in deadline order.
        let deadline = self.entries.back().map_or(now + self.timeout, |(last, _)| {
            (now + self.timeout).max(*last)
        });
        self.entries.push_back((deadline, held));
        true
    }

    /// Removes and returns the oldest entry if its time is up.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Held> {
        if self.entries.front()?.0 > now {
            return None;
        }
        let (_, held) = self.entries.pop_front()?;
        self.released(&held);
        Some(held)
    }

    /// `held` left the queue.
    fn released(&mut self, held: &Held) {
        let Held::Packet { src, .. } = held else {
            return;
        };
        if let Some(count) = self.sources.get_mut(&src.ip()) {
            *count -= 1;
            if *count == 0 {
                self.sources.remove(&src.ip());
            }
        }
    }

    /// When the oldest entry expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.front().map(|(deadline, _)| *deadline)
    }

    /// Asks `recheck` about every entry, oldest first; keeps those it
    /// keeps (with their deadlines) and returns those it releases.
    pub fn recheck(&mut self, mut recheck: impl FnMut(&Held) -> Recheck) -> Vec<Held> {
        let mut released = Vec::new();
        let mut gone = Vec::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for (deadline, held) in self.entries.drain(..) {
            match recheck(&held) {
                Recheck::Keep => kept.push_back((deadline, held)),
                Recheck::Release => released.push(held),
                Recheck::Forget => gone.push(held),
            }
        }
        self.entries = kept;
        for held in released.iter().chain(&gone) {
            self.released(held);
        }
        released
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Host {
    /// Holds the first packets of `prefix` (SYNs and unconnected
    /// datagrams from the network) as a DELAY rule would, until a listener
    /// binds exactly `prefix` ([`Host::listen`]) or [`Host::unreserve`]:
    /// what a program's own SAL host needs between its `bind`, at which its
    /// sald starts relaying the prefix's first packets to it, and its
    /// `listen`. Refused meanwhile, a SYN that a DELAY rule at sald had
    /// held would fail (with "no route") although the service is coming.
    /// A local connect to the prefix is not held, as no rule is made.
    pub fn reserve(&mut self, prefix: ServicePrefix) {
        if !self.reserved.contains(&prefix) {
            self.reserved.push(prefix);
        }
    }

    /// Ends [`Host::reserve`]: what it held is routed again (refused, if
    /// nothing serves it).
    pub fn unreserve(&mut self, prefix: &ServicePrefix) {
        let before = self.reserved.len();
        self.reserved.retain(|reserved| reserved != prefix);
        if self.reserved.len() != before {
            self.rematch_delayed();
        }
    }

    /// Whether first packets for `service` are held for a listener to come.
    pub(super) fn is_reserved(&self, service: &ServiceId) -> bool {
        self.reserved.iter().any(|prefix| prefix.contains(service))
    }

    /// Holds a first packet under a DELAY rule and asks for a resolution.
    pub(super) fn hold(
        &mut self,
        service: ServiceId,
        src: Locator,
        dst: Locator,
        ttl: u8,
        packet: Vec<u8>,
    ) {
        let held = Held::Packet {
            service,
            src,
            dst,
            ttl,
            packet,
        };
        if !self.delayed.hold(self.now, held) {
            self.stats.delay_dropped += 1;
            return;
        }
        self.stats.delayed += 1;
        self.events.push_back(Event::DelayNotify {
            service,
            connect: None,
        });
    }

    /// Holds a local connect under a DELAY rule and asks for a resolution.
    pub(super) fn hold_connect(&mut self, flow: FlowId, service: ServiceId) {
        self.stats.delayed += 1;
        self.delayed.hold(self.now, Held::Connect { flow });
        self.events.push_back(Event::DelayNotify {
            service,
            connect: Some(flow),
        });
    }

    /// Drops what was held too long; a held connect fails as timed out.
    pub(super) fn expire_delayed(&mut self, now: Instant) {
        while let Some(held) = self.delayed.pop_expired(now) {
            self.stats.delay_dropped += 1;
            if let Held::Connect { flow } = held {
                self.fail_connect(flow, ConnectError::TimedOut);
            }
        }
    }

    /// Routes again every packet and connect held by a DELAY rule; called
    /// whenever the table changes.
    pub(super) fn rematch_delayed(&mut self) {
        if self.delayed.is_empty() {
            return;
        }
        let (table, endpoints, reserved) = (&self.table, &self.endpoints, &self.reserved);
        let service_of = |held: &Held| match held {
            Held::Packet { service, .. } => Some(*service),
            Held::Connect { flow } => match endpoints.get(*flow) {
                Some(Endpoint::Flow(f)) => Some(f.service),
                _ => None,
            },
        };
        let released = self.delayed.recheck(|held| match service_of(held) {
            None => Recheck::Forget,
            Some(service) if table.longest_match(&service).is_some_and(|r| r.is_delay()) => {
                Recheck::Keep
            }
            // Reserved, and no listener yet (see `Host::reserve`).
            Some(service)
                if reserved.iter().any(|prefix| prefix.contains(&service))
                    && !table.longest_match(&service).is_some_and(|rule| {
                        (rule.targets().iter()).any(|t| matches!(t.target, Target::Demux { .. }))
                    }) =>
            {
                Recheck::Keep
            }
            Some(_) => Recheck::Release,
        });
        for held in released {
            match held {
                Held::Packet {
                    src,
                    dst,
                    ttl,
                    packet,
                    ..
                } => self.handle_packet(self.now, src, dst, ttl, &packet),
                Held::Connect { flow } => self.resolve_held_connect(flow),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    /// Packet `n`, from a source of its own.
    fn packet(n: u8) -> Held {
        packet_from(n, &format!("10.0.1.{n}"))
    }

    fn connect(n: u32) -> Held {
        Held::Connect {
            flow: FlowId::new(n).unwrap(),
        }
    }

    #[test]
    fn packets_beyond_the_limit_are_refused_but_connects_are_held() {
        let mut queue = DelayQueue::new(2, Duration::from_secs(5));
        assert!(queue.hold(at(0), packet(1)));
        assert!(queue.hold(at(0), packet(2)));
        assert!(!queue.hold(at(0), packet(3)));
        assert!(queue.hold(at(0), connect(1)));
    }

    fn packet_from(n: u8, src: &str) -> Held {
        Held::Packet {
            service: ServiceId::ZERO,
            src: src.parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            ttl: 64,
            packet: vec![n],
        }
    }

    #[test]
    fn one_source_holds_at_most_a_sixteenth_of_the_queue() {
        let mut queue = DelayQueue::new(64, Duration::from_millis(100));
        assert_eq!(queue.per_source(), 4);
        for n in 0..4 {
            assert!(queue.hold(at(0), packet_from(n, "10.0.0.66")));
        }
        assert!(!queue.hold(at(0), packet_from(4, "10.0.0.66")));
        assert!(
            queue.hold(at(0), packet_from(5, "10.0.0.7")),
            "others still"
        );
        // A source's place comes back as its packets leave, however.
        assert!(queue.pop_expired(at(100)).is_some());
        assert!(queue.hold(at(100), packet_from(6, "10.0.0.66")));
        let released = queue.recheck(|_| Recheck::Release);
        assert_eq!(released.len(), 5);
        assert!(queue.sources.is_empty(), "nothing counted once all left");
    }

    #[test]
    fn entries_expire_in_order_after_the_timeout() {
        let mut queue = DelayQueue::new(8, Duration::from_millis(100));
        queue.hold(at(0), packet(1));
        queue.hold(at(50), connect(7));
        assert_eq!(queue.next_deadline(), Some(at(100)));
        assert_eq!(queue.pop_expired(at(99)), None);
        assert_eq!(queue.pop_expired(at(120)), Some(packet(1)));
        assert_eq!(queue.pop_expired(at(120)), None);
        assert_eq!(queue.pop_expired(at(150)), Some(connect(7)));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_clock_going_back_does_not_reorder_deadlines() {
        let mut queue = DelayQueue::new(8, Duration::from_millis(100));
        queue.hold(at(500), packet(1));
        queue.hold(at(200), packet(2));
        assert_eq!(queue.pop_expired(at(599)), None);
        assert_eq!(queue.pop_expired(at(600)), Some(packet(1)));
        assert_eq!(queue.pop_expired(at(600)), Some(packet(2)));
    }

    #[test]
    fn recheck_keeps_releases_and_forgets_in_order() {
        let mut queue = DelayQueue::new(8, Duration::from_millis(100));
        for n in 1..=4 {
            queue.hold(at(i64::from(n)), packet(n));
        }
        let released = queue.recheck(|held| match held {
            Held::Packet { packet, .. } if packet[0] % 2 == 0 => Recheck::Release,
            Held::Packet { packet, .. } if packet[0] == 3 => Recheck::Forget,
            _ => Recheck::Keep,
        });
        assert_eq!(released, [packet(2), packet(4)]);
        assert_eq!(queue.pop_expired(at(1000)), Some(packet(1)));
        assert!(queue.is_empty());
    }

    /// A connect held by DELAY waits the whole timeout even when the host
    /// was idle long before it: deadlines count from the clock the driver
    /// gives the host, not from its last poll.
    #[test]
    fn a_connect_after_a_long_idle_spell_waits_the_whole_timeout() {
        use crate::proto::{Event, HostConfig, LocalInterface};
        use crate::table::Target;
        use crate::wire::TransportProtocol;

        let mut host = Host::new(HostConfig::default(), at(0));
        host.add_interface(LocalInterface {
            name: "eth0".into(),
            locator: "10.0.0.1".parse().unwrap(),
            prefix_len: 24,
            up: true,
        });
        host.add_rule("de1a/16".parse().unwrap(), Target::Delay, 0);
        host.poll(at(0));
        let idle = at(60_000);
        host.advance_clock(idle);
        let flow = host
            .connect("de1a".parse().unwrap(), TransportProtocol::Stream)
            .unwrap();
        let timeout = HostConfig::default().delay_timeout;
        assert_eq!(host.poll_timeout(), Some(idle + timeout));
        host.poll(idle + timeout - Duration::from_millis(1));
        let failed = Event::ConnectFailed(flow, ConnectError::TimedOut);
        assert!(!std::iter::from_fn(|| host.poll_event()).any(|e| e == failed));
        host.poll(idle + timeout);
        assert!(std::iter::from_fn(|| host.poll_event()).any(|e| e == failed));
    }
}
