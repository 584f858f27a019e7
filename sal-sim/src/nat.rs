//! A NAPT (address and port translation) between a private subnet and the
//! rest of the simulated network, for UDP-carried SAL packets: what a home
//! router or Linux's `masquerade` does to them.
//!
//! A packet from the private subnet to anywhere else gets the NAT's public
//! address and a port of the mapping for its (private source, destination)
//! pair, created on first use. A packet to the public address is let in
//! only on a live mapping and only from that mapping's destination
//! (endpoint-dependent filtering, like Linux conntrack), and goes to the
//! private source. A mapping that carries nothing either way for `timeout`
//! is forgotten. [`Nat::rebind`] forgets every mapping and moves to a new
//! public address, as when the NAT restarts or its uplink is renumbered.
//!
//! Install it with [`Network::set_nat`](crate::Network::set_nat); it sees
//! every packet as it is put on the wire, before routing.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use sal::locator::Locator;
use smoltcp::time::{Duration, Instant};

use crate::Packet;

/// One mapping: the private end, the remote end, when it was last used.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    private: SocketAddrV4,
    remote: SocketAddrV4,
    used: Instant,
}

/// What the NAT did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    /// Not the NAT's business (neither from its private side nor to it).
    Untouched,
    /// Rewritten on its way out or in.
    Translated,
    /// Addressed to the NAT with no mapping that lets it in.
    Dropped,
}

/// The NAT. See the module docs.
#[derive(Debug)]
pub struct Nat {
    inside: (Ipv4Addr, u8),
    public: Ipv4Addr,
    timeout: Duration,
    by_public_port: HashMap<u16, Mapping>,
    next_port: u16,
    /// Packets let in, and dropped for want of a mapping.
    pub translated: u64,
    /// Packets to the public address that no live mapping let in (none for
    /// their port, or not from its remote end).
    pub dropped: u64,
}

impl Nat {
    /// A NAT for the private subnet `inside` (address, prefix length),
    /// showing `public` to the rest, that forgets idle mappings after
    /// `timeout`.
    pub fn new(inside: (Ipv4Addr, u8), public: Ipv4Addr, timeout: Duration) -> Nat {
        Nat {
            inside,
            public,
            timeout,
            by_public_port: HashMap::new(),
            next_port: 40000,
            translated: 0,
            dropped: 0,
        }
    }

    /// The address the rest of the network sees.
    pub fn public(&self) -> Ipv4Addr {
        self.public
    }

    /// Forgets every mapping and shows `public` from now on.
    pub fn rebind(&mut self, public: Ipv4Addr) {
        self.public = public;
        self.by_public_port.clear();
        // New mappings get new ports too.
        self.next_port = self.next_port.wrapping_add(1000).max(40000);
    }

