//! Helpers shared by the controller's test programs.

use std::collections::HashMap;

use sal::table::{Rule, RuleOrigin, ServiceTable, TargetKey};
use sal::ServicePrefix;

/// What a fake sald answers to `ListRules`: its table's rules, each target
/// with the origin it was installed with (static when none was recorded).
pub fn rules_with_origins(
    table: &ServiceTable,
    origins: &HashMap<(ServicePrefix, TargetKey), RuleOrigin>,
) -> Vec<Rule> {
    let mut rules: Vec<Rule> = table.rules().cloned().collect();
    for rule in &mut rules {
        let keys: Vec<TargetKey> = rule.targets().iter().map(|e| e.target.key()).collect();
        for key in keys {
            if let Some(origin) = origins.get(&(rule.prefix, key)) {
                rule.set_origin(&key, origin.clone());
            }
        }
    }
    rules
}
