//! Which local user each binding and each flow belongs to: what lets sald
//! show an ordinary user only its own flows and events, and keep one user's
//! bindings from capturing another's services.
//!
//! A binding belongs to the user whose control connection made it. A flow
//! belongs to the user it was handed to (connect, accept); a server flow
//! that is not accepted yet belongs to the owner of the listener it came
//! through. Unbound datagram sockets belong to the user who opened them.
//!
//! Nothing here walks every binding: a host may hold many (a partitioned
//! service binds one prefix per partition), and the owner of a new server
//! flow is looked up on every connection. Bindings are indexed by listener
//! and, in order, by prefix, so that the prefixes covering one are found
//! by one lookup per length and those inside it by a range.
//!
//! Nor does anything walk every flow: a host holds up to millions, and any
//! local user may ask for a listing of its own (`ListFlows`) as often as it
//! likes, each time under the daemon's lock. So the owned flows are also
//! indexed by user, and a user's listing costs what that user owns. What
//! the index holds is what sald was told of: flows handed to a user, and
//! server flows from the moment their handshake completed (the host's
//! `PeerConnected`). A server flow still half-open (SYN answered, ACK
//! awaited) is found only through its listener
//! ([`Owners::flow_owner`]), and is not in its listener's owner's listing:
//! the host tells nobody of it, and has no list of a listener's flows to
//! ask for. Root's listing, a walk over the host's flows, shows it.
//!
//! The count of what each user holds is what `[limits] flows_per_uid`
//! bounds (see `control::cmd::flows`); so is the sum of the backlogs of a
//! user's listeners, what they may queue (see `control::cmd::bind`).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use sal::table::ListenerId;
use sal::{FlowId, ServicePrefix};

/// A listener's prefix and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The bound prefix.
    pub prefix: ServicePrefix,
    /// Who bound it.
    pub uid: u32,
    /// How many flows it may queue, half-open or waiting to be accepted,
    /// as counted against its user's room: its largest backlog yet (see
    /// `control::cmd::bind::set_backlog`).
    pub backlog: usize,
}

/// The owners of one daemon's bindings and flows.
#[derive(Debug, Default)]
pub struct Owners {
    bindings: HashMap<ListenerId, Binding>,
    /// The listeners bound to each prefix (a drained one and the one that
    /// replaced it may share it), ordered by prefix.
    by_prefix: BTreeMap<ServicePrefix, Vec<ListenerId>>,
    /// How many bindings each user holds.
    bindings_held: HashMap<u32, usize>,
    /// The sum of each user's listeners' backlogs: how many flows they may
    /// queue at most (see `control::cmd::bind`).
    backlog_held: HashMap<u32, usize>,
    flows: HashMap<FlowId, FlowOwner>,
    /// The keys of `flows` by owner, held or not: what a user's listing
    /// walks. Users with none have no entry.
    flows_by_uid: HashMap<u32, HashSet<FlowId>>,
    /// How many of `flows` each user holds (those handed to it).
    held: HashMap<u32, usize>,
}

/// Whose a flow is, and whether it counts against that user's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowOwner {
    uid: u32,
    /// Handed to the user (connected, accepted, opened), rather than only
    /// arrived at its listener: remote peers must not use up a user's
    /// share, the listener's backlog bounds those.
    held: bool,
}

impl Owners {
    /// Gives back the memory the maps hold beyond what they use.
    pub fn shrink_to_fit(&mut self) {
        self.bindings.shrink_to_fit();
        self.bindings_held.shrink_to_fit();
        self.backlog_held.shrink_to_fit();
        self.flows.shrink_to_fit();
        self.flows_by_uid.shrink_to_fit();
        for flows in self.flows_by_uid.values_mut() {
            flows.shrink_to_fit();
        }
        self.held.shrink_to_fit();
    }

    /// Records a new listener.
    pub fn bind(&mut self, listener: ListenerId, binding: Binding) {
        if let Some(previous) = self.bindings.insert(listener, binding) {
            self.forget_binding(listener, previous);
        }
        self.by_prefix
            .entry(binding.prefix)
            .or_default()
            .push(listener);
        count(&mut self.bindings_held, binding.uid);
        add(&mut self.backlog_held, binding.uid, binding.backlog);
    }

