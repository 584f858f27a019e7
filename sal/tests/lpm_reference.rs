//! `PrefixTrie` against a naive linear-scan reference: random tables of nested
//! and overlapping prefixes (including /0 and /256), interleaved inserts and
//! removals, and lookups of random keys and of keys under stored prefixes.

use proptest::prelude::*;
use proptest::sample::Index;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sal::table::PrefixTrie;
use sal::{ServiceId, ServicePrefix};

/// The obviously correct model: a list of (prefix, value), scanned in full.
#[derive(Debug, Default)]
struct Reference {
    entries: Vec<(ServicePrefix, u32)>,
}

impl Reference {
    fn insert(&mut self, prefix: ServicePrefix, value: u32) -> Option<u32> {
        match self.entries.iter_mut().find(|(p, _)| *p == prefix) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                self.entries.push((prefix, value));
                None
            }
        }
    }

    fn remove(&mut self, prefix: &ServicePrefix) -> Option<u32> {
        let at = self.entries.iter().position(|(p, _)| p == prefix)?;
        Some(self.entries.swap_remove(at).1)
    }

    fn get(&self, prefix: &ServicePrefix) -> Option<u32> {
        self.entries
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|&(_, v)| v)
    }

    fn longest_match(&self, key: &ServiceId) -> Option<(u16, u32)> {
        self.entries
            .iter()
            .filter(|(p, _)| p.contains(key))
            .max_by_key(|(p, _)| p.len())
            .map(|&(p, v)| (p.len(), v))
    }
}

/// Bits `0..len` from `high`, the rest from `low`.
fn splice(high: &[u8; 32], low: &[u8; 32], len: u16) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        let bit_start = (i * 8) as u16;
        let keep = len.saturating_sub(bit_start).min(8);
        let mask = if keep == 8 { 0xff } else { !(0xffu8 >> keep) };
        out[i] = (high[i] & mask) | (low[i] & !mask);
    }
    out
}

fn flip_bit(bytes: &[u8; 32], bit: u16) -> [u8; 32] {
    let mut out = *bytes;
    out[usize::from(bit / 8)] ^= 0x80 >> (bit % 8);
    out
}

/// Prefix lengths with weight on the edges: /0, /256, byte boundaries and
/// one bit either side of them (the trie's strides are bytes).
fn prefix_len() -> impl Strategy<Value = u16> {
    prop_oneof![
        1 => Just(0u16),
        1 => Just(256u16),
        3 => (0u16..=32).prop_map(|k| k * 8),
        2 => (1u16..=32).prop_map(|k| k * 8 - 1),
        2 => (0u16..32).prop_map(|k| k * 8 + 1),
        4 => 0u16..=256,
    ]
}

/// A few base IDs that share leading bits with the first, so that prefixes
/// taken from them at many lengths nest and overlap.
fn bases() -> impl Strategy<Value = Vec<[u8; 32]>> {
    let first = prop_oneof![
        1 => Just([0u8; 32]),
        1 => Just([0xffu8; 32]),
        6 => any::<[u8; 32]>(),
    ];
    (
        first,
        prop::collection::vec((0u16..=256, any::<[u8; 32]>()), 0..4),
    )
        .prop_map(|(first, others)| {
            let mut bases = vec![first];
            for (shared, noise) in others {
                bases.push(splice(&first, &noise, shared));
            }
            bases
        })
}

#[derive(Debug, Clone)]
enum Key {
    Random([u8; 32]),
    /// Under the prefix (base, len), low bits random.
    Under(Index, u16, [u8; 32]),
    /// Matches (base, len) in its first `len` bits and differs in the next one.
    JustPast(Index, u16),
    /// Under a currently stored prefix, low bits random.
    UnderStored(Index, [u8; 32]),
}

