//! Flows across a NAT on the deterministic simulator, in UDP carriage: a
//! client behind a NAPT streams both ways; keepalives hold the mapping of
//! an idle flow (and without them the server cannot speak first); a NAT
//! rebinding mid-transfer is followed once the client proves the new
//! address with its nonce, with every byte delivered and a short stall;
//! forged packets from elsewhere redirect nothing and learn no nonce; and
//! a service router records each client's UDP port, so that clients that
//! share an address are each answered at their own.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::HostConfig;
use sal::wire::{ControlFlags, SalPacket, SalRepr, TransportProtocol::Stream};
use sal::{FlowId, Locator};
use sal_sim::Packet;
use sal_sim::{HostId, LinkConditions, Nat, Network};
use smoltcp::time::{Duration, Instant};

mod common;
use common::sim::{default_route, establish, pattern, stream};

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const SERVER: &str = "udp:10.0.0.2:54325";
const PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const REBOUND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);

/// A client (10.9.0.1, UDP port 54324) behind a NAT (public 10.0.0.100,
/// forgetting idle mappings after `nat_timeout`), a server (10.0.0.2, port
/// 54325) outside, 5 ms each way, and one established stream flow.
struct Natted {
    net: Network,
    client: HostId,
    server: HostId,
    cflow: FlowId,
    sflow: FlowId,
}

fn natted(config: HostConfig, nat_timeout: Duration) -> Natted {
    natted_with(config, nat_timeout, ms(5), |_| {})
}

/// Like [`natted`], with a one-way `delay` and `before` run on the network
/// before the handshake.
fn natted_with(
    config: HostConfig,
    nat_timeout: Duration,
    delay: Duration,
    before: impl FnOnce(&mut Network),
) -> Natted {
    let conditions = LinkConditions {
        delay,
        ..LinkConditions::default()
    };
    let mut net = Network::new(41, conditions);
    let client = net.add_udp_host("client", config.clone(), &[("eth0", "10.9.0.1/24")], 54324);
    let server = net.add_udp_host("server", config, &[("eth0", "10.0.0.2/24")], 54325);
    net.set_nat(Some(Nat::new(
        (Ipv4Addr::new(10, 9, 0, 0), 24),
        PUBLIC,
        nat_timeout,
    )));
    default_route(&mut net, client, SERVER);
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    before(&mut net);
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    Natted {
        net,
        client,
        server,
        cflow,
        sflow,
    }
}

impl Natted {
    fn server_sees(&mut self) -> Locator {
        let sflow = self.sflow;
        self.net
            .host(self.server)
            .flow(sflow)
            .unwrap()
            .remote
            .unwrap()
    }

    fn upload(&mut self, data: &[u8], during: impl FnMut(&mut Network, usize)) -> Vec<u8> {
        let (from, to) = ((self.client, self.cflow), (self.server, self.sflow));
        stream(&mut self.net, from, to, data, secs(60), during)
    }

    fn download(&mut self, data: &[u8], during: impl FnMut(&mut Network, usize)) -> Vec<u8> {
        let (from, to) = ((self.server, self.sflow), (self.client, self.cflow));
        stream(&mut self.net, from, to, data, secs(60), during)
    }
}

#[test]
fn a_client_behind_a_nat_streams_both_ways_and_is_answered_at_the_nats_address() {
    let mut n = natted(HostConfig::default(), secs(30));
    // The server answers where the packets came from, not 10.9.0.1.
    let seen = n.server_sees();
    assert_eq!(seen.ip(), PUBLIC);
    assert_ne!(seen, loc("udp:10.9.0.1:54324"));
    let up = pattern(1 << 20, 1);
    assert_eq!(n.upload(&up, |_, _| {}), up);
    let down = pattern(1 << 20, 2);
    assert_eq!(n.download(&down, |_, _| {}), down);
    let server_stats = n.net.host(n.server).stats();
    assert_eq!(server_stats.bad_checksum, 0);
    assert_eq!(server_stats.rebindings, 0);
}

/// Lets a flow sit idle for 20 s behind a NAT that forgets after 3 s, then
/// has the server send first; returns how much of 100 KB the client got.
fn idle_then_server_first(keepalive: Option<Duration>) -> (usize, u64) {
    let config = HostConfig {
        keepalive,
        ..HostConfig::default()
    };
    let mut n = natted(config, secs(3));
    n.net.run_for(secs(20));
    let data = pattern(100_000, 3);
    let mut got = 0;
    let (server, sflow, client, cflow) = (n.server, n.sflow, n.client, n.cflow);
    let mut sent = 0;
    let mut buf = vec![0u8; 65536];
    n.net.run_until(secs(10), |net| {
        while sent < data.len() {
            match net.host(server).send(sflow, &data[sent..]) {
                Ok(k) => sent += k,
                Err(_) => break,
            }
        }
        while let Ok(k) = net.host(client).recv(cflow, &mut buf) {
            if k == 0 {
                break;
            }
            assert_eq!(&buf[..k], &data[got..got + k]);
            got += k;
        }
        got == data.len()
    });
    (got, n.net.host(client).stats().keepalives)
}

