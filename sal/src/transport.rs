//! Stream transport: smoltcp's TCP, one socket per flow, behind the SAL.
//!
//! smoltcp demultiplexes TCP by IP endpoints, but a SAL flow is named by flow
//! IDs and its locators may change mid-connection. So the transport never sees
//! a real address: every flow gets its own *virtual* endpoint pair
//! (`VIRTUAL_LOCAL:port` <-> `VIRTUAL_REMOTE:1`, the port unique per flow) on a
//! private smoltcp interface, and segments are translated at the boundary:
//!
//! - outgoing: smoltcp emits `IPv4(virtual) + TCP(port, 1)`; the boundary keeps
//!   the TCP segment, sets both ports to 0 and adjusts the checksum (RFC 1624,
//!   incremental) from the virtual pseudo-header to the real one;
//! - incoming: the caller has verified the checksum over the real addresses;
//!   the boundary writes the virtual ports and a virtual IPv4 header and hands
//!   the packet to smoltcp, which is told not to re-verify checksums.
//!
//! A migration changes only the real addresses used at the boundary, which is
//! why TCP never notices one.

use std::collections::VecDeque;
use std::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet};

use crate::id::FlowId;
use crate::wire::{address_words, adjust_checksum, IPV4_HEADER_LEN};

/// The transport's own address for every flow. From the benchmarking range
/// (RFC 2544), never routed, never on the wire.
pub const VIRTUAL_LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The peer's address as the transport sees it, for every flow.
pub const VIRTUAL_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The peer's port as the transport sees it, for every flow.
const VIRTUAL_REMOTE_PORT: u16 = 1;
/// Local virtual ports are drawn from here up; one per live stream flow.
const FIRST_PORT: u16 = 1024;

/// Size and behaviour of each flow's TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Receive and send buffer per flow, bytes. Large enough to fill a fast
    /// link: smoltcp derives the window scale from it.
    pub buffer_size: usize,
    /// Largest TCP segment (payload) to put on the wire.
    pub mss: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            buffer_size: 1 << 20,
            // 1500 - 20 IPv4 - 12 SAL - 20 TCP, as the reference stack advertises.
            mss: 1448,
        }
    }
}

/// Why a stream operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("no virtual port left for another stream")]
    PortsExhausted,
    #[error("the stream is not connected")]
    NotConnected,
    #[error("the stream is closed for sending")]
    SendClosed,
}

/// One flow's handle into the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHandle {
    socket: SocketHandle,
    port: u16,
}

/// The in-memory device between smoltcp and the SAL boundary.
#[derive(Debug, Default)]
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

struct QueueRxToken(Vec<u8>);
struct QueueTxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for QueueRxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for QueueTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = vec![0u8; len];
        let result = f(&mut buffer);
        self.0.push_back(buffer);
        result
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = QueueRxToken;
    type TxToken<'a> = QueueTxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(QueueRxToken, QueueTxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((QueueRxToken(packet), QueueTxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<QueueTxToken<'_>> {
        Some(QueueTxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Compute checksums on transmit (the boundary adjusts them); never
        // verify on receive: the boundary verified the real checksum already.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

/// All stream flows of a host, on one private smoltcp interface.
pub struct StreamTransport {
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    /// Flow owning each virtual port (index = port).
    ports: Vec<Option<FlowId>>,
    next_port: u16,
    live: usize,
    config: StreamConfig,
}

impl std::fmt::Debug for StreamTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTransport")
            .field("live", &self.live)
            .field("config", &self.config)
            .finish()
    }
}

/// A segment smoltcp wants sent for a flow, already translated to the wire
/// form except for the real-address checksum adjustment.
#[derive(Debug)]
pub struct OutgoingSegment {
    pub flow: FlowId,
    /// The TCP segment, ports still virtual; see [`finish_outgoing`].
    pub segment: Vec<u8>,
}

