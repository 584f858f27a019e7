//! One-way failures between a single-homed host and a multi-homed peer, on
//! the deterministic simulator.
//!
//! Host A (10.0.0.1, one interface) talks to B, which has two locators:
//! B1 (10.0.0.2), where the flow starts, and B2 (10.2.0.2), which it
//! advertises. A quarter into a transfer of 1 MiB over slow links (it
//! lasts longer after the failure than the peer timeout, 30 s), the path
//! between A and B1 fails in one direction only: A -> B1, or B1 -> A.
//! Whichever side was waiting finds the path silent and the flow moves to
//! B2: B with an RSYN from there (it has another interface), or A by
//! seeking B2 with a path challenge. Either way both ends must end up on
//! B2, once:
//!
//! - A sought B2 (an upload: A waits, B only acknowledges): A's RSYN to B2
//!   tells B that A now reaches it there, and B sends from there too.
//!   Before, B went on sending from B1. With B1 -> A lost, its ACKs were
//!   lost and the upload stalled until B's idle probe, unanswered, moved
//!   it (26 s). With A -> B1 lost, its ACKs reached A from B1, which A
//!   does not take as the peer speaking (B left it, in A's view), so A
//!   reset the flow at its peer timeout with the upload going on.
//! - B moved (a download: B waits): A follows its RSYN, as before.
//!
//! Each test checks the bytes, that each side moved once and never back,
//! that neither gave up on the flow, how long the receiver got nothing,
//! and that A sent B2 nothing but path challenges (and RSYN-ACKs to B's
//! RSYNs from there) until B2 answered one. A last test checks that only
//! the peer's new RSYN moves B's end, not a replay.

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;
use std::rc::Rc;

use sal::wire::{
    ControlFlags, ControlRepr, SalPacket, SalRepr, TransportProtocol::Stream, BASE_HEADER_LEN,
    CONTROL_LEN,
};
use sal::Locator;
use sal_sim::{Delay, LinkConditions, Network, Packet, Path, RateLimit};
use smoltcp::time::Duration;

mod common;
use common::sim::{establish, multi_homed_pair, pattern, stream};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The single-homed host.
const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The multi-homed peer's first locator, where the flow starts.
const B1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Its second locator, which it advertises.
const B2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 2);

/// Bytes carried: at [`RATE`], the transfer after the failure outlasts
/// the peer timeout (30 s).
const LEN: usize = 1 << 20;
/// Bytes per second each link carries (IPv4 bytes).
const RATE: u64 = 20_000;
/// Bytes each link queues: 0.4 s at [`RATE`].
const QUEUE: usize = 8_000;

/// The CONTROL extension of a SAL packet, if any.
fn control_of(payload: &[u8]) -> Option<ControlRepr> {
    let packet = SalPacket::new_checked(payload).ok()?;
    SalRepr::parse(&packet).ok()?.control
}

/// Whether a SAL packet is a path challenge and nothing else.
fn is_bare_challenge(payload: &[u8]) -> bool {
    control_of(payload).is_some_and(|c| c.flags == ControlFlags::RSYN | ControlFlags::NACK)
        && payload.len() == BASE_HEADER_LEN + CONTROL_LEN
}

/// Whether a SAL packet is an RSYN-ACK and nothing else.
fn is_bare_rsyn_ack(payload: &[u8]) -> bool {
    control_of(payload).is_some_and(|c| c.flags == ControlFlags::RSYN | ControlFlags::ACK)
        && payload.len() == BASE_HEADER_LEN + CONTROL_LEN
}

/// Whether a SAL packet is an RSYN (a move, or a probe).
fn is_rsyn(payload: &[u8]) -> bool {
    control_of(payload).is_some_and(|c| c.flags == ControlFlags::RSYN)
}

/// Whether a SAL packet answers a path challenge.
fn is_answer(payload: &[u8]) -> bool {
    control_of(payload)
        .is_some_and(|c| c.flags == ControlFlags::RSYN | ControlFlags::NACK | ControlFlags::ACK)
}

/// Which direction of the A <-> B1 path fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// A -> B1 packets are lost; B1 -> A still works.
    ToPeer,
    /// B1 -> A packets are lost; A -> B1 still works.
    FromPeer,
}

