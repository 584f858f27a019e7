//! Opening flows: connect, SYN, SYN-ACK, ACK, and refusals.
//!
//! The SAL handshake wraps the transport's own: the client's SYN carries the
//! service ID and is resolved hop by hop by service tables; the server
//! answers with a SYN-ACK straight from its own address, which is when the
//! client learns where the peer is; the client's ACK completes it. A stream
//! flow's three SAL packets carry the transport's SYN, SYN-ACK and ACK, so a
//! connection costs no extra round trip.
//!
//! A SYN costs the server at most one packet back and, under pressure,
//! nothing kept: see [`Host::accept_syn`], `listener.rs` and `cookie.rs`.
//!
//! Refusals (no route, no listener, full backlog) are answered with a
//! SAL-only `CONTROL(RST)` to the SYN's sender, `NACK` added for "no route".
//! Such a sender has not announced a nonce, so the refusal echoes the SYN's
//! own nonce and acknowledges its `verno`: an off-path host that never saw
//! the SYN cannot forge one. This is our choice; WIRE.md leaves refusals open.

use rand::Rng;
use smoltcp::time::Instant;
use smoltcp::wire::TcpControl;

use super::config::SynCookies;
use super::control::{ControlKind, ControlState, Sequence};
use super::cookie::{CookieEcho, CookieInput, TcpSyn};
use super::datagram::udp_segment;
use super::flow::{Endpoint, Flow};
use super::listener::Admission;
use super::nat::transport_checksum_ok;
use super::path::advertised;
use super::{ConnectError, Event, FlowState, Host, HostError, Role};
use crate::id::{FlowId, ServiceId};
use crate::locator::Locator;
use crate::table::{ListenerId, Resolution};
use crate::wire::{ControlFlags, ControlRepr, SalPacket, SalRepr, SourceRepr, TransportProtocol};

/// Where a server flow is being opened (half-open, or from a cookie): see
/// [`Host::accept_syn`].
struct HalfOpen {
    listener: ListenerId,
    client: Locator,
    local: Locator,
    protocol: TransportProtocol,
    syn_source: Option<SourceRepr>,
    /// The SYN's length, if it named its client in SOURCE (see
    /// [`fit_answer`]).
    syn_len: Option<u16>,
}

/// Trims the ADDRESS advertisement of `reply`, a SYN-ACK that carries a
/// `segment_len`-byte transport segment, until the packet is no longer
/// than `syn_len`, the SYN's that drew it. Anyone may name another's
/// address as the client in SOURCE (README, "SOURCE trust"), so an answer
/// to such a SYN must not be an amplifier: a SYN-ACK lacks the SYN's
/// SERVICE (36 bytes) but carries our other addresses, 4 bytes each, and
/// those are what could make it the larger. The client learns fewer of
/// them then (one per 4 bytes of TCP options its SYN had fewer).
pub(super) fn fit_answer(reply: &mut SalRepr, segment_len: usize, syn_len: u16) {
    while reply.header_len() + segment_len > usize::from(syn_len) {
        let Some(address) = reply.address.as_mut() else {
            return;
        };
        address.addrs.pop();
        if address.addrs.is_empty() {
            reply.address = None;
        }
    }
}

/// The cookie's view of a stream SYN's TCP segment, if the segment is a
/// valid opening: it parses, and SYN is its only control flag.
fn opening_syn(segment: &[u8]) -> Option<TcpSyn> {
    let syn = sal_tcp::parse_segment(segment).ok()?;
    if syn.control != TcpControl::Syn || syn.ack_number.is_some() {
        return None;
    }
    Some(TcpSyn::from_params(&sal_tcp::CookieParams {
        remote_isn: syn.seq_number,
        local_isn: sal_tcp::TcpSeqNumber(0),
        remote_mss: syn.max_seg_size,
        remote_window_scale: syn.window_scale,
        sack_permitted: syn.sack_permitted,
    }))
}

/// Whether a SYN of transport `protocol` carrying `segment` could open a
/// flow: a stream's segment must be an opening SYN (see [`opening_syn`]).
pub(super) fn may_open(protocol: u8, segment: &[u8]) -> bool {
    protocol != TransportProtocol::Stream.number() || opening_syn(segment).is_some()
}