impl StreamTransport {
    pub fn new(config: StreamConfig, now: Instant, seed: u64) -> StreamTransport {
        let mut device = QueueDevice {
            mtu: config.mss + IPV4_HEADER_LEN + 20,
            ..QueueDevice::default()
        };
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            // A /7 makes VIRTUAL_REMOTE on-link, so no route is needed. Pushing
            // one address into an empty list cannot overflow it.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(VIRTUAL_LOCAL), 7));
        });
        StreamTransport {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            ports: vec![None; usize::from(u16::MAX) + 1],
            next_port: FIRST_PORT,
            live: 0,
            config,
        }
    }

    /// Number of live stream sockets.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn alloc_port(&mut self, flow: FlowId) -> Result<u16, StreamError> {
        let span = usize::from(u16::MAX - FIRST_PORT) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                FIRST_PORT
            } else {
                port + 1
            };
            let slot = &mut self.ports[usize::from(port)];
            if slot.is_none() {
                *slot = Some(flow);
                return Ok(port);
            }
        }
        Err(StreamError::PortsExhausted)
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.config.buffer_size]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.config.buffer_size]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_congestion_control(tcp::CongestionControl::Cubic);
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(Some(Duration::from_millis(1)));
        socket
    }

    /// Opens the client side of a flow: the socket starts connecting, and its
    /// SYN comes out of the next [`StreamTransport::poll`].
    pub fn open_client(&mut self, flow: FlowId) -> Result<StreamHandle, StreamError> {
        let port = self.alloc_port(flow)?;
        let mut socket = self.new_socket();
        let remote = (IpAddress::Ipv4(VIRTUAL_REMOTE), VIRTUAL_REMOTE_PORT);
        if socket.connect(self.iface.context(), remote, port).is_err() {
            self.ports[usize::from(port)] = None;
            return Err(StreamError::NotConnected);
        }
        let socket = self.sockets.add(socket);
        self.live += 1;
        Ok(StreamHandle { socket, port })
    }

    /// Opens the server side of a flow: a socket listening on the flow's own
    /// port, ready for the SYN the SAL is about to deliver.
    pub fn open_server(&mut self, flow: FlowId) -> Result<StreamHandle, StreamError> {
        let port = self.alloc_port(flow)?;
        let mut socket = self.new_socket();
        if socket.listen(port).is_err() {
            self.ports[usize::from(port)] = None;
            return Err(StreamError::NotConnected);
        }
        let socket = self.sockets.add(socket);
        self.live += 1;
        Ok(StreamHandle { socket, port })
    }

    /// Frees the flow's socket and port at once (no FIN or RST is sent).
    pub fn release(&mut self, handle: StreamHandle) {
        if self.ports[usize::from(handle.port)].take().is_some() {
            self.sockets.remove(handle.socket);
            self.live -= 1;
        }
    }

    /// Hands a received TCP segment (ports 0, checksum already verified over
    /// the real addresses) to the flow's socket.
    pub fn deliver(&mut self, handle: StreamHandle, segment: &[u8]) {
        if segment.len() < 20 || segment.len() + IPV4_HEADER_LEN > usize::from(u16::MAX) {
            return;
        }
        let mut packet = vec![0u8; IPV4_HEADER_LEN + segment.len()];
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut packet[..]);
            ip.set_version(4);
            ip.set_header_len(IPV4_HEADER_LEN as u8);
            ip.set_total_len((IPV4_HEADER_LEN + segment.len()) as u16);
            ip.set_hop_limit(64);
            ip.set_next_header(IpProtocol::Tcp);
            ip.set_src_addr(VIRTUAL_REMOTE);
            ip.set_dst_addr(VIRTUAL_LOCAL);
        }
        let tcp = &mut packet[IPV4_HEADER_LEN..];
        tcp.copy_from_slice(segment);
        tcp[0..2].copy_from_slice(&VIRTUAL_REMOTE_PORT.to_be_bytes());
        tcp[2..4].copy_from_slice(&handle.port.to_be_bytes());
        self.device.rx.push_back(packet);
    }

    /// Runs smoltcp: processes delivered segments and timers, and returns the
    /// segments to send. Returns whether any socket may have changed state.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<OutgoingSegment>) -> bool {
        let changed = self.iface.poll(now, &mut self.device, &mut self.sockets);
        while let Some(packet) = self.device.tx.pop_front() {
            let Ok(ip) = Ipv4Packet::new_checked(&packet[..]) else {
                continue;
            };
            if ip.next_header() != IpProtocol::Tcp {
                continue;
            }
            let header_len = usize::from(ip.header_len());
            let end = usize::from(ip.total_len()).min(packet.len());
            let segment = &packet[header_len..end];
            if segment.len() < 20 {
                continue;
            }
            let port = u16::from_be_bytes([segment[0], segment[1]]);
            let Some(flow) = self.ports[usize::from(port)] else {
                continue;
            };
            out.push(OutgoingSegment {
                flow,
                segment: segment.to_vec(),
            });
        }
        changed == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// When smoltcp next needs to run, absent new input.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    fn socket(&mut self, handle: StreamHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle.socket)
    }

    /// Queues `data` for sending; returns how much fit in the send buffer.
    pub fn send(&mut self, handle: StreamHandle, data: &[u8]) -> Result<usize, StreamError> {
        let socket = self.socket(handle);
        if !socket.may_send() {
            return Err(if socket.is_open() {
                StreamError::NotConnected
            } else {
                StreamError::SendClosed
            });
        }
        socket.send_slice(data).map_err(|_| StreamError::SendClosed)
    }

    /// Bytes that [`StreamTransport::send`] would accept now.
    pub fn send_room(&mut self, handle: StreamHandle) -> usize {
        let socket = self.socket(handle);
        if socket.may_send() {
            socket.send_capacity() - socket.send_queue()
        } else {
            0
        }
    }

    /// Copies received bytes into `buf`: `Ok(0)` means the peer finished
    /// sending and everything was read; `None` means nothing to read yet.
    pub fn recv(&mut self, handle: StreamHandle, buf: &mut [u8]) -> Option<usize> {
        let socket = self.socket(handle);
        match socket.recv_slice(buf) {
            Ok(0) if !socket.may_recv() => Some(0),
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(tcp::RecvError::Finished) => Some(0),
            Err(tcp::RecvError::InvalidState) => {
                if socket.state() == tcp::State::SynSent
                    || socket.state() == tcp::State::SynReceived
                {
                    None
                } else {
                    Some(0)
                }
            }
        }
    }

    /// Sends FIN after the queued data (half-close).
    pub fn shutdown(&mut self, handle: StreamHandle) {
        self.socket(handle).close();
    }

    /// Sends RST and drops queued data.
    pub fn abort(&mut self, handle: StreamHandle) {
        self.socket(handle).abort();
    }

    /// The TCP state of the flow's socket.
    pub fn state(&mut self, handle: StreamHandle) -> tcp::State {
        self.socket(handle).state()
    }

    /// Whether our FIN has been sent and acknowledged: the point at which the
    /// reference stack sends its SAL-level FIN.
    pub fn fin_acked(&mut self, handle: StreamHandle) -> bool {
        matches!(
            self.state(handle),
            tcp::State::FinWait2 | tcp::State::TimeWait | tcp::State::Closed
        )
    }

    /// Bytes queued for sending and not yet acknowledged.
    pub fn unacked(&mut self, handle: StreamHandle) -> usize {
        self.socket(handle).send_queue()
    }

    /// Whether received bytes wait to be read by the application.
    pub fn has_unread(&self, handle: StreamHandle) -> bool {
        self.sockets.get::<tcp::Socket>(handle.socket).recv_queue() > 0
    }

    /// Whether the flow has sent data (or a FIN) that the peer has not
    /// acknowledged: the condition under which silence means trouble.
    pub fn has_unacked(&self, handle: StreamHandle) -> bool {
        let socket = self.sockets.get::<tcp::Socket>(handle.socket);
        socket.send_queue() > 0
            || matches!(
                socket.state(),
                tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck
            )
    }
}

