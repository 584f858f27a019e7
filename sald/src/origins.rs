//! Who installed which rule target, for listings (`servalctl services`) and
//! for the binding policy (operators' rules are not to be captured).
//!
//! Kept beside the host's table rather than in it, so that rule changes keep
//! going through the host's own calls; only non-static origins are stored,
//! so a target without an entry is the operator's (or a listener's DEMUX).
//! An entry whose target has since gone (removed by the host itself) is
//! harmless: listings only annotate targets that exist, and re-adding the
//! target by any request overwrites it.

use std::collections::{BTreeMap, HashMap};

use sal::table::{Rule, RuleOrigin, TargetKey};
use sal::ServicePrefix;

/// The origins of one daemon's rule targets, by prefix so that forgetting
/// a whole rule costs its own targets, not the table's.
#[derive(Debug, Default)]
pub struct Origins {
    map: HashMap<ServicePrefix, BTreeMap<TargetKey, RuleOrigin>>,
}

impl Origins {
    /// Records who installed `key` at `prefix` (`Static` forgets the entry).
    pub fn set(&mut self, prefix: ServicePrefix, key: TargetKey, origin: RuleOrigin) {
        if origin == RuleOrigin::Static {
            self.forget(&prefix, Some(&key));
        } else {
            self.map.entry(prefix).or_default().insert(key, origin);
        }
    }

    /// Forgets one target's origin, or every target's of `prefix`.
    pub fn forget(&mut self, prefix: &ServicePrefix, key: Option<&TargetKey>) {
        match key {
            Some(key) => {
                if let Some(targets) = self.map.get_mut(prefix) {
                    targets.remove(key);
                    if targets.is_empty() {
                        self.map.remove(prefix);
                    }
                }
            }
            None => {
                self.map.remove(prefix);
            }
        }
    }

    /// The origin of `key` at `prefix`.
    pub fn get(&self, prefix: &ServicePrefix, key: &TargetKey) -> RuleOrigin {
        self.map
            .get(prefix)
            .and_then(|targets| targets.get(key))
            .cloned()
            .unwrap_or(RuleOrigin::Static)
    }

    /// Fills in the recorded origins of `rules`' targets.
    pub fn annotate(&self, rules: &mut [Rule]) {
        for rule in rules {
            let Some(targets) = self.map.get(&rule.prefix) else {
                continue;
            };
            for (key, origin) in targets {
                rule.set_origin(key, origin.clone());
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
        origins.forget(&prefix, None);
        assert_eq!(origins.get(&prefix, &drop), RuleOrigin::Static);
    }

    #[test]
    fn forgetting_a_prefix_leaves_the_others() {
        let (a, b): (ServicePrefix, ServicePrefix) =
            ("beef/16".parse().unwrap(), "beef00/24".parse().unwrap());
        let delay = TargetKey::Delay;
        let announced = RuleOrigin::Announced {
            by: "r1".into(),
            expires_unix_ms: None,
        };
        let mut origins = Origins::default();
        for prefix in [a, b] {
            origins.set(prefix, TargetKey::Drop, announced.clone());
            origins.set(prefix, delay, announced.clone());
        }
        origins.forget(&a, None);
        assert_eq!(origins.get(&a, &delay), RuleOrigin::Static);
        assert_eq!(origins.get(&b, &delay), announced);
        origins.forget(&b, Some(&delay));
        assert_eq!(origins.get(&b, &delay), RuleOrigin::Static);
        assert_eq!(origins.get(&b, &TargetKey::Drop), announced);
        origins.forget(&b, Some(&TargetKey::Drop));
        assert!(origins.map.is_empty(), "emptied prefixes are not kept");
    }
}
