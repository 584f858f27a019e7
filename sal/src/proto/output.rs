//! What the host sends: the transmit path, packet building, and the
//! sending and retransmission of control messages.
//!
//! The driver asks for packets with [`Host::poll_transmit`], giving a
//! buffer; the host writes one whole SAL packet into it and says where it
//! goes ([`Transmit`]), boringtun- and quinn-style. Stream segments, the
//! bulk of the traffic, are written straight from the flow's socket into
//! that buffer behind a base header (see `stream.rs`): no allocation, one
//! copy. Everything else the host sends (control messages, refusals,
//! datagrams, forwarded SYNs) is rare, is built whole when it happens, and
//! waits in a queue of [`Packet`]s until it is copied out.
//!
//! Packets addressed to the host itself never reach the link: they wait in
//! a loopback queue, and stream flows whose peer is the host itself in a
//! queue of their own, which [`Host::poll`] feeds back as input, so a local
//! client and server run the same exchanges as remote ones.
//!
//! Control messages are sent from the flow's current locator to the peer's
//! current one each time they go out, first send and retransmissions alike,
//! so a message in flight follows a migration of either end.

use smoltcp::time::Instant;

use super::control::{ControlKind, Pending};
use super::flow::{Endpoint, Flow};
use super::interface::Interfaces;
use super::path::Path;
use super::stream::StreamOutput;
use super::timer::Timer;
use super::{ConnectError, FlowState, Host, Role};
use crate::id::FlowId;
use crate::locator::Locator;
use crate::wire::{
    readdress_transport_checksum, AddressRepr, ControlFlags, ControlRepr, SalPacket, SalRepr,
    TransportProtocol,
};

/// A packet the host wrote into the caller's buffer (see
/// [`Host::poll_transmit`]): the SAL packet is the buffer's first `len`
/// bytes; the link puts it in IPv4 (protocol 144, TTL `ttl`) or in UDP
/// between `src` and `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// IP source (and UDP port): one of the host's locators, or for a
    /// [`TransmitKind::Relay`] the client's address.
    pub src: Locator,
    /// Where the packet goes: the peer, the next hop, or a broadcast address.
    pub dst: Locator,
    /// The IP TTL the packet must have on the wire.
    pub ttl: u8,
    /// How the packet must leave: a native link sends relays and
    /// broadcasts another way than its own unicast packets.
    pub kind: TransmitKind,
    /// The SAL packet's length: it is the buffer's first `len` bytes.
    pub len: usize,
}

/// A whole SAL packet that waits to be sent (or looped back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Packet {
    pub src: Locator,
    pub dst: Locator,
    pub ttl: u8,
    pub kind: TransmitKind,
    pub payload: Vec<u8>,
}

/// What sort of packet a [`Transmit`] is, for the link. A native link (TUN)
/// can only send unicast packets whose source is one of the host's own
/// addresses: the kernel delivers a broadcast written into it locally, and
/// drops or reverse-path-filters a foreign source. The others need a raw
/// IP socket (see sald's `raw` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// Unicast, from one of the host's own addresses.
    Own,
    /// Relayed by a service router: the IP source is the client's (the host
    /// that sent the packet to the router), not the router's.
    Relay,
    /// To a broadcast address of one of the host's subnets (broadcast
    /// discovery, or a rule whose target is a broadcast address).
    Broadcast,
}

/// A SAL packet: `repr`'s header followed by `segment`.
pub(super) fn build(repr: &SalRepr, segment: &[u8]) -> Vec<u8> {
    let len = repr.header_len();
    let mut packet = vec![0u8; len + segment.len()];
    // The buffer is sized from the repr, and reprs we build stay far below
    // the 1020-byte header limit, so emission cannot fail.
    if repr.emit(&mut packet).is_ok() {
        packet[len..].copy_from_slice(segment);
    }
    packet
}

/// A packet to send: where from, where to, what.
pub(super) struct Outgoing {
    pub src: Locator,
    pub dst: Locator,
    pub payload: Vec<u8>,
}

