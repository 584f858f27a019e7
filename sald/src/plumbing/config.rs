//! What [`super::Plumbing::install`] sets up: the TUN, the interfaces and
//! their addresses, and where in the kernel's tables the plumbing goes.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::error::PlumbingError;
use super::messages::{RT_TABLE_DEFAULT, RT_TABLE_LOCAL, RT_TABLE_MAIN, RULE_PREF_MAIN};
use super::rtnl::Rtnl;

/// Default routing table for packets steered into the TUN.
pub const DEFAULT_TABLE: u32 = 144;
/// Default preference of the `ipproto 144` rules (the `local` rule moves to
/// this plus one).
pub const DEFAULT_RULE_PREF: u32 = 100;
/// Default directory of the lock and state files.
pub const DEFAULT_RUN_DIR: &str = "/run/serval";
/// Default first per-source routing table (interface `i` uses this plus
/// `i`); far from table 144 and from the kernel's 253 to 255.
pub const DEFAULT_SOURCE_TABLE_BASE: u32 = 1000;
/// The per-source `from A` rules sit at `rule_pref` plus this plus the
/// interface's position.
pub const SOURCE_PREF_OFFSET: u32 = 10;

/// One physical interface the SAL uses, and the IPv4 addresses on it that
/// serve as locators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Interface name (`eth0`).
    pub name: String,
    /// Its IPv4 addresses; each gets an `ipproto 144` rule.
    pub addrs: Vec<Ipv4Addr>,
}

/// What [`super::Plumbing::install`] sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlumbingConfig {
    /// The TUN device (must exist: create it with
    /// [`crate::link::TunLink::open`] first).
    pub tun: String,
    /// The physical interfaces and their addresses.
    pub interfaces: Vec<InterfaceConfig>,
    /// Routing table holding `default dev <tun>` (not 0, 253, 254, 255).
    pub table: u32,
    /// Preference of the `ipproto 144` rules; the `local` rule moves to
    /// `rule_pref + 1`, the per-source rules of interface `i` are at
    /// `rule_pref + 10 + i`.
    pub rule_pref: u32,
    /// First per-source routing table: interface `i` (its position in
    /// `interfaces`) uses table `source_table_base + i`. None of those may
    /// be 0, 253 to 255 or `table`.
    pub source_table_base: u32,
    /// Directory of the lock and state files.
    pub run_dir: PathBuf,
}

impl PlumbingConfig {
    /// A configuration for `tun` with the defaults (table 144, pref 100,
    /// per-source tables from 1000, `/run/serval`) and no interfaces yet.
    pub fn new(tun: impl Into<String>) -> Self {
        PlumbingConfig {
            tun: tun.into(),
            interfaces: Vec::new(),
            table: DEFAULT_TABLE,
            rule_pref: DEFAULT_RULE_PREF,
            source_table_base: DEFAULT_SOURCE_TABLE_BASE,
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
        }
    }

    /// Adds an interface with explicit addresses.
    pub fn interface(mut self, name: impl Into<String>, addrs: Vec<Ipv4Addr>) -> Self {
        self.interfaces.push(InterfaceConfig {
            name: name.into(),
            addrs,
        });
        self
    }

    /// Adds interfaces with the IPv4 addresses they currently carry (asked
    /// from the kernel), which is what `sald --iface eth0` means.
    pub fn discover_interfaces(mut self, names: &[&str]) -> Result<Self, PlumbingError> {
        let mut rtnl = Rtnl::new()?;
        for name in names {
            validate_ifname(name)?;
            let index = rtnl
                .link_index(name)?
                .ok_or_else(|| PlumbingError::UnknownInterface((*name).to_owned()))?;
            let addrs = rtnl
                .ipv4_addrs(index)?
                .into_iter()
                .map(|(a, _)| a)
                .collect();
            self.interfaces.push(InterfaceConfig {
                name: (*name).to_owned(),
                addrs,
            });
        }
        Ok(self)
    }

    /// Where the `local` rule is moved to.
    pub fn local_pref(&self) -> u32 {
        self.rule_pref.saturating_add(1)
    }

    /// The per-source routing table of the `i`-th interface.
    pub fn source_table(&self, i: usize) -> u32 {
        self.source_table_base
            .saturating_add(u32::try_from(i).unwrap_or(u32::MAX))
    }

    /// The preference of the `from A` rules of the `i`-th interface.
    pub fn source_pref(&self, i: usize) -> u32 {
        self.rule_pref
            .saturating_add(SOURCE_PREF_OFFSET)
            .saturating_add(u32::try_from(i).unwrap_or(u32::MAX))
    }

    pub(crate) fn is_source_pref(&self, pref: u32) -> bool {
        (0..self.interfaces.len()).any(|i| self.source_pref(i) == pref)
    }

    pub(crate) fn is_source_table(&self, table: u32) -> bool {
        (0..self.interfaces.len()).any(|i| self.source_table(i) == table)
    }

