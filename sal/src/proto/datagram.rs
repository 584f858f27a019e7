//! Datagrams: unconnected sockets and connected datagram flows.
//!
//! A datagram socket is an endpoint without a handshake: every datagram it
//! sends to a service is resolved on its own (so consecutive datagrams may
//! reach different replicas, as anycast should), and replies come back to
//! its flow ID straight from the replica. A datagram listener owns one such
//! socket, where unconnected datagrams for its service arrive. Connected
//! datagram flows instead have the full handshake and teardown of a stream,
//! with a UDP-style segment in place of TCP.
//!
//! Nothing here is reliable or ordered, so queues are bounded and overflow
//! drops (counted): a slow reader must not make the host hoard memory.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::flow::{Endpoint, FlowTransport};
use super::{ConnectError, Event, FlowState, Host, HostError, Packet};
use crate::id::{FlowId, ServiceId};
use crate::locator::Locator;
use crate::table::{ListenerId, Resolution};
use crate::wire::{fill_transport_checksum, verify_transport_checksum, SalRepr, TransportProtocol};

/// The UDP-style header after the SAL header of a datagram.
const UDP_HEADER_LEN: usize = 8;
/// Largest datagram payload: leaves room in a 1500-byte packet for IPv4 (20),
/// a SAL header with SERVICE (48), a few SOURCE hops, and the UDP header.
pub const MAX_DATAGRAM: usize = 1400;

/// A datagram as received by a datagram socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedDatagram {
    /// Who sent it: reply with [`Host::send_reply`].
    pub peer: DatagramPeer,
    /// The service it was sent to, for unconnected datagrams.
    pub service: Option<ServiceId>,
    pub data: Vec<u8>,
}

/// The sender of a datagram: its locator and its socket's flow ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatagramPeer {
    pub locator: Locator,
    pub flow: FlowId,
}

/// A datagram socket: receives unconnected datagrams addressed to its flow ID
/// (replies) or, when bound, to its listener's service.
#[derive(Debug)]
pub(super) struct DatagramSocket {
    queue: VecDeque<ReceivedDatagram>,
    listener: Option<ListenerId>,
}

/// Appends to a bounded queue; returns false (and drops `item`) when full.
fn enqueue<T>(queue: &mut VecDeque<T>, item: T, limit: usize) -> bool {
    if queue.len() >= limit {
        return false;
    }
    queue.push_back(item);
    true
}

