//! Handshakes and stream transfers on the simulator, shared by the
//! simulation tests.

use std::net::Ipv4Addr;

use sal::proto::{Event, HostConfig, HostError};
use sal::table::{ListenerId, Target};
use sal::wire::{SalRepr, TransportProtocol};
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

/// A service ID from hex digits (test input is valid).
pub fn svc(s: &str) -> ServiceId {
    s.parse().expect("test service IDs are valid")
}

/// A service prefix from `HEX[/LEN]` (test input is valid).
pub fn prefix(s: &str) -> ServicePrefix {
    s.parse().expect("test prefixes are valid")
}

/// A locator from its text form (test input is valid).
pub fn loc(s: &str) -> Locator {
    s.parse().expect("test locators are valid")
}

/// A TCP segment (ports 0, no options) from `src` to `dst`, checksummed
/// for them: what a forger puts in a SAL packet.
pub fn tcp_segment(
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
    (src, dst): (Ipv4Addr, Ipv4Addr),
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: 0,
        dst_port: 0,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|ack| TcpSeqNumber(ack as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    let mut segment = vec![0; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut segment[..]),
        &IpAddress::Ipv4(src),
        &IpAddress::Ipv4(dst),
        &ChecksumCapabilities::default(),
    );
    segment
}

/// A SAL stream packet of flow `ours` to the peer's `theirs`, with no
/// CONTROL, carrying `segment`.
pub fn sal_data(ours: FlowId, theirs: FlowId, segment: &[u8]) -> Vec<u8> {
    let repr = SalRepr::data(ours, Some(theirs), 6);
    let mut packet = vec![0; repr.header_len()];
    repr.emit(&mut packet)
        .expect("the buffer has the header's length");
    packet.extend_from_slice(segment);
    packet
}

/// Sends every service `host` does not serve itself toward locator `to`.
pub fn default_route(net: &mut Network, host: HostId, to: &str) {
    net.host(host).add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: to.parse().expect("test locators are valid"),
            weight: 1,
        },
        0,
    );
}

/// A client (10.0.0.1) and a server (10.0.0.2, configured with
/// `server_config`) on one subnet, the client's default route toward the
/// server, and a stream listener on the server for `ab/8`: the setting of
/// most two-host tests.
pub struct ClientServer {
    pub net: Network,
    pub client: HostId,
    pub server: HostId,
    pub listener: ListenerId,
}

/// Builds a [`ClientServer`] on a network with `seed` and `conditions`.
pub fn client_server(
    seed: u64,
    conditions: LinkConditions,
    server_config: HostConfig,
) -> ClientServer {
    client_server_on(Network::new(seed, conditions), server_config)
}

/// Builds a [`ClientServer`] on `net` (a network with paths of its own).
pub fn client_server_on(mut net: Network, server_config: HostConfig) -> ClientServer {
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", server_config, &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen(prefix("ab/8"), TransportProtocol::Stream, 8)
        .expect("a fresh host listens");
    ClientServer {
        net,
        client,
        server,
        listener,
    }
}

