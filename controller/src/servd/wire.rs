//! The controller-to-controller protocol: UDP datagrams on the host network.
//!
//! Controllers never talk through the SAL they configure (a broken service
//! table must not cut off the messages that would repair it), so messages go
//! in plain UDP datagrams between the controllers' `--listen` addresses.
//!
//! Datagram layout:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `SRVD` |
//! | 4 | protocol version ([`WIRE_VERSION`]); others are dropped |
//! | 5 | flags: bit 0 set when a tag follows |
//! | 6..38 | HMAC-SHA256 tag (only with flag bit 0) |
//! | rest | the [`Message`], JSON |
//!
//! The tag covers bytes 0..6 and the JSON body, keyed with the domain's
//! shared key (`servd --key-file`). A controller with a key drops every
//! datagram without a valid tag; one without a key drops tagged datagrams
//! too (it cannot check them, and a mixed domain is a configuration error
//! worth noticing). Datagrams over [`MAX_DATAGRAM`] bytes are dropped
//! unread; senders batch announcements to stay under it.
//!
//! The tag authenticates, it does not prevent replay: a captured datagram
//! can be resent until the key changes. Announcements are idempotent soft
//! state, so a replay can at worst revive a withdrawn entry for one lease.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use sal::{Locator, ServiceId, ServicePrefix};

/// Version of this protocol; a datagram of any other version is dropped.
pub const WIRE_VERSION: u8 = 1;
/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 8 * 1024;
/// Longest controller name accepted in a message.
pub const MAX_NAME: usize = 64;
/// Most locators one controller may claim.
pub const MAX_LOCATORS: usize = 16;
/// Length of the HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

const MAGIC: &[u8; 4] = b"SRVD";
const HEADER_LEN: usize = 6;
const FLAG_TAGGED: u8 = 1;

type HmacSha256 = Hmac<Sha256>;

/// Who sent a message: enough to install rules toward it and to notice that
/// it restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The controller's name (default: the host name), for logs and listings.
    pub name: String,
    /// Random at every start: a new epoch means the sender lost its state.
    pub epoch: u64,
    /// Where the sender's SAL is reached (its sald's interface locators).
    pub locators: Vec<Locator>,
}

/// One announced prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub prefix: ServicePrefix,
    /// Relative share of new connections (static weight policy).
    pub weight: u32,
    /// Rule priority on the router: larger wins, equal ones share.
    #[serde(default)]
    pub priority: u32,
    /// Current load (active flows of the service on the announcing host).
    #[serde(default)]
    pub load: u32,
}

/// One target of a resolved route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTarget {
    pub locator: Locator,
    pub weight: u32,
    #[serde(default)]
    pub priority: u32,
}

/// A positive answer to a [`Message::Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The prefix the answer is good for (may be shorter than the ID).
    pub prefix: ServicePrefix,
    pub targets: Vec<RouteTarget>,
    /// How long the asker may cache it.
    pub ttl_ms: u64,
}

/// Everything controllers say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Downstream to upstream: these prefixes are reachable at `from`'s
    /// locators for `lease_ms` unless refreshed. `full` marks the last
    /// datagram of a complete refresh batch (nothing was left out).
    Announce {
        from: Node,
        lease_ms: u64,
        entries: Vec<Announcement>,
        #[serde(default)]
        full: bool,
    },
    /// Downstream to upstream: these prefixes are gone from `from`.
    Withdraw {
        from: Node,
        prefixes: Vec<ServicePrefix>,
    },
    /// Upstream to downstream: "I do not know you (any more): send me
    /// everything now" (sent on an announcement from an unknown sender or
    /// a new epoch, e.g. after the upstream restarted).
    ResyncRequest { from: Node },
    /// "Is there a service router?" to a configured upstream, or broadcast
    /// on the local link when none is configured.
    Solicit { from: Node },
    /// A router's answer to a solicit: its locators (for the default route).
    Advert { from: Node },
    /// "How do I reach `service`?" (a DELAY rule held a packet for it).
    Query {
        from: Node,
        id: u64,
        service: ServiceId,
    },
    /// The answer to query `id`; `route: None` means no such service.
    Answer {
        from: Node,
        id: u64,
        service: ServiceId,
        route: Option<Route>,
    },
}

