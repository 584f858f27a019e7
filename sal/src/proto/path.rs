//! Where a flow runs: this end's locator, the peer's, and the other
//! locators either side could move to.
//!
//! A SAL flow is named by flow IDs, not by addresses, so both of its ends may
//! change address mid-flow (RSYN). This type is the one place that knows a
//! flow's current addresses and keeps count of how they changed; the
//! exchanges that change them (migration, a peer's RSYN, a liveness verdict)
//! live in `migration.rs`.
//!
//! The locators a peer advertises (ADDRESS extension) are only candidates:
//! nothing proves the peer is at any of them, so the flow never moves to
//! one on the peer's word. A silent path draws a path challenge to the next
//! one ([`Path::next_peer_locator`]), and the flow follows the peer there
//! ([`Path::follow_peer`]) only once it answered (see `nat.rs`).

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::{Duration, Instant};

use super::control::ControlKind;
use super::interface::Interfaces;
use super::FlowState;
use crate::locator::Locator;
use crate::wire::{SalRepr, SourceRepr};

/// The addresses of one flow and their history. See the module docs.
#[derive(Debug, Clone)]
pub(super) struct Path {
    /// Where this end sends from.
    pub local: Locator,
    /// Where the peer is; for a client before the SYN-ACK, unknown.
    pub remote: Option<Locator>,
    /// Client: where the SYN goes (the server, or a service router). With
    /// `discovery`, the broadcast address of `local`'s subnet: the copy the
    /// stored SYN was checksummed for.
    pub next_hop: Option<Locator>,
    /// Client: the SYN looks for its service by broadcast, one copy per
    /// interface that is up (see `HostConfig::broadcast_discovery`).
    pub discovery: bool,
    /// Client: the SYN went again by another first hop after its first
    /// one was found gone (see `Host::handle_unreachable`); it does not
    /// go a third way.
    pub rerouted: bool,
    /// Server: the SYN came through service routers; its SOURCE and our own
    /// address, which the SYN-ACK carries back (the reference stack's form).
    pub syn_source: Option<SourceRepr>,
    /// Server: the SYN's length, if it named its client in SOURCE: no
    /// SYN-ACK to it is longer (see `handshake::fit_answer`).
    pub syn_len: Option<u16>,
    /// Where the peer's last RSYN came from, while that is not `remote`
    /// and not yet proven (see `Host::rsyn_input`): our answers to the RSYN
    /// go there, everything else still goes to `remote` until a path
    /// challenge is answered from there.
    pub moving_to: Option<Locator>,
    /// A round trip timed to a locator of the peer's before the flow
    /// follows it there: the answer to our RSYN-ACK, sent to
    /// [`moving_to`](Path::moving_to), comes back before the answer to
    /// its path challenge moves the flow (see `Host::peer_rebound`), and
    /// is the new path's first sample then.
    timed_ahead: Option<(Locator, Duration)>,
    /// Other locators the peer advertised (ADDRESS extension): candidates
    /// to challenge, never where the flow goes unproven.
    peer_locators: Vec<Locator>,
    /// The locator of ours, not `local`, where a path challenge on the flow
    /// last reached us since this end last moved: the peer seeks us there
    /// (or someone forged it: challenges carry no nonce), and may move its
    /// end of the path there with an RSYN (see `Host::meet_peer_at`).
    pub sought_here: Option<Locator>,
    /// Times this end moved to another locator.
    pub migrations: u32,
    /// Times the flow followed its peer to another locator.
    pub peer_moves: u32,
    /// When this end last moved.
    pub last_migration: Option<Instant>,
}

impl Path {
    /// A path from `local` to a peer not yet known.
    pub fn new(local: Locator) -> Path {
        Path {
            local,
            remote: None,
            next_hop: None,
            discovery: false,
            rerouted: false,
            syn_source: None,
            syn_len: None,
            moving_to: None,
            timed_ahead: None,
            peer_locators: Vec::new(),
            sought_here: None,
            migrations: 0,
            peer_moves: 0,
            last_migration: None,
        }
    }

    /// Moves this end to `to`; returns false if it is there already. Where
    /// the peer sought us before is forgotten: the latest move wins.
    pub fn move_local(&mut self, to: Locator, now: Instant) -> bool {
        if self.local == to {
            return false;
        }
        self.local = to;
        self.sought_here = None;
        self.migrations += 1;
        self.last_migration = Some(now);
        true
    }

    /// Follows the peer to `src`, where it now speaks from; returns whether
    /// that is a move. If `src` is a locator the peer advertised, the one
    /// it leaves takes its place among the alternatives, so that a later
    /// silence may try it again.
    pub fn follow_peer(&mut self, src: Locator) -> bool {
        self.moving_to = None;
        if self.remote == Some(src) {
            return false;
        }
        let left = self.remote.replace(src);
        if let (Some(left), Some(slot)) = (left, self.advertised_slot(src)) {
            *slot = left;
        }
        self.peer_moves += 1;
        true
    }

