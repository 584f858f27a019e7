//! Who installed which rule target, for listings (`servalctl services`) and
//! for the binding policy (operators' rules are not to be captured).
//!
//! Kept beside the host's table rather than in it, so that rule changes keep
//! going through the host's own calls; only non-static origins are stored,
//! so a target without an entry is the operator's (or a listener's DEMUX).
//! An entry whose target has since gone (removed by the host itself) is
//! harmless: listings only annotate targets that exist, and re-adding the
//! target by any request overwrites it.

use std::collections::HashMap;

use sal::table::{Rule, RuleOrigin, TargetKey};
use sal::ServicePrefix;

/// The origins of one daemon's rule targets.
#[derive(Debug, Default)]
pub struct Origins {
    map: HashMap<(ServicePrefix, TargetKey), RuleOrigin>,
}

impl Origins {
    /// Records who installed `key` at `prefix` (`Static` forgets the entry).
    pub fn set(&mut self, prefix: ServicePrefix, key: TargetKey, origin: RuleOrigin) {
        if origin == RuleOrigin::Static {
            self.map.remove(&(prefix, key));
        } else {
            self.map.insert((prefix, key), origin);
        }
    }

    /// Forgets one target's origin.
    pub fn forget(&mut self, prefix: &ServicePrefix, key: &TargetKey) {
        self.map.remove(&(*prefix, *key));
    }

    /// Forgets the origins of every target of `rule` (it is being
    /// removed): a lookup per target, not a walk over every origin.
    pub fn forget_rule(&mut self, rule: &Rule) {
        for entry in rule.targets() {
            self.map.remove(&(rule.prefix, entry.target.key()));
        }
    }

    /// The origin of `key` at `prefix`.
    pub fn get(&self, prefix: &ServicePrefix, key: &TargetKey) -> RuleOrigin {
        self.map
            .get(&(*prefix, *key))
            .cloned()
            .unwrap_or(RuleOrigin::Static)
    }

    /// Fills in the recorded origins of `rules`' targets.
    pub fn annotate(&self, rules: &mut [Rule]) {
        for rule in rules {
            let keys: Vec<TargetKey> = rule.targets().iter().map(|e| e.target.key()).collect();
            for key in keys {
                if let Some(origin) = self.map.get(&(rule.prefix, key)) {
                    rule.set_origin(&key, origin.clone());
                }
            }
        }
    }

    /// Whether `rule` has a target an operator put there by hand or by
    /// configuration that sends its services somewhere (FORWARD, DROP or
    /// DELAY; a listener's DEMUX does not count).
    pub fn has_operator_target(&self, rule: &Rule) -> bool {
        rule.targets().iter().any(|entry| {
            let key = entry.target.key();
            !matches!(key, TargetKey::Demux { .. })
                && self.get(&rule.prefix, &key) == RuleOrigin::Static
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sal::table::{ServiceTable, Target};

    #[test]
    fn origins_are_per_target_and_static_by_default() {
        let prefix: ServicePrefix = "beef/16".parse().unwrap();
        let drop = TargetKey::Drop;
        let mut origins = Origins::default();
        let announced = RuleOrigin::Announced {
            by: "r1".into(),
            expires_unix_ms: None,
        };
        origins.set(prefix, drop, announced.clone());
        assert_eq!(origins.get(&prefix, &drop), announced);
        let mut table = ServiceTable::new();
        table.add(prefix, Target::Drop, 0);
        let mut rules: Vec<Rule> = table.rules().cloned().collect();
        assert!(!origins.has_operator_target(&rules[0]));
        origins.annotate(&mut rules);
        assert_eq!(rules[0].targets()[0].origin, announced);
        origins.set(prefix, drop, RuleOrigin::Static);
        assert!(origins.has_operator_target(&rules[0]));
        origins.set(prefix, drop, announced.clone());
        origins.forget(&prefix, &drop);
        assert_eq!(origins.get(&prefix, &drop), RuleOrigin::Static);
    }

    #[test]
    fn forgetting_a_rule_forgets_its_targets_and_leaves_the_others() {
        let (a, b): (ServicePrefix, ServicePrefix) =
            ("beef/16".parse().unwrap(), "beef00/24".parse().unwrap());
        let announced = RuleOrigin::Announced {
            by: "r1".into(),
            expires_unix_ms: None,
        };
        let mut table = ServiceTable::new();
        let mut origins = Origins::default();
        for prefix in [a, b] {
            table.add(prefix, Target::Drop, 0);
            table.add(prefix, Target::Delay, 1);
            origins.set(prefix, TargetKey::Drop, announced.clone());
            origins.set(prefix, TargetKey::Delay, announced.clone());
        }
        origins.forget_rule(table.get(&a).unwrap());
        assert_eq!(origins.get(&a, &TargetKey::Drop), RuleOrigin::Static);
        assert_eq!(origins.get(&a, &TargetKey::Delay), RuleOrigin::Static);
        assert_eq!(origins.get(&b, &TargetKey::Delay), announced);
        assert_eq!(origins.map.len(), 2, "only b's two origins are left");
    }
}