    pub(crate) fn validate(&self) -> Result<(), PlumbingError> {
        validate_ifname(&self.tun)?;
        for (i, iface) in self.interfaces.iter().enumerate() {
            validate_ifname(&iface.name)?;
            if iface.name == self.tun {
                return Err(PlumbingError::Config(format!(
                    "interface {} is the TUN device",
                    iface.name
                )));
            }
            if self.interfaces[..i].iter().any(|o| o.name == iface.name) {
                return Err(PlumbingError::Config(format!(
                    "interface {} listed twice",
                    iface.name
                )));
            }
            if let Some(a) = iface
                .addrs
                .iter()
                .find(|a| a.is_unspecified() || a.is_multicast() || a.is_broadcast())
            {
                return Err(PlumbingError::Config(format!(
                    "{a} on {} is not a unicast address",
                    iface.name
                )));
            }
        }
        if matches!(
            self.table,
            0 | RT_TABLE_DEFAULT | RT_TABLE_MAIN | RT_TABLE_LOCAL
        ) {
            return Err(PlumbingError::Config(format!(
                "routing table {} is reserved (0, 253, 254, 255)",
                self.table
            )));
        }
        if self.rule_pref == 0 || self.local_pref() >= RULE_PREF_MAIN {
            return Err(PlumbingError::Config(format!(
                "rule preference {} must be between 1 and {}",
                self.rule_pref,
                RULE_PREF_MAIN - 2
            )));
        }
        let n = self.interfaces.len();
        if n > 0 {
            let last_pref =
                u64::from(self.rule_pref) + u64::from(SOURCE_PREF_OFFSET) + n as u64 - 1;
            if last_pref >= u64::from(RULE_PREF_MAIN) {
                return Err(PlumbingError::Config(format!(
                    "rule preference {} leaves no room for the per-source rules of {n} \
                     interface(s) before the main table (pref {RULE_PREF_MAIN})",
                    self.rule_pref
                )));
            }
            let first = u64::from(self.source_table_base);
            let last = first + n as u64 - 1;
            let in_range = |t: u32| (first..=last).contains(&u64::from(t));
            if last > u64::from(u32::MAX)
                || [
                    0,
                    RT_TABLE_DEFAULT,
                    RT_TABLE_MAIN,
                    RT_TABLE_LOCAL,
                    self.table,
                ]
                .into_iter()
                .any(in_range)
            {
                return Err(PlumbingError::Config(format!(
                    "per-source routing tables {first} to {last} overlap table {} or a \
                     reserved table (0, 253, 254, 255)",
                    self.table
                )));
            }
        }
        Ok(())
    }
}

/// Checks a Linux interface name: 1 to 15 bytes, none of `/ : " ' \`, no
/// whitespace (the name also ends up quoted in an nftables script).
pub fn validate_ifname(name: &str) -> Result<(), PlumbingError> {
    let bad = |why: &str| {
        Err(PlumbingError::Config(format!(
            "interface name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > 15 {
        return bad("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return bad("reserved name");
    }
    if name
        .chars()
        .any(|c| matches!(c, '/' | ':' | '"' | '\'' | '\\') || c.is_whitespace() || c.is_control())
    {
        return bad("contains a forbidden character");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        let ok = PlumbingConfig::new("sal0").interface("eth0", vec![Ipv4Addr::new(10, 0, 0, 1)]);
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.table = 254;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.rule_pref = 0;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.rule_pref = 32765;
        assert!(bad.validate().is_err());
        let bad = ok.clone().interface("eth0", vec![]);
        assert!(bad.validate().is_err());
        let bad = ok.clone().interface("sal0", vec![]);
        assert!(bad.validate().is_err());
        let bad = PlumbingConfig::new("sal0\"; flush ruleset");
        assert!(bad.validate().is_err());
        let bad = PlumbingConfig::new("sal0").interface("eth1", vec![Ipv4Addr::UNSPECIFIED]);
        assert!(bad.validate().is_err());
        // per-source tables must not hit table 144 or the kernel's tables
        let two = ok
            .clone()
            .interface("eth1", vec![Ipv4Addr::new(10, 0, 1, 1)]);
        assert!(two.validate().is_ok());
        assert_eq!((two.source_table(0), two.source_table(1)), (1000, 1001));
        assert_eq!((two.source_pref(0), two.source_pref(1)), (110, 111));
        for base in [143, 144, 252, 253, 254, 255, 0] {
            let mut bad = two.clone();
            bad.source_table_base = base;
            assert!(bad.validate().is_err(), "base {base}");
        }
        let mut bad = two.clone();
        bad.source_table_base = u32::MAX;
        assert!(bad.validate().is_err());
        let mut fine = two.clone();
        fine.source_table_base = 256;
        assert!(fine.validate().is_ok());
        let mut bad = two.clone();
        bad.rule_pref = 32755;
        assert!(bad.validate().is_err());
        let mut fine = two.clone();
        fine.rule_pref = 32754;
        assert!(fine.validate().is_ok());
    }
}