    /// A round trip of `round_trip` was timed to `to`, where the peer
    /// moved and the flow does not run yet: kept for when it follows
    /// ([`take_timed`](Path::take_timed)). The latest wins: one to
    /// another locator is for a move the peer left behind.
    pub fn timed_ahead(&mut self, to: Locator, round_trip: Duration) {
        self.timed_ahead = Some((to, round_trip));
    }

    /// The round trip timed to `to` before the flow followed the peer
    /// there, if any; forgets whatever was kept.
    pub fn take_timed(&mut self, to: Locator) -> Option<Duration> {
        self.timed_ahead
            .take()
            .and_then(|(at, round_trip)| (at == to).then_some(round_trip))
    }

    /// Replaces what the peer advertised.
    pub fn set_peer_locators(&mut self, locators: Vec<Locator>) {
        self.peer_locators = locators;
    }

    /// What the peer advertised.
    pub fn peer_locators(&self) -> &[Locator] {
        &self.peer_locators
    }

    /// Whether the peer advertised somewhere other than where it is.
    pub fn peer_has_alternatives(&self) -> bool {
        self.peer_locators.iter().any(|l| Some(*l) != self.remote)
    }

    /// Whether `locator` is one the peer advertised.
    pub fn advertises(&self, locator: Locator) -> bool {
        self.peer_locators.contains(&locator)
    }

    /// Whether `locator` is one the peer advertised that its latest RSYN
    /// did not name: packets from there are late ones from a locator it
    /// left (or forged), and only a silence of ours makes it worth a
    /// challenge (see `nat.rs`).
    pub fn left_behind(&self, locator: Locator) -> bool {
        self.moving_to != Some(locator) && self.advertises(locator)
    }

    /// The entry of `locator` among those the peer advertised, if there.
    fn advertised_slot(&mut self, locator: Locator) -> Option<&mut Locator> {
        self.peer_locators.iter_mut().find(|l| **l == locator)
    }

    /// The next locator the peer advertised, other than where it is: the
    /// one to challenge when the path goes silent. It goes to the back of
    /// the list, so repeated calls cycle through them; the flow itself
    /// stays where it is. `None` if there is no other (or no peer yet).
    pub fn next_peer_locator(&mut self) -> Option<Locator> {
        let remote = self.remote?;
        let index = self.peer_locators.iter().position(|l| *l != remote)?;
        let next = self.peer_locators.remove(index);
        self.peer_locators.push(next);
        Some(next)
    }

    /// Where the flow's transport segments go in `state`: a client's SYN
    /// to the first hop, everything else to the peer.
    pub fn transport_destination(&self, state: FlowState) -> Option<Locator> {
        if state == FlowState::SynSent {
            self.next_hop
        } else {
            self.remote
        }
    }

    /// Where a control message of `kind` goes now: a SYN to the first hop,
    /// anything else to the peer's current locator (so retransmissions
    /// follow migrations on both sides).
    pub fn control_destination(&self, kind: ControlKind) -> Option<Locator> {
        match kind {
            ControlKind::Syn => self.next_hop,
            ControlKind::RsynAck => self.moving_to.or(self.remote),
            _ => self.remote,
        }
    }
}

/// The other locators a peer advertised in an ADDRESS extension, reached
/// the same way as `src`; addresses no peer can have are left out.
pub(super) fn advertised(repr: &SalRepr, src: &Locator, interfaces: &Interfaces) -> Vec<Locator> {
    repr.address
        .as_ref()
        .map(|a| {
            (a.addrs.iter())
                .filter(|&&ip| interfaces.may_be_peer(ip))
                .map(|&ip| locator_like(src, ip))
                .collect()
        })
        .unwrap_or_default()
}

