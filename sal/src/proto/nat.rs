//! Flows across NATs: answering where packets really came from, keeping an
//! idle flow's NAT mapping alive, and following a peer whose NAT rebound
//! it to a new address or port without letting anyone else redirect the
//! flow. The same path challenges prove every other new peer address
//! before a flow goes there: the source of a peer's RSYN (`migration.rs`)
//! and the locators a peer advertised (`path.rs`).
//!
//! A host behind a NAT does not know the address and port its packets
//! carry once translated; its peer does. So:
//!
//! - **Where to answer.** A first packet is answered at the address and port
//!   it came from ([`client_locator`]), or, when a service router relayed
//!   it, at the first address of its SOURCE extension and the port the
//!   router recorded there (see [`SourceRepr::client_port`]), never at a
//!   locator the client believes it has.
//! - **Transport checksums.** The checksum of the TCP or UDP segment after
//!   the SAL header covers a pseudo-header of the addresses the *sender*
//!   used; a NAT rewrites the outer header (and fixes the UDP checksum of
//!   the datagram that carries the SAL packet) but cannot see the inner one.
//!   In UDP carriage the datagram's own checksum, which the kernel verified,
//!   already covers the whole SAL packet from end to end, so the inner one
//!   is not verified there ([`transport_checksum_ok`]); natively it is.
//! - **Keepalives.** A NAT forgets a UDP mapping that carries nothing for a
//!   while (often 30 s), after which the peer cannot reach us. A client
//!   flow carried over UDP therefore never stays silent toward its peer for
//!   longer than `keepalive` ([`HostConfig`](super::HostConfig)): a bare
//!   SAL ACK goes out when that much time passed since the flow last sent
//!   anything. Only clients send them: the side behind a NAT is the one
//!   that opened the flow.
//! - **Nudges.** A client whose NAT rebinds the flow mid-transfer loses
//!   what the peer sends to the old mapping: the answers to its data (it
//!   then sends nothing more until its transport's retransmission timeout), or
//!   the rest of a download (a receiver has nothing to say). Either way the
//!   peer cannot know where the client went until the client speaks. So a
//!   busy client flow over UDP (one that waits for an answer, or whose peer
//!   was streaming data) that has heard nothing for [`NUDGE_AFTER`] sends a
//!   bare ACK, then again after twice and four times as long: through the
//!   new mapping, that draws the path challenge whose answer moves the
//!   flow (next point).
//! - **Rebinding.** A NAT may move a flow to another public address or port
//!   (it restarted, it ran out of ports, the mapping expired). The peer
//!   then sees the flow's packets arrive from somewhere new. Nothing that
//!   merely arrives from there proves the peer is there: packets without
//!   CONTROL can be forged by anyone who learned the flow IDs, from any
//!   source address, and a control message that carries the peer's nonce
//!   can be replayed from anywhere by whoever saw it once (a bare ACK, which
//!   keepalives, nudges and most answers are, reuses the next `verno`
//!   without consuming it, so a replayed one looks exactly like a fresh
//!   one), or sent from a spoofed address by the peer itself, to make us
//!   send its download to a victim. So the host never follows such a
//!   packet: it sends a *path challenge* with a fresh random token to the
//!   new address, keeps using the old one, and moves the flow only when the
//!   answer comes back from the new address, echoing that token and
//!   carrying the peer's nonce (as QUIC moves a connection only to a path
//!   that echoed its PATH_CHALLENGE). Then, and only then, the flow's
//!   socket resends what is in flight (`sal_tcp::Socket::rewind`), so that
//!   the transport never waits for its retransmission timeout; until then the
//!   new address gets nothing but challenges, no bigger than the packets
//!   that drew them (save a bare 12-byte header's), at most one per packet
//!   and at most ten a second for each of the two budgets below. Nor do
//!   packets from there count as the peer speaking (see `input.rs`), so
//!   forged ones cannot hide a dead path. The peer answers a
//!   challenge at the address it knows for us; its NAT sends that from the
//!   new mapping, which proves the mapping. A client that hears nothing
//!   (its nudges, above) thus costs a rebinding a round trip more: the
//!   nudge draws the challenge, the answer moves the flow.
//! - **Advertised locators.** A peer's ADDRESS extension lists other
//!   locators of its own, but a hostile peer may list a victim's address
//!   and fall silent. So when the path goes silent and this host has no
//!   other interface, the flow stays where it is and the next advertised
//!   locator gets a path challenge (one per liveness verdict, cycling
//!   through them); the flow moves there, as for a rebinding, only once
//!   the answer came back from there. The peer sends its answer from the
//!   locator the challenge reached, which proves it is there; such a move
//!   is no rebinding in [`HostStats`](super::HostStats). The peer did not
//!   choose that locator, and still sends from the one the flow left,
//!   whose way back may be what failed; so an RSYN from where this end is
//!   goes there at once, and the peer, sought there, moves its end of the
//!   flow there too (see `Host::meet_peer_at`). An advertised locator this
//!   end did not seek (nor the peer's RSYN name) is never
//!   followed: the challenge came from a late packet from a locator the
//!   peer left, and its answer from there would undo the peer's move.
//!
//! The path challenge is `CONTROL(RSYN|NACK)` whose nonce field holds a
//! fresh random token instead of the sender's nonce: the new address may be
//! an attacker's, and an attacker who learned our nonce could forge our
//! control messages to the peer. The receiver answers it without checking
//! that nonce, only toward the address it already uses for the flow (never
//! the challenge's source), from the local address the challenge reached
//! if that is one of its interfaces that is up (else from the flow's own),
//! so the challenge can neither redirect nor reveal anything. The answer is
//! `CONTROL(RSYN|NACK|ACK)` whose nonce field holds the token XOR the
//! answerer's own nonce (`verno` and `ackno` those of a bare ACK): only
//! someone who both got the challenge and knows the peer's nonce can make
//! it, and a host that does not know the message drops it for its nonce
//! (with the token in `verno` and `ackno` and the nonce in clear, it would
//! take the token for an acknowledgement number). Up to [`MAX_CHALLENGES`] addresses are
//! challenged at once, each with one token (repeated challenges to one
//! address repeat it) for [`CHALLENGE_LIFETIME`]; the first answer spends
//! them all, so a replayed answer proves nothing. Challenges are
//! rate-limited per flow; a challenge drawn by a message that carried the
//! peer's nonce has a budget of its own, so forged packets from elsewhere
//! cannot crowd out the peer's own rebinding. The challenge to the address
//! the peer's RSYN came from is repeated on a timer until answered (a peer
//! that only receives sends nothing else that would draw one). Answers are
//! not rate-limited: each goes to the one address the flow already uses,
//! one for one challenge, and a budget would let forged challenges spend
//! it. A
//! reference host drops the challenge (nonce mismatch) and never answers:
//! its flows do not follow a rebinding, nor move to a locator it advertised.

