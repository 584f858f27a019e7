//! The SAL protocol core for one host, sans-IO.
//!
//! [`Host`] is a state machine in the style of quinn-proto: the caller feeds it
//! received SAL packets ([`Host::handle_packet`]) and the passage of time
//! ([`Host::poll`]), and drains what it wants sent ([`Host::poll_transmit`],
//! into the caller's buffer), what happened ([`Host::poll_event`]) and when
//! it next needs to run ([`Host::poll_timeout`]). It owns the service table,
//! the flow table, the listeners, and each stream flow's TCP socket; it owns
//! no OS socket and reads no clock, which is what lets tests run whole
//! networks of hosts deterministically.
//!
//! Nothing in it walks all flows on a packet or a timer: a packet goes to
//! its flow by flow ID, deadlines wait in one heap, and only flows with
//! something to do (input, output, a due deadline) are driven. A host with a
//! million quiet flows handles a packet as fast as one with ten.
//!
//! Exchanges are those of WIRE.md: a SYN carrying the transport's SYN, resolved
//! hop by hop by the service table (DEMUX, FORWARD, DELAY, DROP); a SYN-ACK
//! straight from the server; an ACK; then data with a bare base header; and a
//! SAL-level FIN from each side once its transport has finished sending.
//!
//! The code is cut two ways, so that each file holds one thing to understand.
//! State that has rules of its own is a type with a small API and its own
//! tests:
//! - `timer`: every flow's deadlines (its socket's among them) in one
//!   queue, lazily invalidated;
//! - `control`: numbering and retransmission of control messages;
//! - `liveness`: what the peer's silence means;
//! - `path`: a flow's addresses and moves;
//! - `nat`: answering where packets came from, keepalives and path
//!   validation across NATs (also the `impl Host` of those exchanges);
//! - `replay`: copies of stream segments to resend after a move;
//! - `delay`: what DELAY rules hold;
//! - `listener`: backlogs, half-open flows, accept queues;
//! - `cookie`: SYN cookies, which answer a SYN without keeping anything;
//! - `interface`: the host's interfaces and source-address policy;
//! - `flow`: one end of a flow, made of the parts above.
//!
//! [`Host`]'s behaviour is split by exchange, each file an `impl Host` with
//! the public calls of its concern: `input` (parsing and dispatch),
//! `handshake` (connect, SYN, SYN-ACK, ACK, refusals), `route` (table edits,
//! forwarding), `teardown` (FIN, RST, close), `rider` (control messages
//! that ride on stream segments), `migration` (RSYN, liveness),
//! `datagram`, `stream` (the application's streams and the only calls into
//! their sockets), `output` (the transmit path, control retransmission),
//! and `export` (handing a flow to another host and taking one up).

mod budget;
mod config;
mod control;
mod cookie;
mod datagram;
mod delay;
mod error;
mod event;
mod export;
mod flow;
mod handshake;
mod info;
mod input;
mod interface;
mod listener;
mod liveness;
mod migration;
mod nat;
mod output;
mod path;
mod rider;
mod rng;
mod route;
mod stream;
mod teardown;
mod timer;

use std::collections::VecDeque;

use smoltcp::time::Instant;

use crate::flow::FlowTable;
use crate::id::{FlowId, ServiceId};
use crate::table::ServiceTable;

pub use budget::{NO_GROUP, UNACCEPTED_BUFFER, UNACCEPTED_LISTENER_BUFFER};
pub use config::{default_stream_config, HostConfig, SynCookies};
pub use datagram::{DatagramPeer, ReceivedDatagram, MAX_DATAGRAM};
pub use error::{ConnectError, HostError};
pub use event::Event;
pub use export::{
    import_memory, FlowExport, ImportError, NotExportable, FLOW_EXPORT_OLDEST, FLOW_EXPORT_VERSION,
};
pub use handshake::Refusal;
pub use info::{FlowCounters, FlowInfo, FlowState, HostStats, Role};
pub use interface::LocalInterface;
pub use output::{Transmit, TransmitKind};
pub use stream::{StreamEnds, StreamQueues};

use cookie::CookieJar;
use delay::DelayQueue;
use flow::{Endpoint, Flow};
use interface::Interfaces;
use listener::Listeners;
use output::Packet;
use timer::{Timer, TimerQueue};

/// Rounds of loopback delivery per [`Host::poll`]; a local connect takes
/// three, so this only guards against runaway loops (what is left waits
/// for the next poll, which [`Host::poll_timeout`] asks for at once).
const POLL_ROUNDS: usize = 64;

/// Bytes of the buffer loopback segments are written into: the largest
/// IPv4 payload, so that any configured MSS fits.
const LOOPBACK_BUFFER: usize = 65_535 - crate::wire::IPV4_HEADER_LEN;