#[derive(Debug, Clone)]
enum Op {
    Insert(Index, u16, u32),
    Remove(Index, u16),
    RemoveStored(Index),
    Get(Index, u16),
    Lookup(Key),
}

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        1 => any::<[u8; 32]>().prop_map(Key::Random),
        2 => (any::<Index>(), prefix_len(), any::<[u8; 32]>())
            .prop_map(|(b, l, n)| Key::Under(b, l, n)),
        1 => (any::<Index>(), prefix_len()).prop_map(|(b, l)| Key::JustPast(b, l)),
        2 => (any::<Index>(), any::<[u8; 32]>()).prop_map(|(i, n)| Key::UnderStored(i, n)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<Index>(), prefix_len(), any::<u32>()).prop_map(|(b, l, v)| Op::Insert(b, l, v)),
        2 => (any::<Index>(), prefix_len()).prop_map(|(b, l)| Op::Remove(b, l)),
        2 => any::<Index>().prop_map(Op::RemoveStored),
        1 => (any::<Index>(), prefix_len()).prop_map(|(b, l)| Op::Get(b, l)),
        5 => key().prop_map(Op::Lookup),
    ]
}

fn prefix_of(bases: &[[u8; 32]], base: &Index, len: u16) -> ServicePrefix {
    ServicePrefix::new(ServiceId::from_bytes(*base.get(bases)), len)
}

fn resolve_key(bases: &[[u8; 32]], reference: &Reference, key: &Key) -> ServiceId {
    let bytes = match key {
        Key::Random(bytes) => *bytes,
        Key::Under(base, len, noise) => splice(base.get(bases), noise, *len),
        Key::JustPast(base, len) => {
            let base = base.get(bases);
            if *len < 256 {
                flip_bit(base, *len)
            } else {
                *base
            }
        }
        Key::UnderStored(pick, noise) => {
            if reference.entries.is_empty() {
                *noise
            } else {
                let (prefix, _) = pick.get(&reference.entries);
                splice(prefix.id().as_bytes(), noise, prefix.len())
            }
        }
    };
    ServiceId::from_bytes(bytes)
}

fn check_lookup(trie: &PrefixTrie<u32>, reference: &Reference, key: &ServiceId) {
    let got = trie.longest_match(key).map(|(len, &v)| (len, v));
    assert_eq!(
        got,
        reference.longest_match(key),
        "longest_match({key:#}) with table {:?}",
        reference.entries
    );
}

/// After every operation: sizes agree and every stored prefix is found exactly.
fn check_all(trie: &PrefixTrie<u32>, reference: &Reference) {
    assert_eq!(trie.len(), reference.entries.len());
    assert_eq!(trie.is_empty(), reference.entries.is_empty());
    for (prefix, value) in &reference.entries {
        assert_eq!(trie.get(prefix), Some(value), "get({prefix})");
    }
}