#[test]
fn keepalives_hold_an_idle_flows_mapping_so_the_server_can_speak_first() {
    let (got, keepalives) = idle_then_server_first(Some(secs(2)));
    assert_eq!(got, 100_000);
    // 20 s idle: one keepalive every 2 s.
    assert!((9..=10).contains(&keepalives), "{keepalives} keepalives");
    // The control: without keepalives the mapping is gone and nothing arrives.
    let (got, keepalives) = idle_then_server_first(None);
    assert_eq!((got, keepalives), (0, 0));
}

#[test]
fn only_idle_client_flows_over_udp_send_keepalives() {
    let config = HostConfig {
        keepalive: Some(secs(2)),
        ..HostConfig::default()
    };
    let mut n = natted(config, secs(30));
    // Busy: a transfer sends all the time, so no keepalive.
    n.upload(&pattern(1 << 20, 4), |_, _| {});
    let busy = n.net.host(n.client).stats().keepalives;
    n.net.run_for(secs(10));
    let idle = n.net.host(n.client).stats().keepalives - busy;
    assert_eq!(busy, 0);
    assert!((4..=5).contains(&idle), "{idle}");
    assert_eq!(
        n.net.host(n.server).stats().keepalives,
        0,
        "servers send none"
    );
}

/// Runs `transfer` and rebinds the NAT to 10.0.0.101 once 1 MB has arrived;
/// returns the longest time the receiver made no progress after the
/// rebinding.
fn rebinding_during(
    n: &mut Natted,
    transfer: impl FnOnce(&mut Natted, &mut dyn FnMut(&mut Network, usize)),
) -> Duration {
    let mut rebound_at: Option<Instant> = None;
    let mut last_progress = (0usize, Instant::from_millis(0));
    let mut longest = Duration::from_millis(0);
    let mut during = |net: &mut Network, received: usize| {
        if received != last_progress.0 {
            if rebound_at.is_some() {
                longest = longest.max(net.now() - last_progress.1);
            }
            last_progress = (received, net.now());
        }
        if rebound_at.is_none() && received >= 1 << 20 {
            net.nat_mut().unwrap().rebind(REBOUND);
            rebound_at = Some(net.now());
        }
    };
    transfer(n, &mut during);
    assert!(rebound_at.is_some(), "the NAT was rebound");
    eprintln!("longest stall after the rebinding: {longest}");
    longest
}

#[test]
fn a_nat_rebinding_mid_upload_is_followed_with_every_byte_and_a_short_stall() {
    let mut n = natted(HostConfig::default(), secs(30));
    let data = pattern(4 << 20, 5);
    let mut received = Vec::new();
    let stall = rebinding_during(&mut n, |n, during| {
        received = n.upload(&data, during);
    });
    assert!(received == data, "bytes differ");
    assert_eq!(n.server_sees().ip(), REBOUND);
    let stats = n.net.host(n.server).stats();
    assert_eq!(stats.rebindings, 1);
    // Segments from the new mapping prove nothing by themselves: the
    // server challenged the new path before it moved the flow there.
    assert!(stats.path_challenges >= 1);
    assert!(stall < ms(300), "stall {stall}");
}

#[test]
fn a_nat_rebinding_mid_download_is_followed_with_every_byte_and_a_short_stall() {
    let mut n = natted(HostConfig::default(), secs(30));
    let data = pattern(4 << 20, 6);
    let mut received = Vec::new();
    let stall = rebinding_during(&mut n, |n, during| {
        received = n.download(&data, during);
    });
    assert!(received == data, "bytes differ");
    assert_eq!(n.server_sees().ip(), REBOUND);
    let stats = n.net.host(n.server).stats();
    assert_eq!(stats.rebindings, 1);
    // What the old mapping swallowed is resent at once, not after the
    // transport's retransmission timeout.
    assert!(stats.replayed > 0);
    assert!(stall < ms(300), "stall {stall}");
}

