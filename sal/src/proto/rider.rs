//! SAL control messages that ride in the SAL header of one of the flow's
//! own TCP segments instead of a packet of their own: a short stream's
//! close takes three packets (the client's TCP FIN with its SAL FIN, the
//! server's TCP FIN-ACK with `FIN|ACK`, the client's TCP ACK with the SAL
//! ACK), where sending each message alone took seven.
//!
//! Three ride (`teardown.rs` says what each means):
//! - **Our FIN on our TCP FIN.** When the socket sends its TCP FIN with
//!   everything before it acknowledged and the peer's window open, our SAL
//!   FIN is numbered then and goes in that segment's header. Its
//!   retransmission timer resends it by making the socket resend its FIN
//!   ([`Host::resend_riding_fin`]), on which it rides again; never alone
//!   while that TCP FIN is unacknowledged. So the peer gets our SAL FIN
//!   only together with a TCP FIN its TCP takes (in order, as all before
//!   it arrived; inside its window, which is open; its checksum checked
//!   first, `input.rs`), and its acknowledgement means that the peer's
//!   transport has all we sent, as when the FIN goes after our TCP FIN is
//!   acknowledged: which is the reference stack's rule, and ours still
//!   where this one does not apply (data unacknowledged when the TCP FIN
//!   went, or a move under way). TCP's own retransmissions of its FIN go
//!   without it: the reference stack drops a packet whose SAL FIN it has
//!   seen before, transport segment and all, and a TCP FIN that always
//!   carried the SAL FIN would never get through to it after its
//!   acknowledgements were lost.
//! - **Our FIN once, after our TCP FIN was acknowledged**, on the socket's
//!   next segment (the ACK of the peer's TCP FIN, as a rule), or alone if
//!   the socket sends nothing then.
//! - **The acknowledgement of the peer's FIN**, when our socket owes its
//!   TCP an acknowledgement too (the peer's TCP FIN came with the SAL FIN):
//!   on the socket's next segment. That is the application's FIN if it
//!   closes within the delayed-ACK time, which the socket waits for
//!   (`FIN|ACK` then, on the TCP FIN-ACK), or else the TCP ACK alone. The
//!   SAL acknowledgement goes alone once the socket owes nothing, and a
//!   flow released meanwhile sends what its socket owes first
//!   ([`Host::flush_before_release`]).
//!
//! Nothing rides on a handshake packet, nor on a segment held back during
//! a move: what cannot wait goes alone then.

use sal_tcp::{Socket, State};

use super::control::ControlKind;
use super::flow::{Endpoint, Flow};
use super::stream::StreamOutput;
use super::{FlowState, Host};
use crate::id::FlowId;
use crate::wire::{ControlFlags, ControlRepr, SalRepr};

/// Room for one pure TCP ACK (with its options) behind the longest SAL
/// header a rider needs: what [`Host::flush_before_release`] sends.
const FLUSH_BUFFER_LEN: usize = 512;

/// What waits to ride on a stream flow's segments (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Riders {
    /// Our SAL FIN, numbered after our TCP FIN was acknowledged: on the
    /// socket's next segment.
    pub fin_once: Option<ControlRepr>,
    /// Our SAL FIN, numbered on our TCP FIN: kept to ride again when its
    /// timer resends it (`fin_resend`).
    pub fin_on_fin: Option<ControlRepr>,
    /// The next segment that carries our TCP FIN carries `fin_on_fin`
    /// again (its retransmission timer fired).
    pub fin_resend: bool,
    /// The acknowledgement of the peer's SAL FIN: on the socket's next
    /// segment.
    pub fin_ack: bool,
}

/// Whether a socket's TCP FIN may carry our SAL FIN: it is unacknowledged,
/// everything before it is acknowledged, and the peer's window is open.
fn fin_may_ride(socket: &Socket) -> bool {
    fin_unacknowledged(socket) && socket.send_queue() == 0 && socket.remote_window() > 0
}

/// Whether a socket has sent (or is about to send) its TCP FIN and it is
/// not acknowledged yet.
fn fin_unacknowledged(socket: &Socket) -> bool {
    matches!(
        socket.state(),
        State::FinWait1 | State::Closing | State::LastAck
    )
}

