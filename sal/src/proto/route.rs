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

use super::Host;
use crate::id::ServicePrefix;
use crate::locator::Locator;
use crate::table::{Target, TargetKey};
use crate::wire::{SalRepr, SourceRepr};

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
