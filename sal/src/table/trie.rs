//! A longest-prefix-match trie over 256-bit keys.
//!
//! The structure is a *tree bitmap* (Eatherton, Varghese and Dittia, 2004) with
//! byte-aligned strides and byte-granular path compression:
//!
//! - Every node sits at a depth `D` that is a multiple of 8 and consumes key
//!   byte `D / 8`. Prefixes of length `D..D + 8` that end inside the node are
//!   recorded in a 255-bit *internal* bitmap (a binary heap numbering of the
//!   prefixes of length 0..7 of that byte); children are recorded in a 256-bit
//!   *child* bitmap. Values and child indices live in dense arrays indexed by
//!   popcount rank, so a node costs a few cache lines however sparse it is.
//! - A child may sit deeper than `D + 8`: whole bytes that all keys below it
//!   share are skipped. Each node stores its path (the first `D` bits of every
//!   key below it) and a lookup compares the key against it, so skipped bytes
//!   never need a node of their own. Random 256-bit prefixes are dense near the
//!   root and single chains below, so this keeps both memory and lookup depth
//!   small: a lookup touches the root, a dense level or two, and one leaf.
//!
//! Lookups never allocate. Inserts and removals keep the tree canonical: no
//! node without values has exactly one child, and no node is empty.

use crate::id::{ServiceId, ServicePrefix, SERVICE_ID_BITS};

/// Index of a node in the arena. The root is always index 0.
type NodeIndex = u32;
const ROOT: NodeIndex = 0;

