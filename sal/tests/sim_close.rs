//! The close of a stream flow in few packets: each SAL message rides on a
//! TCP segment (the client's SAL FIN on its TCP FIN, the server's `FIN|ACK`
//! on its TCP FIN-ACK, the client's SAL ACK on its TCP ACK). Each of those
//! packets may be lost; the flow must still end cleanly on both sides: the
//! server reads every byte and then end of stream (no reset), and both
//! hosts forget the flow within a few control timeouts, without resetting
//! or giving up on the peer. A SAL FIN never travels alone while its TCP
//! FIN is unacknowledged: the peer's acknowledgement of it must mean that
//! its TCP has everything.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::id::FlowId;
use sal::proto::HostConfig;
use sal::table::ListenerId;
use sal::wire::TransportProtocol::Stream;
use sal::wire::{ControlFlags, SalPacket, SalRepr};
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::time::Duration;

mod common;
use common::sim::{default_route, establish, pattern, prefix, svc};

/// TCP header flags, as in byte 13 of a segment.
const TCP_FIN: u8 = 0x01;
const TCP_ACK: u8 = 0x10;

/// A packet as the tests' filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    from_client: bool,
    /// The SAL CONTROL flags, if any.
    control: Option<ControlFlags>,
    /// The TCP segment's flags, if the packet carries one.
    tcp: Option<u8>,
    /// Bytes of TCP payload.
    data: usize,
    /// The window the TCP segment offers (unscaled).
    window: Option<u16>,
    /// The TCP segment's sequence and acknowledgement numbers.
    seq: u32,
    ack: u32,
}

impl Seen {
    fn of(packet: &sal_sim::Packet) -> Option<Seen> {
        let bytes = &packet.payload[..];
        let sal = SalPacket::new_checked(bytes).ok()?;
        let repr = SalRepr::parse(&sal).ok()?;
        let segment = &bytes[sal.header_len()..];
        let tcp_header = segment.get(12).map(|offset| usize::from(offset >> 4) * 4);
        Some(Seen {
            from_client: packet.src.ip() == Ipv4Addr::new(10, 0, 0, 1),
            control: repr.control.map(|c| c.flags),
            tcp: segment.get(13).copied(),
            data: tcp_header.map_or(0, |h| segment.len().saturating_sub(h)),
            window: segment
                .get(14..16)
                .map(|w| u16::from_be_bytes([w[0], w[1]])),
            seq: segment
                .get(4..8)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            ack: segment
                .get(8..12)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        })
    }

    /// A SAL message `flags` on a bare TCP segment with flags `tcp`.
    fn is(&self, from_client: bool, flags: ControlFlags, tcp: u8) -> bool {
        self.from_client == from_client
            && self.control == Some(flags)
            && self.tcp == Some(tcp)
            && self.data == 0
    }
}

/// Which packet of the close the network drops (its first copy only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    Nothing,
    /// The client's SAL FIN on its TCP FIN.
    ClientFin,
    /// The server's `FIN|ACK` on its TCP FIN-ACK.
    ServerFinAck,
    /// The client's SAL ACK on its TCP ACK.
    LastAck,
}

impl Lost {
    fn matches(self, seen: &Seen) -> bool {
        let (fin, ack) = (ControlFlags::FIN, ControlFlags::ACK);
        match self {
            Lost::Nothing => false,
            Lost::ClientFin => seen.is(true, fin, TCP_FIN | TCP_ACK),
            Lost::ServerFinAck => seen.is(false, fin | ack, TCP_FIN | TCP_ACK),
            Lost::LastAck => seen.is(true, ack, TCP_ACK),
        }
    }
}

/// A client and a server listening on `beef/16`, configured as `config`.
fn served(seed: u64, config: HostConfig) -> (Network, HostId, HostId, ListenerId) {
    served_with(seed, config, &[("eth0", "10.0.0.1/24")])
}

