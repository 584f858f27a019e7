//! A SYN that comes back undeliverable (`Host::handle_unreachable`: an
//! ICMP port unreachable on a UDP link, quoting the SYN) fails its connect
//! as refused at once, as kernel TCP's connect to a closed port does,
//! unless the host's table routes the service by another first hop, the
//! dead one left out of the draw (another target of the rule, or what is
//! left once the caller took out a route it had cached to the dead one):
//! then the SYN goes there at once, once per connect. A report that does not name
//! the connect's own SYN (another flow, another nonce, another hop, an old
//! SYN, a cut header) changes nothing. A packet of an established flow
//! that comes back from its peer's locator resets the flow unless the
//! peer is heard (or moves) within a second.

use std::cell::RefCell;
use std::rc::Rc;

use sal::proto::{ConnectError, Event, HostConfig};
use sal::wire::{ControlFlags, SalPacket, SalRepr, TransportProtocol};
use sal::{FlowId, Locator};
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::time::Duration;

mod common;
use common::sim::{default_route, loc, svc};

/// A client whose SYNs toward 10.0.0.2 (where nobody is) are swallowed
/// and kept, as the link would quote them back.
struct Client {
    net: Network,
    client: HostId,
    syns: Rc<RefCell<Vec<Vec<u8>>>>,
}

fn client(protocol: TransportProtocol) -> (Client, FlowId) {
    let mut net = Network::new(31, LinkConditions::default());
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    default_route(&mut net, client, "10.0.0.2");
    let syns = Rc::new(RefCell::new(Vec::new()));
    let kept = Rc::clone(&syns);
    net.set_filter(Some(Box::new(move |packet| {
        kept.borrow_mut().push(packet.payload.clone());
        true
    })));
    let flow = net.host(client).connect(svc("ab01"), protocol).unwrap();
    net.run_for(Duration::from_millis(10));
    assert_eq!(syns.borrow().len(), 1, "one SYN sent");
    (Client { net, client, syns }, flow)
}

impl Client {
    /// Hands the host a report that `packet`, sent to `hop`, came back.
    fn unreachable(&mut self, hop: Locator, packet: &[u8]) {
        let now = self.net.now();
        self.net
            .host(self.client)
            .handle_unreachable(now, hop, packet);
        self.net.run_for(Duration::from_millis(1));
    }

    fn failed(&mut self, flow: FlowId) -> Option<ConnectError> {
        let events = &self.net.sim_host(self.client).events;
        events.iter().find_map(|event| match event {
            Event::ConnectFailed(id, error) if *id == flow => Some(*error),
            _ => None,
        })
    }

    fn first_syn(&self) -> Vec<u8> {
        self.syns.borrow()[0].clone()
    }
}

/// `syn` with its CONTROL extension changed by `change` (the SAL header
/// written again, checksum included).
fn altered(syn: &[u8], change: impl FnOnce(&mut SalRepr)) -> Vec<u8> {
    let packet = SalPacket::new_checked(syn).unwrap();
    let mut repr = SalRepr::parse(&packet).unwrap();
    let segment = packet.payload().to_vec();
    change(&mut repr);
    let len = repr.header_len();
    let mut out = vec![0u8; len + segment.len()];
    repr.emit(&mut out).unwrap();
    out[len..].copy_from_slice(&segment);
    out
}

#[test]
fn a_syn_sent_back_unreachable_fails_its_connect_as_refused_at_once() {
    for protocol in [TransportProtocol::Stream, TransportProtocol::Datagram] {
        let (mut c, flow) = client(protocol);
        let syn = c.first_syn();
        c.unreachable(loc("10.0.0.2"), &syn);
        assert_eq!(c.failed(flow), Some(ConnectError::Refused), "{protocol:?}");
        let client = c.client;
        assert_eq!(c.net.host(client).stats().unreachable_hops, 1);
        assert!(c.net.host(client).flow(flow).is_none(), "the flow is gone");
        // A second report of the same SYN finds nothing.
        c.unreachable(loc("10.0.0.2"), &syn);
        assert_eq!(c.net.host(client).stats().unreachable_hops, 1);
    }
}