    fn is_inside(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.inside.1.min(32)))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.inside.0) & mask
    }

    /// Translates `packet` at `now`, in place.
    pub fn translate(&mut self, packet: &mut Packet, now: Instant) -> Translation {
        let timeout = self.timeout;
        self.by_public_port.retain(|_, m| now < m.used + timeout);
        match (packet.src, packet.dst) {
            (Locator::Udp(src), Locator::Udp(dst))
                if self.is_inside(*src.ip()) && !self.is_inside(*dst.ip()) =>
            {
                let Some(port) = self.outbound(src, dst, now) else {
                    return Translation::Dropped;
                };
                packet.src = Locator::Udp(SocketAddrV4::new(self.public, port));
                Translation::Translated
            }
            (Locator::Udp(src), Locator::Udp(dst)) if *dst.ip() == self.public => {
                match self.by_public_port.get_mut(&dst.port()) {
                    Some(m) if m.remote == src => {
                        m.used = now;
                        packet.dst = Locator::Udp(m.private);
                        self.translated += 1;
                        Translation::Translated
                    }
                    _ => {
                        self.dropped += 1;
                        Translation::Dropped
                    }
                }
            }
            (_, dst) if dst.ip() == self.public => {
                self.dropped += 1;
                Translation::Dropped
            }
            _ => Translation::Untouched,
        }
    }

    /// The public port of the mapping for `private` -> `remote`, made now
    /// if there is none; marks it used.
    /// The public port of `private`'s mapping toward `remote`, made if
    /// need be; `None` when every port from 1024 up is taken.
    fn outbound(
        &mut self,
        private: SocketAddrV4,
        remote: SocketAddrV4,
        now: Instant,
    ) -> Option<u16> {
        let found = self
            .by_public_port
            .iter_mut()
            .find(|(_, m)| m.private == private && m.remote == remote);
        if let Some((&port, mapping)) = found {
            mapping.used = now;
            return Some(port);
        }
        if self.by_public_port.len() >= usize::from(u16::MAX - 1023) {
            return None;
        }
        let mut port = self.next_port;
        while self.by_public_port.contains_key(&port) || port < 1024 {
            port = port.wrapping_add(1);
        }
        self.next_port = port.wrapping_add(1);
        self.by_public_port.insert(
            port,
            Mapping {
                private,
                remote,
                used: now,
            },
        );
        Some(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp(s: &str) -> Locator {
        Locator::Udp(s.parse().unwrap())
    }

    fn packet(src: &str, dst: &str) -> Packet {
        Packet {
            src: udp(src),
            dst: udp(dst),
            ttl: 64,
            kind: sal::proto::TransmitKind::Own,
            payload: Vec::new(),
        }
    }

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    /// A NAT for 10.9.0.0/24 behind 10.0.0.100 and the public locator of
    /// the mapping its first packet (10.9.0.1:54324 to 10.0.0.2:54325) got.
    fn natting(timeout: Duration) -> (Nat, Locator) {
        let mut nat = Nat::new(
            (Ipv4Addr::new(10, 9, 0, 0), 24),
            Ipv4Addr::new(10, 0, 0, 100),
            timeout,
        );
        let mut out = packet("10.9.0.1:54324", "10.0.0.2:54325");
        assert_eq!(nat.translate(&mut out, at(0)), Translation::Translated);
        (nat, out.src)
    }

    /// A packet from `from` to the public locator `to`, translated at `t`.
    fn inbound(nat: &mut Nat, from: &str, to: Locator, t: i64) -> (Translation, Locator) {
        let mut p = Packet {
            dst: to,
            ..packet(from, "10.0.0.2:1")
        };
        let verdict = nat.translate(&mut p, at(t));
        (verdict, p.dst)
    }

    #[test]
    fn out_and_back_through_one_mapping_only_from_its_remote() {
        let (mut nat, public) = natting(Duration::from_secs(30));
        assert_eq!(public.ip(), Ipv4Addr::new(10, 0, 0, 100));
        let mut again = packet("10.9.0.1:54324", "10.0.0.2:54325");
        nat.translate(&mut again, at(1));
        assert_eq!(again.src, public, "one mapping per pair");
        assert_eq!(
            inbound(&mut nat, "10.0.0.2:54325", public, 2),
            (Translation::Translated, udp("10.9.0.1:54324"))
        );
        // Someone else, to the same public port: not let in.
        assert_eq!(
            inbound(&mut nat, "10.0.0.3:54325", public, 3).0,
            Translation::Dropped
        );
        let mut elsewhere = packet("10.0.0.2:54325", "10.0.0.3:54325");
        assert_eq!(nat.translate(&mut elsewhere, at(3)), Translation::Untouched);
    }

    #[test]
    fn idle_mappings_are_forgotten_and_rebinding_forgets_all() {
        let (mut nat, public) = natting(Duration::from_secs(3));
        let server = "10.0.0.2:54325";
        assert_eq!(
            inbound(&mut nat, server, public, 2999).0,
            Translation::Translated
        );
        assert_eq!(
            inbound(&mut nat, server, public, 5998).0,
            Translation::Translated,
            "refreshed at 2999"
        );
        assert_eq!(
            inbound(&mut nat, server, public, 9000).0,
            Translation::Dropped,
            "idle for 3 s"
        );
        nat.rebind(Ipv4Addr::new(10, 0, 0, 101));
        let mut out = packet("10.9.0.1:54324", server);
        nat.translate(&mut out, at(9002));
        assert_eq!(out.src.ip(), Ipv4Addr::new(10, 0, 0, 101));
        assert_ne!(out.src, public);
    }
}