/// [`served`], with the client's interfaces (10.0.0.1 first).
fn served_with(
    seed: u64,
    config: HostConfig,
    client_interfaces: &[(&str, &str)],
) -> (Network, HostId, HostId, ListenerId) {
    let mut net = Network::new(seed, LinkConditions::default());
    let client = net.add_host("client", config.clone(), client_interfaces);
    let server = net.add_host("server", config, &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen(prefix("beef/16"), Stream, 16)
        .unwrap();
    net.settle();
    (net, client, server, listener)
}

/// Logs every packet that crosses `net` from now on.
fn log_packets(net: &mut Network) -> Rc<RefCell<Vec<Seen>>> {
    let log = Rc::new(RefCell::new(Vec::new()));
    let seen = Rc::clone(&log);
    net.set_filter(Some(Box::new(move |packet| {
        seen.borrow_mut().extend(Seen::of(packet));
        false
    })));
    log
}

/// What `host` reads on `flow` until end of stream (within 5 s).
fn read_to_end(net: &mut Network, host: HostId, flow: FlowId) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = net.run_until(Duration::from_secs(5), |net| {
        match net.host(host).recv(flow, &mut buf) {
            Ok(0) => true,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                false
            }
            Err(_) => false,
        }
    });
    assert!(ended, "end of stream");
    got
}

/// Whether both ends let their flow go within 10 s.
fn both_released(
    net: &mut Network,
    (client, cflow): (HostId, FlowId),
    (server, sflow): (HostId, FlowId),
) -> bool {
    net.run_until(Duration::from_secs(10), |net| {
        net.host(client).flow(cflow).is_none() && net.host(server).flow(sflow).is_none()
    })
}

/// Runs a request and its answer, closes the client and then the server,
/// dropping `lost` once; returns the packets that crossed (the dropped one
/// too). The hosts hold their handshake ACKs for the first write, as the
/// in-process engine's do.
fn close_losing(lost: Lost) -> Vec<Seen> {
    close_losing_with(lost, HostConfig::default())
}

/// [`close_losing`] between hosts configured as `config`.
fn close_losing_with(lost: Lost, mut config: HostConfig) -> Vec<Seen> {
    config.stream.hold_handshake_ack = true;
    let (mut net, client, server, listener) = served(23, config);
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("beef01"));
    let (packets, dropped) = (Rc::new(RefCell::new(Vec::new())), Rc::new(Cell::new(false)));
    let (log, once) = (Rc::clone(&packets), Rc::clone(&dropped));
    net.set_filter(Some(Box::new(move |packet| {
        let Some(seen) = Seen::of(packet) else {
            return false;
        };
        log.borrow_mut().push(seen);
        let drop = !once.get() && lost.matches(&seen);
        once.set(once.get() || drop);
        drop
    })));
    let request = pattern(64, 3);
    let mut buf = [0u8; 256];
    net.host(client).send(cflow, &request).unwrap();
    assert!(net.run_until(Duration::from_secs(1), |net| {
        net.host(server).recv(sflow, &mut buf) == Ok(64)
    }));
    assert_eq!(&buf[..64], &request[..]);
    net.host(server).send(sflow, &buf[..64]).unwrap();
    assert!(net.run_until(Duration::from_secs(1), |net| {
        net.host(client).recv(cflow, &mut buf) == Ok(64)
    }));
    net.host(client).close(cflow).unwrap();
    assert!(
        net.run_until(Duration::from_secs(1), |net| {
            net.host(server).recv(sflow, &mut buf) == Ok(0)
        }),
        "the server reads end of stream"
    );
    net.host(server).close(sflow).unwrap();
    // Control messages are resent after `control_rto` (250 ms), the
    // server's TCP FIN after its RTO: the close is over well within 10 s.
    let released = both_released(&mut net, (client, cflow), (server, sflow));
    assert!(released, "both ends let the flow go (lost: {lost:?})");
    assert_eq!(dropped.get(), lost != Lost::Nothing, "{lost:?} was seen");
    for host in [client, server] {
        let stats = net.host(host).stats();
        assert_eq!(stats.peer_timeouts, 0, "{lost:?}: nobody gave up");
        assert_eq!(stats.orphans_reset, 0, "{lost:?}: nobody was reset");
    }
    let seen = packets.borrow().clone();
    seen
}

/// No SAL FIN of `seen` travels without a TCP FIN before the sender's TCP
/// FIN was acknowledged (by a segment of the other side whose ACK number
/// is past that FIN's sequence number).
fn no_fin_alone_before_its_tcp_fin_is_acknowledged(seen: &[Seen]) {
    for from_client in [true, false] {
        let mut tcp_fin: Option<u32> = None;
        let mut tcp_fin_acked = false;
        for packet in seen {
            let tcp = packet.tcp.unwrap_or(0);
            if packet.from_client == from_client {
                if tcp & TCP_FIN != 0 {
                    // The FIN's own sequence number, past the data.
                    tcp_fin = Some(packet.seq.wrapping_add(packet.data as u32));
                }
                let sal_fin = packet
                    .control
                    .is_some_and(|c| c.contains(ControlFlags::FIN));
                assert!(
                    !sal_fin || tcp & TCP_FIN != 0 || tcp_fin_acked,
                    "a SAL FIN alone before its TCP FIN was acknowledged: {seen:#?}"
                );
            } else if let Some(fin) = tcp_fin.filter(|_| tcp & TCP_ACK != 0) {
                tcp_fin_acked |= packet.ack.wrapping_sub(fin) as i32 > 0;
            }
        }
    }
}

