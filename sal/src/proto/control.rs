//! Per-flow SAL control state: version numbers, nonces, and the control
//! messages in flight with their retransmission schedules.
//!
//! Control messages are the SAL's own reliable exchange, beneath a transport
//! that may not be reliable (datagram flows) and whose retransmissions the
//! SAL cannot see: every message that expects an answer is kept, whole, until
//! the peer acknowledges it, and resent with a doubling timeout meanwhile.
//! What giving up on a message means (a failed connect, a lost path, a peer
//! that vanished) depends on its [`ControlKind`] and is the caller's call.
//!
//! Several messages may be in flight at once (an RSYN, then a FIN sent during
//! the migration, or our RSYN-ACK answering the peer's simultaneous RSYN).
//! `ackno` is cumulative, like TCP's: it acknowledges every message numbered
//! below it, so one ACK can retire several.
//!
//! Numbering follows the reference stack (see the capture in WIRE.md):
//! `verno` counts this side's control messages that expect an answer (SYN,
//! SYN-ACK, RSYN, FIN); a bare ACK carries the next unused `verno` without
//! consuming it. `ackno` is the peer's last `verno` plus one.

use std::collections::VecDeque;

use smoltcp::time::{Duration, Instant};

use crate::wire::{ControlFlags, ControlRepr};
use crate::Locator;

/// What a control message in flight is, which decides what its ACK means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Syn,
    SynAck,
    /// Our move to a new locator.
    Rsyn,
    /// Our answer to the peer's RSYN.
    RsynAck,
    /// A liveness probe, on an idle flow or on one whose peer has been
    /// silent for half the liveness timeout: an RSYN from the locator the
    /// flow already uses, which the peer must answer and which moves nothing
    /// of ours. If the flow then moves, this same RSYN, sent from the new
    /// locator, becomes the move. Also what tells the peer that this end
    /// now reaches it at a locator it sought (see `Host::peer_rebound`).
    Probe,
    Fin,
    /// The client's handshake ACK (the third packet), repeated until the
    /// server is heard on the flow: servers never repeat their SYN-ACK
    /// (see `handshake.rs`), so a lost ACK is the client's to make good.
    /// Bare, it answers nothing the peer could acknowledge; hearing from
    /// the server retires it, and giving up on it ends nothing.
    HandshakeAck,
}

/// A control message waiting for its acknowledgement.
#[derive(Debug, Clone)]
pub struct Pending {
    pub kind: ControlKind,
    pub verno: u32,
    /// The complete SAL packet, retransmitted as is. It is sent from the
    /// flow's current locator to the peer's current one (a SYN to the first
    /// hop), so a retransmission follows a migration.
    pub packet: Vec<u8>,
    /// The locators (source, destination) its transport segment's
    /// checksum covers, those it was first sent between: resent from or
    /// to elsewhere after a move, the checksum is rewritten for the new
    /// pair. `None` for a packet without a segment.
    pub checksummed_for: Option<(Locator, Locator)>,
    pub retries: u32,
    pub rto: Duration,
    pub deadline: Instant,
    /// When it was sent, while it has been sent only once: its answer then
    /// measures the path's round trip (Karn: an answer to a message sent
    /// twice may be to either copy).
    pub sent_once_at: Option<Instant>,
}

impl Pending {
    /// The round trip its answer, arriving `now`, measures, if it was sent
    /// only once.
    pub fn round_trip(&self, now: Instant) -> Option<Duration> {
        self.sent_once_at.map(|sent| now - sent)
    }
}

/// How a received control message relates to what we have seen from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sequence {
    /// The next message we expected: act on it.
    New,
    /// A retransmission of the message we already acted on: only re-ACK.
    Duplicate,
    /// Neither: ignore (and count).
    Stale,
}

/// The control half of a flow.
#[derive(Debug, Clone)]
pub struct ControlState {
    pub local_nonce: [u8; 8],
    pub peer_nonce: Option<[u8; 8]>,
    /// The `verno` our next new control message gets.
    pub next_verno: u32,
    /// The `ackno` we send: peer's last `verno` + 1 (0 until the peer spoke).
    pub peer_next: u32,
    /// Messages sent and not yet acknowledged, oldest first.
    pub pending: VecDeque<Pending>,
}

impl ControlState {
    pub fn new(local_nonce: [u8; 8], first_verno: u32) -> ControlState {
        ControlState {
            local_nonce,
            peer_nonce: None,
            next_verno: first_verno,
            peer_next: 0,
            pending: VecDeque::new(),
        }
    }