use smoltcp::time::{Duration, Instant};

use super::control::ControlKind;
use super::flow::Endpoint;
use super::stream::Rewind;
use super::timer::Timer;
use super::{Event, FlowState, Host, Role};
use crate::id::FlowId;
use crate::locator::Locator;
use crate::wire::{
    verify_transport_checksum, ControlFlags, ControlRepr, SalRepr, SourceRepr, TransportProtocol,
};

/// A waiting client flow over UDP that has heard nothing for this long
/// nudges its peer (see the module docs); later nudges wait twice as long
/// each time.
pub(super) const NUDGE_AFTER: Duration = Duration::from_millis(200);
/// Nudges per silence at most (200, 400 and 800 ms after the peer was
/// heard; beyond that the liveness verdict takes over).
const MAX_NUDGES: u32 = 3;
/// Packets with data in a row after which the peer counts as streaming.
const STREAMING: u32 = 8;
/// At most one path challenge per flow this often, for each of the two
/// kinds of packet that draw one (with the peer's nonce, and without).
const CHALLENGE_INTERVAL: Duration = Duration::from_millis(100);
/// The first repetition of the challenge to the address an RSYN came from,
/// if no answer came; each next one waits twice as long, while the
/// challenge lives ([`CHALLENGE_LIFETIME`]).
const CHALLENGE_RETRY: Duration = Duration::from_millis(200);
/// Repetitions of that challenge at most (200 ms to 3.2 s apart: 6.2 s).
const CHALLENGE_RETRIES: u32 = 5;
/// Path challenges of one flow whose answer is still taken.
const MAX_CHALLENGES: usize = 4;
/// How long the answer to a path challenge is taken.
const CHALLENGE_LIFETIME: Duration = Duration::from_secs(3);

/// The flags of a path challenge.
pub(super) fn challenge_flags() -> ControlFlags {
    ControlFlags::RSYN | ControlFlags::NACK
}

/// Whether `control` is a path challenge (see the module docs).
pub(super) fn is_challenge(control: &ControlRepr) -> bool {
    control.flags == challenge_flags()
}

/// The flags of the answer to a path challenge.
pub(super) fn answer_flags() -> ControlFlags {
    ControlFlags::RSYN | ControlFlags::NACK | ControlFlags::ACK
}

/// Whether `control` answers a path challenge (see the module docs).
pub(super) fn is_answer(control: &ControlRepr) -> bool {
    control.flags == answer_flags()
}

/// The nonce field of an answer: the challenge's token XOR the
/// answerer's nonce (and, applied again, the token back).
fn xor(a: [u8; 8], b: [u8; 8]) -> [u8; 8] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// What drew a path challenge: how well it is kept, and what its answer
/// may do (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drawn {
    /// A packet without the peer's nonce came from the address.
    Packet,
    /// A message with the peer's nonce came from there: a rebinding, or
    /// the peer's RSYN.
    PeerNonce,
    /// The path went silent and the peer advertised the address: this end
    /// seeks it (see `Host::abandon_path`).
    Silence,
}

/// A path challenge whose answer is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Challenge {
    /// Where it went: only an answer from there counts.
    to: Locator,
    token: [u8; 8],
    /// When it first went there: its answer is taken for
    /// [`CHALLENGE_LIFETIME`] from then.
    at: Instant,
    /// Drawn by the peer's nonce, or sought: kept before forged packets'.
    for_peer: bool,
    /// Sought because the path went silent: its answer may move the flow
    /// to a locator the peer advertised.
    sought: bool,
}

