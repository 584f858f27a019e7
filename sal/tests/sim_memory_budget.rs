//! The host-wide budget for TCP buffer memory
//! (`HostConfig::buffer_memory_limit`), on the deterministic simulator.
//!
//! Each stream flow's buffers grow with use up to their maxima (1 MiB each
//! way by default), so N flows whose peers fill the window while their
//! applications do not read hold N MiB, without limit. With a budget, once
//! the host's buffers hold that much, none grows beyond what it holds (one
//! holding nothing may take its first allocation), windows offer only what
//! the storage held can take, and data past it is dropped for the peer to
//! resend, until use falls below 7/8 of the budget. Nothing delivered is
//! ever wrong: when the applications read, every byte arrives, exactly.

use std::cell::RefCell;
use std::rc::Rc;

use sal::proto::{HostConfig, HostError, UNACCEPTED_BUFFER, UNACCEPTED_LISTENER_BUFFER};
use sal::table::ListenerId;
use sal::wire::{SalPacket, TransportProtocol::Stream};
use sal::FlowId;
use sal_sim::{HostId, LinkConditions, Network, Packet};
use smoltcp::time::Duration;
use smoltcp::wire::{IpAddress, TcpPacket};

mod common;
use common::sim::{default_route, establish, pattern, stream};

/// The server's budget: 4 MiB, a quarter of what its idle flows' peers try
/// to park in it.
const BUDGET: usize = 4 << 20;

/// Flows whose applications do not read at first.
const FLOWS: usize = 16;

/// What the client sends on each of them: 1 MiB, a whole window.
const PER_FLOW: usize = 1 << 20;

/// How far past the budget the server's buffers may go. Pressure is
/// decided before each socket is driven, so the drive that crosses the
/// budget may still complete its growth step: at most one buffer's maximum
/// (1 MiB). And under pressure a buffer that holds nothing may still take
/// its first allocation (4 KiB), so that every flow keeps making progress:
/// at most two per flow (the bulk flow included).
fn slack() -> u64 {
    let config = HostConfig::default().stream;
    let step = config.max_recv_buffer.max(config.max_send_buffer);
    (step + (FLOWS + 1) * 2 * config.min_buffer) as u64
}

/// A client (10.0.0.1) and a server (10.0.0.2) with the budget, and a
/// listener for `ab/8` on the server.
fn setup(seed: u64) -> (Network, [HostId; 2], sal::table::ListenerId) {
    let server_config = HostConfig {
        buffer_memory_limit: Some(BUDGET),
        ..HostConfig::default()
    };
    setup_with(seed, server_config)
}

/// As [`setup`], the server built from `server_config`.
fn setup_with(
    seed: u64,
    server_config: HostConfig,
) -> (Network, [HostId; 2], sal::table::ListenerId) {
    let (mut net, [client, server]) = hosts(seed, server_config);
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 64)
        .unwrap();
    (net, [client, server], listener)
}

/// A client (10.0.0.1) and a server (10.0.0.2) built from
/// `server_config`, the client's default route toward the server.
fn hosts(seed: u64, server_config: HostConfig) -> (Network, [HostId; 2]) {
    let mut net = Network::new(seed, LinkConditions::default());
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", server_config, &[("eth0", "10.0.0.2/24")]);
    default_route(&mut net, client, "10.0.0.2");
    (net, [client, server])
}

/// One client-to-server flow that the server's application leaves unread
/// until told otherwise.
struct Parked {
    ends: (FlowId, FlowId),
    data: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
}