#[test]
fn a_report_that_does_not_name_the_connect_s_own_syn_changes_nothing() {
    let (mut c, flow) = client(TransportProtocol::Stream);
    let syn = c.first_syn();
    let forged = [
        // Another nonce: an off-path guess.
        altered(&syn, |repr| repr.control.as_mut().unwrap().nonce[0] ^= 1),
        // Another verno: not the SYN in flight.
        altered(&syn, |repr| {
            let control = repr.control.as_mut().unwrap();
            control.verno = control.verno.wrapping_add(7);
        }),
        // Not a SYN.
        altered(&syn, |repr| {
            repr.control.as_mut().unwrap().flags = ControlFlags::SYN | ControlFlags::ACK
        }),
        // Another flow.
        altered(&syn, |repr| {
            repr.src_flow = FlowId::new(repr.src_flow.unwrap().get() ^ 1)
        }),
        // The SAL header cut short.
        syn[..8].to_vec(),
        Vec::new(),
    ];
    for packet in &forged {
        c.unreachable(loc("10.0.0.2"), packet);
    }
    // The real SYN, said to have come back from elsewhere.
    c.unreachable(loc("10.0.0.9"), &syn);
    assert_eq!(c.failed(flow), None);
    let client = c.client;
    assert_eq!(c.net.host(client).stats().unreachable_hops, 0);
    // The connect is still trying: its SYN is sent again.
    c.net.run_for(Duration::from_secs(2));
    assert!(c.syns.borrow().len() >= 2, "the SYN was not retransmitted");
    assert_eq!(c.failed(flow), None);
    // Its retransmission, reported, is believed.
    let again = c.syns.borrow().last().unwrap().clone();
    c.unreachable(loc("10.0.0.2"), &again);
    assert_eq!(c.failed(flow), Some(ConnectError::Refused));
}

/// A client (10.0.0.1) whose rule for `ab01` leads to 10.0.0.3, where
/// nobody is (its SYNs there are swallowed and kept), beside a default
/// route to `default_hop`; a server at 10.0.0.2 listens for `ab/8`.
struct Rerouting {
    c: Client,
    server: sal_sim::HostId,
    listener: sal::table::ListenerId,
    flow: FlowId,
}

fn rerouting(default_hop: &str) -> Rerouting {
    let mut net = Network::new(32, LinkConditions::default());
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", HostConfig::default(), &[("eth0", "10.0.0.2/24")]);
    let listener = net
        .host(server)
        .listen(common::sim::prefix("ab/8"), TransportProtocol::Stream, 8)
        .unwrap();
    default_route(&mut net, client, default_hop);
    let target = sal::table::Target::Forward {
        locator: loc("10.0.0.3"),
        weight: 1,
    };
    (net.host(client)).add_rule(sal::ServicePrefix::exact(svc("ab01")), target, 0);
    let syns = Rc::new(RefCell::new(Vec::new()));
    let kept = Rc::clone(&syns);
    let nobody = [loc("10.0.0.3"), loc("10.0.0.4")];
    net.set_filter(Some(Box::new(move |packet| {
        let swallowed = nobody.contains(&packet.dst);
        if swallowed {
            kept.borrow_mut().push(packet.payload.clone());
        }
        swallowed
    })));
    let flow = (net.host(client))
        .connect(svc("ab01"), TransportProtocol::Stream)
        .unwrap();
    net.run_for(Duration::from_millis(10));
    assert_eq!(syns.borrow().len(), 1, "one SYN sent");
    let c = Client { net, client, syns };
    Rerouting {
        c,
        server,
        listener,
        flow,
    }
}

impl Rerouting {
    /// Reports the first SYN (to 10.0.0.3) as come back undeliverable.
    fn refuse_first_syn(&mut self) {
        let syn = self.c.first_syn();
        self.c.unreachable(loc("10.0.0.3"), &syn);
    }