    /// Forgets a listener.
    pub fn unbind(&mut self, listener: ListenerId) -> Option<Binding> {
        let binding = self.bindings.remove(&listener)?;
        self.forget_binding(listener, binding);
        Some(binding)
    }

    fn forget_binding(&mut self, listener: ListenerId, binding: Binding) {
        if let Some(listeners) = self.by_prefix.get_mut(&binding.prefix) {
            listeners.retain(|&l| l != listener);
            if listeners.is_empty() {
                self.by_prefix.remove(&binding.prefix);
            }
        }
        uncount(&mut self.bindings_held, binding.uid);
        subtract(&mut self.backlog_held, binding.uid, binding.backlog);
    }

    /// How many bindings `uid` holds.
    pub fn bindings_of(&self, uid: u32) -> usize {
        self.bindings_held.get(&uid).copied().unwrap_or(0)
    }

    /// Changes `listener`'s backlog (see `Binding::backlog`).
    pub fn set_backlog(&mut self, listener: ListenerId, backlog: usize) {
        if let Some(binding) = self.bindings.get_mut(&listener) {
            let (uid, old) = (binding.uid, binding.backlog);
            binding.backlog = backlog;
            subtract(&mut self.backlog_held, uid, old);
            add(&mut self.backlog_held, uid, backlog);
        }
    }

    /// How many flows `uid`'s listeners may queue together (the sum of
    /// their backlogs).
    pub fn backlog_of(&self, uid: u32) -> usize {
        self.backlog_held.get(&uid).copied().unwrap_or(0)
    }

    /// The listeners bound to exactly `prefix` (serving or drained), with
    /// their owners.
    pub fn bound_to(&self, prefix: &ServicePrefix) -> Vec<(ListenerId, u32)> {
        self.by_prefix
            .get(prefix)
            .into_iter()
            .flatten()
            .filter_map(|&listener| Some((listener, self.bindings.get(&listener)?.uid)))
            .collect()
    }

    /// `listener`'s binding.
    pub fn binding(&self, listener: ListenerId) -> Option<&Binding> {
        self.bindings.get(&listener)
    }

    /// Who bound `listener`.
    pub fn listener_owner(&self, listener: ListenerId) -> Option<u32> {
        self.bindings.get(&listener).map(|b| b.uid)
    }

    /// A binding of a user other than `uid` that overlaps `prefix` (covers
    /// it, equals it or lies inside it). One lookup per length for those
    /// covering it; those inside it follow it in prefix order (ID first),
    /// as long as their IDs fall under it.
    pub fn overlapping_other(&self, prefix: &ServicePrefix, uid: u32) -> Option<&Binding> {
        let covering = (0..prefix.len())
            .map(|len| ServicePrefix::new(*prefix.id(), len))
            .filter_map(|p| self.by_prefix.get(&p));
        let inside = self
            .by_prefix
            .range(*prefix..)
            .take_while(|(p, _)| prefix.contains(p.id()))
            .filter(|(p, _)| prefix.covers(p))
            .map(|(_, listeners)| listeners);
        covering
            .chain(inside)
            .flatten()
            .filter_map(|listener| self.bindings.get(listener))
            .find(|b| b.uid != uid)
    }

    /// Gives `flow` (or datagram socket) to `uid`: it counts against the
    /// user's share from now on.
    pub fn adopt(&mut self, flow: FlowId, uid: u32) {
        let owner = FlowOwner { uid, held: true };
        let previous = self.flows.insert(flow, owner);
        if previous == Some(owner) {
            return;
        }
        if let Some(previous) = previous {
            if previous.held {
                uncount(&mut self.held, previous.uid);
            }
            if previous.uid != uid {
                self.unindex(flow, previous.uid);
            }
        }
        count(&mut self.held, uid);
        self.index(flow, uid);
    }

