//! The service table: service prefixes to what to do with packets for them.
//!
//! Each prefix holds a [`Rule`], a set of targets tagged with a priority.
//! Resolution finds the rule of the longest matching prefix ([`PrefixTrie`]),
//! then picks within it:
//!
//! 1. a DEMUX target (a local listener) wins outright: a service bound on this
//!    host is served here;
//! 2. otherwise the targets of the highest priority (largest number) form the
//!    active group. Its FORWARD targets are sampled by weight; a group without
//!    FORWARD targets resolves to DELAY if it holds one, else to DROP.
//!
//! Weight 0 marks a standby FORWARD target: it is chosen only when every
//! FORWARD target in the group has weight 0, and then uniformly.

mod trie;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::id::{ServiceId, ServicePrefix};
use crate::locator::Locator;
pub use trie::PrefixTrie;

/// Handle of a local listening socket, assigned by whoever owns the listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListenerId(pub u64);

/// What a rule can do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    /// Send to this locator; among FORWARD targets of a group, chosen by weight.
    Forward {
        /// Next hop: a server, another service router, or a broadcast address.
        locator: Locator,
        /// Share of the group's packets relative to the other weights; 0 marks
        /// a standby, used only when every weight in the group is 0.
        weight: u32,
    },
    /// Deliver to a local listener.
    Demux {
        /// The listening socket that takes the SYN or datagram.
        listener: ListenerId,
    },
    /// Hold the packet and ask the controller.
    Delay,
    /// Drop the packet (and tell the sender, when it is a SYN).
    Drop,
}

/// Identity of a target within a rule: a rule has at most one target per key,
/// so adding a target with a known key modifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TargetKey {
    /// The FORWARD target to this next hop, whatever its weight.
    Forward {
        /// The next hop it forwards to.
        locator: Locator,
    },
    /// The DEMUX target of this listener.
    Demux {
        /// The local listener it delivers to.
        listener: ListenerId,
    },
    /// The rule's DELAY target (a rule has at most one).
    Delay,
    /// The rule's DROP target (a rule has at most one).
    Drop,
}

/// `forward 10.0.0.2`, `demux 3`, `delay`, `drop`: as operators write them.
impl std::fmt::Display for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetKey::Forward { locator } => write!(f, "forward {locator}"),
            TargetKey::Demux { listener } => write!(f, "demux {}", listener.0),
            TargetKey::Delay => f.write_str("delay"),
            TargetKey::Drop => f.write_str("drop"),
        }
    }
}

impl Target {
    /// The key under which this target is stored in its rule.
    pub fn key(&self) -> TargetKey {
        match *self {
            Target::Forward { locator, .. } => TargetKey::Forward { locator },
            Target::Demux { listener } => TargetKey::Demux { listener },
            Target::Delay => TargetKey::Delay,
            Target::Drop => TargetKey::Drop,
        }
    }
}

/// Packet and byte counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Resolutions counted: received first packets, sent datagrams, and local
    /// connects (which count 0 bytes).
    pub packets: u64,
    /// Sizes of those as resolved: a received packet's SAL bytes, a sent
    /// datagram's payload.
    pub bytes: u64,
}

impl Counters {
    fn count(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// A target with its priority and what it has resolved so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetEntry {
    /// What the target does; its [`Target::key`] identifies it within the rule.
    pub target: Target,
    /// Larger wins. Targets of equal priority form a group.
    pub priority: u32,
    /// Packets resolved to this target (for DROP: packets dropped by it).
    pub counters: Counters,
    /// Who put the target here. The table itself only stores it; sald fills
    /// it in for listings (`servalctl services` shows it), see [`RuleOrigin`].
    #[serde(default)]
    pub origin: RuleOrigin,
}

/// Where a rule target came from, so that an operator can tell hand-made
/// rules from those a controller (servd) installed and will take away again.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RuleOrigin {
    /// Added by hand or by configuration (`servalctl service add`), or a
    /// local listener's DEMUX target. Stays until removed.
    #[default]
    Static,
    /// Installed by a controller from another host's announcement.
    Announced {
        /// The announcing host (its controller's name and address).
        by: String,
        /// When the announcement's lease runs out unless refreshed (Unix
        /// time, milliseconds), as last reported by the controller.
        #[serde(default)]
        expires_unix_ms: Option<u64>,
    },
    /// Installed by a controller from an answer to a DELAY query (a cache
    /// entry), or a negative answer (a DROP for the queried ID).
    Resolved {
        /// Name of the controller whose answer this is.
        by: String,
        /// When the cached answer runs out (Unix time, milliseconds), if the
        /// controller said.
        #[serde(default)]
        expires_unix_ms: Option<u64>,
    },
    /// A controller's default route toward its service router.
    DefaultRoute {
        /// Name of the service router the route leads to (the controller's own
        /// name for a default DELAY).
        by: String,
    },
    /// The own service ID of an unbound datagram socket (where replies to
    /// it arrive): no service of this host, never announced, hidden by
    /// `servalctl services` unless `--all`.
    Ephemeral,
    /// A local program's binding whose first packets go on to the SAL host
    /// the program drives itself (sald's `Relay` request; the target is a
    /// DEMUX of a listener that relays): a service of this host, announced
    /// as any bound one.
    Relay {
        /// Where the program's host is.
        locator: Locator,
    },
}

