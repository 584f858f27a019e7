//! The flow table: live flows by local flow ID.
//!
//! Each host picks the flow ID of its own end of a flow: random (so an off-path
//! host cannot guess live IDs), unique among its live flows, never 0. Lookups
//! by flow ID happen for every received packet, so the map is keyed by the raw
//! ID with a fast hasher; the IDs are our own random draws, so an attacker
//! cannot pick colliding keys.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use rand::Rng;
use rustc_hash::FxHasher;

use crate::id::FlowId;

/// How many random draws to try before concluding the table is full. With the
/// table bounded far below 2^32 entries, even one collision is rare.
const ALLOC_ATTEMPTS: usize = 64;

/// Why a flow could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowTableError {
    /// The table is at its capacity, or 64 random draws found no free ID; carries the
    /// number of flows held when the insert was refused.
    #[error("flow table is full ({0} flows)")]
    Full(usize),
    /// [`FlowTable::insert`] was given an ID that already names a live flow.
    #[error("flow ID {0} is already in use")]
    InUse(FlowId),
}

/// Flows of type `T` by local flow ID, with a size limit.
#[derive(Debug)]
pub struct FlowTable<T> {
    flows: HashMap<FlowId, T, BuildHasherDefault<FxHasher>>,
    capacity: usize,
}

impl<T> FlowTable<T> {
    /// A table that holds at most `capacity` flows (memory is reserved lazily).
    pub fn new(capacity: usize) -> FlowTable<T> {
        FlowTable {
            flows: HashMap::default(),
            capacity,
        }
    }

    /// Allocates a fresh random flow ID and stores the flow `make` builds for it.
    pub fn insert_new(
        &mut self,
        rng: &mut impl Rng,
        make: impl FnOnce(FlowId) -> T,
    ) -> Result<FlowId, FlowTableError> {
        if self.flows.len() >= self.capacity {
            return Err(FlowTableError::Full(self.flows.len()));
        }
        for _ in 0..ALLOC_ATTEMPTS {
            let Some(id) = FlowId::new(rng.random()) else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = self.flows.entry(id) {
                slot.insert(make(id));
                return Ok(id);
            }
        }
        Err(FlowTableError::Full(self.flows.len()))
    }

    /// Stores a flow under an ID chosen elsewhere (tests, restored state).
    pub fn insert(&mut self, id: FlowId, flow: T) -> Result<(), FlowTableError> {
        if self.flows.len() >= self.capacity {
            return Err(FlowTableError::Full(self.flows.len()));
        }
        match self.flows.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => Err(FlowTableError::InUse(id)),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(flow);
                Ok(())
            }
        }
    }

    /// The flow whose local end has this ID, if it is live.
    pub fn get(&self, id: FlowId) -> Option<&T> {
        self.flows.get(&id)
    }

    /// Mutable access to the flow whose local end has this ID, if it is live.
    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut T> {
        self.flows.get_mut(&id)
    }

    /// Looks up a raw wire value; 0 never names a flow.
    pub fn get_raw_mut(&mut self, raw: u32) -> Option<&mut T> {
        FlowId::new(raw).and_then(|id| self.flows.get_mut(&id))
    }

    /// Takes the flow out of the table, freeing its ID for reuse.
    pub fn remove(&mut self, id: FlowId) -> Option<T> {
        self.flows.remove(&id)
    }

    /// Whether this ID currently names a live flow.
    pub fn contains(&self, id: FlowId) -> bool {
        self.flows.contains_key(&id)
    }

    /// Live flows held, at most [`capacity`](Self::capacity).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when no flow is live.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The most flows this table accepts.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every live flow with its local flow ID, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &T)> {
        self.flows.iter().map(|(&id, flow)| (id, flow))
    }

    /// Like [`iter`](Self::iter), with mutable access to each flow.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (FlowId, &mut T)> {
        self.flows.iter_mut().map(|(&id, flow)| (id, flow))
    }

    /// Gives back the memory the table holds beyond what its flows need.
    pub fn shrink_to_fit(&mut self) {
        self.flows.shrink_to_fit();
    }

    /// Removes every flow for which `keep` returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(FlowId, &mut T) -> bool) {
        self.flows.retain(|&id, flow| keep(id, flow));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    #[test]
    fn hundred_thousand_unique_flows() {
        let mut rng = SmallRng::seed_from_u64(9);
        let mut table = FlowTable::new(100_000);
        let mut seen = HashSet::new();
        for n in 0..100_000u32 {
            let id = table.insert_new(&mut rng, |_| n).unwrap();
            assert!(seen.insert(id));
        }
        assert_eq!(table.len(), 100_000);
        assert_eq!(
            table.insert_new(&mut rng, |_| 0),
            Err(FlowTableError::Full(100_000))
        );
        let some = *seen.iter().next().unwrap();
        let value = *table.get(some).unwrap();
        assert_eq!(table.remove(some), Some(value));
        assert!(!table.contains(some));
        assert!(table.insert_new(&mut rng, |_| 1).is_ok());
    }

    #[test]
    fn raw_zero_never_matches_and_duplicates_rejected() {
        let mut table = FlowTable::new(4);
        let id = FlowId::new(5).unwrap();
        table.insert(id, "a").unwrap();
        assert_eq!(table.insert(id, "b"), Err(FlowTableError::InUse(id)));
        assert!(table.get_raw_mut(0).is_none());
        assert_eq!(table.get_raw_mut(5).map(|v| *v), Some("a"));
        table.retain(|_, _| false);
        assert!(table.is_empty());
    }

    /// A generator that keeps returning one value must not loop forever.
    #[test]
    fn stuck_generator_gives_up() {
        struct Stuck;
        impl rand::RngCore for Stuck {
            fn next_u32(&mut self) -> u32 {
                7
            }
            fn next_u64(&mut self) -> u64 {
                7
            }
            fn fill_bytes(&mut self, dst: &mut [u8]) {
                dst.fill(0);
            }
        }
        let mut table = FlowTable::new(10);
        table.insert_new(&mut Stuck, |_| ()).unwrap();
        assert!(table.insert_new(&mut Stuck, |_| ()).is_err());
    }
}
