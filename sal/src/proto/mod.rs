//! The SAL protocol core for one host, sans-IO.
//!
//! [`Host`] is a state machine in the style of quinn-proto: the caller feeds it
//! received SAL packets ([`Host::handle_packet`]) and the passage of time
//! ([`Host::poll`]), and drains what it wants sent ([`Host::poll_transmit`]),
//! what happened ([`Host::poll_event`]) and when it next needs to run
//! ([`Host::poll_timeout`]). It owns the service table, the flow table, the
//! listeners and the stream transport; it owns no socket and reads no clock,
//! which is what lets tests run whole networks of hosts deterministically.
//!
//! Exchanges are those of WIRE.md: a SYN carrying the transport's SYN, resolved
//! hop by hop by the service table (DEMUX, FORWARD, DELAY, DROP); a SYN-ACK
//! straight from the server; an ACK; then data with a bare base header; and a
//! SAL-level FIN from each side once its transport has finished sending.
//!
//! Refusals (no route, no listener, full backlog) are answered with a SAL-only
//! `CONTROL(RST)` to the SYN's sender, `NACK` added for "no route". Such a
//! sender has not announced a nonce, so the refusal echoes the SYN's own nonce
//! and acknowledges its `verno`: an off-path host that never saw the SYN cannot
//! forge one. This is our choice; WIRE.md leaves refusals open.

mod control;
mod engine;
mod replay;

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::Ipv4Addr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use smoltcp::time::{Duration, Instant};

use crate::flow::FlowTable;
use crate::id::{FlowId, ServiceId, ServicePrefix};
use crate::locator::Locator;
use crate::table::{ListenerId, ServiceTable, Target, TargetKey};
use crate::transport::{StreamConfig, StreamHandle, StreamTransport};
use crate::wire::TransportProtocol;

use control::ControlState;
pub use engine::MAX_DATAGRAM;

/// Tunables of a host's SAL.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Service-router mode: forward SYNs and unconnected datagrams by FORWARD rules.
    pub forward: bool,
    /// Seed of the host's random numbers (flow IDs, nonces, verno, TCP ISNs).
    pub seed: u64,
    /// First retransmission timeout of a control message.
    pub control_rto: Duration,
    /// Retransmissions before a control message is given up on.
    pub control_retries: u32,
    /// How long a DELAY rule may hold a packet.
    pub delay_timeout: Duration,
    /// Packets a DELAY rule may hold at once (host-wide).
    pub delay_queue_limit: usize,
    /// Live flows and datagram sockets at most.
    pub max_flows: usize,
    /// IP TTL of packets this host originates.
    pub ttl: u8,
    /// Per-flow TCP buffers and segment size.
    pub stream: StreamConfig,
    /// Datagrams queued per socket before new ones are dropped.
    pub datagram_queue_limit: usize,
    /// Move flows off an interface that goes down or loses its address, and
    /// off a path that stops delivering.
    pub auto_migrate: bool,
    /// A flow with data in flight that hears nothing from its peer for this
    /// long is moved to another interface (with `auto_migrate`).
    pub liveness_timeout: Duration,
    /// An idle flow (nothing in flight) that has heard nothing for this long
    /// probes its path, so that a dead path is found before the application
    /// next needs it; an unanswered probe then counts as data in flight.
    /// Only where there is somewhere to move (several interfaces up, or a
    /// peer that advertised other locators), and with `auto_migrate`.
    /// `None`: idle flows are never probed.
    pub idle_probe: Option<Duration>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            forward: false,
            seed: 0,
            control_rto: Duration::from_millis(500),
            control_retries: 6,
            delay_timeout: Duration::from_secs(5),
            delay_queue_limit: 1024,
            max_flows: 100_000,
            ttl: 64,
            stream: StreamConfig::default(),
            datagram_queue_limit: 256,
            auto_migrate: true,
            liveness_timeout: Duration::from_millis(1500),
            idle_probe: Some(Duration::from_secs(10)),
        }
    }
}