#[test]
fn a_close_with_nothing_lost_takes_three_packets() {
    let seen = close_losing(Lost::Nothing);
    let (fin, ack) = (ControlFlags::FIN, ControlFlags::ACK);
    let close = &seen[2..];
    assert_eq!(close.len(), 3, "{seen:#?}");
    assert!(close[0].is(true, fin, TCP_FIN | TCP_ACK), "{seen:#?}");
    assert!(
        close[1].is(false, fin | ack, TCP_FIN | TCP_ACK),
        "{seen:#?}"
    );
    assert!(close[2].is(true, ack, TCP_ACK), "{seen:#?}");
}

/// Each packet of the close lost once: the client's SAL FIN on its TCP
/// FIN, the server's `FIN|ACK` on its TCP FIN-ACK (both resent with their
/// TCP FIN), the last ACK (answered again by the lingering client).
#[test]
fn each_packet_of_the_close_lost_is_sent_again() {
    for lost in [Lost::ClientFin, Lost::ServerFinAck, Lost::LastAck] {
        let seen = close_losing(lost);
        assert!(
            seen.len() > 5,
            "{lost:?}: something was sent again: {seen:#?}"
        );
        no_fin_alone_before_its_tcp_fin_is_acknowledged(&seen);
    }
}

/// With the SAL's retransmission timer shorter than TCP's, the SAL FIN
/// is resent first: it still goes with the TCP FIN (the socket resends
/// it), never alone.
#[test]
fn a_fin_resent_on_the_sal_timer_goes_with_its_tcp_fin() {
    for lost in [Lost::ClientFin, Lost::ServerFinAck] {
        let config = HostConfig {
            control_rto: Duration::from_millis(5),
            ..HostConfig::default()
        };
        let seen = close_losing_with(lost, config);
        no_fin_alone_before_its_tcp_fin_is_acknowledged(&seen);
    }
}

/// A flow that closed leaves its buffers' storage to the next flows: the
/// next client socket holds its first allocations from the start (the
/// host's `buffer_bytes` counts them), where a socket with nothing to reuse
/// holds none until its first byte.
#[test]
fn the_next_connection_reuses_the_buffers_of_one_closed() {
    let config = HostConfig::default();
    let first_allocation = config.stream.min_buffer as u64;
    let (mut net, client, server, listener) = served(29, config);
    let cflow = net.host(client).connect(svc("beef01"), Stream).unwrap();
    net.settle();
    assert_eq!(
        net.host(client).stats().buffer_bytes,
        0,
        "nothing to reuse yet"
    );
    let mut sflow = None;
    assert!(net.run_until(Duration::from_secs(1), |net| {
        sflow = sflow.or_else(|| net.host(server).accept(listener).ok());
        sflow.is_some()
    }));
    let sflow = sflow.unwrap();
    let mut buf = [0u8; 64];
    // A request and its answer: each socket holds a send and a receive
    // buffer.
    net.host(client).send(cflow, &[1; 64]).unwrap();
    assert!(net.run_until(Duration::from_secs(1), |net| {
        net.host(server).recv(sflow, &mut buf) == Ok(64)
    }));
    net.host(server).send(sflow, &buf).unwrap();
    assert!(net.run_until(Duration::from_secs(1), |net| {
        net.host(client).recv(cflow, &mut buf) == Ok(64)
    }));
    net.host(client).close(cflow).unwrap();
    assert!(net.run_until(Duration::from_secs(1), |net| {
        net.host(server).recv(sflow, &mut buf) == Ok(0)
    }));
    net.host(server).close(sflow).unwrap();
    assert!(net.run_until(Duration::from_secs(10), |net| {
        net.host(client).flows().is_empty() && net.host(server).flows().is_empty()
    }));
    assert_eq!(net.host(client).stats().buffer_bytes, 0, "all given back");
    let next = net.host(client).connect(svc("beef01"), Stream).unwrap();
    net.settle();
    assert_eq!(
        net.host(client).stats().buffer_bytes,
        2 * first_allocation,
        "the closed flow's send and receive storage, reused"
    );
    net.host(client).close(next).unwrap();
}

