//! Service routing: edits of the service table, and what a service router
//! does with a first packet it does not serve itself.
//!
//! Only first packets (SYNs and unconnected datagrams) are routed by
//! service ID; once the server answers, the flow runs end to end and no
//! router sees it again. A router therefore keeps no per-flow state: it
//! re-addresses the packet, records where it came from in the SOURCE
//! extension (so the server can answer the client directly), and spends one
//! unit of TTL, which is what ends a forwarding loop.

use super::{Host, Packet};
use crate::id::ServicePrefix;
use crate::locator::Locator;
use crate::table::{Target, TargetKey};
use crate::wire::{readdress_transport_checksum, SalRepr, SourceRepr, TransportProtocol};

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

    /// Service-router forwarding: re-address toward `next`, record where the
    /// packet came from in SOURCE, and spend one unit of TTL.
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
        if source.addrs.try_push(src.ip()).is_err() {
            self.stats.source_full += 1;
            return;
        }
        let mut packet = super::output::build(&repr, segment);
        let header_len = repr.header_len();
        if let Some(protocol) = TransportProtocol::from_number(repr.protocol) {
            readdress_transport_checksum(
                protocol,
                &mut packet[header_len..],
                (src.ip(), dst.ip()),
                (local.ip(), next.ip()),
            );
        }
        self.stats.forwarded += 1;
        self.queue_transmit(Packet {
            src: local,
            dst: next,
            ttl: ttl - 1,
            payload: packet,
        });
    }
}