/// Whether something may ride on the next segment of `flow`'s socket: a
/// rider waits, or the socket's FIN may carry our SAL FIN. A few loads
/// per segment, on the flow the transmit path has in hand.
pub(super) fn may_ride(flow: &Flow) -> bool {
    flow.stream().is_some_and(|stream| {
        let (riders, socket) = (&stream.riders, stream.socket.as_ref());
        riders.fin_once.is_some()
            || riders.fin_ack
            || (riders.fin_resend && socket.is_some_and(fin_unacknowledged))
            || (!flow.teardown.fin_sent && socket.is_some_and(fin_may_ride))
    })
}

impl Host {
    /// The room a segment the flow's socket is about to write must leave
    /// for a rider's SAL header (see [`may_ride`]): the rare flow with a
    /// rider pays for working out the header's length.
    pub(super) fn rider_room(&mut self, id: FlowId) -> usize {
        // A FIN's header is the longest a rider has (it may advertise our
        // other locators; an ACK's does not).
        self.control_repr(id, ControlKind::Fin, ControlRepr::default(), false)
            .map_or(0, |repr| repr.header_len())
    }

    /// The SAL header a segment the socket just wrote carries (a TCP FIN
    /// if `tcp_fin`, one that asks for an answer if `asks`), if something
    /// rides on it; numbers our FIN if it may ride on this TCP FIN. A FIN
    /// that was to ride once on a segment that asks goes alone instead.
    /// The packet counts as the flow's (a FIN numbered for it counted
    /// already, as kept control messages are counted at their first send).
    pub(super) fn pick_rider(&mut self, id: FlowId, tcp_fin: bool, asks: bool) -> Option<SalRepr> {
        let now = self.now;
        let flow = self.flow_mut(id).ok()?;
        let moving = flow.control.in_flight(ControlKind::Rsyn);
        let fin_in_flight = flow.control.in_flight(ControlKind::Fin);
        let may_number = flow.state == FlowState::Established && !flow.teardown.fin_sent && !moving;
        let stream = flow.stream()?;
        let riders = stream.riders;
        let may_number = may_number && stream.socket.as_ref().is_some_and(fin_may_ride);
        if tcp_fin && riders.fin_resend {
            self.stream_riders(id)?.fin_resend = false;
            if let Some(fin) = riders.fin_on_fin.filter(|_| fin_in_flight) {
                self.flow_mut(id).ok()?.count_sent(now);
                return self.control_repr(id, ControlKind::Fin, fin, false);
            }
        }
        if tcp_fin && may_number {
            return self.number_fin_on_fin(id, riders.fin_ack);
        }
        if let Some(fin) = riders.fin_once {
            if !asks {
                self.stream_riders(id)?.fin_once = None;
                return self.control_repr(id, ControlKind::Fin, fin, false);
            }
            // Not on a segment that asks for an answer (none should): the
            // FIN goes alone, the segment as any other.
            self.send_fin_rider(id);
        }
        if riders.fin_ack {
            self.stream_riders(id)?.fin_ack = false;
            self.flow_mut(id).ok()?.count_sent(now);
            return self.ack_repr(id, false).map(|(repr, ..)| repr);
        }
        None
    }

    /// Numbers our SAL FIN on the TCP FIN the socket just wrote (`FIN|ACK`
    /// if `ack` is owed): kept for retransmission, and sent in that
    /// segment's header.
    fn number_fin_on_fin(&mut self, id: FlowId, ack: bool) -> Option<SalRepr> {
        let flags = match ack {
            true => ControlFlags::FIN | ControlFlags::ACK,
            false => ControlFlags::FIN,
        };
        let fin = self.new_control(id, ControlKind::Fin, flags, false, &[], false)?;
        self.flow_mut(id).ok()?.teardown.fin_sent = true;
        let riders = self.stream_riders(id)?;
        riders.fin_on_fin = Some(fin);
        riders.fin_ack &= !ack;
        self.control_repr(id, ControlKind::Fin, fin, false)
    }

    /// The socket wrote nothing (`owes_ack`: it still owes the peer an
    /// acknowledgement, which its delayed-ACK timer will send), or its
    /// segment is held back: what cannot wait for a segment goes alone.
    pub(super) fn send_unridden(&mut self, id: FlowId, owes_ack: bool) {
        self.send_fin_rider(id);
        let Some(riders) = self.stream_riders(id) else {
            return;
        };
        if riders.fin_ack && !owes_ack {
            riders.fin_ack = false;
            self.send_ack(id, false, &[]);
        }
    }

