//! What the host reports about itself: flow snapshots and counters.
//!
//! These are plain, serializable copies (the daemon lists them to
//! operators), never views into the host's state.

use serde::{Deserialize, Serialize};

use crate::id::{FlowId, ServiceId};
use crate::locator::Locator;
use crate::wire::TransportProtocol;

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
    /// Handshake done: the flow carries data until its teardown.
    Established,
    /// Reset by the peer or given up on; waits for the application to close.
    Dead,
}

/// Whether this end opened the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// This end called `connect` and sent the SYN.
    Client,
    /// This end accepted the flow from a listener's SYN.
    Server,
}

/// Counters of one flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCounters {
    /// Packets received on the flow from the peer's flow ID, control-only ones included.
    pub packets_in: u64,
    /// Packets this end sent on the flow; control retransmissions are not counted.
    pub packets_out: u64,
    /// Transport bytes received (each packet's segment after the SAL header, its
    /// TCP or UDP header included).
    pub bytes_in: u64,
    /// Transport bytes sent, counted as `bytes_in` is (each segment, its TCP
    /// or UDP header included); control messages add nothing.
    pub bytes_out: u64,
}

/// A snapshot of a flow, for listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    /// This end's flow ID (the `src_flowid` it sends).
    pub flow: FlowId,
    /// The peer's flow ID; `None` until a client hears the SYN-ACK.
    pub peer_flow: Option<FlowId>,
    /// The service ID the client connected to (the SYN's SERVICE), on both ends.
    pub service: ServiceId,
    /// Stream (TCP) or datagram flow.
    pub protocol: TransportProtocol,
    /// Whether this end opened the flow or accepted it.
    pub role: Role,
    /// Where the flow is in its life.
    pub state: FlowState,
    /// This end's current locator, which a migration changes.
    pub local: Locator,
    /// The peer's current locator; `None` for a client before the SYN-ACK.
    pub remote: Option<Locator>,
    /// Name of the local interface that owns `local`, if one does.
    pub interface: Option<String>,
    /// Packets and bytes this flow carried.
    pub counters: FlowCounters,
    /// Times this end moved the flow to another locator.
    #[serde(default)]
    pub migrations: u32,
    /// Times the flow followed its peer to another locator.
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
    /// SAL packets given to [`Host::handle_packet`](super::Host::handle_packet),
    /// valid or not, looped-back ones included.
    pub packets_in: u64,
    /// SAL packets handed to the link, forwarded ones included (loopback excluded).
    pub packets_out: u64,
    /// Bytes of the packets in `packets_in` (SAL header and segment; no IP or UDP header).
    pub bytes_in: u64,
    /// Bytes of the packets in `packets_out` (SAL header and segment; no IP or UDP header).
    pub bytes_out: u64,
    /// Packets that failed SAL parsing (lengths, framing), or whose SOURCE
    /// names fewer than two addresses (WIRE.md).
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
    /// Packets a router dropped because it was already in their SOURCE (a
    /// forwarding loop).
    #[serde(default)]
    pub loop_dropped: u64,
    /// First packets that arrived as broadcasts and were not ours to serve:
    /// our own broadcasts heard back, and broadcasts for services this host
    /// would forward (a router never forwards a broadcast).
    #[serde(default)]
    pub broadcast_dropped: u64,
    /// Packets from a source no peer can have (broadcast, multicast,
    /// unspecified), as IP source or as the client in SOURCE, and first
    /// packets from off this host whose SOURCE names a loopback client.
    #[serde(default)]
    pub bad_source: u64,
    /// Resets that reported a datagram refused by the host it was sent to.
    #[serde(default)]
    pub datagram_refused: u64,
    /// SYNs that their first hop's host sent back as unreachable (nobody
    /// at that locator, say a program gone: see
    /// [`Host::handle_unreachable`](super::Host::handle_unreachable)):
    /// their connects failed as refused at once, or went another way
    /// ([`rerouted_syns`](Self::rerouted_syns)).
    #[serde(default)]
    pub unreachable_hops: u64,
    /// Of those, SYNs sent again at once by another first hop, the one
    /// the host's table gave after the caller took its routes to the
    /// unreachable one out.
    #[serde(default)]
    pub rerouted_syns: u64,
    /// Established flows reset because their peer's locator refused our
    /// packets (nobody receives there: its program gone) and the peer was
    /// not heard within a second of it.
    #[serde(default)]
    pub peers_gone: u64,
    /// Packets held by DELAY rules, and those later dropped on timeout or overflow.
    pub delayed: u64,
    /// Held entries given up: packets refused by a full DELAY queue, and packets or
    /// connects still held at `HostConfig::delay_timeout`.
    pub delay_dropped: u64,
    /// SYNs refused (no route, no listener, full backlog).
    pub refused: u64,
    /// SYNs for a drained listener's prefix dropped without a reset (sent
    /// before the routers learned of the drain; the client retransmits).
    #[serde(default)]
    pub drained_syns: u64,
    /// Control message retransmissions.
    pub retransmits: u64,
    /// Datagrams dropped because a socket's queue was full.
    pub datagram_overflow: u64,
    /// Flows this host moved to another locator, and moves given up on.
    pub migrations: u64,
    /// Flows killed because their RSYN ran out of retransmissions unanswered.
    pub migrations_failed: u64,
    /// Times a stream flow resent what it had in flight right after a
    /// migration (of either end), instead of waiting for its timeout.
    pub replayed: u64,
    /// Liveness probes sent: on idle flows, and on flows that waited half
    /// the liveness timeout for a silent peer (see `liveness.rs`).
    #[serde(default)]
    pub probes: u64,
    /// Keepalives sent on idle client flows carried over UDP.
    #[serde(default)]
    pub keepalives: u64,
    /// Nudges sent on client flows over UDP waiting on a silent peer.
    #[serde(default)]
    pub nudges: u64,
    /// Path challenges sent: to a new address a flow's packets came from,
    /// or to a locator the peer advertised when the path went silent.
    #[serde(default)]
    pub path_challenges: u64,
    /// Flows moved to a new peer address proven by the peer's nonce that
    /// the peer named neither in an RSYN nor by advertising it (a NAT
    /// rebinding).
    #[serde(default)]
    pub rebindings: u64,
    /// Times a stream flow's socket was driven (asked for a segment): the
    /// host's transport work, which follows the flows that have something
    /// to do (input, output, a due deadline), never the number of flows.
    #[serde(default)]
    pub sockets_driven: u64,
    /// Bytes of memory the TCP buffers of all flows hold now (a gauge, not
    /// a counter): it follows what the flows carry, and falls back when
    /// they go idle or close.
    #[serde(default)]
    pub buffer_bytes: u64,
    /// Whether the host is under buffer memory pressure now (a gauge):
    /// `buffer_bytes` reached `HostConfig::buffer_memory_limit` and has not
    /// yet fallen below 7/8 of it. While it is, no TCP buffer grows.
    #[serde(default)]
    pub buffer_pressure: bool,
    /// Times the host came under buffer memory pressure (Linux's
    /// `TCPMemoryPressures`).
    #[serde(default)]
    pub buffer_pressures: u64,
    /// Times a group of flows came under buffer memory pressure of its own
    /// (its `HostConfig::buffer_memory_group_limit`).
    #[serde(default)]
    pub group_buffer_pressures: u64,
    /// Times the flows a listener opened and nobody had accepted yet came
    /// under buffer memory pressure of their own (their listener's bound,
    /// `UNACCEPTED_LISTENER_BUFFER`): a burst, or someone filling them.
    #[serde(default)]
    pub unaccepted_buffer_pressures: u64,
    /// Bytes of TCP buffer memory the flows nobody has accepted yet hold
    /// now, all listeners' together (each listener's are bounded by
    /// `UNACCEPTED_LISTENER_BUFFER`; see `Host::unaccepted_buffer_bytes`).
    #[serde(default)]
    pub unaccepted_buffer_bytes: u64,
    /// Segments (or their tails) stream flows dropped because their receive
    /// buffer could not grow under memory pressure, and out-of-order ranges
    /// given up because of it; each costs the peer a retransmission
    /// (see `sal_tcp::Socket::pressure_dropped`).
    #[serde(default)]
    pub pressure_dropped: u64,
    /// Out-of-order segments stream flows refused, and ranges they gave up,
    /// because holding them would have cost more receive memory than the
    /// data received justifies (see `sal_tcp::Socket::out_of_order_dropped`):
    /// rare for a legitimate sender, the trace of a peer parking far bytes.
    #[serde(default)]
    pub ooo_dropped: u64,
    /// Retransmission timeouts of stream flows' data (Linux's
    /// `TCPTimeouts`): losses nothing else repaired in time, each a stall
    /// of at least 200 ms plus a round trip.
    #[serde(default)]
    pub tcp_timeouts: u64,
    /// Fast retransmits of stream flows: losses found by duplicate ACKs,
    /// SACKed data or RACK's reordering window, and repaired within a
    /// round trip or so.
    #[serde(default)]
    pub tcp_fast_retransmits: u64,
    /// Tail loss probes stream flows sent (Linux's `TCPLossProbes`).
    #[serde(default)]
    pub tcp_loss_probes: u64,
    /// Window reductions stream flows undid because the peer reported
    /// every retransmission since as a duplicate (Linux's `TCPDSACKUndo`):
    /// losses that were not.
    #[serde(default)]
    pub tcp_undos: u64,
    /// Half-open server flows freed because their client never
    /// completed the handshake.
    #[serde(default)]
    pub half_open_expired: u64,
    /// SYNs answered with a cookie, and handshakes completed from one.
    #[serde(default)]
    pub cookies_sent: u64,
    /// Flows created from a handshake ACK whose SYN cookie checked out.
    #[serde(default)]
    pub cookies_accepted: u64,
    /// Handshake ACKs for no flow whose cookie did not check out (forged,
    /// or older than two time slots).
    #[serde(default)]
    pub cookies_rejected: u64,
    /// Flows handed out by [`Host::export_flow`](super::Host::export_flow).
    #[serde(default)]
    pub flows_exported: u64,
    /// Flows taken up by [`Host::import_flow`](super::Host::import_flow).
    #[serde(default)]
    pub flows_imported: u64,
    /// Packets for flows exported lately, dropped without an answer (see
    /// `export.rs`); also counted in `unknown_flow`.
    #[serde(default)]
    pub exported_flow_packets: u64,
    /// First packets dropped because their transport segment was not a
    /// valid opening segment (a TCP segment that is not a lone SYN), and
    /// repeats of a SYN that named its client in SOURCE shorter than that
    /// SYN (its answer would be the larger: `handshake::fit_answer`).
    #[serde(default)]
    pub bad_syn: u64,
    /// Flows given up on because their peer stopped answering (see
    /// `HostConfig::peer_timeout` and `control_retries`).
    #[serde(default)]
    pub peer_timeouts: u64,
    /// Flows closed by their application that were reset because the
    /// peer never finished its side (see `HostConfig::orphan_timeout`).
    #[serde(default)]
    pub orphans_reset: u64,
    /// Packets dropped because the driver's transmit buffer could not
    /// hold them (see `Host::poll_transmit`).
    #[serde(default)]
    pub too_big: u64,
}
