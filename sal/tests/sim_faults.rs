//! Stream transfers through composed fault paths: a bottleneck link with a
//! queue, propagation delay, reordering, duplication, and a partition in
//! the middle of the transfer. Every transfer is checked byte for byte.

use std::net::Ipv4Addr;

use sal::proto::HostConfig;
use sal::wire::TransportProtocol::Stream;
use sal::Locator;
use sal_sim::{
    Delay, Duplicate, Jitter, LinkConditions, Network, Partition, PartitionSwitch, Path, RateLimit,
};
use smoltcp::time::{Duration, Instant};

mod common;
use common::sim::{default_route, establish, pattern, stream};

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

/// Bytes per second of the bottleneck: 2 MB/s (16 Mbit/s).
const RATE: u64 = 2_000_000;

/// A bottleneck link (64 KB queue), 10 ms of propagation, up to 2 ms of
/// jitter, 1 % duplication, then `partition`.
fn faulty(partition: Partition) -> Path {
    Path::new()
        .then(RateLimit::new(RATE, 64 * 1024))
        .then(Delay::new(ms(10)))
        .then(Jitter::new(ms(2)))
        .then(Duplicate::new(0.01))
        .then(partition)
}

#[test]
fn a_transfer_survives_a_partition_on_a_slow_reordering_duplicating_link() {
    let mut net = Network::new(31, LinkConditions::default());
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", HostConfig::default(), &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    // The link is cut both ways from 1 s to 2.5 s of virtual time: after
    // the handshake, in the middle of the transfer.
    let (cut, healed) = (Instant::from_millis(1000), Instant::from_millis(2500));
    for (src, dst) in [("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")] {
        net.set_path(ip(src), ip(dst), faulty(Partition::during(cut, healed)));
    }
    let listener = net
        .host(server)
        .listen("5107/16".parse().unwrap(), Stream, 4)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, "5107".parse().unwrap());
    let start = net.now();
    assert!(start < cut, "the handshake ends before the cut");

    let data = pattern(3 << 20, 21);
    let mut received_at_cut = None;
    let got = stream(
        &mut net,
        (client, cflow),
        (server, sflow),
        &data,
        Duration::from_secs(120),
        |net, received| {
            if received_at_cut.is_none() && net.now() >= cut {
                received_at_cut = Some(received);
            }
        },
    );
    assert!(got == data, "received bytes differ");
    let received_at_cut = received_at_cut.expect("the transfer ran into the cut");
    assert!(
        received_at_cut > 0 && received_at_cut < data.len(),
        "cut mid-transfer: {received_at_cut} bytes by then"
    );
    let elapsed = net.now() - start;
    let at_line_rate = Duration::from_micros(data.len() as u64 * 1_000_000 / RATE);
    assert!(
        elapsed >= at_line_rate + (healed - cut),
        "took {elapsed}: faster than the bottleneck allows around the cut"
    );
    assert!(net.now() > healed);
    let stats = net.stats;
    assert!(stats.partitioned > 0, "{stats:?}");
    assert!(stats.duplicated > 0, "{stats:?}");
    // The flow stayed where it was: there was nowhere else to go.
    assert_eq!(
        net.host(server).flow(sflow).unwrap().remote,
        Some(loc("10.0.0.1"))
    );
}

#[test]
fn a_flow_leaves_a_path_cut_until_further_notice() {
    // The default liveness timeout (1.5 s) outlasts one stall of TCP's
    // retransmission timeout, which the reordering below can cause
    // (smoltcp reassembles around only a few holes): only the cut is a
    // dead path.
    let config = HostConfig::default();
    let mut net = Network::new(32, LinkConditions::default());
    let client = net.add_host(
        "client",
        config.clone(),
        &[("wlan", "10.0.0.1/24"), ("cell", "10.1.0.1/24")],
    );
    let server = net.add_host("server", config, &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    // Wi-Fi: delay, reordering and duplication, cut by the test; no
    // bottleneck (its tail drops would add more such stalls). Cellular:
    // the default path.
    let switch = PartitionSwitch::new();
    for (src, dst) in [("10.0.0.1", "10.0.0.2"), ("10.0.0.2", "10.0.0.1")] {
        let wifi = Path::new()
            .then(Delay::new(ms(10)))
            .then(Jitter::new(ms(2)))
            .then(Duplicate::new(0.01))
            .then(Partition::switched(&switch));
        net.set_path(ip(src), ip(dst), wifi);
    }
    let listener = net
        .host(server)
        .listen("5108/16".parse().unwrap(), Stream, 4)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, "5108".parse().unwrap());

    let data = pattern(4 << 20, 22);
    let mut moved_before_cut = None;
    let got = stream(
        &mut net,
        (client, cflow),
        (server, sflow),
        &data,
        Duration::from_secs(60),
        |net, received| {
            if received > 1 << 20 && !switch.is_cut() {
                moved_before_cut = Some(net.host(client).flow(cflow).unwrap().migrations);
                switch.cut();
            }
        },
    );
    assert_eq!(moved_before_cut, Some(0), "on Wi-Fi until the cut");
    assert!(got == data, "received bytes differ");
    assert!(switch.is_cut(), "the transfer outlived the cut");
    assert!(net.stats.partitioned > 0);
    let info = net.host(client).flow(cflow).unwrap();
    assert_eq!(
        (info.interface.as_deref(), info.migrations),
        (Some("cell"), 1),
        "moved once, off the cut path"
    );
    assert_eq!(
        net.host(server).flow(sflow).unwrap().remote,
        Some(loc("10.1.0.1"))
    );
}