    /// Takes the client's rule toward 10.0.0.3 out, as a caller that
    /// cached it does on learning the hop is gone.
    fn forget_dead_rule(&mut self) {
        let key = sal::table::TargetKey::Forward {
            locator: loc("10.0.0.3"),
        };
        let exact = sal::ServicePrefix::exact(svc("ab01"));
        (self.c.net.host(self.c.client))
            .remove_rule_target(&exact, &key)
            .unwrap();
    }
}

#[test]
fn a_syn_refused_at_a_hop_the_caller_took_out_goes_by_the_route_left_at_once() {
    let mut r = rerouting("10.0.0.2");
    r.forget_dead_rule();
    r.refuse_first_syn();
    assert_eq!(r.c.failed(r.flow), None, "refused instead of rerouted");
    let stats = r.c.net.host(r.c.client).stats();
    assert_eq!((stats.unreachable_hops, stats.rerouted_syns), (1, 1));
    // The connect completes with the server, well before a SYN
    // retransmission would have gone anywhere (the first is due at 500 ms).
    let (server, listener, client, flow) = (r.server, r.listener, r.c.client, r.flow);
    let mut accepted = None;
    let done = r.c.net.run_until(Duration::from_millis(100), |net| {
        if accepted.is_none() {
            accepted = net.host(server).accept(listener).ok();
        }
        accepted.is_some()
            && net
                .sim_host(client)
                .events
                .contains(&Event::Connected(flow))
    });
    assert!(done, "the rerouted connect was not established");
    assert_eq!(r.c.syns.borrow().len(), 1, "another SYN to the dead hop");
}

#[test]
fn a_syn_whose_route_is_still_the_dead_hop_is_refused() {
    // The caller did not take the rule out: the table still routes the
    // service to the hop that refused it.
    let mut r = rerouting("10.0.0.2");
    r.refuse_first_syn();
    assert_eq!(r.c.failed(r.flow), Some(ConnectError::Refused));
    let stats = r.c.net.host(r.c.client).stats();
    assert_eq!((stats.unreachable_hops, stats.rerouted_syns), (1, 0));
}

#[test]
fn a_syn_refused_by_one_of_a_rule_s_hops_goes_by_another_of_them() {
    // The rule has a second hop, the server, drawn once in a thousand:
    // the refused hop is left out of the draw for the second way.
    let mut r = rerouting("10.0.0.4");
    let target = sal::table::Target::Forward {
        locator: loc("10.0.0.2"),
        weight: 1,
    };
    let exact = sal::ServicePrefix::exact(svc("ab01"));
    (r.c.net.host(r.c.client)).add_rule(exact, target, 0);
    let key = sal::table::TargetKey::Forward {
        locator: loc("10.0.0.3"),
    };
    let heavy = sal::table::Target::Forward {
        locator: loc("10.0.0.3"),
        weight: 1000,
    };
    (r.c.net.host(r.c.client))
        .remove_rule_target(&exact, &key)
        .unwrap();
    (r.c.net.host(r.c.client)).add_rule(exact, heavy, 0);
    r.refuse_first_syn();
    assert_eq!(r.c.failed(r.flow), None, "refused instead of rerouted");
    let stats = r.c.net.host(r.c.client).stats();
    assert_eq!((stats.unreachable_hops, stats.rerouted_syns), (1, 1));
    let (client, flow) = (r.c.client, r.flow);
    let done = r.c.net.run_until(Duration::from_millis(100), |net| {
        net.sim_host(client)
            .events
            .contains(&Event::Connected(flow))
    });
    assert!(done, "the rerouted connect was not established");
    assert_eq!(r.c.syns.borrow().len(), 1, "another SYN to a dead hop");
}

