//! [`Plumbing`]: the recipe of the module documentation, installed, kept in
//! line with the host's addresses and routes, and undone.

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use netlink_packet_route::route::{RouteMessage, RouteType};
use netlink_packet_route::rule::RuleMessage;
use nix::fcntl::Flock;

use super::config::PlumbingConfig;
use super::error::PlumbingError;
use super::inspect::{check_conflicts, cleanup_stale, flush_table, inspect};
use super::lock::acquire_lock;
use super::messages::{
    copy_route, describe_route, is_plain_local, route_has_gateway, route_key, route_oif,
    route_table, rule_pref, sal_rule, source_rule, throw_route, with_pref, RT_TABLE_MAIN,
};
use super::netns::{current_netns_id, NetnsHandle};
use super::nft::{fence_script, nft_run, NFT_TABLE};
use super::rtnl::Rtnl;
use super::state::{
    read_state, write_state, AddrRule, SourceRule, SourceTable, State, SysctlChange,
};
use super::sysctl::{conf_path, read_sysctl, write_sysctl, ALL_RP_FILTER, IP_FORWARD};
use super::SAL_IPPROTO;

/// Installed host-address mode plumbing; undone by [`Plumbing::remove`] or,
/// best effort, on Drop (which also runs on panic unwinding; the daemon
/// calls `remove()` after SIGINT/SIGTERM).
#[derive(Debug)]
pub struct Plumbing {
    cfg: PlumbingConfig,
    rtnl: Rtnl,
    netns: NetnsHandle,
    state: State,
    state_path: PathBuf,
    lock_path: PathBuf,
    removed: bool,
    // Declared last: released only after the undo in Drop has run.
    _lock: Flock<File>,
}

impl Plumbing {
    /// Installs the recipe described in the module documentation for
    /// `cfg`, in the calling thread's network namespace.
    ///
    /// Fails with [`PlumbingError::Owned`] when another live sald holds this
    /// namespace's lock. Plumbing left by a crashed sald is removed first
    /// (with a warning). On any error, whatever was already changed is
    /// undone before returning.
    pub fn install(cfg: &PlumbingConfig) -> Result<Plumbing, PlumbingError> {
        cfg.validate()?;
        let netns = NetnsHandle::current().map_err(|source| PlumbingError::RunDir {
            path: PathBuf::from("/proc/thread-self/ns/net"),
            source,
        })?;
        fs::create_dir_all(&cfg.run_dir).map_err(|source| PlumbingError::RunDir {
            path: cfg.run_dir.clone(),
            source,
        })?;
        let lock_path = cfg.run_dir.join(format!("plumbing-{}.lock", netns.id));
        let state_path = cfg.run_dir.join(format!("plumbing-{}.state", netns.id));
        let mut rtnl = Rtnl::new()?;
        let Some(lock) = acquire_lock(&lock_path)? else {
            let mut evidence = vec![format!("lock file {} held", lock_path.display())];
            if let Ok(found) = inspect(&mut rtnl, cfg) {
                evidence.extend(found.describe(cfg));
            }
            return Err(PlumbingError::Owned { evidence });
        };
        // We hold the lock, so no sald using this run directory is running.
        // Plumbing that is present was left by one that crashed if its state
        // file is here (it is written before the first change). Without a
        // state file it belongs to someone else (a sald with another run
        // directory, e.g. in another mount namespace, or a manual setup):
        // not ours to delete.
        let found = inspect(&mut rtnl, cfg)?;
        let stale_state = read_state(&state_path);
        if found.any() && stale_state.is_none() {
            let mut evidence = found.describe(cfg);
            evidence.push(format!(
                "no state file {} (not left by a sald using this run directory; if no sald \
                 runs in this network namespace, remove it by hand: ip rule del pref {}; \
                 ip rule add pref 0 lookup local; ip rule del pref {}; ip rule del pref {} to {} \
                 and ip route flush table {} to {}; nft delete table ip {NFT_TABLE})",
                state_path.display(),
                cfg.rule_pref,
                cfg.local_pref(),
                cfg.source_pref(0),
                cfg.source_pref(cfg.interfaces.len().saturating_sub(1)),
                cfg.source_table(0),
                cfg.source_table(cfg.interfaces.len().saturating_sub(1)),
            ));
            return Err(PlumbingError::Owned { evidence });
        }
        if let Some(stale) = &stale_state {
            let mut what = found.describe(cfg);
            what.push(format!("state file of pid {}", stale.pid));
            tracing::warn!(
                "removing stale plumbing left by a sald that did not shut down cleanly: {}",
                what.join("; ")
            );
            cleanup_stale(&mut rtnl, cfg, Some(stale), &found)?;
            fs::remove_file(&state_path).map_err(|source| PlumbingError::RunDir {
                path: state_path.clone(),
                source,
            })?;
        }
        check_conflicts(&mut rtnl, cfg)?;

        let tun_index = rtnl
            .link_index(&cfg.tun)?
            .ok_or_else(|| PlumbingError::UnknownInterface(cfg.tun.clone()))?;
        for iface in &cfg.interfaces {
            rtnl.link_index(&iface.name)?
                .ok_or_else(|| PlumbingError::UnknownInterface(iface.name.clone()))?;
        }
        let router = read_sysctl(IP_FORWARD)? == "1";

        let mut p = Plumbing {
            cfg: cfg.clone(),
            rtnl,
            netns,
            state: State {
                pid: std::process::id(),
                tun: cfg.tun.clone(),
                table: cfg.table,
                rule_pref: cfg.rule_pref,
                local_pref: cfg.local_pref(),
                router,
                ..State::default()
            },
            state_path,
            lock_path,
            removed: false,
            _lock: lock,
        };
        match p.save().and_then(|()| p.apply(tun_index)) {
            Ok(()) => Ok(p),
            Err(e) => {
                let failures = p.teardown();
                for f in failures {
                    tracing::warn!("while rolling back failed plumbing: {f}");
                }
                p.removed = true;
                Err(e)
            }
        }
    }