/// A UDP-style header (ports 0) and payload, checksummed for `src` -> `dst`.
pub(super) fn udp_segment(data: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
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

impl Host {
    /// Opens an unbound datagram socket; its flow ID is the source of the
    /// unconnected datagrams it sends and where replies arrive.
    pub fn open_datagram(&mut self) -> Result<FlowId, HostError> {
        self.new_datagram_socket(None)
    }

    pub(super) fn new_datagram_socket(
        &mut self,
        listener: Option<ListenerId>,
    ) -> Result<FlowId, HostError> {
        let limit = self.endpoints.capacity();
        self.endpoints
            .insert_new(&mut self.rng, |_| {
                Endpoint::Datagram(DatagramSocket {
                    queue: VecDeque::new(),
                    listener,
                })
            })
            .map_err(|_| HostError::TooManyFlows(limit))
    }

    /// Closes a datagram socket opened with [`Host::open_datagram`].
    pub fn close_datagram(&mut self, socket: FlowId) -> Result<(), HostError> {
        match self.endpoints.get(socket) {
            Some(Endpoint::Datagram(d)) if d.listener.is_none() => {
                self.endpoints.remove(socket);
                Ok(())
            }
            _ => Err(HostError::NoSuchFlow(socket)),
        }
    }

    /// Sends an unconnected datagram to a service, resolved for this datagram
    /// alone (consecutive datagrams may reach different replicas).
    pub fn send_to(
        &mut self,
        socket: FlowId,
        service: ServiceId,
        data: &[u8],
    ) -> Result<(), HostError> {
        self.check_datagram_socket(socket, data)?;
        let Some(first) = self.interfaces.first() else {
            return Err(ConnectError::NoRoute.into());
        };
        let mut repr = SalRepr::data(socket, None, TransportProtocol::Datagram.number());
        repr.service = Some(service);
        match self.table.resolve(&service, data.len(), &mut self.rng) {
            Resolution::Forward(next) => {
                let local = self.interfaces.source_for(&next).unwrap_or(first);
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
                let packet = super::output::build(&repr, &segment);
                self.hold(service, first, first, ttl, packet);
                Ok(())
            }
            Resolution::Drop | Resolution::NoMatch => Err(ConnectError::NoRoute.into()),
        }
    }

    /// Sends a datagram straight back to the sender of a received one.
    pub fn send_reply(
        &mut self,
        socket: FlowId,
        peer: DatagramPeer,
        data: &[u8],
    ) -> Result<(), HostError> {
        self.check_datagram_socket(socket, data)?;
        let local = self
            .interfaces
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

    /// Takes the next datagram queued on a datagram socket.
    pub fn recv_from(&mut self, socket: FlowId) -> Result<ReceivedDatagram, HostError> {
        match self.endpoints.get_mut(socket) {
            Some(Endpoint::Datagram(d)) => d.queue.pop_front().ok_or(HostError::WouldBlock),
            _ => Err(HostError::NoSuchFlow(socket)),
        }
    }

    /// Sends a datagram on a connected datagram flow.
    pub fn send_datagram(&mut self, id: FlowId, data: &[u8]) -> Result<(), HostError> {
        if data.len() > MAX_DATAGRAM {
            return Err(HostError::TooLarge(data.len()));
        }
        let ttl = self.config.ttl;
        let flow = self.flow_mut(id)?;
        if flow.protocol() != TransportProtocol::Datagram {
            return Err(HostError::WrongProtocol);
        }
        match flow.state {
            FlowState::Established if !flow.teardown.fin_sent => {}
            FlowState::Dead => return Err(HostError::Reset),
            FlowState::Established => return Err(HostError::SendClosed),
            _ => return Err(HostError::NotConnected),
        }
        let Some(remote) = flow.path.remote else {
            return Err(HostError::NotConnected);
        };
        let repr = SalRepr::data(
            flow.id,
            flow.peer_flow,
            TransportProtocol::Datagram.number(),
        );
        let src = flow.path.local;
        let segment = udp_segment(data, src.ip(), remote.ip());
        flow.counters.packets_out += 1;
        flow.counters.bytes_out += data.len() as u64;
        self.queue_transmit(Packet {
            src,
            dst: remote,
            ttl,
            payload: super::output::build(&repr, &segment),
        });
        Ok(())
    }

    /// Takes the next datagram received on a connected datagram flow; `Ok(None)`
    /// once the peer has closed the flow and the queue is empty.
    pub fn recv_datagram(&mut self, id: FlowId) -> Result<Option<Vec<u8>>, HostError> {
        let flow = self.flow_mut(id)?;
        let closed = flow.teardown.peer_fin || flow.state == FlowState::Dead;
        let FlowTransport::Datagram(queue) = &mut flow.transport else {
            return Err(HostError::WrongProtocol);
        };
        match queue.pop_front() {
            Some(data) => Ok(Some(data)),
            None if closed => Ok(None),
            None => Err(HostError::WouldBlock),
        }
    }

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
        self.queue_transmit(Packet {
            src,
            dst,
            ttl: self.config.ttl,
            payload: super::output::build(repr, &segment),
        });
    }

    /// An unconnected datagram for a local datagram listener.
    pub(super) fn deliver_unconnected(
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

    /// Queues an unconnected datagram (or a reply) on a datagram socket.
    pub(super) fn deliver_to_socket(
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
        let received = ReceivedDatagram {
            peer: DatagramPeer {
                locator: peer,
                flow: repr.src_flow,
            },
            service: repr.service,
            data: data.to_vec(),
        };
        if !enqueue(&mut sock.queue, received, limit) {
            self.stats.datagram_overflow += 1;
            return;
        }
        self.events.push_back(Event::Datagram(socket));
    }

    /// The segment of a packet on an established datagram flow. An empty
    /// datagram is data unless it rides on a control message (the segment
    /// of a handshake packet).
    pub(super) fn datagram_flow_input(
        &mut self,
        id: FlowId,
        src: Locator,
        dst: Locator,
        with_control: bool,
        segment: &[u8],
    ) {
        if !verify_transport_checksum(TransportProtocol::Datagram, src.ip(), dst.ip(), segment) {
            self.stats.bad_checksum += 1;
            return;
        }
        let limit = self.config.datagram_queue_limit;
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        let FlowTransport::Datagram(queue) = &mut flow.transport else {
            return;
        };
        match udp_payload(segment) {
            Some(data) if !data.is_empty() || !with_control => {
                if !enqueue(queue, data.to_vec(), limit) {
                    self.stats.datagram_overflow += 1;
                }
            }
            Some(_) => {}
            None => self.stats.malformed += 1,
        }
        self.mark_dirty(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_segments_round_trip_and_verify() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let segment = udp_segment(b"hello", a, b);
        assert_eq!(segment.len(), UDP_HEADER_LEN + 5);
        assert_eq!(udp_payload(&segment), Some(&b"hello"[..]));
        assert!(verify_transport_checksum(
            TransportProtocol::Datagram,
            a,
            b,
            &segment
        ));
        let elsewhere = Ipv4Addr::new(10, 0, 0, 3);
        assert!(!verify_transport_checksum(
            TransportProtocol::Datagram,
            a,
            elsewhere,
            &segment
        ));
    }

    #[test]
    fn insane_udp_lengths_yield_no_payload() {
        assert_eq!(udp_payload(&[0; 7]), None, "shorter than the header");
        let mut segment = udp_segment(b"abc", Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
        segment[4..6].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(udp_payload(&segment), None, "length past the segment");
        segment[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(udp_payload(&segment), None, "length inside the header");
        segment[4..6].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            udp_payload(&segment),
            Some(&b"a"[..]),
            "trailing bytes ignored"
        );
    }

    #[test]
    fn full_queues_drop_new_items() {
        let mut queue = VecDeque::new();
        assert!(enqueue(&mut queue, 1, 2));
        assert!(enqueue(&mut queue, 2, 2));
        assert!(!enqueue(&mut queue, 3, 2));
        assert_eq!(queue, [1, 2]);
    }
}