#[test]
fn a_connect_goes_another_way_once_only() {
    // The default route leads nowhere either: the SYN rerouted there comes
    // back too, and the connect is refused then.
    let mut r = rerouting("10.0.0.4");
    r.forget_dead_rule();
    r.refuse_first_syn();
    assert_eq!(r.c.failed(r.flow), None);
    assert_eq!(r.c.syns.borrow().len(), 2, "the SYN did not go to 10.0.0.4");
    let again = r.c.syns.borrow()[1].clone();
    // Put a rule back toward 10.0.0.3: another way exists, but the
    // connect went a second way already.
    let target = sal::table::Target::Forward {
        locator: loc("10.0.0.3"),
        weight: 1,
    };
    let exact = sal::ServicePrefix::exact(svc("ab01"));
    (r.c.net.host(r.c.client)).add_rule(exact, target, 0);
    r.c.unreachable(loc("10.0.0.4"), &again);
    assert_eq!(r.c.failed(r.flow), Some(ConnectError::Refused));
    let stats = r.c.net.host(r.c.client).stats();
    assert_eq!((stats.unreachable_hops, stats.rerouted_syns), (2, 1));
}

/// A client and a server with an established stream; every packet the
/// client sends to the server is kept (its SYN first), and while
/// `silent` is set the server's packets are dropped.
struct Established {
    net: Network,
    client: sal_sim::HostId,
    server: sal_sim::HostId,
    cflow: FlowId,
    sflow: FlowId,
    sent: Rc<RefCell<Vec<Vec<u8>>>>,
    silent: Rc<std::cell::Cell<bool>>,
}

fn established() -> Established {
    let common::sim::ClientServer {
        mut net,
        client,
        server,
        listener,
    } = common::sim::client_server(33, LinkConditions::default(), HostConfig::default());
    let sent = Rc::new(RefCell::new(Vec::new()));
    let silent = Rc::new(std::cell::Cell::new(false));
    let (kept, quiet) = (Rc::clone(&sent), Rc::clone(&silent));
    net.set_filter(Some(Box::new(move |packet| {
        if packet.dst == loc("10.0.0.2") {
            kept.borrow_mut().push(packet.payload.clone());
        }
        quiet.get() && packet.src == loc("10.0.0.2")
    })));
    let (cflow, sflow) = common::sim::establish(&mut net, client, server, listener, svc("ab01"));
    net.host(client).send(cflow, b"hello").unwrap();
    net.run_for(Duration::from_millis(10));
    assert!(!sent.borrow().is_empty(), "no data sent");
    Established {
        net,
        client,
        server,
        cflow,
        sflow,
        sent,
        silent,
    }
}

/// [`established`], the server silent from now on, and what it sent
/// before landed.
fn silenced() -> Established {
    let mut e = established();
    e.silent.set(true);
    e.net.run_for(Duration::from_millis(300));
    e
}

impl Established {
    /// The client writes again: the packet that carries it, which the
    /// server's locator (its program gone) would send back.
    fn write_again(&mut self) -> Vec<u8> {
        self.net
            .host(self.client)
            .send(self.cflow, b"more")
            .unwrap();
        self.net.run_for(Duration::from_millis(1));
        self.sent.borrow().last().unwrap().clone()
    }

    fn unreachable(&mut self, hop: Locator, packet: &[u8]) {
        let now = self.net.now();
        (self.net.host(self.client)).handle_unreachable(now, hop, packet);
    }

    fn reset(&mut self) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match self.net.host(self.client).recv(self.cflow, &mut buf) {
                Ok(0) | Err(sal::proto::HostError::WouldBlock) => return false,
                Ok(_) => continue,
                Err(error) => return error == sal::proto::HostError::Reset,
            }
        }
    }
}

#[test]
fn a_flow_whose_peer_s_locator_refuses_its_packets_is_reset_when_the_peer_stays_silent() {
    let mut e = silenced();
    let packet = e.write_again();
    e.unreachable(loc("10.0.0.2"), &packet);
    // A second report does not push the verdict back.
    e.net.run_for(Duration::from_millis(500));
    e.unreachable(loc("10.0.0.2"), &packet);
    e.net.run_for(Duration::from_millis(400));
    assert!(!e.reset(), "reset before its second");
    e.net.run_for(Duration::from_millis(300));
    assert!(e.reset(), "not reset a second after the refusal");
    let stats = e.net.host(e.client).stats();
    assert_eq!((stats.peers_gone, stats.peer_timeouts), (1, 0));
}

