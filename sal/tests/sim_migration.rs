//! Flow migration (RSYN) on the deterministic simulator: manual and automatic
//! moves, lost control messages, both ends moving at once, a FIN during a
//! move, spoofed RSYNs, and many moves during one transfer. Every transfer is
//! checked byte for byte.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::proto::{Event, HostConfig, HostError};
use sal::table::ListenerId;
use sal::wire::{ControlFlags, ControlRepr, SalPacket, SalRepr, TransportProtocol::Stream};
use sal::{FlowId, Locator};
use sal_sim::{HostId, LinkConditions, Network};
use smoltcp::time::Duration;

mod common;
use common::sim::{default_route, establish, pattern};

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// A dual-homed client (wlan 10.0.0.1, cell 10.1.0.1) and a dual-homed
/// server (eth0 10.0.0.2, eth1 10.2.0.2), with one established stream flow.
struct Pair {
    net: Network,
    client: HostId,
    server: HostId,
    cflow: FlowId,
    sflow: FlowId,
}

fn pair(config: HostConfig, conditions: LinkConditions) -> Pair {
    pair_with(
        config,
        conditions,
        &[
            ("wlan", "10.0.0.1/24"),
            ("cell", "10.1.0.1/24"),
            ("usb", "10.3.0.1/24"),
        ],
        &[("eth0", "10.0.0.2/24"), ("eth1", "10.2.0.2/24")],
    )
}

/// Like [`pair`], with the given interfaces (the first of each must be
/// 10.0.0.1 and 10.0.0.2).
fn pair_with(
    config: HostConfig,
    conditions: LinkConditions,
    client_ifaces: &[(&str, &str)],
    server_ifaces: &[(&str, &str)],
) -> Pair {
    let (mut net, client, server, listener) =
        unconnected(config, conditions, client_ifaces, server_ifaces);
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    Pair {
        net,
        client,
        server,
        cflow,
        sflow,
    }
}

/// The hosts of [`pair_with`], the server listening, nothing connected yet.
fn unconnected(
    config: HostConfig,
    conditions: LinkConditions,
    client_ifaces: &[(&str, &str)],
    server_ifaces: &[(&str, &str)],
) -> (Network, HostId, HostId, ListenerId) {
    let mut net = Network::new(21, conditions);
    let client = net.add_host("client", config.clone(), client_ifaces);
    let server = net.add_host("server", config, server_ifaces);
    default_route(&mut net, client, "10.0.0.2");
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    (net, client, server, listener)
}

/// Moves `data` client -> server while `during` runs after every step (it may
/// migrate flows, take links down ...). Returns what the server read.
fn transfer(
    p: &mut Pair,
    data: &[u8],
    timeout: Duration,
    during: impl FnMut(&mut Network, usize),
) -> Vec<u8> {
    let (from, to) = ((p.client, p.cflow), (p.server, p.sflow));
    common::sim::stream(&mut p.net, from, to, data, timeout, during)
}

fn server_sees(p: &mut Pair) -> Option<Locator> {
    let sflow = p.sflow;
    p.net.host(p.server).flow(sflow).unwrap().remote
}

/// Control flags of a SAL packet, if it carries CONTROL.
fn control_of(payload: &[u8]) -> Option<ControlFlags> {
    let packet = SalPacket::new_checked(payload).ok()?;
    SalRepr::parse(&packet).ok()?.control.map(|c| c.flags)
}

/// Stream payload bytes a SAL packet carries (0 if none).
fn stream_bytes(payload: &[u8]) -> usize {
    let Ok(packet) = SalPacket::new_checked(payload) else {
        return 0;
    };
    let segment = packet.payload();
    if segment.len() < 20 {
        return 0;
    }
    segment.len() - usize::from(segment[12] >> 4) * 4
}