impl RuleOrigin {
    /// Short label: `static`, `announced HOST`, `resolved HOST`, `default
    /// HOST`, `ephemeral`, `relay LOCATOR`.
    pub fn label(&self) -> String {
        match self {
            RuleOrigin::Static => "static".into(),
            RuleOrigin::Announced { by, .. } => format!("announced {by}"),
            RuleOrigin::Resolved { by, .. } => format!("resolved {by}"),
            RuleOrigin::DefaultRoute { by } => format!("default {by}"),
            RuleOrigin::Ephemeral => "ephemeral".into(),
            RuleOrigin::Relay { locator } => format!("relay {locator}"),
        }
    }

    /// When the target goes away on its own, if it does (Unix ms).
    pub fn expires_unix_ms(&self) -> Option<u64> {
        match self {
            RuleOrigin::Announced {
                expires_unix_ms, ..
            }
            | RuleOrigin::Resolved {
                expires_unix_ms, ..
            } => *expires_unix_ms,
            _ => None,
        }
    }
}

/// Everything stored for one prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The prefix the rule is stored under; a rule exists only while it has targets.
    pub prefix: ServicePrefix,
    /// Sorted: DEMUX targets first, then by descending priority.
    targets: Vec<TargetEntry>,
}

impl Rule {
    /// The targets, DEMUX first, then by descending priority.
    pub fn targets(&self) -> &[TargetEntry] {
        &self.targets
    }

    /// Sets the origin of the target with `key`; false if there is none.
    pub fn set_origin(&mut self, key: &TargetKey, origin: RuleOrigin) -> bool {
        match self.targets.iter_mut().find(|e| e.target.key() == *key) {
            Some(entry) => {
                entry.origin = origin;
                true
            }
            None => false,
        }
    }

    /// Whether resolving through this rule would hold the packet (its active
    /// group has a DELAY target and nothing that delivers or forwards).
    pub fn is_delay(&self) -> bool {
        let Some(first) = self.targets.first() else {
            return false;
        };
        if matches!(first.target, Target::Demux { .. }) {
            return false;
        }
        let group = &self.targets[self.active_group()];
        !group
            .iter()
            .any(|e| matches!(e.target, Target::Forward { .. }))
            && group.iter().any(|e| e.target == Target::Delay)
    }

    fn sort(&mut self) {
        self.targets.sort_by_key(|entry| {
            (
                !matches!(entry.target, Target::Demux { .. }),
                std::cmp::Reverse(entry.priority),
            )
        });
    }

    /// Index of the target this rule resolves to for a draw of `rng`.
    fn choose(&self, rng: &mut impl Rng, avoid: Option<Locator>) -> Option<usize> {
        let first = self.targets.first()?;
        if matches!(first.target, Target::Demux { .. }) {
            return Some(0);
        }
        let group = self.active_group();
        let forward = |i: &usize| match self.targets[*i].target {
            Target::Forward { locator, .. } => Some(locator) != avoid,
            _ => false,
        };
        let total: u64 = group
            .clone()
            .filter(forward)
            .map(|i| u64::from(self.forward_weight(i)))
            .sum();
        if total > 0 {
            let mut draw = rng.random_range(0..total);
            for i in group.clone().filter(forward) {
                let weight = u64::from(self.forward_weight(i));
                if draw < weight {
                    return Some(i);
                }
                draw -= weight;
            }
        }
        let standby = group.clone().filter(forward).count();
        if standby > 0 {
            let pick = rng.random_range(0..standby);
            return group.clone().filter(forward).nth(pick);
        }
        group
            .clone()
            .find(|&i| self.targets[i].target == Target::Delay)
            .or_else(|| group.clone().next())
    }