/// Where to answer a first packet that came from `src` with SOURCE
/// `source`: the address and port it really came from, or, through a
/// service router, the client's address from SOURCE with the port the
/// router recorded (else the router's own port, as when one port served a
/// whole deployment).
///
/// SOURCE `[L, L]` from `L` (a hop that shares its client's address: a
/// program's SYN relayed by the sald beside it) is answered at the port
/// recorded, so a sender at `L` can steer the answer to any port of its
/// own address; no further than a sender anywhere else (`S`) can with
/// `[L, S]`: SOURCE names where to answer by design (WIRE.md), and earns
/// that address one answer per first packet. A loopback address is never
/// taken from off the host ([`loopback_from_afar`]).
pub(super) fn client_locator(src: &Locator, source: Option<&SourceRepr>) -> Locator {
    let Some(source) = source else {
        return *src;
    };
    let Some(&client) = source.addrs.first() else {
        return *src;
    };
    // The hop that relayed the packet last appended the address it was
    // reached at, and sent from it.
    let from_last_hop = source.addrs.last() == Some(&src.ip());
    match src {
        // A router that kept the client's own addressing (the reference
        // kernel module re-sends the client's UDP header): the packet's
        // source is the client's. Not when the client's address is also
        // the last hop's: a program's SYN that the sald of its own host
        // relayed to a program beside it comes from that sald.
        _ if src.ip() == client && !from_last_hop => *src,
        Locator::Ipv4(_) => Locator::Ipv4(client),
        Locator::Udp(via) => {
            let port = match source.client_port {
                0 => via.port(),
                port => port,
            };
            Locator::Udp(std::net::SocketAddrV4::new(client, port))
        }
    }
}

/// Whether a first packet from `src` with SOURCE `source` names a
/// loopback address as its client though it did not come over loopback
/// itself. A loopback address names a host only to itself: a packet that
/// came from elsewhere cannot have come from there, and answering it (at
/// [`client_locator`]) would send this host's SYN-ACK or datagram answer
/// to a port on its own loopback, to whichever program listens there, at
/// a remote sender's word. Over loopback (a program's SYN that the daemon
/// beside it relayed to a program beside both, all on 127.0.0.1) such a
/// SOURCE is the true path: the kernel never delivers a loopback source
/// from a link. Nor does it deliver one of the host's own addresses from
/// a link (Linux drops such packets unless `accept_local` is set), so a
/// source that is one of ours (`src_is_ours`: a daemon on the host's
/// address relaying a client of its own on 127.0.0.1) is on the host too.
/// A hop's address is only a record of the path (nothing is sent there),
/// and a daemon reached at 127.0.0.1 by a program on the host's address
/// records that one truly.
pub(super) fn loopback_from_afar(
    src: &Locator,
    src_is_ours: bool,
    source: Option<&SourceRepr>,
) -> bool {
    !src.ip().is_loopback()
        && !src_is_ours
        && source
            .and_then(|source| source.addrs.first())
            .is_some_and(|client| client.is_loopback())
}

/// Whether the transport segment of a packet from `src` to `dst` passes its
/// checksum: verified natively, only framed in UDP carriage (see the module
/// docs).
pub(super) fn transport_checksum_ok(
    protocol: TransportProtocol,
    src: &Locator,
    dst: &Locator,
    segment: &[u8],
) -> bool {
    match src {
        Locator::Udp(_) => {
            segment.len() >= protocol.min_header_len() && segment.len() <= usize::from(u16::MAX)
        }
        Locator::Ipv4(_) => verify_transport_checksum(protocol, src.ip(), dst.ip(), segment),
    }
}

/// The NAT-related state of one flow. See the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct NatState {
    /// When this end last sent a packet on the flow.
    last_sent: Option<Instant>,
    /// Nudges sent since the peer was last heard (at `heard`).
    nudges: u32,
    heard: Option<Instant>,
    /// Packets from the peer in a row that carried data.
    streak: u32,
    /// When a path challenge last went out for a packet without the
    /// peer's nonce.
    challenged: Option<Instant>,
    /// When one last went out for a control message with the peer's nonce.
    challenged_for_peer: Option<Instant>,
    /// Challenges whose answer is awaited, oldest first (empty, and
    /// unallocated, on a flow whose peer never moved).
    challenges: Vec<Challenge>,
    /// Repetitions of the challenge to the address an RSYN came from.
    challenge_retries: u32,
}

