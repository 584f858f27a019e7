//! The state file: every change the plumbing makes, recorded before it is
//! made, so that it can be undone by this sald or, after a crash, by the next.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::PlumbingError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SysctlChange {
    pub(crate) path: String,
    pub(crate) old: String,
    pub(crate) new: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AddrRule {
    pub(crate) iface: String,
    pub(crate) addr: Ipv4Addr,
}

/// A per-source routing table we fill (every route in it is ours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceTable {
    pub(crate) iface: String,
    pub(crate) table: u32,
}

/// A per-source rule `pref <pref> from <addr> lookup <table>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceRule {
    pub(crate) iface: String,
    pub(crate) addr: Ipv4Addr,
    pub(crate) pref: u32,
    pub(crate) table: u32,
}

/// Everything we changed, in order, so it can be undone by us or, after a
/// crash, by the next sald.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) pid: u32,
    pub(crate) tun: String,
    pub(crate) table: u32,
    pub(crate) rule_pref: u32,
    pub(crate) local_pref: u32,
    pub(crate) router: bool,
    pub(crate) fence: bool,
    pub(crate) sysctls: Vec<SysctlChange>,
    pub(crate) route: bool,
    pub(crate) rules: Vec<AddrRule>,
    pub(crate) local_moved_from: Option<u32>,
    #[serde(default)]
    pub(crate) source_tables: Vec<SourceTable>,
    #[serde(default)]
    pub(crate) source_rules: Vec<SourceRule>,
}

pub(crate) fn read_state(path: &Path) -> Option<State> {
    let text = fs::read_to_string(path).ok()?;
    match serde_json::from_str(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("ignoring unreadable plumbing state {}: {e}", path.display());
            None
        }
    }
}

pub(crate) fn write_state(path: &Path, state: &State) -> Result<(), PlumbingError> {
    let io = |source| PlumbingError::RunDir {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("state.tmp");
    let text = serde_json::to_string_pretty(state).map_err(|e| io(io::Error::other(e)))?;
    fs::write(&tmp, text).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip() {
        let s = State {
            pid: 7,
            tun: "sal0".into(),
            sysctls: vec![SysctlChange {
                path: "/proc/sys/x".into(),
                old: "0".into(),
                new: "1".into(),
            }],
            rules: vec![AddrRule {
                iface: "eth0".into(),
                addr: Ipv4Addr::new(10, 0, 0, 1),
            }],
            local_moved_from: Some(0),
            source_tables: vec![SourceTable {
                iface: "eth0".into(),
                table: 1000,
            }],
            source_rules: vec![SourceRule {
                iface: "eth0".into(),
                addr: Ipv4Addr::new(10, 0, 0, 1),
                pref: 110,
                table: 1000,
            }],
            ..State::default()
        };
        let text = serde_json::to_string(&s).expect("serialize");
        let back: State = serde_json::from_str(&text).expect("parse");
        assert_eq!(s, back);
        // state files written before per-source routing still parse
        let old = r#"{"pid":1,"tun":"sal0","table":144,"rule_pref":100,"local_pref":101,
            "router":false,"fence":true,"sysctls":[],"route":true,"rules":[],
            "local_moved_from":0}"#;
        let back: State = serde_json::from_str(old).expect("parse old state");
        assert!(back.source_tables.is_empty() && back.source_rules.is_empty());
    }
}
