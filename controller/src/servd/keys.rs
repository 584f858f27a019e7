//! Shared keys: what a controller tags its messages with, and the keys it
//! accepts tags from.
//!
//! Every key has a name (for policies and logs) and an 8-byte identifier
//! derived from its secret, which travels in each tagged datagram so that
//! the receiver knows which key to check the tag with without trying them
//! all. The identifier reveals nothing useful about the secret (it is a
//! truncated SHA-256 of a domain-separated copy of it).

use sha2::{Digest, Sha256};

/// Length of a key identifier on the wire.
pub const KEY_ID_LEN: usize = 8;
/// Shortest secret accepted: shorter ones are guessable.
pub const MIN_SECRET: usize = 16;
/// Name of the controller's own key (`servd --key-file`) in policies.
pub const OWN_KEY_NAME: &str = "domain";

/// One shared key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    name: String,
    id: [u8; KEY_ID_LEN],
    secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    // Never print the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("id", &hex(&self.id))
            .finish_non_exhaustive()
    }
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The secret, trimmed, is shorter than [`MIN_SECRET`] bytes.
    #[error("the key {name:?} is {len} bytes; use at least {MIN_SECRET} (e.g. `head -c 32 /dev/urandom | base64`)")]
    TooShort {
        /// The key's name.
        name: String,
        /// The trimmed secret's length, in bytes.
        len: usize,
    },
    /// Two keys of different names share one secret. Tags carry the key's
    /// identifier, which follows from the secret alone, so the second name
    /// could never be matched (an `[[allow]]` naming it would never apply).
    #[error("the keys {name:?} and {other:?} have the same secret; give each secret one name")]
    SameSecret {
        /// The key refused.
        name: String,
        /// The key already known with that secret.
        other: String,
    },
}

impl Key {
    /// A key named `name` with this secret; surrounding ASCII whitespace is
    /// ignored (key files end with a newline).
    pub fn new(name: impl Into<String>, secret: &[u8]) -> Result<Key, KeyError> {
        let name = name.into();
        let secret = secret.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET {
            return Err(KeyError::TooShort {
                name,
                len: secret.len(),
            });
        }
        let mut hash = Sha256::new();
        hash.update(b"servd key id\0");
        hash.update(&secret);
        let digest = hash.finalize();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        Ok(Key { name, id, secret })
    }

    /// What policies (`[[allow]] key = ...`) and logs call it: `domain` for
    /// `--key-file`'s, else its `[[key]]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The identifier carried in tagged datagrams.
    pub fn id(&self) -> [u8; KEY_ID_LEN] {
        self.id
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// The keys of one controller: the one it signs with, and every key whose
/// tags it accepts (its own included).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    signing: Option<Key>,
    accepted: Vec<Key>,
}

impl Keyring {
    /// No keys: messages go untagged, and tagged ones are dropped.
    pub fn none() -> Keyring {
        Keyring::default()
    }

    /// Signs with `key` and accepts it.
    pub fn with_signing(key: Key) -> Keyring {
        Keyring {
            accepted: vec![key.clone()],
            signing: Some(key),
        }
    }

    /// Also accepts tags made with `key` (a key of another part of the
    /// domain, named in the policy). The same key twice is accepted once;
    /// its secret under another name is refused (see
    /// [`KeyError::SameSecret`]).
    pub fn accept(&mut self, key: Key) -> Result<(), KeyError> {
        match self.accepted.iter().find(|k| k.id == key.id) {
            None => {
                self.accepted.push(key);
                Ok(())
            }
            Some(known) if known.name == key.name => Ok(()),
            Some(known) => Err(KeyError::SameSecret {
                name: key.name,
                other: known.name.clone(),
            }),
        }
    }

    /// The key this controller tags its messages with.
    pub fn signing(&self) -> Option<&Key> {
        self.signing.as_ref()
    }

    /// Whether any key is configured (then every message must be tagged).
    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
    }

    /// The accepted key with this identifier.
    pub fn find(&self, id: &[u8]) -> Option<&Key> {
        self.accepted.iter().find(|k| k.id[..] == *id)
    }

    /// The accepted key with this name.
    pub fn by_name(&self, name: &str) -> Option<&Key> {
        self.accepted.iter().find(|k| k.name == name)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_by_secret_and_whitespace_is_trimmed() {
        let a = Key::new("a", b"0123456789abcdef\n").unwrap();
        let b = Key::new("b", b"  0123456789abcdef").unwrap();
        let c = Key::new("c", b"0123456789abcdeg").unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert!(matches!(
            Key::new("short", b"tooshort"),
            Err(KeyError::TooShort { len: 8, .. })
        ));
        assert!(
            !format!("{a:?}").contains("0123"),
            "the secret is not printed"
        );
        let mut ring = Keyring::with_signing(a.clone());
        assert!(matches!(
            ring.accept(b),
            Err(KeyError::SameSecret { name, other }) if name == "b" && other == "a"
        ));
        ring.accept(a.clone()).expect("the same key again");
        ring.accept(c.clone()).expect("another secret");
        assert_eq!(ring.find(&c.id()).map(Key::name), Some("c"));
        assert_eq!(ring.by_name("a").map(Key::id), Some(a.id()));
        assert_eq!(ring.signing().map(Key::name), Some("a"));
    }
}