/// A listener that stops listening resets the flows it had not accepted,
/// half-open ones too: a client whose SYN-ACK arrived counts its flow
/// open while its ACK is still on the way, and that ACK would find no
/// flow to answer it; without a reset the client would wait on a flow
/// nobody holds.
#[test]
fn a_listener_that_stops_resets_a_client_whose_ack_is_still_on_the_way() {
    let (mut net, client, server, listener) = served(31, HostConfig::default());
    // The client's handshake ACK is lost: the server's flow stays half-open.
    let dropped = Rc::new(Cell::new(false));
    let once = Rc::clone(&dropped);
    net.set_filter(Some(Box::new(move |packet| {
        let from_client = packet.src.ip() == Ipv4Addr::new(10, 0, 0, 1);
        let ack = SalPacket::new_checked(&packet.payload[..])
            .ok()
            .and_then(|p| SalRepr::parse(&p).ok())
            .and_then(|r| r.control)
            .is_some_and(|c| c.flags == ControlFlags::ACK);
        let drop = from_client && ack && !once.get();
        once.set(once.get() || drop);
        drop
    })));
    let cflow = net.host(client).connect(svc("beef01"), Stream).unwrap();
    assert!(net.run_until(Duration::from_secs(1), |net| {
        net.sim_host(client)
            .events
            .contains(&sal::proto::Event::Connected(cflow))
    }));
    assert!(dropped.get(), "the handshake ACK was dropped");
    assert_eq!(net.host(server).half_open_count(), 1);
    net.host(server).stop_listening(listener).unwrap();
    let mut buf = [0u8; 8];
    let reset = net.run_until(Duration::from_secs(1), |net| {
        net.host(client).recv(cflow, &mut buf) == Err(sal::proto::HostError::Reset)
    });
    assert!(reset, "the client hears that its flow is gone");
    assert!(net.host(server).flows().is_empty());
}

/// A server that writes its answer and closes at once sends its TCP FIN
/// before the answer is acknowledged: its SAL FIN cannot ride on that FIN
/// (the client's TCP might not take it in order) and goes once the TCP FIN
/// is acknowledged, on the next segment or alone. The client reads the
/// whole answer and then end of stream.
#[test]
fn a_fin_behind_unacknowledged_data_waits_for_its_acknowledgement() {
    let (mut net, client, server, listener) = served(37, HostConfig::default());
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("beef01"));
    let log = log_packets(&mut net);
    let answer = pattern(3000, 5);
    net.host(server).send(sflow, &answer).unwrap();
    net.host(server).close(sflow).unwrap();
    let got = read_to_end(&mut net, client, cflow);
    assert_eq!(got, answer, "every byte, then end of stream");
    net.host(client).close(cflow).unwrap();
    assert!(both_released(&mut net, (client, cflow), (server, sflow)));
    let seen = log.borrow().clone();
    let server_fin = seen
        .iter()
        .find(|p| !p.from_client && p.control.is_some_and(|c| c.contains(ControlFlags::FIN)))
        .expect("the server's SAL FIN");
    assert_eq!(
        server_fin.tcp.unwrap_or(0) & TCP_FIN,
        0,
        "not on the TCP FIN: {seen:#?}"
    );
    no_fin_alone_before_its_tcp_fin_is_acknowledged(&seen);
}

/// A receiver whose window is shut (its application does not read) cannot
/// take a TCP FIN: the SAL FIN does not ride on one then, and the receiver
/// reads every byte and end of stream once it reads again.
#[test]
fn a_fin_into_a_shut_window_does_not_ride() {
    let mut config = HostConfig::default();
    config.stream.max_recv_buffer = 4096;
    let (mut net, client, server, listener) = served(41, config);
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("beef01"));
    let log = log_packets(&mut net);
    let request = pattern(4096, 7);
    assert_eq!(net.host(client).send(cflow, &request), Ok(4096));
    // Everything is acknowledged, and the window is shut.
    net.run_for(Duration::from_millis(200));
    net.host(client).close(cflow).unwrap();
    net.run_for(Duration::from_millis(200));
    let got = read_to_end(&mut net, server, sflow);
    assert_eq!(got, request, "every byte, then end of stream");
    net.host(server).close(sflow).unwrap();
    assert!(both_released(&mut net, (client, cflow), (server, sflow)));
    let seen = log.borrow().clone();
    // The window the server last offered, at each client packet.
    let mut window = None;
    for packet in &seen {
        if !packet.from_client {
            window = packet.window.or(window);
            continue;
        }
        let rides = packet.tcp.is_some_and(|t| t & TCP_FIN != 0)
            && packet
                .control
                .is_some_and(|c| c.contains(ControlFlags::FIN));
        assert!(!rides || window != Some(0), "{seen:#?}");
    }
    no_fin_alone_before_its_tcp_fin_is_acknowledged(&seen);
}

