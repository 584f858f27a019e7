//! What the host sends: packet building, the transmit queue, and the
//! sending and retransmission of control messages.
//!
//! Packets addressed to the host itself never reach the link: they wait in
//! a loopback queue that [`Host::poll`] feeds back as input, so a local
//! client and server run the same exchanges as remote ones.
//!
//! Control messages are sent from the flow's current locator to the peer's
//! current one each time they go out, first send and retransmissions alike,
//! so a message in flight follows a migration of either end.

use super::control::{ControlKind, Pending};
use super::flow::{Endpoint, Flow};
use super::interface::Interfaces;
use super::path::Path;
use super::timer::Timer;
use super::{ConnectError, Host};
use crate::id::FlowId;
use crate::locator::Locator;
use crate::wire::{
    readdress_transport_checksum, AddressRepr, ControlFlags, ControlRepr, SalPacket, SalRepr,
    TransportProtocol,
};

/// A packet the host wants sent. `payload` is a whole SAL packet; the link
/// puts it in IPv4 (protocol 144) or in UDP between `src` and `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub src: Locator,
    pub dst: Locator,
    /// The IP TTL the packet must have on the wire.
    pub ttl: u8,
    /// How the packet must leave: a native link sends relays and
    /// broadcasts another way than its own unicast packets.
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
    if pending.kind != ControlKind::Syn || !path.discovery {
        out.push(Outgoing {
            src: path.local,
            dst,
            payload: pending.packet.clone(),
        });
        return;
    }
    for (src, broadcast) in interfaces.broadcasts() {
        let mut payload = pending.packet.clone();
        readdress_sal_segment(&mut payload, (path.local, dst), (src, broadcast));
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
            self.loopback.push_back(Transmit {
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
        self.transmits.push_back(Transmit {
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
        let (rto, now) = (self.config.control_rto, self.now);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let control = flow.control.new_message(flags);
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
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        let deadline = flow
            .control
            .keep(kind, control.verno, build(&repr, segment), now, rto);
        let sent = flow.control.pending.back().expect("just kept");
        let mut packets = Vec::new();
        control_packets(&flow.path, &self.interfaces, sent, &mut packets);
        if packets.is_empty() {
            return;
        }
        flow.count_sent(now);
        self.arm_timer(id, Timer::Control, deadline);
        for packet in packets {
            self.send_packet(packet.src, packet.dst, packet.payload);
        }
        self.note_asked(id);
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
        for locator in self.interfaces.others_up(current) {
            if address.addrs.try_push(locator.ip()).is_err() {
                break;
            }
        }
        (!address.addrs.is_empty()).then_some(address)
    }

    /// Sends a bare ACK (with SERVICE when it completes a client handshake).
    pub(super) fn send_ack(&mut self, id: FlowId, with_service: bool, segment: &[u8]) {
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let Some(dst) = flow.path.remote else {
            return;
        };
        let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol().number());
        let control = flow.control.ack();
        repr.control = Some(control);
        flow.count_sent(now);
        let src = flow.path.local;
        if with_service {
            // The third packet of a handshake: also where else to find us.
            repr.service = Some(flow.service);
            repr.address = self.advertisement(src, &control);
        }
        let payload = build(&repr, segment);
        self.send_packet(src, dst, payload);
    }

    /// Resends a flow's control messages in flight now (a duplicate arrived,
    /// or the flow moved).
    pub(super) fn retransmit_now(&mut self, id: FlowId) {
        let Some(Endpoint::Flow(flow)) = self.endpoints.get(id) else {
            return;
        };
        let mut packets = Vec::new();
        for pending in &flow.control.pending {
            control_packets(&flow.path, &self.interfaces, pending, &mut packets);
        }
        self.resend(packets);
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
        let (retries, now) = (self.config.control_retries, self.now);
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        let mut packets = Vec::new();
        let Flow { control, path, .. } = &mut **flow;
        let interfaces = &self.interfaces;
        let timeout = control.on_timeout(now, retries, |pending| {
            control_packets(path, interfaces, pending, &mut packets);
        });
        if let Some(next) = timeout.next {
            self.arm_timer(id, Timer::Control, next);
        }
        self.resend(packets);
        for kind in timeout.expired {
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
                        flow.teardown.peer_gone();
                    }
                    self.mark_dirty(id);
                }
            }
        }
    }
}
