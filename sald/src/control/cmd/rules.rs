//! `AddRule`, `AddRuleWithOrigin`, `DelRule`, `ListRules`: the service table
//! as operators and servd change and see it.

use sal::table::{RuleOrigin, TableError, Target, TargetKey};
use sal::ServicePrefix;
use sal_control::{ErrorKind, Response};

use super::{denied, error_reply, Reply};
use crate::control::client::Client;

/// Adds a rule target on behalf of an operator (`Static`) or servd.
pub(super) fn add(
    client: &mut Client,
    prefix: ServicePrefix,
    target: Target,
    priority: u32,
    origin: RuleOrigin,
) -> Reply {
    if !client.privileged {
        return denied("change rules");
    }
    let mut core = client.context.shared.lock();
    core.host.add_rule(prefix, target, priority);
    core.run();
    // servd refreshes its rules often: only operators' changes are news.
    if origin == RuleOrigin::Static {
        tracing::info!(%prefix, ?target, priority, "rule added");
    } else {
        tracing::debug!(%prefix, ?target, priority, ?origin, "rule added");
    }
    core.origins.set(prefix, target.key(), origin);
    (Response::Ok, None)
}

/// Removes one target, or the whole rule.
pub(super) fn delete(
    client: &mut Client,
    prefix: ServicePrefix,
    target: Option<TargetKey>,
) -> Reply {
    if !client.privileged {
        return denied("change rules");
    }
    let mut core = client.context.shared.lock();
    let result = match target {
        Some(key) => core.host.remove_rule_target(&prefix, &key),
        None => core.host.remove_rule(&prefix),
    };
    core.origins.forget(&prefix, target.as_ref());
    core.run();
    match result {
        Ok(()) => (Response::Ok, None),
        Err(error @ (TableError::NoSuchRule(_) | TableError::NoSuchTarget(..))) => {
            error_reply(ErrorKind::NotFound, error.to_string())
        }
    }
}

/// Every rule, sorted by prefix, with who installed each target.
pub(super) fn list(client: &mut Client) -> Reply {
    let core = client.context.shared.lock();
    let mut rules: Vec<_> = core.host.table().rules().cloned().collect();
    rules.sort_by_key(|rule| rule.prefix);
    core.origins.annotate(&mut rules);
    (Response::Rules { rules }, None)
}
