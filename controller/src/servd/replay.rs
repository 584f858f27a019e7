//! Replay protection for tagged datagrams.
//!
//! A tag proves who made a datagram, not when: without more, a captured
//! withdrawal can be sent again later and remove a live route. Every tagged
//! datagram therefore carries the sender's clock and a sequence number
//! ([`super::wire::Stamp`]), and a receiver accepts it only
//! - when its timestamp is within [`WINDOW_MS`] of the receiver's own clock
//!   (so a capture is useless after that long, whatever else happens), and
//! - when its sequence number is new for its sender, where a sender is one
//!   run of one controller: (key identifier, epoch). Numbers above the
//!   highest seen are new; below it, a bitmap of the last [`REORDER`]
//!   numbers (as IPsec's anti-replay window) lets datagrams reordered by the
//!   network through once each.
//!
//! A sender's state is forgotten once it has been silent for twice the
//! window: anything it sent before then is stale by timestamp anyway.
//! The number of senders remembered is bounded; when the table is full of
//! live senders, datagrams from new ones are refused (and counted) rather
//! than evicting a sender whose old datagrams could then be replayed.

use std::collections::HashMap;

use super::keys::KEY_ID_LEN;
use super::wire::Stamp;

/// Largest difference between a datagram's timestamp and the receiver's
/// clock, either way, in milliseconds (30 s).
pub const WINDOW_MS: u64 = 30_000;
/// How far below the highest sequence number a late datagram may be.
pub const REORDER: u64 = 64;
/// Senders remembered at once, by default.
pub const DEFAULT_MAX_SENDERS: usize = 100_000;

/// Why a tagged datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The timestamp is more than [`WINDOW_MS`] away from the receiver's
    /// clock, either way.
    #[error("timestamp more than 30 s away from this controller's clock")]
    Stale,
    /// The sequence number was already accepted from this sender, or is too
    /// far ([`REORDER`] or more) below its highest to tell.
    #[error("sequence number already seen (a replay)")]
    Replayed,
    /// A new sender while the table is full of live ones.
    #[error("too many senders to remember")]
    Full,
}

/// What is remembered of one sender.
#[derive(Debug, Clone, Copy)]
struct Window {
    highest: u64,
    /// Bit i set: `highest - i` was seen.
    seen: u64,
    /// Receiver clock when the sender was last heard (Unix ms).
    last_heard_ms: u64,
}

/// The sequence windows of every sender heard recently.
#[derive(Debug)]
pub struct ReplayGuard {
    senders: HashMap<([u8; KEY_ID_LEN], u64), Window>,
    max_senders: usize,
    next_purge_ms: u64,
}

impl Default for ReplayGuard {
    fn default() -> ReplayGuard {
        ReplayGuard::new(DEFAULT_MAX_SENDERS)
    }
}

impl ReplayGuard {
    /// A guard remembering at most `max_senders` senders.
    pub fn new(max_senders: usize) -> ReplayGuard {
        ReplayGuard {
            senders: HashMap::new(),
            max_senders: max_senders.max(1),
            next_purge_ms: 0,
        }
    }

    /// Senders currently remembered.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether no sender is remembered.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Accepts a datagram stamped `stamp` from the run `epoch` of the
    /// holder of key `key_id`, at receiver time `now_ms`, and remembers it;
    /// or says why not (and remembers nothing).
    pub fn check(
        &mut self,
        key_id: [u8; KEY_ID_LEN],
        epoch: u64,
        stamp: Stamp,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        if stamp.timestamp_ms.abs_diff(now_ms) > WINDOW_MS {
            return Err(ReplayError::Stale);
        }
        if now_ms >= self.next_purge_ms {
            self.purge(now_ms);
        }
        let sequence = stamp.sequence;
        let id = (key_id, epoch);
        let Some(window) = self.senders.get_mut(&id) else {
            if self.senders.len() >= self.max_senders {
                self.purge(now_ms);
                if self.senders.len() >= self.max_senders {
                    return Err(ReplayError::Full);
                }
            }
            self.senders.insert(
                id,
                Window {
                    highest: sequence,
                    seen: 1,
                    last_heard_ms: now_ms,
                },
            );
            return Ok(());
        };
        if sequence > window.highest {
            let shift = sequence - window.highest;
            window.seen = if shift >= REORDER {
                0
            } else {
                window.seen << shift
            };
            window.seen |= 1;
            window.highest = sequence;
        } else {
            let age = window.highest - sequence;
            if age >= REORDER || window.seen & (1 << age) != 0 {
                return Err(ReplayError::Replayed);
            }
            window.seen |= 1 << age;
        }
        window.last_heard_ms = window.last_heard_ms.max(now_ms);
        Ok(())
    }