    /// A CONTROL extension for a new message that expects an answer; takes a `verno`.
    pub fn new_message(&mut self, flags: ControlFlags) -> ControlRepr {
        let verno = self.next_verno;
        self.next_verno = self.next_verno.wrapping_add(1);
        ControlRepr {
            flags,
            verno,
            ackno: self.peer_next,
            nonce: self.local_nonce,
        }
    }

    /// A CONTROL extension for a bare acknowledgement; consumes nothing.
    pub fn ack(&self) -> ControlRepr {
        ControlRepr {
            flags: ControlFlags::ACK,
            verno: self.next_verno,
            ackno: self.peer_next,
            nonce: self.local_nonce,
        }
    }

    /// Whether `control` carries the nonce the peer announced. Messages from
    /// before the peer announced one (nothing to compare) fail.
    pub fn nonce_ok(&self, control: &ControlRepr) -> bool {
        self.peer_nonce == Some(control.nonce)
    }

    /// Classifies a numbered message from the peer and, if new, records it.
    pub fn accept_verno(&mut self, verno: u32) -> Sequence {
        if verno == self.peer_next {
            self.peer_next = verno.wrapping_add(1);
            Sequence::New
        } else if verno.wrapping_add(1) == self.peer_next {
            Sequence::Duplicate
        } else {
            Sequence::Stale
        }
    }

    /// Removes and returns every message in flight that `control` acknowledges
    /// (cumulatively: all numbered below its `ackno`).
    pub fn take_acked(&mut self, control: &ControlRepr) -> Vec<Pending> {
        if !control.flags.contains(ControlFlags::ACK) {
            return Vec::new();
        }
        // Serial-number comparison: is `verno + 1 <= ackno`?
        let covers = |pending: &Pending| {
            (control.ackno.wrapping_sub(pending.verno.wrapping_add(1)) as i32) >= 0
        };
        if !self.pending.iter().any(covers) {
            return Vec::new();
        }
        let (mut acked, mut kept) = (Vec::new(), VecDeque::new());
        for pending in self.pending.drain(..) {
            match covers(&pending) {
                true => acked.push(pending),
                false => kept.push_back(pending),
            }
        }
        // All answered (the common case), the queue's storage goes too:
        // an idle flow holds none.
        self.pending = kept;
        acked
    }

    /// Forgets every message in flight, and the queue's storage.
    pub fn forget_in_flight(&mut self) {
        self.pending = VecDeque::new();
    }

    /// Lets the queue's storage go once nothing is in flight.
    fn release_if_empty(&mut self) {
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
    }

    /// Keeps a message just sent until it is acknowledged; returns when it
    /// is first due for retransmission.
    pub fn keep(
        &mut self,
        kind: ControlKind,
        verno: u32,
        packet: Vec<u8>,
        checksummed_for: Option<(Locator, Locator)>,
        now: Instant,
        rto: Duration,
    ) -> Instant {
        let deadline = now + rto;
        self.pending.push_back(Pending {
            kind,
            verno,
            packet,
            checksummed_for,
            retries: 0,
            rto,
            deadline,
            sent_once_at: Some(now),
        });
        deadline
    }

    /// The messages whose deadline passed: those with retries left are
    /// handed to `resend` (their timeout doubled), the others are given up.
    /// Returns the kinds given up on, oldest first, and the next deadline.
    pub fn on_timeout(
        &mut self,
        now: Instant,
        (max_retries, handshake_ack_repeats): (u32, u32),
        mut resend: impl FnMut(&Pending),
    ) -> Timeout {
        let mut expired = Vec::new();
        self.pending.retain_mut(|pending| {
            if pending.deadline > now {
                return true;
            }
            let limit = match pending.kind {
                ControlKind::HandshakeAck => handshake_ack_repeats,
                _ => max_retries,
            };
            if pending.retries >= limit {
                expired.push(pending.kind);
                return false;
            }
            pending.retries += 1;
            pending.rto *= 2;
            pending.deadline = now + pending.rto;
            pending.sent_once_at = None;
            resend(pending);
            true
        });
        self.release_if_empty();
        Timeout {
            expired,
            next: self.next_deadline(),
        }
    }

