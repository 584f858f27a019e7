//! A router's announcement policy: which sources and keys may announce
//! which prefixes, how much, and with what priority (`servd --policy FILE`).
//!
//! ```toml
//! min_prefix_len = 16          # shortest prefix anyone may announce (default 16)
//! max_prefixes_per_sender = 10000
//! max_priority = 0             # highest rule priority an announcement gets
//!
//! [[key]]                      # keys accepted besides --key-file's ("domain")
//! name = "site-b"
//! file = "/etc/serval/site-b.key"
//!
//! [[allow]]                    # first match decides; none matching: refused
//! from = "10.0.1.0/24"         # source addresses (default: any)
//! key = "site-b"               # must be tagged with this key (default: any or none)
//! prefix = "beef/16"           # this prefix and longer ones below it
//! min_len = 24                 # shortest allowed (default: min_prefix_len)
//! max_priority = 5             # default: the global max_priority
//! foreign_locators = true      # only with `key`: may name other hosts' locators
//! ```
//!
//! Without `[[allow]]` entries (and without a file), anyone may announce any
//! prefix of at least `min_prefix_len` bits, pointing at its own source
//! address. `/0` is never accepted, whatever the file says: a default route
//! is the operator's to set. An announcement's locators must be the source
//! address of its datagram unless a rule with `foreign_locators` allows
//! otherwise for a tagged datagram: without that, anyone who can send a
//! datagram could point a prefix at a third host.
//!
//! A prefix inside one another sender holds (`beef01/24` under someone's
//! `beef/16`) is accepted like any other: hierarchies rely on it (a core
//! router hears `beef/16` from one site and `beef01/24` from another), and
//! refusing it would let whoever announces a covering prefix first lock the
//! others out. By longest-prefix match it takes that part of the covering
//! sender's traffic, so where senders do not trust each other, `[[allow]]`
//! entries (or a key) say who may announce what.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use sal::ServicePrefix;

/// Shortest prefix announceable by default.
pub const DEFAULT_MIN_PREFIX_LEN: u16 = 16;
/// Learned entries one sender may hold by default.
pub const DEFAULT_MAX_PREFIXES_PER_SENDER: usize = 10_000;

/// An IPv4 address range (`10.0.1.0/24`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Range {
    /// Any address of the range (bits past `len` are ignored).
    pub addr: Ipv4Addr,
    /// Leading bits that must match, 0 to 32 (32: `addr` alone).
    pub len: u8,
}

impl Ipv4Range {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        u32::from(self.addr) & mask == u32::from(ip) & mask
    }
}

impl FromStr for Ipv4Range {
    type Err = String;

    fn from_str(text: &str) -> Result<Ipv4Range, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, len.parse::<u8>().ok().filter(|l| *l <= 32)),
            None => (text, Some(32)),
        };
        let addr = addr.parse::<Ipv4Addr>().ok();
        match (addr, len) {
            (Some(addr), Some(len)) => Ok(Ipv4Range { addr, len }),
            _ => Err(format!("bad address range {text:?} (e.g. 10.0.1.0/24)")),
        }
    }
}

impl<'de> Deserialize<'de> for Ipv4Range {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ipv4Range, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A key file named in the policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// What `[[allow]]` entries call the key (`key = NAME`).
    pub name: String,
    /// The file holding the secret, read at start like `--key-file`.
    pub file: PathBuf,
}

/// One `[[allow]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// Source addresses the entry applies to; `None`: any.
    #[serde(default)]
    pub from: Option<Ipv4Range>,
    /// Name of the key the datagram must be tagged with; `None`: any key,
    /// or none.
    #[serde(default)]
    pub key: Option<String>,
    /// Announced prefixes it covers: this one and longer ones below it
    /// (default `/0`: all).
    #[serde(default = "any_prefix")]
    pub prefix: ServicePrefix,
    /// Shortest prefix length allowed; `None`: the policy's `min_prefix_len`.
    #[serde(default)]
    pub min_len: Option<u16>,
    /// Highest rule priority granted; `None`: the policy's `max_priority`.
    #[serde(default)]
    pub max_priority: Option<u32>,
    /// Whether the sender may name locators other than its source address
    /// (only granted to tagged datagrams; the file needs `key` with it).
    #[serde(default)]
    pub foreign_locators: bool,
}