impl NatState {
    /// This end sent a packet on the flow at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
    }

    /// When a keepalive is due if nothing else goes out: `interval` after
    /// the last packet sent (or after `now`, if none was).
    pub fn keepalive_at(&self, now: Instant, interval: Duration) -> Instant {
        self.last_sent.unwrap_or(now) + interval
    }

    /// When the next nudge is due, for a flow whose peer was last heard at
    /// `heard`; `None` once the nudges for this silence are spent.
    pub fn nudge_at(&mut self, heard: Instant) -> Option<Instant> {
        if self.heard != Some(heard) {
            self.heard = Some(heard);
            self.nudges = 0;
        }
        (self.nudges < MAX_NUDGES).then(|| heard + NUDGE_AFTER * (1u32 << self.nudges))
    }

    /// A nudge went out.
    pub fn nudged(&mut self) {
        self.nudges += 1;
    }

    /// A packet arrived from the peer, with data or not; returns true when
    /// this makes the peer count as streaming (the nudge timer must run).
    pub fn peer_sent(&mut self, data: bool) -> bool {
        self.streak = if data {
            self.streak.saturating_add(1)
        } else {
            0
        };
        self.streak == STREAMING
    }

    /// Whether the peer's last packets were a stream of data.
    pub fn peer_streaming(&self) -> bool {
        self.streak >= STREAMING
    }

    /// Whether a path challenge may go out now for a packet that carried
    /// the peer's nonce (`for_peer`) or did not; if so, it counts as sent.
    pub fn may_challenge(&mut self, now: Instant, for_peer: bool) -> bool {
        let last = match for_peer {
            true => &mut self.challenged_for_peer,
            false => &mut self.challenged,
        };
        Self::take_turn(last, now, CHALLENGE_INTERVAL)
    }

    /// The token of a path challenge to `to`, `drawn` as it was: the token
    /// of the challenge already awaited there, so that the answer to any
    /// copy counts (and it counts as drawn both ways), else `fresh`,
    /// awaited from now on. When too many are awaited, the oldest is
    /// forgotten, one drawn without the nonce first: forged packets from
    /// many addresses cannot push out the peer's.
    fn challenge_token(
        &mut self,
        to: Locator,
        fresh: [u8; 8],
        drawn: Drawn,
        now: Instant,
    ) -> [u8; 8] {
        let (for_peer, sought) = (drawn != Drawn::Packet, drawn == Drawn::Silence);
        self.challenges.retain(|c| now < c.at + CHALLENGE_LIFETIME);
        if let Some(c) = self.challenges.iter_mut().find(|c| c.to == to) {
            c.for_peer |= for_peer;
            c.sought |= sought;
            return c.token;
        }
        if self.challenges.len() >= MAX_CHALLENGES {
            let oldest = (self.challenges.iter().position(|c| !c.for_peer)).unwrap_or(0);
            self.challenges.remove(oldest);
        }
        self.challenges.push(Challenge {
            to,
            token: fresh,
            at: now,
            for_peer,
            sought,
        });
        fresh
    }

    /// The challenge still awaited at `from` that `token`, come back from
    /// there at `now`, answers, if any. Then the path is proven and every
    /// challenge is spent: a replayed answer proves nothing.
    fn take_answer(&mut self, from: Locator, token: [u8; 8], now: Instant) -> Option<Challenge> {
        let answered = (self.challenges.iter())
            .find(|c| c.to == from && c.token == token && now < c.at + CHALLENGE_LIFETIME)
            .copied();
        if answered.is_some() {
            self.challenges = Vec::new();
        }
        answered
    }

    /// Forgets the challenges awaited from anywhere but `to`, where the
    /// peer's latest RSYN came from: an answer from elsewhere would be from
    /// an address it left. (Challenges drawn later, by a rebinding, count
    /// again.)
    pub fn keep_challenges_to(&mut self, to: Locator) {
        self.challenges.retain(|c| c.to == to);
    }

    /// Forgets every challenge awaited: the peer spoke, with its nonce,
    /// from where the flow runs, so an answer from elsewhere now would be
    /// from an address it left.
    pub fn forget_challenges(&mut self) {
        self.challenges = Vec::new();
    }

    fn take_turn(last: &mut Option<Instant>, now: Instant, interval: Duration) -> bool {
        if last.is_some_and(|at| now < at + interval) {
            return false;
        }
        *last = Some(now);
        true
    }
}

impl Host {
    /// Whether a flow is one this host keeps alive and nudges: an
    /// established client flow carried over UDP.
    fn nat_client(&mut self, id: FlowId) -> bool {
        matches!(
            self.endpoints.get(id),
            Some(Endpoint::Flow(flow)) if flow.role == Role::Client
                && flow.state == FlowState::Established
                && matches!(flow.path.local, Locator::Udp(_))
        )
    }

    /// Starts the keepalives of a client flow over UDP that was just
    /// established (nothing for other flows, or with keepalives off).
    pub(super) fn arm_keepalive(&mut self, id: FlowId) {
        let (Some(interval), true) = (self.config.keepalive, self.nat_client(id)) else {
            return;
        };
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let at = flow.nat.keepalive_at(now, interval);
        self.arm_timer(id, Timer::Keepalive, at);
    }

    /// A client flow over UDP started waiting for its peer, or its peer
    /// started streaming: its nudge is due if the peer falls silent.
    pub(super) fn arm_nudge(&mut self, id: FlowId) {
        if !self.nat_client(id) {
            return;
        }
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let heard = flow.liveness.last_heard();
        if let Some(at) = flow.nat.nudge_at(heard) {
            self.arm_timer(id, Timer::Keepalive, at);
        }
    }

    /// The flow's keepalive timer fired: a nudge if it waits on a silent
    /// peer, else a keepalive if it has sent nothing for the interval; then
    /// the timer is armed for whichever comes next.
    pub(super) fn keepalive_due(&mut self, id: FlowId) {
        if !self.nat_client(id) {
            return;
        }
        let waiting = self.awaits_peer(id);
        let (now, keepalive) = (self.now, self.config.keepalive);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let busy = waiting || flow.nat.peer_streaming();
        let heard = flow.liveness.last_heard();
        let nudge = busy && flow.nat.nudge_at(heard).is_some_and(|at| at <= now);
        if nudge {
            flow.nat.nudged();
        }
        let keep =
            !nudge && keepalive.is_some_and(|interval| flow.nat.keepalive_at(now, interval) <= now);
        self.stats.nudges += u64::from(nudge);
        self.stats.keepalives += u64::from(keep);
        if nudge || keep {
            self.send_ack(id, false, &[]);
        }
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let next_nudge = if busy { flow.nat.nudge_at(heard) } else { None };
        let next_keepalive = keepalive.map(|interval| flow.nat.keepalive_at(now, interval));
        if let Some(next) = next_nudge.into_iter().chain(next_keepalive).min() {
            self.arm_timer(id, Timer::Keepalive, next);
        }
    }

