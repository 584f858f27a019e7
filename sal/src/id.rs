//! Identifiers: service IDs, service prefixes and flow IDs.
//!
//! Text forms follow WIRE.md: a service ID is up to 64 hex digits, left-aligned
//! (missing low-order digits are zero), so `beef` names the ID whose first two
//! bytes are `0xbe 0xef`; a prefix appends `/N`. Flow IDs print as 8 hex digits.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Length of a service ID in bytes.
pub const SERVICE_ID_LEN: usize = 32;
/// Length of a service ID in bits; also the longest prefix length.
pub const SERVICE_ID_BITS: u16 = 256;

/// A 256-bit service identifier. Byte 0 is the most significant.
///
/// Applications name what they want to reach with a service ID; the service
/// table resolves it by longest-prefix match.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceId([u8; SERVICE_ID_LEN]);

/// A service ID prefix: the first `len` bits of `id`, with every later bit zero.
///
/// The normalisation is an invariant, so two prefixes that cover the same
/// set of IDs compare equal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePrefix {
    id: ServiceId,
    len: u16,
}

/// A flow identifier: 32 bits, chosen by each host for its own end of a flow.
/// Zero is reserved on the wire for "not yet known", so it is not a `FlowId`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(NonZeroU32);

/// Why a service ID, prefix or flow ID string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    /// A service ID (or the ID part of a prefix) had no digits at all.
    #[error("empty identifier")]
    Empty,
    /// A service ID contained a character that is not a hex digit.
    #[error("invalid hex digit {found:?} at position {position}")]
    InvalidDigit {
        /// The first offending character.
        found: char,
        /// Its byte offset in the ID text (the `/LEN` suffix excluded).
        position: usize,
    },
    /// A service ID had more than 64 hex digits.
    #[error("service ID has {digits} hex digits; at most 64 fit in 256 bits")]
    TooLong {
        /// How many digits were given.
        digits: usize,
    },
    /// The text after `/` was not a whole number from 0 to 256; carries that text.
    #[error("invalid prefix length {0:?}: expected a number from 0 to 256")]
    BadLength(String),
    /// A prefix had bits set past its length (e.g. `beef/4`); these are refused,
    /// not silently cleared.
    #[error("bits are set past the prefix length /{len}; the prefix would be {normalised}")]
    BitsPastLength {
        /// The prefix length given after `/`, in bits.
        len: u16,
        /// The prefix with the stray bits cleared, suggested to the user.
        normalised: ServicePrefix,
    },
    /// A flow ID parsed as 0, which the wire reserves for "not yet known".
    #[error("flow ID 0 is reserved")]
    ZeroFlowId,
    /// A flow ID was not 1 to 8 hex digits (optionally after `0x`); carries the input.
    #[error("invalid flow ID {0:?}: expected 1 to 8 hex digits")]
    BadFlowId(String),
}

impl ServiceId {
    /// The all-zero ID.
    pub const ZERO: ServiceId = ServiceId([0; SERVICE_ID_LEN]);

    /// Wraps 32 bytes, most significant first.
    pub const fn from_bytes(bytes: [u8; SERVICE_ID_LEN]) -> ServiceId {
        ServiceId(bytes)
    }

