//! Received packets: parsing, and dispatch to the exchange they belong to.
//!
//! A packet without a destination flow ID is a first packet (a SYN or an
//! unconnected datagram) and is routed by its service ID; anything else
//! belongs to one of our flows or sockets. Every malformed, misdirected or
//! forged packet is counted in [`HostStats`](super::HostStats) and dropped:
//! nothing a packet says can make the host panic.

use sal_tcp::State as TcpState;
use smoltcp::time::Instant;

use super::control::ControlKind;
use super::flow::Endpoint;
use super::nat;
use super::path::advertised;
use super::stream::{tcp_header_len, Rewind};
use super::timer::Timer;
use super::{FlowState, Host};
use crate::id::FlowId;
use crate::locator::Locator;
use crate::table::Resolution;
use crate::wire::{self, ControlFlags, ControlRepr, SalPacket, SalRepr, TransportProtocol};

impl Host {
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
        // A router's SOURCE holds the client and the router at least
        // (WIRE.md: fewer than two addresses is malformed, and the
        // reference drops the whole packet). A lone address would only be
        // a forged answer-to address.
        if repr
            .source
            .as_ref()
            .is_some_and(|source| source.addrs.len() < 2)
        {
            self.stats.malformed += 1;
            return;
        }
        if !self.interfaces.may_be_peer(src.ip()) {
            self.stats.bad_source += 1;
            return;
        }
        let segment = packet.payload();
        match repr.dst_flow {
            None => self.first_packet_input(src, dst, ttl, &repr, segment, bytes.len()),
            Some(id) => self.flow_packet_input(src, dst, &repr, segment, id),
        }
    }

    /// A SYN or an unconnected datagram: resolve its service.
    ///
    /// One that reached us as a broadcast (broadcast discovery, the
    /// reference stack's default) is served if the service is bound here and
    /// otherwise dropped without a word: a router never forwards it, and a
    /// host that lacks the service does not refuse it (another host on the
    /// link may have it). Our own broadcasts, heard back, are dropped.
    fn first_packet_input(
        &mut self,
        src: Locator,
        dst: Locator,
        ttl: u8,
        repr: &SalRepr,
        segment: &[u8],
        len: usize,
    ) {
        let (Some(service), Some(_)) = (repr.service, repr.src_flow) else {
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
        let broadcast = self.interfaces.is_broadcast(dst.ip());
        if broadcast && self.interfaces.is_local(src.ip()) {
            self.stats.broadcast_dropped += 1;
            return;
        }
        // The client is where the packet really came from (see `nat.rs`).
        let client = nat::client_locator(&src, repr.source.as_ref());
        if !self.interfaces.may_be_peer(client.ip())
            || nat::loopback_from_afar(
                &src,
                self.interfaces.is_local(src.ip()),
                repr.source.as_ref(),
            )
        {
            self.stats.bad_source += 1;
            return;
        }
        let resolution = self.table.resolve(&service, len, &mut self.rng);
        let relay = match resolution {
            Resolution::Demux(listener) => self.listeners.relay(listener),
            _ => None,
        };
        if let Some(program) = relay {
            // A relay's first packets go on to its program (see
            // `route.rs`); as a router's, never one that came as a broadcast.
            match broadcast {
                true => self.stats.broadcast_dropped += 1,
                false => self.forward(program, src, dst, ttl, repr, segment),
            }
            return;
        }
        match resolution {
            Resolution::Demux(listener) if is_syn => {
                self.accept_syn(listener, client, src, dst, repr, segment)
            }
            Resolution::Demux(listener) => {
                self.deliver_unconnected(listener, client, src, dst, repr, segment)
            }
            // Bound at its sald, not listened on yet (`Host::reserve`):
            // held for the listener, neither forwarded (a program's host
            // has its sald as default route) nor refused.
            Resolution::Forward(_) | Resolution::NoMatch
                if !broadcast && self.is_reserved(&service) =>
            {
                if is_syn && !super::handshake::may_open(repr.protocol, segment) {
                    self.stats.bad_syn += 1;
                } else {
                    let bytes = super::output::build(repr, segment);
                    self.hold(service, src, dst, ttl, bytes);
                }
            }
            Resolution::Forward(_) | Resolution::Delay if broadcast => {
                self.stats.broadcast_dropped += 1;
            }
            Resolution::Forward(next) if self.forwards(&src, &next, repr) => {
                self.forward(next, src, dst, ttl, repr, segment)
            }
            Resolution::Delay if is_syn && !super::handshake::may_open(repr.protocol, segment) => {
                // Not worth a place in the queue: it would be refused
                // once routed (see `Host::accept_syn`).
                self.stats.bad_syn += 1;
            }
            Resolution::Delay => {
                let bytes = super::output::build(repr, segment);
                self.hold(service, src, dst, ttl, bytes);
            }
            Resolution::Forward(_) | Resolution::Drop | Resolution::NoMatch => {
                // Only a SYN sent to us personally earns an answer: a
                // broadcast SYN for a service we lack is someone else's.
                if is_syn
                    && self.interfaces.is_local(dst.ip())
                    && !self.syn_for_drained(client, repr)
                {
                    self.refuse(client, repr, true);
                }
            }
        }
    }

    /// A packet addressed to one of our flow IDs.
    fn flow_packet_input(
        &mut self,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
        id: FlowId,
    ) {
        match self.endpoints.get(id) {
            None if self.exported_lately(id) => {
                // Its peer has not followed it to its new host yet: an
                // answer (a RST to its FIN) would end the flow there.
                self.stats.unknown_flow += 1;
                self.stats.exported_flow_packets += 1;
            }
            None => {
                if !self.cookie_ack_input(id, src, dst, repr, segment) {
                    self.stats.unknown_flow += 1;
                    self.forgotten_fin_input(src, dst, repr, id);
                }
            }
            Some(Endpoint::Datagram(_)) => match repr.control {
                Some(control) if control.flags.contains(ControlFlags::RST) => {
                    self.datagram_reset_input(id, src)
                }
                Some(_) => self.stats.stale += 1,
                None => self.deliver_to_socket(id, src, src, dst, repr, segment),
            },
            Some(Endpoint::Flow(_)) if repr.src_flow.is_none() => self.stats.stale += 1,
            Some(Endpoint::Flow(_)) => self.flow_input(id, src, dst, repr, segment),
        }
    }

    /// A packet on a flow: its CONTROL part first, then its segment.
    ///
    /// Flow IDs travel in clear, so a packet that merely names the flow
    /// proves nothing: anyone who learned them can send one, from any
    /// address. The peer counts as heard (its liveness clock, the
    /// retirement of our handshake ACK, its streaming for nudges: see
    /// [`Host::peer_heard`]) only on evidence, from where the peer is: a
    /// control message with its nonce, the answer to a path challenge, or a
    /// transport segment that passed its checksum and that the socket took
    /// as progress (see [`Host::stream_input`]). A packet from anywhere
    /// else earns that address a path challenge (see `nat.rs`).
    fn flow_input(
        &mut self,
        id: FlowId,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
    ) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow
            .peer_flow
            .is_some_and(|peer| Some(peer) != repr.src_flow)
        {
            self.stats.stale += 1;
            if let Some(control) = repr.control.filter(|c| c.flags.contains(ControlFlags::SYN)) {
                self.refuse_stray_syn_ack(src, dst, repr, &control);
            }
            return;
        }
        flow.counters.packets_in += 1;
        flow.counters.bytes_in += segment.len() as u64;
        let syn = repr
            .control
            .is_some_and(|c| c.flags.contains(ControlFlags::SYN));
        let data = carries_data(flow.protocol(), segment);
        let elsewhere = flow.state == FlowState::Established
            && flow.path.remote.is_some_and(|remote| remote != src);
        let mut heard = false;
        if let Some(control) = repr.control {
            if nat::is_challenge(&control) {
                self.challenge_input(id, dst, &control);
                return;
            }
            if nat::is_answer(&control) {
                if self.answer_input(id, src, &control) {
                    self.peer_heard(id, false, false, false);
                }
                return;
            }
            if control.flags.contains(ControlFlags::FIN)
                && !segment.is_empty()
                && flow.protocol() == TransportProtocol::Stream
                && !nat::transport_checksum_ok(TransportProtocol::Stream, &src, &dst, segment)
            {
                // A FIN riding on a segment its transport will refuse: its
                // acknowledgement would tell the peer that our transport
                // has all it sent (see `rider.rs`). Both go; the peer
                // resends them together.
                self.stats.bad_checksum += 1;
                return;
            }
            // Heard before the message acts, as the message may ask
            // something of the peer (an RSYN-ACK) whose wait starts then.
            if self.authentic_from_peer(id, src, &control) {
                self.peer_heard(id, syn, data, false);
                heard = true;
            }
            let go_on = self.control_input(id, src, dst, repr, &control);
            // A message that opened the flow (the SYN-ACK) or moved it
            // (an RSYN) shows the peer only once it acted.
            if !heard && self.authentic_from_peer(id, src, &control) {
                self.peer_heard(id, syn, data, false);
                heard = true;
            }
            if !go_on {
                return;
            }
        } else if flow.state == FlowState::SynReceived
            && !segment.is_empty()
            && !self.data_before_ack(id, src, dst, segment)
        {
            return;
        }
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let (state, protocol) = (flow.state, flow.protocol());
        // `None` if the segment failed its checksum, else whether it is
        // evidence of the peer.
        let taken = match protocol {
            _ if segment.is_empty() => {
                self.mark_dirty(id);
                Some(false)
            }
            _ if state != FlowState::Established => return,
            TransportProtocol::Stream => self.stream_segment_input(id, src, dst, segment),
            TransportProtocol::Datagram => {
                let with_control = repr.control.is_some();
                let bad = self.stats.bad_checksum;
                self.datagram_flow_input(id, src, dst, with_control, segment);
                let checked = self.stats.bad_checksum == bad;
                // Anyone who learned the flow IDs can forge a datagram: one
                // from the peer's address shows it streaming (for nudges),
                // never that the path works.
                if checked && !heard && self.peer_at(id, src) {
                    let streaming = self.flow_mut(id).is_ok_and(|f| f.nat.peer_sent(data));
                    if streaming {
                        self.arm_nudge(id);
                    }
                }
                checked.then_some(false)
            }
        };
        if elsewhere && repr.control.is_none() && taken.is_some() {
            // Not proof of anything: ask the new address (see `nat.rs`),
            // having taken the segment all the same.
            self.challenge_path(id, src, false);
        }
        if taken == Some(true) && self.peer_at(id, src) {
            if !heard {
                self.peer_heard(id, syn, data, true);
            } else {
                // Transport evidence with a control message: the flow's
                // own traffic gets through, not only the control.
                let now = self.now;
                if let Ok(flow) = self.flow_mut(id) {
                    flow.liveness.heard(now);
                }
            }
        }
    }

    /// A segment without CONTROL on a half-open server flow: the client's
    /// handshake ACK was lost and it sends already. Such a segment carries
    /// no nonce, so it completes the handshake only from the client's
    /// address and, for a stream, once TCP took it as acknowledging our
    /// SYN-ACK: a blind forger must guess TCP's initial sequence number as
    /// well as both flow IDs. Returns whether the caller should go on with
    /// the segment (a datagram that completed the handshake; a stream's
    /// segment is taken here).
    fn data_before_ack(&mut self, id: FlowId, src: Locator, dst: Locator, segment: &[u8]) -> bool {
        if !self.peer_at(id, src) {
            self.stats.stale += 1;
            return false;
        }
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        let protocol = flow.protocol();
        let established = match protocol {
            TransportProtocol::Stream => {
                let evidence = self.stream_segment_input(id, src, dst, segment);
                let open = self
                    .flow_mut(id)
                    .ok()
                    .and_then(|flow| flow.stream_mut())
                    .and_then(|stream| stream.socket.as_ref())
                    .is_some_and(|socket| {
                        !matches!(
                            socket.state(),
                            TcpState::Closed | TcpState::Listen | TcpState::SynReceived
                        )
                    });
                if open && evidence == Some(true) {
                    self.peer_heard(id, false, carries_data(protocol, segment), true);
                }
                open
            }
            TransportProtocol::Datagram => {
                let ok = nat::transport_checksum_ok(protocol, &src, &dst, segment);
                if !ok {
                    self.stats.bad_checksum += 1;
                }
                ok
            }
        };
        if !established {
            return false;
        }
        if let Ok(flow) = self.flow_mut(id) {
            flow.control.forget_in_flight();
            flow.timers.disarm(Timer::Control);
        }
        self.establish_server(id);
        protocol == TransportProtocol::Datagram
    }

    /// Whether `src` is where the flow's peer is.
    fn peer_at(&mut self, id: FlowId, src: Locator) -> bool {
        self.flow_mut(id)
            .is_ok_and(|flow| flow.path.remote == Some(src))
    }

    /// Whether `control`, which came from `src`, carries the peer's nonce
    /// and came from where the peer is.
    fn authentic_from_peer(&mut self, id: FlowId, src: Locator, control: &ControlRepr) -> bool {
        self.peer_at(id, src)
            && self
                .flow_mut(id)
                .is_ok_and(|flow| flow.control.nonce_ok(control))
    }

    /// The peer showed itself on the flow (see [`Host::flow_input`]) with a
    /// packet that was a SYN (`syn`) or not and that carried data or not:
    /// its silence counts from now, it got our handshake ACK, and it may be
    /// streaming to us.
    fn peer_heard(&mut self, id: FlowId, syn: bool, data: bool, transport: bool) {
        let now = self.now;
        // Control alone, while the transport waits: the path is up, what
        // the transport waits on is not answered (`Liveness::answered`).
        let transport = transport || !self.transport_waits(id);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if transport {
            flow.liveness.heard(now);
        } else {
            flow.liveness.answered(now);
        }
        if flow.state == FlowState::Established && !syn {
            // The server speaks on the flow: our handshake ACK got there.
            flow.control.retire_handshake_ack();
        }
        if flow.nat.peer_sent(data) {
            self.arm_nudge(id);
        }
    }

    /// The TCP segment of a packet on an established stream flow. Returns
    /// `None` if it failed its checksum, else whether it is evidence of the
    /// peer (see [`Host::stream_input`]).
    fn stream_segment_input(
        &mut self,
        id: FlowId,
        src: Locator,
        dst: Locator,
        segment: &[u8],
    ) -> Option<bool> {
        if !nat::transport_checksum_ok(TransportProtocol::Stream, &src, &dst, segment) {
            self.stats.bad_checksum += 1;
            return None;
        }
        let flow = self.flow_mut(id).ok()?;
        let header = tcp_header_len(segment);
        if flow.teardown.app_closed && segment.len() > header && self.carries_new_data(id, segment)
        {
            // Data for an application that closed: nobody will read it. A
            // retransmission of bytes the socket has (an ACK of ours lost,
            // a spurious timeout) is no such data: TCP acknowledges it.
            let _ = self.abort(id);
            return Some(false);
        }
        let evidence = self.stream_input(id, segment);
        self.mark_dirty(id);
        Some(evidence)
    }

    /// The CONTROL part of a packet on a flow. Returns whether the rest of the
    /// packet (its transport segment) should still be processed.
    fn control_input(
        &mut self,
        id: FlowId,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        control: &ControlRepr,
    ) -> bool {
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        let flags = control.flags;
        if flags.contains(ControlFlags::RST) {
            self.rst_input(id, control);
            return false;
        }
        if flow.state == FlowState::SynSent && flags.contains(ControlFlags::SYN | ControlFlags::ACK)
        {
            return self.syn_ack_input(id, src, dst, repr, control);
        }
        if !flow.control.nonce_ok(control) {
            self.stats.bad_nonce += 1;
            return false;
        }
        if repr.address.is_some() {
            let locators = advertised(repr, &src, &self.interfaces);
            let Ok(flow) = self.flow_mut(id) else {
                return false;
            };
            flow.path.set_peer_locators(locators);
            // Somewhere else to go, maybe: an idle flow may now probe.
            self.arm_liveness(id);
        }
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        // A message with the peer's nonce from somewhere new: the peer's
        // NAT may have rebound the flow, or someone replays the message
        // (or the peer spoofs it) to make us send elsewhere. The new
        // address must answer a challenge before the flow goes there (see
        // `nat.rs`; an RSYN moves it by itself, below).
        let rebound = flow.state == FlowState::Established
            && !flags.contains(ControlFlags::RSYN)
            && flow.path.remote.is_some_and(|remote| remote != src);
        if flags.contains(ControlFlags::SYN) {
            self.repeated_syn_ack(id, control);
            return false;
        }
        let acked = flow.control.take_acked(control);
        if !acked.is_empty() && !flow.control.awaiting_answer() {
            // Nothing left to retransmit: no wakeup for it.
            flow.timers.disarm(Timer::Control);
        }
        if acked.iter().any(|p| p.kind == ControlKind::Fin) {
            flow.teardown.fin_acked = true;
        }
        // An answered probe of a doubt proves the path: what the
        // transport waits on goes again now, not after its backed-off
        // timeout (see `Liveness::answered`). So does the answer to our
        // move, on the new path.
        let doubting = flow.liveness.doubting();
        if acked.iter().any(|p| p.kind == ControlKind::Rsyn) {
            self.rewind_stream(id, Rewind::NewPath);
        } else if acked
            .iter()
            .any(|p| p.kind == ControlKind::Probe && doubting)
        {
            self.rewind_stream(id, Rewind::SamePath);
        }
        // The answer to a move's RSYN, or to the RSYN-ACK that took the
        // peer's move, times the new path: TCP's first sample of it. An
        // answer from where the peer moved, which the flow follows only
        // once its path challenge is answered (`nat.rs`), is kept until
        // then: the move forgets what the estimator holds now.
        let moves = [ControlKind::Rsyn, ControlKind::RsynAck];
        let timed = acked.iter().filter(|p| moves.contains(&p.kind));
        if let Some(round_trip) = timed.filter_map(|p| p.round_trip(self.now)).min() {
            match self.flow_mut(id) {
                Ok(flow) if flow.path.moving_to == Some(src) => {
                    flow.path.timed_ahead(src, round_trip);
                }
                _ => self.seed_stream_round_trip(id, round_trip),
            }
        }
        if acked.iter().any(|p| p.kind == ControlKind::SynAck) {
            self.establish_server(id);
        }
        if flags.contains(ControlFlags::RSYN) {
            self.rsyn_input(id, src, dst, control);
        }
        if flags.contains(ControlFlags::FIN) {
            self.fin_input(id, control);
        }
        if rebound {
            self.challenge_path(id, src, true);
        }
        true
    }
}

/// Whether a transport segment carries data (not only a header).
fn carries_data(protocol: TransportProtocol, segment: &[u8]) -> bool {
    match protocol {
        TransportProtocol::Stream => segment.len() >= 20 && segment.len() > tcp_header_len(segment),
        TransportProtocol::Datagram => segment.len() > 8,
    }
}