fn any_prefix() -> ServicePrefix {
    ServicePrefix::DEFAULT
}

/// The whole policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Shortest prefix length anyone may announce (1 to 256), and the
    /// default `min_len` of `[[allow]]` entries.
    #[serde(default = "default_min_len")]
    pub min_prefix_len: u16,
    /// Learned (prefix, locator) entries one source address may hold;
    /// entries past that are refused.
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes_per_sender: usize,
    /// Highest priority an announced rule gets (higher ones are lowered),
    /// unless an `[[allow]]` entry says otherwise.
    #[serde(default)]
    pub max_priority: u32,
    /// Keys accepted besides `--key-file`'s (`[[key]]` tables).
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyFile>,
    /// `[[allow]]` entries, in order: the first matching one decides, none
    /// matching refuses; without any, every sender gets the defaults.
    #[serde(default)]
    pub allow: Vec<Allow>,
}

fn default_min_len() -> u16 {
    DEFAULT_MIN_PREFIX_LEN
}

fn default_max_prefixes() -> usize {
    DEFAULT_MAX_PREFIXES_PER_SENDER
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            min_prefix_len: DEFAULT_MIN_PREFIX_LEN,
            max_prefixes_per_sender: DEFAULT_MAX_PREFIXES_PER_SENDER,
            max_priority: 0,
            keys: Vec::new(),
            allow: Vec::new(),
        }
    }
}

/// Who sent an announcement, as far as the router can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender<'a> {
    /// The datagram's source address.
    pub addr: Ipv4Addr,
    /// The name of the key its tag was made with, if tagged.
    pub key: Option<&'a str>,
}

/// What an allowed announcement may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Rule priorities above this are lowered to it.
    pub max_priority: u32,
    /// It may name locators other than its source address.
    pub foreign_locators: bool,
}

