//! How flows end: FIN exchanges, resets, and releasing a flow's state.
//!
//! The SAL has its own FIN, separate from the transport's, because the SAL
//! must know when a flow ID may be reused: each side sends a SAL FIN once it
//! has finished sending, and a flow is released when both FINs are
//! acknowledged and the application has closed it. For a stream, "finished"
//! means that the peer's transport will have all we sent once the FIN
//! arrives: the FIN goes after our TCP FIN is acknowledged (the reference
//! stack's rule), or with our TCP FIN itself when everything before it is
//! acknowledged and the peer's window is open, so that the peer's TCP takes
//! both in the same packet (see `rider.rs`). Either way the peer's
//! acknowledgement of our FIN means it has everything, and releasing the
//! flow then loses nothing. A reset (`CONTROL(RST)`, nonce-checked so that
//! only the peer can send one) kills the flow at once; it then waits only
//! for the application to close it.
//!
//! The exchange is the reference stack's, in fewer packets: a FIN that
//! answers the peer's acknowledges it (`FIN|ACK`: the acknowledgement of a
//! new FIN waits for the review of the flow in the same poll, which sends
//! our FIN then if we are done too), and a stream's FINs and their
//! acknowledgements ride in the SAL header of the segments its socket sends
//! (`rider.rs`). A short connection closes in three packets (the client's
//! TCP FIN with its SAL FIN, the server's TCP FIN-ACK with `FIN|ACK`, the
//! client's TCP ACK with the SAL ACK) where sending each alone took seven.
//!
//! The side that acknowledges the last FIN does not forget the flow at
//! once: if that acknowledgement is lost, the peer resends its FIN, and a
//! host that no longer knows the flow can answer it only with a reset
//! (below), which an application still reading would see. It lingers,
//! without its socket, for a few control timeouts after the peer's FIN,
//! answering repeats (TCP's TIME-WAIT, shorter).
//!
//! Lingering covers a lost acknowledgement only while the peer's repeats
//! get through within it; and a host whose own FIN is acknowledged well
//! after the peer's came (the usual order: one end closes first) lets the
//! flow go at once. If its acknowledgement of the peer's FIN was lost
//! meanwhile (a daemon too busy to read its packets drops them), the
//! peer's next repeat finds no flow. Such a FIN is answered with a RST
//! echoing its nonce, as TCP answers a segment for a connection it no
//! longer has, and as the reference stack answers a packet for a socket it
//! closed (see [`Host::rst_input`]): the peer, whose end is done too, lets
//! its flow go then, instead of repeating into silence until its FIN runs
//! out of retries, half a minute after it was sent.
//!
//! A flow the application closed may also wait on the peer: once our FIN
//! is acknowledged (everything we sent arrived), only the peer's FIN is
//! missing. Nobody here will read what it may still send, so the wait is
//! bounded ([`HostConfig::orphan_timeout`](super::HostConfig), TCP's
//! orphaned `FIN-WAIT-2`): after it the flow is reset, which tells the peer
//! that nobody listens any more, and forgotten.
//!
//! A host that gives up on its peer (its FIN or another control message
//! ran out of retries, or nothing came for the whole peer timeout) resets
//! the flow too ([`Host::give_up_on_peer`]): the peer may be unheard
//! rather than gone, and would otherwise wait out its own timeouts.

use smoltcp::time::Instant;

use super::control::{ControlKind, Sequence};
use super::flow::Endpoint;
use super::timer::Timer;
use super::{ConnectError, Event, FlowState, Host, HostError};
use crate::id::FlowId;
use crate::locator::Locator;
use crate::wire::{ControlFlags, ControlRepr, SalRepr};

/// How far a flow's ending has come.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Teardown {
    /// The application closed the flow.
    pub app_closed: bool,
    /// The application finished sending on a datagram flow (it may still
    /// receive until the peer's FIN).
    pub send_shut: bool,
    /// Our SAL FIN went out.
    pub fin_sent: bool,
    /// Our SAL FIN was acknowledged (or given up on).
    pub fin_acked: bool,
    /// The peer's SAL FIN arrived.
    pub peer_fin: bool,
    /// The peer's SAL FIN awaits our acknowledgement: it goes when the
    /// flow is next reviewed (in the same poll), on our own FIN if that
    /// goes then too, or on the socket's next segment (see
    /// [`Host::review_dirty_flows`] and `rider.rs`).
    pub fin_ack_owed: bool,
    /// Until when the flow lingers once releasable (see the module docs):
    /// a few control timeouts after the peer's FIN.
    pub linger_until: Option<Instant>,
    /// Releasable, lingering: the socket is gone, repeats of the peer's
    /// FIN are still answered.
    pub lingering: bool,
}