    fn save(&self) -> Result<(), PlumbingError> {
        write_state(&self.state_path, &self.state)
    }

    fn save_logged(&self) {
        if let Err(e) = self.save() {
            tracing::warn!("could not record plumbing state: {e}");
        }
    }

    fn set_sysctl(&mut self, path: String, value: &str) -> Result<(), PlumbingError> {
        let old = read_sysctl(&path)?;
        if old == value {
            return Ok(());
        }
        // Record before writing: a crash in between must still be undone.
        self.state.sysctls.push(SysctlChange {
            path: path.clone(),
            old,
            new: value.to_owned(),
        });
        self.save()?;
        write_sysctl(&path, value)
    }

    fn apply(&mut self, tun_index: u32) -> Result<(), PlumbingError> {
        let cfg = self.cfg.clone();
        // 1. The fence goes in before any forwarding is switched on, so there
        //    is no window in which the host forwards transit traffic.
        let mut fenced = Vec::new();
        for iface in &cfg.interfaces {
            if read_sysctl(&conf_path(&iface.name, "forwarding"))? != "1" {
                fenced.push(iface.name.clone());
            }
        }
        if self.state.router {
            tracing::info!("net.ipv4.ip_forward is 1: the host is a router already; no fence");
        } else {
            self.state.fence = true;
            self.save()?;
            nft_run(&["-f", "-"], Some(&fence_script(&cfg.tun, &fenced))).map_err(|e| {
                PlumbingError::Fence(format!(
                    "{e} (sald needs nftables to fence off transit traffic when the host is not a router)"
                ))
            })?;
        }
        // 2. sysctls.
        for iface in &cfg.interfaces {
            self.set_sysctl(conf_path(&iface.name, "forwarding"), "1")?;
        }
        self.set_sysctl(conf_path(&cfg.tun, "forwarding"), "1")?;
        self.set_sysctl(conf_path(&cfg.tun, "accept_local"), "1")?;
        self.set_sysctl(conf_path(&cfg.tun, "rp_filter"), "0")?;
        if read_sysctl(ALL_RP_FILTER).is_ok_and(|v| v != "0") {
            tracing::warn!(
                "net.ipv4.conf.all.rp_filter is not 0: SAL packets whose source address belongs to \
                 another interface than the one they leave by will be dropped by reverse-path filtering"
            );
        }
        // 3. default route into the TUN.
        self.state.route = true;
        self.save()?;
        self.rtnl.add_default_route(cfg.table, tun_index)?;
        // 4. one rule per address.
        for iface in &cfg.interfaces {
            for addr in &iface.addrs {
                self.add_rule_for(&iface.name, *addr)?;
            }
        }
        // 5. move the local rule behind ours.
        let rules = self.rtnl.rules_v4()?;
        let locals: Vec<&RuleMessage> = rules
            .iter()
            .filter(|r| is_plain_local(r) && rule_pref(r) <= cfg.rule_pref)
            .collect();
        if let Some(local) = locals.first() {
            let from = rule_pref(local);
            self.state.local_moved_from = Some(from);
            self.save()?;
            self.rtnl.add_rule(
                &format!("add local rule at pref {}", cfg.local_pref()),
                with_pref(local, cfg.local_pref()),
            )?;
            self.rtnl.del_rule(
                &format!("delete local rule at pref {from}"),
                (*local).clone(),
            )?;
            if locals.len() > 1 {
                tracing::warn!(
                    "more than one `lookup local` rule before pref {}; moved only the first",
                    cfg.rule_pref
                );
            }
        } else if !rules.iter().any(is_plain_local) {
            tracing::warn!(
                "no `lookup local` rule found: local delivery is already unusual on this host"
            );
        }
        // 6. per-source routing: one table per interface, one rule per
        //    address.
        for (i, iface) in cfg.interfaces.iter().enumerate() {
            self.state.source_tables.push(SourceTable {
                iface: iface.name.clone(),
                table: cfg.source_table(i),
            });
            self.save()?;
            self.sync_routes([i])?;
            for addr in &iface.addrs {
                self.add_source_rule_for(i, *addr)?;
            }
        }
        Ok(())
    }

