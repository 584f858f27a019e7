//! A SYN that comes back undeliverable (`Host::handle_unreachable`: an
//! ICMP port unreachable on a UDP link, quoting the SYN) fails its connect
//! as refused at once, as kernel TCP's connect to a closed port does; a
//! report that does not name the connect's own SYN (another flow, another
//! nonce, another hop, an old SYN, a cut header) changes nothing.

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
