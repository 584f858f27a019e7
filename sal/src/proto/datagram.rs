//! Datagrams: unconnected sockets and connected datagram flows.
//!
//! A datagram socket is an endpoint without a handshake: every datagram it
//! sends to a service is resolved on its own (so consecutive datagrams may
//! reach different replicas, as anycast should). Like a socket of the
//! reference stack, every datagram socket has a service ID of its own: a
//! bound one (a datagram listener's socket) the prefix it is bound to, an
//! unbound one a random 256-bit ID, registered as a DEMUX rule for as long
//! as the socket lives but never announced (it is no service of this host).
//! A datagram carries two SERVICE extensions, the destination's and the
//! sender's, and the answer to it is a datagram to the sender's service,
//! sent straight to the address it came from. Connected datagram flows
//! instead have the full handshake and teardown of a stream, with a
//! UDP-style segment in place of TCP.
//!
//! A host that does not take a datagram may answer it with a reset (the
//! reference stack does, with flow, nonce and numbers all zero): a socket
//! believes one only from an address it sent a datagram to itself, lately,
//! and then reports the refusal once, on its next receive.
//!
//! Nothing here is reliable or ordered, so queues are bounded and overflow
//! drops (counted): a slow reader must not make the host hoard memory.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use rand::Rng;
use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};

use super::flow::{Endpoint, FlowTransport};
use super::nat::transport_checksum_ok;
use super::{ConnectError, Event, FlowState, Host, HostError};
use crate::id::{FlowId, ServiceId, ServicePrefix};
use crate::locator::Locator;
use crate::table::{ListenerId, Resolution};
use crate::wire::{fill_transport_checksum, SalRepr, TransportProtocol};

/// The UDP-style header after the SAL header of a datagram.
const UDP_HEADER_LEN: usize = 8;
/// Largest datagram payload: leaves room in a 1500-byte packet for IPv4 (20),
/// a SAL header with two SERVICE extensions (84), a few SOURCE hops, and the
/// UDP header.
pub const MAX_DATAGRAM: usize = 1360;
/// Unicast destinations a socket remembers, to tell a refusal from a forgery.
const RECENT_DESTINATIONS: usize = 8;
/// How long after sending a datagram a refusal from its destination counts.
const REFUSAL_WINDOW: Duration = Duration::from_secs(30);
/// Attempts at drawing an unused random service ID for an unbound socket.
const SERVICE_ID_DRAWS: usize = 4;

/// A datagram as received by a datagram socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedDatagram {
    /// Who sent it: reply with [`Host::send_reply`].
    pub peer: DatagramPeer,
    /// The service it was sent to, for unconnected datagrams.
    pub service: Option<ServiceId>,
    /// The payload: the segment after its 8-byte UDP-style header, up to its UDP length.
    pub data: Vec<u8>,
}

/// The sender of a datagram: its locator, its socket's flow ID, and the
/// service ID of its socket when it said (the reference form does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatagramPeer {
    /// Where the sender really is: the client's address from SOURCE when a
    /// service router forwarded the datagram, else the packet's source.
    pub locator: Locator,
    /// The sender socket's flow ID (the datagram's `src_flowid`).
    pub flow: FlowId,
    /// The sender's own service ID (its datagram's second SERVICE), where
    /// a reply is addressed; `None` from senders that only name the
    /// destination (older serval-rs), answered by flow ID instead.
    #[serde(default)]
    pub service: Option<ServiceId>,
}

/// A datagram socket: receives unconnected datagrams addressed to its
/// service ID (or, from older senders, to its flow ID).
#[derive(Debug)]
pub(super) struct DatagramSocket {
    queue: DatagramQueue<ReceivedDatagram>,
    /// The listener whose DEMUX rule brings datagrams for `service` here.
    listener: ListenerId,
    /// This socket's own service ID, sent with every datagram.
    service: ServiceId,
    /// An unbound socket (its listener is its own, hidden).
    ephemeral: bool,
    /// Where it sent datagrams lately (unicast only), newest last.
    sent_to: VecDeque<(Ipv4Addr, Instant)>,
    /// A destination refused a datagram; reported by the next receive.
    refused: bool,
}

impl DatagramSocket {
    /// Remembers a unicast destination, for refusals.
    fn sent(&mut self, dst: Ipv4Addr, now: Instant) {
        self.sent_to.retain(|(ip, _)| *ip != dst);
        if self.sent_to.len() >= RECENT_DESTINATIONS {
            self.sent_to.pop_front();
        }
        self.sent_to.push_back((dst, now));
    }

