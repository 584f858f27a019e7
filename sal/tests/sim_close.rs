//! The close of a stream flow in few packets: the client's SAL FIN rides
//! on its TCP ACK of the server's FIN, and the server's SAL FIN carries the
//! acknowledgement of the client's (`FIN|ACK`). Each of those packets may
//! be lost; the flow must still end cleanly on both sides: the server reads
//! every byte and then end of stream (no reset), and both hosts forget the
//! flow within a few control timeouts, without resetting or giving up on
//! the peer.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::HostConfig;
use sal::table::ListenerId;
use sal::wire::TransportProtocol::Stream;
use sal::wire::{ControlFlags, SalPacket, SalRepr};
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::time::Duration;

mod common;
use common::sim::{default_route, establish, pattern, prefix, svc};

/// Which packet of the close the network drops (its first copy only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    Nothing,
    /// The client's SAL FIN with its ACK of the server's TCP FIN.
    ClientFinOnAck,
    /// The server's `FIN|ACK`.
    ServerFinAck,
    /// The client's last ACK.
    LastAck,
}

impl Lost {
    /// Whether `packet` (from the client if `from_client`) is the one.
    fn matches(self, from_client: bool, control: Option<ControlFlags>, segment: usize) -> bool {
        let (fin, ack) = (ControlFlags::FIN, ControlFlags::ACK);
        match self {
            Lost::Nothing => false,
            Lost::ClientFinOnAck => from_client && control == Some(fin) && segment > 0,
            Lost::ServerFinAck => !from_client && control == Some(fin | ack),
            Lost::LastAck => from_client && control == Some(ack) && segment == 0,
        }
    }
}

/// A client and a server listening on `beef/16`, configured as `config`.
fn served(seed: u64, config: HostConfig) -> (Network, HostId, HostId, ListenerId) {
    let mut net = Network::new(seed, LinkConditions::default());
    let client = net.add_host("client", config.clone(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", config, &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen(prefix("beef/16"), Stream, 16)
        .unwrap();
    net.settle();
    (net, client, server, listener)
}

/// Runs a request and its answer, closes the client and then the server,
/// dropping `lost` once; returns how many packets crossed. The hosts hold
/// their handshake ACKs for the first write, as the in-process engine's do.
fn close_losing(lost: Lost) -> usize {
    let mut config = HostConfig::default();
    config.stream.hold_handshake_ack = true;
    let (mut net, client, server, listener) = served(23, config);
    let (cflow, sflow) = establish(&mut net, client, server, listener, svc("beef01"));
    let (packets, dropped) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
    let (count, once) = (Rc::clone(&packets), Rc::clone(&dropped));
    net.set_filter(Some(Box::new(move |packet| {
        count.set(count.get() + 1);
        let bytes = &packet.payload[..];
        let Some((repr, header)) = SalPacket::new_checked(bytes)
            .ok()
            .and_then(|p| SalRepr::parse(&p).ok().map(|r| (r, p.header_len())))
        else {
            return false;
        };
        let from_client = packet.src.ip() == Ipv4Addr::new(10, 0, 0, 1);
        let control = repr.control.map(|c| c.flags);
        let drop = !once.get() && lost.matches(from_client, control, bytes.len() - header);
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
    let released = net.run_until(Duration::from_secs(10), |net| {
        net.host(client).flow(cflow).is_none() && net.host(server).flow(sflow).is_none()
    });
    assert!(released, "both ends let the flow go (lost: {lost:?})");
    assert_eq!(dropped.get(), lost != Lost::Nothing, "{lost:?} was seen");
    for host in [client, server] {
        let stats = net.host(host).stats();
        assert_eq!(stats.peer_timeouts, 0, "{lost:?}: nobody gave up");
        assert_eq!(stats.orphans_reset, 0, "{lost:?}: nobody was reset");
    }
    packets.get()
}

#[test]
fn a_close_with_nothing_lost_takes_five_packets() {
    // TCP FIN, TCP FIN-ACK, SAL FIN on the ACK, FIN|ACK, ACK.
    assert_eq!(close_losing(Lost::Nothing), 5 + 2);
}

#[test]
fn a_lost_fin_riding_on_an_ack_is_resent() {
    let packets = close_losing(Lost::ClientFinOnAck);
    assert!(packets > 7, "something was sent again: {packets}");
}

#[test]
fn a_lost_fin_ack_is_resent() {
    let packets = close_losing(Lost::ServerFinAck);
    assert!(packets > 7, "something was sent again: {packets}");
}

#[test]
fn a_lost_last_ack_is_answered_again() {
    let packets = close_losing(Lost::LastAck);
    assert!(packets > 7, "something was sent again: {packets}");
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
