//! SYNs for services a host does not serve, against a host with many
//! listeners, on the deterministic simulator: anyone may send them, knowing
//! nothing, so what one costs must not grow with the host's listeners
//! (every unbound datagram socket has one, see `datagram.rs`).

use std::time::Instant as WallClock;

use sal::proto::HostConfig;
use sal::wire::{ControlFlags, ControlRepr, SalRepr};
use sal::{FlowId, Locator, ServiceId};
use sal_sim::{HostId, LinkConditions, Network};

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

/// A SAL SYN of a datagram flow from flow `n` for a service nobody serves.
fn syn_for_nobody(n: u32) -> Vec<u8> {
    let mut repr = SalRepr::data(FlowId::new(n).unwrap(), None, 17);
    repr.control = Some(ControlRepr {
        flags: ControlFlags::SYN,
        verno: n,
        ackno: 0,
        nonce: [7; 8],
    });
    let mut service = [0xee; 32];
    service[..4].copy_from_slice(&n.to_be_bytes());
    repr.service = Some(ServiceId::from_bytes(service));
    let mut packet = vec![0; repr.header_len()];
    repr.emit(&mut packet).unwrap();
    packet
}

/// Wall-clock time `host` takes to take `syns` SYNs for services it does
/// not serve (each refused, see `handshake.rs`), drained as they go.
fn refusing(net: &mut Network, host: HostId, syns: &[Vec<u8>]) -> std::time::Duration {
    let now = net.now();
    let src = loc("10.0.0.66");
    let dst = net.host(host).interfaces()[0].locator;
    let mut out = vec![0; 2048];
    let start = WallClock::now();
    for syn in syns {
        let host = net.host(host);
        host.handle_packet(now, src, dst, 64, syn);
        while host.poll_transmit(now, &mut out).is_some() {}
    }
    start.elapsed()
}

/// A flood of SYNs for services nobody serves here costs a host with
/// 20,000 open datagram sockets (each an unbound socket's own listener)
/// about what it costs a host with none: before, each such SYN looked at
/// every listener for a drained one whose prefix covers its service.
#[test]
fn a_syn_for_no_service_costs_the_same_beside_many_listeners() {
    let mut net = Network::new(31, LinkConditions::default());
    let config = HostConfig::default();
    let few = net.add_host("few", config.clone(), &[("eth0", "10.0.0.2/24")]);
    let many = net.add_host("many", config, &[("eth0", "10.0.0.3/24")]);
    for _ in 0..20_000 {
        net.host(many).open_datagram().unwrap();
    }
    let syns: Vec<Vec<u8>> = (1..=2_000).map(syn_for_nobody).collect();
    // Once each, to warm up, then measured.
    refusing(&mut net, few, &syns[..200]);
    refusing(&mut net, many, &syns[..200]);
    let baseline = refusing(&mut net, few, &syns);
    let crowded = refusing(&mut net, many, &syns);
    for host in [few, many] {
        assert_eq!(net.host(host).stats().refused, 2_200, "each refused");
    }
    assert!(
        crowded < baseline * 4 + std::time::Duration::from_millis(50),
        "{crowded:?} beside 20,000 listeners, {baseline:?} beside none"
    );
}