/// A packet the host wants sent. `payload` is a whole SAL packet; the link
/// puts it in IPv4 (protocol 144) or in UDP between `src` and `dst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub src: Locator,
    pub dst: Locator,
    pub ttl: u8,
    pub payload: Vec<u8>,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConnectError {
    #[error("no route to service")]
    NoRoute,
    #[error("connection refused")]
    Refused,
    #[error("connection timed out")]
    TimedOut,
}

/// Errors of the application-facing calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("service {0} is already bound on this host")]
    AddressInUse(ServicePrefix),
    #[error("no such flow {0}")]
    NoSuchFlow(FlowId),
    #[error("no such listener {0:?}")]
    NoSuchListener(ListenerId),
    #[error("operation would block")]
    WouldBlock,
    #[error("the flow is not connected")]
    NotConnected,
    #[error("the flow was reset by the peer")]
    Reset,
    #[error("the flow is closed for sending")]
    SendClosed,
    #[error("too many flows ({0})")]
    TooManyFlows(usize),
    #[error("wrong protocol for this socket")]
    WrongProtocol,
    #[error("datagram of {0} bytes is too large")]
    TooLarge(usize),
    #[error("no interface {0}")]
    NoSuchInterface(String),
    #[error("interface {0} is down")]
    InterfaceDown(String),
}

/// Something the application or controller may want to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A `connect` completed; the flow is established.
    Connected(FlowId),
    /// A `connect` failed; the flow is gone.
    ConnectFailed(FlowId, ConnectError),
    /// The listener has a flow waiting in its accept queue.
    Incoming(ListenerId),
    /// The flow may have become readable or writable, or its peer closed or reset it.
    Activity(FlowId),
    /// The flow is finished and its ID released.
    Closed(FlowId),
    /// A datagram socket has a datagram to read.
    Datagram(FlowId),
    /// A DELAY rule is holding a packet for this service: ask the controller.
    DelayNotify(ServiceId),
    /// A local listener now serves this prefix (a DEMUX rule was added).
    Registered(ServicePrefix),
    /// A local listener stopped serving this prefix.
    Unregistered(ServicePrefix),
    /// This end moved the flow to the locator of another interface.
    Migrated(FlowId, Locator),
    /// The peer moved the flow to a new locator.
    PeerMoved(FlowId, Locator),
}

/// One of the host's own SAL interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalInterface {
    pub name: String,
    pub locator: Locator,
    /// Length of the on-link IPv4 prefix; picks the interface for a next hop.
    pub prefix_len: u8,
    /// Whether the link is usable; flows avoid interfaces that are down.
    #[serde(default = "up")]
    pub up: bool,
}

fn up() -> bool {
    true
}

impl LocalInterface {
    fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0);
        u32::from(self.locator.ip()) & mask == u32::from(ip) & mask
    }
}

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// Client: waiting for a DELAY rule to be resolved.
    Resolving,
    /// Client: SYN sent.
    SynSent,
    /// Server: SYN-ACK sent.
    SynReceived,
    Established,
    /// Reset by the peer or given up on; waits for the application to close.
    Dead,
}

/// Whether this end opened the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
}

/// Counters of one flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounters {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A snapshot of a flow, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub flow: FlowId,
    pub peer_flow: Option<FlowId>,
    pub service: ServiceId,
    pub protocol: TransportProtocol,
    pub role: Role,
    pub state: FlowState,
    pub local: Locator,
    pub remote: Option<Locator>,
    pub interface: Option<String>,
    pub counters: FlowCounters,
    /// Times this end moved the flow to another locator.
    #[serde(default)]
    pub migrations: u32,
    /// Times the peer moved.
    #[serde(default)]
    pub peer_moves: u32,
    /// Microseconds since this end last moved the flow (fine enough to
    /// time a migration against the event that caused it).
    #[serde(default)]
    pub last_migration_us_ago: Option<u64>,
}