    /// A packet on an established flow came from `src`, which is not where
    /// the peer is: challenge the new address (rate-limited; `for_peer`
    /// when the packet carried the peer's nonce) and keep using the old one
    /// until the answer proves the new one (see the module docs).
    pub(super) fn challenge_path(&mut self, id: FlowId, src: Locator, for_peer: bool) {
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        // A locator the peer advertised and left: its answer would not be
        // followed (see `Host::peer_rebound`), and spending the flow's
        // challenges on it would cancel the one its RSYN drew.
        if flow.state != FlowState::Established
            || flow.path.remote == Some(src)
            || flow.path.left_behind(src)
            || !flow.nat.may_challenge(now, for_peer)
        {
            return;
        }
        let drawn = if for_peer {
            Drawn::PeerNonce
        } else {
            Drawn::Packet
        };
        self.send_challenge(id, src, drawn);
    }

    /// The peer's RSYN came from `src`, not where the flow runs: challenge
    /// `src` (see `Host::rsyn_input`). Not rate-limited as other
    /// challenges are: an RSYN with the peer's nonce draws one challenge,
    /// one for one, and a peer that moved twice at once must get both.
    pub(super) fn challenge_rsyn_source(&mut self, id: FlowId, src: Locator) {
        self.challenge_elsewhere(id, src, Drawn::PeerNonce);
    }

    /// The path went silent and the peer advertised `to`: challenge it
    /// (see `Host::abandon_path`), once per liveness verdict, and move the
    /// flow there only once it answers (see [`Host::answer_input`]).
    pub(super) fn seek_peer_locator(&mut self, id: FlowId, to: Locator) {
        self.challenge_elsewhere(id, to, Drawn::Silence);
    }

