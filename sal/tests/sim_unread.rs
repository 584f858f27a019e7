//! Bytes a peer sent stay readable however long the application takes to
//! read them, also once both ends have sent their FIN and the connection's
//! timers have run out. (smoltcp's socket dropped its receive buffer when
//! TIME-WAIT ended: 100,000 unread bytes became an immediate end of stream.)
//!
//! A flow that ends without a goodbye (a reset, or a peer given up on)
//! keeps them too, and then reads as reset, never as an end of stream: as
//! with Linux TCP, whose reads return the queued bytes and then
//! `ECONNRESET`. The flow used to drop its socket at once, received bytes
//! and all, and a transport reset read as a clean end of stream, so an
//! application could not tell a cut transfer from a whole one.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::{HostConfig, HostError, TransmitKind};
use sal::wire::{SalPacket, SalRepr};
use sal::{FlowId, Locator};
use sal_sim::{HostId, LinkConditions, Network, Packet};
use smoltcp::time::Duration;
use smoltcp::wire::{TcpControl, TcpPacket};

mod common;
use common::sim::{client_server, establish, pattern, sal_data, tcp_segment, ClientServer};

/// Reads flow `id` on `host` until it reports anything but bytes: what it
/// read, and how it ended (`Ok(0)`: end of stream).
fn read_to_end(net: &mut Network, host: HostId, id: FlowId) -> (Vec<u8>, Result<usize, HostError>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match net.host(host).recv(id, &mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            end => return (got, end),
        }
    }
}

/// A client and a server on a plain network, one flow established
/// between them: the network, the hosts and both ends of the flow.
fn established(seed: u64) -> (Network, HostId, HostId, FlowId, FlowId) {
    let ClientServer {
        mut net,
        client,
        server,
        listener,
    } = client_server(seed, LinkConditions::default(), HostConfig::default());
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    (net, client, server, cflow, sflow)
}

/// A client that sent `data` to the server, whose application has not
/// read it yet: the network, the hosts and both ends of the flow.
fn sent_unread(seed: u64, data: &[u8]) -> (Network, HostId, HostId, FlowId, FlowId) {
    let (mut net, client, server, cflow, sflow) = established(seed);
    assert_eq!(net.host(client).send(cflow, data), Ok(data.len()));
    net.run_for(Duration::from_millis(200));
    (net, client, server, cflow, sflow)
}

#[test]
fn bytes_that_arrived_before_a_reset_are_read_before_it() {
    let data = pattern(4000, 1);
    let (mut net, client, server, cflow, sflow) = sent_unread(21, &data);
    net.host(client).abort(cflow).unwrap();
    net.run_for(Duration::from_millis(200));
    let (got, end) = read_to_end(&mut net, server, sflow);
    assert!(got == data, "read {} of {} bytes", got.len(), data.len());
    assert_eq!(end, Err(HostError::Reset));
    assert_eq!(
        net.host(server).recv(sflow, &mut [0; 8]),
        Err(HostError::Reset)
    );
    net.host(server).close(sflow).unwrap();
    net.run_for(Duration::from_millis(10));
    assert_eq!(net.host(server).flow_count(), 0);
    assert_eq!(
        net.host(server).stats().buffer_bytes,
        0,
        "no memory left held"
    );
}

#[test]
fn bytes_that_arrived_before_the_peer_was_given_up_on_are_read_before_the_error() {
    let data = pattern(4000, 2);
    let (mut net, _client, server, _cflow, sflow) = sent_unread(22, &data);
    net.link_down(Ipv4Addr::new(10, 0, 0, 1));
    net.host(server).send(sflow, b"request").unwrap();
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.host(server).stats().peer_timeouts, 1);
    let (got, end) = read_to_end(&mut net, server, sflow);
    assert!(got == data, "read {} of {} bytes", got.len(), data.len());
    assert_eq!(end, Err(HostError::Reset));
}

#[test]
fn a_transport_reset_is_not_an_end_of_stream() {
    let data = pattern(4000, 3);
    // The client's next sequence number, as its own packets show.
    let next = Rc::new(Cell::new(None::<(FlowId, FlowId, u32)>));
    let (mut net, _client, server, _cflow, sflow) = {
        let ClientServer {
            mut net,
            client,
            server,
            listener,
        } = client_server(23, LinkConditions::default(), HostConfig::default());
        let seen = next.clone();
        net.set_filter(Some(Box::new(move |p: &Packet| {
            let repr = SalPacket::new_checked(&p.payload[..])
                .ok()
                .and_then(|packet| SalRepr::parse(&packet).ok());
            let Some(repr) = repr.filter(|_| p.src.ip() == Ipv4Addr::new(10, 0, 0, 1)) else {
                return false;
            };
            let segment = &p.payload[repr.header_len()..];
            if let (Ok(tcp), Some(src), Some(dst)) = (
                TcpPacket::new_checked(segment),
                repr.src_flow,
                repr.dst_flow,
            ) {
                let len = segment.len() - tcp.header_len() as usize;
                let end = tcp.seq_number().0 as u32 + len as u32 + u32::from(tcp.syn());
                seen.set(Some((src, dst, end)));
            }
            false
        })));
        let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
        assert_eq!(net.host(client).send(cflow, &data), Ok(data.len()));
        net.run_for(Duration::from_millis(200));
        (net, client, server, cflow, sflow)
    };
    let (client_flow, server_flow, seq) = next.get().expect("the client's segments");
    let (src, dst) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
    let rst = tcp_segment(TcpControl::Rst, seq, None, &[], (src, dst));
    let payload = sal_data(client_flow, server_flow, &rst);
    net.inject(Packet {
        src: Locator::Ipv4(src),
        dst: Locator::Ipv4(dst),
        ttl: 64,
        kind: TransmitKind::Own,
        payload,
    });
    net.run_for(Duration::from_millis(200));
    let (got, end) = read_to_end(&mut net, server, sflow);
    assert!(got == data, "read {} of {} bytes", got.len(), data.len());
    assert_eq!(
        end,
        Err(HostError::Reset),
        "a reset is not an end of stream"
    );
}

