//! A migration (the client's interface is renumbered mid-download) whose
//! path challenge or answer is lost, or whose client gets a flood of
//! forged challenges: the server follows the client once the new address
//! answers, and the challenge is repeated until it does. Before the
//! repetitions, one lost answer left the server sending to the old address
//! until the peer timeout; before answers were unlimited, forged
//! challenges with random tokens spent the client's answers.
use std::cell::Cell;
use std::rc::Rc;

use sal::proto::HostConfig;
use sal::table::Target;
use sal::wire::{ControlFlags, SalPacket, SalRepr, TransportProtocol::Stream};
use sal::{Locator, ServicePrefix};
use sal_sim::{LinkConditions, Network};
use smoltcp::time::Duration;

mod common;
use common::sim::{establish, pattern};

fn loc(s: &str) -> Locator {
    s.parse().unwrap()
}

fn flags_of(payload: &[u8]) -> Option<ControlFlags> {
    let packet = SalPacket::new_checked(payload).ok()?;
    SalRepr::parse(&packet).ok()?.control.map(|c| c.flags)
}

fn run(drop_kind: ControlFlags, drops: u32, config: HostConfig) -> (usize, usize, u32) {
    let mut net = Network::new(
        3,
        LinkConditions {
            delay: Duration::from_millis(10),
            ..Default::default()
        },
    );
    let client = net.add_host("client", config.clone(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", config, &[("eth0", "10.0.0.2/24")]);
    net.host(client).add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: loc("10.0.0.2"),
            weight: 1,
        },
        0,
    );
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let dropped = Rc::new(Cell::new(0u32));
    {
        let dropped = dropped.clone();
        net.set_filter(Some(Box::new(move |p| {
            if flags_of(&p.payload) == Some(drop_kind) && dropped.get() < drops {
                dropped.set(dropped.get() + 1);
                return true;
            }
            false
        })));
    }
    let data = pattern(4 << 20, 1);
    let mut sent = 0;
    let mut received = 0usize;
    let mut buf = vec![0u8; 65536];
    let mut renumbered = false;
    let mut shut = false;
    let done = net.run_until(Duration::from_secs(120), |net| {
        while sent < data.len() {
            let end = (sent + 65536).min(data.len());
            match net.host(server).send(sflow, &data[sent..end]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        if sent == data.len() && !shut {
            let _ = net.host(server).shutdown(sflow);
            shut = true;
        }
        loop {
            match net.host(client).recv(cflow, &mut buf) {
                Ok(0) => return true,
                Ok(n) => received += n,
                Err(_) => break,
            }
        }
        if !renumbered && received > 1 << 20 {
            net.host(client)
                .set_interface_locator("eth0", loc("10.0.0.5"), 24)
                .unwrap();
            renumbered = true;
        }
        false
    });
    let remote = net.host(server).flow(sflow).and_then(|f| f.remote);
    eprintln!("drop {drop_kind:?} x{drops}: done={done} received={received} of {} server sees {remote:?} dropped={} t={}", data.len(), dropped.get(), net.now());
    (received, data.len(), dropped.get())
}

#[test]
fn a_migration_whose_first_two_challenges_are_lost_completes() {
    let (r, n, _) = run(
        ControlFlags::RSYN | ControlFlags::NACK,
        2,
        HostConfig::default(),
    );
    assert_eq!(r, n);
}

#[test]
fn a_migration_whose_challenge_is_lost_completes() {
    let (r, n, _) = run(
        ControlFlags::RSYN | ControlFlags::NACK,
        1,
        HostConfig::default(),
    );
    assert_eq!(r, n);
}

#[test]
fn a_migration_whose_first_two_answers_are_lost_completes() {
    let (r, n, _) = run(
        ControlFlags::RSYN | ControlFlags::NACK | ControlFlags::ACK,
        2,
        HostConfig::default(),
    );
    assert_eq!(r, n);
}

/// No loss at all; an off-path host that knows only the two flow IDs sends
/// the client forged path challenges (random tokens) every `every_ms`.
fn flood(every_ms: u64) -> (usize, usize, u64) {
    use sal::proto::TransmitKind;
    use sal::wire::ControlRepr;
    use sal_sim::Packet;
    let mut net = Network::new(
        3,
        LinkConditions {
            delay: Duration::from_millis(10),
            ..Default::default()
        },
    );
    let client = net.add_host("client", HostConfig::default(), &[("eth0", "10.0.0.1/24")]);
    let server = net.add_host("server", HostConfig::default(), &[("eth0", "10.0.0.2/24")]);
    net.host(client).add_rule(
        ServicePrefix::DEFAULT,
        Target::Forward {
            locator: loc("10.0.0.2"),
            weight: 1,
        },
        0,
    );
    let listener = net
        .host(server)
        .listen("ab/8".parse().unwrap(), Stream, 8)
        .unwrap();
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    let answers = Rc::new(Cell::new(0u32));
    {
        let answers = answers.clone();
        net.set_filter(Some(Box::new(move |p| {
            if flags_of(&p.payload)
                == Some(ControlFlags::RSYN | ControlFlags::NACK | ControlFlags::ACK)
            {
                answers.set(answers.get() + 1);
            }
            false
        })));
    }
    let data = pattern(4 << 20, 1);
    let (mut sent, mut received, mut shut, mut renumbered) = (0, 0usize, false, false);
    let mut buf = vec![0u8; 65536];
    let mut next = net.now();
    let mut forged = 0u64;
    let mut token = 1u64;
    let done = net.run_until(Duration::from_secs(60), |net| {
        while sent < data.len() {
            let end = (sent + 65536).min(data.len());
            match net.host(server).send(sflow, &data[sent..end]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        if sent == data.len() && !shut {
            let _ = net.host(server).shutdown(sflow);
            shut = true;
        }
        loop {
            match net.host(client).recv(cflow, &mut buf) {
                Ok(0) => return true,
                Ok(n) => received += n,
                Err(_) => break,
            }
        }
        if !renumbered && received > 1 << 20 {
            net.host(client)
                .set_interface_locator("eth0", loc("10.0.0.5"), 24)
                .unwrap();
            renumbered = true;
        }
        if every_ms > 0 && net.now() >= next {
            next = net.now() + Duration::from_millis(every_ms);
            for _ in 0..5 {
                let mut repr = SalRepr::data(sflow, Some(cflow), 6);
                token = token
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                repr.control = Some(ControlRepr {
                    flags: ControlFlags::RSYN | ControlFlags::NACK,
                    nonce: token.to_le_bytes(),
                    ..ControlRepr::default()
                });
                let mut bytes = vec![0u8; repr.header_len()];
                repr.emit(&mut bytes).unwrap();
                let dst = if renumbered { "10.0.0.5" } else { "10.0.0.1" };
                net.inject(Packet {
                    src: loc("10.0.0.66"),
                    dst: loc(dst),
                    ttl: 64,
                    kind: TransmitKind::Own,
                    payload: bytes,
                });
                forged += 1;
            }
        }
        false
    });
    let remote = net.host(server).flow(sflow).and_then(|f| f.remote);
    eprintln!("flood every {every_ms} ms: done={done} received={received} of {} server sees {remote:?} forged={forged} answers={} t={}", data.len(), answers.get(), net.now());
    (received, data.len(), forged)
}

#[test]
fn forged_challenges_do_not_stop_a_migration() {
    let (r, n, _) = flood(2);
    assert_eq!(r, n);
}

#[test]
fn a_migration_whose_answer_is_lost_completes() {
    let (r, n, _) = run(
        ControlFlags::RSYN | ControlFlags::NACK | ControlFlags::ACK,
        1,
        HostConfig::default(),
    );
    assert_eq!(r, n);
}