fn run(bases: &[[u8; 32]], ops: &[Op]) {
    let mut trie = PrefixTrie::new();
    let mut reference = Reference::default();
    for op in ops {
        match op {
            Op::Insert(base, len, value) => {
                let prefix = prefix_of(bases, base, *len);
                assert_eq!(
                    trie.insert(&prefix, *value),
                    reference.insert(prefix, *value),
                    "insert({prefix})"
                );
            }
            Op::Remove(base, len) => {
                let prefix = prefix_of(bases, base, *len);
                assert_eq!(
                    trie.remove(&prefix),
                    reference.remove(&prefix),
                    "remove({prefix})"
                );
                assert_eq!(trie.get(&prefix), None);
            }
            Op::RemoveStored(pick) => {
                if reference.entries.is_empty() {
                    continue;
                }
                let (prefix, value) = *pick.get(&reference.entries);
                assert_eq!(trie.remove(&prefix), Some(value), "remove({prefix})");
                reference.remove(&prefix);
                assert_eq!(trie.get(&prefix), None);
                assert_eq!(trie.remove(&prefix), None, "second remove({prefix})");
            }
            Op::Get(base, len) => {
                let prefix = prefix_of(bases, base, *len);
                assert_eq!(
                    trie.get(&prefix).copied(),
                    reference.get(&prefix),
                    "get({prefix})"
                );
            }
            Op::Lookup(key) => {
                let key = resolve_key(bases, &reference, key);
                check_lookup(&trie, &reference, &key);
            }
        }
        check_all(&trie, &reference);
    }
    // A final sweep: the stored prefixes' own IDs, one bit past each, and the bases.
    let mut keys: Vec<ServiceId> = bases.iter().map(|b| ServiceId::from_bytes(*b)).collect();
    for (prefix, _) in &reference.entries {
        keys.push(*prefix.id());
        if prefix.len() < 256 {
            keys.push(ServiceId::from_bytes(flip_bit(
                prefix.id().as_bytes(),
                prefix.len(),
            )));
        }
        if prefix.len() > 0 {
            keys.push(ServiceId::from_bytes(flip_bit(
                prefix.id().as_bytes(),
                prefix.len() - 1,
            )));
        }
    }
    for key in &keys {
        check_lookup(&trie, &reference, key);
    }
    // Removing everything leaves an empty trie that matches nothing.
    for (prefix, value) in std::mem::take(&mut reference.entries) {
        assert_eq!(trie.remove(&prefix), Some(value), "drain remove({prefix})");
    }
    assert!(trie.is_empty());
    assert_eq!(trie.node_count(), 1, "only the root is left after draining");
    for key in &keys {
        assert_eq!(trie.longest_match(key), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn trie_agrees_with_linear_scan(
        bases in bases(),
        ops in prop::collection::vec(op(), 1..160),
    ) {
        run(&bases, &ops);
    }
}

/// Hand-picked shapes: /0 with /256 of the same ID, a chain of nested
/// prefixes at every length of one ID, siblings splitting at every bit.
#[test]
fn nested_chain_at_every_length() {
    let base = [0xa5u8; 32];
    let id = ServiceId::from_bytes(base);
    let mut trie = PrefixTrie::new();
    let mut reference = Reference::default();
    // Insert every other length, in a scrambled order.
    let mut lens: Vec<u16> = (0..=256).step_by(2).collect();
    lens.reverse();
    lens.rotate_left(37);
    for &len in &lens {
        let prefix = ServicePrefix::new(id, len);
        trie.insert(&prefix, u32::from(len));
        reference.insert(prefix, u32::from(len));
    }
    check_all(&trie, &reference);
    // Keys diverging from the base at every bit.
    for bit in 0..256u16 {
        let key = ServiceId::from_bytes(flip_bit(&base, bit));
        check_lookup(&trie, &reference, &key);
        assert_eq!(
            trie.longest_match(&key).map(|(l, _)| l),
            Some(bit / 2 * 2),
            "diverging at bit {bit}"
        );
    }
    check_lookup(&trie, &reference, &id);
    // Remove every third length of the chain, checking as we go.
    for &len in lens.iter().step_by(3) {
        let prefix = ServicePrefix::new(id, len);
        assert_eq!(trie.remove(&prefix), reference.remove(&prefix));
        check_all(&trie, &reference);
        for bit in (0..256u16).step_by(7) {
            check_lookup(
                &trie,
                &reference,
                &ServiceId::from_bytes(flip_bit(&base, bit)),
            );
        }
    }
}

/// A larger table than the proptest builds, from a fixed seed.
#[test]
fn large_seeded_table() {
    let mut rng = SmallRng::seed_from_u64(0x5e7a1);
    let bases: Vec<[u8; 32]> = (0..16)
        .map(|i| {
            let noise: [u8; 32] = rng.random();
            if i == 0 {
                noise
            } else {
                // Share 0..64 leading bits with base 0.
                splice(&[0x3c; 32], &noise, rng.random_range(0..64))
            }
        })
        .collect();
    let mut trie = PrefixTrie::new();
    let mut reference = Reference::default();
    for round in 0..600u32 {
        let base = ServiceId::from_bytes(bases[rng.random_range(0..bases.len())]);
        let len = match rng.random_range(0..4) {
            0 => rng.random_range(0..=32) * 8,
            _ => rng.random_range(0..=256),
        };
        let prefix = ServicePrefix::new(base, len);
        if rng.random_bool(0.25) {
            assert_eq!(trie.remove(&prefix), reference.remove(&prefix));
        } else {
            assert_eq!(trie.insert(&prefix, round), reference.insert(prefix, round));
        }
    }
    check_all(&trie, &reference);
    for _ in 0..4000 {
        let bytes = if rng.random_bool(0.2) || reference.entries.is_empty() {
            rng.random()
        } else {
            let (prefix, _) = reference.entries[rng.random_range(0..reference.entries.len())];
            splice(prefix.id().as_bytes(), &rng.random(), prefix.len())
        };
        check_lookup(&trie, &reference, &ServiceId::from_bytes(bytes));
    }
}