    /// The acknowledgement of the peer's SAL FIN is owed: rides on the
    /// socket's next segment if its TCP owes an acknowledgement too (see
    /// the module docs). Returns false if it must go alone.
    pub(super) fn ack_fin_on_next_segment(&mut self, id: FlowId) -> bool {
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        if flow.state != FlowState::Established || flow.control.in_flight(ControlKind::Rsyn) {
            return false;
        }
        let Some(stream) = flow.stream_mut() else {
            return false;
        };
        if !stream.socket.as_ref().is_some_and(Socket::owes_ack) {
            return false;
        }
        stream.riders.fin_ack = true;
        self.queue_output(id);
        true
    }

    /// Whether the flow's SAL FIN in flight rides on its socket's TCP FIN,
    /// still unacknowledged: it is resent with that TCP FIN, never alone.
    pub(super) fn fin_rides_on_fin(&self, id: FlowId) -> bool {
        let Some(Endpoint::Flow(flow)) = self.endpoints.get(id) else {
            return false;
        };
        flow.stream().is_some_and(|stream| {
            stream.riders.fin_on_fin.is_some()
                && stream.socket.as_ref().is_some_and(fin_unacknowledged)
        })
    }

    /// Resends our SAL FIN that rides on the socket's TCP FIN: the socket
    /// resends its FIN ([`Socket::resend_fin`]), which carries it, at once
    /// and in order with the control messages sent now (a move's RSYN,
    /// numbered after the FIN, must not overtake it: the peer takes
    /// control messages in order). If the socket has nothing to resend
    /// (its FIN is not all that is in flight), nothing goes: the FIN's
    /// timer tries again.
    pub(super) fn resend_riding_fin(&mut self, id: FlowId) {
        let Some(stream) = (self.flow_mut(id).ok()).and_then(|flow| flow.stream_mut()) else {
            return;
        };
        if stream.socket.as_mut().is_some_and(Socket::resend_fin) {
            stream.riders.fin_resend = true;
            self.stats.retransmits += 1;
            self.flush_stream(id);
        }
    }

    /// Whether a segment the socket wrote is the bare TCP FIN that our
    /// SAL FIN rides on again: it goes during a move too, unlike the
    /// segments that ask for an answer (see `Host::stream_transmit`), as
    /// everything before it is acknowledged (no hole for it to wait
    /// behind), and the move's RSYN may not be taken before the FIN.
    pub(super) fn resends_riding_fin(&self, id: FlowId, tcp_fin: bool, payload: bool) -> bool {
        let Some(Endpoint::Flow(flow)) = self.endpoints.get(id) else {
            return false;
        };
        tcp_fin && !payload && flow.stream().is_some_and(|stream| stream.riders.fin_resend)
    }

    /// A finished flow's socket is about to go: it first sends what it
    /// owes the peer (the TCP ACK of the peer's FIN, which the
    /// acknowledgement of its SAL FIN rides on), at once; an
    /// acknowledgement still owed then goes alone.
    pub(super) fn flush_before_release(&mut self, id: FlowId) {
        let socket = (self.flow_mut(id).ok())
            .and_then(|flow| flow.stream_mut())
            .and_then(|stream| stream.socket.as_mut())
            .filter(|socket| socket.owes_ack());
        if let Some(socket) = socket {
            socket.release_ack();
            self.flush_stream(id);
        }
        self.send_unridden(id, false);
    }

    /// Drives the flow's socket now, into the host's queue of packets,
    /// behind what is queued already: for the few segments that must not
    /// wait for the transmit path.
    fn flush_stream(&mut self, id: FlowId) {
        let now = self.now;
        let mut buffer = [0u8; FLUSH_BUFFER_LEN];
        // An ACK or a FIN, whose packet with its rider `stream_transmit`
        // queues itself; a segment of its own at most once more.
        for _ in 0..4 {
            match self.stream_transmit(id, now, &mut buffer) {
                StreamOutput::Packet(transmit) => {
                    let payload = buffer[..transmit.len].to_vec();
                    self.queue_transmit(transmit.src, transmit.dst, transmit.ttl, payload);
                }
                StreamOutput::Again => {}
                StreamOutput::Idle => break,
            }
        }
    }

    /// The riders of a stream flow.
    fn stream_riders(&mut self, id: FlowId) -> Option<&mut Riders> {
        Some(&mut self.flow_mut(id).ok()?.stream_mut()?.riders)
    }
}
