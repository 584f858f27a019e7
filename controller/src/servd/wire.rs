//! The controller-to-controller protocol: UDP datagrams on the host network.
//!
//! Controllers never talk through the SAL they configure (a broken service
//! table must not cut off the messages that would repair it), so messages go
//! in plain UDP datagrams between the controllers' `--listen` addresses.
//!
//! Datagram layout (version 2):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic `SRVD` |
//! | 4 | protocol version ([`WIRE_VERSION`]); others are dropped |
//! | 5 | flags: bit 0 set when the authentication block follows |
//! | 6..14 | key identifier ([`Key::id`]) |
//! | 14..22 | timestamp: sender's Unix time, milliseconds, big-endian |
//! | 22..30 | sequence: per sender run, increasing by one per datagram |
//! | 30..62 | HMAC-SHA256 tag |
//! | rest | the [`Message`], JSON |
//!
//! (bytes 6..62 only with flag bit 0; untagged datagrams have the JSON at 6).
//!
//! The tag covers bytes 0..30 and the JSON body, keyed with the key named
//! by the identifier. A controller with keys drops every datagram without a
//! valid tag under one of them; one without keys drops tagged datagrams too
//! (it cannot check them, and a mixed domain is a configuration error worth
//! noticing). Datagrams over [`MAX_DATAGRAM`] bytes are dropped unread;
//! senders batch announcements to stay under it.
//!
//! Timestamp and sequence make a captured datagram useless later: the
//! receiver drops tagged datagrams more than [`super::replay::WINDOW_MS`] away
//! from its own clock, and those whose (key, sender epoch, sequence) it has
//! already seen ([`super::replay`]). Version 1 (tag without timestamp and
//! sequence) is no longer accepted.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use sal::{Locator, ServiceId, ServicePrefix};

use super::keys::{Key, Keyring, KEY_ID_LEN};

/// Version of this protocol; a datagram of any other version is dropped.
/// Version 2 added the timestamp and sequence of tagged datagrams.
pub const WIRE_VERSION: u8 = 2;
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
/// Key identifier, timestamp and sequence: the part of the authentication
/// block the tag covers.
const STAMP_LEN: usize = KEY_ID_LEN + 8 + 8;
const AUTH_LEN: usize = STAMP_LEN + TAG_LEN;
const FLAG_TAGGED: u8 = 1;

type HmacSha256 = Hmac<Sha256>;

/// When and in which order a tagged datagram was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The sender's Unix time, milliseconds.
    pub timestamp_ms: u64,
    /// Increases by one with every datagram the sender tags.
    pub sequence: u64,
}

/// A datagram whose tag checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated<'k> {
    /// The key the tag was made with.
    pub key: &'k Key,
    /// Its timestamp and sequence number, still to be checked for freshness
    /// by the caller (the replay guard).
    pub stamp: Stamp,
}

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
    /// The prefix the sender serves; a router checks it against its policy
    /// (never `/0`) before installing a FORWARD rule for it.
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
    /// Where the asker forwards connections (a FORWARD target).
    pub locator: Locator,
    /// Relative share of new connections among the targets.
    pub weight: u32,
    /// Rule priority the asker installs it with (never above its
    /// operator's static targets of the same prefix).
    #[serde(default)]
    pub priority: u32,
}