    /// When the next message in flight is due for retransmission.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// Restarts the schedule of the RSYN in flight (a move or a probe) as a
    /// fresh move, so that it is resent from a new locator with its retries
    /// renewed. Returns when it is next due, or `None` if there is none.
    pub fn restart_rsyn(&mut self, now: Instant, rto: Duration) -> Option<Instant> {
        let rsyn = self
            .pending
            .iter_mut()
            .find(|p| matches!(p.kind, ControlKind::Rsyn | ControlKind::Probe))?;
        rsyn.kind = ControlKind::Rsyn;
        rsyn.retries = 0;
        rsyn.rto = rto;
        rsyn.deadline = now + rto;
        rsyn.sent_once_at = None;
        Some(rsyn.deadline)
    }

    /// Restarts the schedule of the SYN in flight for a second way (see
    /// `Host::handle_unreachable`): due `rto` from `now`, with `retries`
    /// retransmissions left of `max_retries`. Returns when it is next due,
    /// or `None` if there is none.
    pub fn restart_syn(
        &mut self,
        now: Instant,
        rto: Duration,
        (retries, max_retries): (u32, u32),
    ) -> Option<Instant> {
        let syn = (self.pending.iter_mut()).find(|p| p.kind == ControlKind::Syn)?;
        syn.retries = max_retries.saturating_sub(retries);
        syn.rto = rto;
        syn.deadline = now + rto;
        syn.sent_once_at = Some(now);
        Some(syn.deadline)
    }

    /// Whether anything is waiting for the peer's acknowledgement (a
    /// repeated handshake ACK asks nothing of the peer: see
    /// [`ControlKind::HandshakeAck`]).
    pub fn awaiting_answer(&self) -> bool {
        self.pending
            .iter()
            .any(|p| p.kind != ControlKind::HandshakeAck)
    }

    /// Forgets the handshake ACK in flight, if any: the server was heard.
    /// Returns whether there was one.
    pub fn retire_handshake_ack(&mut self) -> bool {
        let before = self.pending.len();
        self.pending.retain(|p| p.kind != ControlKind::HandshakeAck);
        self.release_if_empty();
        self.pending.len() != before
    }

    /// Whether `control` acknowledges our SYN in flight (as a refusal must).
    pub fn answers_syn(&self, control: &ControlRepr) -> bool {
        self.pending
            .iter()
            .any(|p| p.kind == ControlKind::Syn && control.ackno == p.verno.wrapping_add(1))
    }

    /// Whether a message of `kind` is in flight.
    pub fn in_flight(&self, kind: ControlKind) -> bool {
        self.pending.iter().any(|p| p.kind == kind)
    }
}

/// What a retransmission timeout did: see [`ControlState::on_timeout`].
#[derive(Debug, Default)]
pub struct Timeout {
    /// Kinds of the messages given up on, oldest first.
    pub expired: Vec<ControlKind>,
    /// When the next message still in flight is due.
    pub next: Option<Instant>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_matches_reference_capture() {
        // Datagram flow of the capture: client SYN verno d1d9ca43, then ACK and
        // FIN both carry d1d9ca44.
        let mut client = ControlState::new([1; 8], 0xd1d9ca43);
        let syn = client.new_message(ControlFlags::SYN);
        assert_eq!((syn.verno, syn.ackno), (0xd1d9ca43, 0));
        client.peer_next = 0x590c8f6e; // learned from the SYN-ACK (verno 590c8f6d)
        let ack = client.ack();
        assert_eq!((ack.verno, ack.ackno), (0xd1d9ca44, 0x590c8f6e));
        // Server FIN (verno 590c8f6e) is new; its retransmission a duplicate.
        assert_eq!(client.accept_verno(0x590c8f6e), Sequence::New);
        assert_eq!(client.accept_verno(0x590c8f6e), Sequence::Duplicate);
        let fin = client.new_message(ControlFlags::FIN);
        assert_eq!((fin.verno, fin.ackno), (0xd1d9ca44, 0x590c8f6f));
    }

