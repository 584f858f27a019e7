//! Stream flows: the application's byte streams, and the seam between the
//! SAL and the stream transport (smoltcp TCP, see [`crate::transport`]).
//!
//! Every call into the transport is in this file. Today one transport
//! instance serves all of a host's stream flows and is polled as a whole;
//! keeping its uses here, each on one flow's [`StreamPart`], is what lets a
//! flow own its own TCP socket later, driven only when that flow has input,
//! output or a due deadline.
//!
//! The transport's segments become SAL packets according to the flow's
//! state ([`Host::transport_output`]): its SYN is the SAL SYN, its SYN-ACK
//! the SAL SYN-ACK, its answer to the SYN-ACK the SAL ACK, and the rest
//! rides under a bare base header, held back while a move is unconfirmed.

use smoltcp::time::Instant;

use super::control::ControlKind;
use super::flow::Endpoint;
use super::replay::ReplayBuffer;
use super::{FlowState, Host, HostError, Role};
use crate::id::FlowId;
use crate::locator::Locator;
use crate::transport::{finish_outgoing, OutgoingSegment, StreamError, StreamHandle};
use crate::wire::{ControlFlags, SalRepr, TransportProtocol};

/// TCP header flag bits, as seen in byte 13 of a segment.
pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_RST: u8 = 0x04;
pub(super) const TCP_ACK: u8 = 0x10;

/// Bytes of TCP header in a segment (its data offset).
pub(super) fn tcp_header_len(segment: &[u8]) -> usize {
    usize::from(segment[12] >> 4) * 4
}

/// The stream-specific part of a flow.
#[derive(Debug, Default)]
pub(super) struct StreamPart {
    /// The flow's socket in the transport: none before the client's
    /// connect is resolved, and none once the flow is dead.
    pub handle: Option<StreamHandle>,
    /// Copies of unacknowledged segments, resent right after a migration.
    pub replay: ReplayBuffer,
    /// The client owes the third packet of the handshake (SAL ACK): the
    /// transport's answer to the SYN-ACK carries it.
    pub ack_owed: bool,
}

impl Host {
    /// The flow's stream handle, as the application calls see it: `None`
    /// for datagram flows and for stream flows without a socket.
    fn stream_handle(
        &mut self,
        id: FlowId,
    ) -> Result<(FlowState, Option<StreamHandle>), HostError> {
        let flow = self.flow_mut(id)?;
        Ok((flow.state, flow.stream().and_then(|s| s.handle)))
    }

    /// Queues bytes on a stream flow; returns how many were taken.
    pub fn send(&mut self, id: FlowId, data: &[u8]) -> Result<usize, HostError> {
        match self.stream_handle(id)? {
            (FlowState::Dead, _) => Err(HostError::Reset),
            (_, None) => Err(HostError::WrongProtocol),
            (FlowState::Established, Some(handle)) => {
                let written = self.transport.send(handle, data).map_err(|e| match e {
                    StreamError::SendClosed => HostError::SendClosed,
                    _ => HostError::WouldBlock,
                })?;
                if written == 0 && !data.is_empty() {
                    return Err(HostError::WouldBlock);
                }
                self.mark_dirty(id);
                Ok(written)
            }
            _ => Err(HostError::WouldBlock),
        }
    }

    /// Reads bytes from a stream flow: `Ok(0)` is end of stream.
    pub fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> Result<usize, HostError> {
        let (state, handle) = self.stream_handle(id)?;
        let Some(handle) = handle else {
            return Err(HostError::WrongProtocol);
        };
        match state {
            FlowState::Established | FlowState::Dead => {}
            _ => return Err(HostError::WouldBlock),
        }
        match self.transport.recv(handle, buf) {
            Some(n) => {
                if n > 0 {
                    // Reading opens the receive window: let smoltcp say so.
                    self.mark_dirty(id);
                }
                Ok(n)
            }
            None if state == FlowState::Dead => Err(HostError::Reset),
            None => Err(HostError::WouldBlock),
        }
    }

