//! `AddRule`, `AddRuleWithOrigin`, `DelRule`, `ApplyRules`, `ListRules`: the
//! service table as operators and servd change and see it.
//!
//! Targets installed by a controller (any origin but `Static`) never
//! outrank or replace the operator's: their priority is capped at the lowest
//! priority of the prefix's static targets, and a controller's add of a
//! target the operator installed leaves the operator's version alone. servd
//! enforces the same, but the table is sald's, so sald holds the line
//! whatever a controller sends.

use sal::table::{Rule, RuleOrigin, TableError, Target, TargetKey};
use sal::ServicePrefix;
use sal_control::{ErrorKind, Response, RuleChange, RuleFailure};

use super::{denied, error_reply, parts, Reply};
use crate::control::client::Client;
use crate::daemon::Core;

/// Why one change was not applied.
type Refusal = (ErrorKind, String);

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
    let result = add_target(&mut core, prefix, target, priority, origin);
    core.run();
    reply(result)
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
    let result = delete_target(&mut core, prefix, target);
    core.run();
    reply(result)
}

/// Applies a batch of changes in order under one lock; a failing change
/// does not stop the ones after it.
pub(super) fn apply(client: &mut Client, changes: Vec<RuleChange>) -> Reply {
    if !client.privileged {
        return denied("change rules");
    }
    let mut core = client.context.shared.lock();
    let mut failures = Vec::new();
    for (index, change) in changes.into_iter().enumerate() {
        let result = match change {
            RuleChange::Add {
                prefix,
                target,
                priority,
                origin,
            } => add_target(&mut core, prefix, target, priority, origin),
            RuleChange::Del { prefix, target } => delete_target(&mut core, prefix, target),
        };
        if let Err((kind, message)) = result {
            failures.push(RuleFailure {
                index,
                kind,
                message,
            });
        }
    }
    core.run();
    (Response::Applied { failures }, None)
}

/// Every rule, sorted by prefix, with who installed each target (the own
/// service IDs of unbound datagram sockets marked `Ephemeral`), and whether
/// broadcast discovery is on; in parts when there are many (see `parts`).
pub(super) async fn list(client: &mut Client) -> Reply {
    let turn = (client.context.listings)
        .wait(client.uid, client.privileged)
        .await;
    let shared = client.context.shared.clone();
    let (prefixes, broadcast_discovery) = {
        let core = shared.lock();
        let prefixes: Vec<ServicePrefix> = core.host.table().rules().map(|r| r.prefix).collect();
        (prefixes, core.host.config().broadcast_discovery)
    };
    let prefixes = parts::sorted(client, prefixes).await;
    let build = |prefixes: &[ServicePrefix]| {
        let core = shared.lock();
        let mut rules: Vec<Rule> = (prefixes.iter())
            .filter_map(|prefix| core.host.table().get(prefix).cloned())
            .collect();
        annotate(&core, &mut rules);
        rules
    };
    let part = |rules| Response::RulesPart { rules };
    let whole = |rules| Response::Rules {
        rules,
        broadcast_discovery,
    };
    parts::answer_list(client, &turn, &prefixes, build, part, whole).await
}

/// Marks who installed each target of `rules` (a relay's DEMUX with its
/// program's locator).
fn annotate(core: &Core, rules: &mut [Rule]) {
    core.origins.annotate(rules);
    for rule in rules {
        let marked: Vec<(TargetKey, RuleOrigin)> = (rule.targets().iter())
            .filter_map(|entry| match entry.target {
                Target::Demux { listener } if core.host.is_ephemeral(listener) => {
                    Some((entry.target.key(), RuleOrigin::Ephemeral))
                }
                // A program's own host serves it: say where.
                Target::Demux { listener } => core
                    .host
                    .listener_relay(listener)
                    .map(|locator| (entry.target.key(), RuleOrigin::Relay { locator })),
                _ => None,
            })
            .collect();
        for (key, origin) in marked {
            rule.set_origin(&key, origin);
        }
    }
}

fn reply(result: Result<(), Refusal>) -> Reply {
    match result {
        Ok(()) => (Response::Ok, None),
        Err((kind, message)) => error_reply(kind, message),
    }
}

fn add_target(
    core: &mut Core,
    prefix: ServicePrefix,
    target: Target,
    priority: u32,
    origin: RuleOrigin,
) -> Result<(), Refusal> {
    if let Target::Demux { listener } = target {
        // Binding makes a listener's DEMUX target; one added by hand must
        // name a listener that exists, or the prefix's SYNs would go nowhere.
        if core.host.listener_pending(listener).is_none() {
            return Err((
                ErrorKind::NotFound,
                format!(
                    "no listener {} (a DEMUX target names a bound listener)",
                    listener.0
                ),
            ));
        }
    }
    let key = target.key();
    let mut priority = priority;
    if origin != RuleOrigin::Static {
        if let Some(rule) = core.host.table().get(&prefix) {
            let static_priorities = rule
                .targets()
                .iter()
                .filter(|entry| !matches!(entry.target.key(), TargetKey::Demux { .. }))
                .filter(|entry| {
                    core.origins.get(&prefix, &entry.target.key()) == RuleOrigin::Static
                })
                .map(|entry| (entry.target.key(), entry.priority));
            if static_priorities.clone().any(|(k, _)| k == key) {
                tracing::debug!(%prefix, ?target, ?origin, "controller's add of an operator's target ignored");
                return Ok(());
            }
            if let Some(lowest) = static_priorities.map(|(_, p)| p).min() {
                priority = priority.min(lowest);
            }
        }
    }
    core.host.add_rule(prefix, target, priority);
    // servd refreshes its rules often: only operators' changes are news.
    if origin == RuleOrigin::Static {
        tracing::info!(%prefix, ?target, priority, "rule added");
    } else {
        tracing::debug!(%prefix, ?target, priority, ?origin, "rule added");
    }
    core.origins.set(prefix, key, origin);
    Ok(())
}

fn delete_target(
    core: &mut Core,
    prefix: ServicePrefix,
    target: Option<TargetKey>,
) -> Result<(), Refusal> {
    let result = match target {
        Some(key) => {
            core.origins.forget(&prefix, &key);
            core.host.remove_rule_target(&prefix, &key)
        }
        None => {
            if let Some(rule) = core.host.table().get(&prefix) {
                core.origins.forget_rule(rule);
            }
            core.host.remove_rule(&prefix)
        }
    };
    result.map_err(
        |error @ (TableError::NoSuchRule(_) | TableError::NoSuchTarget(..))| {
            (ErrorKind::NotFound, error.to_string())
        },
    )
}
