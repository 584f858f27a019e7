//! What a local user may do: change rules and move flows (root and sald's
//! own user), and bind which prefixes (see "Binding" in [`crate::config`]).

use sal::table::ServiceTable;
use sal::ServicePrefix;
use sal_control::ErrorKind;

use crate::config::AllowConfig;
use crate::origins::Origins;
use crate::owners::Owners;

/// The daemon's access policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// sald's own user: as privileged as root.
    pub owner_uid: u32,
    /// `[[allow]]` entries.
    pub allow: Vec<AllowConfig>,
    /// Shortest prefix an ordinary user may bind (at least 1).
    pub min_bind_prefix: u16,
}

/// Why a bind was refused; each maps to one errno in the socket shim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindRefusal {
    /// `[[allow]]` entries exist and none covers this user and prefix.
    #[error("uid {uid} may not bind {prefix} (no [[allow]] entry covers it)")]
    NotAllowed {
        /// The user who asked.
        uid: u32,
        /// The prefix it asked to bind.
        prefix: ServicePrefix,
    },
    /// Shorter than ordinary users may bind.
    #[error("uid {uid} may not bind {prefix}: ordinary users bind prefixes of /{min} or longer")]
    TooShort {
        /// The user who asked.
        uid: u32,
        /// The prefix it asked to bind.
        prefix: ServicePrefix,
        /// The shortest prefix length an ordinary user may bind.
        min: u16,
    },
    /// Overlaps a binding of another user.
    #[error("{prefix} overlaps {other}, bound by another user")]
    InUse {
        /// The prefix asked for.
        prefix: ServicePrefix,
        /// The other user's binding that covers, equals or lies inside it.
        other: ServicePrefix,
    },
    /// An operator's rule sends (part of) these services elsewhere.
    #[error("uid {uid} may not bind {prefix}: the operator's rule for {rule} sends it elsewhere")]
    OperatorRule {
        /// The user who asked.
        uid: u32,
        /// The prefix it asked to bind.
        prefix: ServicePrefix,
        /// The prefix of the operator's (static) rule in the way.
        rule: ServicePrefix,
    },
}

impl BindRefusal {
    /// The control protocol's error class (EACCES or EADDRINUSE).
    pub fn kind(&self) -> ErrorKind {
        match self {
            BindRefusal::InUse { .. } => ErrorKind::AddressInUse,
            _ => ErrorKind::PermissionDenied,
        }
    }
}

impl Policy {
    /// Root and sald's own user.
    pub fn privileged(&self, uid: u32) -> bool {
        uid == 0 || uid == self.owner_uid
    }