    /// Makes the per-source tables of `interfaces` (positions in the
    /// configuration) match the main table: a copy of every IPv4 route
    /// through the interface, and a `throw` for every other non-default
    /// route that does not go through another SAL interface (a container
    /// bridge, a VPN, a blackhole), so that the main table keeps deciding
    /// those and the copied default route does not capture them. Entries the
    /// main table no longer justifies are deleted. One route dump serves
    /// every table. Returns how many routes it added or deleted.
    fn sync_routes(
        &mut self,
        interfaces: impl IntoIterator<Item = usize>,
    ) -> Result<usize, PlumbingError> {
        let mut sal_indexes = Vec::new();
        for iface in &self.cfg.interfaces {
            let index = self
                .rtnl
                .link_index(&iface.name)?
                .ok_or_else(|| PlumbingError::UnknownInterface(iface.name.clone()))?;
            sal_indexes.push(index);
        }
        let routes = self.rtnl.all_routes_v4()?;
        let main: Vec<&RouteMessage> = routes
            .iter()
            .filter(|r| route_table(r) == RT_TABLE_MAIN)
            .collect();
        let (mut changes, mut failed) = (0, None);
        for i in interfaces {
            let (table, index) = (self.cfg.source_table(i), sal_indexes[i]);
            let mut copies = Vec::new();
            let mut throws = Vec::new();
            for r in &main {
                let oif = route_oif(r);
                let unicast = r.header.kind == RouteType::Unicast;
                if unicast && oif == Some(index) {
                    copies.push(copy_route(r, table));
                } else if r.header.destination_prefix_length > 0
                    && !(unicast && oif.is_some_and(|o| sal_indexes.contains(&o)))
                {
                    throws.push(throw_route(r, table));
                }
            }
            // Routes without a gateway (the connected subnet) first: they
            // make the gateways of the others reachable.
            copies.sort_by_key(route_has_gateway);
            let wanted: Vec<RouteMessage> = copies.into_iter().chain(throws).collect();
            let present: Vec<&RouteMessage> =
                routes.iter().filter(|r| route_table(r) == table).collect();
            // A table that cannot be synced does not stop the others.
            match self.replace_table(table, present, wanted) {
                Ok(n) => changes += n,
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(changes), Err)
    }

    /// Deletes the routes of `present` (table `table`) that are not in
    /// `wanted` and adds those of `wanted` that are missing; returns how many.
    fn replace_table(
        &mut self,
        table: u32,
        present: Vec<&RouteMessage>,
        wanted: Vec<RouteMessage>,
    ) -> Result<usize, PlumbingError> {
        let present_keys: std::collections::HashSet<String> =
            present.iter().map(|r| route_key(r)).collect();
        let wanted_keys: std::collections::HashSet<String> = wanted.iter().map(route_key).collect();
        let mut changes = 0;
        for r in present {
            if wanted_keys.contains(&route_key(r)) {
                continue;
            }
            let stale = copy_route(r, table);
            let op = format!("delete route {} table {table}", describe_route(&stale));
            match self.rtnl.del_route(&op, stale) {
                Err(e) if e.errno() == Some(nix::libc::ESRCH) => {}
                other => other?,
            }
            changes += 1;
        }
        for r in wanted {
            if present_keys.contains(&route_key(&r)) {
                continue;
            }
            let op = format!("add route {} table {table}", describe_route(&r));
            match self.rtnl.add_route(&op, r) {
                Err(e) if e.errno() == Some(nix::libc::EEXIST) => {}
                other => other?,
            }
            changes += 1;
        }
        Ok(changes)
    }

    /// Brings every per-source table back in line with the main table (sald
    /// calls this when rtnetlink reports a change of the main table: a route
    /// added or deleted by hand or by a DHCP client, a link that came back).
    /// Returns how many routes it added or deleted.
    pub fn refresh_routes(&mut self) -> Result<usize, PlumbingError> {
        self.sync_routes(0..self.cfg.interfaces.len())
    }

    fn add_source_rule_for(&mut self, i: usize, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        let rule = SourceRule {
            iface: self.cfg.interfaces[i].name.clone(),
            addr,
            pref: self.cfg.source_pref(i),
            table: self.cfg.source_table(i),
        };
        if self.state.source_rules.contains(&rule) {
            return Ok(());
        }
        self.state.source_rules.push(rule.clone());
        self.save()?;
        let op = format!(
            "add rule pref {} from {addr} lookup {}",
            rule.pref, rule.table
        );
        match self
            .rtnl
            .add_rule(&op, source_rule(rule.pref, rule.table, addr))
        {
            Err(e) if e.errno() == Some(nix::libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    fn del_source_rule(&mut self, rule: &SourceRule) -> Result<(), PlumbingError> {
        let op = format!(
            "delete rule pref {} from {} lookup {}",
            rule.pref, rule.addr, rule.table
        );
        match self
            .rtnl
            .del_rule(&op, source_rule(rule.pref, rule.table, rule.addr))
        {
            Err(e) if e.errno() == Some(nix::libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    fn add_rule_for(&mut self, iface: &str, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        self.state.rules.push(AddrRule {
            iface: iface.to_owned(),
            addr,
        });
        self.save()?;
        let op = format!(
            "add rule pref {} ipproto {SAL_IPPROTO} to {addr} iif {iface} lookup {}",
            self.cfg.rule_pref, self.cfg.table
        );
        match self.rtnl.add_rule(
            &op,
            sal_rule(self.cfg.rule_pref, self.cfg.table, iface, addr),
        ) {
            Err(e) if e.errno() == Some(nix::libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Steers protocol-144 packets for a new address of a configured
    /// interface into the TUN (sald calls this when rtnetlink reports an
    /// address was added).
    pub fn add_address(&mut self, iface: &str, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        let Some(i) = self.cfg.interfaces.iter().position(|i| i.name == iface) else {
            return Err(PlumbingError::UnknownInterface(iface.to_owned()));
        };
        if self.cfg.interfaces[i].addrs.contains(&addr) {
            return Ok(());
        }
        self.add_rule_for(iface, addr)?;
        self.cfg.interfaces[i].addrs.push(addr);
        // The new address brings its connected route into the main table
        // (and the link may have flapped, which empties the copy): refresh
        // the interface's table, then route the new source through it.
        if let Err(e) = self.sync_routes([i]) {
            tracing::warn!("refreshing the per-source routes of {iface}: {e}");
        }
        self.add_source_rule_for(i, addr)
    }

    /// Removes the rules of an address that went away. Unknown addresses
    /// are ignored.
    pub fn remove_address(&mut self, iface: &str, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        let Some(i) = self.cfg.interfaces.iter().position(|i| i.name == iface) else {
            return Err(PlumbingError::UnknownInterface(iface.to_owned()));
        };
        self.cfg.interfaces[i].addrs.retain(|a| *a != addr);
        let before = self.state.rules.len();
        self.state
            .rules
            .retain(|r| !(r.iface == iface && r.addr == addr));
        let had_rule = self.state.rules.len() != before;
        let (gone, kept): (Vec<SourceRule>, Vec<SourceRule>) =
            std::mem::take(&mut self.state.source_rules)
                .into_iter()
                .partition(|r| r.iface == iface && r.addr == addr);
        self.state.source_rules = kept;
        if !had_rule && gone.is_empty() {
            return Ok(());
        }
        self.save_logged();
        let mut result = Ok(());
        for r in &gone {
            if let Err(e) = self.del_source_rule(r) {
                result = Err(e);
            }
        }
        if had_rule {
            self.del_rule_for(iface, addr)?;
        }
        result
    }

    fn del_rule_for(&mut self, iface: &str, addr: Ipv4Addr) -> Result<(), PlumbingError> {
        let op = format!(
            "delete rule pref {} ipproto {SAL_IPPROTO} to {addr} iif {iface}",
            self.cfg.rule_pref
        );
        match self.rtnl.del_rule(
            &op,
            sal_rule(self.cfg.rule_pref, self.cfg.table, iface, addr),
        ) {
            Err(e) if e.errno() == Some(nix::libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// The configuration in force (addresses included).
    pub fn config(&self) -> &PlumbingConfig {
        &self.cfg
    }

    /// Whether `net.ipv4.ip_forward` was 1 at start (then there is no fence).
    pub fn host_was_router(&self) -> bool {
        self.state.router
    }

    /// Whether the nftables fence was installed.
    pub fn fence_installed(&self) -> bool {
        self.state.fence
    }

    /// The sysctls changed so far, as `(path, previous value, our value)`.
    pub fn changed_sysctls(&self) -> Vec<(String, String, String)> {
        self.state
            .sysctls
            .iter()
            .map(|c| (c.path.clone(), c.old.clone(), c.new.clone()))
            .collect()
    }

    /// The lock file this plumbing holds.
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Undoes everything and releases the lock, best effort: every step is
    /// attempted even if an earlier one fails, failures are logged (tracing,
    /// warn level). Use [`Plumbing::try_remove`] to get them as an error.
    pub fn remove(self) {
        let _ = self.try_remove();
    }

    /// Like [`Plumbing::remove`], also returning the failed steps.
    pub fn try_remove(mut self) -> Result<(), PlumbingError> {
        let failures = self.teardown();
        self.removed = true;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(PlumbingError::Teardown(failures))
        }
    }

    /// Runs the undo in the namespace the plumbing was installed in, even if
    /// the caller's thread is elsewhere (sysctl writes and `nft` act on the
    /// calling thread's namespace).
    fn teardown(&mut self) -> Vec<String> {
        let here = current_netns_id().ok();
        if here.as_deref() == Some(self.netns.id.as_str()) {
            return self.teardown_here();
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = nix::sched::setns(
                    self.netns.file.as_fd(),
                    nix::sched::CloneFlags::CLONE_NEWNET,
                ) {
                    return vec![format!("entering the plumbing's network namespace: {e}")];
                }
                self.teardown_here()
            })
            .join()
            .unwrap_or_else(|_| vec!["teardown thread panicked".to_owned()])
        })
    }

    fn teardown_here(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut fail = |what: String| note_failure(&mut failures, what);
        // Forwarding off first: from here on nothing transits.
        for c in std::mem::take(&mut self.state.sysctls).into_iter().rev() {
            match read_sysctl(&c.path) {
                Ok(cur) if cur == c.new => {
                    if let Err(e) = write_sysctl(&c.path, &c.old) {
                        fail(e.to_string());
                    }
                }
                Ok(cur) => tracing::warn!(
                    "{} was changed to {cur} while sald ran; leaving it (was {} before sald)",
                    c.path,
                    c.old
                ),
                // The interface (typically the TUN, already closed) is gone.
                Err(_) => tracing::debug!("{} is gone; nothing to restore", c.path),
            }
        }
        if let Some(from) = self.state.local_moved_from.take() {
            let local_pref = self.cfg.local_pref();
            match self.rtnl.rules_v4() {
                Ok(rules) => {
                    let moved = rules
                        .iter()
                        .find(|r| is_plain_local(r) && rule_pref(r) == local_pref);
                    let back = rules
                        .iter()
                        .any(|r| is_plain_local(r) && rule_pref(r) == from);
                    if let Some(moved) = moved {
                        if !back {
                            if let Err(e) = self.rtnl.add_rule(
                                &format!("restore local rule at pref {from}"),
                                with_pref(moved, from),
                            ) {
                                fail(e.to_string());
                            }
                        }
                        if let Err(e) = self.rtnl.del_rule(
                            &format!("delete local rule at pref {local_pref}"),
                            moved.clone(),
                        ) {
                            fail(e.to_string());
                        }
                    } else if !back {
                        fail(format!(
                            "the local rule is neither at pref {local_pref} nor at {from}"
                        ));
                    }
                }
                Err(e) => fail(e.to_string()),
            }
        }
        for r in std::mem::take(&mut self.state.rules) {
            if let Err(e) = self.del_rule_for(&r.iface, r.addr) {
                fail(e.to_string());
            }
        }
        for r in std::mem::take(&mut self.state.source_rules) {
            if let Err(e) = self.del_source_rule(&r) {
                fail(e.to_string());
            }
        }
        for t in std::mem::take(&mut self.state.source_tables) {
            if let Err(e) = flush_table(&mut self.rtnl, t.table) {
                fail(e.to_string());
            }
        }
        if std::mem::take(&mut self.state.route) {
            match self.rtnl.routes_v4(self.cfg.table) {
                Ok(routes) => {
                    let tun_index = self.rtnl.link_index(&self.cfg.tun).ok().flatten();
                    for r in routes {
                        if r.header.destination_prefix_length == 0
                            && tun_index.is_some()
                            && route_oif(&r) == tun_index
                        {
                            if let Err(e) = self.rtnl.del_route(
                                &format!("delete default route in table {}", self.cfg.table),
                                r,
                            ) {
                                if e.errno() != Some(nix::libc::ESRCH) {
                                    fail(e.to_string());
                                }
                            }
                        }
                    }
                }
                Err(e) => fail(e.to_string()),
            }
        }
        if std::mem::take(&mut self.state.fence) {
            if let Err(e) = nft_run(&["delete", "table", "ip", NFT_TABLE], None) {
                fail(e);
            }
        }
        // Only once everything is undone. If a step failed, the state file
        // (still holding the full record on disk) stays, so the next sald
        // treats the leftovers as stale and retries the cleanup. The lock
        // file goes while we still hold the lock (see `acquire_lock`); the
        // lock itself is released when `self` is dropped.
        if !failures.is_empty() {
            return failures;
        }
        for path in [&self.state_path, &self.lock_path] {
            if let Err(e) = fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    note_failure(&mut failures, format!("{}: {e}", path.display()));
                }
            }
        }
        failures
    }
}

fn note_failure(failures: &mut Vec<String>, what: String) {
    tracing::warn!("plumbing teardown: {what}");
    failures.push(what);
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        if !self.removed {
            self.removed = true;
            let _ = self.teardown();
        }
    }
}
