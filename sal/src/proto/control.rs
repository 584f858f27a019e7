//! Per-flow SAL control state: version numbers, nonces, and the one control
//! message in flight with its retransmission schedule.
//!
//! Numbering follows the reference stack (see the capture in WIRE.md):
//! `verno` counts this side's control messages that expect an answer (SYN,
//! SYN-ACK, RSYN, FIN); a bare ACK carries the next unused `verno` without
//! consuming it. `ackno` is the peer's last `verno` plus one.

use smoltcp::time::{Duration, Instant};

use crate::locator::Locator;
use crate::wire::{ControlFlags, ControlRepr};

/// What a control message in flight is, which decides what its ACK means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Syn,
    SynAck,
    Fin,
}

/// A control message waiting for its acknowledgement.
#[derive(Debug, Clone)]
pub struct Pending {
    pub kind: ControlKind,
    pub verno: u32,
    /// The complete SAL packet, retransmitted as is.
    pub packet: Vec<u8>,
    pub src: Locator,
    /// `None` while the first hop is not known yet (a DELAY rule).
    pub dst: Option<Locator>,
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
    pub pending: Option<Pending>,
}

impl ControlState {
    pub fn new(local_nonce: [u8; 8], first_verno: u32) -> ControlState {
        ControlState {
            local_nonce,
            peer_nonce: None,
            next_verno: first_verno,
            peer_next: 0,
            pending: None,
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

    /// If `control` acknowledges the message in flight, removes and returns it.
    pub fn take_acked(&mut self, control: &ControlRepr) -> Option<Pending> {
        let acked = control.flags.contains(ControlFlags::ACK)
            && self
                .pending
                .as_ref()
                .is_some_and(|p| control.ackno == p.verno.wrapping_add(1));
        if acked {
            self.pending.take()
        } else {
            None
        }
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
}
