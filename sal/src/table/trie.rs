//! A longest-prefix-match trie over 256-bit keys.
//!
//! The structure is a *tree bitmap* (Eatherton, Varghese and Dittia, 2004) with
//! byte-aligned strides, byte-granular path compression and single-prefix
//! leaves:
//!
//! - Every inner node sits at a depth `D` that is a multiple of 8 (0..=248)
//!   and consumes key byte `D / 8`. Prefixes of length `D..D + 8` that end
//!   inside the node are recorded in a 255-bit *internal* bitmap (a binary
//!   heap numbering of the prefixes of length 0..7 of that byte); children are
//!   recorded in a 256-bit *child* bitmap. Values and children live in dense
//!   arrays indexed by popcount rank.
//! - A child is either an inner node or a [`Leaf`]: one prefix of any length
//!   from `D + 8` on, stored with its whole path. A lone /200 below a node at
//!   depth 16 is one small leaf, not a chain of nodes.
//! - An inner child may sit deeper than `D + 8`: whole bytes that all keys
//!   below it share are skipped (path compression). Each node stores its path
//!   (the first `D` bits of every key below it), but a lookup reads it only
//!   for a node that skips bytes, which its parent's child slot records: for a
//!   child exactly one byte down, the slot has already checked the only new
//!   byte.
//!
//! Lookup cost is memory latency (dependent cache misses), so the layout
//! serves it:
//!
//! - Random 256-bit prefixes are dense near the root and alone below: at a
//!   million of them, nine in ten sit alone in a slot of a depth-16 node. As
//!   leaves, in their own arena, they leave about a tenth as many inner nodes.
//! - An inner node is split over three arenas indexed alike: its child map,
//!   its prefixes ([`Internal`]: internal map, ranks and values, one cache
//!   line) and the rest ([`Node`]). A lookup that ends at a node, as most
//!   lookups of random keys do at depth 16, reads its 32-byte child map, and
//!   its prefixes only if it holds some, which the parent's slot records. The
//!   child maps of all inner nodes of a million random prefixes take under
//!   3 MB.
//! - A child slot keeps up to 24 bits of a leaf past the slot ([`Slot`]), so
//!   a key that reaches a leaf's slot is mostly ruled out without reading it.
//! - A *top index* ([`TopEntry`], built once the trie is big enough) maps the
//!   first 16 bits of a key to where a lookup stands after them, with a copy
//!   of the child map of the node at depth 16, all in one cache line. It
//!   replaces the two top levels, the most instruction-heavy steps, and the
//!   dependent load of that child map: a lookup of a random key in a large
//!   trie mostly takes one cache miss.
//! - Popcount ranks use per-node running counts, so each rank is one popcount
//!   (the x86-64 baseline has no popcount instruction).
//!
//! Lookups never allocate. Inserts and removals keep the tree canonical: every
//! inner node but the root holds at least two entries (values and children
//! together). A node left empty is removed, one left with a single child is
//! replaced by that child, and one left with a single value becomes a leaf.

use crate::id::{ServiceId, ServicePrefix, SERVICE_ID_LEN};

/// Index of an inner node in the node arenas. The root is always index 0.
type NodeIndex = u32;
/// Index of a leaf in the leaf arena.
type LeafIndex = u32;
const ROOT: NodeIndex = 0;

/// A 256-bit bitmap, bit `i` is `words[i / 64] >> (i % 64) & 1`. Aligned so
/// that one never straddles two cache lines.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
struct Bitmap([u64; 4]);

impl Bitmap {
    #[inline]
    fn get(&self, bit: usize) -> bool {
        self.0[bit / 64] >> (bit % 64) & 1 != 0
    }

    #[inline]
    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    #[inline]
    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }

    /// Number of set bits below `bit`: the index of `bit`'s entry in a dense array.
    #[inline]
    fn rank(&self, bit: usize) -> usize {
        let word = bit / 64;
        let below = self.0[..word]
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>();
        below + (self.0[word] & ((1u64 << (bit % 64)) - 1)).count_ones() as usize
    }

    /// For each word, the number of bits set in the words before it (at most
    /// 192, so a byte holds it).
    fn rank_bases(&self) -> [u8; 4] {
        let mut bases = [0u8; 4];
        for word in 1..4 {
            bases[word] = bases[word - 1] + self.0[word - 1].count_ones() as u8;
        }
        bases
    }

    /// [`Bitmap::rank`] from the map's [`Bitmap::rank_bases`]: one popcount
    /// instead of up to four, which matters without a popcount instruction
    /// (the x86-64 baseline has none).
    #[inline]
    fn rank_with(&self, bases: &[u8; 4], bit: usize) -> usize {
        let word = bit / 64;
        usize::from(bases[word]) + (self.0[word] & ((1u64 << (bit % 64)) - 1)).count_ones() as usize
    }

    /// Index of the highest bit set in both `self` and `mask`.
    #[inline]
    fn highest_common(&self, mask: &Bitmap) -> Option<usize> {
        (0..4).rev().find_map(|i| {
            let both = self.0[i] & mask.0[i];
            (both != 0).then(|| i * 64 + 63 - both.leading_zeros() as usize)
        })
    }

    fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    /// Of an internal map: which keys its prefixes can match, by the top four
    /// bits of the node's key byte (bit `j` for bytes `j << 4..(j + 1) << 4`).
    fn summary(&self) -> u16 {
        let mut summary = 0u32;
        for position in self.ones() {
            let (extra, byte) = position_prefix(position);
            let groups = 1u32 << 4u16.saturating_sub(extra);
            summary |= ((1 << groups) - 1) << (byte >> 4);
        }
        summary as u16
    }

    /// Indices of the set bits, in increasing order.
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                let bit = rest.trailing_zeros() as usize;
                rest &= rest.wrapping_sub(1);
                (bit < 64).then_some(i * 64 + bit)
            })
        })
    }

    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Index of the single set bit, if exactly one is set.
    fn only(&self) -> Option<usize> {
        (self.count() == 1).then(|| {
            let word = self.0.iter().position(|&w| w != 0).unwrap_or(0);
            word * 64 + self.0[word].trailing_zeros() as usize
        })
    }
}

/// Heap position, inside a node, of a prefix that ends `extra` bits (0..=7)
/// past the node's depth and whose next byte is `byte`.
#[inline]
const fn internal_position(extra: u16, byte: u8) -> usize {
    (1usize << extra) - 1 + (byte as usize >> (8 - extra))
}

/// Inverse of [`internal_position`]: the `extra` bits of a position, and its
/// byte (the prefix's bits, the rest zero).
#[inline]
fn position_prefix(position: usize) -> (u16, u8) {
    let extra = (position + 1).ilog2();
    let bits = position + 1 - (1 << extra);
    (extra as u16, (bits << (8 - extra)) as u8)
}

/// For each byte, the internal positions of the eight prefixes (0..=7 bits of
/// it) that it extends. ANDed with a node's internal bitmap, the highest bit
/// left is the longest internal match, since positions grow with length.
static CANDIDATES: [Bitmap; 256] = candidate_table();

const fn candidate_table() -> [Bitmap; 256] {
    let mut table = [Bitmap([0; 4]); 256];
    let mut byte = 0;
    while byte < 256 {
        let mut extra = 0;
        while extra < 8 {
            let position = internal_position(extra, byte as u8);
            table[byte].0[position / 64] |= 1 << (position % 64);
            extra += 1;
        }
        byte += 1;
    }
    table
}