impl Teardown {
    /// Whether the flow's state may be released: the application is done
    /// with it, and it is dead or both FINs are through.
    pub fn releasable(&self, dead: bool) -> bool {
        self.app_closed && (dead || (self.fin_acked && self.peer_fin))
    }

    /// The application closed the flow and everything it sent arrived;
    /// only the peer has not finished.
    pub fn orphaned(&self) -> bool {
        self.app_closed && self.fin_acked && !self.peer_fin
    }

    /// Our FIN went unanswered to the end: the peer is gone, and nothing
    /// more will come from it.
    pub fn peer_gone(&mut self) {
        self.fin_acked = true;
        self.peer_fin = true;
    }
}

impl Host {
    /// The application is done with the flow: ends sending, and releases the
    /// flow once both SAL FINs are exchanged (or at once if it is dead).
    /// Like a kernel socket closed with unread data, a stream closed while
    /// received bytes wait (or that receives more later) is reset, so that
    /// the peer learns nobody will read what it sends.
    pub fn close(&mut self, id: FlowId) -> Result<(), HostError> {
        self.flow_mut(id)?.teardown.app_closed = true;
        if self.stream_has_unread(id) {
            return self.abort(id);
        }
        self.shutdown(id)
    }

    /// Aborts a flow: the transport sends RST, the SAL sends RST, and the flow
    /// is dead; [`Host::close`] releases it.
    pub fn abort(&mut self, id: FlowId) -> Result<(), HostError> {
        let flow = self.flow_mut(id)?;
        let remote = flow
            .path
            .remote
            .filter(|_| flow.control.peer_nonce.is_some());
        if let Some(remote) = remote {
            let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol().number());
            let mut control = flow.control.ack();
            control.flags = ControlFlags::RST;
            repr.control = Some(control);
            let src = flow.path.local;
            self.send_packet(src, remote, super::output::build(&repr, &[]));
        }
        self.kill(id);
        Ok(())
    }

    /// The peer stopped answering (our control messages ran out of
    /// retries, or nothing came for the whole peer timeout): the flow ends
    /// with a reset, and the application (if it still holds it) sees one.
    /// The peer may only be unheard, not gone: our packets may still reach
    /// it where its own are lost (one direction of a path broken, or a
    /// daemon too busy to read its packets dropping them). The RST then
    /// spares it its own wait: a peer that closed first waits for our FIN
    /// up to its orphan timeout. One packet for a flow given up on; the
    /// kernel's TCP sends none when it gives up, but its peer has no
    /// orphan wait of a minute behind it.
    pub(super) fn give_up_on_peer(&mut self, id: FlowId) {
        self.stats.peer_timeouts += 1;
        let _ = self.abort(id);
    }

    /// The flow is over without a goodbye (reset by the peer, or given up
    /// on): the transport ends without a word. The application reads what
    /// had arrived, then a reset (see [`Host::forget_stream_peer`]).
    pub(super) fn kill(&mut self, id: FlowId) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        flow.state = FlowState::Dead;
        flow.control.forget_in_flight();
        self.forget_stream_peer(id);
        self.mark_dirty(id);
    }

    /// Forgets a flow: its socket, listener accounting, ID.
    pub(super) fn free_flow(&mut self, id: FlowId) {
        if !matches!(self.endpoints.get(id), Some(Endpoint::Flow(_))) {
            return;
        }
        let Some(Endpoint::Flow(mut flow)) = self.endpoints.remove(id) else {
            return;
        };
        self.timers.forget(&flow.timers);
        self.flow_count -= 1;
        let charge = flow.charge();
        if let Some(socket) = flow.stream_mut().and_then(|s| s.socket.take()) {
            self.account_buffers(charge, socket.buffer_memory(), 0);
            self.recycle_buffers(socket);
        }
        if let Some(listener) = flow.listener.filter(|&l| self.listeners.forget(l, id)) {
            self.pending_fell(listener);
        }
        self.events.push_back(Event::Closed(id));
    }

    /// A `CONTROL(RST)` on a flow. To a SYN it is a refusal, which must
    /// answer our SYN and echo our own nonce (see the module docs of
    /// `handshake.rs`); otherwise it must carry the peer's nonce, or echo
    /// ours: the reference stack resets a packet for a socket it has
    /// already closed with the nonce of that packet, which is ours. Either
    /// nonce is a secret of the flow's two ends.
    pub(super) fn rst_input(&mut self, id: FlowId, control: &ControlRepr) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let refusal = flow.state == FlowState::SynSent;
        let echoes_ours = control.nonce == flow.control.local_nonce;
        let valid = if refusal {
            echoes_ours && flow.control.answers_syn(control)
        } else {
            flow.control.nonce_ok(control) || echoes_ours
        };
        if !valid {
            self.stats.bad_nonce += 1;
            return;
        }
        if flow.state == FlowState::SynReceived {
            // A half-open server flow nobody will accept or close: the
            // client is elsewhere (see `refuse_stray_syn_ack`).
            return self.free_flow(id);
        }
        if refusal {
            let error = if control.flags.contains(ControlFlags::NACK) {
                ConnectError::NoRoute
            } else {
                ConnectError::Refused
            };
            self.fail_connect(id, error);
        } else {
            self.kill(id);
        }
    }

    /// The peer's SAL FIN: it has finished sending.
    pub(super) fn fin_input(&mut self, id: FlowId, control: &ControlRepr) {
        let linger_until = self.now + self.config.control_rto * 4;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        match flow.control.accept_verno(control.verno) {
            Sequence::New => {
                flow.teardown.peer_fin = true;
                flow.teardown.fin_ack_owed = true;
                flow.teardown.linger_until = Some(linger_until);
                self.mark_dirty(id);
            }
            Sequence::Duplicate => self.send_ack(id, false, &[]),
            Sequence::Stale => self.stats.stale += 1,
        }
    }

    /// A packet for flow ID `ours`, which this host no longer has: if it
    /// is a SAL FIN, it is answered with a RST echoing its nonce (see the
    /// module docs), which only the flow's own end can take; anyone else
    /// gets one small packet per FIN it sends, to where the FIN came from,
    /// telling nothing the FIN did not carry.
    pub(super) fn forgotten_fin_input(
        &mut self,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        ours: FlowId,
    ) {
        let (Some(control), Some(peer)) = (repr.control, repr.src_flow) else {
            return;
        };
        let flags = control.flags;
        let fin = flags.contains(ControlFlags::FIN)
            && ![ControlFlags::RST, ControlFlags::SYN, ControlFlags::RSYN]
                .into_iter()
                .any(|other| flags.contains(other));
        if fin {
            self.echo_reset(src, dst, (ours, peer), repr.protocol, &control);
        }
    }

    /// Sends a SAL-only RST on flow `ours` (this end's ID) to `peer` at
    /// `src`, from where `dst` arrived, echoing the nonce of `control`
    /// (the peer's own: see [`Host::rst_input`]) and acknowledging it.
    pub(super) fn echo_reset(
        &mut self,
        src: Locator,
        dst: Locator,
        (ours, peer): (FlowId, FlowId),
        protocol: u8,
        control: &ControlRepr,
    ) {
        let local = self.interfaces.arrival_locator(&src, &dst);
        let mut reply = SalRepr::data(ours, Some(peer), protocol);
        reply.control = Some(ControlRepr {
            flags: ControlFlags::RST,
            verno: 0,
            ackno: control.verno.wrapping_add(1),
            nonce: control.nonce,
        });
        self.send_packet(local, src, super::output::build(&reply, &[]));
    }

    /// A closed flow waited its time for the peer's FIN (see the module
    /// docs): reset it.
    pub(super) fn orphan_due(&mut self, id: FlowId) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.teardown.orphaned() && flow.state == FlowState::Established {
            self.stats.orphans_reset += 1;
            let _ = self.abort(id);
        }
    }

    /// A lingering flow's time is up (see the module docs).
    pub(super) fn linger_due(&mut self, id: FlowId) {
        if self.flow_mut(id).is_ok_and(|flow| flow.teardown.lingering) {
            self.free_flow(id);
        }
    }

    /// Our SAL FIN: everything we sent arrived (our TCP FIN, for a stream,
    /// is acknowledged; a FIN that rides on the TCP FIN itself is numbered
    /// in `rider.rs`). It acknowledges the peer's FIN too if that is owed
    /// (`FIN|ACK`, one packet where the reference stack sends two; it takes
    /// either). On a stream whose socket is about to send (the ACK of the
    /// peer's TCP FIN, usually), it rides in that segment's SAL header
    /// instead of a packet of its own; kept for retransmission either way,
    /// and retransmitted alone.
    fn send_fin(&mut self, id: FlowId, ack_owed: bool) {
        let flags = if ack_owed {
            ControlFlags::FIN | ControlFlags::ACK
        } else {
            ControlFlags::FIN
        };
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        flow.teardown.fin_sent = true;
        let moving = flow.control.in_flight(ControlKind::Rsyn);
        let ride = !moving
            && flow
                .stream()
                .is_some_and(|stream| stream.queued && stream.socket.is_some());
        let sent = self.new_control(id, ControlKind::Fin, flags, false, &[], !ride);
        if ride {
            if let Some(stream) = self.flow_mut(id).ok().and_then(|f| f.stream_mut()) {
                stream.riders.fin_once = sent;
            }
        }
    }

    /// Looks at the flows touched since the last poll: sends SAL FINs whose
    /// time has come, releases finished flows, and reports activity on the
    /// others.
    pub(super) fn review_dirty_flows(&mut self) {
        // The two lists trade places, so that no poll allocates one.
        let mut dirty = std::mem::replace(&mut self.dirty, std::mem::take(&mut self.dirty_spare));
        let now = self.now;
        for id in dirty.drain(..) {
            let Ok(flow) = self.flow_mut(id) else {
                continue;
            };
            flow.dirty = false;
            let state = flow.state;
            let ack_owed = std::mem::take(&mut flow.teardown.fin_ack_owed);
            if state == FlowState::Established && !flow.teardown.fin_sent && self.done_sending(id) {
                self.send_fin(id, ack_owed);
            } else if ack_owed && state != FlowState::Dead && !self.ack_fin_on_next_segment(id) {
                // (A flow reset since has told the peer all it needs.)
                self.send_ack(id, false, &[]);
            }
            let Ok(flow) = self.flow_mut(id) else {
                continue;
            };
            let dead = flow.state == FlowState::Dead;
            if flow.teardown.orphaned() && !dead {
                // Arming again later changes nothing: the first deadline holds.
                let until = now + self.config.orphan_timeout;
                self.arm_timer(id, Timer::Orphan, until);
                continue;
            }
            let Ok(flow) = self.flow_mut(id) else {
                continue;
            };
            if flow.teardown.releasable(dead) {
                if !dead {
                    self.flush_before_release(id);
                }
                let Ok(flow) = self.flow_mut(id) else {
                    continue;
                };
                match flow.teardown.linger_until.filter(|&t| t > now && !dead) {
                    Some(until) if !flow.teardown.lingering => {
                        flow.teardown.lingering = true;
                        // Nothing but repeats of the peer's FIN is answered
                        // now: the flow's other deadlines (its liveness,
                        // keepalive, socket) are disarmed as it starts to
                        // linger, or they would weigh on the timer queue,
                        // tens of thousands of entries deep at a few
                        // thousand short connections a second. (A repeat
                        // may arm one again; it fires harmlessly.)
                        self.disarm_timers_except(id, &[Timer::Linger, Timer::Control]);
                        self.release_stream(id);
                        self.arm_timer(id, Timer::Linger, until);
                    }
                    Some(_) => {}
                    None => self.free_flow(id),
                }
            } else if matches!(state, FlowState::Established | FlowState::Dead) {
                self.events.push_back(Event::Activity(id));
            }
        }
        self.dirty_spare = dirty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_is_released_only_once_the_application_closed_it() {
        let mut t = Teardown::default();
        assert!(!t.releasable(true), "dead but not closed");
        t.fin_acked = true;
        t.peer_fin = true;
        assert!(!t.releasable(false), "both FINs but not closed");
        t.app_closed = true;
        assert!(t.releasable(false));
        let closed = Teardown {
            app_closed: true,
            fin_acked: true,
            ..Teardown::default()
        };
        assert!(!closed.releasable(false), "the peer has not finished");
        assert!(closed.releasable(true), "a dead flow goes at once");
    }

    #[test]
    fn a_peer_that_never_answers_our_fin_counts_as_finished() {
        let mut t = Teardown {
            app_closed: true,
            fin_sent: true,
            ..Teardown::default()
        };
        t.peer_gone();
        assert!(t.releasable(false));
    }
}