    /// Builds an ID from a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<ServiceId> {
        bytes.try_into().ok().map(ServiceId)
    }

    /// The ID as bytes, most significant first.
    pub const fn as_bytes(&self) -> &[u8; SERVICE_ID_LEN] {
        &self.0
    }

    /// The ID as four big-endian 64-bit words, the form the trie compares.
    pub fn to_words(&self) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(self.0.chunks_exact(8)) {
            *word = u64::from_be_bytes(chunk.try_into().expect("chunk of 8"));
        }
        words
    }

    /// Inverse of [`ServiceId::to_words`].
    pub fn from_words(words: [u64; 4]) -> ServiceId {
        let mut bytes = [0u8; SERVICE_ID_LEN];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        ServiceId(bytes)
    }

    /// Bit `index` (0 = most significant bit of byte 0).
    pub fn bit(&self, index: u16) -> bool {
        debug_assert!(index < SERVICE_ID_BITS);
        let byte = self.0[usize::from(index / 8)];
        byte & (0x80 >> (index % 8)) != 0
    }

    /// This ID with every bit from `len` on cleared.
    pub fn truncated(&self, len: u16) -> ServiceId {
        let len = len.min(SERVICE_ID_BITS);
        let mut bytes = self.0;
        let full = usize::from(len / 8);
        let rest = len % 8;
        if full < SERVICE_ID_LEN {
            bytes[full] &= !(0xffu8 >> rest);
            bytes[full + 1..].fill(0);
        }
        ServiceId(bytes)
    }

    /// Number of leading bits this ID shares with `other` (256 if equal).
    pub fn common_prefix_len(&self, other: &ServiceId) -> u16 {
        let (a, b) = (self.to_words(), other.to_words());
        for i in 0..4 {
            let diff = a[i] ^ b[i];
            if diff != 0 {
                return (i as u16) * 64 + diff.leading_zeros() as u16;
            }
        }
        SERVICE_ID_BITS
    }

    /// Number of hex digits in the shortest left-aligned text form (at least 1).
    fn significant_digits(&self) -> usize {
        let trailing_zero_bits = self
            .0
            .iter()
            .rev()
            .position(|&b| b != 0)
            .map(|zero_bytes| zero_bytes * 8 + self.0[31 - zero_bytes].trailing_zeros() as usize)
            .unwrap_or(256);
        (64 - trailing_zero_bits / 4).max(1)
    }

    fn write_hex(&self, f: &mut fmt::Formatter<'_>, digits: usize) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (i, slot) in out.iter_mut().enumerate().take(digits) {
            let byte = self.0[i / 2];
            let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0xf };
            *slot = HEX[usize::from(nibble)];
        }
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&out[..digits]).map_err(|_| fmt::Error)?)
    }
}

/// `{}` prints the shortest left-aligned form (`00004001`); `{:#}` prints all 64 digits.
impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = if f.alternate() {
            64
        } else {
            self.significant_digits()
        };
        self.write_hex(f, digits)
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceId({self})")
    }
}

impl FromStr for ServiceId {
    type Err = ParseIdError;

    /// Parses up to 64 hex digits, left-aligned: `beef` is `0xbe 0xef 0x00 ...`.
    fn from_str(s: &str) -> Result<ServiceId, ParseIdError> {
        if s.is_empty() {
            return Err(ParseIdError::Empty);
        }
        if s.len() > 64 {
            // Report the digit count only if it really is all hex; otherwise the
            // first bad character is the more useful complaint.
            if let Some((position, found)) = s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit())
            {
                return Err(ParseIdError::InvalidDigit { found, position });
            }
            return Err(ParseIdError::TooLong { digits: s.len() });
        }
        let mut bytes = [0u8; SERVICE_ID_LEN];
        for (position, found) in s.char_indices() {
            let nibble = found
                .to_digit(16)
                .ok_or(ParseIdError::InvalidDigit { found, position })?
                as u8;
            // `position` is a byte index but every accepted char is one ASCII byte.
            let byte = &mut bytes[position / 2];
            *byte |= if position % 2 == 0 {
                nibble << 4
            } else {
                nibble
            };
        }
        Ok(ServiceId(bytes))
    }
}

impl ServicePrefix {
    /// The prefix that matches every service ID.
    pub const DEFAULT: ServicePrefix = ServicePrefix {
        id: ServiceId::ZERO,
        len: 0,
    };

    /// The first `len` bits of `id` (bits past `len` are cleared; `len` is capped at 256).
    pub fn new(id: ServiceId, len: u16) -> ServicePrefix {
        let len = len.min(SERVICE_ID_BITS);
        ServicePrefix {
            id: id.truncated(len),
            len,
        }
    }

    /// The prefix matching exactly one service ID.
    pub fn exact(id: ServiceId) -> ServicePrefix {
        ServicePrefix {
            id,
            len: SERVICE_ID_BITS,
        }
    }