    /// A SYN sent a second way gets a fresh timeout and exactly the
    /// retransmissions asked for, then expires; with no retries allowed at
    /// all, it expires at its first timeout.
    #[test]
    fn a_restarted_syn_is_resent_as_often_as_asked_then_expires() {
        let rto = Duration::from_millis(500);
        let at = Instant::from_millis;
        let mut control = ControlState::new([7; 8], 1);
        control.keep(ControlKind::Syn, 1, Vec::new(), None, at(0), rto);
        // The first way used three retransmissions already.
        let mut resent = 0;
        for now in [500, 1500, 3500] {
            let timeout = control.on_timeout(at(now), (5, 2), |_| resent += 1);
            assert!(timeout.expired.is_empty());
        }
        assert_eq!(resent, 3);
        assert_eq!(control.restart_syn(at(4000), rto, (1, 5)), Some(at(4500)));
        let mut resent = 0;
        let first = control.on_timeout(at(4500), (5, 2), |_| resent += 1);
        assert!(first.expired.is_empty());
        assert_eq!((resent, first.next), (1, Some(at(5500))));
        let second = control.on_timeout(at(5500), (5, 2), |_| resent += 1);
        assert_eq!((resent, second.expired), (1, vec![ControlKind::Syn]));
        // None allowed: the fresh timeout is all it gets.
        let mut none = ControlState::new([7; 8], 1);
        none.keep(ControlKind::Syn, 1, Vec::new(), None, at(0), rto);
        none.restart_syn(at(100), rto, (1, 0));
        let timeout = none.on_timeout(at(600), (0, 2), |_| panic!("resent"));
        assert_eq!(timeout.expired, vec![ControlKind::Syn]);
        assert_eq!(
            ControlState::new([7; 8], 1).restart_syn(at(0), rto, (1, 5)),
            None
        );
    }

    fn pending(kind: ControlKind, verno: u32) -> Pending {
        Pending {
            kind,
            verno,
            packet: Vec::new(),
            checksummed_for: None,
            retries: 0,
            rto: Duration::from_millis(100),
            deadline: Instant::from_millis(0),
            sent_once_at: None,
        }
    }

    #[test]
    fn acks_are_cumulative_across_wraparound() {
        let mut state = ControlState::new([0; 8], u32::MAX);
        state
            .pending
            .push_back(pending(ControlKind::Rsyn, u32::MAX));
        state.pending.push_back(pending(ControlKind::Fin, 0));
        let ack = |ackno| ControlRepr {
            flags: ControlFlags::ACK,
            ackno,
            ..Default::default()
        };
        assert!(
            state.take_acked(&ack(u32::MAX)).is_empty(),
            "acks nothing yet"
        );
        let acked = state.take_acked(&ack(0));
        assert_eq!(acked.len(), 1);
        assert_eq!(acked[0].kind, ControlKind::Rsyn);
        assert!(state.in_flight(ControlKind::Fin));
        assert_eq!(state.take_acked(&ack(1)).len(), 1);
        assert!(state.pending.is_empty());
    }

    #[test]
    fn timeouts_double_and_give_up_after_the_retries() {
        let rto = Duration::from_millis(100);
        let mut state = ControlState::new([0; 8], 7);
        let first = state.keep(
            ControlKind::Fin,
            7,
            vec![1],
            None,
            Instant::from_millis(0),
            rto,
        );
        assert_eq!(first, Instant::from_millis(100));
        let mut sent = Vec::new();
        let mut now = first;
        for round in 1..=2u32 {
            let timeout = state.on_timeout(now, (2, 2), |p| sent.push(p.packet.clone()));
            assert!(timeout.expired.is_empty());
            let expected = now + rto * 2u32.pow(round);
            assert_eq!(timeout.next, Some(expected), "round {round}");
            now = expected;
        }
        assert_eq!(sent.len(), 2);
        // Not yet due: nothing happens.
        let early = state.on_timeout(now - Duration::from_millis(1), (2, 2), |_| {
            panic!("not due")
        });
        assert_eq!(early.next, Some(now));
        let last = state.on_timeout(now, (2, 2), |_| panic!("out of retries"));
        assert_eq!(last.expired, [ControlKind::Fin]);
        assert_eq!(last.next, None);
        assert!(!state.awaiting_answer());
    }

    #[test]
    fn restarting_an_rsyn_turns_a_probe_into_a_fresh_move() {
        let rto = Duration::from_millis(100);
        let mut state = ControlState::new([0; 8], 1);
        assert_eq!(state.restart_rsyn(Instant::from_millis(0), rto), None);
        state.keep(
            ControlKind::Probe,
            1,
            Vec::new(),
            None,
            Instant::from_millis(0),
            rto,
        );
        state.on_timeout(Instant::from_millis(100), (5, 5), |_| {});
        let next = state.restart_rsyn(Instant::from_millis(150), rto);
        assert_eq!(next, Some(Instant::from_millis(250)));
        let rsyn = &state.pending[0];
        assert_eq!(
            (rsyn.kind, rsyn.retries, rsyn.rto),
            (ControlKind::Rsyn, 0, rto)
        );
    }
}