    /// Whether `uid` may bind `prefix`, given the current bindings and
    /// rules.
    pub fn check_bind(
        &self,
        uid: u32,
        prefix: &ServicePrefix,
        owners: &Owners,
        table: &ServiceTable,
        origins: &Origins,
    ) -> Result<(), BindRefusal> {
        if self.privileged(uid)
            || self
                .allow
                .iter()
                .any(|a| a.uid == uid && a.prefix.covers(prefix))
        {
            return Ok(());
        }
        let prefix = *prefix;
        if !self.allow.is_empty() {
            return Err(BindRefusal::NotAllowed { uid, prefix });
        }
        let min = self.min_bind_prefix.max(1);
        if prefix.len() < min {
            return Err(BindRefusal::TooShort { uid, prefix, min });
        }
        if let Some(other) = owners.overlapping_other(&prefix, uid) {
            return Err(BindRefusal::InUse {
                prefix,
                other: other.prefix,
            });
        }
        // An operator rule inside (or at) the prefix would be captured by the
        // DEMUX (it wins at equal length) or shadowed for the rest of the
        // prefix; one covering it is captured by LPM unless it is a broad
        // route (shorter than ordinary users may bind, like a /0 default).
        // Both looked up in the table's trie: a bind costs the same beside a
        // million routes as beside ten.
        let captured = table
            .rules_within(&prefix)
            .chain(table.rules_covering(&prefix, min))
            .find(|rule| origins.has_operator_target(rule));
        if let Some(rule) = captured {
            return Err(BindRefusal::OperatorRule {
                uid,
                prefix,
                rule: rule.prefix,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owners::Binding;
    use sal::table::{ListenerId, RuleOrigin, Target};

    fn p(s: &str) -> ServicePrefix {
        s.parse().unwrap()
    }

    fn policy(allow: Vec<AllowConfig>) -> Policy {
        Policy {
            owner_uid: 0,
            allow,
            min_bind_prefix: 16,
        }
    }

    #[test]
    fn ordinary_users_bind_like_unprivileged_ports() {
        let policy = policy(vec![]);
        let mut owners = Owners::default();
        let mut table = ServiceTable::new();
        let mut origins = Origins::default();
        let check =
            |uid, prefix: &str, owners: &Owners, table: &ServiceTable, origins: &Origins| {
                policy.check_bind(uid, &p(prefix), owners, table, origins)
            };
        // Root binds anything; ordinary users nothing short.
        assert!(check(0, "0/0", &owners, &table, &origins).is_ok());
        let short = check(1000, "0/0", &owners, &table, &origins).unwrap_err();
        assert_eq!(short.kind(), ErrorKind::PermissionDenied);
        assert!(check(1000, "be/8", &owners, &table, &origins).is_err());
        assert!(check(1000, "beef/16", &owners, &table, &origins).is_ok());
        // Another user's binding: not covered, not equalled, not entered.
        owners.bind(
            ListenerId(1),
            Binding {
                prefix: p("beef/16"),
                uid: 1000,
                backlog: 1,
            },
        );
        for prefix in ["beef/16", "beef01/24"] {
            let in_use = check(1001, prefix, &owners, &table, &origins).unwrap_err();
            assert_eq!(in_use.kind(), ErrorKind::AddressInUse, "{prefix}");
        }
        assert!(check(1000, "beef01/24", &owners, &table, &origins).is_ok());
        owners.bind(
            ListenerId(2),
            Binding {
                prefix: p("c0ffee/24"),
                uid: 0,
                backlog: 1,
            },
        );
        assert!(check(1001, "c0ff/16", &owners, &table, &origins).is_err());
        // Operator rules: a /0 default route does not stop a bind, a
        // specific FORWARD does, inside, equal or covering.
        table.add(p("0/0"), Target::Drop, 0);
        assert!(check(1001, "d00d/16", &owners, &table, &origins).is_ok());
        table.add(
            p("d00d/16"),
            Target::Forward {
                locator: "10.0.0.2".parse().unwrap(),
                weight: 1,
            },
            0,
        );
        for prefix in ["d00d/16", "d00d01/24", "d0/12"] {
            let refused = check(1001, prefix, &owners, &table, &origins);
            assert!(
                matches!(
                    refused,
                    Err(BindRefusal::OperatorRule { .. }) | Err(BindRefusal::TooShort { .. })
                ),
                "{prefix}: {refused:?}"
            );
        }
        assert!(matches!(
            check(1001, "d00d01/24", &owners, &table, &origins),
            Err(BindRefusal::OperatorRule { .. })
        ));
        // A rule inside the prefix is captured by a bind of it, too.
        table.add(p("e00e01/24"), Target::Drop, 0);
        assert!(matches!(
            check(1001, "e00e/16", &owners, &table, &origins),
            Err(BindRefusal::OperatorRule { rule, .. }) if rule == p("e00e01/24")
        ));
        assert!(check(1001, "e00f/16", &owners, &table, &origins).is_ok());
        // ... unless a controller installed it (then it is not the operator's).
        origins.set(
            p("d00d/16"),
            Target::Forward {
                locator: "10.0.0.2".parse().unwrap(),
                weight: 1,
            }
            .key(),
            RuleOrigin::DefaultRoute { by: "servd".into() },
        );
        assert!(check(1001, "d00d01/24", &owners, &table, &origins).is_ok());
    }

    #[test]
    fn allow_entries_let_their_users_bind_and_keep_others_out() {
        let policy = policy(vec![AllowConfig {
            uid: 1000,
            prefix: p("0/0"),
        }]);
        let (owners, table, origins) = (Owners::default(), ServiceTable::new(), Origins::default());
        assert!(policy
            .check_bind(1000, &p("0/0"), &owners, &table, &origins)
            .is_ok());
        assert!(matches!(
            policy.check_bind(1001, &p("beef/16"), &owners, &table, &origins),
            Err(BindRefusal::NotAllowed { .. })
        ));
    }
}