    /// The prefix bits, zero past [`ServicePrefix::len`].
    pub fn id(&self) -> &ServiceId {
        &self.id
    }

    /// Number of significant bits, 0 to 256.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.len
    }

    /// Whether `id` falls under this prefix.
    pub fn contains(&self, id: &ServiceId) -> bool {
        self.id.common_prefix_len(id) >= self.len
    }

    /// Whether every ID under `other` is also under `self`.
    pub fn covers(&self, other: &ServicePrefix) -> bool {
        self.len <= other.len && self.contains(&other.id)
    }
}

impl From<ServiceId> for ServicePrefix {
    fn from(id: ServiceId) -> ServicePrefix {
        ServicePrefix::exact(id)
    }
}

/// Prints `ID/LEN` with the ID in its shortest form, e.g. `beef/16`.
impl fmt::Display for ServicePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.id, self.len)
    }
}

impl fmt::Debug for ServicePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServicePrefix({self})")
    }
}

impl FromStr for ServicePrefix {
    type Err = ParseIdError;

    /// Parses `ID/LEN`, or a bare `ID` meaning the exact ID (`/256`).
    /// Bits set past `LEN` are an error rather than silently dropped: an operator
    /// who typed `beef/4` most likely meant something else.
    fn from_str(s: &str) -> Result<ServicePrefix, ParseIdError> {
        let (id_text, len) = match s.split_once('/') {
            None => (s, SERVICE_ID_BITS),
            Some((id_text, len_text)) => {
                let len = len_text
                    .parse::<u16>()
                    .ok()
                    .filter(|&len| len <= SERVICE_ID_BITS)
                    .ok_or_else(|| ParseIdError::BadLength(len_text.to_string()))?;
                (id_text, len)
            }
        };
        let id: ServiceId = id_text.parse()?;
        let prefix = ServicePrefix::new(id, len);
        if prefix.id != id {
            return Err(ParseIdError::BitsPastLength {
                len,
                normalised: prefix,
            });
        }
        Ok(prefix)
    }
}

impl FlowId {
    /// Wraps a raw flow ID; `None` for 0, which the wire reserves for "unknown".
    pub const fn new(raw: u32) -> Option<FlowId> {
        match NonZeroU32::new(raw) {
            Some(id) => Some(FlowId(id)),
            None => None,
        }
    }

    /// The raw 32-bit value as carried on the wire.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl fmt::Debug for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowId({self})")
    }
}

impl FromStr for FlowId {
    type Err = ParseIdError;

    /// Parses 1 to 8 hex digits, with or without a `0x` prefix.
    fn from_str(s: &str) -> Result<FlowId, ParseIdError> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .unwrap_or(s);
        let valid = !digits.is_empty() && digits.len() <= 8;
        let raw = valid
            .then(|| u32::from_str_radix(digits, 16).ok())
            .flatten()
            .ok_or_else(|| ParseIdError::BadFlowId(s.to_string()))?;
        FlowId::new(raw).ok_or(ParseIdError::ZeroFlowId)
    }
}

/// Serde support: identifiers travel as their text forms, which keeps control
/// messages and config files readable and makes JSON listings copy-pasteable.
macro_rules! serde_via_text {
    ($ty:ty, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visitor)
            }
        }
    };
}