impl Parked {
    /// The client's application writes what the flow takes now.
    fn push(&mut self, net: &mut Network, client: HostId) {
        while self.sent < self.data.len() {
            match net.host(client).send(self.ends.0, &self.data[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(HostError::WouldBlock) => break,
                Err(e) => panic!("send failed: {e}"),
            }
        }
    }

    /// The server's application reads what has arrived.
    fn pull(&mut self, net: &mut Network, server: HostId) {
        let mut buf = [0; 65536];
        while let Ok(n) = net.host(server).recv(self.ends.1, &mut buf) {
            if n == 0 {
                break;
            }
            self.received.extend_from_slice(&buf[..n]);
        }
    }
}

/// Runs until every flow's bytes arrived (the client writing, the server
/// reading), within `within`, and checks each arrived exactly.
fn deliver_all(
    net: &mut Network,
    flows: &mut [Parked],
    [client, server]: [HostId; 2],
    within: Duration,
) {
    let done = net.run_until(within, |net| {
        for flow in flows.iter_mut() {
            flow.push(net, client);
            flow.pull(net, server);
        }
        flows.iter().all(|f| f.received.len() == f.data.len())
    });
    assert!(
        done,
        "stalled: {:?} read",
        flows.iter().map(|f| f.received.len()).collect::<Vec<_>>()
    );
    for flow in flows.iter() {
        assert!(flow.received == flow.data, "delivered bytes differ");
    }
}

/// Both ends of every flow close.
fn close_all(net: &mut Network, flows: &[Parked], [client, server]: [HostId; 2]) {
    for flow in flows {
        net.host(client).close(flow.ends.0).unwrap();
        net.host(server).close(flow.ends.1).unwrap();
    }
}

#[test]
fn unread_flows_stay_within_the_budget_and_deliver_every_byte_once_read() {
    let (mut net, [client, server], listener) = setup(31);
    let mut parked: Vec<Parked> = (0..FLOWS)
        .map(|i| Parked {
            ends: establish(&mut net, client, server, listener, "ab".parse().unwrap()),
            data: pattern(PER_FLOW, 100 + i as u64),
            sent: 0,
            received: Vec::new(),
        })
        .collect();

    // The peers fill the windows; the applications do not read. A bulk
    // transfer beside them, read as it comes, completes all the same.
    let (c, s) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let bulk = pattern(2 << 20, 7);
    let mut peak = 0;
    let got = stream(
        &mut net,
        (client, c),
        (server, s),
        &bulk,
        Duration::from_secs(120),
        |net, _| {
            for flow in &mut parked {
                flow.push(net, client);
            }
            peak = peak.max(net.host(server).stats().buffer_bytes);
        },
    );
    assert!(got == bulk, "bulk: delivered bytes differ");
    // Keep pushing for a while: the peers keep trying.
    net.run_until(Duration::from_secs(5), |net| {
        for flow in &mut parked {
            flow.push(net, client);
        }
        peak = peak.max(net.host(server).stats().buffer_bytes);
        false
    });
    let stats = net.host(server).stats();
    eprintln!(
        "budget {BUDGET}: peak {peak} bytes (slack {}), pressure entered {} times, {} segments dropped under it, {} out of order",
        slack(),
        stats.buffer_pressures,
        stats.pressure_dropped,
        stats.ooo_dropped
    );
    assert!(
        peak <= BUDGET as u64 + slack(),
        "{peak} bytes held, budget {BUDGET}"
    );
    assert!(stats.buffer_pressure, "the unread data holds the budget");
    assert!(stats.buffer_pressures >= 1);
    assert!(stats.pressure_dropped > 0, "windows promised before it");
    let unread: usize = parked.iter().map(|f| f.sent).sum();
    assert!(unread > BUDGET, "the peers wrote {unread} bytes");

    // The applications read: every byte arrives, exactly, and the memory
    // goes back.
    let done = net.run_until(Duration::from_secs(300), |net| {
        for flow in &mut parked {
            flow.push(net, client);
            flow.pull(net, server);
        }
        parked.iter().all(|f| f.received.len() == PER_FLOW)
    });
    assert!(
        done,
        "stalled: {:?} of {PER_FLOW} read",
        parked.iter().map(|f| f.received.len()).collect::<Vec<_>>()
    );
    for flow in &parked {
        assert!(flow.received == flow.data, "delivered bytes differ");
    }
    net.run_for(Duration::from_secs(3));
    let stats = net.host(server).stats();
    eprintln!(
        "after reading: {} bytes held, pressure {}",
        stats.buffer_bytes, stats.buffer_pressure
    );
    assert!(!stats.buffer_pressure, "growth resumes");
    assert!(
        stats.buffer_bytes <= ((FLOWS + 1) * 2 * 4096) as u64,
        "{} bytes still held",
        stats.buffer_bytes
    );
}

/// Without a budget (the default), the same unread flows hold what their
/// peers sent: what the budget is for.
#[test]
fn without_a_budget_unread_flows_hold_their_windows() {
    let (mut net, [client, server], listener) = setup_with(32, HostConfig::default());
    let mut parked: Vec<Parked> = (0..FLOWS)
        .map(|i| Parked {
            ends: establish(&mut net, client, server, listener, "ab".parse().unwrap()),
            data: pattern(PER_FLOW, 100 + i as u64),
            sent: 0,
            received: Vec::new(),
        })
        .collect();
    net.run_until(Duration::from_secs(10), |net| {
        for flow in &mut parked {
            flow.push(net, client);
        }
        false
    });
    let held = net.host(server).stats().buffer_bytes;
    assert!(held > 3 * BUDGET as u64, "{held} bytes held");
    assert_eq!(net.host(server).stats().buffer_pressures, 0);
}

/// A data segment moved far ahead of its place (a peer parking bytes at
/// the edge of its window) is refused by the socket's out-of-order rule;
/// the host counts it in `ooo_dropped`, as `servalctl stats` shows.
#[test]
fn far_out_of_order_data_is_counted_in_the_host_stats() {
    let (mut net, [client, server], listener) = setup(33);
    let (c, s) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    // Keep a copy of the client's first data packet.
    let copy: Rc<RefCell<Option<Packet>>> = Rc::default();
    let keep = copy.clone();
    net.set_filter(Some(Box::new(move |p: &Packet| {
        let data = SalPacket::new_checked(&p.payload[..])
            .is_ok_and(|sal| sal.payload().len() > 20 && p.payload.len() > 100);
        if data && keep.borrow().is_none() {
            *keep.borrow_mut() = Some(p.clone());
        }
        false
    })));
    let data = pattern(10_000, 3);
    let got = stream(
        &mut net,
        (client, c),
        (server, s),
        &data,
        Duration::from_secs(30),
        |_, _| {},
    );
    assert!(got == data);
    net.set_filter(None);
    assert_eq!(net.host(server).stats().ooo_dropped, 0);

    // Its segment, 900,000 bytes further on, checksum fixed.
    let mut packet = copy.borrow().clone().expect("a data packet");
    let header = SalPacket::new_checked(&packet.payload[..])
        .unwrap()
        .header_len();
    let (src, dst) = (packet.src.ip(), packet.dst.ip());
    let mut tcp = TcpPacket::new_unchecked(&mut packet.payload[header..]);
    tcp.set_seq_number(tcp.seq_number() + 900_000);
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    net.inject(packet);
    net.run_for(Duration::from_millis(100));
    assert_eq!(net.host(server).stats().ooo_dropped, 1);
}

/// With a budget per group of flows (sald makes one per local user), one
/// group whose flows leave their peers' data unread holds at most its own
/// budget, and only its flows come under pressure: another group's bulk
/// flow beside them grows its buffers as on an idle host.
#[test]
fn one_group_s_unread_flows_leave_the_others_room_to_grow() {
    const GROUP_BUDGET: usize = 1 << 20;
    let (greedy, other) = (1, 2);
    let server_config = HostConfig {
        buffer_memory_limit: Some(BUDGET),
        buffer_memory_group_limit: Some(GROUP_BUDGET),
        ..HostConfig::default()
    };
    let (mut net, [client, server]) = hosts(33, server_config);
    let listen = |net: &mut Network, prefix: &str, group: u32| {
        let host = net.host(server);
        let listener = host.listen(prefix.parse().unwrap(), Stream, 64).unwrap();
        host.set_listener_group(listener, group).unwrap();
        listener
    };
    let parking = listen(&mut net, "ab/8", greedy);
    let serving = listen(&mut net, "cd/8", other);
    let mut parked: Vec<Parked> = (0..FLOWS)
        .map(|i| Parked {
            ends: establish(&mut net, client, server, parking, "ab".parse().unwrap()),
            data: pattern(PER_FLOW, 200 + i as u64),
            sent: 0,
            received: Vec::new(),
        })
        .collect();
    let (c, s) = establish(&mut net, client, server, serving, "cd".parse().unwrap());
    let bulk = pattern(4 << 20, 9);
    let (mut greedy_peak, mut other_peak, mut host_pressure) = (0, 0, false);
    let got = stream(
        &mut net,
        (client, c),
        (server, s),
        &bulk,
        Duration::from_secs(120),
        |net, _| {
            for flow in &mut parked {
                flow.push(net, client);
            }
            let host = net.host(server);
            greedy_peak = greedy_peak.max(host.group_buffer_bytes(greedy));
            other_peak = other_peak.max(host.group_buffer_bytes(other));
            host_pressure |= host.stats().buffer_pressure;
        },
    );
    assert!(got == bulk, "bulk: delivered bytes differ");
    let stats = net.host(server).stats();
    eprintln!(
        "group budget {GROUP_BUDGET}: greedy peak {greedy_peak} (slack {}), other's bulk flow peak {other_peak}, \
         group pressure entered {} times, host pressure {host_pressure}",
        slack(),
        stats.group_buffer_pressures
    );
    assert!(
        greedy_peak <= GROUP_BUDGET as u64 + slack(),
        "{greedy_peak} bytes held by one group, its budget {GROUP_BUDGET}"
    );
    assert!(stats.group_buffer_pressures >= 1);
    assert!(!host_pressure, "the host stayed within its own budget");
    // Under pressure its buffers would have stayed at their first
    // allocations (4 KiB each way); it grew as this path needs.
    assert!(
        other_peak >= 64 << 10,
        "the other group's flow grew to {other_peak}"
    );
    let unread: usize = parked.iter().map(|f| f.sent).sum();
    assert!(unread > GROUP_BUDGET, "the peers wrote {unread} bytes");

    // A flow moved to another group takes what it holds along.
    let (moved, before) = (
        parked[0].ends.1,
        net.host(server).group_buffer_bytes(greedy),
    );
    net.host(server).set_flow_group(moved, 3).unwrap();
    let taken = net.host(server).group_buffer_bytes(3);
    assert!(taken > 0);
    assert_eq!(net.host(server).group_buffer_bytes(greedy), before - taken);

    // Every byte still arrives, exactly, once read; the groups empty.
    deliver_all(
        &mut net,
        &mut parked,
        [client, server],
        Duration::from_secs(300),
    );
    close_all(&mut net, &parked, [client, server]);
    net.run_for(Duration::from_secs(5));
    let host = net.host(server);
    assert!(host.group_buffer_bytes(greedy) <= (FLOWS * 2 * 4096) as u64);
    assert!(host.group_buffer_bytes(3) <= 2 * 4096);
}

/// A server flow its application has not accepted yet holds little: its
/// buffers stop growing at `UNACCEPTED_BUFFER`, so a remote peer that
/// opens flows to a listener and fills them cannot park its windows'
/// worth in each (1 MiB) before anyone has taken them. Once accepted,
/// they grow as any flow and every byte arrives.
#[test]
fn flows_nobody_accepted_hold_little_until_accepted() {
    let (mut net, [client, server], listener) = setup_with(34, HostConfig::default());
    let service = "ab".parse().unwrap();
    let clients: Vec<FlowId> = (0..FLOWS)
        .map(|_| net.host(client).connect(service, Stream).unwrap())
        .collect();
    let mut parked: Vec<Parked> = Vec::new();
    let opened = net.run_until(Duration::from_secs(10), |net| {
        clients.iter().all(|&c| {
            net.sim_host(client)
                .events
                .contains(&sal::proto::Event::Connected(c))
        })
    });
    assert!(opened, "handshakes");
    for (i, &c) in clients.iter().enumerate() {
        parked.push(Parked {
            ends: (c, c), // the server's end is known once accepted
            data: pattern(PER_FLOW, 300 + i as u64),
            sent: 0,
            received: Vec::new(),
        });
    }
    let mut peak = 0;
    net.run_until(Duration::from_secs(20), |net| {
        for flow in &mut parked {
            flow.push(net, client);
        }
        peak = peak.max(net.host(server).stats().buffer_bytes);
        false
    });
    let per_flow = peak / FLOWS as u64;
    eprintln!("{FLOWS} flows nobody accepted: peak {peak} bytes, {per_flow} per flow");
    // At the cap, its last growth step may double it once.
    assert!(
        per_flow <= 2 * UNACCEPTED_BUFFER as u64 + 8192,
        "{per_flow} bytes per flow nobody accepted"
    );
    // Accepted (in the order they were established: each server end is
    // paired with its client by the peer's flow ID), each grows and
    // delivers every byte.
    for _ in 0..FLOWS {
        let accepted = net.host(server).accept(listener).unwrap();
        let peer = net.host(server).flow(accepted).unwrap().peer_flow.unwrap();
        let flow = parked.iter_mut().find(|f| f.ends.0 == peer).unwrap();
        flow.ends.1 = accepted;
    }
    deliver_all(
        &mut net,
        &mut parked,
        [client, server],
        Duration::from_secs(300),
    );
}

/// The group budget of the attack below: 2 MiB.
const ATTACK_GROUP_BUDGET: usize = 2 << 20;

/// A remote peer's flows to a user's listener that nobody accepts: 96,
/// each of which may park `UNACCEPTED_BUFFER` (64 KiB): 6 MiB, three times
/// the group's budget.
const ATTACKERS: usize = 96;

/// What [`bulk_beside_unaccepted_flows`] saw.
struct AttackRun {
    /// How long the user's bulk transfer took (virtual time).
    bulk_time: Duration,
    /// Times the user's group came under pressure.
    group_pressures: u64,
    /// Times the listener's flows nobody accepted came under pressure.
    listener_pressures: u64,
    /// Whether the host came under pressure.
    host_pressure: bool,
    /// The most the flows nobody accepted held together.
    unaccepted_peak: u64,
}

/// How far past [`UNACCEPTED_LISTENER_BUFFER`] a listener's `flows`
/// nobody accepted may go: the drive that crosses the bound may complete
/// one growth step, of a flow below `UNACCEPTED_BUFFER`, and under
/// pressure each flow direction that held nothing may take its first
/// allocation.
fn unaccepted_slack(flows: usize) -> u64 {
    let config = HostConfig::default().stream;
    (UNACCEPTED_BUFFER + flows * 2 * config.min_buffer) as u64
}

/// A user's listener (group 1, group budget [`ATTACK_GROUP_BUDGET`]) with
/// one flow its application accepted, and `attackers` flows another host
/// opened to it and keeps filling, which nobody accepts; once they are
/// full, the accepted flow carries 4 MiB, read as they come.
fn bulk_beside_unaccepted_flows(seed: u64, attackers: usize) -> AttackRun {
    let server_config = HostConfig {
        buffer_memory_limit: Some(64 << 20),
        buffer_memory_group_limit: Some(ATTACK_GROUP_BUDGET),
        ..HostConfig::default()
    };
    let (mut net, [client, server]) = hosts(seed, server_config);
    let attacker = net.add_host(
        "attacker",
        HostConfig::default(),
        &[("eth0", "10.0.0.3/24")],
    );
    default_route(&mut net, attacker, "10.0.0.2");
    let service = "ab".parse().unwrap();
    let listener = {
        let host = net.host(server);
        let listener = host.listen("ab/8".parse().unwrap(), Stream, 256).unwrap();
        host.set_listener_group(listener, 1).unwrap();
        listener
    };
    let (c, s) = establish(&mut net, client, server, listener, service);
    let flows: Vec<FlowId> = (0..attackers)
        .map(|_| net.host(attacker).connect(service, Stream).unwrap())
        .collect();
    let opened = net.run_until(Duration::from_secs(10), |net| {
        let events = &net.sim_host(attacker).events;
        flows
            .iter()
            .all(|&f| events.contains(&sal::proto::Event::Connected(f)))
    });
    assert!(opened, "the attacker's handshakes");
    let mut parked: Vec<Parked> = (flows.iter().enumerate())
        .map(|(i, &f)| Parked {
            ends: (f, f),
            data: pattern(256 << 10, 400 + i as u64),
            sent: 0,
            received: Vec::new(),
        })
        .collect();
    let mut unaccepted_peak = 0;
    let mut look = |net: &mut Network, parked: &mut [Parked]| {
        for flow in parked.iter_mut() {
            flow.push(net, attacker);
        }
        let host = net.host(server);
        let unaccepted = host.stats().buffer_bytes - host.group_buffer_bytes(1);
        unaccepted_peak = unaccepted_peak.max(unaccepted);
    };
    net.run_until(Duration::from_secs(5), |net| {
        look(net, &mut parked);
        false
    });
    let bulk = pattern(4 << 20, 11);
    let start = net.now();
    let got = stream(
        &mut net,
        (client, c),
        (server, s),
        &bulk,
        Duration::from_secs(120),
        |net, _| look(net, &mut parked),
    );
    let bulk_time = net.now() - start;
    assert!(got == bulk, "bulk: delivered bytes differ");
    let stats = net.host(server).stats();
    AttackRun {
        bulk_time,
        group_pressures: stats.group_buffer_pressures,
        listener_pressures: stats.unaccepted_buffer_pressures,
        host_pressure: stats.buffer_pressures > 0,
        unaccepted_peak,
    }
}

/// Flows nobody accepted cannot put their user's accepted flows under
/// pressure: a remote peer that opens as many flows to a user's listener
/// as its backlog admits and fills each to `UNACCEPTED_BUFFER` held the
/// user's whole group budget with them (4096 x 64 KiB is 256 MiB, sald's
/// default per user), and the user's real clients' transfers ran on
/// `min_buffer`-sized windows. Their memory counts against their
/// listener's own bound instead, and moves to the group on accept.
#[test]
fn flows_nobody_accepted_do_not_press_their_user_s_accepted_flows() {
    let alone = bulk_beside_unaccepted_flows(35, 0);
    let attacked = bulk_beside_unaccepted_flows(35, ATTACKERS);
    eprintln!(
        "bulk alone {:?}, beside {ATTACKERS} flows nobody accepted {:?} (they held {} bytes at most); \
         group pressure entered {} times",
        alone.bulk_time, attacked.bulk_time, attacked.unaccepted_peak, attacked.group_pressures
    );
    assert_eq!(attacked.group_pressures, 0, "the user's group was pressed");
    assert!(
        attacked.bulk_time.total_millis() * 4 <= alone.bulk_time.total_millis() * 5,
        "the user's bulk took {:?} beside the attack, {:?} alone",
        attacked.bulk_time,
        alone.bulk_time
    );
    assert!(
        !attacked.host_pressure,
        "the host's budget is not the point"
    );
    // They held more than the group's budget, within their listener's.
    assert!(
        attacked.unaccepted_peak > ATTACK_GROUP_BUDGET as u64,
        "{} bytes held by flows nobody accepted",
        attacked.unaccepted_peak
    );
    assert!(attacked.listener_pressures >= 1, "they reached their bound");
    let slack = unaccepted_slack(ATTACKERS);
    assert!(
        attacked.unaccepted_peak <= UNACCEPTED_LISTENER_BUFFER as u64 + slack,
        "{} bytes held by one listener's flows nobody accepted (slack {slack})",
        attacked.unaccepted_peak
    );
}

/// A stream listener for `prefix` on `server`, its flows in group 1.
fn listen_in_group_1(net: &mut Network, server: HostId, prefix: &str) -> sal::table::ListenerId {
    let host = net.host(server);
    let listener = host.listen(prefix.parse().unwrap(), Stream, 512).unwrap();
    host.set_listener_group(listener, 1).unwrap();
    listener
}

/// `count` flows from `client` to `service`, each of which writes its
/// request (a pattern `len(i)` bytes long, from `seed + i`) and ends its
/// sending once all of it is written; runs until all are written, or for
/// 2 s: a flow nobody accepted offers a window of [`UNACCEPTED_BUFFER`],
/// so the rest of a larger request waits in its client, for
/// [`deliver_all`] to write. Nobody on the server accepts them.
fn requests(
    net: &mut Network,
    client: HostId,
    service: &str,
    count: usize,
    (len, seed): (impl Fn(usize) -> usize, u64),
) -> Vec<Parked> {
    let service = service.parse().unwrap();
    let mut requests: Vec<Parked> = (0..count)
        .map(|i| Parked {
            ends: {
                let flow = net.host(client).connect(service, Stream).unwrap();
                (flow, flow) // the server's end is known once accepted
            },
            data: pattern(len(i), seed + i as u64),
            sent: 0,
            received: Vec::new(),
        })
        .collect();
    let mut shut = vec![false; count];
    net.run_until(Duration::from_secs(2), |net| {
        for (flow, shut) in requests.iter_mut().zip(&mut shut) {
            flow.push(net, client);
            if flow.sent == flow.data.len() && !*shut {
                net.host(client).shutdown(flow.ends.0).unwrap();
                *shut = true;
            }
        }
        shut.iter().all(|&s| s)
    });
    requests
}

/// Accepts as many flows from `listener` as there are `requests`, pairing
/// each server end with its client by the peer's flow ID.
fn accept_all(net: &mut Network, server: HostId, listener: ListenerId, requests: &mut [Parked]) {
    for _ in 0..requests.len() {
        let accepted = net.host(server).accept(listener).unwrap();
        let peer = net.host(server).flow(accepted).unwrap().peer_flow.unwrap();
        let flow = (requests.iter_mut()).find(|f| f.ends.0 == peer).unwrap();
        flow.ends.1 = accepted;
    }
}

/// A burst of clients to a server slow to accept, each sending its first
/// request right after the handshake: flows that already fill their
/// listener's bound for flows nobody accepted do not keep the requests of
/// those that come next out. Each newcomer's request (a few KiB, as most
/// are) waits whole in its first allocation, each larger one has at
/// least that much of it waiting, and once accepted every byte of every
/// request arrives. What they hold counts against the listener until
/// accepted, then against the group, and all of it is given back once
/// they close.
#[test]
fn a_burst_s_first_requests_wait_for_the_accept_and_arrive_whole() {
    let min_buffer = HostConfig::default().stream.min_buffer;
    let (mut net, [client, server]) = hosts(36, HostConfig::default());
    let listener = listen_in_group_1(&mut net, server, "ab/8");
    // First, large requests that fill the listener's bound (72 of
    // 100 KiB: 4.5 MiB wanted, at most 64 KiB each held).
    let mut burst = requests(&mut net, client, "ab", 72, (|_| 100 << 10, 600));
    net.run_for(Duration::from_secs(2));
    let host = net.host(server);
    let held = host.unaccepted_buffer_bytes(listener);
    assert!(held >= UNACCEPTED_LISTENER_BUFFER as u64, "{held} held");
    assert!(host.stats().unaccepted_buffer_pressures >= 1);
    // Then a burst of small ones (300 bytes to 4 KiB), and some more
    // large ones, while the bound is held.
    let len = |i: usize| match i % 4 {
        0 => 100 << 10,
        _ => 300 + (i * 397) % (min_buffer - 300),
    };
    burst.extend(requests(&mut net, client, "ab", 128, (len, 700)));
    net.run_for(Duration::from_secs(2));
    let host = net.host(server);
    let held = host.unaccepted_buffer_bytes(listener);
    let slack = unaccepted_slack(burst.len());
    eprintln!("{} requests nobody accepted hold {held} bytes", burst.len());
    assert!(
        held <= UNACCEPTED_LISTENER_BUFFER as u64 + slack,
        "{held} held"
    );
    assert_eq!(host.stats().buffer_bytes, held, "no other flow holds any");
    assert_eq!(host.group_buffer_bytes(1), 0, "nothing accepted yet");

    // Accepted, their memory moves to the group, all of it.
    accept_all(&mut net, server, listener, &mut burst);
    let host = net.host(server);
    assert_eq!(host.unaccepted_buffer_bytes(listener), 0);
    assert_eq!(host.group_buffer_bytes(1), held);
    // What waited before the accept: the whole of each small request, at
    // least a first allocation of each large one (but for the window's
    // truncation to the scale's unit, 32 bytes at a 1 MiB buffer).
    for flow in &mut burst {
        flow.pull(&mut net, server);
        let waited = flow.received.len();
        let whole = flow.data.len();
        assert!(
            waited >= whole.min(min_buffer - 32),
            "{waited} of a {whole}-byte request waited for the accept"
        );
    }
    // And then every byte.
    deliver_all(
        &mut net,
        &mut burst,
        [client, server],
        Duration::from_secs(60),
    );

    // Closed, they give everything back.
    close_all(&mut net, &burst, [client, server]);
    net.run_for(Duration::from_secs(5));
    let host = net.host(server);
    assert_eq!(host.stats().buffer_bytes, 0);
    assert_eq!(host.group_buffer_bytes(1), 0);
    assert_eq!(host.unaccepted_buffer_bytes(listener), 0);
}

/// A listener closed with flows nobody accepted, holding what their
/// clients sent, resets them; what they held is given back, to the host
/// and to the listener's total, though the listener is gone.
#[test]
fn a_listener_closed_with_flows_nobody_accepted_leaves_nothing_held() {
    let (mut net, [client, server]) = hosts(37, HostConfig::default());
    let listener = listen_in_group_1(&mut net, server, "ab/8");
    let parked = requests(&mut net, client, "ab", 80, (|_| 100 << 10, 800));
    net.run_for(Duration::from_secs(2));
    let host = net.host(server);
    let held = host.unaccepted_buffer_bytes(listener);
    assert!(held >= UNACCEPTED_LISTENER_BUFFER as u64, "{held} held");
    assert_eq!(host.stats().buffer_bytes, held);
    host.close_listener(listener).unwrap();
    net.run_for(Duration::from_secs(1));
    let host = net.host(server);
    assert_eq!(host.stats().buffer_bytes, 0);
    assert_eq!(host.unaccepted_buffer_bytes(listener), 0);
    assert_eq!(host.group_buffer_bytes(1), 0);
    assert_eq!(host.flow_count(), 0, "they were reset and forgotten");
    // Their clients heard the reset.
    let mut buf = [0; 16];
    for flow in &parked {
        assert_eq!(
            net.host(client).recv(flow.ends.0, &mut buf),
            Err(HostError::Reset)
        );
    }
}

/// Every path by which a flow's charge changes or its memory goes (SYN
/// cookies, a group set before the accept, a flow reset by its client
/// before the accept, one accepted after it was reset) gives everything
/// back.
#[test]
fn every_charge_path_gives_its_memory_back() {
    let config = HostConfig {
        syn_cookies: sal::proto::SynCookies::Always,
        ..HostConfig::default()
    };
    let (mut net, [client, server]) = hosts(41, config);
    let listener = listen_in_group_1(&mut net, server, "ab/8");
    let parked = requests(&mut net, client, "ab", 80, (|_| 100 << 10, 900));
    net.run_for(Duration::from_secs(2));
    let host = net.host(server);
    assert!(
        host.stats().cookies_accepted >= 80,
        "{:?}",
        host.stats().cookies_accepted
    );
    let held = host.unaccepted_buffer_bytes(listener);
    assert!(held >= UNACCEPTED_LISTENER_BUFFER as u64, "{held}");
    assert_eq!(host.stats().buffer_bytes, held);
    // A group set before the accept: still the listener's.
    let ids: Vec<FlowId> = host.flow_ids().collect();
    for id in ids.iter().take(20) {
        host.set_flow_group(*id, 2).unwrap();
    }
    assert_eq!(host.unaccepted_buffer_bytes(listener), held);
    assert_eq!(host.group_buffer_bytes(2), 0);
    // Ten clients reset their flows before the accept.
    for flow in parked.iter().take(10) {
        net.host(client).abort(flow.ends.0).unwrap();
        net.host(client).close(flow.ends.0).unwrap();
    }
    net.run_for(Duration::from_millis(50));
    // Accept all (the reset ones still queued are accepted too).
    let mut accepted = Vec::new();
    while let Ok(id) = net.host(server).accept(listener) {
        accepted.push(id);
    }
    let host = net.host(server);
    assert_eq!(host.unaccepted_buffer_bytes(listener), 0);
    assert_eq!(
        host.group_buffer_bytes(1) + host.group_buffer_bytes(2),
        host.stats().buffer_bytes
    );
    for id in &accepted {
        let _ = net.host(server).close(*id);
    }
    for flow in parked.iter().skip(10) {
        let _ = net.host(client).close(flow.ends.0);
    }
    net.run_for(Duration::from_secs(90));
    let host = net.host(server);
    assert_eq!(host.stats().buffer_bytes, 0);
    assert_eq!(host.unaccepted_buffer_bytes(listener), 0);
    assert_eq!(host.group_buffer_bytes(1), 0);
    assert_eq!(host.group_buffer_bytes(2), 0);
}

/// A flow taken from its listener to be handed on through a queue of the
/// driver's (sald's `Deliver`) is still nobody's until the driver says the
/// application has it (`Host::accepted`): it grows no further than one
/// still in the backlog and counts against its listener, not its group;
/// then it grows as any accepted flow, its memory moves to the group, and
/// every byte arrives.
#[test]
fn a_flow_taken_to_be_handed_on_is_nobody_s_until_accepted() {
    let (mut net, [client, server]) = hosts(38, HostConfig::default());
    let listener = listen_in_group_1(&mut net, server, "ab/8");
    let service = "ab".parse().unwrap();
    let c = net.host(client).connect(service, Stream).unwrap();
    let mut taken = None;
    net.run_until(Duration::from_secs(10), |net| {
        taken = net.host(server).take(listener).ok();
        taken.is_some()
    });
    let s = taken.expect("the handshake");
    assert_eq!(net.host(server).listener_pending(listener), Some(0));
    let mut flow = Parked {
        ends: (c, s),
        data: pattern(4 << 20, 900),
        sent: 0,
        received: Vec::new(),
    };
    let mut peak = 0;
    net.run_until(Duration::from_secs(5), |net| {
        flow.push(net, client);
        peak = peak.max(net.host(server).stats().buffer_bytes);
        false
    });
    let host = net.host(server);
    let held = host.unaccepted_buffer_bytes(listener);
    assert!(held > 0, "it holds what its client sent");
    assert_eq!(host.stats().unaccepted_buffer_bytes, held);
    assert_eq!(host.group_buffer_bytes(1), 0, "not its group's yet");
    assert!(
        peak <= 2 * UNACCEPTED_BUFFER as u64 + 8192,
        "{peak} bytes held by a flow nobody accepted"
    );

    net.host(server).accepted(s).unwrap();
    let host = net.host(server);
    assert_eq!(host.unaccepted_buffer_bytes(listener), 0);
    assert_eq!(host.stats().unaccepted_buffer_bytes, 0);
    assert_eq!(host.group_buffer_bytes(1), held, "moved to its group");
    // Said again, nothing changes.
    host.accepted(s).unwrap();
    assert_eq!(host.group_buffer_bytes(1), held);
    // It grows now while its application does not read yet.
    net.run_until(Duration::from_secs(5), |net| {
        flow.push(net, client);
        peak = peak.max(net.host(server).stats().buffer_bytes);
        false
    });
    assert!(
        peak > 4 * UNACCEPTED_BUFFER as u64,
        "{peak} bytes at most once accepted"
    );
    let done = net.run_until(Duration::from_secs(60), |net| {
        flow.push(net, client);
        flow.pull(net, server);
        flow.received.len() == flow.data.len()
    });
    assert!(done, "stalled");
    assert!(flow.received == flow.data, "delivered bytes differ");
}

/// A flow nobody has accepted offers its peer no more window than it may
/// hold ([`UNACCEPTED_BUFFER`]): the peer sends that much ahead of the
/// accept and waits, instead of sending its whole upload for most of it to
/// be dropped (and sent again once a retransmission timeout passed).
#[test]
fn a_flow_nobody_accepted_offers_only_the_window_it_may_hold() {
    let (mut net, [client, server]) = hosts(37, HostConfig::default());
    let listener = listen_in_group_1(&mut net, server, "ab/8");
    let flow = net
        .host(client)
        .connect("ab".parse().unwrap(), Stream)
        .unwrap();
    let mut upload = [Parked {
        ends: (flow, flow),
        data: pattern(1 << 20, 800),
        sent: 0,
        received: Vec::new(),
    }];
    let _ = net.run_until(Duration::from_secs(3), |net| {
        upload[0].push(net, client);
        false
    });
    let stats = net.host(server).stats();
    eprintln!(
        "before the accept: {} pressure drops, {} out of order, {} bytes held",
        stats.pressure_dropped,
        stats.ooo_dropped,
        net.host(server).unaccepted_buffer_bytes(listener)
    );
    assert_eq!(stats.pressure_dropped, 0, "data sent past what it may hold");
    assert_eq!(stats.ooo_dropped, 0);
    accept_all(&mut net, server, listener, &mut upload);
    let started = net.now();
    deliver_all(
        &mut net,
        &mut upload,
        [client, server],
        Duration::from_secs(30),
    );
    let took = net.now() - started;
    eprintln!("the rest arrived {took} after the accept");
    assert!(took < Duration::from_millis(500), "{took}");
}