#[test]
fn manual_migration_mid_transfer_is_invisible_to_the_transport() {
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let data = pattern(4 << 20, 1);
    let (client, cflow) = (p.client, p.cflow);
    let mut moved = false;
    let got = transfer(&mut p, &data, secs(60), |net, received| {
        if !moved && received > 1 << 20 {
            net.host(client).migrate(cflow, "cell").unwrap();
            moved = true;
        }
    });
    assert!(got == data);
    assert_eq!(server_sees(&mut p), Some(loc("10.1.0.1")));
    let info = p.net.host(client).flow(cflow).unwrap();
    assert_eq!(
        (info.interface.as_deref(), info.migrations),
        (Some("cell"), 1)
    );
    assert!(p
        .net
        .sim_host(p.server)
        .events
        .contains(&Event::PeerMoved(p.sflow, loc("10.1.0.1"))));
}

#[test]
fn migration_survives_loss_of_rsyn_rsyn_ack_and_ack() {
    for victim in [
        ControlFlags::RSYN,
        ControlFlags::RSYN | ControlFlags::ACK,
        ControlFlags::ACK,
    ] {
        let mut p = pair(HostConfig::default(), LinkConditions::default());
        let dropped = Rc::new(Cell::new(0));
        let seen_rsyn_ack = Rc::new(Cell::new(false));
        {
            let (dropped, seen_rsyn_ack) = (dropped.clone(), seen_rsyn_ack.clone());
            p.net.set_filter(Some(Box::new(move |t| {
                let Some(flags) = control_of(&t.payload) else {
                    return false;
                };
                if flags == ControlFlags::RSYN | ControlFlags::ACK {
                    seen_rsyn_ack.set(true);
                }
                // Drop the first two of the victim kind (for a bare ACK: the
                // ones confirming the RSYN-ACK).
                let is_victim =
                    flags == victim && (victim != ControlFlags::ACK || seen_rsyn_ack.get());
                if is_victim && dropped.get() < 2 {
                    dropped.set(dropped.get() + 1);
                    return true;
                }
                false
            })));
        }
        let (client, cflow) = (p.client, p.cflow);
        p.net.host(client).migrate(cflow, "cell").unwrap();
        let data = pattern(300_000, 2);
        let got = transfer(&mut p, &data, secs(60), |_, _| {});
        assert!(got == data, "{victim:?}");
        p.net.run_for(secs(10));
        assert_eq!(dropped.get(), 2, "the filter hit {victim:?}");
        assert_eq!(server_sees(&mut p), Some(loc("10.1.0.1")), "{victim:?}");
        let retransmits =
            p.net.host(client).stats().retransmits + p.net.host(p.server).stats().retransmits;
        assert!(
            retransmits > 0,
            "{victim:?}: loss was recovered by retransmission"
        );
        assert_eq!(p.net.host(client).stats().migrations_failed, 0);
    }
}

#[test]
fn data_waits_for_the_move_to_be_confirmed() {
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let (client, cflow) = (p.client, p.cflow);
    // Lose the first RSYN-ACK; count stream data leaving the new locator
    // before an RSYN-ACK gets through.
    let confirmed = Rc::new(Cell::new(false));
    let early = Rc::new(Cell::new(0usize));
    let dropped = Rc::new(Cell::new(false));
    {
        let (confirmed, early, dropped) = (confirmed.clone(), early.clone(), dropped.clone());
        p.net.set_filter(Some(Box::new(move |t| {
            if control_of(&t.payload) == Some(ControlFlags::RSYN | ControlFlags::ACK) {
                if !dropped.get() {
                    dropped.set(true);
                    return true;
                }
                confirmed.set(true);
            }
            if t.src == loc("10.1.0.1") && !confirmed.get() && stream_bytes(&t.payload) > 0 {
                early.set(early.get() + 1);
            }
            false
        })));
    }
    let data = pattern(2 << 20, 14);
    let mut moved = false;
    let got = transfer(&mut p, &data, secs(60), |net, received| {
        if !moved && received > 500_000 {
            net.host(client).migrate(cflow, "cell").unwrap();
            moved = true;
        }
    });
    assert!(got == data);
    assert_eq!(
        early.get(),
        0,
        "data segments sent before the move was confirmed"
    );
    assert!(dropped.get() && confirmed.get());
    assert!(
        p.net.host(client).stats().replayed > 0,
        "held data went out as the replay"
    );
}