/// A locator for `ip` reached the same way as `template` (same UDP port, if any).
pub(super) fn locator_like(template: &Locator, ip: Ipv4Addr) -> Locator {
    match template {
        Locator::Ipv4(_) => Locator::Ipv4(ip),
        Locator::Udp(addr) => Locator::Udp(SocketAddrV4::new(ip, addr.port())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::AddressRepr;

    fn loc(s: &str) -> Locator {
        s.parse().unwrap()
    }

    #[test]
    fn moves_are_counted_and_timed() {
        let mut path = Path::new(loc("10.0.0.1"));
        assert!(!path.move_local(loc("10.0.0.1"), Instant::from_millis(5)));
        assert!(path.move_local(loc("10.1.0.1"), Instant::from_millis(7)));
        assert_eq!(
            (path.local, path.migrations, path.last_migration),
            (loc("10.1.0.1"), 1, Some(Instant::from_millis(7)))
        );
        assert!(path.follow_peer(loc("10.0.0.2")));
        assert!(!path.follow_peer(loc("10.0.0.2")));
        assert_eq!(path.peer_moves, 1);
    }

    #[test]
    fn a_round_trip_timed_ahead_is_for_the_locator_it_was_timed_to() {
        let mut path = Path::new(loc("10.0.0.2"));
        let ms = Duration::from_millis;
        path.timed_ahead(loc("10.1.0.1"), ms(10));
        // The peer moved on again: what was timed to its last locator is
        // not the path the flow follows it on.
        assert_eq!(path.take_timed(loc("10.2.0.1")), None);
        assert_eq!(path.take_timed(loc("10.1.0.1")), None, "forgotten");
        path.timed_ahead(loc("10.1.0.1"), ms(10));
        path.timed_ahead(loc("10.2.0.1"), ms(30));
        assert_eq!(path.take_timed(loc("10.2.0.1")), Some(ms(30)));
        assert_eq!(path.take_timed(loc("10.2.0.1")), None, "taken once");
    }

    #[test]
    fn a_move_of_ours_forgets_where_the_peer_sought_us() {
        let mut path = Path::new(loc("10.0.0.1"));
        path.sought_here = Some(loc("10.2.0.1"));
        assert!(!path.move_local(loc("10.0.0.1"), Instant::from_millis(5)));
        assert_eq!(path.sought_here, Some(loc("10.2.0.1")), "no move");
        assert!(path.move_local(loc("10.3.0.1"), Instant::from_millis(7)));
        assert_eq!(path.sought_here, None, "the latest move wins");
    }

    #[test]
    fn advertised_locators_are_tried_in_turn_without_moving_the_flow() {
        let mut path = Path::new(loc("10.0.0.1"));
        assert_eq!(path.next_peer_locator(), None, "no peer yet");
        path.remote = Some(loc("10.0.0.2"));
        assert!(!path.peer_has_alternatives());
        // The peer advertises its other locators, not the one it speaks from.
        path.set_peer_locators(vec![loc("10.2.0.2"), loc("10.3.0.2")]);
        assert!(path.peer_has_alternatives());
        let tried: Vec<Locator> = (0..3).map(|_| path.next_peer_locator().unwrap()).collect();
        assert_eq!(tried, [loc("10.2.0.2"), loc("10.3.0.2"), loc("10.2.0.2")]);
        assert_eq!(path.remote, Some(loc("10.0.0.2")), "only candidates");
        assert_eq!(path.peer_moves, 0);
    }

    #[test]
    fn following_the_peer_to_an_advertised_locator_keeps_the_one_it_left() {
        let mut path = Path::new(loc("10.0.0.1"));
        path.remote = Some(loc("10.0.0.2"));
        path.set_peer_locators(vec![loc("10.2.0.2"), loc("10.3.0.2")]);
        assert!(path.advertises(loc("10.3.0.2")));
        assert!(path.follow_peer(loc("10.3.0.2")));
        assert!(path.advertises(loc("10.0.0.2")));
        assert!(!path.advertises(loc("10.3.0.2")));
        let tried: Vec<Locator> = (0..2).map(|_| path.next_peer_locator().unwrap()).collect();
        assert_eq!(tried, [loc("10.2.0.2"), loc("10.0.0.2")]);
        // A move elsewhere (a NAT rebinding) adds nothing to try.
        assert!(path.follow_peer(loc("10.9.0.2")));
        assert!(!path.advertises(loc("10.3.0.2")));
        assert_eq!(path.peer_moves, 2);
    }

    #[test]
    fn a_syn_goes_to_the_first_hop_and_the_rest_to_the_peer() {
        let mut path = Path::new(loc("10.0.0.1"));
        path.next_hop = Some(loc("10.0.0.254"));
        assert_eq!(path.control_destination(ControlKind::Fin), None);
        path.remote = Some(loc("10.0.0.11"));
        assert_eq!(
            path.control_destination(ControlKind::Syn),
            Some(loc("10.0.0.254"))
        );
        assert_eq!(
            path.control_destination(ControlKind::Rsyn),
            Some(loc("10.0.0.11"))
        );
    }

    #[test]
    fn advertised_addresses_keep_the_carriage_of_the_sender() {
        let mut repr = SalRepr::data(crate::FlowId::new(1).unwrap(), None, 6);
        let mut address = AddressRepr::default();
        // Addresses no peer can have are left out (found by fuzzing: a
        // flow would have moved toward a broadcast address).
        for ip in ["0.0.0.0", "10.2.0.2", "224.0.0.1", "255.255.255.255"] {
            address.addrs.push(ip.parse().unwrap());
        }
        repr.address = Some(address);
        let udp = loc("udp:10.0.0.2:54325");
        let interfaces = Interfaces::default();
        assert_eq!(
            advertised(&repr, &udp, &interfaces),
            [loc("udp:10.2.0.2:54325")]
        );
        assert_eq!(
            advertised(&repr, &loc("10.0.0.2"), &interfaces),
            [loc("10.2.0.2")]
        );
        repr.address = None;
        assert!(advertised(&repr, &udp, &interfaces).is_empty());
    }
}
