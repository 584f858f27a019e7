//! The packet-level half of [`Host`]: input, output, timers, DELAY, routing.

use std::cmp::Reverse;
use std::net::Ipv4Addr;

use rand::Rng;
use smoltcp::time::Instant;

use super::control::{ControlKind, ControlState, Pending, Sequence};
use super::{
    ConnectError, DatagramPeer, Delayed, Endpoint, Event, Flow, FlowState, Host, HostError,
    ReceivedDatagram, Role, Transmit,
};
use crate::id::{FlowId, ServiceId};
use crate::locator::Locator;
use crate::table::{ListenerId, Resolution};
use crate::transport::{finish_outgoing, OutgoingSegment};
use crate::wire::{
    self, fill_transport_checksum, readdress_transport_checksum, verify_transport_checksum,
    AddressRepr, ControlFlags, ControlRepr, SalPacket, SalRepr, SourceRepr, TransportProtocol,
};

/// TCP header flag bits, as seen in byte 13 of a segment.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_RST: u8 = 0x04;
/// The UDP-style header after the SAL header of a datagram.
const UDP_HEADER_LEN: usize = 8;
/// Largest datagram payload: leaves room in a 1500-byte packet for IPv4 (20),
/// a SAL header with SERVICE (48), a few SOURCE hops, and the UDP header.
pub const MAX_DATAGRAM: usize = 1400;
/// How often flows are checked for silence.
const LIVENESS_PERIOD: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(100);
/// Rounds of loopback delivery and transport output per [`Host::poll`]; a
/// local connect takes three, so this only guards against runaway loops.
const POLL_ROUNDS: usize = 64;

/// A SAL packet: `repr`'s header followed by `segment`.
fn build(repr: &SalRepr, segment: &[u8]) -> Vec<u8> {
    let len = repr.header_len();
    let mut packet = vec![0u8; len + segment.len()];
    // The buffer is sized from the repr, and reprs we build stay far below
    // the 1020-byte header limit, so emission cannot fail.
    if repr.emit(&mut packet).is_ok() {
        packet[len..].copy_from_slice(segment);
    }
    packet
}

/// A UDP-style header (ports 0) and payload, checksummed for `src` -> `dst`.
fn udp_segment(data: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut segment = vec![0u8; UDP_HEADER_LEN + data.len()];
    // Callers bound `data` by MAX_DATAGRAM, so the length fits in 16 bits.
    segment[4..6].copy_from_slice(&((UDP_HEADER_LEN + data.len()) as u16).to_be_bytes());
    segment[UDP_HEADER_LEN..].copy_from_slice(data);
    let _ = fill_transport_checksum(TransportProtocol::Datagram, src, dst, &mut segment);
    segment
}

/// The payload of a UDP-style segment, if its header and length are sane.
fn udp_payload(segment: &[u8]) -> Option<&[u8]> {
    if segment.len() < UDP_HEADER_LEN {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([segment[4], segment[5]]));
    (UDP_HEADER_LEN..=segment.len())
        .contains(&len)
        .then(|| &segment[UDP_HEADER_LEN..len])
}

/// Where a control message in flight goes now: a SYN to the first hop,
/// anything else to the peer's current locator, always from the flow's
/// current locator (so retransmissions follow migrations on both sides).
fn pending_transmit(flow: &Flow, pending: &Pending, ttl: u8) -> Option<Transmit> {
    let dst = if pending.kind == ControlKind::Syn {
        flow.next_hop
    } else {
        flow.remote
    }?;
    Some(Transmit {
        src: flow.local,
        dst,
        ttl,
        payload: pending.packet.clone(),
    })
}

/// The other locators a peer advertised in an ADDRESS extension, reached
/// the same way as `src`.
fn advertised(repr: &SalRepr, src: &Locator) -> Vec<Locator> {
    repr.address
        .as_ref()
        .map(|a| a.addrs.iter().map(|&ip| locator_like(src, ip)).collect())
        .unwrap_or_default()
}

/// A locator for `ip` reached the same way as `template` (same UDP port, if any).
fn locator_like(template: &Locator, ip: Ipv4Addr) -> Locator {
    match template {
        Locator::Ipv4(_) => Locator::Ipv4(ip),
        Locator::Udp(addr) => Locator::Udp(std::net::SocketAddrV4::new(ip, addr.port())),
    }
}

impl Host {
    // ----- input -----------------------------------------------------------