/// Turns a segment from [`StreamTransport::poll`] into its wire form: both
/// ports 0 and the checksum moved from the virtual pseudo-header to the real
/// addresses it will be sent between.
pub fn finish_outgoing(segment: &mut [u8], real_src: Ipv4Addr, real_dst: Ipv4Addr) {
    let old_ports = [
        u16::from_be_bytes([segment[0], segment[1]]),
        u16::from_be_bytes([segment[2], segment[3]]),
    ];
    let check = u16::from_be_bytes([segment[16], segment[17]]);
    let check = adjust_checksum(
        check,
        &words(VIRTUAL_LOCAL, VIRTUAL_REMOTE, old_ports),
        &words(real_src, real_dst, [0, 0]),
    );
    segment[0..4].fill(0);
    segment[16..18].copy_from_slice(&check.to_be_bytes());
}

/// The 16-bit words of two addresses and two ports that a checksum covers.
fn words(src: Ipv4Addr, dst: Ipv4Addr, ports: [u16; 2]) -> [u16; 6] {
    let [a, b] = address_words(src);
    let [c, d] = address_words(dst);
    [a, b, c, d, ports[0], ports[1]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{fill_transport_checksum, verify_transport_checksum, TransportProtocol};

    #[test]
    fn incremental_adjust_matches_recompute() {
        let a = Ipv4Addr::new(10, 1, 2, 3);
        let b = Ipv4Addr::new(10, 9, 8, 7);
        let mut segment = vec![0u8; 40];
        segment[0..2].copy_from_slice(&4000u16.to_be_bytes());
        segment[2..4].copy_from_slice(&1u16.to_be_bytes());
        segment[12] = 5 << 4;
        for (i, byte) in segment[20..].iter_mut().enumerate() {
            *byte = i as u8 * 7;
        }
        fill_transport_checksum(
            TransportProtocol::Stream,
            VIRTUAL_LOCAL,
            VIRTUAL_REMOTE,
            &mut segment,
        )
        .unwrap();
        finish_outgoing(&mut segment, a, b);
        assert_eq!(&segment[0..4], &[0, 0, 0, 0]);
        assert!(verify_transport_checksum(
            TransportProtocol::Stream,
            a,
            b,
            &segment
        ));
    }

    #[test]
    fn two_transports_complete_a_handshake_and_move_data() {
        let now = Instant::from_millis(0);
        let mut client = StreamTransport::new(StreamConfig::default(), now, 1);
        let mut server = StreamTransport::new(StreamConfig::default(), now, 2);
        let cf = FlowId::new(1).unwrap();
        let sf = FlowId::new(2).unwrap();
        let ch = client.open_client(cf).unwrap();
        let sh = server.open_server(sf).unwrap();
        let (ca, sa) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        client.send(ch, b"").ok();
        let mut sent = false;
        let mut received = Vec::new();
        for step in 0..50 {
            let now = Instant::from_millis(step);
            let mut out = Vec::new();
            client.poll(now, &mut out);
            for mut seg in out.drain(..) {
                finish_outgoing(&mut seg.segment, ca, sa);
                assert!(verify_transport_checksum(
                    TransportProtocol::Stream,
                    ca,
                    sa,
                    &seg.segment
                ));
                server.deliver(sh, &seg.segment);
            }
            server.poll(now, &mut out);
            for mut seg in out.drain(..) {
                finish_outgoing(&mut seg.segment, sa, ca);
                client.deliver(ch, &seg.segment);
            }
            if !sent && client.state(ch) == tcp::State::Established {
                assert_eq!(client.send(ch, b"hello over the SAL").unwrap(), 18);
                client.shutdown(ch);
                sent = true;
            }
            let mut buf = [0u8; 64];
            while let Some(n) = server.recv(sh, &mut buf) {
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(received, b"hello over the SAL");
        assert_eq!(server.recv(sh, &mut [0u8; 4]), Some(0), "EOF after FIN");
        assert!(client.fin_acked(ch));
    }
}