#[test]
fn a_peer_heard_after_its_locator_refused_a_packet_keeps_the_flow() {
    let mut e = established();
    let packet = e.write_again();
    e.unreachable(loc("10.0.0.2"), &packet);
    // The server speaks: whatever refused the packet, the peer lives.
    let (server, sflow) = (e.server, e.sflow);
    e.net.run_for(Duration::from_millis(100));
    e.net.host(server).send(sflow, b"still here").unwrap();
    e.net.run_for(Duration::from_secs(3));
    assert!(!e.reset(), "reset although the peer was heard");
    assert_eq!(e.net.host(e.client).stats().peers_gone, 0);
}

/// An off-path forger's reports: another flow of ours or of the peer's,
/// a segment the flow did not send, a header cut short, or the flow's own
/// packet said to have come back from another locator.
#[test]
fn a_refusal_report_that_does_not_name_the_flow_and_its_peer_changes_nothing() {
    let mut e = silenced();
    let packet = e.write_again();
    let forged = [
        // Another peer flow ID: an off-path guess.
        altered(&packet, |repr| {
            repr.dst_flow = FlowId::new(repr.dst_flow.unwrap().get() ^ 1)
        }),
        // Another flow of ours.
        altered(&packet, |repr| {
            repr.src_flow = FlowId::new(repr.src_flow.unwrap().get() ^ 1)
        }),
        // A sequence number the flow never sent: a blind guess.
        {
            let mut guess = packet.clone();
            let at = SalPacket::new_checked(&packet[..]).unwrap().header_len() + 4;
            guess[at] ^= 0x80;
            guess
        },
        // The TCP header cut off.
        packet[..SalPacket::new_checked(&packet[..]).unwrap().header_len() + 6].to_vec(),
        packet[..6].to_vec(),
    ];
    for forged in &forged {
        e.unreachable(loc("10.0.0.2"), forged);
    }
    // The real packet, said to have come back from another locator.
    e.unreachable(loc("10.0.0.9"), &packet);
    e.net.run_for(Duration::from_secs(3));
    assert!(!e.reset(), "reset on a forged report");
    assert_eq!(e.net.host(e.client).stats().peers_gone, 0);
    // The real packet, from where it went: believed.
    e.unreachable(loc("10.0.0.2"), &packet);
    e.net.run_for(Duration::from_millis(1200));
    assert!(e.reset(), "the real report was not believed");
    assert_eq!(e.net.host(e.client).stats().peers_gone, 1);
}

#[test]
fn a_refused_control_message_without_a_segment_counts_with_our_nonce_only() {
    // A SAL ACK or probe of ours carries no TCP segment to check a
    // sequence number in: its CONTROL extension's nonce (ours) stands in.
    let mut e = silenced();
    // A SAL header of ours with no segment, its CONTROL extension (our
    // nonce) the SYN's.
    let ours = {
        let syn = e.sent.borrow()[0].clone();
        let info = e.net.host(e.client).flow(e.cflow).unwrap();
        let mut repr = SalRepr::data(
            info.flow,
            info.peer_flow,
            TransportProtocol::Stream.number(),
        );
        repr.control = SalRepr::parse(&SalPacket::new_checked(&syn[..]).unwrap())
            .unwrap()
            .control;
        let mut out = vec![0u8; repr.header_len()];
        repr.emit(&mut out).unwrap();
        out
    };
    let forged = altered(&ours, |repr| repr.control.as_mut().unwrap().nonce[0] ^= 1);
    e.unreachable(loc("10.0.0.2"), &forged);
    e.net.run_for(Duration::from_millis(1200));
    assert!(!e.reset(), "reset on a control message with another nonce");
    e.unreachable(loc("10.0.0.2"), &ours);
    e.net.run_for(Duration::from_millis(1200));
    assert!(e.reset(), "a control message of ours was not believed");
}