/// Whether `key` starts with the first `len` bits of `path`.
#[inline]
fn path_matches(path: &[u64; 4], key: &[u64; 4], len: u16) -> bool {
    let mut differ = 0;
    for i in 0..4 {
        // The bits of word `i` that lie within the first `len` bits.
        let bits = u32::from(len).saturating_sub(64 * i as u32).min(64);
        let mask = u64::MAX.checked_shl(64 - bits).unwrap_or(0);
        differ |= (path[i] ^ key[i]) & mask;
    }
    differ == 0
}

/// Number of leading bits `a` and `b` share.
fn common_bits(a: &[u64; 4], b: &[u64; 4]) -> u16 {
    ServiceId::from_words(*a).common_prefix_len(&ServiceId::from_words(*b))
}

/// A key as four big-endian words, as [`ServiceId::to_words`], but inlined
/// into lookups (a generic caller in another crate could not inline that).
#[inline]
fn key_words(key: &ServiceId) -> [u64; 4] {
    let bytes = key.as_bytes();
    std::array::from_fn(|i| {
        let word: [u8; 8] = std::array::from_fn(|j| bytes[8 * i + j]);
        u64::from_be_bytes(word)
    })
}

/// Key byte `index` of a key held as big-endian words.
#[inline]
fn key_byte(key: &[u64; 4], index: usize) -> u8 {
    (key[index / 8] >> (56 - 8 * (index % 8))) as u8
}

/// What a child slot holds.
#[derive(Clone, Copy)]
enum ChildRef {
    Node(NodeIndex),
    Leaf(LeafIndex),
}

/// A child slot's content packed in 4 bytes, so that child arrays stay small:
/// a leaf, or an inner node with two facts a lookup needs before it reads the
/// node: whether it skips bytes (sits deeper than one byte below the node whose
/// slot this is), and whether it holds prefixes (its internal bitmap is not
/// empty). [`PrefixTrie::set_child`] computes them; every change that can alter
/// them goes through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Child(u32);

impl Child {
    /// No child. This would be the root, which is nobody's child.
    const NONE: Child = Child(0);
    const LEAF: u32 = 1 << 31;
    const SKIPS: u32 = 1 << 30;
    const HAS_VALUES: u32 = 1 << 29;
    /// Arena indices stay below this.
    const INDEX_LIMIT: u32 = Child::HAS_VALUES;

    fn leaf(index: LeafIndex) -> Child {
        Child(index | Child::LEAF)
    }

    fn node(index: NodeIndex, skips: bool, has_values: bool) -> Child {
        let flag = |set: bool, bit: u32| if set { bit } else { 0 };
        Child(index | flag(skips, Child::SKIPS) | flag(has_values, Child::HAS_VALUES))
    }

    #[inline]
    fn unpack(self) -> ChildRef {
        let index = self.0 & (Child::INDEX_LIMIT - 1);
        if self.0 & Child::LEAF == 0 {
            ChildRef::Node(index)
        } else {
            ChildRef::Leaf(index)
        }
    }

    /// Whether this is an inner node that skips bytes.
    #[inline]
    fn skips(self) -> bool {
        self.0 & Child::SKIPS != 0
    }

    /// Whether this is an inner node that holds prefixes.
    #[inline]
    fn has_values(self) -> bool {
        self.0 & Child::HAS_VALUES != 0
    }
}

/// A child slot as a node stores it: the child and, for a leaf, up to 24 of
/// its bits past the slot's byte. A lookup checks those against the key
/// before it reads the leaf, which a random key reaching the slot almost never
/// needs then: that saves a cache miss on most lookups that reach a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    child: Child,
    /// The leaf's bits from the byte after the slot's on, `n` of them (0..=24)
    /// in the top bits; `n` in the low byte.
    check: u32,
}

impl Slot {
    /// A slot without a check (for inner nodes).
    fn unchecked(child: Child) -> Slot {
        Slot { child, check: 0 }
    }

    /// The slot of `leaf` in a node at `depth`. (Only the top index asks for
    /// a leaf that ends before `depth + 8`; it gets no check bits.)
    fn leaf<V>(index: LeafIndex, leaf: &Leaf<V>, depth: u16) -> Slot {
        let from = depth + 8;
        let checked = leaf.len.saturating_sub(from).min(24);
        let bits = next_bits(&ServiceId::from_words(leaf.path), from);
        let mask = u32::MAX.checked_shl(32 - u32::from(checked)).unwrap_or(0);
        Slot {
            child: Child::leaf(index),
            check: bits & mask | u32::from(checked),
        }
    }

    /// Whether `key`, which reached this slot of a node at `depth`, may match
    /// the leaf in it (always true for inner nodes).
    #[inline]
    fn admits(&self, key: &ServiceId, depth: u16) -> bool {
        let mask = u32::MAX.checked_shl(32 - (self.check & 0xff)).unwrap_or(0);
        (next_bits(key, depth + 8) ^ self.check) & mask == 0
    }
}

/// The 24 bits of `key` from bit `from` (a multiple of 8) on, zero past the
/// key's end, in the top bits.
#[inline]
fn next_bits(key: &ServiceId, from: u16) -> u32 {
    let bytes = key.as_bytes();
    let byte = |i: usize| bytes.get(usize::from(from / 8) + i).copied().unwrap_or(0);
    u32::from_be_bytes([byte(0), byte(1), byte(2), 0])
}

/// Where a lookup stands once it has matched the first 16 bits of its key:
/// an entry of the top index (see [`PrefixTrie`]). One cache line, which
/// holds all a lookup of a random key in a large trie usually needs: it
/// mostly ends at the node at depth 16, whose child map is copied here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
struct TopEntry {
    /// If `next` is the node at depth 16: a copy of its child map.
    child_map: Bitmap,
    /// If `next` is the node at depth 16: the [`Bitmap::summary`] of its
    /// internal map. A lookup reads the map only if the key's summary bit is
    /// set: at a million random prefixes, four in ten of these nodes hold
    /// some, but a random key can match one of them about one time in ten.
    summary: u16,
    /// The first leaf, or node at depth 16 or more, on the way, or
    /// [`Child::NONE`]. Its flags are as if its parent sat at depth 8.
    next: Child,
    /// The node holding the longest matching prefix shorter than 16 bits (the
    /// root, or a node at depth 8), or [`TopEntry::NO_NODE`].
    best_node: NodeIndex,
    /// That prefix's heap position in `best_node`.
    best_position: u8,
    /// For a leaf `next`, the first 16 bits of its [`Slot`] check and their
    /// number (a leaf check as if `next` sat in a node at depth 8).
    check_len: u8,
    check: u16,
}

impl TopEntry {
    const NO_NODE: NodeIndex = NodeIndex::MAX;
    const EMPTY: TopEntry = TopEntry {
        child_map: Bitmap([0; 4]),
        summary: 0,
        next: Child::NONE,
        best_node: TopEntry::NO_NODE,
        best_position: 0,
        check_len: 0,
        check: 0,
    };

    /// `next` and its check as a slot of a node at depth 8.
    #[inline]
    fn slot(&self) -> Slot {
        Slot {
            child: self.next,
            check: u32::from(self.check) << 16 | u32::from(self.check_len),
        }
    }