/// What a run showed.
#[derive(Debug)]
struct Outcome {
    /// Whether the receiver read the whole stream, byte for byte.
    exact: bool,
    /// The longest time the receiver got no new bytes.
    longest_stall: Duration,
    /// Times A's flow followed B to another locator.
    a_peer_moves: u32,
    /// Times B's end of the flow moved to another locator.
    b_moves: u32,
    /// Where each end of the flow is at the end.
    a_remote: Option<Locator>,
    b_local: Locator,
    /// Flows reset for a silent peer, on either host.
    peer_timeouts: u64,
    /// Path challenges either host sent.
    challenges: u64,
    /// Packets A sent to a locator of B's other than B1 before that
    /// locator answered a path challenge, other than path challenges and
    /// the RSYN-ACKs to B's RSYNs from there.
    unproven: u32,
}

/// Runs a transfer (A to B if `upload`, else B to A) across a one-way
/// failure `cut` of the A <-> B1 path, every link a bottleneck.
fn run(cut: Cut, upload: bool, seed: u64) -> Outcome {
    let mut net = Network::with_default_path(seed, || {
        Path::new()
            .then(RateLimit::new(RATE, QUEUE))
            .then(Delay::new(Duration::from_millis(5)))
    });
    let (a, b, listener) = multi_homed_pair(&mut net);
    let failed = Rc::new(Cell::new(false));
    let unproven = Rc::new(Cell::new(0u32));
    {
        let (failed, unproven) = (failed.clone(), unproven.clone());
        let proven = RefCell::new(vec![B1]);
        let rsyn_from = RefCell::new(Vec::new());
        net.set_filter(Some(Box::new(move |p: &Packet| {
            let (src, dst) = (p.src.ip(), p.dst.ip());
            let drop = failed.get()
                && match cut {
                    Cut::ToPeer => (src, dst) == (A, B1),
                    Cut::FromPeer => (src, dst) == (B1, A),
                };
            let answers_rsyn = is_bare_rsyn_ack(&p.payload) && rsyn_from.borrow().contains(&dst);
            if src == A
                && !proven.borrow().contains(&dst)
                && !is_bare_challenge(&p.payload)
                && !answers_rsyn
            {
                unproven.set(unproven.get() + 1);
            }
            if dst == A && !drop && is_rsyn(&p.payload) {
                rsyn_from.borrow_mut().push(src);
            }
            if dst == A && !drop && is_answer(&p.payload) {
                proven.borrow_mut().push(src);
            }
            drop
        })));
    }
    let (aflow, bflow) = establish(&mut net, a, b, listener, "ab".parse().unwrap());
    let (from, to) = match upload {
        true => ((a, aflow), (b, bflow)),
        false => ((b, bflow), (a, aflow)),
    };
    let data = pattern(LEN, 5);
    let start = net.now();
    let (mut last_progress, mut so_far) = (start, 0);
    let mut longest_stall = Duration::ZERO;
    let received = stream(&mut net, from, to, &data, secs(120), |net, received| {
        if received >= LEN / 4 {
            failed.set(true);
        }
        if received > so_far {
            longest_stall = longest_stall.max(net.now() - last_progress);
            (last_progress, so_far) = (net.now(), received);
        }
    });
    assert!(failed.get(), "the failure came during the transfer");
    let (astats, bstats) = (net.host(a).stats(), net.host(b).stats());
    let aflow = net.host(a).flow(aflow).unwrap();
    let bflow = net.host(b).flow(bflow).unwrap();
    let outcome = Outcome {
        exact: received == data,
        longest_stall,
        a_peer_moves: aflow.peer_moves,
        b_moves: bflow.migrations,
        a_remote: aflow.remote,
        b_local: bflow.local,
        peer_timeouts: astats.peer_timeouts + bstats.peer_timeouts,
        challenges: astats.path_challenges + bstats.path_challenges,
        unproven: unproven.get(),
    };
    eprintln!(
        "{cut:?} {}: {outcome:?} in {}",
        ["download", "upload"][usize::from(upload)],
        net.now() - start
    );
    outcome
}

/// What every run must show: the bytes, both ends on B2 after one move
/// each, no reset, no long stall, and nothing but challenges (and answers
/// to B's RSYNs) to B2 until it answered one.
fn check(outcome: &Outcome) {
    assert!(outcome.exact, "bytes differ");
    assert_eq!(outcome.peer_timeouts, 0, "no flow given up on");
    assert_eq!(outcome.a_remote, Some(Locator::Ipv4(B2)), "A reaches B2");
    assert_eq!(outcome.b_local, Locator::Ipv4(B2), "B sends from B2");
    assert_eq!(outcome.a_peer_moves, 1, "A followed B once, never back");
    assert_eq!(outcome.b_moves, 1, "B moved once, never back");
    assert!(
        outcome.longest_stall < secs(4),
        "stalled for {}",
        outcome.longest_stall
    );
    assert!(
        outcome.challenges <= 4,
        "{} path challenges",
        outcome.challenges
    );
    assert_eq!(
        outcome.unproven, 0,
        "A sent B2 more than challenges unproven"
    );
}