#[test]
fn a_rerouted_syn_nobody_answers_is_refused_after_one_retransmission() {
    // The second way leads to a hop that swallows the SYN without a word
    // (a sald still forwarding to the dead program, say). It gets a fresh
    // control timeout (500 ms) and one retransmission (1 s more), so that
    // one loss there is not a refusal; then the connect is refused, not
    // after all the SYN's retries.
    let mut r = rerouting("10.0.0.4");
    r.forget_dead_rule();
    r.refuse_first_syn();
    r.c.net.run_for(Duration::from_millis(1300));
    assert_eq!(
        r.c.failed(r.flow),
        None,
        "refused before its retransmission ran out"
    );
    assert!(
        r.c.syns.borrow().len() >= 3,
        "no retransmission on the second way"
    );
    r.c.net.run_for(Duration::from_millis(400));
    assert_eq!(r.c.failed(r.flow), Some(ConnectError::Refused));
    let stats = r.c.net.host(r.c.client).stats();
    assert_eq!((stats.unreachable_hops, stats.rerouted_syns), (1, 1));
}

/// Whether a SAL packet is an RSYN (a move, not its answer).
fn is_rsyn(payload: &[u8]) -> bool {
    let Ok(packet) = SalPacket::new_checked(payload) else {
        return false;
    };
    let control = SalRepr::parse(&packet).ok().and_then(|repr| repr.control);
    control.is_some_and(|c| c.flags == ControlFlags::RSYN)
}

#[test]
fn a_peer_that_moved_away_from_the_locator_that_refused_keeps_the_flow() {
    // The server's flow leaves 10.0.0.2 (its program handed it over, say),
    // which refuses the client's packets from then on. Its RSYN from
    // 10.2.0.2 comes at once, but everything else it sends is lost for
    // 1.5 s (the answers to the client's path challenge among them): the
    // flow is heard from its new place only then, after the refusals'
    // second, while the client's data still goes to the old place and
    // comes back refused. The RSYN's nonce already showed the peer lives.
    let mut net = Network::new(34, LinkConditions::default());
    let (a, b, listener) = common::sim::multi_homed_pair(&mut net);
    let (aflow, bflow) = common::sim::establish(&mut net, a, b, listener, svc("ab01"));
    let sent = Rc::new(RefCell::new(Vec::new()));
    let moved = Rc::new(std::cell::Cell::new(false));
    let (kept, gone) = (Rc::clone(&sent), Rc::clone(&moved));
    net.set_filter(Some(Box::new(move |packet| {
        if packet.dst == loc("10.0.0.2") {
            kept.borrow_mut().push(packet.payload.clone());
        }
        let old = packet.dst == loc("10.0.0.2") || packet.src == loc("10.0.0.2");
        let new = packet.src == loc("10.2.0.2") && !is_rsyn(&packet.payload);
        gone.get() && (old || new)
    })));
    net.host(a).send(aflow, b"more").unwrap();
    net.run_for(Duration::from_millis(1));
    let packet = sent.borrow().last().unwrap().clone();
    moved.set(true);
    let now = net.now();
    net.host(a)
        .handle_unreachable(now, loc("10.0.0.2"), &packet);
    net.host(b).migrate(bflow, "eth1").unwrap();
    // Every packet the client sends to the old locator meanwhile comes
    // back refused too.
    let mut reported = sent.borrow().len();
    for _ in 0..15 {
        let _ = net.host(a).send(aflow, b"still there?");
        net.run_for(Duration::from_millis(100));
        let now = net.now();
        let fresh: Vec<Vec<u8>> = sent.borrow()[reported..].to_vec();
        reported += fresh.len();
        for packet in &fresh {
            net.host(a).handle_unreachable(now, loc("10.0.0.2"), packet);
        }
    }
    // The challenge answers get through from now on.
    net.set_filter(None);
    net.run_for(Duration::from_secs(2));
    let mut buf = [0u8; 16];
    let read = net.host(a).recv(aflow, &mut buf);
    assert!(
        !matches!(read, Err(sal::proto::HostError::Reset)),
        "reset although the peer moved"
    );
    assert_eq!(net.host(a).stats().peers_gone, 0);
    let remote = net.host(a).flow(aflow).and_then(|info| info.remote);
    assert_eq!(remote, Some(loc("10.2.0.2")), "the flow did not follow");
}
