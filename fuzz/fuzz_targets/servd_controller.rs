//! Fuzzes servd's controller with whatever its peers can send: a router
//! (with an upstream, so that it also aggregates and re-announces) and a
//! host each get every datagram, with time moving on between them, and
//! their outputs are drained. Nothing may panic, and the router's table
//! stays within the policy's per-sender bound.
//!
//! Input: records of `[source host: u8][clock step, 10 ms: u8][length: u16
//! little-endian][JSON body]`; each body gets a valid untagged version-2
//! header, so the fuzzer works on the messages, not on the framing (the
//! `servd_wire` target covers that).

#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use controller::servd::policy::Policy;
use controller::servd::{Config, Controller, DefaultRoute};
use libfuzzer_sys::fuzz_target;
use sal::proto::LocalInterface;
use sal::table::{ListenerId, Rule, ServiceTable, Target};
use sal_control::ControlEvent;

fn interface(last: u8) -> LocalInterface {
    LocalInterface {
        name: "eth0".into(),
        locator: sal::Locator::Ipv4(Ipv4Addr::new(10, 0, 0, last)),
        prefix_len: 24,
        up: true,
    }
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 54326))
}

fn controller(config: Config, last: u8, now: Instant, rules: &[Rule]) -> Controller {
    let mut controller = Controller::new(config, now, u64::from(last));
    controller.set_unix_time(now, 1_700_000_000_000);
    controller.sald_connected(now, vec![interface(last)], rules);
    controller
}

const MAX_PER_SENDER: usize = 64;

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut table = ServiceTable::new();
    table.add(
        "beef/16".parse().unwrap(),
        Target::Demux {
            listener: ListenerId(1),
        },
        0,
    );
    table.add(
        "cafe/16".parse().unwrap(),
        Target::Forward {
            locator: "10.0.0.9".parse().unwrap(),
            weight: 1,
        },
        3,
    );
    let rules: Vec<Rule> = table.rules().cloned().collect();
    let policy = Policy {
        max_prefixes_per_sender: MAX_PER_SENDER,
        ..Policy::default()
    };
    let router = Config {
        name: "router".into(),
        router: true,
        upstreams: vec![addr(100)],
        aggregates: vec!["be00/8".parse().unwrap()],
        policy: policy.clone(),
        lease: Duration::from_secs(2),
        refresh: Duration::from_millis(500),
        ..Config::default()
    };
    let host = Config {
        name: "host".into(),
        upstreams: vec![addr(1)],
        default_route: DefaultRoute::Delay,
        lease: Duration::from_secs(2),
        refresh: Duration::from_millis(500),
        ..Config::default()
    };
    let mut nodes = [
        controller(router, 1, now, &rules),
        controller(host, 2, now, &rules),
    ];
    nodes[1].handle_local_event(
        now,
        ControlEvent::DelayNotify {
            service: "beef01".parse().unwrap(),
            connect: false,
            uid: None,
        },
    );

    let mut rest = data;
    let mut senders = std::collections::HashSet::new();
    while let Some((header, tail)) = rest.split_first_chunk::<4>() {
        let len = usize::from(u16::from_le_bytes([header[2], header[3]])).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_millis(u64::from(header[1]) * 10);
        let src = addr(header[0]);
        senders.insert(header[0]);
        let mut datagram = b"SRVD\x02\x00".to_vec();
        datagram.extend_from_slice(body);
        for node in &mut nodes {
            node.handle_message(now, src, &datagram);
            node.handle_timeout(now);
            while node.poll_transmit().is_some() {}
            while node.poll_action().is_some() {}
            let _ = node.poll_timeout();
        }
    }
    assert!(nodes[0].learned_entries() <= senders.len() * MAX_PER_SENDER);
    for node in &mut nodes {
        node.sald_lost(now);
        node.sald_connected(now, vec![interface(1)], &rules);
        node.shutdown(now + Duration::from_secs(3600));
        while node.poll_transmit().is_some() {}
        while node.poll_action().is_some() {}
    }
});