    /// Remembers whose `flow` is, if nobody holds it yet (a server flow
    /// not accepted yet: its listener's owner), without counting it.
    pub fn remember(&mut self, flow: FlowId, uid: u32) {
        if let Entry::Vacant(entry) = self.flows.entry(flow) {
            entry.insert(FlowOwner { uid, held: false });
            self.index(flow, uid);
        }
    }

    /// Forgets a flow that closed; returns who owned it.
    pub fn release(&mut self, flow: FlowId) -> Option<u32> {
        let owner = self.flows.remove(&flow)?;
        if owner.held {
            uncount(&mut self.held, owner.uid);
        }
        self.unindex(flow, owner.uid);
        Some(owner.uid)
    }

    /// Adds `flow` to `uid`'s entry of the index.
    fn index(&mut self, flow: FlowId, uid: u32) {
        self.flows_by_uid.entry(uid).or_default().insert(flow);
    }

    /// Takes `flow` out of `uid`'s entry of the index; users with nothing
    /// leave no entry.
    fn unindex(&mut self, flow: FlowId, uid: u32) {
        if let Some(flows) = self.flows_by_uid.get_mut(&uid) {
            flows.remove(&flow);
            if flows.is_empty() {
                self.flows_by_uid.remove(&uid);
            }
        }
    }

    /// The flows (and datagram sockets) sald knows to be `uid`'s, in no
    /// order: those handed to it and those that arrived at its listeners
    /// (see the module docs for the half-open ones, which are not here).
    /// Costs what the user owns, whatever the host holds.
    pub fn flows_of(&self, uid: u32) -> impl Iterator<Item = FlowId> + '_ {
        self.flows_by_uid.get(&uid).into_iter().flatten().copied()
    }

    /// Whether `uid` holds `flow` (it counts against its share already).
    pub fn holds(&self, flow: FlowId, uid: u32) -> bool {
        self.flows.get(&flow) == Some(&FlowOwner { uid, held: true })
    }

    /// Flows and datagram sockets `uid` holds.
    pub fn held_by(&self, uid: u32) -> usize {
        self.held.get(&uid).copied().unwrap_or(0)
    }

    /// Who owns `flow`: the user it was handed to, or for a server flow
    /// not handed over yet, the owner of `listener`, the one it came
    /// through (`Host::flow_listener`).
    pub fn flow_owner(&self, flow: FlowId, listener: Option<ListenerId>) -> Option<u32> {
        self.flows
            .get(&flow)
            .map(|owner| owner.uid)
            .or_else(|| self.listener_owner(listener?))
    }
}

/// One more for `uid`.
fn count(counts: &mut HashMap<u32, usize>, uid: u32) {
    add(counts, uid, 1);
}

/// One less for `uid`; users with nothing leave no entry.
fn uncount(counts: &mut HashMap<u32, usize>, uid: u32) {
    subtract(counts, uid, 1);
}

/// `n` more for `uid`.
fn add(counts: &mut HashMap<u32, usize>, uid: u32, n: usize) {
    *counts.entry(uid).or_default() += n;
}

