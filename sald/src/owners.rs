//! Which local user each binding and each flow belongs to: what lets sald
//! show an ordinary user only its own flows and events, and keep one user's
//! bindings from capturing another's services.
//!
//! A binding belongs to the user whose control connection made it. A flow
//! belongs to the user it was handed to (connect, accept); a server flow
//! that is not accepted yet belongs to the owner of the binding that
//! receives it (the longest bound prefix containing its service, which is
//! how the host demultiplexes it). Unbound datagram sockets belong to the
//! user who opened them.
//!
//! The count of what each user holds is what `[limits] flows_per_uid`
//! bounds (see `control::cmd::flows`).

use std::collections::HashMap;

use sal::proto::{FlowInfo, Role};
use sal::table::ListenerId;
use sal::{FlowId, ServiceId, ServicePrefix};

/// A listener's prefix and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The bound prefix.
    pub prefix: ServicePrefix,
    /// Who bound it.
    pub uid: u32,
}

/// The owners of one daemon's bindings and flows.
#[derive(Debug, Default)]
pub struct Owners {
    bindings: HashMap<ListenerId, Binding>,
    flows: HashMap<FlowId, u32>,
    /// How many of `flows` each user owns.
    held: HashMap<u32, usize>,
}

impl Owners {
    /// Gives back the memory the maps hold beyond what they use.
    pub fn shrink_to_fit(&mut self) {
        self.bindings.shrink_to_fit();
        self.flows.shrink_to_fit();
        self.held.shrink_to_fit();
    }

    /// Records a new listener.
    pub fn bind(&mut self, listener: ListenerId, prefix: ServicePrefix, uid: u32) {
        self.bindings.insert(listener, Binding { prefix, uid });
    }

    /// Forgets a listener.
    pub fn unbind(&mut self, listener: ListenerId) -> Option<Binding> {
        self.bindings.remove(&listener)
    }

    /// Who bound exactly `prefix`.
    pub fn binding_owner(&self, prefix: &ServicePrefix) -> Option<u32> {
        self.bindings
            .values()
            .find(|b| b.prefix == *prefix)
            .map(|b| b.uid)
    }

    /// The listeners bound to exactly `prefix` (serving or drained), with
    /// their owners.
    pub fn bound_to(&self, prefix: &ServicePrefix) -> Vec<(ListenerId, u32)> {
        self.bindings
            .iter()
            .filter(|(_, b)| b.prefix == *prefix)
            .map(|(&listener, b)| (listener, b.uid))
            .collect()
    }

    /// The binding that receives `service`: the longest bound prefix
    /// containing it.
    pub fn receiver(&self, service: &ServiceId) -> Option<&Binding> {
        self.bindings
            .values()
            .filter(|b| b.prefix.contains(service))
            .max_by_key(|b| b.prefix.len())
    }

    /// A binding of a user other than `uid` that overlaps `prefix` (covers
    /// it, equals it or lies inside it).
    pub fn overlapping_other(&self, prefix: &ServicePrefix, uid: u32) -> Option<&Binding> {
        self.bindings
            .values()
            .find(|b| b.uid != uid && (b.prefix.covers(prefix) || prefix.covers(&b.prefix)))
    }

    /// Gives `flow` (or datagram socket) to `uid`.
    pub fn adopt(&mut self, flow: FlowId, uid: u32) {
        match self.flows.insert(flow, uid) {
            Some(previous) if previous == uid => return,
            Some(previous) => self.uncount(previous),
            None => {}
        }
        *self.held.entry(uid).or_default() += 1;
    }

    /// Forgets a flow that closed; returns who owned it.
    pub fn release(&mut self, flow: FlowId) -> Option<u32> {
        let uid = self.flows.remove(&flow)?;
        self.uncount(uid);
        Some(uid)
    }

    /// Flows and datagram sockets `uid` owns.
    pub fn held_by(&self, uid: u32) -> usize {
        self.held.get(&uid).copied().unwrap_or(0)
    }

    fn uncount(&mut self, uid: u32) {
        if let Some(n) = self.held.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&uid);
            }
        }
    }

    /// Who owns the flow described by `info`: the user it was handed to, or
    /// for a server flow not handed over yet, the receiving binding's owner.
    pub fn flow_owner(&self, info: &FlowInfo) -> Option<u32> {
        self.flows.get(&info.flow).copied().or_else(|| {
            (info.role == Role::Server)
                .then(|| self.receiver(&info.service).map(|b| b.uid))
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A server flow first counted for the binding's owner, then handed
        // to the user who accepted it.
        owners.adopt(flow(3), 1000);
        owners.adopt(flow(3), 1001);
        assert_eq!((owners.held_by(1000), owners.held_by(1001)), (2, 1));
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
    }

    fn p(s: &str) -> ServicePrefix {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_is_checked_in_both_directions_and_only_against_others() {
        let mut owners = Owners::default();
        owners.bind(ListenerId(1), p("beef/16"), 1000);
        assert!(owners.overlapping_other(&p("be/8"), 1001).is_some());
        assert!(owners.overlapping_other(&p("beef/16"), 1001).is_some());
        assert!(owners.overlapping_other(&p("beef01/24"), 1001).is_some());
        assert!(owners.overlapping_other(&p("beef01/24"), 1000).is_none());
        assert!(owners.overlapping_other(&p("bee0/16"), 1001).is_none());
        assert_eq!(owners.binding_owner(&p("beef/16")), Some(1000));
        assert_eq!(owners.bound_to(&p("beef/16")), [(ListenerId(1), 1000)]);
        assert!(owners.bound_to(&p("be/8")).is_empty());
        owners.bind(ListenerId(2), p("beef01/24"), 1000);
        let service: ServiceId = "beef0102".parse().unwrap();
        assert_eq!(owners.receiver(&service).unwrap().prefix, p("beef01/24"));
        assert_eq!(owners.unbind(ListenerId(1)).unwrap().uid, 1000);
        assert!(owners.overlapping_other(&p("be/8"), 1001).is_some());
        owners.unbind(ListenerId(2));
        assert!(owners.overlapping_other(&p("be/8"), 1001).is_none());
    }
}