#[test]
fn both_ends_migrate_at_once() {
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let (client, server, cflow, sflow) = (p.client, p.server, p.cflow, p.sflow);
    let data = pattern(2 << 20, 3);
    let mut moved = false;
    let got = transfer(&mut p, &data, secs(60), |net, received| {
        if !moved && received > 500_000 {
            net.host(client).migrate(cflow, "cell").unwrap();
            net.host(server).migrate(sflow, "eth1").unwrap();
            moved = true;
        }
    });
    assert!(got == data);
    assert_eq!(
        p.net.host(server).flow(sflow).unwrap().remote,
        Some(loc("10.1.0.1"))
    );
    assert_eq!(
        p.net.host(client).flow(cflow).unwrap().remote,
        Some(loc("10.2.0.2"))
    );
}

#[test]
fn fin_during_a_migration_keeps_the_migration_alive() {
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let (client, server, cflow, sflow) = (p.client, p.server, p.cflow, p.sflow);
    // Lose the first RSYN-ACKs so the move is still open when the FINs go.
    let dropped = Rc::new(Cell::new(0));
    {
        let dropped = dropped.clone();
        p.net.set_filter(Some(Box::new(move |t| {
            let hit = control_of(&t.payload) == Some(ControlFlags::RSYN | ControlFlags::ACK)
                && dropped.get() < 2;
            if hit {
                dropped.set(dropped.get() + 1);
            }
            hit
        })));
    }
    p.net.host(client).migrate(cflow, "cell").unwrap();
    p.net.host(client).close(cflow).unwrap();
    p.net.host(server).close(sflow).unwrap();
    p.net.run_for(secs(20));
    assert_eq!(dropped.get(), 2);
    assert!(p
        .net
        .sim_host(client)
        .events
        .contains(&Event::Closed(cflow)));
    assert!(p
        .net
        .sim_host(server)
        .events
        .contains(&Event::Closed(sflow)));
    assert!(p
        .net
        .sim_host(server)
        .events
        .contains(&Event::PeerMoved(sflow, loc("10.1.0.1"))));
    assert_eq!(p.net.host(client).stats().migrations_failed, 0);
}

#[test]
fn spoofed_rsyns_change_nothing_and_are_counted() {
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let (server, cflow, sflow) = (p.server, p.cflow, p.sflow);
    let attacker = loc("10.9.9.9");
    let rsyn = |src_flow: FlowId, dst_flow: FlowId, nonce: [u8; 8], verno: u32| {
        let mut repr = SalRepr::data(src_flow, Some(dst_flow), 6);
        repr.control = Some(ControlRepr {
            flags: ControlFlags::RSYN,
            verno,
            ackno: 0,
            nonce,
        });
        let mut bytes = vec![0u8; repr.header_len()];
        repr.emit(&mut bytes).unwrap();
        bytes
    };
    let now = p.net.now();
    let before = p.net.host(server).stats();
    // Wrong nonce.
    let bytes = rsyn(cflow, sflow, [0x42; 8], 0);
    p.net
        .host(server)
        .handle_packet(now, attacker, loc("10.0.0.2"), 64, &bytes);
    // Unknown flow ID.
    let bogus = FlowId::new(sflow.get() ^ 0x5555).unwrap();
    let bytes = rsyn(cflow, bogus, [0x42; 8], 0);
    p.net
        .host(server)
        .handle_packet(now, attacker, loc("10.0.0.2"), 64, &bytes);
    // Right flow and the right nonce (an RSYN captured on the wire), but an
    // old verno: replayed after a later move, it must not undo that move.
    let captured = Rc::new(std::cell::RefCell::new(None));
    {
        let captured = captured.clone();
        p.net.set_filter(Some(Box::new(move |t| {
            if control_of(&t.payload) == Some(ControlFlags::RSYN) && captured.borrow().is_none() {
                *captured.borrow_mut() = Some(t.payload.clone());
            }
            false
        })));
    }
    p.net.host(p.client).migrate(cflow, "cell").unwrap();
    p.net.run_for(secs(1));
    p.net.host(p.client).migrate(cflow, "usb").unwrap();
    p.net.run_for(secs(1));
    let replay = captured.borrow().clone().expect("an RSYN was sent");
    let now = p.net.now();
    p.net
        .host(server)
        .handle_packet(now, attacker, loc("10.0.0.2"), 64, &replay);
    let after = p.net.host(server).stats();
    assert_eq!(after.bad_nonce, before.bad_nonce + 1);
    assert_eq!(after.unknown_flow, before.unknown_flow + 1);
    assert!(after.stale > before.stale, "replayed RSYN counted stale");
    assert_eq!(
        server_sees(&mut p),
        Some(loc("10.3.0.1")),
        "only the real moves took effect"
    );
}