#[test]
fn a_rebinding_while_a_download_pauses_is_noticed_by_the_receiving_client() {
    // The server sends 1 MB, the client reads all of it, and the NAT rebinds
    // while nothing is in flight; then the server sends the rest. The
    // client has nothing to acknowledge and hears nothing: only its nudge
    // (200 ms after the stream stopped) tells the server where it went.
    let mut n = natted(HostConfig::default(), secs(30));
    let data = pattern(4 << 20, 8);
    let (server, sflow, client, cflow) = (n.server, n.sflow, n.client, n.cflow);
    let mut received = Vec::new();
    let mut sent = 0;
    let mut buf = vec![0u8; 65536];
    let mut pump = |net: &mut Network, upto: usize, received: &mut Vec<u8>| {
        while sent < upto {
            match net.host(server).send(sflow, &data[sent..upto]) {
                Ok(k) => sent += k,
                Err(_) => break,
            }
        }
        while let Ok(k) = net.host(client).recv(cflow, &mut buf) {
            if k == 0 {
                break;
            }
            received.extend_from_slice(&buf[..k]);
        }
    };
    assert!(n.net.run_until(secs(10), |net| {
        pump(net, 1 << 20, &mut received);
        received.len() == 1 << 20
    }));
    n.net.nat_mut().unwrap().rebind(REBOUND);
    let mut last = (received.len(), n.net.now());
    let mut longest = Duration::ZERO;
    assert!(n.net.run_until(secs(10), |net| {
        pump(net, data.len(), &mut received);
        if received.len() != last.0 {
            longest = longest.max(net.now() - last.1);
            last = (received.len(), net.now());
        }
        received.len() == data.len()
    }));
    eprintln!("longest stall after the rebinding: {longest}");
    assert!(received == data, "bytes differ");
    assert_eq!(n.server_sees().ip(), REBOUND);
    assert!(n.net.host(n.client).stats().nudges >= 1);
    assert_eq!(n.net.host(n.server).stats().rebindings, 1);
    // 200 ms of silence, then a round trip (without the nudge: until the
    // client's next keepalive, 25 s).
    assert!(longest < ms(300), "stall {longest}");
}

/// The CONTROL extension of a SAL packet, if any.
fn control_of(payload: &[u8]) -> Option<sal::wire::ControlRepr> {
    let packet = SalPacket::new_checked(payload).ok()?;
    SalRepr::parse(&packet).ok()?.control
}

#[test]
fn forged_packets_from_elsewhere_redirect_nothing_and_learn_no_nonce() {
    let attacker = loc("udp:10.0.0.66:54325");
    // Every nonce the server puts in its control messages, and what goes
    // to the attacker's address.
    let server_nonces = Rc::new(RefCell::new(Vec::new()));
    let to_attacker = Rc::new(RefCell::new(Vec::<Packet>::new()));
    let (nonces, seen) = (server_nonces.clone(), to_attacker.clone());
    let mut n = natted_with(HostConfig::default(), secs(30), ms(5), move |net| {
        net.set_filter(Some(Box::new(move |t: &Packet| {
            if t.src == loc(SERVER) {
                if let Some(control) = control_of(&t.payload) {
                    if t.dst != attacker {
                        nonces.borrow_mut().push(control.nonce);
                    }
                }
            }
            if t.dst == attacker {
                seen.borrow_mut().push(t.clone());
            }
            false
        })));
    });
    let attacker_host = n.net.add_udp_host(
        "attacker",
        HostConfig::default(),
        &[("eth0", "10.0.0.66/24")],
        54325,
    );
    // The attacker knows both flow IDs (say it guessed them) but not the
    // client's nonce: it sends data, and control with a made-up nonce, from
    // its own address.
    let (cflow, sflow) = (n.cflow, n.sflow);
    let forge = |control: Option<ControlFlags>| {
        let mut repr = SalRepr::data(cflow, Some(sflow), 6);
        repr.control = control.map(|flags| sal::wire::ControlRepr {
            flags,
            nonce: [0x66; 8],
            ..Default::default()
        });
        let len = repr.header_len();
        let mut payload = vec![0u8; len];
        repr.emit(&mut payload).unwrap();
        Packet {
            src: attacker,
            dst: loc(SERVER),
            ttl: 64,
            kind: sal::proto::TransmitKind::Own,
            payload,
        }
    };
    let data = pattern(2 << 20, 7);
    let mut forged = 0;
    let received = n.upload(&data, |net, received| {
        if received > 0 && forged < 5 && received >= forged * (300 << 10) {
            net.inject(forge(None));
            net.inject(forge(Some(ControlFlags::ACK)));
            net.inject(forge(Some(ControlFlags::RSYN)));
            net.inject(forge(Some(ControlFlags::FIN)));
            forged += 1;
        }
    });
    assert!(received == data, "bytes differ");
    assert_eq!(forged, 5);
    let seen = n.server_sees();
    assert_eq!(seen.ip(), PUBLIC, "the flow stayed where the client is");
    let stats = n.net.host(n.server).stats();
    assert_eq!(stats.rebindings, 0);
    assert!(stats.bad_nonce >= 15, "{stats:?}");
    // The server asked the attacker's address to prove itself, and what it
    // sent there carries none of the server's nonces.
    let challenges = to_attacker.borrow();
    assert!(!challenges.is_empty());
    assert!(stats.path_challenges >= 1);
    let nonces = server_nonces.borrow();
    assert!(!nonces.is_empty());
    for challenge in challenges.iter() {
        let control = control_of(&challenge.payload).expect("a challenge is CONTROL");
        assert_eq!(control.flags, ControlFlags::RSYN | ControlFlags::NACK);
        assert!(
            !nonces.contains(&control.nonce),
            "the server's nonce leaked"
        );
    }
    // And the flow is still whole: the attacker's host has nothing.
    assert!(n.net.host(attacker_host).flows().is_empty());
}