    /// Challenges `to`, `drawn` as it was, if the flow is established and
    /// does not run there already; not rate-limited.
    fn challenge_elsewhere(&mut self, id: FlowId, to: Locator, drawn: Drawn) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.state == FlowState::Established && flow.path.remote != Some(to) {
            self.send_challenge(id, to, drawn);
        }
    }

    /// The peer's RSYNs now come from `Path::moving_to`, a new address:
    /// (re)starts the repetitions of its challenge ([`Host::challenge_due`]).
    pub(super) fn repeat_challenges(&mut self, id: FlowId) {
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        flow.nat.challenge_retries = 0;
        self.arm_timer(id, Timer::Challenge, now + CHALLENGE_RETRY);
    }

    /// The challenge to the address the peer's RSYN came from
    /// (`Path::moving_to`) is still unanswered: send it again (the same
    /// token while it lives), and again after twice as long, up to
    /// [`CHALLENGE_RETRIES`] times. A lost
    /// challenge or answer would otherwise leave the flow where the peer
    /// no longer is: a peer that only receives sends nothing that would
    /// draw another.
    pub(super) fn challenge_due(&mut self, id: FlowId) {
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let Some(to) = flow.path.moving_to else {
            return;
        };
        if flow.state != FlowState::Established || flow.path.remote == Some(to) {
            return;
        }
        if flow.nat.challenge_retries >= CHALLENGE_RETRIES {
            // Never answered: the RSYN did not come from the peer, or the
            // peer left again. Its answers go back to where the flow runs.
            flow.path.moving_to = None;
            return;
        }
        flow.nat.challenge_retries += 1;
        let wait = CHALLENGE_RETRY * 2u32.pow(flow.nat.challenge_retries);
        self.send_challenge(id, to, Drawn::PeerNonce);
        self.arm_timer(id, Timer::Challenge, now + wait);
    }

    /// Sends `src` a path challenge on flow `id` (the token already awaited
    /// there, or a fresh one).
    fn send_challenge(&mut self, id: FlowId, src: Locator, drawn: Drawn) {
        let now = self.now;
        let fresh: [u8; 8] = rand::Rng::random(&mut self.rng);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let token = flow.nat.challenge_token(src, fresh, drawn, now);
        let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol().number());
        repr.control = Some(ControlRepr {
            flags: challenge_flags(),
            // A fresh token, never our nonce: see the module docs.
            nonce: token,
            ..flow.control.ack()
        });
        let local = flow.path.local;
        self.stats.path_challenges += 1;
        self.send_packet(local, src, super::output::build(&repr, &[]));
    }

    /// A path challenge arrived on a flow at `dst`: answer it, echoing its
    /// token under our nonce, at the address we already use for the peer,
    /// never at the challenge's source (forged challenges would reflect
    /// answers, and token XOR nonce, to anyone). The answer leaves from
    /// `dst` if that is ours and up, so that a peer that challenged a
    /// locator we advertised hears back from there (else from the flow's
    /// own locator). Every challenge is answered, one packet for one,
    /// always to that one address: a budget of answers would let anyone
    /// who knows the flow IDs spend it with forged challenges, so that the
    /// peer's own went unanswered and a move of ours was never followed.
    pub(super) fn challenge_input(&mut self, id: FlowId, dst: Locator, challenge: &ControlRepr) {
        let now = self.now;
        let arrived_at = self.interfaces.owns_up(&dst).then_some(dst);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let Some(remote) = flow.path.remote else {
            return;
        };
        if flow.state != FlowState::Established {
            return;
        }
        if let Some(at) = arrived_at.filter(|at| *at != flow.path.local) {
            // The peer seeks us there: its RSYN may follow (see
            // `Host::meet_peer_at`).
            flow.path.sought_here = Some(at);
        }
        let mut repr = SalRepr::data(flow.id, flow.peer_flow, flow.protocol().number());
        repr.control = Some(ControlRepr {
            flags: answer_flags(),
            nonce: xor(challenge.nonce, flow.control.local_nonce),
            ..flow.control.ack()
        });
        flow.count_sent(now);
        let local = arrived_at.unwrap_or(flow.path.local);
        self.send_packet(local, remote, super::output::build(&repr, &[]));
    }

    /// The answer to a path challenge arrived from `src`. If it carries the
    /// token of a challenge sent there, under the peer's nonce, the peer is
    /// at `src`: the flow follows it there (see [`Host::peer_rebound`]).
    /// Returns whether it did.
    pub(super) fn answer_input(&mut self, id: FlowId, src: Locator, answer: &ControlRepr) -> bool {
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        if flow.path.remote == Some(src) {
            // Late: another copy's answer moved the flow here already (or
            // it is forged, and moves nothing either way).
            return false;
        }
        let answered = (flow.control.peer_nonce)
            .filter(|_| flow.state == FlowState::Established)
            .and_then(|peer| flow.nat.take_answer(src, xor(answer.nonce, peer), now));
        let Some(challenge) = answered else {
            self.stats.bad_nonce += 1;
            return false;
        };
        self.peer_rebound(id, src, challenge.sought)
    }

    /// The peer answered a path challenge from `src`, which is not where
    /// it was: it moved there (its RSYN came from there), it is at a
    /// locator it advertised that this end `sought` (the path went
    /// silent), or its NAT rebound the flow. Follow it, and resend at once
    /// what the old path may have swallowed. Returns whether it did.
    ///
    /// A peer that moved with an RSYN: TCP's first sample of the new path
    /// is the answer to our RSYN-ACK, sent to `src` beside the challenge.
    /// It comes back first, while the flow still runs on the old path,
    /// and was kept for now (`Path::take_timed`): seeded then, it was
    /// ignored (the old path's estimate was there) and the move's reset of
    /// the estimator forgot it. Unseeded, a segment of the resent flight
    /// lost on the new path waited the initial timeout of 1 s, in
    /// `sal/tests/sim_path_change.rs` cut short by the rewind after the
    /// liveness probe, 0.8 s after the move; seeded, 0.2 s. (The
    /// challenge times the path too, but the peer's packets from `src`
    /// before its answer draw copies of it, which leave its answer no
    /// sample, Karn.)
    ///
    /// A locator the peer advertised but neither moved to nor was sought
    /// at is not followed: the peer answers from the address a challenge
    /// reached, so a late packet from a locator it left (and still has)
    /// draws a challenge answered from there, and following that would
    /// undo its move.
    ///
    /// A locator this end sought is one the peer did not choose: it still
    /// sends from the one we left, which may be the way that failed (or,
    /// if its packets still get here, one they would not count from). So
    /// an RSYN from where this end already is goes there, and the peer
    /// moves its end to the locator it reached (see `Host::meet_peer_at`).
    fn peer_rebound(&mut self, id: FlowId, src: Locator, sought: bool) -> bool {
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        if !sought && flow.path.left_behind(src) {
            return false;
        }
        let named = sought || flow.path.moving_to == Some(src);
        // A new path, unless only the UDP port changed (a NAT rebinding
        // that kept its address, RFC 9000 9.4).
        let why = match flow.path.remote {
            Some(left) if left.ip() == src.ip() => Rewind::SamePath,
            _ => Rewind::NewPath,
        };
        if flow.state != FlowState::Established || !flow.path.follow_peer(src) {
            return false;
        }
        let round_trip = flow.path.take_timed(src);
        if !named {
            self.stats.rebindings += 1;
        }
        self.events.push_back(Event::PeerMoved(id, src));
        self.rewind_stream(id, why);
        if let (Rewind::NewPath, Some(round_trip)) = (why, round_trip) {
            self.seed_stream_round_trip(id, round_trip);
        }
        self.retransmit_now(id);
        if sought {
            // A fresh RSYN: a copy of one in flight might be a duplicate
            // there, which moves nothing.
            self.send_new_control(id, ControlKind::Probe, ControlFlags::RSYN, false, &[]);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn loc(s: &str) -> Locator {
        s.parse().unwrap()
    }

    fn source(addrs: &[&str], client_port: u16) -> SourceRepr {
        SourceRepr {
            addrs: addrs
                .iter()
                .map(|a| a.parse::<Ipv4Addr>().unwrap())
                .collect(),
            client_port,
        }
    }

    #[test]
    fn first_packets_are_answered_where_they_really_came_from() {
        let nat = loc("udp:10.9.0.1:40123");
        assert_eq!(
            client_locator(&nat, None),
            nat,
            "direct: the NAT's address and port"
        );
        // Relayed by a router of this stack: SOURCE[0] and the port it recorded.
        let router = loc("udp:10.0.0.254:54325");
        let relayed = source(&["10.9.0.1", "10.0.0.254"], 40123);
        assert_eq!(client_locator(&router, Some(&relayed)), nat);
        // A router that recorded no port: its own port, as before.
        let legacy = source(&["10.9.0.1", "10.0.0.254"], 0);
        assert_eq!(
            client_locator(&router, Some(&legacy)),
            loc("udp:10.9.0.1:54325")
        );
        // A router that kept the client's addressing: the packet's source,
        // whatever the reserved field holds.
        let kept = source(&["10.9.0.1", "10.0.0.254"], 7);
        assert_eq!(client_locator(&nat, Some(&kept)), nat);
        // Native carriage has no ports.
        assert_eq!(
            client_locator(&loc("10.0.0.254"), Some(&relayed)),
            loc("10.9.0.1")
        );
        // A program's SYN relayed by its own host's sald to a program on
        // the same host: the client shares the relaying hop's address, and
        // is at the port the hop recorded, not at the hop's.
        let beside = source(&["10.0.0.1", "10.0.0.1"], 40123);
        assert_eq!(
            client_locator(&loc("udp:10.0.0.1:7077"), Some(&beside)),
            loc("udp:10.0.0.1:40123")
        );
        // That steers no further than SOURCE lets any sender elsewhere.
        let elsewhere = source(&["10.0.0.1", "10.9.9.9"], 40123);
        assert_eq!(
            client_locator(&loc("udp:10.9.9.9:5555"), Some(&elsewhere)),
            loc("udp:10.0.0.1:40123")
        );
    }

    #[test]
    fn loopback_on_the_path_is_taken_only_over_loopback() {
        let afar = loc("udp:10.0.0.9:6666");
        let forged = source(&["127.0.0.1", "10.0.0.9"], 53);
        assert!(loopback_from_afar(&afar, false, Some(&forged)));
        // A daemon reached at 127.0.0.1 by a program on a real address.
        let hop = source(&["10.0.0.9", "127.0.0.1"], 6666);
        assert!(!loopback_from_afar(&afar, false, Some(&hop)));
        assert!(loopback_from_afar(&loc("10.0.0.9"), false, Some(&forged)));
        assert!(!loopback_from_afar(&afar, false, None));
        assert!(!loopback_from_afar(
            &afar,
            false,
            Some(&source(&["10.0.0.9", "10.0.0.1"], 0))
        ));
        // All on one machine's loopback: a program's SYN relayed by the
        // daemon beside it.
        let beside = source(&["127.0.0.7", "127.0.0.7"], 40123);
        assert!(!loopback_from_afar(
            &loc("udp:127.0.0.7:7077"),
            false,
            Some(&beside)
        ));
        // A daemon on this host's own address relaying a client of its
        // own on 127.0.0.1: the kernel never delivers our own address from
        // a link, so this came from the host.
        let local_client = source(&["127.0.0.1", "10.0.0.1"], 40123);
        assert!(!loopback_from_afar(
            &loc("udp:10.0.0.1:7077"),
            true,
            Some(&local_client)
        ));
        assert!(loopback_from_afar(
            &loc("udp:10.0.0.1:7077"),
            false,
            Some(&local_client)
        ));
    }

    #[test]
    fn inner_checksums_are_verified_natively_and_only_framed_over_udp() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let mut segment = vec![0u8; 28];
        segment[12] = 5 << 4;
        crate::wire::fill_transport_checksum(TransportProtocol::Stream, a, b, &mut segment)
            .unwrap();
        let tcp = TransportProtocol::Stream;
        assert!(transport_checksum_ok(
            tcp,
            &Locator::Ipv4(a),
            &Locator::Ipv4(b),
            &segment
        ));
        // Through a NAT the sender's addresses are not the ones we see.
        let natted = loc("10.9.0.1");
        assert!(!transport_checksum_ok(
            tcp,
            &natted,
            &Locator::Ipv4(b),
            &segment
        ));
        let natted_udp = loc("udp:10.9.0.1:40000");
        assert!(transport_checksum_ok(
            tcp,
            &natted_udp,
            &loc("udp:10.0.0.2:1"),
            &segment
        ));
        // Framing still counts: a segment shorter than a TCP header fails.
        assert!(!transport_checksum_ok(
            tcp,
            &natted_udp,
            &loc("udp:10.0.0.2:1"),
            &segment[..19]
        ));
    }

    #[test]
    fn keepalives_are_due_an_interval_after_the_last_packet_sent() {
        let mut nat = NatState::default();
        let interval = Duration::from_secs(25);
        let t = Instant::from_millis(1000);
        assert_eq!(
            nat.keepalive_at(t, interval),
            t + interval,
            "nothing sent yet"
        );
        nat.sent(t + Duration::from_secs(3));
        assert_eq!(
            nat.keepalive_at(t + Duration::from_secs(9), interval),
            t + Duration::from_secs(28)
        );
    }

    #[test]
    fn nudges_back_off_and_start_over_when_the_peer_is_heard() {
        let mut nat = NatState::default();
        let heard = Instant::from_millis(1000);
        let mut due = Vec::new();
        while let Some(at) = nat.nudge_at(heard) {
            due.push((at - heard).total_millis());
            nat.nudged();
        }
        assert_eq!(due, [200, 400, 800]);
        let later = Instant::from_millis(5000);
        assert_eq!(nat.nudge_at(later), Some(later + NUDGE_AFTER));
    }

    #[test]
    fn a_peer_streams_after_enough_packets_of_data_in_a_row() {
        let mut nat = NatState::default();
        let crossings: Vec<bool> = (0..10).map(|_| nat.peer_sent(true)).collect();
        assert_eq!(crossings.iter().filter(|c| **c).count(), 1, "told once");
        assert!(crossings[STREAMING as usize - 1]);
        assert!(nat.peer_streaming());
        assert!(!nat.peer_sent(false));
        assert!(
            !nat.peer_streaming(),
            "a packet without data ends the stream"
        );
    }

    #[test]
    fn challenges_are_rate_limited() {
        let mut nat = NatState::default();
        let t = Instant::from_millis(1000);
        assert!(nat.may_challenge(t, false));
        assert!(!nat.may_challenge(t + Duration::from_millis(99), false));
        // The peer's own messages have a budget of their own.
        assert!(nat.may_challenge(t + Duration::from_millis(99), true));
        assert!(!nat.may_challenge(t + Duration::from_millis(150), true));
        assert!(nat.may_challenge(t + Duration::from_millis(100), false));
    }

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn an_answer_proves_only_the_address_its_challenge_went_to_and_only_once() {
        let mut nat = NatState::default();
        let (new, other) = (loc("udp:10.0.0.101:40000"), loc("udp:10.0.0.66:54325"));
        let token = nat.challenge_token(new, [1; 8], Drawn::Packet, at(0));
        assert_eq!(token, [1; 8]);
        // Challenged again before the answer: the same token, so that the
        // answer to either copy counts.
        let again = nat.challenge_token(new, [2; 8], Drawn::PeerNonce, at(100));
        assert_eq!(again, [1; 8]);
        assert!(
            nat.take_answer(new, [2; 8], at(150)).is_none(),
            "wrong token"
        );
        assert!(
            nat.take_answer(other, [1; 8], at(150)).is_none(),
            "from elsewhere"
        );
        assert!(nat.take_answer(new, [1; 8], at(150)).is_some());
        assert!(nat.take_answer(new, [1; 8], at(160)).is_none(), "a replay");
        // Too late.
        let token = nat.challenge_token(other, [3; 8], Drawn::Packet, at(1000));
        assert!(nat
            .take_answer(other, token, at(1000) + CHALLENGE_LIFETIME)
            .is_none());
        // A token expires with its challenge: the next one is fresh.
        let late = at(1000) + CHALLENGE_LIFETIME;
        assert_eq!(
            nat.challenge_token(other, [4; 8], Drawn::Packet, late),
            [4; 8]
        );
    }

    #[test]
    fn challenges_from_forgeries_give_way_before_the_peers_own() {
        let mut nat = NatState::default();
        let peer = loc("udp:10.0.0.101:40000");
        nat.challenge_token(loc("10.0.0.1"), [1; 8], Drawn::Packet, at(0));
        nat.challenge_token(peer, [7; 8], Drawn::PeerNonce, at(10));
        for i in 2..20u8 {
            let forged = Locator::Ipv4(std::net::Ipv4Addr::new(10, 66, 0, i));
            nat.challenge_token(forged, [i; 8], Drawn::Packet, at(i64::from(i) * 100));
        }
        assert_eq!(nat.challenges.len(), MAX_CHALLENGES);
        assert!(nat.take_answer(peer, [7; 8], at(2000)).is_some());
    }

    #[test]
    fn only_a_challenge_sought_on_a_silent_path_is_answered_as_sought() {
        let mut nat = NatState::default();
        let (advertised, rebound) = (loc("10.2.0.2"), loc("10.9.0.7"));
        nat.challenge_token(advertised, [1; 8], Drawn::Silence, at(0));
        nat.challenge_token(rebound, [2; 8], Drawn::PeerNonce, at(0));
        let answered = nat.take_answer(advertised, [1; 8], at(50)).unwrap();
        assert!(answered.sought && answered.for_peer);
        nat.challenge_token(rebound, [3; 8], Drawn::PeerNonce, at(100));
        assert!(!nat.take_answer(rebound, [3; 8], at(150)).unwrap().sought);
        // A packet from a sought locator draws its challenge again: still
        // sought, whichever copy is answered.
        nat.challenge_token(advertised, [4; 8], Drawn::Silence, at(200));
        nat.challenge_token(advertised, [5; 8], Drawn::Packet, at(250));
        assert!(nat.take_answer(advertised, [4; 8], at(300)).unwrap().sought);
    }

    #[test]
    fn an_answer_hides_the_token_under_the_answerers_nonce() {
        let (token, nonce) = ([0x5a; 8], [1, 2, 3, 4, 5, 6, 7, 8]);
        let hidden = xor(token, nonce);
        assert_ne!(hidden, nonce, "a host that does not know answers drops it");
        assert_eq!(xor(hidden, nonce), token);
        let answer = ControlRepr {
            flags: answer_flags(),
            nonce: hidden,
            ..ControlRepr::default()
        };
        assert!(is_answer(&answer));
        assert!(!is_challenge(&answer));
    }

    #[test]
    fn a_challenge_is_recognised_by_its_flags_alone() {
        let challenge = ControlRepr {
            flags: challenge_flags(),
            nonce: [9; 8],
            ..ControlRepr::default()
        };
        assert!(is_challenge(&challenge));
        for flags in [
            ControlFlags::RSYN,
            ControlFlags::RSYN | ControlFlags::ACK,
            ControlFlags::RST | ControlFlags::NACK,
            ControlFlags::RSYN | ControlFlags::NACK | ControlFlags::ACK,
        ] {
            assert!(!is_challenge(&ControlRepr { flags, ..challenge }));
        }
    }
}