/// Host-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStats {
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Packets that failed SAL parsing (lengths, framing).
    pub malformed: u64,
    /// Packets whose SAL or transport checksum was wrong.
    pub bad_checksum: u64,
    /// Packets for a flow ID this host does not have.
    pub unknown_flow: u64,
    /// Control messages with a nonce other than the one the peer announced.
    pub bad_nonce: u64,
    /// Control messages with an unexpected `verno`, or a mismatched source flow.
    pub stale: u64,
    /// SYNs and datagrams forwarded as a service router.
    pub forwarded: u64,
    /// Packets dropped because their TTL ran out.
    pub ttl_expired: u64,
    /// Packets dropped by a router because SOURCE already held 20 hops.
    pub source_full: u64,
    /// Packets held by DELAY rules, and those later dropped on timeout or overflow.
    pub delayed: u64,
    pub delay_dropped: u64,
    /// SYNs refused (no route, no listener, full backlog).
    pub refused: u64,
    /// Control message retransmissions.
    pub retransmits: u64,
    /// Datagrams dropped because a socket's queue was full.
    pub datagram_overflow: u64,
    /// Flows this host moved to another locator, and moves given up on.
    pub migrations: u64,
    pub migrations_failed: u64,
    /// Stream segments resent right after a migration.
    pub replayed: u64,
    /// Liveness probes sent on idle flows.
    #[serde(default)]
    pub probes: u64,
}

/// A datagram as received by a datagram socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedDatagram {
    /// Who sent it: reply with [`Host::send_reply`].
    pub peer: DatagramPeer,
    /// The service it was sent to, for unconnected datagrams.
    pub service: Option<ServiceId>,
    pub data: Vec<u8>,
}

/// The sender of a datagram: its locator and its socket's flow ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DatagramPeer {
    pub locator: Locator,
    pub flow: FlowId,
}

/// A local listening socket: the DEMUX target of its prefix.
#[derive(Debug)]
struct Listener {
    prefix: ServicePrefix,
    protocol: TransportProtocol,
    backlog: usize,
    half_open: usize,
    accept_queue: VecDeque<FlowId>,
    /// Datagram listeners also receive unconnected datagrams, on this socket.
    datagram_socket: Option<FlowId>,
}

/// An end of a flow.
#[derive(Debug)]
struct Flow {
    id: FlowId,
    peer_flow: Option<FlowId>,
    service: ServiceId,
    protocol: TransportProtocol,
    role: Role,
    state: FlowState,
    local: Locator,
    /// Where the peer is; for a client before the SYN-ACK, unknown.
    remote: Option<Locator>,
    /// Client: where the SYN goes (the server, or a service router).
    next_hop: Option<Locator>,
    /// Other locators the peer advertised (ADDRESS extension).
    peer_locators: Vec<Locator>,
    control: ControlState,
    stream: Option<StreamHandle>,
    datagrams: VecDeque<Vec<u8>>,
    listener: Option<ListenerId>,
    /// The client owes the third packet of the handshake (SAL ACK).
    ack_owed: bool,
    fin_sent: bool,
    fin_acked: bool,
    peer_fin: bool,
    app_closed: bool,
    /// Already in the dirty list.
    dirty: bool,
    counters: FlowCounters,
    /// Times this end moved the flow to another locator.
    migrations: u32,
    /// Times the peer moved.
    peer_moves: u32,
    last_migration: Option<Instant>,
    /// When the peer was last heard on this flow.
    last_rx: Instant,
    /// Stream segments not yet acknowledged, kept on multi-homed hosts to
    /// resend right after a migration.
    replay: replay::ReplayBuffer,
}

