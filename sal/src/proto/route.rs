//! Service routing: edits of the service table, and what a service router
//! does with a first packet it does not serve itself.
//!
//! Only first packets (SYNs and unconnected datagrams) are routed by
//! service ID; once the server answers, the flow runs end to end and no
//! router sees it again. A router therefore keeps no per-flow state: it
//! changes the packet's destination (the client's address stays its
//! source), records the path in the SOURCE extension (so the server can
//! answer the client directly), and spends one unit of TTL; a loop is
//! caught by finding this hop in SOURCE already, or ends with the TTL. A
//! router never forwards a packet that reached it as a broadcast.
//!
//! A host that is no router still routes for programs that drive SAL hosts
//! of their own over UDP (`docs/in-process-sal.md`), so that resolution
//! stays with it: it forwards their SYNs by its rules
//! ([`HostConfig::relay_local`](super::HostConfig)), and a listener of its
//! can be a *relay* ([`Host::relay`]): the first packets of its prefix go
//! on, as a router sends them, to the program that serves it, instead of
//! being served here. Either way only the SYN passes this host; the two
//! programs' hosts answer each other directly.

use super::{Event, Host, HostError};
use crate::id::ServicePrefix;
use crate::locator::Locator;
use crate::table::{ListenerId, Target, TargetKey};
use crate::wire::{SalRepr, SourceRepr, TransportProtocol};

impl Host {
    /// Adds or modifies a rule target and re-examines packets held by DELAY rules.
    pub fn add_rule(&mut self, prefix: ServicePrefix, target: Target, priority: u32) -> bool {
        let added = self.table.add(prefix, target, priority);
        self.rematch_delayed();
        added
    }

    /// Removes one target of a rule.
    pub fn remove_rule_target(
        &mut self,
        prefix: &ServicePrefix,
        key: &TargetKey,
    ) -> Result<(), crate::table::TableError> {
        self.table.remove_target(prefix, key).map(drop)?;
        self.rematch_delayed();
        Ok(())
    }

    /// Removes a whole rule.
    pub fn remove_rule(&mut self, prefix: &ServicePrefix) -> Result<(), crate::table::TableError> {
        self.table.remove(prefix).map(drop)?;
        self.rematch_delayed();
        Ok(())
    }

    /// Binds `prefix` as a relay to `locator` (a program's own SAL host):
    /// a listener like [`Host::listen`]'s, registered alike (its DEMUX
    /// rule, [`Event::Registered`]), whose SYNs and unconnected datagrams
    /// are forwarded to `locator` as a router forwards them, whether or not
    /// this host is one. No flow of it is ever held here: it has nothing
    /// to accept. Closed as any listener ([`Host::close_listener`]).
    pub fn relay(
        &mut self,
        prefix: ServicePrefix,
        locator: Locator,
    ) -> Result<ListenerId, HostError> {
        let id = self.bind_listener(prefix, TransportProtocol::Stream, 1, false, Some(locator))?;
        self.events.push_back(Event::Registered(id, prefix));
        Ok(id)
    }

    /// Where `listener` relays its prefix's first packets, if it is a relay
    /// ([`Host::relay`]).
    pub fn listener_relay(&self, listener: ListenerId) -> Option<Locator> {
        self.listeners.relay(listener)
    }

    /// Whether a first packet from `src` that resolved to FORWARD toward
    /// `next` goes there: on a service router, unless `next` is this host;
    /// on any host with `relay_local`, when it came from a program on this
    /// host (a UDP locator on one of our addresses that is not ours) and
    /// `next` is not this host itself.
    pub(super) fn forwards(&self, src: &Locator, next: &Locator, repr: &SalRepr) -> bool {
        if self.config.forward && !self.interfaces.is_local(next.ip()) {
            return true;
        }
        // A program's own first packet has no SOURCE: one that has came
        // through some forwarder, whoever sent it.
        self.config.relay_local
            && repr.source.is_none()
            && matches!(src, Locator::Udp(_))
            && self.interfaces.is_local(src.ip())
            && !self.interfaces.owns(src)
            && !self.interfaces.owns(next)
    }