    /// Index of the entry of keys starting with `bytes`.
    #[inline]
    fn index(bytes: &[u8; SERVICE_ID_LEN]) -> usize {
        usize::from(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// The longest matching prefix shorter than 16 bits, as the node holding
    /// it, its length and its heap position.
    fn best(&self) -> Option<(NodeIndex, u16, usize)> {
        let position = usize::from(self.best_position);
        let depth = if self.best_node == ROOT { 0 } else { 8 };
        (self.best_node != TopEntry::NO_NODE).then_some((
            self.best_node,
            depth + position_prefix(position).0,
            position,
        ))
    }
}

/// The top index is built once the trie holds this many prefixes, and
/// dropped when it falls under half of it: below that, the upper levels of
/// the tree stay in cache anyway and the index would cost more memory (4 MiB)
/// than it saves time.
const TOP_INDEX_MIN_LEN: usize = 16_384;

/// Where following a child slot leads a lookup.
enum Step<'a, V> {
    /// To inner node `index` at `depth`. Its internal map may hold a match
    /// only if bit `byte >> 4` of `filter` is set, `byte` being the key's byte
    /// at `depth` (a [`Bitmap::summary`], or all bits or none).
    Node {
        index: NodeIndex,
        depth: u16,
        filter: u16,
    },
    /// To a leaf that matches: the answer.
    Found(u16, &'a V),
    /// Nowhere: the longest match so far is the answer.
    End,
}

/// A single prefix hanging from a child slot of a node at depth `D`; its
/// length is at least `D + 8`.
#[derive(Debug, Clone)]
struct Leaf<V> {
    /// The prefix bits; bits past `len` are 0.
    path: [u64; 4],
    len: u16,
    value: V,
}

impl<V> Leaf<V> {
    /// Whether this is the prefix of `len` bits of `key` (bits past `len` 0).
    fn is(&self, key: &[u64; 4], len: u16) -> bool {
        self.len == len && self.path == *key
    }
}

/// The prefixes ending in an inner node, in one cache line: a lookup reads
/// it when the node's slot says the node holds some, and then taking the
/// value costs one more cache miss (the values array), not two.
#[derive(Debug, Clone)]
#[repr(C, align(64))]
struct Internal<V> {
    /// The prefixes, by [`internal_position`].
    map: Bitmap,
    /// [`Bitmap::rank_bases`] of `map`.
    ranks: [u8; 4],
    /// Values in the order of the set bits of `map`.
    values: Vec<V>,
}

impl<V> Internal<V> {
    fn new() -> Internal<V> {
        Internal {
            map: Bitmap::default(),
            ranks: [0; 4],
            values: Vec::new(),
        }
    }

    /// The value at heap position `position`, which must be set.
    #[inline]
    fn value(&self, position: usize) -> &V {
        &self.values[self.map.rank_with(&self.ranks, position)]
    }

    fn get(&self, position: usize) -> Option<&V> {
        self.map.get(position).then(|| self.value(position))
    }

    fn get_mut(&mut self, position: usize) -> Option<&mut V> {
        let rank = self.map.rank_with(&self.ranks, position);
        self.map.get(position).then(|| &mut self.values[rank])
    }

    /// Stores `value` at `position`, returning the value it replaces.
    fn insert(&mut self, position: usize, value: V) -> Option<V> {
        let rank = self.map.rank(position);
        if self.map.get(position) {
            return Some(std::mem::replace(&mut self.values[rank], value));
        }
        self.map.set(position);
        self.ranks = self.map.rank_bases();
        self.values.reserve_exact(1);
        self.values.insert(rank, value);
        None
    }

    fn remove(&mut self, position: usize) -> Option<V> {
        if !self.map.get(position) {
            return None;
        }
        let rank = self.map.rank(position);
        self.map.clear(position);
        self.ranks = self.map.rank_bases();
        let value = self.values.remove(rank);
        self.values.shrink_to_fit();
        Some(value)
    }
}

/// An inner node but for its child map and prefixes, which live in arenas of
/// their own (see [`PrefixTrie`]). Lookups read this only to follow a child or
/// to check the path of a node that skips bytes.
#[derive(Debug, Clone)]
struct Node {
    /// Multiple of 8, 0..=248.
    depth: u16,
    /// [`Bitmap::rank_bases`] of the node's child map.
    child_ranks: [u8; 4],
    /// Children in the order of the set bits of the node's child map.
    children: Vec<Slot>,
    /// First `depth` bits of every key stored below; bits past `depth` are 0.
    path: [u64; 4],
}

impl Node {
    fn new(path: [u64; 4], depth: u16) -> Node {
        Node {
            depth,
            child_ranks: [0; 4],
            children: Vec::new(),
            path,
        }
    }

    /// Heap position of a prefix of length `len` (`depth..depth + 8`) that
    /// ends in this node.
    fn position_of(&self, key: &[u64; 4], len: u16) -> usize {
        internal_position(len - self.depth, key_byte(key, usize::from(self.depth / 8)))
    }

    /// Whether `key` is below this node, knowing that it matches the first
    /// `checked` bits.
    fn covers(&self, key: &[u64; 4], checked: u16) -> bool {
        self.depth <= checked || path_matches(&self.path, key, self.depth)
    }
}

/// A map from 256-bit prefixes to values with longest-prefix-match lookup.
///
/// See the module documentation for the structure: inner nodes split over
/// three arenas indexed alike (child maps, prefixes and the rest), leaves in a
/// fourth, and a top index over the first 16 bits of keys once the trie holds
/// `TOP_INDEX_MIN_LEN` prefixes. Inserts and removals recompute the top index
/// entries under what they changed, usually one.
#[derive(Debug, Clone)]
pub struct PrefixTrie<V> {
    /// The top index, by the first 16 bits of keys; empty while the trie holds
    /// fewer than `top_index_min_len` prefixes.
    top: Vec<TopEntry>,
    /// [`TOP_INDEX_MIN_LEN`], but for tests.
    top_index_min_len: usize,
    /// Child slots in use of each inner node, by the key byte at its depth.
    child_maps: Vec<Bitmap>,
    /// Prefixes ending in each inner node.
    internals: Vec<Internal<V>>,
    /// The rest of the inner nodes.
    nodes: Vec<Node>,
    free_nodes: Vec<NodeIndex>,
    /// `None` marks a free slot, listed in `free_leaves`.
    leaves: Vec<Option<Leaf<V>>>,
    free_leaves: Vec<LeafIndex>,
    len: usize,
}

impl<V> Default for PrefixTrie<V> {
    fn default() -> Self {
        PrefixTrie::new()
    }
}

/// Where a stored prefix lives.
enum Place {
    /// In a node's internal bitmap, at a heap position.
    Internal {
        node: NodeIndex,
        position: usize,
    },
    Leaf(LeafIndex),
}

impl<V> PrefixTrie<V> {
    /// An empty trie: just the root node, no top index until it grows.
    pub fn new() -> PrefixTrie<V> {
        PrefixTrie {
            top: Vec::new(),
            top_index_min_len: TOP_INDEX_MIN_LEN,
            child_maps: vec![Bitmap::default()],
            internals: vec![Internal::new()],
            nodes: vec![Node::new([0; 4], 0)],
            free_nodes: Vec::new(),
            leaves: Vec::new(),
            free_leaves: Vec::new(),
            len: 0,
        }
    }

    /// Number of prefixes stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no prefix is stored (not even the default `/0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of live trie nodes, inner nodes and leaves (for memory accounting).
    pub fn node_count(&self) -> usize {
        (self.nodes.len() - self.free_nodes.len()) + (self.leaves.len() - self.free_leaves.len())
    }

    /// Approximate heap bytes owned by the trie.
    pub fn memory_bytes(&self) -> usize {
        let arenas = self.top.capacity() * std::mem::size_of::<TopEntry>()
            + self.child_maps.capacity() * std::mem::size_of::<Bitmap>()
            + self.internals.capacity() * std::mem::size_of::<Internal<V>>()
            + self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.leaves.capacity() * std::mem::size_of::<Option<Leaf<V>>>()
            + (self.free_nodes.capacity() + self.free_leaves.capacity())
                * std::mem::size_of::<u32>();
        let children: usize = self
            .nodes
            .iter()
            .map(|n| n.children.capacity() * std::mem::size_of::<Slot>())
            .sum();
        let values: usize = self
            .internals
            .iter()
            .map(|i| i.values.capacity() * std::mem::size_of::<V>())
            .sum();
        arenas + children + values
    }

    /// The value of the longest stored prefix that contains `key`, and that
    /// prefix's length.
    pub fn longest_match(&self, key: &ServiceId) -> Option<(u16, &V)> {
        // Node, length and heap position of the longest match so far: its
        // value is read once, at the end.
        let mut best = None;
        let mut step = match self.top.get(TopEntry::index(key.as_bytes())) {
            Some(entry) => {
                best = entry.best();
                match entry.next.unpack() {
                    _ if entry.next == Child::NONE => Step::End,
                    // The node at depth 16, with its child map in the entry.
                    ChildRef::Node(index) if !entry.next.skips() => {
                        self.visit(index, 16, entry.summary, &entry.child_map, key, &mut best)
                    }
                    _ => self.follow(entry.slot(), 8, key),
                }
            }
            // The root's internal map is read unconditionally: it is cached.
            None => Step::Node {
                index: ROOT,
                depth: 0,
                filter: u16::MAX,
            },
        };
        while let Step::Node {
            index,
            depth,
            filter,
        } = step
        {
            let child_map = &self.child_maps[index as usize];
            step = self.visit(index, depth, filter, child_map, key, &mut best);
        }
        if let Step::Found(len, value) = step {
            return Some((len, value));
        }
        best.map(|(index, len, position)| (len, self.internals[index as usize].value(position)))
    }

    /// One step of a lookup of `key`: at node `index`, at `depth`, records in
    /// `best` the longest match among the node's prefixes (if `filter`, see
    /// [`Step::Node`], allows one) and follows the key's child slot, using
    /// `child_map`, the node's child map.
    #[inline(always)]
    fn visit<'a>(
        &'a self,
        index: NodeIndex,
        depth: u16,
        filter: u16,
        child_map: &Bitmap,
        key: &ServiceId,
        best: &mut Option<(NodeIndex, u16, usize)>,
    ) -> Step<'a, V> {
        // Depths stop at 248, so the modulo only spares a bounds check.
        let byte = usize::from(key.as_bytes()[usize::from(depth / 8) % SERVICE_ID_LEN]);
        if filter >> (byte >> 4) & 1 != 0 {
            let internal = &self.internals[index as usize].map;
            if let Some(position) = internal.highest_common(&CANDIDATES[byte]) {
                *best = Some((index, depth + position_prefix(position).0, position));
            }
        }
        if !child_map.get(byte) {
            return Step::End;
        }
        let node = &self.nodes[index as usize];
        let slot = node.children[child_map.rank_with(&node.child_ranks, byte)];
        self.follow(slot, depth, key)
    }