impl Flow {
    /// A flow that is not yet connected, in state `Resolving`: callers set
    /// the rest. Its ID is assigned when the flow table stores it.
    fn new(
        service: ServiceId,
        protocol: TransportProtocol,
        role: Role,
        local: Locator,
        control: ControlState,
        now: Instant,
    ) -> Flow {
        Flow {
            id: FlowId::new(1).expect("1 is not 0"),
            peer_flow: None,
            service,
            protocol,
            role,
            state: FlowState::Resolving,
            local,
            remote: None,
            next_hop: None,
            peer_locators: Vec::new(),
            control,
            stream: None,
            datagrams: VecDeque::new(),
            listener: None,
            ack_owed: false,
            fin_sent: false,
            fin_acked: false,
            peer_fin: false,
            app_closed: false,
            dirty: false,
            counters: FlowCounters::default(),
            migrations: 0,
            peer_moves: 0,
            last_migration: None,
            last_rx: now,
            replay: replay::ReplayBuffer::default(),
        }
    }
}

/// A datagram socket: receives unconnected datagrams addressed to its flow ID
/// (replies) or, when bound, to its listener's service.
#[derive(Debug)]
struct DatagramSocket {
    queue: VecDeque<ReceivedDatagram>,
    listener: Option<ListenerId>,
}

/// What a flow ID names on this host.
#[derive(Debug)]
enum Endpoint {
    Flow(Box<Flow>),
    Datagram(DatagramSocket),
}

/// A packet held by a DELAY rule.
#[derive(Debug)]
enum Delayed {
    /// A first packet received from the network (or sent unconnected by a local
    /// socket), to be routed again when a rule appears.
    Packet {
        service: ServiceId,
        src: Locator,
        dst: Locator,
        ttl: u8,
        packet: Vec<u8>,
        deadline: Instant,
    },
    /// A local `connect` whose SYN waits for a route.
    Connect { flow: FlowId, deadline: Instant },
}

impl Delayed {
    fn deadline(&self) -> Instant {
        match self {
            Delayed::Packet { deadline, .. } | Delayed::Connect { deadline, .. } => *deadline,
        }
    }
}

/// The SAL of one host. See the module documentation.
pub struct Host {
    config: HostConfig,
    rng: SmallRng,
    table: ServiceTable,
    endpoints: FlowTable<Endpoint>,
    listeners: HashMap<ListenerId, Listener>,
    next_listener: u64,
    /// Half-open server flows by (client locator IP, client flow), to answer
    /// retransmitted SYNs with the same SYN-ACK.
    half_open: HashMap<(Ipv4Addr, FlowId), FlowId>,
    transport: StreamTransport,
    interfaces: Vec<LocalInterface>,
    delayed: VecDeque<Delayed>,
    /// Control retransmission deadlines; entries are checked against the
    /// flow's pending message when they fire, so stale ones are harmless.
    timers: BinaryHeap<std::cmp::Reverse<(Instant, FlowId)>>,
    transmits: VecDeque<Transmit>,
    loopback: VecDeque<Transmit>,
    events: VecDeque<Event>,
    dirty: Vec<FlowId>,
    stats: HostStats,
    now: Instant,
    /// When flows are next checked for silence.
    next_liveness: Instant,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("flows", &self.endpoints.len())
            .field("listeners", &self.listeners.len())
            .field("interfaces", &self.interfaces)
            .finish()
    }
}