#[test]
fn fifty_back_and_forth_migrations_during_twenty_megabytes() {
    let conditions = LinkConditions {
        delay: ms(2),
        ..Default::default()
    };
    let mut p = pair(HostConfig::default(), conditions);
    let (client, cflow) = (p.client, p.cflow);
    let data = pattern(20 << 20, 5);
    let mut moves = 0;
    let mut next_at = 200_000;
    let got = transfer(&mut p, &data, secs(600), |net, received| {
        if moves < 50 && received >= next_at {
            let iface = if moves % 2 == 0 { "cell" } else { "wlan" };
            net.host(client).migrate(cflow, iface).unwrap();
            moves += 1;
            next_at += 350_000;
        }
    });
    assert_eq!(moves, 50);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ after 50 migrations");
    assert_eq!(p.net.host(client).flow(cflow).unwrap().migrations, 50);
}

#[test]
fn link_down_moves_flows_at_once() {
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let client = p.client;
    let data = pattern(2 << 20, 6);
    let mut down = false;
    let got = transfer(&mut p, &data, secs(60), |net, received| {
        if !down && received > 500_000 {
            net.link_down(Ipv4Addr::new(10, 0, 0, 1));
            net.host(client).set_interface_up("wlan", false).unwrap();
            down = true;
        }
    });
    assert!(got == data);
    assert_eq!(server_sees(&mut p), Some(loc("10.1.0.1")));
}

#[test]
fn a_silent_path_is_abandoned_by_the_liveness_check() {
    let config = HostConfig {
        liveness_timeout: ms(500),
        ..Default::default()
    };
    let mut p = pair(config, LinkConditions::default());
    let data = pattern(2 << 20, 7);
    let mut cut = false;
    let start = p.net.now();
    let got = transfer(&mut p, &data, secs(60), |net, received| {
        if !cut && received > 500_000 {
            // The wlan path silently stops delivering; nobody is told.
            net.link_down(Ipv4Addr::new(10, 0, 0, 1));
            cut = true;
        }
    });
    assert!(got == data);
    assert_eq!(server_sees(&mut p), Some(loc("10.1.0.1")));
    assert!(p.net.now() - start < secs(20));
}

#[test]
fn an_idle_flow_probes_its_path_and_leaves_it_when_it_is_dead() {
    let config = HostConfig {
        liveness_timeout: ms(500),
        idle_probe: Some(secs(2)),
        ..Default::default()
    };
    let mut p = pair(config, LinkConditions::default());
    let (client, cflow) = (p.client, p.cflow);
    // The wlan path silently stops delivering while nothing is in flight:
    // only a probe can notice.
    p.net.link_down(Ipv4Addr::new(10, 0, 0, 1));
    p.net.run_for(secs(2) + ms(500) + secs(2));
    assert!(p.net.host(client).stats().probes >= 1);
    let info = p.net.host(client).flow(cflow).unwrap();
    assert_eq!(info.migrations, 1, "moved once, off the dead path");
    assert_eq!(info.local, loc("10.1.0.1"));
    assert_eq!(server_sees(&mut p), Some(loc("10.1.0.1")));
    // The application never noticed.
    let data = pattern(300_000, 12);
    assert!(transfer(&mut p, &data, secs(10), |_, _| {}) == data);
}