serde_via_text!(ServiceId, "a service ID (up to 64 hex digits)");
serde_via_text!(
    ServicePrefix,
    "a service prefix (hex digits, optionally /LEN)"
);
serde_via_text!(FlowId, "a flow ID (1 to 8 hex digits, not 0)");

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ServiceId {
        s.parse().unwrap()
    }

    #[test]
    fn service_id_text_is_left_aligned() {
        let beef = id("beef");
        assert_eq!(beef.as_bytes()[..3], [0xbe, 0xef, 0]);
        assert_eq!(id("b").as_bytes()[0], 0xb0);
        assert_eq!(beef.to_string(), "beef");
        assert_eq!(id("00004001").to_string(), "00004001");
        assert_eq!(ServiceId::ZERO.to_string(), "0");
        assert_eq!(format!("{:#}", beef).len(), 64);
        let full = "f".repeat(64);
        assert_eq!(id(&full).to_string(), full);
        assert_eq!(id("ABCD"), id("abcd"));
    }

    #[test]
    fn service_id_errors_name_the_problem() {
        assert_eq!("".parse::<ServiceId>(), Err(ParseIdError::Empty));
        assert_eq!(
            "12g4".parse::<ServiceId>(),
            Err(ParseIdError::InvalidDigit {
                found: 'g',
                position: 2
            })
        );
        assert_eq!(
            "0".repeat(65).parse::<ServiceId>(),
            Err(ParseIdError::TooLong { digits: 65 })
        );
        // Multi-byte characters must not be mistaken for digits or panic.
        assert!(matches!(
            "ab€".parse::<ServiceId>(),
            Err(ParseIdError::InvalidDigit { found: '€', .. })
        ));
    }

    #[test]
    fn prefix_parse_display_and_normalisation() {
        let p: ServicePrefix = "beef/16".parse().unwrap();
        assert_eq!(p.len(), 16);
        assert_eq!(p.to_string(), "beef/16");
        assert!(p.contains(&id("beef1234")));
        assert!(!p.contains(&id("beee")));

        let exact: ServicePrefix = "4001".parse().unwrap();
        assert_eq!(exact.len(), 256);

        let all: ServicePrefix = "0/0".parse().unwrap();
        assert_eq!(all, ServicePrefix::DEFAULT);
        assert!(all.contains(&id("ffff")));

        assert!(matches!(
            "beef/4".parse::<ServicePrefix>(),
            Err(ParseIdError::BitsPastLength { len: 4, .. })
        ));
        assert_eq!(
            "be/257".parse::<ServicePrefix>(),
            Err(ParseIdError::BadLength("257".into()))
        );
        assert_eq!(
            "be/x".parse::<ServicePrefix>(),
            Err(ParseIdError::BadLength("x".into()))
        );
        assert_eq!(ServicePrefix::new(id("ffff"), 12).to_string(), "fff/12");
        assert_eq!(ServicePrefix::new(id("ffff"), 3).id().as_bytes()[0], 0xe0);
    }

    #[test]
    fn prefix_covers() {
        let wide: ServicePrefix = "be/8".parse().unwrap();
        let narrow: ServicePrefix = "beef/16".parse().unwrap();
        assert!(wide.covers(&narrow));
        assert!(!narrow.covers(&wide));
        assert!(ServicePrefix::DEFAULT.covers(&wide));
    }

    #[test]
    fn common_prefix_len_counts_bits() {
        assert_eq!(id("80").common_prefix_len(&id("c0")), 1);
        assert_eq!(id("ff").common_prefix_len(&id("ff")), 256);
        let mut b = [0u8; 32];
        b[31] = 1;
        assert_eq!(ServiceId::ZERO.common_prefix_len(&ServiceId(b)), 255);
    }

    #[test]
    fn flow_id_text_and_zero() {
        assert_eq!(FlowId::new(0), None);
        let f: FlowId = "0x1a2b".parse().unwrap();
        assert_eq!(f.get(), 0x1a2b);
        assert_eq!(f.to_string(), "00001a2b");
        assert_eq!("0".parse::<FlowId>(), Err(ParseIdError::ZeroFlowId));
        assert!(matches!(
            "123456789".parse::<FlowId>(),
            Err(ParseIdError::BadFlowId(_))
        ));
    }

    #[test]
    fn serde_uses_text_form() {
        let p: ServicePrefix = "beef/16".parse().unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"beef/16\"");
        assert_eq!(serde_json::from_str::<ServicePrefix>(&json).unwrap(), p);
        assert!(serde_json::from_str::<ServiceId>("\"xyz\"").is_err());
        let f = FlowId::new(7).unwrap();
        assert_eq!(
            serde_json::from_str::<FlowId>(&serde_json::to_string(&f).unwrap()).unwrap(),
            f
        );
    }
}