#[test]
fn unread_bytes_outlive_the_connection_s_timers() {
    let ClientServer {
        mut net,
        client,
        server,
        listener,
    } = client_server(11, LinkConditions::default(), HostConfig::default());
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let data = pattern(100_000, 4);
    let mut sent = 0;
    while sent < data.len() {
        sent += net.host(client).send(cflow, &data[sent..]).unwrap_or(0);
        net.run_for(Duration::from_millis(10));
    }
    // The server's application says it will send nothing and reads nothing
    // yet; the client finishes and closes.
    net.host(server).shutdown(sflow).unwrap();
    net.run_for(Duration::from_millis(100));
    net.host(client).shutdown(cflow).unwrap();
    net.run_for(Duration::from_secs(1));
    let _ = net.host(client).close(cflow);
    // Long past TIME-WAIT and every retransmission timer.
    net.run_for(Duration::from_secs(120));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match net.host(server).recv(sflow, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(error) => panic!("after {} bytes: {error}", got.len()),
        }
    }
    assert!(got == data, "read {} of {} bytes", got.len(), data.len());
}

/// A reset flow whose application had read everything keeps nothing, and
/// the host's count of buffer memory goes back down with it: it used to
/// keep the freed buffers counted, 8 KiB more on every reset, until the
/// budget put every flow under pressure for good.
#[test]
fn resets_give_back_the_buffer_memory_they_count() {
    let ClientServer {
        mut net,
        client,
        server,
        listener,
    } = client_server(24, LinkConditions::default(), HostConfig::default());
    for round in 0..5 {
        let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
        let data = pattern(4000, round);
        assert_eq!(net.host(client).send(cflow, &data), Ok(data.len()));
        assert_eq!(net.host(server).send(sflow, &data), Ok(data.len()));
        net.run_for(Duration::from_millis(300));
        let mut buf = vec![0u8; 8000];
        assert_eq!(net.host(server).recv(sflow, &mut buf), Ok(data.len()));
        net.host(client).abort(cflow).unwrap();
        net.run_for(Duration::from_millis(200));
        assert_eq!(
            net.host(server).recv(sflow, &mut buf),
            Err(HostError::Reset)
        );
        net.host(client).close(cflow).unwrap();
        net.host(server).close(sflow).unwrap();
        net.run_for(Duration::from_millis(50));
    }
    assert_eq!(net.host(server).flow_count(), 0);
    assert_eq!(
        net.host(server).stats().buffer_bytes,
        0,
        "buffer count drifted"
    );
    assert_eq!(net.host(client).stats().buffer_bytes, 0);
}

/// A flow whose client sent data while the server's acknowledgements were
/// lost, so that it resends bytes the server already has after the
/// server's application read them, answered and closed. What the client
/// then reads to the end.
fn retransmitted_after_the_server_closed(seed: u64) -> (Vec<u8>, Result<usize, HostError>) {
    let data = pattern(4000, 5);
    let (mut net, client, server, cflow, sflow) = established(seed);
    // Everything the server sends is lost for a while.
    let deaf = Rc::new(Cell::new(true));
    let lost = deaf.clone();
    net.set_filter(Some(Box::new(move |p: &Packet| {
        lost.get() && p.src.ip() == Ipv4Addr::new(10, 0, 0, 2)
    })));
    assert_eq!(net.host(client).send(cflow, &data), Ok(data.len()));
    net.run_for(Duration::from_millis(50));
    let (got, _) = read_to_end(&mut net, server, sflow);
    assert_eq!(got.len(), data.len(), "the server read everything");
    assert_eq!(net.host(server).send(sflow, b"last words"), Ok(10));
    net.host(server).close(sflow).expect("close");
    // The client's retransmission timeout runs out: it resends.
    let resent = net.host(client).stats().retransmits;
    net.run_for(Duration::from_millis(1500));
    assert!(
        net.host(client).stats().tcp_timeouts > 0 || net.host(client).stats().retransmits > resent,
        "the client resent nothing"
    );
    deaf.set(false);
    net.run_for(Duration::from_secs(5));
    read_to_end(&mut net, client, cflow)
}

/// A closed application's flow is reset for new data only, as Linux resets
/// an orphaned socket: a retransmission of bytes it already has (its ACK
/// lost, a spurious timeout on the peer's side) is acknowledged, and the
/// flow ends with its last bytes and end of stream. (Every data segment
/// reset it: a client whose retransmission crossed the server's close
/// lost the server's last bytes.)
#[test]
fn a_closed_flow_is_not_reset_for_a_retransmission_of_bytes_it_has() {
    let (got, end) = retransmitted_after_the_server_closed(25);
    assert_eq!(got, b"last words");
    assert_eq!(end, Ok(0), "a retransmission reset the closed flow");
}
