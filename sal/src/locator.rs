//! Locators: where a SAL packet is sent, as opposed to what service it names.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A network location of a SAL endpoint.
///
/// Native carriage uses a bare IPv4 address (IPv4 protocol 144); UDP
/// encapsulation adds a port. IPv6 would be another variant, which is why this
/// is an enum rather than an address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Locator {
    /// An IPv4 address reached with native carriage.
    Ipv4(Ipv4Addr),
    /// An IPv4 address and UDP port reached with UDP encapsulation.
    Udp(SocketAddrV4),
}

/// Why a locator string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid locator {0:?}: expected an IPv4 address (10.0.0.1) or udp:ADDR:PORT")]
pub struct ParseLocatorError(String);

impl Locator {
    /// The IPv4 address, whatever the carriage.
    pub fn ip(&self) -> Ipv4Addr {
        match self {
            Locator::Ipv4(ip) => *ip,
            Locator::Udp(addr) => *addr.ip(),
        }
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locator::Ipv4(ip) => write!(f, "{ip}"),
            Locator::Udp(addr) => write!(f, "udp:{addr}"),
        }
    }
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Locator({self})")
    }
}

impl FromStr for Locator {
    type Err = ParseLocatorError;

    fn from_str(s: &str) -> Result<Locator, ParseLocatorError> {
        let error = || ParseLocatorError(s.to_string());
        match s.strip_prefix("udp:") {
            Some(rest) => rest.parse().map(Locator::Udp).map_err(|_| error()),
            None => s.parse().map(Locator::Ipv4).map_err(|_| error()),
        }
    }
}

impl From<Locator> for String {
    fn from(locator: Locator) -> String {
        locator.to_string()
    }
}

impl TryFrom<String> for Locator {
    type Error = ParseLocatorError;
    fn try_from(s: String) -> Result<Locator, ParseLocatorError> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for text in ["10.0.0.1", "udp:10.0.0.2:54325"] {
            let locator: Locator = text.parse().unwrap();
            assert_eq!(locator.to_string(), text);
        }
        assert!("10.0.0".parse::<Locator>().is_err());
        assert!("udp:10.0.0.1".parse::<Locator>().is_err());
        let json = serde_json::to_string(&Locator::Ipv4(Ipv4Addr::LOCALHOST)).unwrap();
        assert_eq!(json, "\"127.0.0.1\"");
    }
}