/// A positive answer to a [`Message::Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The prefix the answer is good for (may be shorter than the ID).
    pub prefix: ServicePrefix,
    /// The instances to forward to; the asker installs at most 64 of them.
    pub targets: Vec<RouteTarget>,
    /// How long the asker may cache it.
    pub ttl_ms: u64,
    /// Some targets were left out to fit the answer in a few times the
    /// query's bytes (an unauthenticated query): the asker keeps it only
    /// briefly rather than as the complete set, and servd, whose first
    /// query for a service is small, asks once more with a query padded
    /// to room for the complete set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// Everything controllers say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Downstream to upstream: these prefixes are reachable at `from`'s
    /// locators for `lease_ms` unless refreshed. `full` marks the last
    /// datagram of a complete refresh batch (nothing was left out).
    Announce {
        /// The announcing controller: named in the rules' origin, its epoch
        /// checked for restarts, its locators used only where policy allows.
        from: Node,
        /// How long (ms) the router keeps the entries without a refresh;
        /// clamped to between 100 ms and the router's `--max-lease`.
        lease_ms: u64,
        /// The prefixes announced, each checked against the router's policy.
        entries: Vec<Announcement>,
        /// Set on the last datagram of a complete refresh; a router asks a
        /// sender it does not know (or a new epoch) for a resync only without it.
        #[serde(default)]
        full: bool,
    },
    /// Downstream to upstream: these prefixes are gone from `from`.
    Withdraw {
        /// The withdrawing controller; only locators it could have announced
        /// (its source address, or others its policy grant allows) are removed.
        /// Untagged, from any port and in any run: anyone who can send from
        /// an address can withdraw its routes (only a key prevents that).
        from: Node,
        /// Prefixes to remove, each held to the same policy as announcing.
        prefixes: Vec<ServicePrefix>,
    },
    /// Upstream to downstream: "I do not know you (any more): send me
    /// everything now" (sent on an announcement from an unknown sender or
    /// a new epoch, e.g. after the upstream restarted).
    ResyncRequest {
        /// The asking router; honoured only from an upstream's address.
        from: Node,
    },
    /// "Is there a service router?" to a configured upstream, or broadcast
    /// on the local link when none is configured.
    Solicit {
        /// The soliciting host (only logged: the advert goes to the
        /// datagram's source address).
        from: Node,
        /// Random per solicit, echoed in the advert: an untagged advert is
        /// taken only with the nonce of the host's latest solicit, which an
        /// off-path forger of the router's address does not see.
        #[serde(default)]
        nonce: u64,
    },
    /// A router's answer to a solicit: its locators (for the default route).
    Advert {
        /// The router: a new epoch makes the host send it a full refresh,
        /// and its locators are where the default route points (untagged:
        /// only those at the advert's source address, and only with the
        /// solicit's nonce).
        from: Node,
        /// The nonce of the solicit answered.
        #[serde(default)]
        nonce: u64,
    },
    /// "How do I reach `service`?" (a DELAY rule held a packet for it).
    /// Untagged, it is padded with whitespace ([`pad_untagged`]) and the
    /// answer is at most a few times its size (servd pads a little at
    /// first, and in full only to ask again after a partial answer).
    Query {
        /// The asking controller (only logged: the answer goes to the
        /// datagram's source address).
        from: Node,
        /// The asker's number for this query, echoed in the answer.
        id: u64,
        /// The service ID a DELAY rule is holding packets for.
        service: ServiceId,
    },
    /// The answer to query `id`; `route: None` means no such service.
    Answer {
        /// The answering controller; its name becomes the cached rules'
        /// origin (`resolved NAME`). Sent without locators (unused).
        from: Node,
        /// The `id` of the query answered; answers matching no pending
        /// query of that service are dropped.
        id: u64,
        /// The service ID that was asked about.
        service: ServiceId,
        /// Where the service is; `None` is cached as a short-lived DROP.
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
            | Message::Solicit { from, .. }
            | Message::Advert { from, .. }
            | Message::Query { from, .. }
            | Message::Answer { from, .. } => from,
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A received datagram longer than [`MAX_DATAGRAM`] (its length),
    /// dropped unread.
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    Oversized(usize),
    /// Shorter than the header, or not starting with the magic `SRVD`.
    #[error("not a servd datagram")]
    BadMagic,
    /// Another protocol version (the version byte it carried).
    #[error("protocol version {0} (this controller speaks {WIRE_VERSION})")]
    Version(u8),
    /// Tag missing, invalid or under an unknown key, or present while this
    /// controller has no keys.
    #[error("missing or wrong authentication tag")]
    Unauthenticated,
    /// The body is not a valid message, or exceeds the name or locator
    /// limits (the reason).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message to send would encode to more than [`MAX_DATAGRAM`] bytes
    /// (its size).
    #[error("message does not fit in one datagram ({0} bytes)")]
    TooLarge(usize),
}