    fn forward_weight(&self, index: usize) -> u32 {
        match self.targets[index].target {
            Target::Forward { weight, .. } => weight,
            _ => 0,
        }
    }

    /// Indices of the highest-priority group (the rule must not be empty).
    fn active_group(&self) -> std::ops::Range<usize> {
        let top = self.targets[0].priority;
        let end = self
            .targets
            .iter()
            .position(|entry| entry.priority != top)
            .unwrap_or(self.targets.len());
        0..end
    }
}

/// Outcome of resolving a service ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Deliver to this local listener.
    Demux(ListenerId),
    /// Send to this locator.
    Forward(Locator),
    /// Hold the packet; the controller has been (or must be) asked.
    Delay,
    /// Drop: a DROP rule matched.
    Drop,
    /// No rule covers the ID.
    NoMatch,
}

/// Counters of the whole table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TableStats {
    /// Every resolution attempted.
    pub lookups: u64,
    /// Packets resolved to DEMUX, FORWARD or DELAY.
    pub resolved: Counters,
    /// Packets resolved to DROP or matching no rule.
    pub dropped: Counters,
}

/// Errors of table operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// No rule is stored for exactly this prefix (covering prefixes do not count).
    #[error("no rule for {0}")]
    NoSuchRule(ServicePrefix),
    /// The prefix's rule has no target with this key.
    #[error("rule {0} has no target {1}")]
    NoSuchTarget(ServicePrefix, TargetKey),
}

/// Longest-prefix-match table of service rules.
#[derive(Debug, Default)]
pub struct ServiceTable {
    trie: PrefixTrie<u32>,
    /// Rules by slot; the trie stores slot numbers so that rules can be listed
    /// and modified without walking the trie.
    rules: Vec<Option<Rule>>,
    free_slots: Vec<u32>,
    stats: TableStats,
}

impl ServiceTable {
    /// An empty table: every ID resolves to [`Resolution::NoMatch`].
    pub fn new() -> ServiceTable {
        ServiceTable::default()
    }

    /// Number of prefixes with at least one target.
    pub fn len(&self) -> usize {
        self.trie.len()
    }

    /// True when no prefix has a rule, so every lookup is [`Resolution::NoMatch`].
    pub fn is_empty(&self) -> bool {
        self.trie.is_empty()
    }

    /// A copy of the table-wide lookup counters.
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Adds `target` to the rule for `prefix` (creating the rule if needed). A
    /// target with the same key is modified in place (weight, priority) and
    /// keeps its counters. Returns whether the target was new.
    pub fn add(&mut self, prefix: ServicePrefix, target: Target, priority: u32) -> bool {
        let slot = match self.trie.get(&prefix) {
            Some(&slot) => slot,
            None => {
                let slot = self.alloc_slot(Rule {
                    prefix,
                    targets: Vec::with_capacity(1),
                });
                self.trie.insert(&prefix, slot);
                slot
            }
        };
        let rule = self.rule_at_mut(slot);
        let key = target.key();
        let is_new = match rule.targets.iter_mut().find(|e| e.target.key() == key) {
            Some(entry) => {
                entry.target = target;
                entry.priority = priority;
                false
            }
            None => {
                rule.targets.push(TargetEntry {
                    target,
                    priority,
                    counters: Counters::default(),
                    origin: RuleOrigin::Static,
                });
                true
            }
        };
        rule.sort();
        is_new
    }

    /// Removes one target; the rule goes when its last target does.
    pub fn remove_target(
        &mut self,
        prefix: &ServicePrefix,
        key: &TargetKey,
    ) -> Result<TargetEntry, TableError> {
        let slot = *self
            .trie
            .get(prefix)
            .ok_or(TableError::NoSuchRule(*prefix))?;
        let rule = self.rule_at_mut(slot);
        let index = rule
            .targets
            .iter()
            .position(|e| e.target.key() == *key)
            .ok_or(TableError::NoSuchTarget(*prefix, *key))?;
        let entry = rule.targets.remove(index);
        if rule.targets.is_empty() {
            self.remove(prefix)?;
        }
        Ok(entry)
    }

