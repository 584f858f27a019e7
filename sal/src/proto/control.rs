//! Per-flow SAL control state: version numbers, nonces, and the control
//! messages in flight with their retransmission schedules.
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

/// What a control message in flight is, which decides what its ACK means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Syn,
    SynAck,
    /// Our move to a new locator.
    Rsyn,
    /// Our answer to the peer's RSYN.
    RsynAck,
    /// A liveness probe on an idle flow: an RSYN from the locator the flow
    /// already uses, which the peer must answer and which moves nothing.
    /// If the flow then moves, this same RSYN, sent from the new locator,
    /// becomes the move.
    Probe,
    Fin,
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
    pub retries: u32,
    pub rto: Duration,
    pub deadline: Instant,
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
        let mut acked = Vec::new();
        self.pending.retain(|p| {
            // Serial-number comparison: is `verno + 1 <= ackno`?
            let covered = (control.ackno.wrapping_sub(p.verno.wrapping_add(1)) as i32) >= 0;
            if covered {
                acked.push(p.clone());
            }
            !covered
        });
        acked
    }

    /// Whether a message of `kind` is in flight.
    pub fn in_flight(&self, kind: ControlKind) -> bool {
        self.pending.iter().any(|p| p.kind == kind)
    }

    /// The RSYN in flight (a move or a probe), if any.
    pub fn rsyn_mut(&mut self) -> Option<&mut Pending> {
        self.pending
            .iter_mut()
            .find(|p| matches!(p.kind, ControlKind::Rsyn | ControlKind::Probe))
    }
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

    fn pending(kind: ControlKind, verno: u32) -> Pending {
        Pending {
            kind,
            verno,
            packet: Vec::new(),
            retries: 0,
            rto: Duration::from_millis(100),
            deadline: Instant::from_millis(0),
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
}