    /// Where `slot`, of a node at `depth` whose byte matched `key`, leads the
    /// lookup of `key`.
    #[inline]
    fn follow(&self, slot: Slot, depth: u16, key: &ServiceId) -> Step<'_, V> {
        let child = slot.child;
        let (index, depth) = match child.unpack() {
            ChildRef::Leaf(_) if !slot.admits(key, depth) => return Step::End,
            ChildRef::Leaf(leaf) => {
                let leaf = self.leaf(leaf);
                if !path_matches(&leaf.path, &key_words(key), leaf.len) {
                    return Step::End;
                }
                return Step::Found(leaf.len, &leaf.value);
            }
            // The slot matched the byte at `depth`; bytes after it need
            // checking only if the node skips some.
            ChildRef::Node(index) if child.skips() => {
                let node = &self.nodes[index as usize];
                if !path_matches(&node.path, &key_words(key), node.depth) {
                    return Step::End;
                }
                (index, node.depth)
            }
            ChildRef::Node(index) => (index, depth + 8),
        };
        Step::Node {
            index,
            depth,
            filter: if child.has_values() { u16::MAX } else { 0 },
        }
    }

    /// The value stored for exactly `prefix`.
    pub fn get(&self, prefix: &ServicePrefix) -> Option<&V> {
        match self.find(&prefix.id().to_words(), prefix.len())? {
            Place::Internal { node, position } => self.internals[node as usize].get(position),
            Place::Leaf(index) => Some(&self.leaf(index).value),
        }
    }

    /// The values of every stored prefix inside `prefix` (`prefix` itself
    /// included), in no particular order. Walks down `prefix`'s path, then
    /// visits only the subtree below it: the cost follows the prefixes
    /// inside, not the size of the trie.
    pub fn within(&self, prefix: &ServicePrefix) -> Vec<&V> {
        let key = prefix.id().to_words();
        let len = prefix.len();
        let mut found = Vec::new();
        let mut index = ROOT;
        loop {
            let depth = self.nodes[index as usize].depth;
            if len < depth + 8 {
                // `prefix` ends within this node's byte: its prefixes and
                // children whose bits under `prefix` agree with it.
                let byte = key_byte(&key, usize::from(depth / 8));
                let bits = len - depth;
                let mask = !(0xffu8.checked_shr(u32::from(bits)).unwrap_or(0));
                let internal = &self.internals[index as usize];
                for position in internal.map.ones() {
                    let (extra, first) = position_prefix(position);
                    if extra >= bits && (first ^ byte) & mask == 0 {
                        found.push(internal.value(position));
                    }
                }
                let node = &self.nodes[index as usize];
                let child_map = &self.child_maps[index as usize];
                for (rank, slot) in child_map.ones().enumerate() {
                    if (slot as u8 ^ byte) & mask == 0 {
                        self.collect(node.children[rank].child.unpack(), &mut found);
                    }
                }
                return found;
            }
            let Some(child) = self.child(index, key_byte(&key, usize::from(depth / 8))) else {
                return found;
            };
            match child {
                ChildRef::Leaf(leaf) => {
                    let leaf = self.leaf(leaf);
                    if leaf.len >= len && path_matches(&key, &leaf.path, len) {
                        found.push(&leaf.value);
                    }
                    return found;
                }
                ChildRef::Node(next) => {
                    let next_node = &self.nodes[next as usize];
                    if next_node.depth > len {
                        // Everything below skips past the end of `prefix`.
                        if path_matches(&key, &next_node.path, len) {
                            self.collect(child, &mut found);
                        }
                        return found;
                    }
                    if !next_node.covers(&key, depth + 8) {
                        return found;
                    }
                    index = next;
                }
            }
        }
    }

    /// Every value of the subtree at `child`.
    fn collect<'a>(&'a self, child: ChildRef, found: &mut Vec<&'a V>) {
        match child {
            ChildRef::Leaf(leaf) => found.push(&self.leaf(leaf).value),
            ChildRef::Node(index) => {
                found.extend(self.internals[index as usize].values.iter());
                let node = &self.nodes[index as usize];
                for slot in &node.children {
                    self.collect(slot.child.unpack(), found);
                }
            }
        }
    }

    /// Mutable access to the value stored for exactly `prefix`.
    pub fn get_mut(&mut self, prefix: &ServicePrefix) -> Option<&mut V> {
        match self.find(&prefix.id().to_words(), prefix.len())? {
            Place::Internal { node, position } => self.internals[node as usize].get_mut(position),
            Place::Leaf(index) => Some(&mut self.leaf_mut(index).value),
        }
    }

    /// Where the prefix of `len` bits of `key` is stored, if it is.
    fn find(&self, key: &[u64; 4], len: u16) -> Option<Place> {
        let mut index = ROOT;
        loop {
            let depth = self.nodes[index as usize].depth;
            if len < depth + 8 {
                let position = self.nodes[index as usize].position_of(key, len);
                return self.internals[index as usize].map.get(position).then_some(
                    Place::Internal {
                        node: index,
                        position,
                    },
                );
            }
            match self.child(index, key_byte(key, usize::from(depth / 8)))? {
                ChildRef::Leaf(leaf) => {
                    return self.leaf(leaf).is(key, len).then_some(Place::Leaf(leaf));
                }
                ChildRef::Node(child) => {
                    let child_node = &self.nodes[child as usize];
                    if child_node.depth > len || !child_node.covers(key, depth + 8) {
                        return None;
                    }
                    index = child;
                }
            }
        }
    }

    /// What slot `slot` of node `index` holds.
    fn child(&self, index: NodeIndex, slot: u8) -> Option<ChildRef> {
        let map = &self.child_maps[index as usize];
        let slot = usize::from(slot);
        map.get(slot).then(|| {
            self.nodes[index as usize].children[map.rank(slot)]
                .child
                .unpack()
        })
    }

    fn leaf(&self, index: LeafIndex) -> &Leaf<V> {
        self.leaves[index as usize]
            .as_ref()
            .expect("child slots refer to live leaves")
    }

    fn leaf_mut(&mut self, index: LeafIndex) -> &mut Leaf<V> {
        self.leaves[index as usize]
            .as_mut()
            .expect("child slots refer to live leaves")
    }

    fn alloc_node(&mut self, node: Node) -> NodeIndex {
        match self.free_nodes.pop() {
            Some(index) => {
                self.nodes[index as usize] = node;
                index
            }
            None => {
                let index = self.nodes.len() as NodeIndex;
                assert!(index < Child::INDEX_LIMIT, "trie node arena full");
                self.child_maps.push(Bitmap::default());
                self.internals.push(Internal::new());
                self.nodes.push(node);
                index
            }
        }
    }

    /// Frees node `index`, leaving its maps empty for the next user.
    fn release_node(&mut self, index: NodeIndex) {
        self.child_maps[index as usize] = Bitmap::default();
        self.internals[index as usize] = Internal::new();
        self.nodes[index as usize] = Node::new([0; 4], 0);
        self.free_nodes.push(index);
    }

    fn alloc_leaf(&mut self, leaf: Leaf<V>) -> LeafIndex {
        match self.free_leaves.pop() {
            Some(index) => {
                self.leaves[index as usize] = Some(leaf);
                index
            }
            None => {
                let index = self.leaves.len() as LeafIndex;
                assert!(index < Child::INDEX_LIMIT, "trie leaf arena full");
                self.leaves.push(Some(leaf));
                index
            }
        }
    }

    fn release_leaf(&mut self, index: LeafIndex) -> Leaf<V> {
        let leaf = self.leaves[index as usize]
            .take()
            .expect("released leaves are live");
        self.free_leaves.push(index);
        leaf
    }

    /// Puts `child` in slot `slot` of node `parent`, with the facts a lookup
    /// needs about it as they are now (see [`Child`]).
    fn set_child(&mut self, parent: NodeIndex, slot: u8, child: ChildRef) {
        let depth = self.nodes[parent as usize].depth;
        let packed = match child {
            ChildRef::Leaf(leaf) => Slot::leaf(leaf, self.leaf(leaf), depth),
            ChildRef::Node(_) => Slot::unchecked(self.pack(child, depth)),
        };
        let map = &mut self.child_maps[parent as usize];
        let node = &mut self.nodes[parent as usize];
        let slot = usize::from(slot);
        let rank = map.rank(slot);
        if map.get(slot) {
            node.children[rank] = packed;
        } else {
            map.set(slot);
            node.child_ranks = map.rank_bases();
            node.children.reserve_exact(1);
            node.children.insert(rank, packed);
        }
    }

    /// `child` as recorded in a slot of a node at `parent_depth`.
    fn pack(&self, child: ChildRef, parent_depth: u16) -> Child {
        match child {
            ChildRef::Leaf(leaf) => Child::leaf(leaf),
            ChildRef::Node(node) => Child::node(
                node,
                self.nodes[node as usize].depth > parent_depth + 8,
                !self.internals[node as usize].map.is_empty(),
            ),
        }
    }

    /// The top index entry of keys starting with the 16 bits `top`.
    fn top_entry(&self, top: usize) -> TopEntry {
        let key = [(top as u64) << 48, 0, 0, 0];
        let mut entry = TopEntry::EMPTY;
        let mut index = ROOT;
        loop {
            // The root, or a node at depth 8.
            let depth = self.nodes[index as usize].depth;
            let byte = key_byte(&key, usize::from(depth / 8));
            let internal = &self.internals[index as usize].map;
            if let Some(position) = internal.highest_common(&CANDIDATES[usize::from(byte)]) {
                entry.best_node = index;
                entry.best_position = position as u8;
            }
            let Some(child) = self.child(index, byte) else {
                return entry;
            };
            let (path, len) = match child {
                ChildRef::Leaf(leaf) => {
                    let leaf = self.leaf(leaf);
                    (leaf.path, leaf.len)
                }
                ChildRef::Node(next) => {
                    let depth = self.nodes[next as usize].depth;
                    if depth < 16 {
                        index = next;
                        continue;
                    }
                    (self.nodes[next as usize].path, depth)
                }
            };
            // Leave out what the 16 bits already rule out.
            if !path_matches(&path, &key, len.min(16)) {
                return entry;
            }
            entry.next = self.pack(child, 8);
            match child {
                // For a node, `len` is its depth.
                ChildRef::Node(next) if len == 16 => {
                    entry.child_map = self.child_maps[next as usize];
                    entry.summary = self.internals[next as usize].map.summary();
                }
                ChildRef::Node(_) => {}
                ChildRef::Leaf(index) => {
                    let check = Slot::leaf(index, self.leaf(index), 8).check;
                    entry.check_len = (check as u8).min(16);
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(entry.check_len))
                        .unwrap_or(0);
                    entry.check = ((check & mask) >> 16) as u16;
                }
            }
            return entry;
        }
    }

    /// Keeps the top index in step after a change that only affects keys
    /// starting with the first `changed` bits of `key` (none if `changed` is
    /// `None`): builds or drops the index as the trie crosses its size
    /// threshold, or recomputes the entries under those bits.
    fn update_top(&mut self, key: &[u64; 4], changed: Option<u16>) {
        if self.len < self.top_index_min_len / 2 {
            self.top = Vec::new();
        } else if self.top.is_empty() {
            if self.len >= self.top_index_min_len {
                self.top = (0..1 << 16).map(|top| self.top_entry(top)).collect();
            }
        } else if let Some(changed) = changed {
            let free_bits = 16 - changed.min(16);
            let first = (key[0] >> 48) as usize >> free_bits << free_bits;
            for top in first..first + (1 << free_bits) {
                self.top[top] = self.top_entry(top);
            }
        }
    }

    /// Recomputes the facts slot `slot` of node `parent` records about the
    /// node in it, after that node's internal map changed.
    fn refresh_child(&mut self, parent: NodeIndex, slot: u8) {
        let child = self.child(parent, slot).expect("refreshed slots are used");
        self.set_child(parent, slot, child);
    }

    fn remove_child(&mut self, parent: NodeIndex, slot: u8) {
        let map = &mut self.child_maps[parent as usize];
        let node = &mut self.nodes[parent as usize];
        let slot = usize::from(slot);
        let rank = map.rank(slot);
        map.clear(slot);
        node.child_ranks = map.rank_bases();
        node.children.remove(rank);
        node.children.shrink_to_fit();
    }

    /// A node at depth `len` rounded down to a byte, on the path of `key`.
    fn new_node_for(&mut self, key: &[u64; 4], len: u16) -> NodeIndex {
        let depth = len / 8 * 8;
        let path = ServiceId::from_words(*key).truncated(depth).to_words();
        self.alloc_node(Node::new(path, depth))
    }

    /// Stores `value` for `prefix`, returning the value it replaces.
    pub fn insert(&mut self, prefix: &ServicePrefix, value: V) -> Option<V> {
        let key = prefix.id().to_words();
        let (replaced, changed) = self.insert_at(&key, prefix.len(), value);
        self.update_top(&key, changed);
        replaced
    }

    /// [`PrefixTrie::insert`] but for the top index. Also returns how many
    /// leading bits of `key` the lookups that the insert affects share, if it
    /// changed anything but a value.
    fn insert_at(&mut self, key: &[u64; 4], len: u16, value: V) -> (Option<V>, Option<u16>) {
        let key = *key;
        let mut index = ROOT;
        // The parent of `index` and its slot there; none for the root.
        let mut parent = None;
        // The least `depth + 8` of the nodes whose child slots changed.
        let mut changed = u16::MAX;
        let changes = |changed: u16| (changed != u16::MAX).then_some(changed);
        loop {
            let depth = self.nodes[index as usize].depth;
            if len < depth + 8 {
                let replaced = self.put_internal(index, &key, len, value);
                if replaced.is_some() {
                    return (replaced, changes(changed));
                }
                if let Some((parent, slot)) = parent {
                    self.refresh_child(parent, slot);
                }
                self.len += 1;
                // Covers the slot refreshed above and this node's entry (if it
                // is at depth 16): `len` is at least `depth`, and only nodes
                // at depth 16 or more are in the top index.
                return (None, changes(changed.min(len)));
            }
            let slot = key_byte(&key, usize::from(depth / 8));
            let Some(child) = self.child(index, slot) else {
                let leaf = self.alloc_leaf(Leaf {
                    path: key,
                    len,
                    value,
                });
                self.set_child(index, slot, ChildRef::Leaf(leaf));
                self.len += 1;
                return (None, changes(changed.min(depth + 8)));
            };
            parent = Some((index, slot));
            // The path and length of what holds the slot, to find where the
            // new prefix parts from it.
            let (child_path, child_len) = match child {
                ChildRef::Leaf(leaf) => {
                    let leaf = self.leaf_mut(leaf);
                    if leaf.is(&key, len) {
                        let replaced = std::mem::replace(&mut leaf.value, value);
                        return (Some(replaced), changes(changed));
                    }
                    (leaf.path, leaf.len)
                }
                ChildRef::Node(node) => {
                    let node = &self.nodes[node as usize];
                    (node.path, node.depth)
                }
            };
            let shared = common_bits(&child_path, &key).min(child_len).min(len);
            if let ChildRef::Node(node) = child {
                if shared >= child_len {
                    index = node;
                    continue;
                }
            }
            // The new prefix leaves the child's path, ends inside it, or
            // extends a leaf: put a node at the last byte boundary they share
            // (below this node, as both share the slot's byte) and hang the
            // child from it. The loop then adds the new prefix to that node.
            let split = self.new_node_for(&key, shared);
            let split_depth = self.nodes[split as usize].depth;
            match child {
                ChildRef::Leaf(leaf) if child_len < split_depth + 8 => {
                    let leaf = self.release_leaf(leaf);
                    self.put_internal(split, &leaf.path, leaf.len, leaf.value);
                }
                _ => {
                    let child_slot = key_byte(&child_path, usize::from(split_depth / 8));
                    self.set_child(split, child_slot, child);
                }
            }
            self.set_child(index, slot, ChildRef::Node(split));
            changed = changed.min(depth + 8);
            index = split;
        }
    }

    /// Stores a value for a prefix of length `len` (`depth..depth + 8`) in
    /// node `index`, returning the value it replaces. Does not count it, nor
    /// refresh the node's slot in its parent.
    fn put_internal(&mut self, index: NodeIndex, key: &[u64; 4], len: u16, value: V) -> Option<V> {
        let position = self.nodes[index as usize].position_of(key, len);
        self.internals[index as usize].insert(position, value)
    }

    /// Removes `prefix`, returning its value, and prunes, merges or shrinks
    /// nodes left without a purpose.
    pub fn remove(&mut self, prefix: &ServicePrefix) -> Option<V> {
        let key = prefix.id().to_words();
        let (value, changed) = self.remove_at(&key, prefix.len())?;
        self.update_top(&key, Some(changed));
        Some(value)
    }

    /// [`PrefixTrie::remove`] but for the top index. Also returns how many
    /// leading bits of `key` the lookups that the removal affects share.
    fn remove_at(&mut self, key: &[u64; 4], len: u16) -> Option<(V, u16)> {
        let key = *key;
        // (node, slot in parent) from the root down; at most 32 inner nodes.
        let mut trail: Vec<(NodeIndex, u8)> = Vec::with_capacity(8);
        let mut index = ROOT;
        let mut slot_in_parent = 0u8;
        let value = loop {
            trail.push((index, slot_in_parent));
            let depth = self.nodes[index as usize].depth;
            if len < depth + 8 {
                let position = self.nodes[index as usize].position_of(&key, len);
                let value = self.internals[index as usize].remove(position)?;
                if let [.., (parent, _), (_, slot)] = trail[..] {
                    self.refresh_child(parent, slot);
                }
                // As in `insert_at`, `len` covers the refreshed slot.
                break (value, len);
            }
            let slot = key_byte(&key, usize::from(depth / 8));
            match self.child(index, slot)? {
                ChildRef::Leaf(leaf) => {
                    if !self.leaf(leaf).is(&key, len) {
                        return None;
                    }
                    self.remove_child(index, slot);
                    break (self.release_leaf(leaf).value, depth + 8);
                }
                ChildRef::Node(child) => {
                    let child_node = &self.nodes[child as usize];
                    if child_node.depth > len || !child_node.covers(&key, depth + 8) {
                        return None;
                    }
                    index = child;
                    slot_in_parent = slot;
                }
            }
        };
        self.len -= 1;
        let changed = value.1.min(self.prune(&trail));
        Some((value.0, changed))
    }

    /// Restores the canonical shape along `trail` after a removal. Returns
    /// the least `depth + 8` of the nodes whose child slots it changed, or
    /// `u16::MAX`.
    fn prune(&mut self, trail: &[(NodeIndex, u8)]) -> u16 {
        let mut changed = u16::MAX;
        for window in trail.windows(2).rev() {
            let (parent, _) = window[0];
            let (index, slot) = window[1];
            let node = &self.nodes[index as usize];
            let entries = (
                self.internals[index as usize].values.len(),
                node.children.len(),
            );
            if entries.0 + entries.1 >= 2 {
                break;
            }
            changed = self.nodes[parent as usize].depth + 8;
            match entries {
                (0, 0) => {
                    // The parent loses a child: look at it next.
                    self.remove_child(parent, slot);
                    self.release_node(index);
                    continue;
                }
                (0, _) => {
                    let only_child = node.children[0].child.unpack();
                    self.set_child(parent, slot, only_child);
                    self.release_node(index);
                }
                _ => {
                    let leaf = self.node_into_leaf(index);
                    self.set_child(parent, slot, ChildRef::Leaf(leaf));
                }
            }
            break;
        }
        changed
    }

    /// Replaces node `index`, which holds exactly one value and no children,
    /// by a leaf holding that value.
    fn node_into_leaf(&mut self, index: NodeIndex) -> LeafIndex {
        let internal = &mut self.internals[index as usize];
        let position = internal.map.only().expect("a node with one value");
        let value = internal.values.pop().expect("a node with one value");
        let node = &self.nodes[index as usize];
        let (extra, byte) = position_prefix(position);
        let mut path = node.path;
        let at = usize::from(node.depth / 8);
        path[at / 8] |= u64::from(byte) << (56 - 8 * (at % 8));
        let len = node.depth + extra;
        self.release_node(index);
        self.alloc_leaf(Leaf { path, len, value })
    }
}