#[test]
fn a_router_records_each_clients_port_so_clients_sharing_an_address_are_answered_apart() {
    let mut net = Network::new(43, LinkConditions::default());
    let config = HostConfig::default();
    let clients: Vec<HostId> = [41000, 42000]
        .iter()
        .map(|&port| net.add_udp_host("client", config.clone(), &[("eth0", "10.0.0.1/24")], port))
        .collect();
    let router_config = HostConfig {
        forward: true,
        ..HostConfig::default()
    };
    let router = net.add_udp_host("router", router_config, &[("eth0", "10.0.0.254/24")], 54325);
    let server = net.add_udp_host("server", config, &[("eth0", "10.0.0.2/24")], 54325);
    for &client in &clients {
        default_route(&mut net, client, "udp:10.0.0.254:54325");
    }
    default_route(&mut net, router, SERVER);
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    for (i, &client) in clients.iter().enumerate() {
        let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
        let port = [41000, 42000][i];
        let remote = net.host(server).flow(sflow).unwrap().remote;
        assert_eq!(remote, Some(loc(&format!("udp:10.0.0.1:{port}"))));
        let data = pattern(200_000, i as u64);
        let back = stream(
            &mut net,
            (server, sflow),
            (client, cflow),
            &data,
            secs(30),
            |_, _| {},
        );
        assert!(back == data, "client {i}: bytes differ");
    }
    assert_eq!(net.host(router).stats().forwarded, 2);
}

/// A copy of the client's own control message (a late duplicate, or a
/// replay) turned into an RSYN from an address that never answers leaves
/// the server waiting for that address for a while; a NAT rebinding in
/// that time must still be followed as soon as the new mapping answers.
/// (For a while the server took answers only from the RSYN's address, and
/// the rebinding waited for the peer timeout.)
#[test]
fn a_rebinding_is_followed_while_an_unanswered_rsyn_address_is_challenged() {
    let handshake_ack = Rc::new(RefCell::new(None));
    let seen = handshake_ack.clone();
    let mut n = natted_with(HostConfig::default(), secs(30), ms(5), move |net| {
        net.set_filter(Some(Box::new(move |t: &Packet| {
            if let Some(control) = control_of(&t.payload) {
                if t.dst == loc(SERVER) && control.flags == ControlFlags::ACK {
                    seen.borrow_mut().get_or_insert(control);
                }
            }
            false
        })));
    });
    let ack: sal::wire::ControlRepr = handshake_ack.borrow().expect("the client's handshake ACK");
    let (cflow, sflow) = (n.cflow, n.sflow);
    // The client's last numbered message (its SYN) again, as an RSYN:
    // to the server, a duplicate of what it already acted on.
    let mut repr = SalRepr::data(cflow, Some(sflow), 6);
    repr.control = Some(sal::wire::ControlRepr {
        flags: ControlFlags::RSYN,
        verno: ack.verno.wrapping_sub(1),
        ..ack
    });
    let mut rsyn = vec![0u8; repr.header_len()];
    repr.emit(&mut rsyn).unwrap();
    let mut injected = false;
    let data = pattern(4 << 20, 8);
    let mut received = Vec::new();
    let stall = rebinding_during(&mut n, |n, during| {
        received = n.download(&data, &mut |net: &mut Network, got: usize| {
            if !injected && got >= 512 << 10 {
                net.inject(Packet {
                    src: loc("udp:10.0.0.66:54325"),
                    dst: loc(SERVER),
                    ttl: 64,
                    kind: sal::proto::TransmitKind::Own,
                    payload: rsyn.clone(),
                });
                injected = true;
            }
            during(net, got);
        });
    });
    assert!(injected);
    assert!(received == data, "bytes differ");
    assert_eq!(n.server_sees().ip(), REBOUND);
    assert!(stall < ms(300), "stall {stall}");
}