    /// Bytes a [`Host::send`] would take now.
    pub fn send_room(&mut self, id: FlowId) -> Result<usize, HostError> {
        match self.stream_handle(id)? {
            (FlowState::Established, Some(handle)) => Ok(self.transport.send_room(handle)),
            (FlowState::Dead, _) => Err(HostError::Reset),
            _ => Ok(0),
        }
    }

    /// Ends the sending direction of a flow: the peer reads end of stream
    /// (a stream) or gets our SAL FIN (a datagram flow); receiving goes on.
    pub fn shutdown(&mut self, id: FlowId) -> Result<(), HostError> {
        match self.stream_handle(id)? {
            (_, Some(handle)) => self.transport.shutdown(handle),
            (_, None) => {
                if let Ok(flow) = self.flow_mut(id) {
                    flow.teardown.send_shut |= flow.stream().is_none();
                }
            }
        }
        self.mark_dirty(id);
        Ok(())
    }

    /// Whether received bytes of an established stream flow wait unread.
    pub(super) fn stream_has_unread(&mut self, id: FlowId) -> bool {
        match self.stream_handle(id) {
            Ok((FlowState::Established, Some(handle))) => self.transport.has_unread(handle),
            _ => false,
        }
    }

    /// Opens the flow's socket in the transport: a client's starts
    /// connecting (its SYN comes out of the next poll), a server's is ready
    /// for the SYN about to be delivered.
    pub(super) fn open_stream(&mut self, id: FlowId, role: Role) -> Result<(), StreamError> {
        let handle = match role {
            Role::Client => self.transport.open_client(id)?,
            Role::Server => self.transport.open_server(id)?,
        };
        match self.flow_mut(id).ok().and_then(|f| f.stream_mut()) {
            Some(stream) => stream.handle = Some(handle),
            None => self.transport.release(handle),
        }
        Ok(())
    }

    /// Hands a received segment (checksum verified) to the flow's socket.
    pub(super) fn stream_input(&mut self, id: FlowId, segment: &[u8]) {
        if let Ok((_, Some(handle))) = self.stream_handle(id) {
            self.transport.deliver(handle, segment);
        }
    }

    /// Frees the flow's socket, if it has one, without a word to the peer.
    pub(super) fn release_stream(&mut self, id: FlowId) {
        let handle = self
            .flow_mut(id)
            .ok()
            .and_then(|f| f.stream_mut())
            .and_then(|s| s.handle.take());
        if let Some(handle) = handle {
            self.transport.release(handle);
        }
    }

    /// Frees a socket of a flow already taken out of the flow table.
    pub(super) fn release_handle(&mut self, handle: Option<StreamHandle>) {
        if let Some(handle) = handle {
            self.transport.release(handle);
        }
    }

    /// Whether the flow has finished sending: for a stream, its transport's
    /// FIN is acknowledged (when the reference stack sends the SAL FIN); a
    /// datagram flow finishes when the application closes it or shuts its
    /// sending down.
    pub(super) fn done_sending(&mut self, id: FlowId) -> bool {
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        match flow.stream().map(|s| s.handle) {
            Some(Some(handle)) => self.transport.fin_acked(handle),
            Some(None) => false,
            None => flow.teardown.app_closed || flow.teardown.send_shut,
        }
    }

    /// Whether the flow waits for an answer from its peer: a control
    /// message, or stream data (or a FIN) not yet acknowledged.
    pub(super) fn awaits_peer(&mut self, id: FlowId) -> bool {
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        let handle = flow.stream().and_then(|s| s.handle);
        flow.control.awaiting_answer() || handle.is_some_and(|h| self.transport.has_unacked(h))
    }

    /// Runs the transport and turns what it emitted into SAL packets;
    /// returns whether it emitted anything. `segments` is scratch space.
    pub(super) fn drive_transport(
        &mut self,
        now: Instant,
        segments: &mut Vec<OutgoingSegment>,
    ) -> bool {
        self.transport.poll(now, segments);
        let produced = !segments.is_empty();
        for segment in segments.drain(..) {
            self.transport_output(segment);
        }
        produced
    }