/// Where a client's SYN goes first.
#[derive(Debug, Clone, Copy)]
enum FirstHop {
    /// The server, or a service router.
    Unicast(Locator),
    /// Every interface's broadcast address; `local` and `broadcast` are
    /// the first such interface and its address.
    Broadcast { local: Locator, broadcast: Locator },
}

/// What a report of a packet that came back undeliverable is about
/// ([`Host::refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The SYN in flight of this connect.
    Syn(FlowId),
    /// A packet of this established flow, sent to its peer.
    Peer(FlowId),
}

/// Retransmissions a SYN gets on the second way it goes after its first
/// hop refused it (see [`Host::handle_unreachable`]).
const REROUTED_RETRIES: u32 = 1;

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

    /// A packet this host sent to `hop` came back as undeliverable: nobody
    /// receives at that locator (an ICMP port unreachable on a UDP link,
    /// which quotes the start of `packet`; "protocol unreachable" in native
    /// carriage). If it is the SYN of one of our connects
    /// ([`Host::refusal`]) and the host's table routes the connect's
    /// service by another first hop, drawn with `hop` left out (another
    /// target of the rule, or the route left once the caller took its
    /// routes to `hop` out: a route it had cached to a program gone, whose
    /// service its sald knows the new place of), the SYN goes there at
    /// once, once per connect. Otherwise the connect fails now as
    /// refused ([`Event::ConnectFailed`]), as kernel TCP's does on a port
    /// nobody listens on, instead of waiting out its retransmissions.
    ///
    /// A packet of an established flow refused at its peer's locator
    /// ([`Host::refusal`] again) means the peer's program is gone, or moved
    /// (and its RSYN is on the way): unless the peer is heard within
    /// a second, the flow is reset (`peers_gone`), as the kernel's TCP
    /// would have closed it with its program, instead of waiting out the
    /// peer timeout (30 s). Anything else is ignored.
    pub fn handle_unreachable(&mut self, now: Instant, hop: Locator, packet: &[u8]) {
        let refusal = self.refusal(hop, packet);
        self.handle_refusal(now, hop, refusal);
    }

    /// What a report that `packet` (the start of a packet this host sent
    /// to `hop`) came back undeliverable is about, if the host believes it
    /// (see [`Host::handle_unreachable`]): a caller that keeps routes of
    /// its own looks before the host acts ([`Host::handle_refusal`]).
    pub fn refusal(&self, hop: Locator, packet: &[u8]) -> Option<Refusal> {
        let packet = SalPacket::new_checked(packet).ok()?;
        let repr = SalRepr::parse(&packet).ok()?;
        if let Some(id) = self.refused_peer(hop, &packet, &repr) {
            return Some(Refusal::Peer(id));
        }
        self.refused_syn(hop, &repr).map(Refusal::Syn)
    }

    /// Acts on a report [`Host::refusal`] classified (see
    /// [`Host::handle_unreachable`]).
    pub fn handle_refusal(&mut self, now: Instant, hop: Locator, refusal: Option<Refusal>) {
        self.now = now;
        match refusal {
            None => {}
            Some(Refusal::Peer(id)) => {
                if let Ok(flow) = self.flow_mut(id) {
                    flow.liveness.refused(now);
                    self.arm_liveness(id);
                }
            }
            Some(Refusal::Syn(id)) => {
                self.stats.unreachable_hops += 1;
                if self.reroute_syn(id, hop) {
                    self.stats.rerouted_syns += 1;
                    return;
                }
                self.fail_connect(id, ConnectError::Refused);
            }
        }
    }

    /// The connect whose SYN in flight `repr` is, the SAL header of a
    /// packet sent to `hop` that came back undeliverable.
    ///
    /// Such reports are easy to forge, so only one naming a connect's own
    /// flow ID and nonce, the SYN in flight and the locator it went to is
    /// believed: an off-path host has seen none of them.
    fn refused_syn(&self, hop: Locator, repr: &SalRepr) -> Option<FlowId> {
        let (id, control) = (repr.src_flow?, repr.control?);
        let Some(Endpoint::Flow(flow)) = self.endpoints.get(id) else {
            return None;
        };
        let our_syn = control.flags == ControlFlags::SYN
            && flow.state == FlowState::SynSent
            && !flow.path.discovery
            && flow.path.next_hop == Some(hop)
            && flow.control.local_nonce == control.nonce
            && (flow.control.pending.iter())
                .any(|p| p.kind == ControlKind::Syn && p.verno == control.verno);
        our_syn.then_some(id)
    }

    /// The established flow `packet` (the start of a packet sent to `hop`,
    /// quoted back as undeliverable; its SAL header `repr`) is of, if it
    /// went to the flow's peer
    /// there: it names the flow and the peer's flow ID (which an off-path
    /// forger has not seen), `hop` is where the flow sends (and the peer
    /// has not said it moved elsewhere), a control message without a
    /// segment carries our nonce, and a stream's quoted segment starts at
    /// a sequence number the flow sent and has not had acknowledged (as
    /// Linux checks one before it believes an ICMP error about a TCP
    /// connection).
    fn refused_peer(
        &self,
        hop: Locator,
        packet: &SalPacket<&[u8]>,
        repr: &SalRepr,
    ) -> Option<FlowId> {
        let id = repr.src_flow?;
        let Some(Endpoint::Flow(flow)) = self.endpoints.get(id) else {
            return None;
        };
        // While an RSYN with the peer's nonce says it moved elsewhere, its
        // old locator refusing our packets is expected.
        let ours = flow.state == FlowState::Established
            && flow.peer_flow.is_some()
            && repr.dst_flow == flow.peer_flow
            && flow.path.remote == Some(hop)
            && flow.path.moving_to.is_none();
        if !ours {
            return None;
        }
        let segment = packet.payload();
        if segment.is_empty() {
            // A control message of ours without a segment (a probe, an
            // RSYN, an ACK): it carries our nonce.
            let nonce = repr.control.map(|control| control.nonce);
            return (nonce == Some(flow.control.local_nonce)).then_some(id);
        }
        let Some(stream) = flow.stream() else {
            return Some(id);
        };
        // The quote reaches past the SAL header into the TCP header's
        // sequence number (ICMP quotes up to 576 bytes).
        let seq = segment.get(4..8)?;
        let seq = sal_tcp::TcpSeqNumber(i32::from_be_bytes(seq.try_into().ok()?));
        let socket = stream.socket.as_ref()?;
        socket.sent_unacknowledged(seq).then_some(id)
    }

    /// Sends the SYN of `id`, refused at `hop`, again by the first hop the
    /// table gives its service now, if that is another one and the SYN was
    /// not sent a second way already; whether it did.
    fn reroute_syn(&mut self, id: FlowId, hop: Locator) -> bool {
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        if flow.path.rerouted {
            return false;
        }
        let service = flow.service;
        let resolved = (self.table).resolve_avoiding(&service, 0, &mut self.rng, hop);
        let Resolution::Forward(next) = resolved else {
            return false;
        };
        if next == hop {
            return false;
        }
        let local = self.interfaces.source_for(&next);
        let (rto, retries, now) = (
            self.config.control_rto,
            self.config.control_retries,
            self.now,
        );
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        if let Some(local) = local {
            flow.path.local = local;
        }
        flow.path.next_hop = Some(next);
        flow.path.rerouted = true;
        // The second way gets a fresh timeout and one retransmission: a
        // loss there is not taken for a refusal, and a hop that swallows
        // the SYN without a word (a sald still forwarding to the dead
        // program: its link reads the refusal, but a host acts only on
        // reports about its own flows' packets) costs 1.5 s, not the
        // whole SYN timeout.
        if let Some(at) = flow
            .control
            .restart_syn(now, rto, (REROUTED_RETRIES, retries))
        {
            self.arm_timer(id, super::timer::Timer::Control, at);
        }
        // Its pending SYN is readdressed on the way (see `output.rs`).
        self.retransmit_now(id);
        true
    }

    /// A SYN for a local listener: answer it with a half-open flow or a
    /// cookie, or refuse it (see `listener.rs`).
    ///
    /// Nothing is kept, and nothing answered, unless the transport segment
    /// is a valid opening: for a stream, a TCP segment with a good checksum
    /// and SYN as its only control flag (no ACK, RST or FIN). Every SYN
    /// earns at most one packet back (a SYN-ACK, or a refusal): the sender
    /// has proved nothing yet, and may have named someone else as the
    /// client, so the SYN-ACK is never retransmitted on a timer; a client
    /// that lost it repeats its SYN, which is answered again.
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
        let Some(protocol) = TransportProtocol::from_number(repr.protocol) else {
            self.stats.malformed += 1;
            return;
        };
        let tcp = match protocol {
            TransportProtocol::Stream => {
                if !transport_checksum_ok(protocol, &src, &dst, segment) {
                    self.stats.bad_checksum += 1;
                    return;
                }
                let Some(syn) = opening_syn(segment) else {
                    self.stats.bad_syn += 1;
                    return;
                };
                Some(syn)
            }
            TransportProtocol::Datagram => None,
        };
        let length = u16::try_from(repr.header_len() + segment.len()).unwrap_or(u16::MAX);
        if let Some(existing) = self.listeners.half_open_flow(client, client_flow) {
            // The client retransmitted its SYN: our SYN-ACK was lost. Its
            // kept copy was fitted to the SYN that opened the flow, if
            // that named its client in SOURCE (`fit_answer`): a shorter
            // repeat would draw more than it carried.
            let opened_by = (self.flow_mut(existing).ok()).and_then(|flow| flow.path.syn_len);
            match opened_by {
                Some(first) if length < first => self.stats.bad_syn += 1,
                _ => self.retransmit_now(existing),
            }
            return;
        }
        let local = self.interfaces.arrival_locator(&client, &dst);
        let syn_source = repr.source.clone().and_then(|mut source| {
            source.addrs.try_push(local.ip()).ok()?;
            Some(source)
        });
        let syn_len = repr.source.is_some().then_some(length);
        match self
            .listeners
            .admission(listener_id, protocol, &self.config)
        {
            Admission::Refuse => self.refuse(client, repr, false),
            Admission::Cookie => {
                let input = CookieInput {
                    client,
                    client_flow,
                    client_nonce: control.nonce,
                    client_verno: control.verno,
                    service: repr.service.unwrap_or(ServiceId::ZERO),
                    protocol: repr.protocol,
                    tcp,
                };
                self.send_cookie(&input, local, (syn_source, syn_len), segment);
            }
            Admission::HalfOpen => {
                let half_open = HalfOpen {
                    listener: listener_id,
                    client,
                    local,
                    protocol,
                    syn_source,
                    syn_len,
                };
                self.open_half(half_open, repr, &control, client_flow, segment);
            }
        }
    }

    /// Opens a half-open server flow for a valid SYN and answers it.
    fn open_half(
        &mut self,
        half_open: HalfOpen,
        repr: &SalRepr,
        control: &ControlRepr,
        client_flow: FlowId,
        segment: &[u8],
    ) {
        let (listener, client, local, protocol) = (
            half_open.listener,
            half_open.client,
            half_open.local,
            half_open.protocol,
        );
        let own = (self.rng.random(), self.rng.random());
        let peer = (control.nonce, control.verno.wrapping_add(1));
        let mut flow = self.server_flow(&half_open, repr, own, peer, client_flow);
        flow.state = FlowState::SynReceived;
        flow.path.syn_source = half_open.syn_source;
        flow.path.syn_len = half_open.syn_len;
        let Ok(id) = self.insert_flow(flow) else {
            self.refuse(client, repr, false);
            return;
        };
        self.listeners
            .syn_received(listener, client, client_flow, id);
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

    /// The server end of a flow with `client_flow` at `ends`, for the
    /// service `repr` names: `own` and `peer` are each side's nonce and
    /// next `verno`. Callers set its state.
    fn server_flow(
        &self,
        ends: &HalfOpen,
        repr: &SalRepr,
        own: ([u8; 8], u32),
        peer: ([u8; 8], u32),
        client_flow: FlowId,
    ) -> Flow {
        let mut control_state = ControlState::new(own.0, own.1);
        control_state.peer_nonce = Some(peer.0);
        control_state.peer_next = peer.1;
        let service = repr.service.unwrap_or(ServiceId::ZERO);
        let mut flow = Flow::new(
            service,
            ends.protocol,
            Role::Server,
            ends.local,
            control_state,
            self.now,
        );
        flow.peer_flow = Some(client_flow);
        flow.path.remote = Some(ends.client);
        flow.path
            .set_peer_locators(advertised(repr, &ends.client, &self.interfaces));
        flow.listener = Some(ends.listener);
        flow.unaccepted = true;
        flow.group = self
            .listeners
            .get(ends.listener)
            .map_or(super::NO_GROUP, |l| l.group);
        flow
    }

    /// Answers a valid SYN with a SYN-ACK drawn from a cookie, keeping
    /// nothing (see `cookie.rs`). `syn` is the SYN's transport segment;
    /// `source` its SOURCE with our address, and its length if it had one.
    fn send_cookie(
        &mut self,
        input: &CookieInput,
        local: Locator,
        (syn_source, syn_len): (Option<SourceRepr>, Option<u16>),
        syn: &[u8],
    ) {
        let cookie = self.cookies.issue(self.now, input);
        if self.endpoints.contains(cookie.flow) {
            // The flow ID the cookie names is taken (about one SYN in
            // 2^32 / flows): say nothing; the client's next SYN may fall
            // in the next time slot.
            self.stats.cookies_rejected += 1;
            return;
        }
        let control = ControlRepr {
            flags: ControlFlags::SYN | ControlFlags::ACK,
            verno: cookie.verno,
            ackno: input.client_verno.wrapping_add(1),
            nonce: cookie.nonce,
        };
        let mut reply = SalRepr::data(cookie.flow, Some(input.client_flow), input.protocol);
        reply.control = Some(control);
        reply.source = syn_source;
        reply.address = self.advertisement(local, &control);
        let (client_ip, local_ip) = (input.client.ip(), local.ip());
        let mut segment = [0; sal_tcp::MAX_HEADER_LEN];
        let len = match input.tcp {
            Some(_) => {
                let written = sal_tcp::write_syn_ack(
                    &self.config.stream,
                    self.now,
                    syn,
                    cookie.isn,
                    local_ip,
                    client_ip,
                    &mut segment,
                );
                match written {
                    Ok((len, _)) => len,
                    Err(_) => {
                        self.stats.bad_syn += 1;
                        return;
                    }
                }
            }
            None => {
                let udp = udp_segment(&[], local_ip, client_ip);
                segment[..udp.len()].copy_from_slice(&udp);
                udp.len()
            }
        };
        if let Some(syn_len) = syn_len {
            fit_answer(&mut reply, len, syn_len);
        }
        self.stats.cookies_sent += 1;
        let packet = super::output::build(&reply, &segment[..len]);
        self.send_packet(local, input.client, packet);
    }

    /// A handshake ACK (CONTROL(ACK) with SERVICE) for flow `id`, which
    /// this host does not have: if it proves a cookie we issued, the flow
    /// is built as if it had been half-open all along and waits for
    /// accept. Returns whether the packet was such an ACK (counted either
    /// way); otherwise the caller counts an unknown flow.
    pub(super) fn cookie_ack_input(
        &mut self,
        id: FlowId,
        src: Locator,
        dst: Locator,
        repr: &SalRepr,
        segment: &[u8],
    ) -> bool {
        let (Some(control), Some(service), Some(client_flow)) =
            (repr.control, repr.service, repr.src_flow)
        else {
            return false;
        };
        let others = ControlFlags::SYN | ControlFlags::RSYN | ControlFlags::RST | ControlFlags::FIN;
        if !control.flags.contains(ControlFlags::ACK)
            || control.flags.bits() & others.bits() != 0
            || self.config.syn_cookies == SynCookies::Never
        {
            return false;
        }
        let Some(protocol) = TransportProtocol::from_number(repr.protocol) else {
            return false;
        };
        let listener = match self.table.resolve(&service, 0, &mut self.rng) {
            // A relay's flows are its program's: none is ever opened here.
            Resolution::Demux(listener)
                if !self.listeners.is_ephemeral(listener)
                    && self.listeners.relay(listener).is_none() =>
            {
                listener
            }
            _ => {
                self.stats.cookies_rejected += 1;
                return true;
            }
        };
        let (tcp, isn) = match protocol {
            TransportProtocol::Stream => {
                let ack = (transport_checksum_ok(protocol, &src, &dst, segment))
                    .then(|| sal_tcp::parse_segment(segment).ok())
                    .flatten();
                let Some((seq, Some(ack))) = ack.map(|a| (a.seq_number, a.ack_number)) else {
                    self.stats.cookies_rejected += 1;
                    return true;
                };
                let local_isn = ack - 1;
                let syn = TcpSyn {
                    remote_isn: seq - 1,
                    options: local_isn.0 as u8,
                };
                (Some(syn), Some(local_isn))
            }
            TransportProtocol::Datagram => (None, None),
        };
        let input = CookieInput {
            client: src,
            client_flow,
            client_nonce: control.nonce,
            client_verno: control.verno.wrapping_sub(1),
            service,
            protocol: repr.protocol,
            tcp,
        };
        let echo = CookieEcho {
            flow: id,
            verno: control.ackno.wrapping_sub(1),
            isn,
        };
        let Some(cookie) = self.cookies.check(self.now, &input, &echo) else {
            self.stats.cookies_rejected += 1;
            return true;
        };
        let peer_next = control.verno;
        if !self.listeners.has_accept_room(listener) {
            // The client has proved it is there: tell it, once.
            self.stats.refused += 1;
            let mut reset = SalRepr::data(id, Some(client_flow), repr.protocol);
            reset.control = Some(ControlRepr {
                flags: ControlFlags::RST,
                verno: cookie.verno.wrapping_add(1),
                ackno: peer_next,
                nonce: cookie.nonce,
            });
            let local = self.interfaces.arrival_locator(&src, &dst);
            self.send_packet(local, src, super::output::build(&reset, &[]));
            return true;
        }
        let socket = match tcp {
            Some(syn) => {
                let params = syn.params(cookie.isn);
                match sal_tcp::Socket::from_cookie(&self.config.stream, self.now, segment, &params)
                {
                    Ok(socket) => Some(socket),
                    Err(_) => {
                        self.stats.cookies_rejected += 1;
                        return true;
                    }
                }
            }
            None => None,
        };
        let ends = HalfOpen {
            listener,
            client: src,
            local: self.interfaces.arrival_locator(&src, &dst),
            protocol,
            syn_source: None,
            syn_len: None,
        };
        let own = (cookie.nonce, cookie.verno.wrapping_add(1));
        let mut flow = self.server_flow(&ends, repr, own, (control.nonce, peer_next), client_flow);
        flow.id = id;
        flow.state = FlowState::Established;
        let memory = socket.as_ref().map_or(0, sal_tcp::Socket::buffer_memory);
        let charge = flow.charge();
        if let Some(stream) = flow.stream_mut() {
            stream.socket = socket;
        }
        if self
            .endpoints
            .insert(id, Endpoint::Flow(Box::new(flow)))
            .is_err()
        {
            self.stats.cookies_rejected += 1;
            return true;
        }
        self.flow_count += 1;
        self.account_buffers(charge, 0, memory);
        self.stats.cookies_accepted += 1;
        self.events.push_back(Event::PeerConnected(id));
        if self.listeners.established(listener, id) {
            self.events.push_back(Event::Incoming(listener));
        }
        self.queue_output(id);
        self.arm_liveness(id);
        self.mark_dirty(id);
        true
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
        self.echo_reset(src, dst, (our_flow, server_flow), syn_ack.protocol, control);
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
        let locators = advertised(repr, &src, &self.interfaces);
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        // Exactly our SYN's `verno` + 1, not anything cumulative: a blind
        // forger would otherwise be right half the time.
        if !flow.control.answers_syn(control) || flow.control.take_acked(control).is_empty() {
            self.stats.stale += 1;
            return false;
        }
        flow.path.set_peer_locators(locators);
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
        if is_stream && self.config.stream.hold_handshake_ack {
            self.hold_ack(id);
        }
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
            self.events.push_back(Event::PeerConnected(id));
            if self.listeners.established(listener, id) {
                self.events.push_back(Event::Incoming(listener));
            }
        }
        self.arm_liveness(id);
    }
}