    /// Removes the rule for `prefix` with all its targets.
    pub fn remove(&mut self, prefix: &ServicePrefix) -> Result<Rule, TableError> {
        let slot = self
            .trie
            .remove(prefix)
            .ok_or(TableError::NoSuchRule(*prefix))?;
        self.free_slots.push(slot);
        self.rules[slot as usize]
            .take()
            .ok_or(TableError::NoSuchRule(*prefix))
    }

    /// The rule stored for exactly `prefix`.
    pub fn get(&self, prefix: &ServicePrefix) -> Option<&Rule> {
        self.trie.get(prefix).map(|&slot| self.rule_at(slot))
    }

    /// The rules of `prefix` and of every prefix inside it, in no
    /// particular order; the cost follows those, not the table's size.
    pub fn rules_within(&self, prefix: &ServicePrefix) -> impl Iterator<Item = &Rule> {
        (self.trie.within(prefix).into_iter()).map(|&slot| self.rule_at(slot))
    }

    /// The rules of `prefix` and of every prefix covering it at least
    /// `min_len` bits long, one exact lookup per length.
    pub fn rules_covering(
        &self,
        prefix: &ServicePrefix,
        min_len: u16,
    ) -> impl Iterator<Item = &Rule> {
        let id = *prefix.id();
        (min_len..=prefix.len()).filter_map(move |len| self.get(&ServicePrefix::new(id, len)))
    }