    /// Takes one received SAL packet (the IPv4 or UDP payload) that arrived
    /// from `src` addressed to `dst` with IP TTL `ttl`. Call [`Host::poll`]
    /// after a batch of packets.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        src: Locator,
        dst: Locator,
        ttl: u8,
        bytes: &[u8],
    ) {
        self.now = now;
        self.stats.packets_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let Ok(packet) = SalPacket::new_checked(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let repr = match SalRepr::parse(&packet) {
            Ok(repr) => repr,
            Err(wire::Error::BadChecksum) => {
                self.stats.bad_checksum += 1;
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        let segment = packet.payload();
        match repr.dst_flow {
            None => self.handle_first_packet(src, dst, ttl, &repr, segment, bytes.len()),
            Some(id) => self.handle_flow_packet(src, dst, &repr, segment, id),
        }
    }

    /// A SYN or an unconnected datagram: resolve its service.
    fn handle_first_packet(
        &mut self,
        src: Locator,
        dst: Locator,
        ttl: u8,
        repr: &SalRepr,
        segment: &[u8],
        len: usize,
    ) {
        let Some(service) = repr.service else {
            self.stats.malformed += 1;
            return;
        };
        let is_syn = match repr.control {
            Some(c) => c.flags.contains(ControlFlags::SYN) && !c.flags.contains(ControlFlags::ACK),
            None => false,
        };
        if !is_syn
            && (repr.control.is_some() || repr.protocol != TransportProtocol::Datagram.number())
        {
            self.stats.stale += 1;
            return;
        }
        // The client is the first address the packet came through.
        let client = match repr.source.as_ref().and_then(|s| s.addrs.first()) {
            Some(&ip) => locator_like(&src, ip),
            None => src,
        };
        let resolution = self.table.resolve(&service, len, &mut self.rng);
        match resolution {
            Resolution::Demux(listener) if is_syn => {
                self.accept_syn(listener, client, src, dst, repr, segment)
            }
            Resolution::Demux(listener) => {
                self.deliver_unconnected(listener, client, src, dst, repr, segment)
            }
            Resolution::Forward(next) if self.config.forward && !self.is_local(next.ip()) => {
                self.forward(next, src, dst, ttl, repr, segment)
            }
            Resolution::Delay => {
                let bytes = build(repr, segment);
                self.hold(service, src, dst, ttl, bytes);
            }
            Resolution::Forward(_) | Resolution::Drop | Resolution::NoMatch => {
                // Only a SYN sent to us personally earns an answer: a
                // broadcast SYN for a service we lack is someone else's.
                if is_syn && self.is_local(dst.ip()) {
                    self.refuse(client, repr, true);
                }
            }
        }
    }

    /// Holds a first packet under a DELAY rule and asks for a resolution.
    fn hold(&mut self, service: ServiceId, src: Locator, dst: Locator, ttl: u8, packet: Vec<u8>) {
        if self.delayed.len() >= self.config.delay_queue_limit {
            self.stats.delay_dropped += 1;
            return;
        }
        self.stats.delayed += 1;
        self.delayed.push_back(Delayed::Packet {
            service,
            src,
            dst,
            ttl,
            packet,
            deadline: self.now + self.config.delay_timeout,
        });
        self.events.push_back(Event::DelayNotify(service));
    }

    /// Service-router forwarding: re-address toward `next`, record where the
    /// packet came from in SOURCE, and spend one unit of TTL.
    fn forward(
        &mut self,
        next: Locator,
        src: Locator,
        dst: Locator,
        ttl: u8,
        repr: &SalRepr,
        segment: &[u8],
    ) {
        if ttl <= 1 {
            self.stats.ttl_expired += 1;
            return;
        }
        let Some(local) = self.source_for(&next) else {
            return;
        };
        let mut repr = repr.clone();
        let source = repr.source.get_or_insert_with(SourceRepr::default);
        if source.addrs.try_push(src.ip()).is_err() {
            self.stats.source_full += 1;
            return;
        }
        let mut packet = build(&repr, segment);
        let header_len = repr.header_len();
        if let Some(protocol) = TransportProtocol::from_number(repr.protocol) {
            readdress_transport_checksum(
                protocol,
                &mut packet[header_len..],
                (src.ip(), dst.ip()),
                (local.ip(), next.ip()),
            );
        }
        self.stats.forwarded += 1;
        self.queue_transmit(Transmit {
            src: local,
            dst: next,
            ttl: ttl - 1,
            payload: packet,
        });
    }

    /// Answers a SYN with a SAL-only RST (NACK added for "no route"). See the
    /// module docs for why it echoes the SYN's nonce.
    fn refuse(&mut self, client: Locator, syn: &SalRepr, no_route: bool) {
        let Some(control) = syn.control else {
            return;
        };
        let Some(local) = self.source_for(&client) else {
            return;
        };
        self.stats.refused += 1;
        let mut reply = SalRepr::data(syn.src_flow, Some(syn.src_flow), syn.protocol);
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
        self.queue_transmit(Transmit {
            src: local,
            dst: client,
            ttl: self.config.ttl,
            payload: build(&reply, &[]),
        });
    }

    /// The local locator a packet from `src` to `dst` arrived on.
    fn arrival_locator(&self, src: &Locator, dst: &Locator) -> Locator {
        self.interfaces
            .iter()
            .find(|i| i.locator.ip() == dst.ip())
            .map(|i| i.locator)
            .or_else(|| self.source_for(src))
            .unwrap_or(*dst)
    }

    /// A SYN for a local listener: open the server side of a flow.
    fn accept_syn(
        &mut self,
        listener_id: ListenerId,
        client: Locator,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
    ) {
        let Some(control) = repr.control else {
            return;
        };
        if let Some(&existing) = self.half_open.get(&(client.ip(), repr.src_flow)) {
            // The client retransmitted its SYN: our SYN-ACK was lost.
            self.retransmit_now(existing);
            return;
        }
        let Some(listener) = self.listeners.get(&listener_id) else {
            self.refuse(client, repr, false);
            return;
        };
        let Some(protocol) = TransportProtocol::from_number(repr.protocol) else {
            self.refuse(client, repr, false);
            return;
        };
        if listener.protocol != protocol
            || listener.half_open + listener.accept_queue.len() >= listener.backlog
        {
            self.refuse(client, repr, false);
            return;
        }
        if protocol == TransportProtocol::Stream
            && !verify_transport_checksum(protocol, src.ip(), dst.ip(), segment)
        {
            self.stats.bad_checksum += 1;
            return;
        }
        let local = self.arrival_locator(&client, &dst);
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
        flow.peer_flow = Some(repr.src_flow);
        flow.state = FlowState::SynReceived;
        flow.remote = Some(client);
        flow.peer_locators = advertised(repr, &client);
        flow.listener = Some(listener_id);
        let Ok(id) = self.insert_flow(flow) else {
            self.refuse(client, repr, false);
            return;
        };
        if let Some(listener) = self.listeners.get_mut(&listener_id) {
            listener.half_open += 1;
        }
        self.half_open.insert((client.ip(), repr.src_flow), id);
        match protocol {
            TransportProtocol::Stream => match self.transport.open_server(id) {
                Ok(handle) => {
                    self.transport.deliver(handle, segment);
                    if let Ok(flow) = self.flow_mut(id) {
                        flow.stream = Some(handle);
                    }
                    // The SYN-ACK comes out of the transport in poll().
                }
                Err(_) => {
                    self.free_flow(id);
                    self.refuse(client, repr, false);
                }
            },
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

    /// Stores a new flow under a fresh random flow ID.
    fn insert_flow(&mut self, mut flow: Flow) -> Result<FlowId, HostError> {
        let limit = self.endpoints.capacity();
        self.endpoints
            .insert_new(&mut self.rng, |id| {
                flow.id = id;
                Endpoint::Flow(Box::new(flow))
            })
            .map_err(|_| HostError::TooManyFlows(limit))
    }

    /// An unconnected datagram for a local datagram listener.
    fn deliver_unconnected(
        &mut self,
        listener: ListenerId,
        client: Locator,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
    ) {
        let Some(socket) = self.listener_socket(listener) else {
            return;
        };
        self.deliver_to_socket(socket, client, src, dst, repr, segment);
    }

    fn deliver_to_socket(
        &mut self,
        socket: FlowId,
        peer: Locator,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
    ) {
        if repr.protocol != TransportProtocol::Datagram.number()
            || !verify_transport_checksum(TransportProtocol::Datagram, src.ip(), dst.ip(), segment)
        {
            self.stats.bad_checksum += 1;
            return;
        }
        let Some(data) = udp_payload(segment) else {
            self.stats.malformed += 1;
            return;
        };
        let limit = self.config.datagram_queue_limit;
        let Some(Endpoint::Datagram(sock)) = self.endpoints.get_mut(socket) else {
            return;
        };
        if sock.queue.len() >= limit {
            self.stats.datagram_overflow += 1;
            return;
        }
        sock.queue.push_back(ReceivedDatagram {
            peer: DatagramPeer {
                locator: peer,
                flow: repr.src_flow,
            },
            service: repr.service,
            data: data.to_vec(),
        });
        self.events.push_back(Event::Datagram(socket));
    }

    /// A packet addressed to one of our flow IDs.
    fn handle_flow_packet(
        &mut self,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
        id: FlowId,
    ) {
        match self.endpoints.get(id) {
            None => self.stats.unknown_flow += 1,
            Some(Endpoint::Datagram(_)) => {
                if repr.control.is_some() {
                    self.stats.stale += 1;
                } else {
                    self.deliver_to_socket(id, src, src, dst, repr, segment);
                }
            }
            Some(Endpoint::Flow(_)) => self.flow_input(id, src, dst, repr, segment),
        }
    }

    fn flow_input(
        &mut self,
        id: FlowId,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
    ) {
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        if flow.peer_flow.is_some_and(|peer| peer != repr.src_flow) {
            self.stats.stale += 1;
            return;
        }
        flow.counters.packets_in += 1;
        flow.counters.bytes_in += segment.len() as u64;
        flow.last_rx = self.now;
        if let Some(control) = repr.control {
            if !self.flow_control_input(id, src, repr, &control) {
                return;
            }
        } else if flow.state == FlowState::SynReceived && !segment.is_empty() {
            // Data before the ACK: the ACK was lost but the client is established.
            flow.control.pending.clear();
            self.establish_server(id);
        }
        if segment.is_empty() {
            self.mark_dirty(id);
            return;
        }
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        if !matches!(flow.state, FlowState::Established) {
            return;
        }
        match flow.protocol {
            TransportProtocol::Stream => {
                if !verify_transport_checksum(
                    TransportProtocol::Stream,
                    src.ip(),
                    dst.ip(),
                    segment,
                ) {
                    self.stats.bad_checksum += 1;
                    return;
                }
                let header = usize::from(segment[12] >> 4) * 4;
                if flow.app_closed && segment.len() > header {
                    // Data for an application that closed: nobody will read it.
                    let _ = self.engine_abort(id);
                    return;
                }
                if segment[13] & TCP_ACK != 0 && !flow.replay.is_empty() {
                    flow.replay.acknowledge(segment);
                }
                if let Some(handle) = flow.stream {
                    self.transport.deliver(handle, segment);
                }
            }
            TransportProtocol::Datagram => {
                if !verify_transport_checksum(
                    TransportProtocol::Datagram,
                    src.ip(),
                    dst.ip(),
                    segment,
                ) {
                    self.stats.bad_checksum += 1;
                    return;
                }
                match udp_payload(segment) {
                    Some(data) if !data.is_empty() || repr.control.is_none() => {
                        if flow.datagrams.len() < self.config.datagram_queue_limit {
                            flow.datagrams.push_back(data.to_vec());
                        } else {
                            self.stats.datagram_overflow += 1;
                        }
                    }
                    Some(_) => {}
                    None => self.stats.malformed += 1,
                }
            }
        }
        self.mark_dirty(id);
    }

    /// The CONTROL part of a packet on a flow. Returns whether the rest of the
    /// packet (its transport segment) should still be processed.
    fn flow_control_input(
        &mut self,
        id: FlowId,
        src: Locator,
        repr: &SalRepr,
        control: &ControlRepr,
    ) -> bool {
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return false;
        };
        let flags = control.flags;
        if flags.contains(ControlFlags::RST) {
            let valid = if flow.state == FlowState::SynSent {
                // A refusal: it must answer our SYN and echo our own nonce.
                control.nonce == flow.control.local_nonce
                    && flow.control.pending.iter().any(|p| {
                        p.kind == ControlKind::Syn && control.ackno == p.verno.wrapping_add(1)
                    })
            } else {
                flow.control.nonce_ok(control)
            };
            if !valid {
                self.stats.bad_nonce += 1;
                return false;
            }
            if flow.state == FlowState::SynSent {
                let error = if flags.contains(ControlFlags::NACK) {
                    ConnectError::NoRoute
                } else {
                    ConnectError::Refused
                };
                self.fail_connect(id, error);
            } else {
                self.kill(id);
            }
            return false;
        }
        if flow.state == FlowState::SynSent && flags.contains(ControlFlags::SYN | ControlFlags::ACK)
        {
            if flow.control.take_acked(control).is_empty() {
                self.stats.stale += 1;
                return false;
            }
            flow.peer_locators = advertised(repr, &src);
            flow.control.peer_nonce = Some(control.nonce);
            flow.control.peer_next = control.verno.wrapping_add(1);
            flow.peer_flow = Some(repr.src_flow);
            flow.remote = Some(src);
            flow.state = FlowState::Established;
            let protocol = flow.protocol;
            self.events.push_back(Event::Connected(id));
            match protocol {
                // The transport answers the SYN-ACK; that answer becomes the
                // SAL ACK (see transport_output).
                TransportProtocol::Stream => flow.ack_owed = true,
                TransportProtocol::Datagram => {
                    let local = flow.local.ip();
                    let segment = udp_segment(&[], local, src.ip());
                    self.send_ack(id, true, &segment);
                }
            }
            return true;
        }
        if !flow.control.nonce_ok(control) {
            self.stats.bad_nonce += 1;
            return false;
        }
        if repr.address.is_some() {
            flow.peer_locators = advertised(repr, &src);
        }
        if flags.contains(ControlFlags::SYN) {
            // A retransmitted SYN-ACK: our ACK was lost; answer it again.
            if flow.role == Role::Client
                && flow.control.accept_verno(control.verno) == Sequence::Duplicate
            {
                self.send_ack(id, true, &[]);
            } else {
                self.stats.stale += 1;
            }
            return false;
        }
        let acked = flow.control.take_acked(control);
        if acked.iter().any(|p| p.kind == ControlKind::Fin) {
            flow.fin_acked = true;
        }
        if acked.iter().any(|p| p.kind == ControlKind::Rsyn) {
            self.replay(id);
        }
        if acked.iter().any(|p| p.kind == ControlKind::SynAck) {
            self.establish_server(id);
        }
        if flags.contains(ControlFlags::RSYN) {
            self.rsyn_input(id, src, control);
        }
        if flags.contains(ControlFlags::FIN) {
            let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
                return false;
            };
            match flow.control.accept_verno(control.verno) {
                Sequence::New => {
                    flow.peer_fin = true;
                    self.send_ack(id, false, &[]);
                    self.mark_dirty(id);
                }
                Sequence::Duplicate => self.send_ack(id, false, &[]),
                Sequence::Stale => self.stats.stale += 1,
            }
        }
        true
    }

    /// An RSYN from the peer (or its RSYN-ACK answering ours). The nonce was
    /// checked by the caller; the `verno` decides whether it is news.
    fn rsyn_input(&mut self, id: FlowId, src: Locator, control: &ControlRepr) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let sequence = flow.control.accept_verno(control.verno);
        if sequence == Sequence::Stale {
            self.stats.stale += 1;
            return;
        }
        // The peer speaks from where it now is: follow it. A retransmitted
        // RSYN from yet another locator also moves us (the latest wins).
        let moved = flow.remote != Some(src);
        if moved {
            flow.remote = Some(src);
            flow.peer_moves += 1;
        }
        let answered = flow.control.in_flight(ControlKind::RsynAck);
        if moved {
            self.events.push_back(Event::PeerMoved(id, src));
            self.replay(id);
        }
        if control.flags.contains(ControlFlags::ACK) {
            // An RSYN-ACK: our RSYN was retired by the caller; confirm it.
            self.send_ack(id, false, &[]);
        } else if sequence == Sequence::New {
            self.send_new_control(
                id,
                ControlKind::RsynAck,
                ControlFlags::RSYN | ControlFlags::ACK,
                false,
                &[],
            );
        } else if answered {
            self.retransmit_now(id);
        } else {
            self.send_ack(id, false, &[]);
        }
    }

    /// The server's side of the handshake is complete: queue for accept.
    fn establish_server(&mut self, id: FlowId) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.state != FlowState::SynReceived {
            return;
        }
        flow.state = FlowState::Established;
        let key = (flow.remote.map(|r| r.ip()), flow.peer_flow);
        let listener_id = flow.listener;
        if let (Some(ip), Some(peer)) = key {
            self.half_open.remove(&(ip, peer));
        }
        if let Some(listener) = listener_id.and_then(|l| self.listeners.get_mut(&l)) {
            listener.half_open = listener.half_open.saturating_sub(1);
            listener.accept_queue.push_back(id);
            self.events
                .push_back(Event::Incoming(listener_id.expect("checked above")));
        }
    }

    // ----- output ----------------------------------------------------------

    /// Queues a packet for the link, or for ourselves if it is addressed here.
    fn queue_transmit(&mut self, transmit: Transmit) {
        if self.is_local(transmit.dst.ip()) {
            self.loopback.push_back(transmit);
        } else {
            self.stats.packets_out += 1;
            self.stats.bytes_out += transmit.payload.len() as u64;
            self.transmits.push_back(transmit);
        }
    }

    /// Sends a new numbered control message on a flow and keeps it for
    /// retransmission until it is acknowledged.
    fn send_new_control(
        &mut self,
        id: FlowId,
        kind: ControlKind,
        flags: ControlFlags,
        with_service: bool,
        segment: &[u8],
    ) {
        let ttl = self.config.ttl;
        let rto = self.config.control_rto;
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let control = flow.control.new_message(flags);
        let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol.number());
        repr.control = Some(control);
        if with_service {
            repr.service = Some(flow.service);
        }
        let local = flow.local;
        if kind != ControlKind::Syn {
            repr.address = self.advertisement(local, &control);
        }
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let pending = Pending {
            kind,
            verno: control.verno,
            packet: build(&repr, segment),
            retries: 0,
            rto,
            deadline: now + rto,
        };
        let transmit = pending_transmit(flow, &pending, ttl);
        flow.control.pending.push_back(pending);
        if let Some(transmit) = transmit {
            flow.counters.packets_out += 1;
            self.timers.push(Reverse((now + rto, id)));
            self.queue_transmit(transmit);
        }
    }

    /// For a multi-homed host, an ADDRESS extension listing its other
    /// locators, so the peer knows where else to find it. Single-homed hosts
    /// send none, as the reference stack does.
    fn advertisement(&self, current: Locator, control: &ControlRepr) -> Option<AddressRepr> {
        let mut address = AddressRepr {
            verno: control.verno,
            ackno: control.ackno,
            ..AddressRepr::default()
        };
        for iface in self
            .interfaces
            .iter()
            .filter(|i| i.up && i.locator != current)
        {
            if address.addrs.try_push(iface.locator.ip()).is_err() {
                break;
            }
        }
        (!address.addrs.is_empty()).then_some(address)
    }

    /// Sends a bare ACK (with SERVICE when it completes a client handshake).
    fn send_ack(&mut self, id: FlowId, with_service: bool, segment: &[u8]) {
        let ttl = self.config.ttl;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let Some(dst) = flow.remote else {
            return;
        };
        let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol.number());
        let control = flow.control.ack();
        repr.control = Some(control);
        flow.counters.packets_out += 1;
        let src = flow.local;
        if with_service {
            // The third packet of a handshake: also where else to find us.
            repr.service = Some(flow.service);
            repr.address = self.advertisement(src, &control);
        }
        let payload = build(&repr, segment);
        self.queue_transmit(Transmit {
            src,
            dst,
            ttl,
            payload,
        });
    }

    /// Resends a flow's control messages in flight now (a duplicate arrived).
    fn retransmit_now(&mut self, id: FlowId) {
        let ttl = self.config.ttl;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let transmits: Vec<Transmit> = flow
            .control
            .pending
            .iter()
            .filter_map(|pending| pending_transmit(flow, pending, ttl))
            .collect();
        for transmit in transmits {
            self.stats.retransmits += 1;
            self.queue_transmit(transmit);
        }
    }

    /// Turns a segment the transport emitted into SAL packets, by flow state.
    fn transport_output(&mut self, mut out: OutgoingSegment) {
        let ttl = self.config.ttl;
        let multi_homed = self.interfaces.len() > 1;
        let Ok(flow) = self.flow_mut(out.flow) else {
            return;
        };
        let id = flow.id;
        let flags = out.segment.get(13).copied().unwrap_or(0);
        match flow.state {
            FlowState::Resolving => {}
            FlowState::SynSent => {
                if flags & TCP_SYN != 0 && !flow.control.in_flight(ControlKind::Syn) {
                    let dst = flow.next_hop.map_or(flow.local.ip(), |n| n.ip());
                    finish_outgoing(&mut out.segment, flow.local.ip(), dst);
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
                    let Some(remote) = flow.remote else {
                        return;
                    };
                    finish_outgoing(&mut out.segment, flow.local.ip(), remote.ip());
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
                let Some(remote) = flow.remote else {
                    return;
                };
                finish_outgoing(&mut out.segment, flow.local.ip(), remote.ip());
                if std::mem::take(&mut flow.ack_owed) {
                    let header = usize::from(out.segment[12] >> 4) * 4;
                    if out.segment.len() <= header {
                        self.send_ack(id, true, &out.segment);
                        return;
                    }
                    // Data rides in its own packet: a full segment after the
                    // 68-byte handshake header would not fit the MTU.
                    self.send_ack(id, true, &[]);
                }
                let Ok(flow) = self.flow_mut(id) else {
                    return;
                };
                let repr =
                    SalRepr::data(flow.id, flow.peer_flow, TransportProtocol::Stream.number());
                flow.counters.packets_out += 1;
                flow.counters.bytes_out += out.segment.len() as u64;
                let src = flow.local;
                flow.replay.note_sent(&out.segment);
                let moving = flow.control.in_flight(ControlKind::Rsyn);
                let kept = (multi_homed || moving)
                    && flow.replay.record(&out.segment, src.ip(), remote.ip());
                if moving && kept {
                    // Held until the peer confirms the move: the replay then
                    // sends it right behind what the old path lost. Sent now,
                    // it could not be delivered before the hole is filled,
                    // and every copy would draw a duplicate ACK that queues
                    // ahead of the RSYN-ACK.
                    return;
                }
                let payload = build(&repr, &out.segment);
                self.queue_transmit(Transmit {
                    src,
                    dst: remote,
                    ttl,
                    payload,
                });
            }
        }
    }

    // ----- time ------------------------------------------------------------

    /// Advances the host to `now`: delivers packets addressed to itself, runs
    /// retransmission and DELAY timers and the transport, and turns what that
    /// produced into transmits and events. Call after input and at
    /// [`Host::poll_timeout`].
    pub fn poll(&mut self, now: Instant) {
        self.now = now;
        self.fire_timers(now);
        self.expire_delayed(now);
        if self.config.auto_migrate && now >= self.next_liveness {
            self.next_liveness = now + LIVENESS_PERIOD;
            self.check_liveness();
        }
        let mut segments = Vec::new();
        for _ in 0..POLL_ROUNDS {
            while let Some(t) = self.loopback.pop_front() {
                self.handle_packet(now, t.src, t.dst, t.ttl, &t.payload);
            }
            self.transport.poll(now, &mut segments);
            let produced = !segments.is_empty();
            for segment in segments.drain(..) {
                self.transport_output(segment);
            }
            self.check_dirty_flows();
            if self.loopback.is_empty() && !produced {
                break;
            }
        }
    }

    /// Emits activity for flows touched since the last poll, sends SAL FINs
    /// whose time has come, and releases finished flows.
    fn check_dirty_flows(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            let Ok(flow) = self.flow_mut(id) else {
                continue;
            };
            flow.dirty = false;
            let state = flow.state;
            if state == FlowState::Established && !flow.fin_sent {
                let done_sending = match flow.stream {
                    Some(handle) => self.transport.fin_acked(handle),
                    None => flow.app_closed,
                };
                if done_sending {
                    if let Ok(flow) = self.flow_mut(id) {
                        flow.fin_sent = true;
                    }
                    self.send_new_control(id, ControlKind::Fin, ControlFlags::FIN, false, &[]);
                }
            }
            let Ok(flow) = self.flow_mut(id) else {
                continue;
            };
            let finished = (flow.fin_acked && flow.peer_fin) || flow.state == FlowState::Dead;
            if finished && flow.app_closed {
                self.free_flow(id);
            } else if matches!(state, FlowState::Established | FlowState::Dead) {
                self.events.push_back(Event::Activity(id));
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, id))) = self.timers.peek() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            self.retransmit_due(id, now);
        }
    }

    /// Retransmits the flow's messages whose deadline passed, with doubled
    /// timeouts, and gives up on those out of retries.
    fn retransmit_due(&mut self, id: FlowId, now: Instant) {
        let retries = self.config.control_retries;
        let ttl = self.config.ttl;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let mut expired = Vec::new();
        let mut transmits = Vec::new();
        let mut next_deadline = None::<Instant>;
        let mut index = 0;
        while index < flow.control.pending.len() {
            let pending = &mut flow.control.pending[index];
            if pending.deadline > now {
                next_deadline =
                    Some(next_deadline.map_or(pending.deadline, |d| d.min(pending.deadline)));
                index += 1;
                continue;
            }
            if pending.retries >= retries {
                if let Some(gone) = flow.control.pending.remove(index) {
                    expired.push(gone.kind);
                }
                continue;
            }
            pending.retries += 1;
            pending.rto *= 2;
            pending.deadline = now + pending.rto;
            let deadline = pending.deadline;
            next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
            let pending = flow.control.pending[index].clone();
            if let Some(transmit) = pending_transmit(flow, &pending, ttl) {
                transmits.push(transmit);
            }
            index += 1;
        }
        if let Some(deadline) = next_deadline {
            self.timers.push(Reverse((deadline, id)));
        }
        for transmit in transmits {
            self.stats.retransmits += 1;
            self.queue_transmit(transmit);
        }
        for kind in expired {
            match kind {
                ControlKind::Syn => return self.fail_connect(id, ConnectError::TimedOut),
                ControlKind::SynAck => return self.free_flow(id),
                // Nobody answers on any path we tried: the flow is lost.
                ControlKind::Rsyn => {
                    self.stats.migrations_failed += 1;
                    return self.kill(id);
                }
                ControlKind::Probe => return self.kill(id),
                ControlKind::RsynAck => {}
                ControlKind::Fin => {
                    // The peer is gone; stop waiting for it.
                    if let Ok(flow) = self.flow_mut(id) {
                        flow.fin_acked = true;
                        flow.peer_fin = true;
                    }
                    self.mark_dirty(id);
                }
            }
        }
    }

    fn expire_delayed(&mut self, now: Instant) {
        let mut kept = std::collections::VecDeque::with_capacity(self.delayed.len());
        for entry in std::mem::take(&mut self.delayed) {
            if entry.deadline() > now {
                kept.push_back(entry);
                continue;
            }
            self.stats.delay_dropped += 1;
            if let Delayed::Connect { flow, .. } = entry {
                self.fail_connect(flow, ConnectError::TimedOut);
            }
        }
        self.delayed = kept;
    }

    /// Routes again every packet and connect held by a DELAY rule; called
    /// whenever the table changes.
    pub(super) fn rematch_delayed(&mut self) {
        if self.delayed.is_empty() {
            return;
        }
        for entry in std::mem::take(&mut self.delayed) {
            let service = match &entry {
                Delayed::Packet { service, .. } => *service,
                Delayed::Connect { flow, .. } => match self.endpoints.get(*flow) {
                    Some(Endpoint::Flow(f)) => f.service,
                    _ => continue,
                },
            };
            if self
                .table
                .longest_match(&service)
                .is_some_and(|r| r.is_delay())
            {
                self.delayed.push_back(entry);
                continue;
            }
            match entry {
                Delayed::Packet {
                    src,
                    dst,
                    ttl,
                    packet,
                    ..
                } => self.handle_packet(self.now, src, dst, ttl, &packet),
                Delayed::Connect { flow, .. } => {
                    match self.table.resolve(&service, 0, &mut self.rng) {
                        Resolution::Forward(next) => self.start_connect(flow, next),
                        Resolution::Demux(_) => match self.interfaces.first() {
                            Some(i) => {
                                let next = i.locator;
                                self.start_connect(flow, next)
                            }
                            None => self.fail_connect(flow, ConnectError::NoRoute),
                        },
                        _ => self.fail_connect(flow, ConnectError::NoRoute),
                    }
                }
            }
        }
    }

    // ----- flow life -------------------------------------------------------

    pub(super) fn engine_connect(
        &mut self,
        service: ServiceId,
        protocol: TransportProtocol,
    ) -> Result<FlowId, HostError> {
        let Some(first) = self.interfaces.first().map(|i| i.locator) else {
            return Err(ConnectError::NoRoute.into());
        };
        let next = match self.table.resolve(&service, 0, &mut self.rng) {
            Resolution::Forward(next) => Some(next),
            Resolution::Demux(_) => Some(first),
            Resolution::Delay => None,
            Resolution::Drop | Resolution::NoMatch => return Err(ConnectError::NoRoute.into()),
        };
        let local = next.and_then(|n| self.source_for(&n)).unwrap_or(first);
        let control = ControlState::new(self.rng.random(), self.rng.random());
        let flow = Flow::new(service, protocol, Role::Client, local, control, self.now);
        let id = self.insert_flow(flow)?;
        match next {
            Some(next) => self.start_connect(id, next),
            None => {
                self.stats.delayed += 1;
                self.delayed.push_back(Delayed::Connect {
                    flow: id,
                    deadline: self.now + self.config.delay_timeout,
                });
                self.events.push_back(Event::DelayNotify(service));
            }
        }
        Ok(id)
    }

    /// Sends the SYN of a client flow toward `next`.
    fn start_connect(&mut self, id: FlowId, next: Locator) {
        let local = self.source_for(&next);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if let Some(local) = local {
            flow.local = local;
        }
        flow.next_hop = Some(next);
        flow.state = FlowState::SynSent;
        let (protocol, local) = (flow.protocol, flow.local);
        match protocol {
            TransportProtocol::Stream => match self.transport.open_client(id) {
                // The transport's SYN comes out in poll() and becomes the SAL SYN.
                Ok(handle) => {
                    if let Ok(flow) = self.flow_mut(id) {
                        flow.stream = Some(handle);
                    }
                }
                Err(_) => self.fail_connect(id, ConnectError::NoRoute),
            },
            TransportProtocol::Datagram => {
                let segment = udp_segment(&[], local.ip(), next.ip());
                self.send_new_control(id, ControlKind::Syn, ControlFlags::SYN, true, &segment);
            }
        }
    }

    fn fail_connect(&mut self, id: FlowId, error: ConnectError) {
        self.events.push_back(Event::ConnectFailed(id, error));
        self.free_flow(id);
    }

    /// The peer reset the flow: the transport is dropped without a word and
    /// the application sees a reset.
    fn kill(&mut self, id: FlowId) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        flow.state = FlowState::Dead;
        flow.control.pending.clear();
        if let Some(handle) = flow.stream.take() {
            self.transport.release(handle);
        }
        self.mark_dirty(id);
    }

    pub(super) fn engine_abort(&mut self, id: FlowId) -> Result<(), HostError> {
        let ttl = self.config.ttl;
        let flow = self.flow_mut(id)?;
        if let Some(remote) = flow.remote.filter(|_| flow.control.peer_nonce.is_some()) {
            let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol.number());
            let mut control = flow.control.ack();
            control.flags = ControlFlags::RST;
            repr.control = Some(control);
            let src = flow.local;
            self.queue_transmit(Transmit {
                src,
                dst: remote,
                ttl,
                payload: build(&repr, &[]),
            });
        }
        self.kill(id);
        Ok(())
    }

    /// Forgets a flow: transport socket, half-open accounting, ID.
    pub(super) fn free_flow(&mut self, id: FlowId) {
        let Some(Endpoint::Flow(flow)) = self.endpoints.remove(id) else {
            return;
        };
        if let Some(handle) = flow.stream {
            self.transport.release(handle);
        }
        if flow.state == FlowState::SynReceived {
            if let (Some(remote), Some(peer)) = (flow.remote, flow.peer_flow) {
                self.half_open.remove(&(remote.ip(), peer));
            }
            if let Some(listener) = flow.listener.and_then(|l| self.listeners.get_mut(&l)) {
                listener.half_open = listener.half_open.saturating_sub(1);
            }
        }
        if let Some(listener) = flow.listener.and_then(|l| self.listeners.get_mut(&l)) {
            listener.accept_queue.retain(|&queued| queued != id);
        }
        self.events.push_back(Event::Closed(id));
    }

    // ----- migration -------------------------------------------------------

    /// Moves a flow to `locator` (one of ours) with an RSYN. A migration
    /// started while an earlier one is unanswered reuses its RSYN: the peer
    /// follows whichever copy arrives last, so the latest move wins.
    pub(super) fn engine_migrate(&mut self, id: FlowId, locator: Locator) -> Result<(), HostError> {
        let now = self.now;
        let rto = self.config.control_rto;
        let flow = self.flow_mut(id)?;
        if flow.state != FlowState::Established {
            return Err(HostError::NotConnected);
        }
        if flow.local == locator {
            return Ok(());
        }
        flow.local = locator;
        flow.migrations += 1;
        flow.last_migration = Some(now);
        // Hearing nothing since the move is not yet a reason to move again.
        flow.last_rx = flow.last_rx.max(now);
        // An unanswered RSYN (a move, or a probe) is resent from here: the
        // peer follows whichever copy it hears last.
        let restarted = match flow.control.rsyn_mut() {
            Some(rsyn) => {
                rsyn.kind = ControlKind::Rsyn;
                rsyn.retries = 0;
                rsyn.rto = rto;
                rsyn.deadline = now + rto;
                true
            }
            None => false,
        };
        self.stats.migrations += 1;
        self.events.push_back(Event::Migrated(id, locator));
        if restarted {
            self.timers.push(Reverse((now + rto, id)));
            self.retransmit_now(id);
        } else {
            // Whatever else is in flight (a FIN, say) goes out from here too.
            self.retransmit_now(id);
            self.send_new_control(id, ControlKind::Rsyn, ControlFlags::RSYN, false, &[]);
        }
        self.mark_dirty(id);
        Ok(())
    }

    /// Resends the flow's unacknowledged stream segments on its current path
    /// (see [`super::replay`]).
    fn replay(&mut self, id: FlowId) {
        let ttl = self.config.ttl;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let Some(remote) = flow.remote else {
            return;
        };
        let (src, peer_flow) = (flow.local, flow.peer_flow);
        // Our latest ACK first, so the peer resends only what we lack.
        let ack = flow.replay.current_ack(src.ip(), remote.ip());
        let segments = ack
            .into_iter()
            .chain(flow.replay.replay(src.ip(), remote.ip()))
            .collect::<Vec<_>>();
        let repr = SalRepr::data(id, peer_flow, TransportProtocol::Stream.number());
        for segment in segments {
            self.stats.replayed += 1;
            self.queue_transmit(Transmit {
                src,
                dst: remote,
                ttl,
                payload: build(&repr, &segment),
            });
        }
    }

    /// Moves every established flow on `from` to another interface that is up.
    pub(super) fn evacuate(&mut self, from: Locator) {
        let Some(to) = self
            .interfaces
            .iter()
            .find(|i| i.up && i.locator != from)
            .map(|i| i.locator)
        else {
            return;
        };
        let flows: Vec<FlowId> = self
            .endpoints
            .iter()
            .filter_map(|(id, e)| match e {
                Endpoint::Flow(f) if f.local == from && f.state == FlowState::Established => {
                    Some(id)
                }
                _ => None,
            })
            .collect();
        for flow in flows {
            let _ = self.engine_migrate(flow, to);
        }
    }

    /// Liveness: a flow with something in flight that has heard nothing for
    /// `liveness_timeout` tries another path: first another local interface,
    /// else another locator the peer advertised. An idle flow silent for
    /// `idle_probe` sends a probe first (see [`ControlKind::Probe`]).
    pub(super) fn check_liveness(&mut self) {
        let now = self.now;
        let timeout = self.config.liveness_timeout;
        let interfaces_up = self.interfaces.iter().filter(|i| i.up).count();
        let mut silent = Vec::new();
        let mut idle = Vec::new();
        for (id, endpoint) in self.endpoints.iter() {
            let Endpoint::Flow(flow) = endpoint else {
                continue;
            };
            if flow.state != FlowState::Established {
                continue;
            }
            let quiet = now - flow.last_rx;
            let waiting = !flow.control.pending.is_empty()
                || flow.stream.is_some_and(|h| self.transport.has_unacked(h));
            if waiting && quiet >= timeout {
                silent.push(id);
            } else if !waiting
                && self.config.idle_probe.is_some_and(|after| quiet >= after)
                && (interfaces_up > 1 || flow.peer_locators.iter().any(|l| Some(*l) != flow.remote))
            {
                idle.push(id);
            }
        }
        for id in idle {
            if let Ok(flow) = self.flow_mut(id) {
                // The silence that matters from now on is the probe's.
                flow.last_rx = now;
            }
            self.stats.probes += 1;
            self.send_new_control(id, ControlKind::Probe, ControlFlags::RSYN, false, &[]);
        }
        for id in silent {
            let Ok(flow) = self.flow_mut(id) else {
                continue;
            };
            let current = flow.local;
            let remote = flow.remote;
            let peer_locators = flow.peer_locators.clone();
            let candidates: Vec<Locator> = self
                .interfaces
                .iter()
                .filter(|i| i.up)
                .map(|i| i.locator)
                .collect();
            let position = candidates.iter().position(|l| *l == current);
            let next = match position {
                Some(p) => candidates.get((p + 1) % candidates.len()).copied(),
                None => candidates.first().copied(),
            };
            match next.filter(|n| *n != current) {
                Some(next) => {
                    let _ = self.engine_migrate(id, next);
                }
                None => {
                    // Only one way out of here: try the peer's other locators.
                    let Some(remote) = remote else {
                        continue;
                    };
                    let mut others = peer_locators.iter().filter(|l| **l != remote);
                    if let Some(&other) = others.next() {
                        if let Ok(flow) = self.flow_mut(id) {
                            flow.peer_locators.retain(|l| *l != other);
                            flow.peer_locators.push(remote);
                            flow.remote = Some(other);
                            flow.last_rx = now;
                            flow.peer_moves += 1;
                        }
                        self.events.push_back(Event::PeerMoved(id, other));
                        self.retransmit_now(id);
                    } else if let Ok(flow) = self.flow_mut(id) {
                        // Nothing else to try now; look again after another timeout.
                        flow.last_rx = now;
                    }
                }
            }
        }
    }

    // ----- datagrams -------------------------------------------------------

    /// A payload may go out on `socket`: it fits, and the socket exists.
    fn check_datagram_socket(&self, socket: FlowId, data: &[u8]) -> Result<(), HostError> {
        if data.len() > MAX_DATAGRAM {
            return Err(HostError::TooLarge(data.len()));
        }
        if !matches!(self.endpoints.get(socket), Some(Endpoint::Datagram(_))) {
            return Err(HostError::NoSuchFlow(socket));
        }
        Ok(())
    }

    /// Sends `repr`'s header with a UDP-style segment of `data`, `src` -> `dst`.
    fn send_datagram_packet(&mut self, repr: &SalRepr, data: &[u8], src: Locator, dst: Locator) {
        let segment = udp_segment(data, src.ip(), dst.ip());
        self.queue_transmit(Transmit {
            src,
            dst,
            ttl: self.config.ttl,
            payload: build(repr, &segment),
        });
    }

    pub(super) fn engine_send_to(
        &mut self,
        socket: FlowId,
        service: ServiceId,
        data: &[u8],
    ) -> Result<(), HostError> {
        self.check_datagram_socket(socket, data)?;
        let Some(first) = self.interfaces.first().map(|i| i.locator) else {
            return Err(ConnectError::NoRoute.into());
        };
        let mut repr = SalRepr::data(socket, None, TransportProtocol::Datagram.number());
        repr.service = Some(service);
        match self.table.resolve(&service, data.len(), &mut self.rng) {
            Resolution::Forward(next) => {
                let local = self.source_for(&next).unwrap_or(first);
                self.send_datagram_packet(&repr, data, local, next);
                Ok(())
            }
            Resolution::Demux(_) => {
                self.send_datagram_packet(&repr, data, first, first);
                Ok(())
            }
            Resolution::Delay => {
                // Held as if received from ourselves: when a rule appears it is
                // routed like any first packet (and forwarded with SOURCE).
                let segment = udp_segment(data, first.ip(), first.ip());
                let ttl = self.config.ttl;
                self.hold(service, first, first, ttl, build(&repr, &segment));
                Ok(())
            }
            Resolution::Drop | Resolution::NoMatch => Err(ConnectError::NoRoute.into()),
        }
    }

    pub(super) fn engine_send_reply(
        &mut self,
        socket: FlowId,
        peer: DatagramPeer,
        data: &[u8],
    ) -> Result<(), HostError> {
        self.check_datagram_socket(socket, data)?;
        let local = self
            .source_for(&peer.locator)
            .ok_or(HostError::Connect(ConnectError::NoRoute))?;
        let repr = SalRepr::data(
            socket,
            Some(peer.flow),
            TransportProtocol::Datagram.number(),
        );
        self.send_datagram_packet(&repr, data, local, peer.locator);
        Ok(())
    }

    pub(super) fn engine_send_datagram(
        &mut self,
        id: FlowId,
        data: &[u8],
    ) -> Result<(), HostError> {
        if data.len() > MAX_DATAGRAM {
            return Err(HostError::TooLarge(data.len()));
        }
        let ttl = self.config.ttl;
        let flow = self.flow_mut(id)?;
        if flow.protocol != TransportProtocol::Datagram {
            return Err(HostError::WrongProtocol);
        }
        match flow.state {
            FlowState::Established if !flow.fin_sent => {}
            FlowState::Dead => return Err(HostError::Reset),
            FlowState::Established => return Err(HostError::SendClosed),
            _ => return Err(HostError::NotConnected),
        }
        let Some(remote) = flow.remote else {
            return Err(HostError::NotConnected);
        };
        let repr = SalRepr::data(
            flow.id,
            flow.peer_flow,
            TransportProtocol::Datagram.number(),
        );
        let segment = udp_segment(data, flow.local.ip(), remote.ip());
        flow.counters.packets_out += 1;
        flow.counters.bytes_out += data.len() as u64;
        let src = flow.local;
        self.queue_transmit(Transmit {
            src,
            dst: remote,
            ttl,
            payload: build(&repr, &segment),
        });
        Ok(())
    }
}
