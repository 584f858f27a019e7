//! Opening flows: connect, SYN, SYN-ACK, ACK, and refusals.
//!
//! The SAL handshake wraps the transport's own: the client's SYN carries the
//! service ID and is resolved hop by hop by service tables; the server
//! answers with a SYN-ACK straight from its own address, which is when the
//! client learns where the peer is; the client's ACK completes it. A stream
//! flow's three SAL packets carry the transport's SYN, SYN-ACK and ACK, so a
//! connection costs no extra round trip.
//!
//! Refusals (no route, no listener, full backlog) are answered with a
//! SAL-only `CONTROL(RST)` to the SYN's sender, `NACK` added for "no route".
//! Such a sender has not announced a nonce, so the refusal echoes the SYN's
//! own nonce and acknowledges its `verno`: an off-path host that never saw
//! the SYN cannot forge one. This is our choice; WIRE.md leaves refusals open.

use rand::Rng;

use super::control::{ControlKind, ControlState, Sequence};
use super::datagram::udp_segment;
use super::flow::Flow;
use super::nat::transport_checksum_ok;
use super::path::advertised;
use super::{ConnectError, Event, FlowState, Host, HostError, Role};
use crate::id::{FlowId, ServiceId};
use crate::locator::Locator;
use crate::table::{ListenerId, Resolution};
use crate::wire::{ControlFlags, ControlRepr, SalRepr, TransportProtocol};

/// Where a client's SYN goes first.
#[derive(Debug, Clone, Copy)]
enum FirstHop {
    /// The server, or a service router.
    Unicast(Locator),
    /// Every interface's broadcast address; `local` and `broadcast` are
    /// the first such interface and its address.
    Broadcast { local: Locator, broadcast: Locator },
}

impl Host {
    /// Opens a flow to `service`. Resolution happens now: no matching rule or
    /// a DROP rule fails at once with [`ConnectError::NoRoute`] (no matching
    /// rule with broadcast discovery on sends the SYN to every interface's
    /// broadcast address instead); a DELAY rule holds the connect until a
    /// rule appears. Completion is reported by [`Event::Connected`] or
    /// [`Event::ConnectFailed`].
    pub fn connect(
        &mut self,
        service: ServiceId,
        protocol: TransportProtocol,
    ) -> Result<FlowId, HostError> {
        let Some(first) = self.interfaces.first() else {
            return Err(ConnectError::NoRoute.into());
        };
        let hop = match self.table.resolve(&service, 0, &mut self.rng) {
            Resolution::Forward(next) => Some(FirstHop::Unicast(next)),
            Resolution::Demux(_) => Some(FirstHop::Unicast(first)),
            Resolution::Delay => None,
            Resolution::NoMatch if self.config.broadcast_discovery => {
                let (local, broadcast) = (self.interfaces.broadcasts().next())
                    .ok_or(HostError::Connect(ConnectError::NoRoute))?;
                Some(FirstHop::Broadcast { local, broadcast })
            }
            Resolution::Drop | Resolution::NoMatch => return Err(ConnectError::NoRoute.into()),
        };
        let local = match hop {
            Some(FirstHop::Unicast(next)) => self.interfaces.source_for(&next),
            Some(FirstHop::Broadcast { local, .. }) => Some(local),
            None => None,
        };
        let control = ControlState::new(self.rng.random(), self.rng.random());
        let flow = Flow::new(
            service,
            protocol,
            Role::Client,
            local.unwrap_or(first),
            control,
            self.now,
        );
        let id = self.insert_flow(flow)?;
        match hop {
            Some(FirstHop::Unicast(next)) => self.start_connect(id, next),
            Some(FirstHop::Broadcast { broadcast, .. }) => {
                if let Ok(flow) = self.flow_mut(id) {
                    flow.path.discovery = true;
                }
                self.start_connect(id, broadcast)
            }
            None => self.hold_connect(id, service),
        }
        Ok(id)
    }