/// Encodes `message` into one datagram, tagged with `key` and `stamp` when
/// given.
pub fn encode(message: &Message, seal: Option<(&Key, Stamp)>) -> Result<Vec<u8>, WireError> {
    let body = serde_json::to_vec(message).map_err(|e| WireError::Malformed(e.to_string()))?;
    let auth_len = if seal.is_some() { AUTH_LEN } else { 0 };
    let total = HEADER_LEN + auth_len + body.len();
    if total > MAX_DATAGRAM {
        return Err(WireError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.push(WIRE_VERSION);
    out.push(if seal.is_some() { FLAG_TAGGED } else { 0 });
    if let Some((key, stamp)) = seal {
        out.extend_from_slice(&key.id());
        out.extend_from_slice(&stamp.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&stamp.sequence.to_be_bytes());
        let tag = tag(key, &out, &body);
        out.extend_from_slice(&tag);
    }
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes and checks one datagram. With keys, the tag must be present and
/// valid under one of them; without, it must be absent. Freshness (the
/// stamp) is the caller's to check ([`super::replay`]).
pub fn decode<'k>(
    bytes: &[u8],
    keys: &'k Keyring,
) -> Result<(Message, Option<Authenticated<'k>>), WireError> {
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
    let (body, auth) = match (keys.is_empty(), tagged) {
        (false, true) => {
            let signed = bytes
                .get(..HEADER_LEN + STAMP_LEN)
                .ok_or(WireError::Unauthenticated)?;
            let received = bytes
                .get(HEADER_LEN + STAMP_LEN..HEADER_LEN + AUTH_LEN)
                .ok_or(WireError::Unauthenticated)?;
            let body = &bytes[HEADER_LEN + AUTH_LEN..];
            let key = keys
                .find(&signed[HEADER_LEN..HEADER_LEN + KEY_ID_LEN])
                .ok_or(WireError::Unauthenticated)?;
            let mut mac =
                HmacSha256::new_from_slice(key.secret()).map_err(|_| WireError::Unauthenticated)?;
            mac.update(signed);
            mac.update(body);
            mac.verify_slice(received)
                .map_err(|_| WireError::Unauthenticated)?;
            let at = HEADER_LEN + KEY_ID_LEN;
            let stamp = Stamp {
                timestamp_ms: be_u64(&signed[at..at + 8]),
                sequence: be_u64(&signed[at + 8..at + 16]),
            };
            (body, Some(Authenticated { key, stamp }))
        }
        (true, false) => (&bytes[HEADER_LEN..], None),
        _ => return Err(WireError::Unauthenticated),
    };
    let message: Message =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    validate(&message)?;
    Ok((message, auth))
}

/// Pads an untagged datagram with JSON whitespace (which every decoder
/// skips) to `len` bytes, at most [`MAX_DATAGRAM`]. Tagged datagrams are
/// left alone: the tag covers the body.
///
/// Without a key, a router answers a query with at most a few times the
/// query's bytes (a forged source must not turn a small query into a big
/// answer toward a victim); a querier that pads gets room for a full
/// answer, as QUIC clients pad their first packet.
pub fn pad_untagged(datagram: &mut Vec<u8>, len: usize) {
    if datagram.len() > HEADER_LEN && datagram[5] & FLAG_TAGGED == 0 {
        let len = len.min(MAX_DATAGRAM);
        if datagram.len() < len {
            datagram.resize(len, b' ');
        }
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(word)
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

fn tag(key: &Key, signed: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
    // HMAC takes keys of any length, so this never fails; an all-zero tag
    // (which no receiver accepts) is the harmless fallback all the same.
    let Ok(mut mac) = HmacSha256::new_from_slice(key.secret()) else {
        return [0; TAG_LEN];
    };
    mac.update(signed);
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Tags a sender's datagrams: its key, its clock and its sequence counter.
#[derive(Debug)]
pub struct Sealer<'a> {
    key: Option<&'a Key>,
    timestamp_ms: u64,
    next_sequence: &'a mut u64,
}

impl<'a> Sealer<'a> {
    /// Datagrams stamped with `timestamp_ms` and numbered from
    /// `*next_sequence` on (which is advanced); untagged without `key`.
    pub fn new(key: Option<&'a Key>, timestamp_ms: u64, next_sequence: &'a mut u64) -> Sealer<'a> {
        Sealer {
            key,
            timestamp_ms,
            next_sequence,
        }
    }

    /// Encodes one datagram, using up one sequence number when tagged.
    pub fn seal(&mut self, message: &Message) -> Result<Vec<u8>, WireError> {
        let seal = self.key.map(|key| {
            let sequence = *self.next_sequence;
            *self.next_sequence = sequence.wrapping_add(1);
            (
                key,
                Stamp {
                    timestamp_ms: self.timestamp_ms,
                    sequence,
                },
            )
        });
        encode(message, seal)
    }
}

/// Splits `entries` into `Announce` datagrams that each fit [`MAX_DATAGRAM`];
/// the last one is marked `full` when `complete`.
pub fn announce_batches(
    from: &Node,
    lease_ms: u64,
    entries: &[Announcement],
    complete: bool,
    sealer: &mut Sealer<'_>,
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
        match sealer.seal(&message) {
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
    sealer: &mut Sealer<'_>,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for chunk in prefixes.chunks(64) {
        let message = Message::Withdraw {
            from: from.clone(),
            prefixes: chunk.to_vec(),
        };
        if let Ok(bytes) = sealer.seal(&message) {
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

    fn key(name: &str, secret: &str) -> Key {
        Key::new(name, secret.as_bytes()).unwrap()
    }

    const STAMP: Stamp = Stamp {
        timestamp_ms: 1_700_000_000_000,
        sequence: 42,
    };

    #[test]
    fn padded_untagged_datagrams_decode_and_tagged_ones_are_left_alone() {
        let message = Message::Solicit {
            from: node(),
            nonce: 7,
        };
        let mut plain = encode(&message, None).unwrap();
        pad_untagged(&mut plain, 1200);
        assert_eq!(plain.len(), 1200);
        assert_eq!(decode(&plain, &Keyring::none()).unwrap().0, message);
        let secret = key("domain", "0123456789abcdef");
        let mut tagged = encode(&message, Some((&secret, STAMP))).unwrap();
        let before = tagged.clone();
        pad_untagged(&mut tagged, 1200);
        assert_eq!(tagged, before);
    }

    #[test]
    fn round_trip_with_and_without_key() {
        let message = Message::Solicit {
            from: node(),
            nonce: 7,
        };
        let secret = key("domain", "0123456789abcdef");
        let ring = Keyring::with_signing(secret.clone());
        let other = Keyring::with_signing(key("other", "fedcba9876543210"));
        let none = Keyring::none();
        let plain = encode(&message, None).unwrap();
        assert_eq!(decode(&plain, &none).unwrap(), (message.clone(), None));
        let tagged = encode(&message, Some((&secret, STAMP))).unwrap();
        let (decoded, auth) = decode(&tagged, &ring).unwrap();
        assert_eq!(decoded, message);
        let auth = auth.unwrap();
        assert_eq!(auth.stamp, STAMP);
        assert_eq!(auth.key.name(), "domain");
        assert_eq!(decode(&tagged, &other), Err(WireError::Unauthenticated));
        assert_eq!(decode(&plain, &ring), Err(WireError::Unauthenticated));
        assert_eq!(decode(&tagged, &none), Err(WireError::Unauthenticated));
        // Any bit of the body, the stamp or the key id changes the verdict.
        for at in [tagged.len() - 2, 7, 15, 23] {
            let mut flipped = tagged.clone();
            flipped[at] ^= 1;
            assert_eq!(
                decode(&flipped, &ring),
                Err(WireError::Unauthenticated),
                "byte {at}"
            );
        }
    }

    #[test]
    fn a_second_accepted_key_is_found_by_its_id() {
        let ours = key("domain", "0123456789abcdef");
        let theirs = key("site-b", "another key of 16+ bytes");
        let mut ring = Keyring::with_signing(ours);
        ring.accept(theirs.clone()).unwrap();
        let datagram = encode(
            &Message::Advert {
                from: node(),
                nonce: 7,
            },
            Some((&theirs, STAMP)),
        )
        .unwrap();
        let (_, auth) = decode(&datagram, &ring).unwrap();
        assert_eq!(auth.unwrap().key.name(), "site-b");
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let none = Keyring::none();
        let ring = Keyring::with_signing(key("k", "0123456789abcdef"));
        assert_eq!(decode(b"", &none), Err(WireError::BadMagic));
        assert_eq!(decode(b"SRVD", &none), Err(WireError::BadMagic));
        assert_eq!(decode(b"SRVD\x01\x00{}", &none), Err(WireError::Version(1)));
        assert!(matches!(
            decode(b"SRVD\x02\x00{not json", &none),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            decode(&vec![0u8; MAX_DATAGRAM + 1], &none),
            Err(WireError::Oversized(_))
        ));
        assert_eq!(
            decode(b"SRVD\x02\x01short", &ring),
            Err(WireError::Unauthenticated)
        );
        // Every truncation of a valid datagram fails cleanly.
        let signer = key("k", "0123456789abcdef");
        let good = encode(
            &Message::Advert {
                from: node(),
                nonce: 7,
            },
            Some((&signer, STAMP)),
        )
        .unwrap();
        for len in 0..good.len() {
            assert!(decode(&good[..len], &ring).is_err());
        }
    }

    #[test]
    fn big_announcements_are_batched_under_the_limit_with_fresh_sequences() {
        let entries: Vec<Announcement> = (0..2000u32)
            .map(|i| Announcement {
                prefix: ServicePrefix::new(format!("{:08x}", i).parse::<ServiceId>().unwrap(), 32),
                weight: 1,
                priority: 0,
                load: 0,
            })
            .collect();
        let signer = key("k", "0123456789abcdef");
        let ring = Keyring::with_signing(signer.clone());
        let mut next = 1;
        let mut sealer = Sealer::new(Some(&signer), 5, &mut next);
        let batches = announce_batches(&node(), 2000, &entries, true, &mut sealer);
        assert!(batches.len() > 1);
        let mut seen = 0;
        let mut last_sequence = 0;
        for (i, batch) in batches.iter().enumerate() {
            assert!(batch.len() <= MAX_DATAGRAM);
            let (Message::Announce { entries, full, .. }, Some(auth)) =
                decode(batch, &ring).unwrap()
            else {
                panic!("not a tagged announce");
            };
            assert!(auth.stamp.sequence > last_sequence);
            last_sequence = auth.stamp.sequence;
            assert_eq!(full, i == batches.len() - 1);
            seen += entries.len();
        }
        assert_eq!(seen, entries.len());
        assert!(next > last_sequence);
    }
}
