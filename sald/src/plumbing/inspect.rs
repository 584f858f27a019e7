//! What is already in the kernel before installing: plumbing of a live
//! sald (refuse), of a crashed one (clean up), or routing state in the way.

use netlink_packet_route::rule::RuleMessage;

use super::config::PlumbingConfig;
use super::error::PlumbingError;
use super::messages::{
    describe_route, describe_rule, is_plain_local, is_sal_rule, is_source_rule, rule_pref,
    rule_table, source_rule, with_pref,
};
use super::nft::{nft_run, nft_table_exists, NFT_TABLE};
use super::rtnl::Rtnl;
use super::state::State;
use super::sysctl::{read_sysctl, write_sysctl};
use super::SAL_IPPROTO;

#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) sal_rules: Vec<RuleMessage>,
    pub(crate) moved_local: Option<RuleMessage>,
    pub(crate) source_rules: Vec<RuleMessage>,
    pub(crate) nft_table: bool,
}

impl Found {
    pub(crate) fn any(&self) -> bool {
        !self.sal_rules.is_empty()
            || self.moved_local.is_some()
            || !self.source_rules.is_empty()
            || self.nft_table
    }

    pub(crate) fn describe(&self, cfg: &PlumbingConfig) -> Vec<String> {
        let mut v = Vec::new();
        if !self.sal_rules.is_empty() {
            v.push(format!(
                "rule pref {} ipproto {SAL_IPPROTO} exists ({})",
                cfg.rule_pref,
                self.sal_rules
                    .iter()
                    .map(describe_rule)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.moved_local.is_some() {
            v.push(format!("the local rule is at pref {}", cfg.local_pref()));
        }
        if !self.source_rules.is_empty() {
            v.push(format!(
                "per-source rules exist ({})",
                self.source_rules
                    .iter()
                    .map(describe_rule)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.nft_table {
            v.push(format!("nft table ip {NFT_TABLE} exists"));
        }
        v
    }
}

pub(crate) fn inspect(rtnl: &mut Rtnl, cfg: &PlumbingConfig) -> Result<Found, PlumbingError> {
    let rules = rtnl.rules_v4()?;
    let sal_rules = rules
        .iter()
        .filter(|r| is_sal_rule(r, cfg.rule_pref))
        .cloned()
        .collect();
    let moved_local = rules
        .iter()
        .find(|r| is_plain_local(r) && rule_pref(r) == cfg.local_pref())
        .cloned();
    let source_rules = rules
        .iter()
        .filter(|r| is_source_rule(r, cfg))
        .cloned()
        .collect();
    Ok(Found {
        sal_rules,
        moved_local,
        source_rules,
        nft_table: nft_table_exists(),
    })
}

/// Deletes every IPv4 route in `table` (one of our per-source tables).
pub(crate) fn flush_table(rtnl: &mut Rtnl, table: u32) -> Result<(), PlumbingError> {
    for r in rtnl.routes_v4(table)? {
        let op = format!("delete route {} table {table}", describe_route(&r));
        match rtnl.del_route(&op, r) {
            Err(e) if e.errno() == Some(nix::libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// Removes plumbing left by a sald that died without undoing it.
pub(crate) fn cleanup_stale(
    rtnl: &mut Rtnl,
    cfg: &PlumbingConfig,
    state: Option<&State>,
    found: &Found,
) -> Result<(), PlumbingError> {
    if let Some(state) = state {
        for c in state.sysctls.iter().rev() {
            match read_sysctl(&c.path) {
                Ok(cur) if cur == c.new => write_sysctl(&c.path, &c.old)?,
                Ok(cur) => tracing::warn!(
                    "stale plumbing: {} is {cur}, not {} as sald left it; not restoring {}",
                    c.path,
                    c.new,
                    c.old
                ),
                Err(_) => {} // the interface is gone
            }
        }
    }
    if let Some(moved) = &found.moved_local {
        let orig = state.and_then(|s| s.local_moved_from).unwrap_or(0);
        let rules = rtnl.rules_v4()?;
        let has_orig = rules
            .iter()
            .any(|r| is_plain_local(r) && rule_pref(r) < cfg.local_pref());
        if !has_orig {
            rtnl.add_rule(
                &format!("restore local rule at pref {orig}"),
                with_pref(moved, orig),
            )?;
        }
        rtnl.del_rule(
            &format!("delete local rule at pref {}", cfg.local_pref()),
            moved.clone(),
        )?;
    }
    for r in &found.sal_rules {
        rtnl.del_rule(
            &format!("delete stale rule {}", describe_rule(r)),
            r.clone(),
        )?;
    }
    // Per-source rules: the ones recorded (even if the previous sald used
    // other preferences) and the ones matching this configuration.
    let mut stale_tables: Vec<u32> = Vec::new();
    if let Some(state) = state {
        for r in &state.source_rules {
            match rtnl.del_rule(
                &format!(
                    "delete stale rule pref {} from {} lookup {}",
                    r.pref, r.addr, r.table
                ),
                source_rule(r.pref, r.table, r.addr),
            ) {
                Err(e) if e.errno() == Some(nix::libc::ENOENT) => {}
                other => other?,
            }
        }
        stale_tables.extend(state.source_tables.iter().map(|t| t.table));
    }
    for r in &found.source_rules {
        match rtnl.del_rule(
            &format!("delete stale rule {}", describe_rule(r)),
            r.clone(),
        ) {
            Err(e) if e.errno() == Some(nix::libc::ENOENT) => {}
            other => other?,
        }
        stale_tables.push(rule_table(r));
    }
    stale_tables.sort_unstable();
    stale_tables.dedup();
    for t in stale_tables {
        flush_table(rtnl, t)?;
    }
    for r in rtnl.routes_v4(cfg.table)? {
        if r.header.destination_prefix_length == 0 {
            rtnl.del_route(
                &format!("delete stale default route in table {}", cfg.table),
                r,
            )?;
        }
    }
    if found.nft_table {
        nft_run(&["delete", "table", "ip", NFT_TABLE], None).map_err(PlumbingError::Fence)?;
    }
    Ok(())
}

pub(crate) fn check_conflicts(rtnl: &mut Rtnl, cfg: &PlumbingConfig) -> Result<(), PlumbingError> {
    for r in rtnl.rules_v4()? {
        let pref = rule_pref(&r);
        if pref == 0 || pref > cfg.local_pref() || is_plain_local(&r) {
            continue;
        }
        return Err(PlumbingError::Conflict(format!(
            "rule {} sits between the local rule (pref 0) and pref {}: moving the local rule \
             after sald's rules would let it see locally-delivered traffic; choose a lower rule \
             preference than {pref}",
            describe_rule(&r),
            cfg.local_pref()
        )));
    }
    let routes = rtnl.routes_v4(cfg.table)?;
    if !routes.is_empty() {
        return Err(PlumbingError::Conflict(format!(
            "routing table {} already holds {} route(s); choose another table",
            cfg.table,
            routes.len()
        )));
    }
    for i in 0..cfg.interfaces.len() {
        let table = cfg.source_table(i);
        let routes = rtnl.routes_v4(table)?;
        if !routes.is_empty() {
            return Err(PlumbingError::Conflict(format!(
                "per-source routing table {table} (for {}) already holds {} route(s); choose \
                 another source table base than {}",
                cfg.interfaces[i].name,
                routes.len(),
                cfg.source_table_base
            )));
        }
    }
    Ok(())
}