/// `n` less for `uid`; users with nothing leave no entry.
fn subtract(counts: &mut HashMap<u32, usize>, uid: u32, n: usize) {
    if let Some(held) = counts.get_mut(&uid) {
        *held = held.saturating_sub(n);
        if *held == 0 {
            counts.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sal::ServiceId;

    fn flow(n: u32) -> FlowId {
        FlowId::new(n).unwrap()
    }

    #[test]
    fn each_user_is_counted_for_what_it_owns_now() {
        let mut owners = Owners::default();
        owners.adopt(flow(1), 1000);
        owners.adopt(flow(2), 1000);
        owners.adopt(flow(2), 1000);
        assert_eq!(owners.held_by(1000), 2, "adopting twice counts once");
        // A server flow remembered for its listener's owner counts for
        // nobody until it is handed to the user who accepted it.
        owners.remember(flow(3), 1000);
        assert_eq!(owners.held_by(1000), 2, "arrived, not held");
        assert_eq!(owners.flow_owner(flow(3), None), Some(1000));
        assert_eq!(sorted(owners.flows_of(1000)), [flow(1), flow(2), flow(3)]);
        owners.adopt(flow(3), 1001);
        owners.remember(flow(3), 1000);
        assert_eq!((owners.held_by(1000), owners.held_by(1001)), (2, 1));
        assert_eq!(owners.flow_owner(flow(3), None), Some(1001));
        // Handed over: listed for its new owner only.
        assert_eq!(sorted(owners.flows_of(1000)), [flow(1), flow(2)]);
        assert_eq!(sorted(owners.flows_of(1001)), [flow(3)]);
        owners.remember(flow(4), 1001);
        assert_eq!(sorted(owners.flows_of(1001)), [flow(3), flow(4)]);
        assert_eq!(owners.release(flow(4)), Some(1001));
        assert_eq!(owners.held_by(1001), 1, "released uncounted");
        assert_eq!(sorted(owners.flows_of(1001)), [flow(3)]);
        assert_eq!(owners.release(flow(1)), Some(1000));
        assert_eq!(owners.release(flow(1)), None, "released once");
        assert_eq!(owners.held_by(1000), 1);
        owners.release(flow(2));
        owners.release(flow(3));
        assert_eq!((owners.held_by(1000), owners.held_by(1001)), (0, 0));
        assert!(
            owners.held.is_empty(),
            "no entry left for users with nothing"
        );
        assert_eq!(owners.flows_of(1000).count(), 0);
        assert!(
            owners.flows_by_uid.is_empty(),
            "no index entry left for users with nothing"
        );
    }

    fn sorted(flows: impl Iterator<Item = FlowId>) -> Vec<FlowId> {
        let mut flows: Vec<FlowId> = flows.collect();
        flows.sort_unstable();
        flows
    }

    /// After any sequence of adopts, remembers, releases and compactions,
    /// each user's index entry is exactly its flows in the whole map, and
    /// the whole map and the counts are what a plain model of the rules
    /// says: adopting takes a flow over (and counts it), remembering keeps
    /// an owner it already has, releasing forgets it.
    #[test]
    fn the_index_is_the_whole_map_filtered_by_user_after_any_sequence() {
        let mut state = 0x9e37_79b9_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        // Few flows and users, so that every operation meets every state:
        // new, remembered, held by the same user, held by another.
        const FLOWS: u32 = 24;
        const USERS: std::ops::Range<u32> = 1000..1004;
        let mut owners = Owners::default();
        let mut model: HashMap<FlowId, FlowOwner> = HashMap::new();
        for round in 0..20_000 {
            let f = flow(1 + next() % FLOWS);
            let uid = USERS.start + next() % USERS.len() as u32;
            match next() % 7 {
                0..=2 => {
                    owners.adopt(f, uid);
                    model.insert(f, FlowOwner { uid, held: true });
                }
                3 | 4 => {
                    owners.remember(f, uid);
                    model.entry(f).or_insert(FlowOwner { uid, held: false });
                }
                5 => {
                    let expected = model.remove(&f).map(|owner| owner.uid);
                    assert_eq!(owners.release(f), expected, "round {round}");
                }
                _ => owners.shrink_to_fit(),
            }
            assert_eq!(owners.flows, model, "round {round}");
            for uid in USERS {
                let filtered: Vec<FlowId> = sorted(
                    (owners.flows.iter())
                        .filter(|(_, owner)| owner.uid == uid)
                        .map(|(&f, _)| f),
                );
                assert_eq!(sorted(owners.flows_of(uid)), filtered, "round {round}");
                let held = model.values().filter(|o| o.uid == uid && o.held).count();
                assert_eq!(owners.held_by(uid), held, "round {round}");
            }
            let users: HashSet<u32> = model.values().map(|owner| owner.uid).collect();
            let indexed: HashSet<u32> = owners.flows_by_uid.keys().copied().collect();
            assert_eq!(indexed, users, "entries only for users with flows");
            for f in (1..=FLOWS).map(flow) {
                let expected = model.get(&f).map(|owner| owner.uid);
                assert_eq!(owners.flow_owner(f, None), expected, "round {round}");
            }
        }
    }

    fn p(s: &str) -> ServicePrefix {
        s.parse().unwrap()
    }

    fn binding(prefix: &str, uid: u32) -> Binding {
        Binding {
            prefix: p(prefix),
            uid,
            backlog: 128,
        }
    }

    #[test]
    fn overlap_is_checked_in_both_directions_and_only_against_others() {
        let mut owners = Owners::default();
        owners.bind(ListenerId(1), binding("beef/16", 1000));
        assert!(owners.overlapping_other(&p("be/8"), 1001).is_some());
        assert!(owners.overlapping_other(&p("beef/16"), 1001).is_some());
        assert!(owners.overlapping_other(&p("beef01/24"), 1001).is_some());
        assert!(owners.overlapping_other(&p("beef01/24"), 1000).is_none());
        assert!(owners.overlapping_other(&p("bee0/16"), 1001).is_none());
        assert_eq!(owners.bound_to(&p("beef/16")), [(ListenerId(1), 1000)]);
        assert!(owners.bound_to(&p("be/8")).is_empty());
        owners.bind(ListenerId(2), binding("beef01/24", 1000));
        assert_eq!(owners.listener_owner(ListenerId(2)), Some(1000));
        assert_eq!(owners.bindings_of(1000), 2);
        assert_eq!(owners.backlog_of(1000), 2 * 128);
        assert_eq!(owners.unbind(ListenerId(1)).unwrap().uid, 1000);
        assert!(owners.overlapping_other(&p("be/8"), 1001).is_some());
        owners.unbind(ListenerId(2));
        assert!(owners.overlapping_other(&p("be/8"), 1001).is_none());
        assert_eq!(owners.backlog_of(1000), 0);
    }

    /// The indexed lookups agree with a walk over every binding, for
    /// prefixes of all lengths that share many of their bits.
    #[test]
    fn indexed_lookups_agree_with_a_walk_over_every_binding() {
        let mut state = 0x2545_f491_u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        // IDs from a few patterns, so that prefixes nest and collide.
        let random_prefix = |next: &mut dyn FnMut() -> u32| {
            let mut bytes = [0u8; 32];
            bytes[0] = [0xbe, 0xef, 0x00][next() as usize % 3];
            bytes[1] = (next() % 4) as u8;
            bytes[31] = (next() % 2) as u8;
            let len = [0, 4, 8, 12, 16, 20, 24, 255, 256][next() as usize % 9];
            ServicePrefix::new(ServiceId::from_bytes(bytes), len)
        };
        let mut owners = Owners::default();
        let mut naive: Vec<(ListenerId, Binding)> = Vec::new();
        for round in 0..3000u32 {
            let prefix = random_prefix(&mut next);
            let uid = 1000 + next() % 3;
            if next() % 3 == 0 && !naive.is_empty() {
                let (listener, binding) = naive.remove(next() as usize % naive.len());
                assert_eq!(owners.unbind(listener), Some(binding));
            } else {
                let listener = ListenerId(u64::from(round));
                let binding = Binding {
                    prefix,
                    uid,
                    backlog: 1,
                };
                owners.bind(listener, binding);
                naive.push((listener, binding));
            }
            let query = random_prefix(&mut next);
            let other_uid = 1000 + next() % 3;
            let expected = naive.iter().any(|(_, b)| {
                b.uid != other_uid && (b.prefix.covers(&query) || query.covers(&b.prefix))
            });
            let found = owners.overlapping_other(&query, other_uid);
            assert_eq!(found.is_some(), expected, "{query} for {other_uid}");
            if let Some(found) = found {
                assert!(found.uid != other_uid);
                assert!(found.prefix.covers(&query) || query.covers(&found.prefix));
            }
            let mut bound: Vec<_> = naive
                .iter()
                .filter(|(_, b)| b.prefix == query)
                .map(|(l, b)| (*l, b.uid))
                .collect();
            let mut indexed = owners.bound_to(&query);
            bound.sort();
            indexed.sort();
            assert_eq!(indexed, bound);
            for uid in 1000..1003 {
                let held = naive.iter().filter(|(_, b)| b.uid == uid).count();
                assert_eq!(owners.bindings_of(uid), held);
            }
        }
    }
}