    /// Whether this socket sent to `ip` within the refusal window.
    fn sent_lately(&self, ip: Ipv4Addr, now: Instant) -> bool {
        self.sent_to
            .iter()
            .any(|(to, at)| *to == ip && now < *at + REFUSAL_WINDOW)
    }
}

/// Received datagrams waiting for the application, bounded in number
/// ([`HostConfig::datagram_queue_limit`]) and in bytes
/// ([`HostConfig::datagram_queue_bytes`]): a count alone let one sender of
/// 60 KB datagrams (UDP carriage delivers them reassembled) make one
/// socket that is not read hold 15 MB.
///
/// [`HostConfig::datagram_queue_limit`]: super::HostConfig::datagram_queue_limit
/// [`HostConfig::datagram_queue_bytes`]: super::HostConfig::datagram_queue_bytes
#[derive(Debug)]
pub(super) struct DatagramQueue<T> {
    /// Each datagram with its payload's length.
    items: VecDeque<(T, usize)>,
    bytes: usize,
}

impl<T> Default for DatagramQueue<T> {
    fn default() -> Self {
        DatagramQueue {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T> DatagramQueue<T> {
    /// Appends `item`, whose payload is `len` bytes, unless that would
    /// exceed `limits` (datagrams, bytes); returns false (and drops `item`)
    /// then. A datagram larger than the byte bound fits an empty queue.
    pub fn push(&mut self, item: T, len: usize, limits: (usize, usize)) -> bool {
        let full =
            self.items.len() >= limits.0 || (!self.items.is_empty() && self.bytes + len > limits.1);
        if full {
            return false;
        }
        self.bytes += len;
        self.items.push_back((item, len));
        true
    }

    /// Takes the oldest datagram.
    pub fn pop_front(&mut self) -> Option<T> {
        let (item, len) = self.items.pop_front()?;
        self.bytes -= len;
        Some(item)
    }
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
    /// Opens an unbound datagram socket. Its flow ID names it in the
    /// datagrams it sends; its service ID (random, see
    /// [`Host::datagram_service`]) is where replies arrive.
    pub fn open_datagram(&mut self) -> Result<FlowId, HostError> {
        for _ in 0..SERVICE_ID_DRAWS {
            let service = ServiceId::from_bytes(self.rng.random());
            let prefix = ServicePrefix::exact(service);
            match self.bind_listener(prefix, TransportProtocol::Datagram, 1, true, None) {
                Ok(listener) => {
                    return self
                        .listener_socket(listener)
                        .ok_or(HostError::NoSuchListener(listener))
                }
                Err(HostError::AddressInUse(_)) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(HostError::TooManyFlows(self.endpoints.capacity()))
    }

    /// A datagram listener's socket (`listener`'s, serving `service`).
    pub(super) fn new_datagram_socket(
        &mut self,
        listener: ListenerId,
        service: ServiceId,
        ephemeral: bool,
    ) -> Result<FlowId, HostError> {
        let limit = self.endpoints.capacity();
        self.endpoints
            .insert_new(&mut self.rng, |_| {
                Endpoint::Datagram(DatagramSocket {
                    queue: DatagramQueue::default(),
                    listener,
                    service,
                    ephemeral,
                    sent_to: VecDeque::new(),
                    refused: false,
                })
            })
            .map_err(|_| HostError::TooManyFlows(limit))
    }

    /// Closes a datagram socket opened with [`Host::open_datagram`] (and
    /// withdraws its service ID).
    pub fn close_datagram(&mut self, socket: FlowId) -> Result<(), HostError> {
        match self.endpoints.get(socket) {
            Some(Endpoint::Datagram(d)) if d.ephemeral => self.close_listener(d.listener),
            _ => Err(HostError::NoSuchFlow(socket)),
        }
    }

    /// The service ID of a datagram socket: what it is bound to, or its
    /// random one.
    pub fn datagram_service(&self, socket: FlowId) -> Option<ServiceId> {
        match self.endpoints.get(socket) {
            Some(Endpoint::Datagram(d)) => Some(d.service),
            _ => None,
        }
    }

    /// Sends an unconnected datagram to a service, resolved for this datagram
    /// alone (consecutive datagrams may reach different replicas). No
    /// matching rule, with broadcast discovery on, sends it to the
    /// broadcast address of every interface that is up.
    pub fn send_to(
        &mut self,
        socket: FlowId,
        service: ServiceId,
        data: &[u8],
    ) -> Result<(), HostError> {
        let repr = self.datagram_repr(socket, service, data)?;
        let Some(first) = self.interfaces.first() else {
            return Err(ConnectError::NoRoute.into());
        };
        match self.table.resolve(&service, data.len(), &mut self.rng) {
            Resolution::Forward(next) => {
                let local = self.interfaces.source_for(&next).unwrap_or(first);
                self.send_datagram_packet(socket, &repr, data, local, next);
            }
            Resolution::Demux(_) => self.send_datagram_packet(socket, &repr, data, first, first),
            Resolution::Delay => {
                // Held as if received from ourselves: when a rule appears it is
                // routed like any first packet (and forwarded with SOURCE).
                let segment = udp_segment(data, first.ip(), first.ip());
                let ttl = self.config.ttl;
                let packet = super::output::build(&repr, &segment);
                self.hold(service, first, first, ttl, packet);
            }
            Resolution::NoMatch if self.config.broadcast_discovery => {
                let targets: Vec<_> = self.interfaces.broadcasts().collect();
                if targets.is_empty() {
                    return Err(ConnectError::NoRoute.into());
                }
                for (local, broadcast) in targets {
                    self.send_datagram_packet(socket, &repr, data, local, broadcast);
                }
            }
            Resolution::Drop | Resolution::NoMatch => return Err(ConnectError::NoRoute.into()),
        }
        Ok(())
    }

    /// Sends an unconnected datagram to `service` at `via`, without
    /// resolving it (the address a reply goes to, or the advisory address
    /// of a `sendto` that names one).
    pub fn send_to_via(
        &mut self,
        socket: FlowId,
        service: ServiceId,
        via: Locator,
        data: &[u8],
    ) -> Result<(), HostError> {
        let repr = self.datagram_repr(socket, service, data)?;
        let local = self
            .interfaces
            .source_for(&via)
            .ok_or(HostError::Connect(ConnectError::NoRoute))?;
        self.send_datagram_packet(socket, &repr, data, local, via);
        Ok(())
    }

    /// Sends a datagram back to the sender of a received one: to its
    /// service at its address, or, when it named no service of its own, to
    /// its flow ID.
    pub fn send_reply(
        &mut self,
        socket: FlowId,
        peer: DatagramPeer,
        data: &[u8],
    ) -> Result<(), HostError> {
        if let Some(service) = peer.service {
            return self.send_to_via(socket, service, peer.locator, data);
        }
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
        self.send_datagram_packet(socket, &repr, data, local, peer.locator);
        Ok(())
    }

    /// Takes the next datagram queued on a datagram socket. A refusal of
    /// one of its datagrams is reported once, as
    /// [`ConnectError::Refused`], before whatever is queued.
    pub fn recv_from(&mut self, socket: FlowId) -> Result<ReceivedDatagram, HostError> {
        match self.endpoints.get_mut(socket) {
            Some(Endpoint::Datagram(d)) => {
                if std::mem::take(&mut d.refused) {
                    return Err(ConnectError::Refused.into());
                }
                d.queue.pop_front().ok_or(HostError::WouldBlock)
            }
            _ => Err(HostError::NoSuchFlow(socket)),
        }
    }

    /// Sends a datagram on a connected datagram flow.
    pub fn send_datagram(&mut self, id: FlowId, data: &[u8]) -> Result<(), HostError> {
        if data.len() > MAX_DATAGRAM {
            return Err(HostError::TooLarge(data.len()));
        }
        let now = self.now;
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
        flow.count_sent(now);
        flow.counters.bytes_out += segment.len() as u64;
        self.send_packet(src, remote, super::output::build(&repr, &segment));
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

    /// A datagram queue's bounds: (datagrams, bytes).
    fn datagram_queue_limits(&self) -> (usize, usize) {
        (
            self.config.datagram_queue_limit,
            self.config.datagram_queue_bytes,
        )
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

    /// The header of an unconnected datagram from `socket` to `service`:
    /// both services, as the reference stack sends them.
    fn datagram_repr(
        &self,
        socket: FlowId,
        service: ServiceId,
        data: &[u8],
    ) -> Result<SalRepr, HostError> {
        self.check_datagram_socket(socket, data)?;
        let mut repr = SalRepr::data(socket, None, TransportProtocol::Datagram.number());
        repr.service = Some(service);
        repr.source_service = self.datagram_service(socket);
        Ok(repr)
    }

    /// Sends `repr`'s header with a UDP-style segment of `data`, `src` ->
    /// `dst`, and remembers a unicast destination for refusals.
    fn send_datagram_packet(
        &mut self,
        socket: FlowId,
        repr: &SalRepr,
        data: &[u8],
        src: Locator,
        dst: Locator,
    ) {
        let now = self.now;
        let unicast = !self.interfaces.is_broadcast(dst.ip());
        if let Some(Endpoint::Datagram(sock)) = self.endpoints.get_mut(socket) {
            if unicast {
                sock.sent(dst.ip(), now);
            }
        }
        let segment = udp_segment(data, src.ip(), dst.ip());
        self.send_packet(src, dst, super::output::build(repr, &segment));
    }

    /// A reset addressed to a datagram socket: one of its datagrams was
    /// refused, if it comes from an address the socket sent to lately (a
    /// reference host answers a broadcast datagram with a reset from the
    /// broadcast address, which no socket sent to alone).
    pub(super) fn datagram_reset_input(&mut self, socket: FlowId, src: Locator) {
        let now = self.now;
        let Some(Endpoint::Datagram(sock)) = self.endpoints.get_mut(socket) else {
            return;
        };
        if !sock.sent_lately(src.ip(), now) {
            self.stats.stale += 1;
            return;
        }
        sock.refused = true;
        self.stats.datagram_refused += 1;
        self.events.push_back(Event::Datagram(socket));
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
            || !transport_checksum_ok(TransportProtocol::Datagram, &src, &dst, segment)
        {
            self.stats.bad_checksum += 1;
            return;
        }
        let Some(data) = udp_payload(segment) else {
            self.stats.malformed += 1;
            return;
        };
        let limits = self.datagram_queue_limits();
        let Some(Endpoint::Datagram(sock)) = self.endpoints.get_mut(socket) else {
            return;
        };
        let Some(flow) = repr.src_flow else {
            return;
        };
        let received = ReceivedDatagram {
            peer: DatagramPeer {
                locator: peer,
                flow,
                service: repr.source_service,
            },
            service: repr.service,
            data: data.to_vec(),
        };
        if !sock.queue.push(received, data.len(), limits) {
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
        if !transport_checksum_ok(TransportProtocol::Datagram, &src, &dst, segment) {
            self.stats.bad_checksum += 1;
            return;
        }
        let limits = self.datagram_queue_limits();
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        let FlowTransport::Datagram(queue) = &mut flow.transport else {
            return;
        };
        match udp_payload(segment) {
            Some(data) if !data.is_empty() || !with_control => {
                if !queue.push(data.to_vec(), data.len(), limits) {
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
    use crate::wire::verify_transport_checksum;

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
    fn a_packet_too_big_for_the_caller_s_buffer_is_dropped_not_counted_as_sent() {
        use crate::proto::{HostConfig, LocalInterface};
        use crate::table::Target;
        let now = Instant::from_millis(0);
        let mut host = Host::new(HostConfig::default(), now);
        host.add_interface(LocalInterface {
            name: "eth0".into(),
            locator: Locator::Ipv4(Ipv4Addr::new(10, 0, 0, 1)),
            prefix_len: 24,
            up: true,
        });
        let remote = Locator::Ipv4(Ipv4Addr::new(10, 0, 0, 2));
        let target = Target::Forward {
            locator: remote,
            weight: 1,
        };
        host.add_rule("0/0".parse().unwrap(), target, 0);
        host.connect("beef".parse().unwrap(), TransportProtocol::Datagram)
            .unwrap();
        let mut small = [0u8; 16];
        assert!(
            host.poll_transmit(now, &mut small).is_none(),
            "the SYN does not fit"
        );
        let stats = host.stats();
        assert_eq!(
            (stats.too_big, stats.packets_out, stats.bytes_out),
            (1, 0, 0)
        );
    }

    #[test]
    fn full_queues_drop_new_items_by_count_and_by_bytes() {
        let mut queue = DatagramQueue::default();
        assert!(queue.push(1, 10, (2, 100)));
        assert!(queue.push(2, 10, (2, 100)));
        assert!(!queue.push(3, 10, (2, 100)), "two datagrams at most");
        assert_eq!(queue.pop_front(), Some(1));
        assert!(!queue.push(4, 91, (2, 100)), "100 bytes at most");
        assert!(queue.push(5, 90, (2, 100)));
        assert_eq!((queue.pop_front(), queue.pop_front()), (Some(2), Some(5)));
        assert_eq!(queue.bytes, 0);
        assert!(
            queue.push(6, 1000, (2, 100)),
            "a large one fits an empty queue"
        );
        assert!(!queue.push(7, 1, (2, 100)));
    }
}