    /// A connect held by a DELAY rule whose service is routable now.
    pub(super) fn resolve_held_connect(&mut self, id: FlowId) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let service = flow.service;
        match self.table.resolve(&service, 0, &mut self.rng) {
            Resolution::Forward(next) => self.start_connect(id, next),
            Resolution::Demux(_) => match self.interfaces.first() {
                Some(next) => self.start_connect(id, next),
                None => self.fail_connect(id, ConnectError::NoRoute),
            },
            _ => self.fail_connect(id, ConnectError::NoRoute),
        }
    }

    /// Sends the SYN of a client flow toward `next` (for a flow in
    /// discovery, the broadcast address of its interface's subnet: the SYN
    /// then goes out on every interface, see `output.rs`).
    fn start_connect(&mut self, id: FlowId, next: Locator) {
        let local = self.interfaces.source_for(&next);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if let Some(local) = local {
            flow.path.local = local;
        }
        flow.path.next_hop = Some(next);
        flow.state = FlowState::SynSent;
        let local = flow.path.local;
        match flow.protocol() {
            // The socket's SYN comes out of poll_transmit and becomes the
            // SAL SYN.
            TransportProtocol::Stream => {
                self.open_stream(id, Role::Client, &[]);
            }
            TransportProtocol::Datagram => {
                let segment = udp_segment(&[], local.ip(), next.ip());
                self.send_new_control(id, ControlKind::Syn, ControlFlags::SYN, true, &segment);
            }
        }
    }

    /// Reports a failed connect and forgets the flow.
    pub(super) fn fail_connect(&mut self, id: FlowId, error: ConnectError) {
        self.events.push_back(Event::ConnectFailed(id, error));
        self.free_flow(id);
    }

    /// A SYN for a local listener: open the server side of a flow.
    pub(super) fn accept_syn(
        &mut self,
        listener_id: ListenerId,
        client: Locator,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
    ) {
        let (Some(control), Some(client_flow)) = (repr.control, repr.src_flow) else {
            return;
        };
        if self.listeners.is_ephemeral(listener_id) {
            // An unbound datagram socket's own service ID takes datagrams,
            // not flows; the reference stack drops such SYNs too.
            self.stats.stale += 1;
            return;
        }
        if let Some(existing) = self.listeners.half_open_flow(client.ip(), client_flow) {
            // The client retransmitted its SYN: our SYN-ACK was lost.
            self.retransmit_now(existing);
            return;
        }
        let protocol = TransportProtocol::from_number(repr.protocol);
        let Some(protocol) = protocol.filter(|&p| self.listeners.admits(listener_id, p)) else {
            self.refuse(client, repr, false);
            return;
        };
        if protocol == TransportProtocol::Stream
            && !transport_checksum_ok(protocol, &src, &dst, segment)
        {
            self.stats.bad_checksum += 1;
            return;
        }
        let local = self.interfaces.arrival_locator(&client, &dst);
        let mut control_state = ControlState::new(self.rng.random(), self.rng.random());
        control_state.peer_nonce = Some(control.nonce);
        control_state.peer_next = control.verno.wrapping_add(1);
        let service = repr.service.unwrap_or(ServiceId::ZERO);
        let mut flow = Flow::new(
            service,
            protocol,
            Role::Server,
            local,
            control_state,
            self.now,
        );
        flow.peer_flow = Some(client_flow);
        flow.state = FlowState::SynReceived;
        flow.path.remote = Some(client);
        flow.path.syn_source = repr.source.clone().and_then(|mut source| {
            source.addrs.try_push(local.ip()).ok()?;
            Some(source)
        });
        flow.path.set_peer_locators(advertised(repr, &client));
        flow.listener = Some(listener_id);
        let Ok(id) = self.insert_flow(flow) else {
            self.refuse(client, repr, false);
            return;
        };
        self.listeners
            .syn_received(listener_id, client.ip(), client_flow, id);
        match protocol {
            // The SYN-ACK comes out of the socket in poll_transmit.
            TransportProtocol::Stream => {
                if !self.open_stream(id, Role::Server, segment) {
                    self.stats.malformed += 1;
                    self.free_flow(id);
                    return;
                }
            }
            TransportProtocol::Datagram => {
                let segment = udp_segment(&[], local.ip(), client.ip());
                self.send_new_control(
                    id,
                    ControlKind::SynAck,
                    ControlFlags::SYN | ControlFlags::ACK,
                    false,
                    &segment,
                );
            }
        }
        self.mark_dirty(id);
    }

    /// Answers a SYN with a SAL-only RST (NACK added for "no route"). See the
    /// module docs for why it echoes the SYN's nonce.
    pub(super) fn refuse(&mut self, client: Locator, syn: &SalRepr, no_route: bool) {
        let (Some(control), Some(client_flow)) = (syn.control, syn.src_flow) else {
            return;
        };
        let Some(local) = self.interfaces.source_for(&client) else {
            return;
        };
        self.stats.refused += 1;
        let mut reply = SalRepr::data(client_flow, Some(client_flow), syn.protocol);
        let flags = if no_route {
            ControlFlags::RST | ControlFlags::NACK
        } else {
            ControlFlags::RST
        };
        reply.control = Some(ControlRepr {
            flags,
            verno: 0,
            ackno: control.verno.wrapping_add(1),
            nonce: control.nonce,
        });
        self.send_packet(local, client, super::output::build(&reply, &[]));
    }

    /// A SYN-ACK for a client flow that is already another server's: our
    /// SYN was retransmitted and a router sent the copy to another instance,
    /// which answered first. The late server gets a RST echoing its own
    /// nonce, so that its half-open flow goes now instead of retransmitting
    /// for half a minute and holding its backlog (and a drained listener's
    /// pending count) meanwhile.
    pub(super) fn refuse_stray_syn_ack(
        &mut self,
        src: Locator,
        dst: Locator,
        syn_ack: &SalRepr,
        control: &ControlRepr,
    ) {
        let (Some(server_flow), Some(our_flow)) = (syn_ack.src_flow, syn_ack.dst_flow) else {
            return;
        };
        if !control.flags.contains(ControlFlags::ACK) {
            return;
        }
        let local = self.interfaces.arrival_locator(&src, &dst);
        let mut reply = SalRepr::data(our_flow, Some(server_flow), syn_ack.protocol);
        reply.control = Some(ControlRepr {
            flags: ControlFlags::RST,
            verno: 0,
            ackno: control.verno.wrapping_add(1),
            nonce: control.nonce,
        });
        self.send_packet(local, src, super::output::build(&reply, &[]));
    }

    /// The client's flow gets its SYN-ACK: the peer is where it spoke from,
    /// and this end is where it was answered (after broadcast discovery, the
    /// interface the first answering server is on). Returns whether the
    /// packet's transport segment is to be processed.
    pub(super) fn syn_ack_input(
        &mut self,
        id: FlowId,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        control: &ControlRepr,
    ) -> bool {
        let arrival = self.interfaces.arrival_locator(&src, &dst);
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        if flow.control.take_acked(control).is_empty() {
            self.stats.stale += 1;
            return false;
        }
        flow.path.set_peer_locators(advertised(repr, &src));
        flow.control.peer_nonce = Some(control.nonce);
        flow.control.peer_next = control.verno.wrapping_add(1);
        flow.peer_flow = repr.src_flow;
        flow.path.remote = Some(src);
        if std::mem::take(&mut flow.path.discovery) {
            flow.path.local = arrival;
        }
        flow.state = FlowState::Established;
        let local = flow.path.local.ip();
        let is_stream = match flow.stream_mut() {
            // The socket answers the SYN-ACK; that answer becomes the
            // SAL ACK (see `Host::stream_transmit`).
            Some(stream) => {
                stream.ack_owed = true;
                true
            }
            None => false,
        };
        self.events.push_back(Event::Connected(id));
        if !is_stream {
            let segment = udp_segment(&[], local, src.ip());
            self.send_ack(id, true, &segment);
        }
        self.arm_liveness(id);
        self.arm_keepalive(id);
        true
    }

    /// A SYN-ACK again on an established client flow: our ACK was lost;
    /// answer it again.
    pub(super) fn repeated_syn_ack(&mut self, id: FlowId, control: &ControlRepr) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.role == Role::Client
            && flow.control.accept_verno(control.verno) == Sequence::Duplicate
        {
            self.send_ack(id, true, &[]);
        } else {
            self.stats.stale += 1;
        }
    }

    /// The server's side of the handshake is complete: queue for accept.
    pub(super) fn establish_server(&mut self, id: FlowId) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.state != FlowState::SynReceived {
            return;
        }
        flow.state = FlowState::Established;
        if let Some(listener) = flow.listener {
            if self.listeners.established(listener, id) {
                self.events.push_back(Event::Incoming(listener));
            }
        }
        self.arm_liveness(id);
    }
}