/// The SAL of one host. See the module documentation.
pub struct Host {
    config: HostConfig,
    rng: rng::HostRng,
    table: ServiceTable,
    /// Flows and datagram sockets by local flow ID.
    endpoints: FlowTable<Endpoint>,
    /// How many of the endpoints are flows.
    flow_count: usize,
    listeners: Listeners,
    /// The secret SYN cookies are sealed with.
    cookies: CookieJar,
    interfaces: Interfaces,
    delayed: DelayQueue,
    /// Prefixes bound elsewhere for this host that it does not listen on
    /// yet ([`Host::reserve`]): their first packets are held, not refused.
    reserved: Vec<crate::ServicePrefix>,
    timers: TimerQueue,
    /// Whole packets for the link (everything but stream segments).
    transmits: VecDeque<Packet>,
    /// Packets this host sent to itself, fed back as input by `poll`.
    loopback: VecDeque<Packet>,
    /// Stream flows whose sockets may have segments for the link.
    output: VecDeque<FlowId>,
    /// Stream flows whose sockets may have segments for this host itself.
    local_output: VecDeque<FlowId>,
    /// Where loopback segments are written.
    scratch: Vec<u8>,
    /// Client flows whose socket holds the ACK of its handshake for the
    /// application's first write (`stream.hold_handshake_ack`), until
    /// [`Host::release_held_acks`].
    held_acks: Vec<FlowId>,
    /// Buffer storage of sockets gone, for the next sockets' first
    /// allocations (see `Host::recycle_buffers`).
    spare_buffers: Vec<Box<[u8]>>,
    events: VecDeque<Event>,
    /// Flows touched since the last poll (see `Host::review_dirty_flows`),
    /// and the list that takes their place while they are looked at.
    dirty: Vec<FlowId>,
    dirty_spare: Vec<FlowId>,
    stats: HostStats,
    /// Buffer memory by group of flows, and by listener for flows nobody
    /// has accepted yet (see `budget.rs`).
    budgets: budget::Budgets,
    /// Flows exported lately, whose packets are dropped without an answer
    /// (see `export.rs`).
    exported: export::Tombstones,
    now: Instant,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("flows", &self.endpoints.len())
            .field("listeners", &self.listeners.len())
            .field("interfaces", &self.interfaces.as_slice())
            .finish()
    }
}

impl Host {
    /// A host with no interfaces, rules or flows, at time `now`.
    pub fn new(config: HostConfig, now: Instant) -> Host {
        let (rng, cookie_secret) = rng::HostRng::new(&config);
        let cookies = CookieJar::new(cookie_secret);
        Host {
            endpoints: FlowTable::new(config.max_flows),
            flow_count: 0,
            delayed: DelayQueue::new(config.delay_queue_limit, config.delay_timeout),
            reserved: Vec::new(),
            rng,
            cookies,
            config,
            table: ServiceTable::new(),
            listeners: Listeners::default(),
            interfaces: Interfaces::default(),
            timers: TimerQueue::default(),
            transmits: VecDeque::new(),
            loopback: VecDeque::new(),
            output: VecDeque::new(),
            local_output: VecDeque::new(),
            scratch: vec![0; LOOPBACK_BUFFER],
            held_acks: Vec::new(),
            spare_buffers: Vec::new(),
            events: VecDeque::new(),
            dirty: Vec::new(),
            dirty_spare: Vec::new(),
            stats: HostStats::default(),
            budgets: budget::Budgets::default(),
            exported: export::Tombstones::default(),
            now,
        }
    }

    /// The tunables the host was built with (fixed for its lifetime).
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// A copy of the host-wide counters, which only grow (`buffer_bytes` excepted).
    pub fn stats(&self) -> HostStats {
        self.stats
    }