#[cfg(test)]
impl<V> PrefixTrie<V> {
    /// Checks every structural invariant: entry counts and rank bases match
    /// the maps, children sit below their parent on its path, child slots'
    /// flags are current, the shape is canonical, and the arenas hold nothing
    /// unreachable.
    fn check_invariants(&self) {
        let (mut prefixes, mut nodes, mut leaves) = (0, 0, 0);
        self.check_node(ROOT, &mut prefixes, &mut nodes, &mut leaves);
        assert_eq!(prefixes, self.len, "prefix count");
        assert_eq!(
            nodes,
            self.nodes.len() - self.free_nodes.len(),
            "live nodes"
        );
        assert_eq!(
            leaves,
            self.leaves.len() - self.free_leaves.len(),
            "live leaves"
        );
        let built = !self.top.is_empty();
        if self.len >= self.top_index_min_len {
            assert!(built, "top index built from its threshold on");
        }
        if self.len < self.top_index_min_len / 2 {
            assert!(!built, "top index dropped under half its threshold");
        }
    }

    /// Checks that the top index entries `tops` are current.
    fn check_top(&self, tops: impl IntoIterator<Item = usize>) {
        if !self.top.is_empty() {
            for top in tops {
                assert_eq!(self.top[top], self.top_entry(top), "top entry {top:04x}");
            }
        }
    }