/// A control message in flight, addressed where the flow is now: one packet,
/// or for a SYN looking for its service by broadcast, one copy per
/// interface that is up, each with its transport checksum over its own
/// addresses (the SAL header is the same in all).
fn control_packets(
    path: &Path,
    interfaces: &Interfaces,
    pending: &Pending,
    out: &mut Vec<Outgoing>,
) {
    let Some(dst) = path.control_destination(pending.kind) else {
        return;
    };
    let checksummed_for = pending.checksummed_for.unwrap_or((path.local, dst));
    if pending.kind != ControlKind::Syn || !path.discovery {
        let mut payload = pending.packet.clone();
        if checksummed_for != (path.local, dst) {
            // The flow moved since the packet was first sent.
            readdress_sal_segment(&mut payload, checksummed_for, (path.local, dst));
        }
        out.push(Outgoing {
            src: path.local,
            dst,
            payload,
        });
        return;
    }
    for (src, broadcast) in interfaces.broadcasts() {
        let mut payload = pending.packet.clone();
        readdress_sal_segment(&mut payload, checksummed_for, (src, broadcast));
        out.push(Outgoing {
            src,
            dst: broadcast,
            payload,
        });
    }
}

/// Rewrites the transport checksum of a whole SAL packet checksummed for
/// `from` so that it is right for `to`.
pub(super) fn readdress_sal_segment(
    packet: &mut [u8],
    from: (Locator, Locator),
    to: (Locator, Locator),
) {
    let Ok(sal) = SalPacket::new_checked(&mut packet[..]) else {
        return;
    };
    let Some(protocol) = TransportProtocol::from_number(sal.protocol()) else {
        return;
    };
    let header = sal.header_len();
    readdress_transport_checksum(
        protocol,
        &mut packet[header..],
        (from.0.ip(), from.1.ip()),
        (to.0.ip(), to.1.ip()),
    );
}