    /// Forgets senders silent for more than twice the window.
    pub fn purge(&mut self, now_ms: u64) {
        self.senders
            .retain(|_, w| w.last_heard_ms.saturating_add(2 * WINDOW_MS) > now_ms);
        self.next_purge_ms = now_ms.saturating_add(WINDOW_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const KEY: [u8; KEY_ID_LEN] = [1; KEY_ID_LEN];

    fn at(sequence: u64) -> Stamp {
        Stamp {
            timestamp_ms: NOW,
            sequence,
        }
    }

    #[test]
    fn each_sequence_number_is_accepted_once_even_out_of_order() {
        let mut guard = ReplayGuard::default();
        for sequence in [5, 6, 9, 7, 100, 99, 37] {
            assert_eq!(guard.check(KEY, 1, at(sequence), NOW), Ok(()), "{sequence}");
        }
        for sequence in [5, 6, 9, 100, 99, 37] {
            assert_eq!(
                guard.check(KEY, 1, at(sequence), NOW),
                Err(ReplayError::Replayed),
                "{sequence}"
            );
        }
        // Too far behind to tell: refused.
        assert_eq!(guard.check(KEY, 1, at(36), NOW), Err(ReplayError::Replayed));
        assert_eq!(guard.check(KEY, 1, at(38), NOW), Ok(()));
        // Another run of the same key, or another key, has its own numbers.
        assert_eq!(guard.check(KEY, 2, at(5), NOW), Ok(()));
        assert_eq!(guard.check([2; KEY_ID_LEN], 1, at(5), NOW), Ok(()));
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let mut guard = ReplayGuard::default();
        let old = Stamp {
            timestamp_ms: NOW - WINDOW_MS - 1,
            sequence: 1,
        };
        let future = Stamp {
            timestamp_ms: NOW + WINDOW_MS + 1,
            sequence: 2,
        };
        assert_eq!(guard.check(KEY, 1, old, NOW), Err(ReplayError::Stale));
        assert_eq!(guard.check(KEY, 1, future, NOW), Err(ReplayError::Stale));
        let edge = Stamp {
            timestamp_ms: NOW - WINDOW_MS,
            sequence: 3,
        };
        assert_eq!(guard.check(KEY, 1, edge, NOW), Ok(()));
    }

    #[test]
    fn silent_senders_are_forgotten_and_the_table_is_bounded() {
        let mut guard = ReplayGuard::new(2);
        assert_eq!(guard.check(KEY, 1, at(1), NOW), Ok(()));
        assert_eq!(guard.check(KEY, 2, at(1), NOW), Ok(()));
        assert_eq!(guard.check(KEY, 3, at(1), NOW), Err(ReplayError::Full));
        assert_eq!(guard.len(), 2);
        // A minute later both are forgotten; a replay of what they sent
        // then is stale by its timestamp.
        let later = NOW + 2 * WINDOW_MS + 1;
        assert_eq!(guard.check(KEY, 1, at(1), later), Err(ReplayError::Stale));
        let fresh = Stamp {
            timestamp_ms: later,
            sequence: 1,
        };
        assert_eq!(guard.check(KEY, 3, fresh, later), Ok(()));
        assert_eq!(guard.len(), 1);
    }
}
