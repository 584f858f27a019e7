//! Entries that expire, kept in the order they do.
//!
//! The resolution cache and the rules adopted from a previous run can hold
//! as many entries as the host has services, and servd asks for its next
//! deadline after every datagram it handles. A walk over every entry there
//! made each datagram cost the size of the cache; here the earliest
//! deadline is the first entry of an ordered set, and the entries that are
//! due come off its front.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Values by key, each with a deadline: lookups by key, the earliest
/// deadline and the due entries in logarithmic time.
#[derive(Debug)]
pub struct Deadlines<K, V = ()> {
    entries: HashMap<K, (Instant, V)>,
    order: BTreeSet<(Instant, K)>,
}

impl<K, V> Default for Deadlines<K, V> {
    fn default() -> Self {
        Deadlines {
            entries: HashMap::new(),
            order: BTreeSet::new(),
        }
    }
}

impl<K: Copy + Eq + Hash + Ord, V> Deadlines<K, V> {
    /// Sets `key`'s value and deadline; returns what it had.
    pub fn insert(&mut self, key: K, at: Instant, value: V) -> Option<(Instant, V)> {
        let old = self.entries.insert(key, (at, value));
        if let Some((was, _)) = &old {
            self.order.remove(&(*was, key));
        }
        self.order.insert((at, key));
        old
    }

    /// Takes `key` out.
    pub fn remove(&mut self, key: &K) -> Option<(Instant, V)> {
        let (at, value) = self.entries.remove(key)?;
        self.order.remove(&(at, *key));
        Some((at, value))
    }

    /// Whether `key` has an entry.
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.order.first().map(|&(at, _)| at)
    }

    /// Takes out the entry with the earliest deadline, if that is `now` or
    /// earlier.
    pub fn pop_due(&mut self, now: Instant) -> Option<(K, V)> {
        let &(at, key) = self.order.first().filter(|(at, _)| *at <= now)?;
        self.order.remove(&(at, key));
        self.entries.remove(&key).map(|(_, value)| (key, value))
    }

    /// Takes out the entry with the earliest deadline, due or not (to make
    /// room when full).
    pub fn pop_first(&mut self) -> Option<(K, V)> {
        let (_, key) = self.order.pop_first()?;
        self.entries.remove(&key).map(|(_, value)| (key, value))
    }

    /// Takes out every entry, in deadline order.
    pub fn take_all(&mut self) -> Vec<(K, V)> {
        let mut entries = std::mem::take(&mut self.entries);
        std::mem::take(&mut self.order)
            .into_iter()
            .filter_map(|(_, key)| entries.remove(&key).map(|(_, value)| (key, value)))
            .collect()
    }

    /// Forgets every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadlines_come_due_in_order_and_follow_updates() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut deadlines: Deadlines<u32, char> = Deadlines::default();
        deadlines.insert(1, at(30), 'a');
        deadlines.insert(2, at(10), 'b');
        deadlines.insert(3, at(20), 'c');
        assert_eq!(deadlines.next(), Some(at(10)));
        // Moving a deadline moves the entry; removing one forgets it.
        assert_eq!(deadlines.insert(2, at(40), 'B'), Some((at(10), 'b')));
        assert_eq!(deadlines.next(), Some(at(20)));
        assert_eq!(deadlines.remove(&3), Some((at(20), 'c')));
        assert_eq!(deadlines.remove(&3), None);
        assert_eq!(deadlines.pop_due(at(29)), None);
        assert_eq!(deadlines.pop_due(at(100)), Some((1, 'a')));
        assert_eq!(deadlines.pop_due(at(100)), Some((2, 'B')));
        assert_eq!(deadlines.pop_due(at(100)), None);
        assert!(deadlines.is_empty() && deadlines.next().is_none());
        deadlines.insert(5, at(2), 'e');
        deadlines.insert(4, at(1), 'd');
        deadlines.insert(6, at(3), 'f');
        assert!(deadlines.contains(&4) && !deadlines.contains(&1));
        assert_eq!(deadlines.pop_first(), Some((4, 'd')));
        assert_eq!(deadlines.take_all(), [(5, 'e'), (6, 'f')]);
        assert_eq!(deadlines.pop_first(), None);
        assert_eq!((deadlines.len(), deadlines.next()), (0, None));
    }
}