/// A single-homed host `a` (10.0.0.1, routed to `b`'s first address)
/// and a multi-homed `b` (10.0.0.2 on eth0, 10.2.0.2 on eth1) listening
/// for streams on `ab/8`: the layout of the migration tests where the
/// peer has a second locator. Returns (a, b, b's listener).
pub fn multi_homed_pair(net: &mut Network) -> (HostId, HostId, ListenerId) {
    let a = net.add_host("a", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let b = net.add_host(
        "b",
        HostConfig::default(),
        &[("eth0", "10.0.0.2/24"), ("eth1", "10.2.0.2/24")],
    );
    default_route(net, a, "10.0.0.2");
    let listener = net
        .host(b)
        .listen(prefix("ab/8"), TransportProtocol::Stream, 8)
        .expect("a fresh host listens");
    (a, b, listener)
}

/// Connects a stream flow from `client` to `service` and accepts it on
/// `server`'s `listener`; returns (client flow, server flow). Panics if the
/// handshake does not complete within 30 s (virtual time).
pub fn establish(
    net: &mut Network,
    client: HostId,
    server: HostId,
    listener: ListenerId,
    service: ServiceId,
) -> (FlowId, FlowId) {
    let cflow = net
        .host(client)
        .connect(service, TransportProtocol::Stream)
        .unwrap();
    let mut sflow = None;
    let ok = net.run_until(Duration::from_secs(30), |net| {
        if sflow.is_none() {
            sflow = net.host(server).accept(listener).ok();
        }
        sflow.is_some()
            && net
                .sim_host(client)
                .events
                .contains(&Event::Connected(cflow))
    });
    assert!(ok, "handshake did not complete");
    (cflow, sflow.unwrap())
}

/// Pushes `data` from one flow to another, half-closes, and returns what the
/// receiver read up to end of stream. `during` runs after every step with
/// the bytes received so far (it may migrate flows, take links down ...).
/// Panics if the transfer does not finish within `timeout` (virtual time).
pub fn stream(
    net: &mut Network,
    from: (HostId, FlowId),
    to: (HostId, FlowId),
    data: &[u8],
    timeout: Duration,
    mut during: impl FnMut(&mut Network, usize),
) -> Vec<u8> {
    let mut sent = 0;
    let mut shut = false;
    let mut received = Vec::with_capacity(data.len());
    let mut buf = vec![0u8; 65536];
    let done = net.run_until(timeout, |net| {
        during(net, received.len());
        while sent < data.len() {
            let end = (sent + 65536).min(data.len());
            match net.host(from.0).send(from.1, &data[sent..end]) {
                Ok(n) => sent += n,
                Err(HostError::WouldBlock) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
        if sent == data.len() && !shut {
            net.host(from.0).shutdown(from.1).unwrap();
            shut = true;
        }
        loop {
            match net.host(to.0).recv(to.1, &mut buf) {
                Ok(0) => return true,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(HostError::WouldBlock) => return false,
                Err(e) => panic!("recv failed: {e}"),
            }
        }
    });
    assert!(
        done,
        "transfer stalled at {} of {} bytes",
        received.len(),
        data.len()
    );
    received
}

/// `len` pseudo-random bytes from `seed` (xorshift64).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One end's application in a simulated exchange: what it has sent and
/// received.
#[derive(Default)]
pub struct Side {
    pub sent: usize,
    pub received: Vec<u8>,
}

impl Side {
    /// Sends what of `data` the flow takes now.
    pub fn send(&mut self, net: &mut Network, host: HostId, flow: FlowId, data: &[u8]) {
        while self.sent < data.len() {
            match net.host(host).send(flow, &data[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(HostError::WouldBlock) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }

    /// Receives everything the flow has now.
    pub fn recv(&mut self, net: &mut Network, host: HostId, flow: FlowId) {
        let mut buf = [0u8; 16384];
        loop {
            match net.host(host).recv(flow, &mut buf) {
                Ok(0) | Err(HostError::WouldBlock) => return,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) => panic!("recv failed: {e}"),
            }
        }
    }
}

/// One short exchange on a fresh flow: the client connects to `ab01`
/// and sends `request` once connected; the server takes the flow, reads
/// the request whole and answers with `answer`, then half-closes if
/// `fin_after_answer`. Returns the time from the connect to the answer's
/// last byte at the client; panics, naming `label`, if that takes longer
/// than `limit` (virtual time) or a byte differs.
pub fn request_answer(
    cs: &mut ClientServer,
    request: &[u8],
    answer: &[u8],
    fin_after_answer: bool,
    limit: Duration,
    label: &str,
) -> Duration {
    let ClientServer {
        net,
        client,
        server,
        listener,
    } = cs;
    let (client, server, listener) = (*client, *server, *listener);
    let start = net.now();
    let cflow = net
        .host(client)
        .connect(svc("ab01"), TransportProtocol::Stream)
        .unwrap();
    let (mut client_side, mut server_side) = (Side::default(), Side::default());
    let mut sflow: Option<FlowId> = None;
    let mut shut = false;
    let done = net.run_until(limit, |net| {
        if net
            .sim_host(client)
            .events
            .contains(&Event::Connected(cflow))
        {
            client_side.send(net, client, cflow, request);
        }
        if sflow.is_none() {
            sflow = net.host(server).accept(listener).ok();
        }
        if let Some(s) = sflow {
            if server_side.received.len() < request.len() {
                server_side.recv(net, server, s);
            }
            if server_side.received.len() == request.len() {
                server_side.send(net, server, s, answer);
                if fin_after_answer && server_side.sent == answer.len() && !shut {
                    net.host(server).shutdown(s).expect("the server's FIN");
                    shut = true;
                }
            }
        }
        client_side.recv(net, client, cflow);
        client_side.received.len() == answer.len()
    });
    assert!(
        done,
        "{label}: the answer stalled at {} bytes",
        client_side.received.len()
    );
    assert!(
        server_side.received == request,
        "{label}: the request differs"
    );
    assert!(
        client_side.received == answer,
        "{label}: the answer differs"
    );
    net.now() - start
}