    /// The service table, for listings.
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// Moves the host's clock to `now` (never back) without running
    /// anything. Calls between polls (connect, send_to, migrate, rule and
    /// interface changes) start deadlines from the host's clock, which is
    /// otherwise as old as the last poll or packet, and an idle host may go
    /// long without either: a driver tells it the time before such calls.
    pub fn advance_clock(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Advances the host to `now`: runs the timers that are due (control
    /// retransmission, liveness, DELAY expiry, the sockets' own), delivers
    /// packets addressed to itself, and turns what changed into events.
    /// Call after input and at [`Host::poll_timeout`], then drain
    /// [`Host::poll_transmit`] and [`Host::poll_event`].
    pub fn poll(&mut self, now: Instant) {
        self.now = now;
        self.fire_timers(now);
        self.expire_delayed(now);
        for _ in 0..POLL_ROUNDS {
            let mut moved = false;
            while let Some(p) = self.loopback.pop_front() {
                moved = true;
                self.handle_packet(now, p.src, p.dst, p.ttl, &p.payload);
            }
            moved |= self.drain_local_output(now);
            self.review_dirty_flows();
            if !moved && self.loopback.is_empty() && self.local_output.is_empty() {
                break;
            }
        }
    }

    /// Runs the flow timers that are due; stale entries are skipped.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(due) = self.timers.pop_due(now) {
            let fired = (self.flow_mut(due.flow).ok())
                .is_some_and(|flow| flow.timers.fire(due.timer, due.at));
            if !fired {
                self.timers.popped_stale();
                continue;
            }
            match due.timer {
                Timer::Control => self.retransmit_due(due.flow),
                Timer::Liveness => self.liveness_due(due.flow),
                Timer::Keepalive => self.keepalive_due(due.flow),
                Timer::Transport => self.queue_output(due.flow),
                Timer::Linger => self.linger_due(due.flow),
                Timer::Orphan => self.orphan_due(due.flow),
                Timer::Challenge => self.challenge_due(due.flow),
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Host::poll`] must next run even if nothing arrives (at once
    /// if loopback work was left over).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.loopback.is_empty() || !self.local_output.is_empty() {
            return Some(self.now);
        }
        let endpoints = &self.endpoints;
        let is_live = |due: timer::Due| match endpoints.get(due.flow) {
            Some(Endpoint::Flow(flow)) => flow.timers.is_live(due.timer, due.at),
            _ => false,
        };
        self.timers.tidy(is_live);
        while self.timers.pop_stale(self.now, is_live) {}
        let timer = self.timers.peek(self.now).map(|due| due.at);
        let delay = self.delayed.next_deadline();
        [timer, delay].into_iter().flatten().min()
    }

    /// Gives back the memory the host's tables and queues hold beyond what
    /// they use: after many flows closed, their tables keep the size they
    /// had, and the timer queue keeps their deadlines until each passes.
    /// Costs a pass over every flow and deadline: call it at quiet moments
    /// (the daemon does when many flows have closed).
    pub fn compact(&mut self) {
        let endpoints = &self.endpoints;
        self.timers.compact(|due| match endpoints.get(due.flow) {
            Some(Endpoint::Flow(flow)) => flow.timers.is_live(due.timer, due.at),
            _ => false,
        });
        self.endpoints.shrink_to_fit();
        self.listeners.shrink_to_fit();
        self.output.shrink_to_fit();
        self.local_output.shrink_to_fit();
        self.transmits.shrink_to_fit();
        self.loopback.shrink_to_fit();
        self.events.shrink_to_fit();
        self.dirty.shrink_to_fit();
        self.dirty_spare.shrink_to_fit();
        self.spare_buffers = Vec::new();
        self.budgets.shrink_to_fit();
    }

    /// How many flows the host has (what [`Host::flows`] would list).
    pub fn flow_count(&self) -> usize {
        self.flow_count
    }

    /// The IDs of every flow, in no particular order: for listing a host
    /// with many flows a piece at a time ([`Host::flow`] for each).
    pub fn flow_ids(&self) -> impl Iterator<Item = FlowId> + '_ {
        self.endpoints
            .iter()
            .filter_map(|(id, endpoint)| matches!(endpoint, Endpoint::Flow(_)).then_some(id))
    }

    /// Snapshot of every flow.
    pub fn flows(&self) -> Vec<FlowInfo> {
        self.endpoints
            .iter()
            .filter_map(|(_, endpoint)| match endpoint {
                Endpoint::Flow(flow) => Some(self.flow_info(flow)),
                Endpoint::Datagram(_) => None,
            })
            .collect()
    }

    /// Snapshot of one flow.
    pub fn flow(&self, id: FlowId) -> Option<FlowInfo> {
        match self.endpoints.get(id)? {
            Endpoint::Flow(flow) => Some(self.flow_info(flow)),
            Endpoint::Datagram(_) => None,
        }
    }

    /// The service a flow was opened to, without building its
    /// [`FlowInfo`] (which allocates).
    pub fn flow_service(&self, id: FlowId) -> Option<ServiceId> {
        match self.endpoints.get(id)? {
            Endpoint::Flow(flow) => Some(flow.service),
            Endpoint::Datagram(_) => None,
        }
    }

    /// Where a flow's peer is (for a client, where its SYN-ACK came
    /// from), without building its [`FlowInfo`].
    pub fn flow_remote(&self, id: FlowId) -> Option<crate::Locator> {
        match self.endpoints.get(id)? {
            Endpoint::Flow(flow) => flow.path.remote,
            Endpoint::Datagram(_) => None,
        }
    }

    fn flow_info(&self, flow: &Flow) -> FlowInfo {
        let path = &flow.path;
        FlowInfo {
            flow: flow.id,
            peer_flow: flow.peer_flow,
            service: flow.service,
            protocol: flow.protocol(),
            role: flow.role,
            state: flow.state,
            local: path.local,
            remote: path.remote,
            interface: self.interfaces.name_of(path.local).map(str::to_string),
            counters: flow.counters,
            migrations: path.migrations,
            peer_moves: path.peer_moves,
            last_migration_us_ago: path.last_migration.map(|t| (self.now - t).total_micros()),
        }
    }
}
