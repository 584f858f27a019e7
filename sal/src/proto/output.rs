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
use super::flow::Flow;
use super::path::Path;
use super::timer::Timer;
use super::{ConnectError, Host};
use crate::id::FlowId;
use crate::locator::Locator;
use crate::wire::{AddressRepr, ControlFlags, ControlRepr, SalRepr};

/// A packet the host wants sent. `payload` is a whole SAL packet; the link
/// puts it in IPv4 (protocol 144) or in UDP between `src` and `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub src: Locator,
    pub dst: Locator,
    pub ttl: u8,
    pub payload: Vec<u8>,
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

/// A control message in flight, addressed where the flow is now.
fn control_transmit(path: &Path, pending: &Pending, ttl: u8) -> Option<Transmit> {
    Some(Transmit {
        src: path.local,
        dst: path.control_destination(pending.kind)?,
        ttl,
        payload: pending.packet.clone(),
    })
}

impl Host {
    /// Queues a packet for the link, or for ourselves if it is addressed here.
    pub(super) fn queue_transmit(&mut self, transmit: Transmit) {
        if self.interfaces.owns(&transmit.dst) {
            self.loopback.push_back(transmit);
        } else {
            self.stats.packets_out += 1;
            self.stats.bytes_out += transmit.payload.len() as u64;
            self.transmits.push_back(transmit);
        }
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
        let (ttl, rto, now) = (self.config.ttl, self.config.control_rto, self.now);
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
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let deadline = flow
            .control
            .keep(kind, control.verno, build(&repr, segment), now, rto);
        let sent = flow.control.pending.back().expect("just kept");
        let Some(transmit) = control_transmit(&flow.path, sent, ttl) else {
            return;
        };
        flow.count_sent(now);
        self.arm_timer(id, Timer::Control, deadline);
        self.queue_transmit(transmit);
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
        let (ttl, now) = (self.config.ttl, self.now);
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
        self.queue_transmit(Transmit {
            src,
            dst,
            ttl,
            payload,
        });
    }

    /// Resends a flow's control messages in flight now (a duplicate arrived,
    /// or the flow moved).
    pub(super) fn retransmit_now(&mut self, id: FlowId) {
        let ttl = self.config.ttl;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let transmits: Vec<Transmit> = flow
            .control
            .pending
            .iter()
            .filter_map(|pending| control_transmit(&flow.path, pending, ttl))
            .collect();
        for transmit in transmits {
            self.stats.retransmits += 1;
            self.queue_transmit(transmit);
        }
    }

    /// The control timer fired: retransmits the flow's messages whose
    /// deadline passed, with doubled timeouts, and gives up on those out of
    /// retries, each as its kind demands.
    pub(super) fn retransmit_due(&mut self, id: FlowId) {
        let (retries, ttl, now) = (self.config.control_retries, self.config.ttl, self.now);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let mut transmits = Vec::new();
        let Flow { control, path, .. } = flow;
        let timeout = control.on_timeout(now, retries, |pending| {
            transmits.extend(control_transmit(path, pending, ttl));
        });
        if let Some(next) = timeout.next {
            self.arm_timer(id, Timer::Control, next);
        }
        for transmit in transmits {
            self.stats.retransmits += 1;
            self.queue_transmit(transmit);
        }
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