#[test]
fn probes_on_a_healthy_idle_flow_move_nothing() {
    let config = HostConfig {
        idle_probe: Some(secs(1)),
        ..Default::default()
    };
    let mut p = pair(config, LinkConditions::default());
    let (client, cflow) = (p.client, p.cflow);
    p.net.run_for(secs(10));
    let probes = p.net.host(client).stats().probes;
    assert!(
        (5..=10).contains(&probes),
        "one probe per idle second: {probes}"
    );
    assert_eq!(p.net.host(client).flow(cflow).unwrap().migrations, 0);
    assert_eq!(server_sees(&mut p), Some(loc("10.0.0.1")));
    let data = pattern(300_000, 13);
    assert!(transfer(&mut p, &data, secs(10), |_, _| {}) == data);
}

#[test]
fn hosts_with_nowhere_else_to_go_do_not_probe() {
    let config = HostConfig {
        idle_probe: Some(secs(1)),
        ..Default::default()
    };
    let mut p = pair_with(
        config,
        LinkConditions::default(),
        &[("eth0", "10.0.0.1/24")],
        &[("eth0", "10.0.0.2/24")],
    );
    p.net.run_for(secs(5));
    assert_eq!(p.net.host(p.client).stats().probes, 0);
    assert_eq!(p.net.host(p.server).stats().probes, 0);
    // Nor do they keep a deadline for it: an idle flow with nowhere to go
    // costs its host no work at all.
    assert_eq!(p.net.host(p.client).poll_timeout(), None);
    // A second interface comes up: now the idle flow has somewhere to go,
    // and probes.
    p.net
        .host(p.client)
        .add_interface(sal::proto::LocalInterface {
            name: "cell".into(),
            locator: loc("10.1.0.1"),
            prefix_len: 24,
            up: true,
        });
    p.net.run_for(secs(5));
    assert!(p.net.host(p.client).stats().probes >= 1);
}

#[test]
fn renumbering_moves_flows_to_the_new_address() {
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let (server, cflow) = (p.server, p.cflow);
    p.net
        .host(server)
        .set_interface_locator("eth0", loc("10.0.0.20"), 24)
        .unwrap();
    let data = pattern(500_000, 8);
    let got = transfer(&mut p, &data, secs(30), |_, _| {});
    assert!(got == data);
    assert_eq!(
        p.net.host(p.client).flow(cflow).unwrap().remote,
        Some(loc("10.0.0.20"))
    );
}

#[test]
fn the_latest_of_two_quick_migrations_wins() {
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let (client, cflow) = (p.client, p.cflow);
    p.net.host(client).migrate(cflow, "cell").unwrap();
    p.net.host(client).migrate(cflow, "usb").unwrap();
    p.net.run_for(secs(2));
    assert_eq!(server_sees(&mut p), Some(loc("10.3.0.1")));
    let data = pattern(200_000, 9);
    assert!(transfer(&mut p, &data, secs(30), |_, _| {}) == data);
    assert!(matches!(
        p.net.host(client).migrate(cflow, "eth9"),
        Err(HostError::NoSuchInterface(_))
    ));
}