    fn check_node(
        &self,
        index: NodeIndex,
        prefixes: &mut usize,
        nodes: &mut usize,
        leaves: &mut usize,
    ) {
        let node = &self.nodes[index as usize];
        let child_map = &self.child_maps[index as usize];
        let internal = &self.internals[index as usize];
        *nodes += 1;
        *prefixes += internal.values.len();
        assert_eq!(node.depth % 8, 0);
        assert!(node.depth <= 248);
        assert_eq!(internal.values.len(), internal.map.count());
        assert_eq!(node.children.len(), child_map.count());
        assert_eq!(node.child_ranks, child_map.rank_bases());
        assert_eq!(internal.ranks, internal.map.rank_bases());
        assert!(!internal.map.get(255), "no heap position 255");
        if index != ROOT {
            assert!(
                internal.values.len() + node.children.len() >= 2,
                "canonical shape"
            );
        }
        for slot in (0..256).filter(|&slot| child_map.get(slot)) {
            let stored = node.children[child_map.rank(slot)];
            let child = stored.child;
            let (path, len) = match child.unpack() {
                ChildRef::Leaf(index) => {
                    *leaves += 1;
                    *prefixes += 1;
                    let leaf = self.leaf(index);
                    assert_eq!(
                        stored,
                        Slot::leaf(index, leaf, node.depth),
                        "leaf check bits"
                    );
                    let truncated = ServiceId::from_words(leaf.path).truncated(leaf.len);
                    assert_eq!(truncated.to_words(), leaf.path, "leaf bits past its length");
                    (leaf.path, leaf.len)
                }
                ChildRef::Node(next) => {
                    let next_node = &self.nodes[next as usize];
                    assert_eq!(stored.check, 0, "no check bits for inner nodes");
                    assert_eq!(child.skips(), next_node.depth > node.depth + 8, "skip flag");
                    let has_values = !self.internals[next as usize].map.is_empty();
                    assert_eq!(child.has_values(), has_values, "has-values flag");
                    self.check_node(next, prefixes, nodes, leaves);
                    (next_node.path, next_node.depth)
                }
            };
            assert!(
                len >= node.depth + 8,
                "children end below the node's stride"
            );
            assert!(
                path_matches(&node.path, &path, node.depth),
                "child off the path"
            );
            assert_eq!(
                usize::from(key_byte(&path, usize::from(node.depth / 8))),
                slot
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str) -> ServicePrefix {
        s.parse().unwrap()
    }

    fn id(s: &str) -> ServiceId {
        s.parse().unwrap()
    }

    #[test]
    fn internal_positions_cover_the_heap() {
        assert_eq!(internal_position(0, 0xff), 0);
        assert_eq!(internal_position(1, 0x00), 1);
        assert_eq!(internal_position(1, 0x80), 2);
        assert_eq!(internal_position(7, 0x00), 127);
        assert_eq!(internal_position(7, 0xff), 254);
    }

    #[test]
    fn longest_match_prefers_longer() {
        let mut trie = PrefixTrie::new();
        trie.insert(&prefix("0/0"), 0);
        trie.insert(&prefix("be/8"), 1);
        trie.insert(&prefix("bee/12"), 2);
        trie.insert(&prefix("beef/16"), 3);
        trie.insert(&prefix("beef0001"), 4);
        assert_eq!(trie.longest_match(&id("beef0001")), Some((256, &4)));
        assert_eq!(trie.longest_match(&id("beef0002")), Some((16, &3)));
        assert_eq!(trie.longest_match(&id("bee0")), Some((12, &2)));
        assert_eq!(trie.longest_match(&id("bf")), Some((0, &0)));
        assert_eq!(trie.len(), 5);
    }

    #[test]
    fn compressed_paths_are_checked() {
        let mut trie = PrefixTrie::new();
        trie.insert(&prefix("0102030405/40"), 1);
        assert_eq!(trie.node_count(), 2, "one leaf below the root");
        assert_eq!(trie.longest_match(&id("0102030405")), Some((40, &1)));
        assert_eq!(trie.longest_match(&id("0102ff0405")), None);
        // Split the compressed path.
        trie.insert(&prefix("0102ff/24"), 2);
        assert_eq!(trie.longest_match(&id("0102ff0405")), Some((24, &2)));
        assert_eq!(trie.longest_match(&id("0102030405")), Some((40, &1)));
        trie.insert(&prefix("01/8"), 3);
        assert_eq!(trie.longest_match(&id("01ff")), Some((8, &3)));
    }

    #[test]
    fn remove_restores_canonical_shape() {
        let mut trie = PrefixTrie::new();
        trie.insert(&prefix("0102030405/40"), 1);
        trie.insert(&prefix("0102ff/24"), 2);
        let nodes_after_split = trie.node_count();
        assert!(nodes_after_split > 2);
        assert_eq!(trie.remove(&prefix("0102ff/24")), Some(2));
        assert_eq!(trie.node_count(), 2);
        assert_eq!(trie.remove(&prefix("0102ff/24")), None);
        assert_eq!(trie.remove(&prefix("0102030405/40")), Some(1));
        assert_eq!(trie.node_count(), 1);
        assert!(trie.is_empty());
        assert_eq!(trie.longest_match(&id("0102030405")), None);
    }

    #[test]
    fn full_length_and_default_prefixes() {
        let mut trie = PrefixTrie::new();
        let all_ones = ServicePrefix::exact(ServiceId::from_bytes([0xff; 32]));
        trie.insert(&all_ones, 7);
        trie.insert(&ServicePrefix::DEFAULT, 1);
        assert_eq!(trie.get(&all_ones), Some(&7));
        assert_eq!(trie.longest_match(all_ones.id()), Some((256, &7)));
        let mut almost = [0xff; 32];
        almost[31] = 0xfe;
        assert_eq!(
            trie.longest_match(&ServiceId::from_bytes(almost)),
            Some((0, &1))
        );
        assert_eq!(trie.insert(&ServicePrefix::DEFAULT, 2), Some(1));
        *trie.get_mut(&all_ones).unwrap() = 8;
        assert_eq!(trie.longest_match(all_ones.id()), Some((256, &8)));
    }

    #[test]
    fn layouts_are_as_documented() {
        use std::mem::size_of;
        assert_eq!(size_of::<Bitmap>(), 32);
        assert_eq!(size_of::<Internal<u32>>(), 64, "one cache line");
        assert_eq!(size_of::<Slot>(), 8);
        assert_eq!(
            size_of::<TopEntry>(),
            64,
            "one cache line, a 4 MiB top index"
        );
        assert_eq!(size_of::<Node>(), 64);
    }

    #[test]
    fn positions_round_trip() {
        for extra in 0..8u16 {
            for byte in 0..=255u8 {
                let position = internal_position(extra, byte);
                let kept = if extra == 0 {
                    0
                } else {
                    byte & !(0xffu8 >> extra)
                };
                assert_eq!(position_prefix(position), (extra, kept));
                assert!(CANDIDATES[usize::from(byte)].get(position));
            }
        }
        assert_eq!(CANDIDATES[0x5a].count(), 8);
    }

    /// Random inserts and removals of clustered prefixes (so that nodes split,
    /// merge and turn into leaves and back), checked against a linear scan and
    /// against the structural invariants after every step.
    #[test]
    fn random_edits_keep_invariants() {
        random_edits(1, TOP_INDEX_MIN_LEN);
    }

    /// As above, with the top index always built.
    #[test]
    fn random_edits_keep_the_top_index_current() {
        random_edits(2, 0);
    }

    /// As above, with the top index built and dropped as the trie grows and
    /// shrinks.
    #[test]
    fn top_index_comes_and_goes_with_size() {
        random_edits(3, 48);
    }

    fn random_edits(seed: u64, top_index_min_len: usize) {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};

        let mut rng = SmallRng::seed_from_u64(seed);
        // A few bases; prefixes and keys are bases with some bits flipped.
        let bases: Vec<[u8; 32]> = (0..4).map(|_| rng.random()).collect();
        let random_id = |rng: &mut SmallRng| {
            let mut bytes = bases[rng.random_range(0..bases.len())];
            for _ in 0..rng.random_range(0..3) {
                let bit = rng.random_range(0..256usize);
                bytes[bit / 8] ^= 0x80 >> (bit % 8);
            }
            ServiceId::from_bytes(bytes)
        };
        let mut trie = PrefixTrie::new();
        trie.top_index_min_len = top_index_min_len;
        let mut reference: Vec<(ServicePrefix, u32)> = Vec::new();
        for step in 0..1000u32 {
            let prefix = ServicePrefix::new(random_id(&mut rng), rng.random_range(0..=256));
            if rng.random_bool(0.6) {
                let old = reference.iter().position(|(p, _)| *p == prefix);
                let expected = old.map(|i| std::mem::replace(&mut reference[i].1, step));
                if old.is_none() {
                    reference.push((prefix, step));
                }
                assert_eq!(trie.insert(&prefix, step), expected);
            } else {
                let old = reference.iter().position(|(p, _)| *p == prefix);
                let expected = old.map(|i| reference.swap_remove(i).1);
                assert_eq!(trie.remove(&prefix), expected);
            }
            trie.check_invariants();
            // The entries under the prefix's first byte, some at random, and
            // now and then all of them.
            let first = usize::from(prefix.id().as_bytes()[0]) << 8;
            trie.check_top(first..first + 256);
            trie.check_top((0..64).map(|_| rng.random_range(0..1 << 16)));
            if step % 400 == 0 {
                trie.check_top(0..1 << 16);
            }
            let key = random_id(&mut rng);
            let expected = reference
                .iter()
                .filter(|(p, _)| p.contains(&key))
                .max_by_key(|(p, _)| p.len())
                .map(|(p, v)| (p.len(), v));
            assert_eq!(trie.longest_match(&key), expected, "lookup of {key}");
            let outer = ServicePrefix::new(random_id(&mut rng), rng.random_range(0..=256));
            let mut expected: Vec<u32> = (reference.iter())
                .filter(|(p, _)| outer.covers(p))
                .map(|(_, v)| *v)
                .collect();
            let mut within: Vec<u32> = trie.within(&outer).into_iter().copied().collect();
            expected.sort_unstable();
            within.sort_unstable();
            assert_eq!(within, expected, "prefixes within {outer}");
        }
        for (prefix, value) in std::mem::take(&mut reference) {
            assert_eq!(trie.remove(&prefix), Some(value));
            trie.check_invariants();
            let first = usize::from(prefix.id().as_bytes()[0]) << 8;
            trie.check_top(first..first + 256);
        }
        trie.check_top(0..1 << 16);
        assert_eq!(trie.node_count(), 1);
    }
}