/// Why an announced prefix was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `/0`: the default route is the operator's, whatever the policy says.
    #[error("/0 is never accepted from an announcement")]
    Default,
    /// Shorter than the matching entry's `min_len` (or `min_prefix_len`).
    #[error("prefix shorter than the policy allows")]
    TooShort,
    /// No `[[allow]]` entry matches this sender and prefix.
    #[error("no policy rule allows this sender to announce this prefix")]
    NotAllowed,
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown field, or a rule the policy breaks
    /// (`min_prefix_len` out of range, `foreign_locators` without `key`, a
    /// key nobody defined).
    #[error("{path}: {message}")]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl Policy {
    /// Parses a policy from TOML text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let invalid = |message: String| PolicyError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let policy: Policy = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if policy.min_prefix_len == 0 || policy.min_prefix_len > 256 {
            return Err(invalid("min_prefix_len must be between 1 and 256".into()));
        }
        for (i, rule) in policy.allow.iter().enumerate() {
            if rule.min_len.is_some_and(|len| len == 0 || len > 256) {
                return Err(invalid(format!(
                    "allow #{}: min_len must be between 1 and 256",
                    i + 1
                )));
            }
            if rule.foreign_locators && rule.key.is_none() {
                return Err(invalid(format!(
                    "allow #{}: foreign_locators needs a key (an untagged datagram's \
                     sender can only speak for its own address)",
                    i + 1
                )));
            }
            if let Some(name) = &rule.key {
                if name != super::keys::OWN_KEY_NAME && !policy.keys.iter().any(|k| &k.name == name)
                {
                    return Err(invalid(format!(
                        "allow #{}: no [[key]] named {name:?} (the --key-file key is {:?})",
                        i + 1,
                        super::keys::OWN_KEY_NAME
                    )));
                }
            }
        }
        Ok(policy)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&text, path)
    }

    /// May `sender` announce `prefix`, and with what rights?
    pub fn check(&self, sender: Sender<'_>, prefix: &ServicePrefix) -> Result<Grant, Refusal> {
        if prefix.len() == 0 {
            return Err(Refusal::Default);
        }
        if self.allow.is_empty() {
            return if prefix.len() >= self.min_prefix_len {
                Ok(Grant {
                    max_priority: self.max_priority,
                    foreign_locators: false,
                })
            } else {
                Err(Refusal::TooShort)
            };
        }
        let mut refusal = Refusal::NotAllowed;
        for rule in &self.allow {
            let from_ok = rule.from.is_none_or(|range| range.contains(sender.addr));
            let key_ok = rule
                .key
                .as_deref()
                .is_none_or(|name| sender.key == Some(name));
            if !from_ok || !key_ok || !rule.prefix.covers(prefix) {
                continue;
            }
            if prefix.len() < rule.min_len.unwrap_or(self.min_prefix_len) {
                refusal = Refusal::TooShort;
                continue;
            }
            return Ok(Grant {
                max_priority: rule.max_priority.unwrap_or(self.max_priority),
                foreign_locators: rule.foreign_locators && sender.key.is_some(),
            });
        }
        Err(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ServicePrefix {
        s.parse().unwrap()
    }

    fn sender(addr: &str, key: Option<&'static str>) -> Sender<'static> {
        Sender {
            addr: addr.parse().unwrap(),
            key,
        }
    }

    #[test]
    fn default_policy_refuses_short_prefixes_and_never_takes_slash_zero() {
        let policy = Policy::default();
        let anyone = sender("10.0.0.9", None);
        assert_eq!(
            policy.check(anyone, &p("beef/16")),
            Ok(Grant {
                max_priority: 0,
                foreign_locators: false
            })
        );
        assert_eq!(policy.check(anyone, &p("be/8")), Err(Refusal::TooShort));
        assert_eq!(policy.check(anyone, &p("0/0")), Err(Refusal::Default));
        let lax = Policy::parse("min_prefix_len = 1\n[[allow]]\n", Path::new("x")).unwrap();
        assert_eq!(lax.check(anyone, &p("0/0")), Err(Refusal::Default));
        assert!(lax.check(anyone, &p("8/1")).is_ok());
    }

    #[test]
    fn rules_match_by_source_key_and_prefix_in_order() {
        let text = r#"
            max_priority = 1
            [[key]]
            name = "site-b"
            file = "/nonexistent"
            [[allow]]
            from = "10.0.1.0/24"
            prefix = "beef/16"
            min_len = 24
            [[allow]]
            key = "site-b"
            prefix = "c0/8"
            min_len = 8
            max_priority = 7
            foreign_locators = true
        "#;
        let policy = Policy::parse(text, Path::new("policy.toml")).unwrap();
        let lan = sender("10.0.1.5", None);
        assert_eq!(
            policy.check(lan, &p("beef01/24")).map(|g| g.max_priority),
            Ok(1)
        );
        assert_eq!(policy.check(lan, &p("beef/16")), Err(Refusal::TooShort));
        assert_eq!(policy.check(lan, &p("abcd/16")), Err(Refusal::NotAllowed));
        assert_eq!(
            policy.check(sender("10.0.2.5", None), &p("beef01/24")),
            Err(Refusal::NotAllowed)
        );
        let b = sender("192.168.0.1", Some("site-b"));
        assert_eq!(
            policy.check(b, &p("c0/8")),
            Ok(Grant {
                max_priority: 7,
                foreign_locators: true
            })
        );
        assert_eq!(
            policy.check(sender("192.168.0.1", Some("domain")), &p("c0/8")),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let path = Path::new("p.toml");
        for (text, needle) in [
            ("min_prefix_len = 0", "between 1 and 256"),
            ("[[allow]]\nforeign_locators = true", "needs a key"),
            ("[[allow]]\nkey = \"nope\"", "no [[key]] named"),
            ("[[allow]]\nfrom = \"10.0.0.0/33\"", "bad address range"),
            ("typo = 1", "unknown field"),
            (
                "[[allow]]\nmin_len = 300",
                "allow #1: min_len must be between 1 and 256",
            ),
            ("[[allow]]\nmin_len = 0", "between 1 and 256"),
        ] {
            let error = Policy::parse(text, path).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
        assert!(Policy::parse("[[allow]]\nkey = \"domain\"", path).is_ok());
        let range: Ipv4Range = "10.0.0.7".parse().unwrap();
        assert!(range.contains("10.0.0.7".parse().unwrap()));
        assert!(!range.contains("10.0.0.8".parse().unwrap()));
    }
}