#[test]
fn data_resumes_within_a_few_round_trips_after_a_link_dies() {
    // 5 ms one way: an RTT of 10 ms. Without resending what the dead link
    // swallowed, the transport would wait out its retransmission timeout.
    let mut p = pair(HostConfig::default(), LinkConditions::default());
    let (client, server, cflow, sflow) = (p.client, p.server, p.cflow, p.sflow);
    let data = pattern(3 << 20, 11);
    let mut sent = 0;
    let mut received = 0;
    let mut buf = vec![0u8; 65536];
    let mut last_arrival = p.net.now();
    let mut cut_at = None;
    let mut gap_after_cut = Duration::from_millis(0);
    let done = p.net.run_until(secs(60), |net| {
        while sent < data.len() {
            let end = (sent + 65536).min(data.len());
            match net.host(client).send(cflow, &data[sent..end]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        loop {
            match net.host(server).recv(sflow, &mut buf) {
                Ok(n) if n > 0 => {
                    received += n;
                    let now = net.now();
                    if cut_at.is_some() {
                        gap_after_cut = gap_after_cut.max(now - last_arrival);
                    }
                    last_arrival = now;
                }
                _ => break,
            }
        }
        if cut_at.is_none() && received > 1 << 20 {
            net.link_down(Ipv4Addr::new(10, 0, 0, 1));
            net.host(client).set_interface_up("wlan", false).unwrap();
            cut_at = Some(net.now());
        }
        received == data.len()
    });
    assert!(done);
    assert!(p.net.host(client).stats().replayed > 0);
    assert!(gap_after_cut < ms(100), "data stopped for {gap_after_cut}");
}

/// The client's handshake ACK (it names the service and carries the TCP
/// ACK) is kept until the server is heard from. Lost, then resent from
/// the interface the flow moved to, its TCP segment must be checksummed
/// for the new addresses: the server takes it, not a checksum failure.
#[test]
fn a_handshake_ack_resent_after_a_move_is_checksummed_for_the_new_path() {
    let (mut net, client, server, listener) = unconnected(
        HostConfig::default(),
        LinkConditions::default(),
        &[("wlan", "10.0.0.1/24"), ("cell", "10.1.0.1/24")],
        &[("eth0", "10.0.0.2/24")],
    );
    // Drop the first handshake ACK: the client's packet naming the service
    // with an ACK of the SYN-ACK.
    let dropped = Rc::new(Cell::new(0u32));
    let count = Rc::clone(&dropped);
    net.set_filter(Some(Box::new(move |packet| {
        let Ok(sal) = SalPacket::new_checked(&packet.payload[..]) else {
            return false;
        };
        let Ok(repr) = SalRepr::parse(&sal) else {
            return false;
        };
        let handshake_ack =
            repr.service.is_some() && repr.control.is_some_and(|c| c.flags == ControlFlags::ACK);
        let drop = handshake_ack && count.get() == 0;
        count.set(count.get() + u32::from(drop));
        drop
    })));
    let cflow = net
        .host(client)
        .connect("ab".parse().unwrap(), Stream)
        .unwrap();
    let connected = net.run_until(secs(5), |net| {
        net.sim_host(client)
            .events
            .contains(&Event::Connected(cflow))
    });
    assert!(
        connected && dropped.get() == 1,
        "the handshake ACK was not lost"
    );
    net.host(client).migrate(cflow, "cell").unwrap();
    let mut sflow = None;
    let accepted = net.run_until(secs(5), |net| {
        sflow = sflow.or_else(|| net.host(server).accept(listener).ok());
        sflow.is_some()
    });
    assert!(accepted, "the server accepted nothing");
    let sflow = sflow.unwrap();
    net.run_for(ms(500));
    assert_eq!(net.host(server).stats().bad_checksum, 0);
    assert_eq!(
        net.host(server).flow(sflow).unwrap().remote,
        Some(loc("10.1.0.1"))
    );
    let mut p = Pair {
        net,
        client,
        server,
        cflow,
        sflow,
    };
    let data = pattern(100_000, 12);
    assert!(transfer(&mut p, &data, secs(30), |_, _| {}) == data);
    assert_eq!(p.net.host(server).stats().bad_checksum, 0);
}
