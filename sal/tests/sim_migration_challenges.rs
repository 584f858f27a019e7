//! A migration (the client's interface is renumbered mid-download) whose
//! path challenge or answer is lost, or whose client gets a flood of
//! forged challenges: the server follows the client once the new address
//! answers, and the challenge is repeated until it does. Before the
//! repetitions, one lost answer left the server sending to the old address
//! until the peer timeout; before answers were unlimited, forged
//! challenges with random tokens spent the client's answers.

use std::cell::Cell;
use std::rc::Rc;

use sal::proto::{HostConfig, TransmitKind};
use sal::wire::{ControlFlags, ControlRepr, SalPacket, SalRepr};
use sal::{FlowId, Locator};
use sal_sim::{HostId, LinkConditions, Network, Packet};
use smoltcp::time::Duration;

mod common;
use common::sim::{client_server, establish, loc, pattern, ClientServer};

/// A path challenge's flags.
fn challenge() -> ControlFlags {
    ControlFlags::RSYN | ControlFlags::NACK
}

/// The flags of an answer to one.
fn answer() -> ControlFlags {
    challenge() | ControlFlags::ACK
}

fn flags_of(payload: &[u8]) -> Option<ControlFlags> {
    let packet = SalPacket::new_checked(payload).ok()?;
    SalRepr::parse(&packet).ok()?.control.map(|c| c.flags)
}

/// A client and a server 10 ms apart with one established stream flow.
struct Pair {
    net: Network,
    client: HostId,
    server: HostId,
    cflow: FlowId,
    sflow: FlowId,
}

fn pair() -> Pair {
    let conditions = LinkConditions {
        delay: Duration::from_millis(10),
        ..Default::default()
    };
    let ClientServer {
        mut net,
        client,
        server,
        listener,
    } = client_server(3, conditions, HostConfig::default());
    let (cflow, sflow) = establish(&mut net, client, server, listener, "ab".parse().unwrap());
    Pair {
        net,
        client,
        server,
        cflow,
        sflow,
    }
}

impl Pair {
    /// Downloads 4 MiB, renumbering the client's interface (10.0.0.1 to
    /// 10.0.0.5, which moves the flow: an RSYN from the new address) once
    /// 1 MiB arrived; `meddle` runs at every step with whether that
    /// happened. Returns the bytes received within `limit` and the total.
    fn download_across_a_renumbering(
        &mut self,
        limit: Duration,
        mut meddle: impl FnMut(&mut Network, bool),
    ) -> (usize, usize) {
        let (client, server, cflow, sflow) = (self.client, self.server, self.cflow, self.sflow);
        let data = pattern(4 << 20, 1);
        let (mut sent, mut received, mut shut, mut renumbered) = (0, 0usize, false, false);
        let mut buf = vec![0u8; 65536];
        let done = self.net.run_until(limit, |net| {
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
            meddle(net, renumbered);
            false
        });
        let remote = self.net.host(server).flow(sflow).and_then(|f| f.remote);
        eprintln!(
            "done={done} received={received} of {} server sees {remote:?} t={}",
            data.len(),
            self.net.now()
        );
        (received, data.len())
    }
}

/// The download with the first `drops` packets flagged `kind` lost.
fn losing(kind: ControlFlags, drops: u32) -> (usize, usize) {
    let mut p = pair();
    let dropped = Rc::new(Cell::new(0u32));
    let seen = dropped.clone();
    p.net.set_filter(Some(Box::new(move |packet| {
        let drop = flags_of(&packet.payload) == Some(kind) && seen.get() < drops;
        seen.set(seen.get() + u32::from(drop));
        drop
    })));
    let result = p.download_across_a_renumbering(Duration::from_secs(120), |_, _| {});
    assert_eq!(dropped.get(), drops, "the packets to lose went out");
    result
}

#[test]
fn a_migration_whose_challenge_is_lost_completes() {
    let (received, total) = losing(challenge(), 1);
    assert_eq!(received, total);
}

#[test]
fn a_migration_whose_first_two_challenges_are_lost_completes() {
    let (received, total) = losing(challenge(), 2);
    assert_eq!(received, total);
}

#[test]
fn a_migration_whose_answer_is_lost_completes() {
    let (received, total) = losing(answer(), 1);
    assert_eq!(received, total);
}

#[test]
fn a_migration_whose_first_two_answers_are_lost_completes() {
    let (received, total) = losing(answer(), 2);
    assert_eq!(received, total);
}

/// No loss; an off-path host that knows only the two flow IDs sends the
/// client 5 forged path challenges (random tokens) every 2 ms.
#[test]
fn forged_challenges_do_not_stop_a_migration() {
    let mut p = pair();
    let answers = Rc::new(Cell::new(0u32));
    let counted = answers.clone();
    p.net.set_filter(Some(Box::new(move |packet| {
        if flags_of(&packet.payload) == Some(answer()) {
            counted.set(counted.get() + 1);
        }
        false
    })));
    let (cflow, sflow) = (p.cflow, p.sflow);
    let (mut next, mut forged, mut token) = (p.net.now(), 0u64, 1u64);
    let (received, total) =
        p.download_across_a_renumbering(Duration::from_secs(60), |net, renumbered| {
            if net.now() < next {
                return;
            }
            next = net.now() + Duration::from_millis(2);
            let to: Locator = loc(if renumbered { "10.0.0.5" } else { "10.0.0.1" });
            for _ in 0..5 {
                token = token
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut repr = SalRepr::data(sflow, Some(cflow), 6);
                repr.control = Some(ControlRepr {
                    flags: challenge(),
                    nonce: token.to_le_bytes(),
                    ..ControlRepr::default()
                });
                let mut payload = vec![0u8; repr.header_len()];
                repr.emit(&mut payload).unwrap();
                net.inject(Packet {
                    src: loc("10.0.0.66"),
                    dst: to,
                    ttl: 64,
                    kind: TransmitKind::Own,
                    payload,
                });
                forged += 1;
            }
        });
    eprintln!("{forged} forged challenges, {} answers", answers.get());
    assert!(forged > 100, "{forged} forged challenges");
    assert_eq!(received, total);
}