    /// When the transport next needs to run, absent new input.
    pub(super) fn transport_deadline(&mut self) -> Option<Instant> {
        self.transport.poll_at(self.now)
    }

    /// Turns a segment the transport emitted into SAL packets, by flow state.
    fn transport_output(&mut self, mut out: OutgoingSegment) {
        let now = self.now;
        let multi_homed = self.interfaces.len() > 1;
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(out.flow) else {
            return;
        };
        let id = flow.id;
        let flags = out.segment.get(13).copied().unwrap_or(0);
        match flow.state {
            FlowState::Resolving => {}
            FlowState::SynSent => {
                if flags & TCP_SYN != 0 && !flow.control.in_flight(ControlKind::Syn) {
                    let path = &flow.path;
                    let dst = path.next_hop.map_or(path.local.ip(), |n| n.ip());
                    finish_outgoing(&mut out.segment, path.local.ip(), dst);
                    self.send_new_control(
                        id,
                        ControlKind::Syn,
                        ControlFlags::SYN,
                        true,
                        &out.segment,
                    );
                }
                // Otherwise the transport is retransmitting its SYN: the SAL
                // retransmits the SYN packet itself, so drop this copy.
            }
            FlowState::SynReceived => {
                if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
                    && !flow.control.in_flight(ControlKind::SynAck)
                {
                    let Some(remote) = flow.path.remote else {
                        return;
                    };
                    finish_outgoing(&mut out.segment, flow.path.local.ip(), remote.ip());
                    self.send_new_control(
                        id,
                        ControlKind::SynAck,
                        ControlFlags::SYN | ControlFlags::ACK,
                        false,
                        &out.segment,
                    );
                }
            }
            FlowState::Established | FlowState::Dead => {
                if flow.state == FlowState::Dead && flags & TCP_RST == 0 {
                    return;
                }
                let Some(remote) = flow.path.remote else {
                    return;
                };
                let src = flow.path.local;
                finish_outgoing(&mut out.segment, src.ip(), remote.ip());
                let ack_owed = flow
                    .stream_mut()
                    .is_some_and(|s| std::mem::take(&mut s.ack_owed));
                if ack_owed {
                    if out.segment.len() <= tcp_header_len(&out.segment) {
                        self.send_ack(id, true, &out.segment);
                        return;
                    }
                    // Data rides in its own packet: a full segment after the
                    // 68-byte handshake header would not fit the MTU.
                    self.send_ack(id, true, &[]);
                }
                let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
                    return;
                };
                let peer_flow = flow.peer_flow;
                let moving = flow.control.in_flight(ControlKind::Rsyn);
                // A server over UDP: its client may be behind a NAT that
                // rebinds the flow (see `nat.rs`).
                let natted_peer = flow.role == Role::Server && matches!(src, Locator::Udp(_));
                let Some(stream) = flow.stream_mut() else {
                    return;
                };
                stream.replay.note_sent(&out.segment);
                // Copies are kept where the path may change under the
                // flow: a multi-homed host, a move under way, a peer
                // behind a NAT.
                let may_change = multi_homed || moving || natted_peer;
                let kept = may_change && stream.replay.record(&out.segment, src.ip(), remote.ip());
                flow.count_sent(now);
                flow.counters.bytes_out += out.segment.len() as u64;
                let asks = flags & TCP_FIN != 0 || out.segment.len() > tcp_header_len(&out.segment);
                if asks {
                    self.note_asked(id);
                }
                if moving && kept {
                    // Held until the peer confirms the move: the replay then
                    // sends it right behind what the old path lost. Sent now,
                    // it could not be delivered before the hole is filled,
                    // and every copy would draw a duplicate ACK that queues
                    // ahead of the RSYN-ACK.
                    return;
                }
                let repr = SalRepr::data(id, peer_flow, TransportProtocol::Stream.number());
                let payload = super::output::build(&repr, &out.segment);
                self.send_packet(src, remote, payload);
            }
        }
    }
}