/// A 256-bit bitmap, bit `i` is `words[i / 64] >> (i % 64) & 1`.
#[derive(Clone, Copy, Default, Debug)]
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

    fn is_empty(&self) -> bool {
        self.0 == [0; 4]
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
fn internal_position(extra: u16, byte: u8) -> usize {
    (1usize << extra) - 1 + (usize::from(byte) >> (8 - extra))
}

/// Whether `key` starts with the first `depth` bits of `path`.
#[inline]
fn path_matches(path: &[u64; 4], key: &[u64; 4], depth: u16) -> bool {
    let full = usize::from(depth / 64);
    let rest = depth % 64;
    if path[..full] != key[..full] {
        return false;
    }
    rest == 0 || (path[full] ^ key[full]) >> (64 - rest) == 0
}

/// Number of leading bits `a` and `b` share.
fn common_bits(a: &[u64; 4], b: &[u64; 4]) -> u16 {
    for i in 0..4 {
        let diff = a[i] ^ b[i];
        if diff != 0 {
            return (i as u16) * 64 + diff.leading_zeros() as u16;
        }
    }
    SERVICE_ID_BITS
}

/// Key byte `index` of a key held as big-endian words.
#[inline]
fn key_byte(key: &[u64; 4], index: usize) -> u8 {
    (key[index / 8] >> (56 - 8 * (index % 8))) as u8
}

#[derive(Debug, Clone)]
struct Node<V> {
    /// First `depth` bits of every key stored below; bits past `depth` are 0.
    path: [u64; 4],
    /// Multiple of 8, 0..=256. A node at 256 only ever holds one value.
    depth: u16,
    /// Prefixes ending in this node, by [`internal_position`].
    internal: Bitmap,
    /// Child slots in use, by the key byte at `depth / 8`.
    child_map: Bitmap,
    /// Values in the order of the set bits of `internal`.
    values: Vec<V>,
    /// Child node indices in the order of the set bits of `child_map`.
    children: Vec<NodeIndex>,
}

impl<V> Node<V> {
    fn new(path: [u64; 4], depth: u16) -> Node<V> {
        Node {
            path,
            depth,
            internal: Bitmap::default(),
            child_map: Bitmap::default(),
            values: Vec::new(),
            children: Vec::new(),
        }
    }

    fn child(&self, slot: u8) -> Option<NodeIndex> {
        let slot = usize::from(slot);
        self.child_map
            .get(slot)
            .then(|| self.children[self.child_map.rank(slot)])
    }

    /// Heap position of a prefix of length `len` that ends in this node.
    fn position_of(&self, key: &[u64; 4], len: u16) -> usize {
        let extra = len - self.depth;
        if extra == 0 {
            // Also covers depth 256, where there is no next byte.
            return 0;
        }
        internal_position(extra, key_byte(key, usize::from(self.depth / 8)))
    }
}

/// A map from 256-bit prefixes to values with longest-prefix-match lookup.
#[derive(Debug, Clone)]
pub struct PrefixTrie<V> {
    nodes: Vec<Node<V>>,
    free: Vec<NodeIndex>,
    len: usize,
}

impl<V> Default for PrefixTrie<V> {
    fn default() -> Self {
        PrefixTrie::new()
    }
}

/// Where a prefix lives, or would: the node that holds it and its heap position.
struct Location {
    node: NodeIndex,
    position: usize,
}

impl<V> PrefixTrie<V> {
    pub fn new() -> PrefixTrie<V> {
        PrefixTrie {
            nodes: vec![Node::new([0; 4], 0)],
            free: Vec::new(),
            len: 0,
        }
    }

    /// Number of prefixes stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of live trie nodes (for memory accounting).
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Approximate heap bytes owned by the trie.
    pub fn memory_bytes(&self) -> usize {
        let arena = self.nodes.capacity() * std::mem::size_of::<Node<V>>()
            + self.free.capacity() * std::mem::size_of::<NodeIndex>();
        let arrays: usize = self
            .nodes
            .iter()
            .map(|n| {
                n.values.capacity() * std::mem::size_of::<V>()
                    + n.children.capacity() * std::mem::size_of::<NodeIndex>()
            })
            .sum();
        arena + arrays
    }

    /// The value of the longest stored prefix that contains `key`, and that
    /// prefix's length.
    pub fn longest_match(&self, key: &ServiceId) -> Option<(u16, &V)> {
        let key = key.to_words();
        let mut node = &self.nodes[ROOT as usize];
        let mut best = None;
        loop {
            if !path_matches(&node.path, &key, node.depth) {
                return best;
            }
            if node.depth == SERVICE_ID_BITS {
                return node.values.first().map(|v| (SERVICE_ID_BITS, v)).or(best);
            }
            let byte = key_byte(&key, usize::from(node.depth / 8));
            if !node.internal.is_empty() {
                for extra in (0..8).rev() {
                    let position = internal_position(extra, byte);
                    if node.internal.get(position) {
                        let value = &node.values[node.internal.rank(position)];
                        best = Some((node.depth + extra, value));
                        break;
                    }
                }
            }
            match node.child(byte) {
                Some(child) => node = &self.nodes[child as usize],
                None => return best,
            }
        }
    }

    /// The value stored for exactly `prefix`.
    pub fn get(&self, prefix: &ServicePrefix) -> Option<&V> {
        let key = prefix.id().to_words();
        let location = self.locate(&key, prefix.len())?;
        let node = &self.nodes[location.node as usize];
        node.internal
            .get(location.position)
            .then(|| &node.values[node.internal.rank(location.position)])
    }

    /// Mutable access to the value stored for exactly `prefix`.
    pub fn get_mut(&mut self, prefix: &ServicePrefix) -> Option<&mut V> {
        let key = prefix.id().to_words();
        let location = self.locate(&key, prefix.len())?;
        let node = &mut self.nodes[location.node as usize];
        if !node.internal.get(location.position) {
            return None;
        }
        let rank = node.internal.rank(location.position);
        Some(&mut node.values[rank])
    }

    /// The node that would hold a prefix of `len` bits of `key`, if it exists.
    fn locate(&self, key: &[u64; 4], len: u16) -> Option<Location> {
        let mut index = ROOT;
        loop {
            let node = &self.nodes[index as usize];
            if node.depth > len || !path_matches(&node.path, key, node.depth) {
                return None;
            }
            if len < node.depth + 8 || node.depth == SERVICE_ID_BITS {
                return Some(Location {
                    node: index,
                    position: node.position_of(key, len),
                });
            }
            index = node.child(key_byte(key, usize::from(node.depth / 8)))?;
        }
    }

    fn alloc(&mut self, node: Node<V>) -> NodeIndex {
        match self.free.pop() {
            Some(index) => {
                self.nodes[index as usize] = node;
                index
            }
            None => {
                self.nodes.push(node);
                // More than 2^32 nodes would need far more memory than any host has.
                (self.nodes.len() - 1) as NodeIndex
            }
        }
    }

    fn release(&mut self, index: NodeIndex) {
        self.nodes[index as usize] = Node::new([0; 4], 0);
        self.free.push(index);
    }

    fn set_child(&mut self, parent: NodeIndex, slot: u8, child: NodeIndex) {
        let node = &mut self.nodes[parent as usize];
        let slot = usize::from(slot);
        let rank = node.child_map.rank(slot);
        if node.child_map.get(slot) {
            node.children[rank] = child;
        } else {
            node.child_map.set(slot);
            node.children.reserve_exact(1);
            node.children.insert(rank, child);
        }
    }

    fn remove_child(&mut self, parent: NodeIndex, slot: u8) {
        let node = &mut self.nodes[parent as usize];
        let slot = usize::from(slot);
        let rank = node.child_map.rank(slot);
        node.child_map.clear(slot);
        node.children.remove(rank);
        node.children.shrink_to_fit();
    }

    /// A node at depth `len` rounded down to a byte, on the path of `key`.
    fn new_node_for(&mut self, key: &[u64; 4], len: u16) -> NodeIndex {
        let depth = len / 8 * 8;
        let path = ServiceId::from_words(*key).truncated(depth).to_words();
        self.alloc(Node::new(path, depth))
    }

    /// Stores `value` for `prefix`, returning the value it replaces.
    pub fn insert(&mut self, prefix: &ServicePrefix, value: V) -> Option<V> {
        let key = prefix.id().to_words();
        let len = prefix.len();
        let mut index = ROOT;
        loop {
            let depth = self.nodes[index as usize].depth;
            if len < depth + 8 || depth == SERVICE_ID_BITS {
                return self.insert_internal(index, &key, len, value);
            }
            let slot = key_byte(&key, usize::from(depth / 8));
            let Some(child) = self.nodes[index as usize].child(slot) else {
                let leaf = self.new_node_for(&key, len);
                self.set_child(index, slot, leaf);
                return self.insert_internal(leaf, &key, len, value);
            };
            let child_node = &self.nodes[child as usize];
            let shared = common_bits(&child_node.path, &key)
                .min(child_node.depth)
                .min(len);
            if shared >= child_node.depth {
                index = child;
                continue;
            }
            // The prefix leaves the child's compressed path (or ends inside it):
            // split the path with a node at the last byte boundary they share.
            let child_path = child_node.path;
            let split = self.new_node_for(&key, shared);
            let split_depth = self.nodes[split as usize].depth;
            let child_slot = key_byte(&child_path, usize::from(split_depth / 8));
            self.set_child(split, child_slot, child);
            self.set_child(index, slot, split);
            index = split;
        }
    }

    fn insert_internal(
        &mut self,
        index: NodeIndex,
        key: &[u64; 4],
        len: u16,
        value: V,
    ) -> Option<V> {
        let node = &mut self.nodes[index as usize];
        let position = node.position_of(key, len);
        let rank = node.internal.rank(position);
        if node.internal.get(position) {
            return Some(std::mem::replace(&mut node.values[rank], value));
        }
        node.internal.set(position);
        node.values.reserve_exact(1);
        node.values.insert(rank, value);
        self.len += 1;
        None
    }

    /// Removes `prefix`, returning its value, and prunes or merges nodes left
    /// without a purpose.
    pub fn remove(&mut self, prefix: &ServicePrefix) -> Option<V> {
        let key = prefix.id().to_words();
        let len = prefix.len();
        // (node, slot in parent) from the root down; depth is at most 33 nodes.
        let mut trail: Vec<(NodeIndex, u8)> = Vec::with_capacity(8);
        let mut index = ROOT;
        let mut slot_in_parent = 0u8;
        let position = loop {
            let node = &self.nodes[index as usize];
            if node.depth > len || !path_matches(&node.path, &key, node.depth) {
                return None;
            }
            trail.push((index, slot_in_parent));
            if len < node.depth + 8 || node.depth == SERVICE_ID_BITS {
                break node.position_of(&key, len);
            }
            slot_in_parent = key_byte(&key, usize::from(node.depth / 8));
            index = node.child(slot_in_parent)?;
        };
        let node = &mut self.nodes[index as usize];
        if !node.internal.get(position) {
            return None;
        }
        let rank = node.internal.rank(position);
        node.internal.clear(position);
        let value = node.values.remove(rank);
        node.values.shrink_to_fit();
        self.len -= 1;
        self.prune(&trail);
        Some(value)
    }

    /// Restores the canonical shape along `trail` after a removal.
    fn prune(&mut self, trail: &[(NodeIndex, u8)]) {
        for window in trail.windows(2).rev() {
            let (parent, _) = window[0];
            let (index, slot) = window[1];
            let node = &self.nodes[index as usize];
            if !node.internal.is_empty() {
                return;
            }
            if node.child_map.is_empty() {
                self.remove_child(parent, slot);
                self.release(index);
                continue;
            }
            if node.child_map.only().is_some() {
                let only_child = node.children[0];
                self.set_child(parent, slot, only_child);
                self.release(index);
            }
            return;
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
}