impl Host {
    pub fn new(config: HostConfig, now: Instant) -> Host {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let transport = StreamTransport::new(config.stream, now, rng.random());
        Host {
            endpoints: FlowTable::new(config.max_flows),
            config,
            rng,
            table: ServiceTable::new(),
            listeners: HashMap::new(),
            next_listener: 1,
            half_open: HashMap::new(),
            transport,
            interfaces: Vec::new(),
            delayed: VecDeque::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            loopback: VecDeque::new(),
            events: VecDeque::new(),
            dirty: Vec::new(),
            stats: HostStats::default(),
            now,
            next_liveness: now,
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    pub fn stats(&self) -> HostStats {
        self.stats
    }

    /// The service table, for listings.
    pub fn table(&self) -> &ServiceTable {
        &self.table
    }

    /// The host's SAL interfaces.
    pub fn interfaces(&self) -> &[LocalInterface] {
        &self.interfaces
    }

    /// Adds (or replaces, by name) one of the host's own interfaces.
    pub fn add_interface(&mut self, interface: LocalInterface) {
        self.interfaces.retain(|i| i.name != interface.name);
        self.interfaces.push(interface);
    }

    /// Removes an interface by name (its flows move elsewhere first, with
    /// `auto_migrate`); returns whether it existed.
    pub fn remove_interface(&mut self, name: &str) -> bool {
        let Some(index) = self.interfaces.iter().position(|i| i.name == name) else {
            return false;
        };
        self.interfaces[index].up = false;
        if self.config.auto_migrate {
            self.evacuate(self.interfaces[index].locator);
        }
        self.interfaces.remove(index);
        true
    }

    /// Marks an interface up or down. Going down moves its flows to another
    /// interface that is up (with `auto_migrate`).
    pub fn set_interface_up(&mut self, name: &str, up: bool) -> Result<(), HostError> {
        let iface = self
            .interfaces
            .iter_mut()
            .find(|i| i.name == name)
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        let (was_up, locator) = (iface.up, iface.locator);
        iface.up = up;
        if was_up && !up && self.config.auto_migrate {
            self.evacuate(locator);
        }
        Ok(())
    }

    /// Gives an interface a new locator (renumbering): flows using the old
    /// one move to the new one (with `auto_migrate`).
    pub fn set_interface_locator(
        &mut self,
        name: &str,
        locator: Locator,
        prefix_len: u8,
    ) -> Result<(), HostError> {
        let iface = self
            .interfaces
            .iter_mut()
            .find(|i| i.name == name)
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        let old = iface.locator;
        iface.locator = locator;
        iface.prefix_len = prefix_len;
        if old != locator && self.config.auto_migrate {
            let flows: Vec<FlowId> = self
                .endpoints
                .iter()
                .filter_map(|(id, e)| match e {
                    Endpoint::Flow(f) if f.local == old && f.state == FlowState::Established => {
                        Some(id)
                    }
                    _ => None,
                })
                .collect();
            for flow in flows {
                let _ = self.engine_migrate(flow, locator);
            }
        }
        Ok(())
    }

    /// Moves a flow to another of this host's interfaces (the RSYN exchange of
    /// WIRE.md). The transport above never notices.
    pub fn migrate(&mut self, flow: FlowId, interface: &str) -> Result<(), HostError> {
        let iface = self
            .interfaces
            .iter()
            .find(|i| i.name == interface)
            .ok_or_else(|| HostError::NoSuchInterface(interface.to_string()))?;
        if !iface.up {
            return Err(HostError::InterfaceDown(interface.to_string()));
        }
        let locator = iface.locator;
        self.engine_migrate(flow, locator)
    }

    /// Adds or modifies a rule target and re-examines packets held by DELAY rules.
    pub fn add_rule(&mut self, prefix: ServicePrefix, target: Target, priority: u32) -> bool {
        let added = self.table.add(prefix, target, priority);
        self.rematch_delayed();
        added
    }

    /// Removes one target of a rule.
    pub fn remove_rule_target(
        &mut self,
        prefix: &ServicePrefix,
        key: &TargetKey,
    ) -> Result<(), crate::table::TableError> {
        self.table.remove_target(prefix, key).map(drop)?;
        self.rematch_delayed();
        Ok(())
    }

    /// Removes a whole rule.
    pub fn remove_rule(&mut self, prefix: &ServicePrefix) -> Result<(), crate::table::TableError> {
        self.table.remove(prefix).map(drop)?;
        self.rematch_delayed();
        Ok(())
    }

    /// The next packet to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Host::poll`] must next run even if nothing arrives.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let control = self.timers.peek().map(|t| t.0 .0);
        let delay = self.delayed.iter().map(Delayed::deadline).min();
        let transport = self.transport.poll_at(self.now);
        let liveness =
            (self.config.auto_migrate && !self.endpoints.is_empty()).then_some(self.next_liveness);
        [control, delay, transport, liveness]
            .into_iter()
            .flatten()
            .min()
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

    fn flow_info(&self, flow: &Flow) -> FlowInfo {
        FlowInfo {
            flow: flow.id,
            peer_flow: flow.peer_flow,
            service: flow.service,
            protocol: flow.protocol,
            role: flow.role,
            state: flow.state,
            local: flow.local,
            remote: flow.remote,
            interface: self
                .interfaces
                .iter()
                .find(|i| i.locator == flow.local)
                .map(|i| i.name.clone()),
            counters: flow.counters,
            migrations: flow.migrations,
            peer_moves: flow.peer_moves,
            last_migration_us_ago: flow.last_migration.map(|t| (self.now - t).total_micros()),
        }
    }

    // ----- listeners -------------------------------------------------------

    /// Binds a listener to `prefix`: installs the DEMUX rule (registering the
    /// service) and emits [`Event::Registered`]. At most `backlog` flows may be
    /// half-open or waiting to be accepted at once.
    pub fn listen(
        &mut self,
        prefix: ServicePrefix,
        protocol: TransportProtocol,
        backlog: usize,
    ) -> Result<ListenerId, HostError> {
        let taken = self.table.get(&prefix).is_some_and(|rule| {
            rule.targets()
                .iter()
                .any(|t| matches!(t.target, Target::Demux { .. }))
        });
        if taken {
            return Err(HostError::AddressInUse(prefix));
        }
        let id = ListenerId(self.next_listener);
        self.next_listener += 1;
        let datagram_socket = match protocol {
            TransportProtocol::Datagram => Some(self.new_datagram_socket(Some(id))?),
            TransportProtocol::Stream => None,
        };
        self.listeners.insert(
            id,
            Listener {
                prefix,
                protocol,
                backlog: backlog.max(1),
                half_open: 0,
                accept_queue: VecDeque::new(),
                datagram_socket,
            },
        );
        self.add_rule(prefix, Target::Demux { listener: id }, 0);
        self.events.push_back(Event::Registered(prefix));
        Ok(id)
    }

    /// Number of bound listeners.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// The datagram socket of a datagram listener (where unconnected
    /// datagrams to its service arrive).
    pub fn listener_socket(&self, listener: ListenerId) -> Option<FlowId> {
        self.listeners.get(&listener)?.datagram_socket
    }

    /// Unbinds a listener: removes its DEMUX rule, resets flows not yet
    /// accepted, and emits [`Event::Unregistered`].
    pub fn close_listener(&mut self, id: ListenerId) -> Result<(), HostError> {
        let listener = self
            .listeners
            .remove(&id)
            .ok_or(HostError::NoSuchListener(id))?;
        let _ = self
            .table
            .remove_target(&listener.prefix, &TargetKey::Demux { listener: id });
        for flow in listener.accept_queue {
            self.abort(flow).ok();
            self.close(flow).ok();
        }
        let half_open: Vec<FlowId> = self
            .endpoints
            .iter()
            .filter_map(|(fid, e)| match e {
                Endpoint::Flow(f)
                    if f.listener == Some(id) && f.state == FlowState::SynReceived =>
                {
                    Some(fid)
                }
                _ => None,
            })
            .collect();
        for flow in half_open {
            self.free_flow(flow);
        }
        if let Some(socket) = listener.datagram_socket {
            self.endpoints.remove(socket);
        }
        self.events.push_back(Event::Unregistered(listener.prefix));
        Ok(())
    }

    /// Takes the next established flow from a listener's accept queue.
    pub fn accept(&mut self, id: ListenerId) -> Result<FlowId, HostError> {
        let listener = self
            .listeners
            .get_mut(&id)
            .ok_or(HostError::NoSuchListener(id))?;
        listener
            .accept_queue
            .pop_front()
            .ok_or(HostError::WouldBlock)
    }

    // ----- flows -----------------------------------------------------------

    /// Opens a flow to `service`. Resolution happens now: no matching rule or
    /// a DROP rule fails at once with [`ConnectError::NoRoute`]; a DELAY rule
    /// holds the connect until a rule appears. Completion is reported by
    /// [`Event::Connected`] or [`Event::ConnectFailed`].
    pub fn connect(
        &mut self,
        service: ServiceId,
        protocol: TransportProtocol,
    ) -> Result<FlowId, HostError> {
        self.engine_connect(service, protocol)
    }

    /// Queues bytes on a stream flow; returns how many were taken.
    pub fn send(&mut self, id: FlowId, data: &[u8]) -> Result<usize, HostError> {
        let flow = self.flow_mut(id)?;
        match (flow.state, flow.stream) {
            (FlowState::Dead, _) => Err(HostError::Reset),
            (_, None) => Err(HostError::WrongProtocol),
            (FlowState::Established, Some(handle)) => {
                let written = self.transport.send(handle, data).map_err(|e| match e {
                    crate::transport::StreamError::SendClosed => HostError::SendClosed,
                    _ => HostError::WouldBlock,
                })?;
                if written == 0 && !data.is_empty() {
                    return Err(HostError::WouldBlock);
                }
                self.mark_dirty(id);
                Ok(written)
            }
            _ => Err(HostError::WouldBlock),
        }
    }

    /// Reads bytes from a stream flow: `Ok(0)` is end of stream.
    pub fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> Result<usize, HostError> {
        let flow = self.flow_mut(id)?;
        let Some(handle) = flow.stream else {
            return Err(HostError::WrongProtocol);
        };
        match flow.state {
            FlowState::Established | FlowState::Dead => {}
            _ => return Err(HostError::WouldBlock),
        }
        let dead = flow.state == FlowState::Dead;
        match self.transport.recv(handle, buf) {
            Some(n) => {
                if n > 0 {
                    // Reading opens the receive window: let smoltcp say so.
                    self.mark_dirty(id);
                }
                Ok(n)
            }
            None if dead => Err(HostError::Reset),
            None => Err(HostError::WouldBlock),
        }
    }

    /// Bytes a [`Host::send`] would take now.
    pub fn send_room(&mut self, id: FlowId) -> Result<usize, HostError> {
        let flow = self.flow_mut(id)?;
        match (flow.state, flow.stream) {
            (FlowState::Established, Some(handle)) => Ok(self.transport.send_room(handle)),
            (FlowState::Dead, _) => Err(HostError::Reset),
            _ => Ok(0),
        }
    }

    /// Ends the sending direction of a flow (the peer reads end of stream).
    pub fn shutdown(&mut self, id: FlowId) -> Result<(), HostError> {
        let flow = self.flow_mut(id)?;
        if let Some(handle) = flow.stream {
            self.transport.shutdown(handle);
        }
        self.mark_dirty(id);
        Ok(())
    }

    /// The application is done with the flow: ends sending, and releases the
    /// flow once both SAL FINs are exchanged (or at once if it is dead).
    /// Like a kernel socket closed with unread data, a stream closed while
    /// received bytes wait (or that receives more later) is reset, so that
    /// the peer learns nobody will read what it sends.
    pub fn close(&mut self, id: FlowId) -> Result<(), HostError> {
        let flow = self.flow_mut(id)?;
        flow.app_closed = true;
        let (stream, established) = (flow.stream, flow.state == FlowState::Established);
        if let Some(handle) = stream {
            if established && self.transport.has_unread(handle) {
                return self.engine_abort(id);
            }
            self.transport.shutdown(handle);
        }
        self.mark_dirty(id);
        Ok(())
    }

    /// Aborts a flow: the transport sends RST, the SAL sends RST, and the flow
    /// is dead; [`Host::close`] releases it.
    pub fn abort(&mut self, id: FlowId) -> Result<(), HostError> {
        self.engine_abort(id)
    }

    // ----- datagrams -------------------------------------------------------

    /// Opens an unbound datagram socket; its flow ID is the source of the
    /// unconnected datagrams it sends and where replies arrive.
    pub fn open_datagram(&mut self) -> Result<FlowId, HostError> {
        self.new_datagram_socket(None)
    }

    fn new_datagram_socket(&mut self, listener: Option<ListenerId>) -> Result<FlowId, HostError> {
        let limit = self.endpoints.capacity();
        self.endpoints
            .insert_new(&mut self.rng, |_| {
                Endpoint::Datagram(DatagramSocket {
                    queue: VecDeque::new(),
                    listener,
                })
            })
            .map_err(|_| HostError::TooManyFlows(limit))
    }

    /// Closes a datagram socket opened with [`Host::open_datagram`].
    pub fn close_datagram(&mut self, socket: FlowId) -> Result<(), HostError> {
        match self.endpoints.get(socket) {
            Some(Endpoint::Datagram(d)) if d.listener.is_none() => {
                self.endpoints.remove(socket);
                Ok(())
            }
            _ => Err(HostError::NoSuchFlow(socket)),
        }
    }

    /// Sends an unconnected datagram to a service, resolved for this datagram
    /// alone (consecutive datagrams may reach different replicas).
    pub fn send_to(
        &mut self,
        socket: FlowId,
        service: ServiceId,
        data: &[u8],
    ) -> Result<(), HostError> {
        self.engine_send_to(socket, service, data)
    }

    /// Sends a datagram straight back to the sender of a received one.
    pub fn send_reply(
        &mut self,
        socket: FlowId,
        peer: DatagramPeer,
        data: &[u8],
    ) -> Result<(), HostError> {
        self.engine_send_reply(socket, peer, data)
    }

    /// Takes the next datagram queued on a datagram socket.
    pub fn recv_from(&mut self, socket: FlowId) -> Result<ReceivedDatagram, HostError> {
        match self.endpoints.get_mut(socket) {
            Some(Endpoint::Datagram(d)) => d.queue.pop_front().ok_or(HostError::WouldBlock),
            _ => Err(HostError::NoSuchFlow(socket)),
        }
    }

    /// Sends a datagram on a connected datagram flow.
    pub fn send_datagram(&mut self, id: FlowId, data: &[u8]) -> Result<(), HostError> {
        self.engine_send_datagram(id, data)
    }

    /// Takes the next datagram received on a connected datagram flow; `Ok(None)`
    /// once the peer has closed the flow and the queue is empty.
    pub fn recv_datagram(&mut self, id: FlowId) -> Result<Option<Vec<u8>>, HostError> {
        let flow = self.flow_mut(id)?;
        if flow.protocol != TransportProtocol::Datagram {
            return Err(HostError::WrongProtocol);
        }
        match flow.datagrams.pop_front() {
            Some(data) => Ok(Some(data)),
            None if flow.peer_fin || flow.state == FlowState::Dead => Ok(None),
            None => Err(HostError::WouldBlock),
        }
    }

    // ----- helpers shared by the engine --------------------------------------

    fn flow_mut(&mut self, id: FlowId) -> Result<&mut Flow, HostError> {
        match self.endpoints.get_mut(id) {
            Some(Endpoint::Flow(flow)) => Ok(flow),
            _ => Err(HostError::NoSuchFlow(id)),
        }
    }

    fn mark_dirty(&mut self, id: FlowId) {
        if let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) {
            if !flow.dirty {
                flow.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.interfaces.iter().any(|i| i.locator.ip() == ip)
    }

    /// The local locator to send toward `next_hop` from. The policy for new
    /// flows: the first interface that is up and on the next hop's subnet,
    /// else the first interface that is up, else the first interface.
    fn source_for(&self, next_hop: &Locator) -> Option<Locator> {
        self.interfaces
            .iter()
            .find(|i| i.up && i.on_link(next_hop.ip()))
            .or_else(|| self.interfaces.iter().find(|i| i.up))
            .or_else(|| self.interfaces.first())
            .map(|i| i.locator)
    }
}