impl Message {
    /// The sender, whatever the message.
    pub fn from(&self) -> &Node {
        match self {
            Message::Announce { from, .. }
            | Message::Withdraw { from, .. }
            | Message::ResyncRequest { from }
            | Message::Solicit { from }
            | Message::Advert { from }
            | Message::Query { from, .. }
            | Message::Answer { from, .. } => from,
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    Oversized(usize),
    #[error("not a servd datagram")]
    BadMagic,
    #[error("protocol version {0} (this controller speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("missing or wrong authentication tag")]
    Unauthenticated,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("message does not fit in one datagram ({0} bytes)")]
    TooLarge(usize),
}

/// Encodes `message` into one datagram, tagged when `key` is given.
pub fn encode(message: &Message, key: Option<&[u8]>) -> Result<Vec<u8>, WireError> {
    let body = serde_json::to_vec(message).map_err(|e| WireError::Malformed(e.to_string()))?;
    let tag_len = if key.is_some() { TAG_LEN } else { 0 };
    let total = HEADER_LEN + tag_len + body.len();
    if total > MAX_DATAGRAM {
        return Err(WireError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.push(WIRE_VERSION);
    out.push(if key.is_some() { FLAG_TAGGED } else { 0 });
    if let Some(key) = key {
        let tag = tag(key, &out[..HEADER_LEN], &body);
        out.extend_from_slice(&tag);
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes and checks one datagram. With `key`, the tag must be present and
/// valid; without, it must be absent.
pub fn decode(bytes: &[u8], key: Option<&[u8]>) -> Result<Message, WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::Oversized(bytes.len()));
    }
    let header = bytes.get(..HEADER_LEN).ok_or(WireError::BadMagic)?;
    if &header[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if header[4] != WIRE_VERSION {
        return Err(WireError::Version(header[4]));
    }
    let tagged = header[5] & FLAG_TAGGED != 0;
    let body = match (key, tagged) {
        (Some(key), true) => {
            let received = bytes
                .get(HEADER_LEN..HEADER_LEN + TAG_LEN)
                .ok_or(WireError::Unauthenticated)?;
            let body = &bytes[HEADER_LEN + TAG_LEN..];
            let mut mac =
                HmacSha256::new_from_slice(key).map_err(|_| WireError::Unauthenticated)?;
            mac.update(header);
            mac.update(body);
            mac.verify_slice(received)
                .map_err(|_| WireError::Unauthenticated)?;
            body
        }
        (None, false) => &bytes[HEADER_LEN..],
        _ => return Err(WireError::Unauthenticated),
    };
    let message: Message =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    validate(&message)?;
    Ok(message)
}

fn validate(message: &Message) -> Result<(), WireError> {
    let from = message.from();
    if from.name.len() > MAX_NAME {
        return Err(WireError::Malformed("sender name too long".into()));
    }
    if from.locators.len() > MAX_LOCATORS {
        return Err(WireError::Malformed("too many locators".into()));
    }
    Ok(())
}

fn tag(key: &[u8], header: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
    // HMAC takes keys of any length, so this never fails; an all-zero tag
    // (which no receiver accepts) is the harmless fallback all the same.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; TAG_LEN];
    };
    mac.update(header);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Splits `entries` into `Announce` datagrams that each fit [`MAX_DATAGRAM`];
/// the last one is marked `full` when `complete`.
pub fn announce_batches(
    from: &Node,
    lease_ms: u64,
    entries: &[Announcement],
    complete: bool,
    key: Option<&[u8]>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = entries;
    // Start optimistic and halve on overflow: entries are small and similar.
    let mut chunk = 64usize;
    while !rest.is_empty() || (out.is_empty() && complete) {
        let take = chunk.min(rest.len());
        let last = take == rest.len();
        let message = Message::Announce {
            from: from.clone(),
            lease_ms,
            entries: rest[..take].to_vec(),
            full: complete && last,
        };
        match encode(&message, key) {
            Ok(bytes) => {
                out.push(bytes);
                rest = &rest[take..];
                if rest.is_empty() {
                    break;
                }
            }
            Err(_) if take > 1 => chunk = (take / 2).max(1),
            // One entry that does not fit (impossible with sane names): skip it.
            Err(_) => rest = &rest[1..],
        }
    }
    out
}

/// Splits a withdrawal into datagrams that fit.
pub fn withdraw_batches(
    from: &Node,
    prefixes: &[ServicePrefix],
    key: Option<&[u8]>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for chunk in prefixes.chunks(64) {
        let message = Message::Withdraw {
            from: from.clone(),
            prefixes: chunk.to_vec(),
        };
        if let Ok(bytes) = encode(&message, key) {
            out.push(bytes);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            name: "h1".into(),
            epoch: 7,
            locators: vec!["10.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn round_trip_with_and_without_key() {
        let message = Message::Solicit { from: node() };
        let plain = encode(&message, None).unwrap();
        assert_eq!(decode(&plain, None).unwrap(), message);
        let tagged = encode(&message, Some(b"secret")).unwrap();
        assert_eq!(decode(&tagged, Some(b"secret")).unwrap(), message);
        assert_eq!(
            decode(&tagged, Some(b"other")),
            Err(WireError::Unauthenticated)
        );
        assert_eq!(
            decode(&plain, Some(b"secret")),
            Err(WireError::Unauthenticated)
        );
        assert_eq!(decode(&tagged, None), Err(WireError::Unauthenticated));
        let mut flipped = tagged.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert_eq!(
            decode(&flipped, Some(b"secret")),
            Err(WireError::Unauthenticated)
        );
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        assert_eq!(decode(b"", None), Err(WireError::BadMagic));
        assert_eq!(decode(b"SRVD", None), Err(WireError::BadMagic));
        assert_eq!(decode(b"SRVD\x02\x00{}", None), Err(WireError::Version(2)));
        assert!(matches!(
            decode(b"SRVD\x01\x00{not json", None),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode(&vec![0u8; MAX_DATAGRAM + 1], None),
            Err(WireError::Oversized(_))
        ));
        assert_eq!(
            decode(b"SRVD\x01\x01short", Some(b"k")),
            Err(WireError::Unauthenticated)
        );
        // Every truncation of a valid datagram fails cleanly.
        let good = encode(&Message::Advert { from: node() }, Some(b"k")).unwrap();
        for len in 0..good.len() {
            assert!(decode(&good[..len], Some(b"k")).is_err());
        }
    }

    #[test]
    fn big_announcements_are_batched_under_the_limit() {
        let entries: Vec<Announcement> = (0..2000u32)
            .map(|i| Announcement {
                prefix: ServicePrefix::new(format!("{:08x}", i).parse::<ServiceId>().unwrap(), 32),
                weight: 1,
                priority: 0,
                load: 0,
            })
            .collect();
        let batches = announce_batches(&node(), 2000, &entries, true, Some(b"k"));
        assert!(batches.len() > 1);
        let mut seen = 0;
        for (i, batch) in batches.iter().enumerate() {
            assert!(batch.len() <= MAX_DATAGRAM);
            let Message::Announce { entries, full, .. } = decode(batch, Some(b"k")).unwrap() else {
                panic!("not an announce");
            };
            assert_eq!(full, i == batches.len() - 1);
            seen += entries.len();
        }
        assert_eq!(seen, entries.len());
    }
}