impl Host {
    /// The next packet to send: written into `out` (the SAL packet, from
    /// its first byte; leave headroom in front for the IPv4 or UDP header
    /// by passing a slice past it), described by the [`Transmit`]
    /// returned. `None` when there is nothing to send. Call it until it
    /// returns `None` after every [`Host::poll`] and after every call that
    /// acts on a flow (send, recv, close, connect, migrate, rule changes):
    /// this is where stream flows' sockets send, and where their timers
    /// are rearmed.
    ///
    /// `out` should hold the largest packet the link carries (its MTU less
    /// the IPv4 header): stream segments are cut to fit it, and any other
    /// packet that does not fit is dropped (counted in
    /// [`HostStats::too_big`](super::HostStats::too_big)).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<Transmit> {
        loop {
            if let Some(packet) = self.transmits.pop_front() {
                let len = packet.payload.len();
                let Some(room) = out.get_mut(..len) else {
                    // Counted as sent when it was queued; it is not.
                    self.stats.packets_out = self.stats.packets_out.saturating_sub(1);
                    self.stats.bytes_out = self.stats.bytes_out.saturating_sub(len as u64);
                    self.stats.too_big += 1;
                    continue;
                };
                room.copy_from_slice(&packet.payload);
                return Some(Transmit {
                    src: packet.src,
                    dst: packet.dst,
                    ttl: packet.ttl,
                    kind: packet.kind,
                    len,
                });
            }
            let &id = self.output.front()?;
            if self.is_loopback(id) {
                // Its peer moved here: the next poll delivers its segments.
                self.output.pop_front();
                self.local_output.push_back(id);
                continue;
            }
            match self.stream_transmit(id, now, out) {
                StreamOutput::Packet(transmit) => {
                    // Round robin: each busy flow sends a segment in turn.
                    self.output.rotate_left(1);
                    self.stats.packets_out += 1;
                    self.stats.bytes_out += transmit.len as u64;
                    return Some(transmit);
                }
                StreamOutput::Again => {}
                StreamOutput::Idle => {
                    self.output.pop_front();
                    self.output_done(id);
                }
            }
        }
    }

    /// Delivers the segments of stream flows whose peer is this host (at
    /// most one pass over those queued now); returns whether any moved.
    pub(super) fn drain_local_output(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let mut scratch = std::mem::take(&mut self.scratch);
        for _ in 0..self.local_output.len() {
            let Some(id) = self.local_output.pop_front() else {
                break;
            };
            loop {
                match self.stream_transmit(id, now, &mut scratch) {
                    StreamOutput::Packet(t) => {
                        moved = true;
                        self.handle_packet(now, t.src, t.dst, t.ttl, &scratch[..t.len]);
                    }
                    StreamOutput::Again => moved = true,
                    StreamOutput::Idle => break,
                }
            }
            self.output_done(id);
        }
        self.scratch = scratch;
        moved
    }

    /// Queues a packet for the link, or for ourselves if it is addressed
    /// here, with the TTL the host gives the packets it originates.
    pub(super) fn send_packet(&mut self, src: Locator, dst: Locator, payload: Vec<u8>) {
        let ttl = self.config.ttl;
        self.queue_transmit(src, dst, ttl, payload);
    }

    /// Queues a packet for the link (tagged with its [`TransmitKind`]), or
    /// for ourselves if it is addressed here (in UDP carriage: to one of our
    /// locators, address and port).
    pub(super) fn queue_transmit(&mut self, src: Locator, dst: Locator, ttl: u8, payload: Vec<u8>) {
        let kind = if self.interfaces.is_broadcast(dst.ip()) {
            TransmitKind::Broadcast
        } else if self.interfaces.owns(&dst) {
            self.loopback.push_back(Packet {
                src,
                dst,
                ttl,
                kind: TransmitKind::Own,
                payload,
            });
            return;
        } else if self.interfaces.is_local(src.ip()) {
            TransmitKind::Own
        } else {
            TransmitKind::Relay
        };
        self.stats.packets_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        self.transmits.push_back(Packet {
            src,
            dst,
            ttl,
            kind,
            payload,
        });
    }

    /// Sends a new numbered control message on a flow and keeps it for
    /// retransmission until it is acknowledged.
    pub(super) fn send_new_control(
        &mut self,
        id: FlowId,
        kind: ControlKind,
        flags: ControlFlags,
        with_service: bool,
        segment: &[u8],
    ) {
        self.new_control(id, kind, flags, with_service, segment, true);
    }

    /// Numbers a new control message on a flow, keeps it for
    /// retransmission until it is acknowledged, and sends it if `send`
    /// (otherwise it rides on a stream segment: see
    /// [`Host::stream_transmit`]). Returns its CONTROL extension.
    pub(super) fn new_control(
        &mut self,
        id: FlowId,
        kind: ControlKind,
        flags: ControlFlags,
        with_service: bool,
        segment: &[u8],
        send: bool,
    ) -> Option<ControlRepr> {
        // A SYN-ACK is never resent on a timer (see `handshake.rs`): its
        // one deadline is the end of the half-open flow's life.
        let rto = match kind {
            ControlKind::SynAck => self.config.half_open_timeout,
            _ => self.config.control_rto,
        };
        let now = self.now;
        let flow = self.flow_mut(id).ok()?;
        let control = flow.control.new_message(flags);
        let mut repr = self.control_repr(id, kind, control, with_service)?;
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return None;
        };
        if let Some(syn_len) = flow.path.syn_len.filter(|_| kind == ControlKind::SynAck) {
            super::handshake::fit_answer(&mut repr, segment.len(), syn_len);
        }
        let checksummed_for = (!segment.is_empty())
            .then(|| {
                flow.path
                    .control_destination(kind)
                    .map(|dst| (flow.path.local, dst))
            })
            .flatten();
        let packet = build(&repr, segment);
        let deadline = (flow.control).keep(kind, control.verno, packet, checksummed_for, now, rto);
        let sent = flow.control.pending.back().expect("just kept");
        let mut packets = Vec::new();
        control_packets(&flow.path, &self.interfaces, sent, &mut packets);
        if packets.is_empty() {
            return None;
        }
        flow.count_sent(now);
        self.arm_timer(id, Timer::Control, deadline);
        if send {
            for packet in packets {
                self.send_packet(packet.src, packet.dst, packet.payload);
            }
        }
        self.note_asked(id);
        Some(control)
    }

    /// The SAL header of a numbered control message of `kind` on flow `id`
    /// carrying `control`.
    pub(super) fn control_repr(
        &mut self,
        id: FlowId,
        kind: ControlKind,
        control: ControlRepr,
        with_service: bool,
    ) -> Option<SalRepr> {
        let flow = self.flow_mut(id).ok()?;
        let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol().number());
        repr.control = Some(control);
        if with_service {
            repr.service = Some(flow.service);
        }
        let local = flow.path.local;
        if kind != ControlKind::Syn {
            repr.address = self.advertisement(local, &control);
        }
        if kind == ControlKind::SynAck {
            // A SYN-ACK answering a SYN that came through routers: their
            // SOURCE and our address, as the reference stack does.
            repr.source = self
                .flow_mut(id)
                .ok()
                .and_then(|f| f.path.syn_source.clone());
        }
        Some(repr)
    }

    /// Answers the peer's newer RSYN with the RSYN-ACK already in flight,
    /// if that is our newest numbered message: same `verno`, the `ackno`
    /// that acknowledges the newer RSYN, sent now on its own schedule (its
    /// retries are not renewed). So however many RSYNs a peer sends, a flow
    /// keeps one answer to them in flight and sends one packet per RSYN,
    /// where each used to add an answer retransmitted five times. Returns
    /// false when there is no such answer (a new one must be numbered).
    pub(super) fn refresh_rsyn_ack(&mut self, id: FlowId) -> bool {
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        let next = flow.control.next_verno;
        let Some(verno) = (flow.control.pending.iter())
            .find(|p| p.kind == ControlKind::RsynAck && p.verno.wrapping_add(1) == next)
            .map(|p| p.verno)
        else {
            return false;
        };
        let control = ControlRepr {
            flags: ControlFlags::RSYN | ControlFlags::ACK,
            verno,
            ..flow.control.ack()
        };
        let Some(repr) = self.control_repr(id, ControlKind::RsynAck, control, false) else {
            return false;
        };
        let packet = build(&repr, &[]);
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return false;
        };
        let Some(pending) = (flow.control.pending.iter_mut())
            .find(|p| p.kind == ControlKind::RsynAck && p.verno == verno)
        else {
            return false;
        };
        pending.packet = packet;
        pending.checksummed_for = None;
        pending.deadline = now + pending.rto;
        let deadline = pending.deadline;
        let mut packets = Vec::new();
        control_packets(&flow.path, &self.interfaces, pending, &mut packets);
        flow.count_sent(now);
        self.arm_timer(id, Timer::Control, deadline);
        self.resend(packets);
        true
    }

    /// Sends the flow's message in flight numbered `verno` (kept, not sent
    /// yet: see [`Host::new_control`]).
    pub(super) fn send_kept(&mut self, id: FlowId, verno: u32) {
        for packet in self.pending_packets(id, |p| p.verno == verno) {
            self.send_packet(packet.src, packet.dst, packet.payload);
        }
    }

    /// Resends the flow's messages of `kind` in flight (a duplicate of what
    /// they answer arrived), and nothing else: one packet per duplicate.
    pub(super) fn resend_kind(&mut self, id: FlowId, kind: ControlKind) {
        let packets = self.pending_packets(id, |p| p.kind == kind);
        self.resend(packets);
    }

    /// The packets of the flow's messages in flight that `which` picks,
    /// addressed where the flow is now.
    fn pending_packets(&self, id: FlowId, which: impl Fn(&Pending) -> bool) -> Vec<Outgoing> {
        let mut packets = Vec::new();
        if let Some(Endpoint::Flow(flow)) = self.endpoints.get(id) {
            for pending in flow.control.pending.iter().filter(|p| which(p)) {
                control_packets(&flow.path, &self.interfaces, pending, &mut packets);
            }
        }
        packets
    }

    /// For a multi-homed host, an ADDRESS extension listing its other
    /// locators, so the peer knows where else to find it. Single-homed hosts
    /// send none, as the reference stack does.
    pub(super) fn advertisement(
        &self,
        current: Locator,
        control: &ControlRepr,
    ) -> Option<AddressRepr> {
        let mut address = AddressRepr {
            verno: control.verno,
            ackno: control.ackno,
            ..AddressRepr::default()
        };
        for locator in self.interfaces.others_up(current) {
            if address.addrs.try_push(locator.ip()).is_err() {
                break;
            }
        }
        (!address.addrs.is_empty()).then_some(address)
    }

    /// The SAL header of an ACK of `id`'s (see [`Host::send_ack`]), and
    /// where it goes from and to; `None` for a flow without a peer yet.
    pub(super) fn ack_repr(
        &self,
        id: FlowId,
        with_service: bool,
    ) -> Option<(SalRepr, Locator, Locator)> {
        let Some(Endpoint::Flow(flow)) = self.endpoints.get(id) else {
            return None;
        };
        let dst = flow.path.remote?;
        let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol().number());
        let control = flow.control.ack();
        repr.control = Some(control);
        let src = flow.path.local;
        if with_service {
            // The third packet of a handshake: also where else to find us.
            repr.service = Some(flow.service);
            repr.address = self.advertisement(src, &control);
        }
        Some((repr, src, dst))
    }

    /// Sends a bare ACK (with SERVICE when it completes a client handshake:
    /// that one is kept and repeated until the server is heard, see
    /// [`ControlKind::HandshakeAck`]).
    pub(super) fn send_ack(&mut self, id: FlowId, with_service: bool, segment: &[u8]) {
        let now = self.now;
        let Some((repr, src, dst)) = self.ack_repr(id, with_service) else {
            return;
        };
        let rto = self.config.control_rto;
        let (Some(control), Ok(flow)) = (repr.control, self.flow_mut(id)) else {
            return;
        };
        flow.count_sent(now);
        let payload = build(&repr, segment);
        let keep = with_service && flow.role == Role::Client;
        if keep && !flow.control.in_flight(ControlKind::HandshakeAck) {
            let deadline = (flow.control).keep(
                ControlKind::HandshakeAck,
                control.verno,
                payload.clone(),
                (!segment.is_empty()).then_some((src, dst)),
                now,
                rto,
            );
            self.arm_timer(id, Timer::Control, deadline);
        }
        self.send_packet(src, dst, payload);
    }

    /// Resends a flow's control messages in flight now (a duplicate arrived,
    /// or the flow moved).
    pub(super) fn retransmit_now(&mut self, id: FlowId) {
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        // A FIN waiting to ride on a segment goes with these instead; one
        // that rides on our TCP FIN goes with that again (see `rider.rs`).
        if let Some(stream) = flow.stream_mut() {
            stream.riders.fin_once = None;
        }
        let on_fin = self.fin_rides_on_fin(id);
        let packets = self.pending_packets(id, |p| !(on_fin && p.kind == ControlKind::Fin));
        self.resend(packets);
        if on_fin
            && self
                .flow_mut(id)
                .is_ok_and(|f| f.control.in_flight(ControlKind::Fin))
        {
            self.resend_riding_fin(id);
        }
    }

    /// Sends retransmitted control packets.
    fn resend(&mut self, packets: Vec<Outgoing>) {
        for packet in packets {
            self.stats.retransmits += 1;
            self.send_packet(packet.src, packet.dst, packet.payload);
        }
    }

    /// The control timer fired: retransmits the flow's messages whose
    /// deadline passed, with doubled timeouts, and gives up on those out of
    /// retries, each as its kind demands.
    pub(super) fn retransmit_due(&mut self, id: FlowId) {
        let retries = (
            self.config.control_retries,
            self.config.handshake_ack_repeats,
        );
        let now = self.now;
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        if flow.state == FlowState::SynReceived
            && flow.control.in_flight(ControlKind::SynAck)
            && flow.control.next_deadline().is_some_and(|at| at <= now)
        {
            // The client never completed the handshake.
            self.stats.half_open_expired += 1;
            return self.free_flow(id);
        }
        let on_fin = self.fin_rides_on_fin(id);
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        let (mut packets, mut riding_fin_due) = (Vec::new(), false);
        let Flow { control, path, .. } = &mut **flow;
        let interfaces = &self.interfaces;
        let timeout = control.on_timeout(now, retries, |pending| {
            if on_fin && pending.kind == ControlKind::Fin {
                // Resent with our TCP FIN, below (see `rider.rs`).
                riding_fin_due = true;
            } else {
                control_packets(path, interfaces, pending, &mut packets);
            }
        });
        if let Some(next) = timeout.next {
            self.arm_timer(id, Timer::Control, next);
        }
        self.resend(packets);
        if riding_fin_due {
            self.resend_riding_fin(id);
        }
        for kind in timeout.expired {
            match kind {
                ControlKind::Syn => {
                    // A SYN that went a second way after the first refused
                    // it (see `Host::handle_unreachable`) is refused still.
                    let rerouted = self.flow_mut(id).is_ok_and(|flow| flow.path.rerouted);
                    let error = match rerouted {
                        true => ConnectError::Refused,
                        false => ConnectError::TimedOut,
                    };
                    return self.fail_connect(id, error);
                }
                ControlKind::SynAck => {
                    self.stats.half_open_expired += 1;
                    return self.free_flow(id);
                }
                // Nobody answers on any path we tried: the flow is lost.
                ControlKind::Rsyn => {
                    self.stats.migrations_failed += 1;
                    return self.give_up_on_peer(id);
                }
                ControlKind::Probe => return self.give_up_on_peer(id),
                ControlKind::RsynAck | ControlKind::HandshakeAck => {}
                ControlKind::Fin => {
                    // Nothing more will come from the peer.
                    if let Ok(flow) = self.flow_mut(id) {
                        flow.teardown.peer_gone();
                    }
                    return self.give_up_on_peer(id);
                }
            }
        }
    }
}