    /// Service-router forwarding, as the reference router does it: the
    /// packet goes to `next` with its IP source kept (the client's, or the
    /// previous router's client's), SOURCE records the path (created as
    /// `[IP source, IP destination]`, else the IP destination appended, the
    /// address this hop was reached at), the transport checksum is redone
    /// for the new destination, and the TTL drops by one, as through an IP
    /// router. A packet whose SOURCE already holds this hop (a loop) or
    /// that ran out of TTL is dropped. Over UDP carriage the source cannot
    /// be kept (the link sends from its own socket), so the packet leaves
    /// from this router and its checksum is redone for that.
    pub(super) fn forward(
        &mut self,
        next: Locator,
        src: Locator,
        dst: Locator,
        ttl: u8,
        repr: &SalRepr,
        segment: &[u8],
    ) {
        if ttl <= 1 {
            self.stats.ttl_expired += 1;
            return;
        }
        let Some(local) = self.interfaces.source_for(&next) else {
            return;
        };
        let mut repr = repr.clone();
        let source = repr.source.get_or_insert_with(SourceRepr::default);
        let interfaces = &self.interfaces;
        if (source.addrs.iter()).any(|&ip| ip == dst.ip() || interfaces.is_local(ip)) {
            self.stats.loop_dropped += 1;
            return;
        }
        if let (true, Locator::Udp(from)) = (source.addrs.is_empty(), src) {
            // The first hop records the client's UDP port too, so that the
            // server can answer it there (see `SourceRepr::client_port`).
            source.client_port = from.port();
        }
        let first = source.addrs.is_empty().then_some(src.ip());
        let full =
            (first.into_iter().chain([dst.ip()])).any(|ip| source.addrs.try_push(ip).is_err());
        if full {
            self.stats.source_full += 1;
            return;
        }
        let from = match (local, src) {
            (Locator::Ipv4(_), Locator::Ipv4(_)) => src,
            _ => local,
        };
        let mut packet = super::output::build(&repr, segment);
        super::output::readdress_sal_segment(&mut packet, (src, dst), (from, next));
        self.stats.forwarded += 1;
        self.queue_transmit(from, next, ttl - 1, packet);
    }
}

#[cfg(test)]
mod tests {
    use smoltcp::time::Instant;

    use super::*;
    use crate::id::FlowId;
    use crate::proto::{HostConfig, LocalInterface};

    /// A daemon routes for its programs (UDP locators on its own address)
    /// only their own first packets: one that carries SOURCE came through
    /// some forwarder (a local UDP proxy, a NAT's hairpin), whoever sent
    /// it, and a daemon that is no router must not route it.
    #[test]
    fn a_daemon_routes_only_its_own_programs_first_packets() {
        let config = HostConfig {
            relay_local: true,
            ..HostConfig::default()
        };
        let mut host = Host::new(config, Instant::ZERO);
        host.add_interface(LocalInterface {
            name: "udp".into(),
            locator: "udp:10.0.0.1:7077".parse().unwrap(),
            prefix_len: 24,
            up: true,
        });
        let program: Locator = "udp:10.0.0.1:6000".parse().unwrap();
        let elsewhere: Locator = "udp:10.0.0.9:6000".parse().unwrap();
        let next: Locator = "udp:10.0.0.2:7077".parse().unwrap();
        let flow = FlowId::new(7).unwrap();
        let mut syn = SalRepr::data(flow, None, TransportProtocol::Stream.number());
        assert!(host.forwards(&program, &next, &syn));
        assert!(
            !host.forwards(&elsewhere, &next, &syn),
            "not a program here"
        );
        let own = host.interfaces().first().unwrap().locator;
        assert!(!host.forwards(&own, &next, &syn), "sald itself");
        syn.source = Some(SourceRepr::default());
        assert!(!host.forwards(&program, &next, &syn), "it was forwarded");
    }
}