/// A uploads; A -> B1 fails. A finds the path silent and seeks B2, which
/// answers; B's ACKs must then come from B2. Before, they kept coming from
/// B1, which A does not take as the peer speaking, so A reset the flow at
/// its peer timeout, 30 s after the move, with the upload going on.
#[test]
fn an_upload_survives_losing_the_way_to_the_peers_first_locator() {
    check(&run(Cut::ToPeer, true, 3));
}

/// A uploads; B1 -> A fails. A finds the path silent (B's ACKs are lost)
/// and seeks B2, which answers. B's ACKs must then come from B2. Before,
/// B, which heard A all along, went on sending them from B1, where they
/// were lost, until its idle probe found B1 silent: a 26 s stall, a few
/// seconds short of A's peer timeout.
#[test]
fn an_upload_survives_losing_the_way_back_from_the_peers_first_locator() {
    check(&run(Cut::FromPeer, true, 3));
}

/// B downloads to A; A -> B1 fails. B finds the path silent, moves to B2
/// with an RSYN, and A follows once B2 answered its challenge.
#[test]
fn a_download_survives_losing_the_way_to_the_peers_first_locator() {
    check(&run(Cut::ToPeer, false, 3));
}

/// B downloads to A; B1 -> A fails. As above: B moves, A follows.
#[test]
fn a_download_survives_losing_the_way_back_from_the_peers_first_locator() {
    check(&run(Cut::FromPeer, false, 3));
}

/// Only the peer's new RSYN moves our end to where it sought us. Anyone
/// who learned the flow IDs may challenge B at B2 (B answers every
/// challenge, from where it reached), and whoever saw A's RSYN may replay
/// it there, from A's address: B's end stays on B1, for the replay is no
/// new message.
#[test]
fn a_replayed_rsyn_does_not_move_our_end_where_someone_challenged_us() {
    let mut net = Network::new(31, LinkConditions::default());
    let (a, b, listener) = multi_homed_pair(&mut net);
    let rsyns = Rc::new(RefCell::new(Vec::<Vec<u8>>::new()));
    let answered_from_b2 = Rc::new(Cell::new(0u32));
    {
        let (rsyns, answered) = (rsyns.clone(), answered_from_b2.clone());
        net.set_filter(Some(Box::new(move |p: &Packet| {
            if p.src.ip() == A && is_rsyn(&p.payload) {
                rsyns.borrow_mut().push(p.payload.clone());
            }
            if p.src.ip() == B2 && is_answer(&p.payload) {
                answered.set(answered.get() + 1);
            }
            false
        })));
    }
    let (aflow, bflow) = establish(&mut net, a, b, listener, "ab".parse().unwrap());
    // Idle, with somewhere else to go (B advertised B2): A probes, with an
    // RSYN from where it is, which B answers.
    net.run_for(secs(12));
    assert!(net.host(a).stats().probes >= 1, "A probed its idle flow");
    let rsyn = rsyns.borrow().last().cloned().expect("A's probe");

    let mut challenge = SalRepr::data(aflow, Some(bflow), Stream.number());
    challenge.control = Some(ControlRepr {
        flags: ControlFlags::RSYN | ControlFlags::NACK,
        nonce: [7; 8],
        ..ControlRepr::default()
    });
    let mut payload = vec![0u8; challenge.header_len()];
    challenge.emit(&mut payload).unwrap();
    for (src, payload) in [(Ipv4Addr::new(10, 0, 0, 66), payload), (A, rsyn)] {
        net.inject(Packet {
            src: Locator::Ipv4(src),
            dst: Locator::Ipv4(B2),
            ttl: 64,
            kind: sal::proto::TransmitKind::Own,
            payload,
        });
        net.run_for(Duration::from_millis(50));
    }
    assert_eq!(answered_from_b2.get(), 1, "B answered the challenge at B2");
    let flow = net.host(b).flow(bflow).unwrap();
    assert_eq!(flow.local, Locator::Ipv4(B1), "B's end stayed where it was");
    assert_eq!(flow.migrations, 0);
    assert_eq!(
        net.host(a).flow(aflow).unwrap().remote,
        Some(Locator::Ipv4(B1))
    );
}