    /// Every rule, in no particular order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().flatten()
    }

    /// The rule of the longest prefix covering `id`, without counting anything.
    pub fn longest_match(&self, id: &ServiceId) -> Option<&Rule> {
        self.trie
            .longest_match(id)
            .map(|(_, &slot)| self.rule_at(slot))
    }

    /// Resolves a packet of `bytes` bytes for `id` and counts it.
    pub fn resolve(&mut self, id: &ServiceId, bytes: usize, rng: &mut impl Rng) -> Resolution {
        self.resolve_with(id, bytes, rng, None)
    }

    /// [`Table::resolve`] with the FORWARD targets to `avoid` left out of
    /// the draw (a hop found gone: see `Host::handle_unreachable`); it is
    /// the answer still when the active group has no other.
    pub fn resolve_avoiding(
        &mut self,
        id: &ServiceId,
        bytes: usize,
        rng: &mut impl Rng,
        avoid: Locator,
    ) -> Resolution {
        self.resolve_with(id, bytes, rng, Some(avoid))
    }

    fn resolve_with(
        &mut self,
        id: &ServiceId,
        bytes: usize,
        rng: &mut impl Rng,
        avoid: Option<Locator>,
    ) -> Resolution {
        self.stats.lookups += 1;
        let Some((_, &slot)) = self.trie.longest_match(id) else {
            self.stats.dropped.count(bytes);
            return Resolution::NoMatch;
        };
        let rule = self.rules[slot as usize]
            .as_mut()
            .expect("trie slots always hold a rule");
        let Some(index) = rule.choose(rng, avoid) else {
            self.stats.dropped.count(bytes);
            return Resolution::NoMatch;
        };
        let entry = &mut rule.targets[index];
        entry.counters.count(bytes);
        let resolution = match entry.target {
            Target::Forward { locator, .. } => Resolution::Forward(locator),
            Target::Demux { listener } => Resolution::Demux(listener),
            Target::Delay => Resolution::Delay,
            Target::Drop => Resolution::Drop,
        };
        if resolution == Resolution::Drop {
            self.stats.dropped.count(bytes);
        } else {
            self.stats.resolved.count(bytes);
        }
        resolution
    }

    /// Every FORWARD locator of the active group of the matching rule, for
    /// sending a packet to all of them (broadcast-style service discovery).
    /// Counts the packet once against each target it goes to.
    pub fn resolve_all(&mut self, id: &ServiceId, bytes: usize) -> Vec<Locator> {
        self.stats.lookups += 1;
        let Some((_, &slot)) = self.trie.longest_match(id) else {
            self.stats.dropped.count(bytes);
            return Vec::new();
        };
        let rule = self.rules[slot as usize]
            .as_mut()
            .expect("trie slots always hold a rule");
        let group = rule.active_group();
        let mut locators = Vec::new();
        for entry in &mut rule.targets[group] {
            if let Target::Forward { locator, .. } = entry.target {
                entry.counters.count(bytes);
                locators.push(locator);
            }
        }
        if locators.is_empty() {
            self.stats.dropped.count(bytes);
        } else {
            self.stats.resolved.count(bytes);
        }
        locators
    }

    /// Approximate heap bytes used by the table (trie plus rules).
    pub fn memory_bytes(&self) -> usize {
        let rules: usize = self
            .rules()
            .map(|r| r.targets.capacity() * std::mem::size_of::<TargetEntry>())
            .sum();
        self.trie.memory_bytes()
            + self.rules.capacity() * std::mem::size_of::<Option<Rule>>()
            + self.free_slots.capacity() * std::mem::size_of::<u32>()
            + rules
    }

    fn alloc_slot(&mut self, rule: Rule) -> u32 {
        match self.free_slots.pop() {
            Some(slot) => {
                self.rules[slot as usize] = Some(rule);
                slot
            }
            None => {
                self.rules.push(Some(rule));
                (self.rules.len() - 1) as u32
            }
        }
    }

    fn rule_at(&self, slot: u32) -> &Rule {
        self.rules[slot as usize]
            .as_ref()
            .expect("trie slots always hold a rule")
    }

    fn rule_at_mut(&mut self, slot: u32) -> &mut Rule {
        self.rules[slot as usize]
            .as_mut()
            .expect("trie slots always hold a rule")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::net::Ipv4Addr;

    fn prefix(s: &str) -> ServicePrefix {
        s.parse().unwrap()
    }

    fn id(s: &str) -> ServiceId {
        s.parse().unwrap()
    }

    fn forward(last: u8, weight: u32) -> Target {
        Target::Forward {
            locator: Locator::Ipv4(Ipv4Addr::new(10, 0, 0, last)),
            weight,
        }
    }

    #[test]
    fn a_hop_avoided_is_left_out_of_the_draw_unless_it_is_the_only_one() {
        let mut table = ServiceTable::new();
        let mut rng = SmallRng::seed_from_u64(2);
        let (a, b) = (
            Locator::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
            Locator::Ipv4(Ipv4Addr::new(10, 0, 0, 2)),
        );
        // a is drawn nearly always, but never when avoided.
        table.add(prefix("beef/16"), forward(1, 1000), 0);
        table.add(prefix("beef/16"), forward(2, 1), 0);
        for _ in 0..100 {
            let resolved = table.resolve_avoiding(&id("beef01"), 0, &mut rng, a);
            assert_eq!(resolved, Resolution::Forward(b));
        }
        let drawn = (0..100)
            .filter(|_| table.resolve(&id("beef01"), 0, &mut rng) == Resolution::Forward(a))
            .count();
        assert!(drawn > 90, "a drawn {drawn} times of 100");
        // Alone in its rule (weights zero too): still the answer.
        table.add(prefix("cafe/16"), forward(1, 0), 0);
        let resolved = table.resolve_avoiding(&id("cafe01"), 0, &mut rng, a);
        assert_eq!(resolved, Resolution::Forward(a));
    }

    #[test]
    fn demux_wins_over_forward_at_same_prefix() {
        let mut table = ServiceTable::new();
        let mut rng = SmallRng::seed_from_u64(1);
        table.add(prefix("beef/16"), forward(1, 1), 10);
        table.add(
            prefix("beef/16"),
            Target::Demux {
                listener: ListenerId(7),
            },
            0,
        );
        assert_eq!(
            table.resolve(&id("beef01"), 100, &mut rng),
            Resolution::Demux(ListenerId(7))
        );
    }

    #[test]
    fn highest_priority_group_is_used() {
        let mut table = ServiceTable::new();
        let mut rng = SmallRng::seed_from_u64(2);
        table.add(prefix("ab/8"), forward(1, 1), 1);
        table.add(prefix("ab/8"), forward(2, 1), 5);
        for _ in 0..50 {
            assert_eq!(
                table.resolve(&id("ab"), 1, &mut rng),
                Resolution::Forward(Locator::Ipv4(Ipv4Addr::new(10, 0, 0, 2)))
            );
        }
        table.add(prefix("ab/8"), Target::Drop, 9);
        assert_eq!(table.resolve(&id("ab"), 1, &mut rng), Resolution::Drop);
        table
            .remove_target(&prefix("ab/8"), &TargetKey::Drop)
            .unwrap();
        table.add(prefix("ab/8"), Target::Delay, 9);
        assert_eq!(table.resolve(&id("ab"), 1, &mut rng), Resolution::Delay);
    }

    #[test]
    fn counters_and_no_match() {
        let mut table = ServiceTable::new();
        let mut rng = SmallRng::seed_from_u64(3);
        table.add(prefix("cd/8"), forward(1, 1), 0);
        table.add(prefix("ce/8"), Target::Drop, 0);
        table.resolve(&id("cd"), 100, &mut rng);
        table.resolve(&id("cd"), 50, &mut rng);
        table.resolve(&id("ce"), 10, &mut rng);
        assert_eq!(table.resolve(&id("ff"), 1, &mut rng), Resolution::NoMatch);
        let stats = table.stats();
        assert_eq!(stats.lookups, 4);
        assert_eq!(
            stats.resolved,
            Counters {
                packets: 2,
                bytes: 150
            }
        );
        assert_eq!(
            stats.dropped,
            Counters {
                packets: 2,
                bytes: 11
            }
        );
        let rule = table.get(&prefix("cd/8")).unwrap();
        assert_eq!(
            rule.targets()[0].counters,
            Counters {
                packets: 2,
                bytes: 150
            }
        );
    }

    #[test]
    fn modify_keeps_counters_and_remove_last_target_removes_rule() {
        let mut table = ServiceTable::new();
        let mut rng = SmallRng::seed_from_u64(4);
        assert!(table.add(prefix("aa/8"), forward(1, 1), 0));
        table.resolve(&id("aa"), 10, &mut rng);
        assert!(!table.add(prefix("aa/8"), forward(1, 5), 3));
        let entry = &table.get(&prefix("aa/8")).unwrap().targets()[0];
        assert_eq!(entry.priority, 3);
        assert_eq!(entry.target, forward(1, 5));
        assert_eq!(entry.counters.packets, 1);
        let key = forward(1, 0).key();
        table.remove_target(&prefix("aa/8"), &key).unwrap();
        assert!(table.is_empty());
        assert_eq!(
            table.remove_target(&prefix("aa/8"), &key),
            Err(TableError::NoSuchRule(prefix("aa/8")))
        );
    }

    #[test]
    fn standby_targets_only_when_all_weights_zero() {
        let mut table = ServiceTable::new();
        let mut rng = SmallRng::seed_from_u64(5);
        table.add(prefix("bb/8"), forward(1, 0), 0);
        table.add(prefix("bb/8"), forward(2, 1), 0);
        for _ in 0..100 {
            assert_eq!(
                table.resolve(&id("bb"), 1, &mut rng),
                Resolution::Forward(Locator::Ipv4(Ipv4Addr::new(10, 0, 0, 2)))
            );
        }
        table.add(prefix("bb/8"), forward(2, 0), 0);
        let mut seen = [false; 2];
        for _ in 0..100 {
            if let Resolution::Forward(l) = table.resolve(&id("bb"), 1, &mut rng) {
                seen[usize::from(l.ip().octets()[3] - 1)] = true;
            }
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn origins_default_to_static_and_can_be_set() {
        let mut table = ServiceTable::new();
        table.add(prefix("ab/8"), forward(1, 1), 0);
        let mut rule = table.get(&prefix("ab/8")).unwrap().clone();
        assert_eq!(rule.targets()[0].origin, RuleOrigin::Static);
        let origin = RuleOrigin::Announced {
            by: "h1".into(),
            expires_unix_ms: Some(5),
        };
        assert!(rule.set_origin(&forward(1, 0).key(), origin.clone()));
        assert!(!rule.set_origin(&TargetKey::Drop, origin.clone()));
        assert_eq!(rule.targets()[0].origin.label(), "announced h1");
        assert_eq!(rule.targets()[0].origin.expires_unix_ms(), Some(5));
        // Listings from a sald that predates origins still parse.
        let mut json = serde_json::to_value(&rule).unwrap();
        json["targets"][0].as_object_mut().unwrap().remove("origin");
        let old: Rule = serde_json::from_value(json).unwrap();
        assert_eq!(old.targets()[0].origin, RuleOrigin::Static);
    }

    #[test]
    fn resolve_all_returns_active_forward_group() {
        let mut table = ServiceTable::new();
        table.add(ServicePrefix::DEFAULT, forward(255, 1), 0);
        table.add(ServicePrefix::DEFAULT, forward(254, 1), 0);
        table.add(ServicePrefix::DEFAULT, forward(9, 1), 1);
        assert_eq!(table.resolve_all(&id("1234"), 1).len(), 1);
        table
            .remove_target(&ServicePrefix::DEFAULT, &forward(9, 0).key())
            .unwrap();
        let mut all = table.resolve_all(&id("1234"), 1);
        all.sort();
        assert_eq!(all.len(), 2);
    }
}