/// A move while our FIN rides on a lost TCP FIN: the move resends what
/// the flow has in flight (`retransmit_now`), and the FIN goes again with
/// its TCP FIN once the move is confirmed, not alone before.
#[test]
fn a_move_resends_a_riding_fin_with_its_tcp_fin() {
    let interfaces = [("eth0", "10.0.0.1/24"), ("cell", "10.1.0.1/24")];
    let (mut net, client, server, listener) = served_with(43, HostConfig::default(), &interfaces);
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("beef01"));
    let log = Rc::new(RefCell::new(Vec::new()));
    let (seen, dropped) = (Rc::clone(&log), Rc::new(Cell::new(false)));
    let once = Rc::clone(&dropped);
    net.set_filter(Some(Box::new(move |packet| {
        let Some(packet) = Seen::of(packet) else {
            return false;
        };
        seen.borrow_mut().push(packet);
        let drop = !once.get() && Lost::ClientFin.matches(&packet);
        once.set(once.get() || drop);
        drop
    })));
    net.host(client).close(cflow).unwrap();
    net.run_for(Duration::from_millis(1));
    assert!(dropped.get(), "the riding FIN was lost");
    net.host(client).migrate(cflow, "cell").unwrap();
    let mut buf = [0u8; 8];
    // Resent with the move, not at a retransmission timer (TCP's, or the
    // SAL's 500 ms).
    let eof = net.run_until(Duration::from_millis(50), |net| {
        net.host(server).recv(sflow, &mut buf) == Ok(0)
    });
    assert!(eof, "the server reads end of stream at once");
    net.host(server).close(sflow).unwrap();
    assert!(both_released(&mut net, (client, cflow), (server, sflow)));
    let seen = log.borrow().clone();
    no_fin_alone_before_its_tcp_fin_is_acknowledged(&seen);
    for host in [client, server] {
        assert_eq!(net.host(host).stats().peer_timeouts, 0);
    }
}

/// A FIN riding on a segment that fails its checksum (corrupted on the
/// way, where no UDP checksum guards the packet) is not taken: its
/// acknowledgement would tell the sender that our transport has its TCP
/// FIN, which it refused. The FIN is taken when it comes again, whole.
#[test]
fn a_fin_on_a_corrupted_segment_is_not_acknowledged() {
    let (mut net, client, server, listener) = served(47, HostConfig::default());
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("beef01"));
    let captured = Rc::new(RefCell::new(None));
    let log = Rc::new(RefCell::new(Vec::new()));
    let (keep, seen) = (Rc::clone(&captured), Rc::clone(&log));
    net.set_filter(Some(Box::new(move |packet| {
        let Some(parsed) = Seen::of(packet) else {
            return false;
        };
        seen.borrow_mut().push(parsed);
        let first = keep.borrow().is_none() && Lost::ClientFin.matches(&parsed);
        if first {
            *keep.borrow_mut() = Some(packet.clone());
        }
        first
    })));
    net.host(client).close(cflow).unwrap();
    net.run_for(Duration::from_millis(1));
    let mut corrupted = captured.borrow().clone().expect("the client's riding FIN");
    // A bit of the segment's window field flips: its checksum fails.
    let header = SalPacket::new_checked(&corrupted.payload[..])
        .unwrap()
        .header_len();
    corrupted.payload[header + 15] ^= 0x01;
    let bad_before = net.host(server).stats().bad_checksum;
    log.borrow_mut().clear();
    net.inject(corrupted);
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.host(server).stats().bad_checksum, bad_before + 1);
    assert!(
        !log.borrow()
            .iter()
            .any(|p| !p.from_client && p.control.is_some()),
        "no acknowledgement of the FIN: {:#?}",
        log.borrow()
    );
    // The FIN comes again with its TCP FIN, and the close ends cleanly.
    let mut buf = [0u8; 8];
    assert!(net.run_until(Duration::from_secs(5), |net| {
        net.host(server).recv(sflow, &mut buf) == Ok(0)
    }));
    net.host(server).close(sflow).unwrap();
    assert!(both_released(&mut net, (client, cflow), (server, sflow)));
    no_fin_alone_before_its_tcp_fin_is_acknowledged(&log.borrow());
}
