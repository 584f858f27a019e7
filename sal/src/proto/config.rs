//! A host's tunables.
//!
//! Every timeout and bound of the protocol core is here, in one place, so
//! that the daemon can expose them and tests can shrink them; the defaults
//! are those of the reference stack where it has one.

use smoltcp::time::Duration;

/// Tunables of a host's SAL.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Service-router mode: forward SYNs and unconnected datagrams by FORWARD rules.
    pub forward: bool,
    /// Service routing for the host's own programs, whether or not it is a
    /// router (`forward`): a SYN or unconnected datagram that came from a
    /// UDP locator on one of this host's addresses, not one of its own
    /// locators (a program that drives its own SAL host over UDP and sends
    /// its first packets here, by a FORWARD rule of its own), is forwarded
    /// by this host's FORWARD rules as a router forwards it. Off by default:
    /// a program's own host routes nothing; sald in UDP mode sets it.
    pub relay_local: bool,
    /// Seed of the host's random numbers (flow IDs, nonces, verno, TCP ISNs)
    /// when there is no `entropy`: repeatable and predictable, for
    /// simulations.
    pub seed: u64,
    /// Key of the cryptographic generator the host's random numbers and
    /// its SYN-cookie secret come from; a host on a real network must have
    /// one (sald draws 32 bytes from the operating system). `None` (the
    /// default) draws from `seed` instead.
    pub entropy: Option<[u8; 32]>,
    /// First retransmission timeout of a control message.
    pub control_rto: Duration,
    /// Retransmissions before a control message is given up on. With the
    /// default timeout (0.5 s, doubling) five give up after 31.5 s: a
    /// connect to nowhere fails, and a FIN or RSYN to a peer that vanished
    /// ends its flow, well within a minute.
    pub control_retries: u32,
    /// Repeats of a client's handshake ACK at most (at 0.5 and 1.5 s with
    /// the default timeout), until the server is heard: servers never
    /// repeat their SYN-ACK, so a lost ACK is the client's to make good.
    /// Enough for a lossy path while the server's half-open flow waits;
    /// over within seconds when the server simply has nothing to say.
    pub handshake_ack_repeats: u32,
    /// How long a half-open server flow (SYN answered, no ACK yet) may
    /// wait for its client's ACK. Its SYN-ACK is sent once and then only
    /// again when the client repeats its SYN (never to an address that
    /// has not proved it is there: see `handshake.rs`), so this is only a
    /// bound on the state an unanswered SYN holds.
    pub half_open_timeout: Duration,
    /// Half-open server flows a listener keeps at most (its backlog bounds
    /// them too); past that, and past [`HostConfig::max_half_open`]
    /// host-wide, SYNs are answered with cookies, which keep nothing.
    pub half_open_limit: usize,
    /// Half-open server flows the host keeps at most, all listeners
    /// together.
    pub max_half_open: usize,
    /// When SYNs are answered with cookies (see `cookie.rs`).
    pub syn_cookies: SynCookies,
    /// A flow that has waited this long for any answer from its peer
    /// (data or a control message unacknowledged, nothing heard) is given
    /// up on: it is reset, and the application sees the error.
    pub peer_timeout: Duration,
    /// A flow its application has closed, whose own FIN (and so all its
    /// data) the peer acknowledged, waits this long for the peer to finish
    /// too; then it is reset and forgotten. Without it, a peer that never
    /// closes its side (and keeps answering) would hold the flow's state
    /// for ever, though nobody here can read from it any more. Linux's
    /// `tcp_fin_timeout` for orphaned sockets, same default.
    pub orphan_timeout: Duration,
    /// How long the prefix of a drained listener that closed stays
    /// drained: SYNs for it that routers sent before the withdrawal reached
    /// them (on a loaded network, after the listener closed) are still
    /// dropped quietly, so that their clients retransmit to another
    /// instance, instead of refused with "no route". Past it, such a SYN
    /// is refused as for any service the host lacks.
    pub drained_linger: Duration,
    /// How long a DELAY rule may hold a packet.
    pub delay_timeout: Duration,
    /// Packets a DELAY rule may hold at once (host-wide).
    pub delay_queue_limit: usize,
    /// Live flows and datagram sockets at most: a bound on memory, not a
    /// limit of the design (a packet or timer costs the same with any
    /// number of flows). The default is far above a million.
    pub max_flows: usize,
    /// IP TTL of packets this host originates.
    pub ttl: u8,
    /// Each stream flow's TCP socket: segment size, buffer bounds (buffers
    /// hold no memory while idle and grow with use), behaviour. See
    /// [`default_stream_config`].
    pub stream: sal_tcp::Config,
    /// Bytes all stream flows' TCP buffers may hold together before the
    /// host is under memory pressure (Linux's `tcp_mem`). Under pressure no
    /// buffer grows beyond the storage it holds (one holding none may take
    /// its first allocation, `stream.min_buffer`), windows offer only what
    /// that storage can take, data past it is dropped for the peer to
    /// resend, and writes wait; growth resumes once use falls below 7/8 of
    /// the budget. See `stream.rs`. `None` (the default, for simulations):
    /// no budget, every flow may grow to its maxima; sald sets one.
    pub buffer_memory_limit: Option<usize>,
    /// Bytes the TCP buffers of one group of flows may hold together
    /// before that group's flows are under memory pressure, as all flows
    /// are at `buffer_memory_limit` (see `budget.rs`, and
    /// [`Host::set_flow_group`](super::Host::set_flow_group)): one group
    /// cannot put every other under pressure. `None` (the default): groups
    /// are bounded by the host's budget only.
    pub buffer_memory_group_limit: Option<usize>,
    /// Datagrams queued per socket before new ones are dropped.
    pub datagram_queue_limit: usize,
    /// Bytes of payload queued per socket before new datagrams are dropped
    /// (one datagram larger than this is still queued on an empty queue).
    pub datagram_queue_bytes: usize,
    /// Move flows off an interface that goes down or loses its address, and
    /// off a path that stops delivering.
    pub auto_migrate: bool,
    /// Follow a peer's RSYN from a new address only once that address has
    /// answered a path challenge (the default). `false` follows it at once,
    /// as WIRE.md and the reference stack do: reference peers, which do not
    /// answer challenges, can then migrate, and any peer can have its
    /// flows' data sent to an address of its choosing.
    pub validate_peer_moves: bool,
    /// A flow with data in flight that hears nothing from its peer for this
    /// long is moved to another interface (with `auto_migrate`). Halfway
    /// through, a flow with somewhere else to go probes its path, and moves
    /// only if the probe goes unanswered too: after a loss, TCP may stay
    /// silent for longer than this (its retransmission timeout, backed
    /// off), and that moves nothing. More than twice the path's round trip.
    pub liveness_timeout: Duration,
    /// An idle flow (nothing in flight) that has heard nothing for this long
    /// probes its path, so that a dead path is found before the application
    /// next needs it; an unanswered probe then counts as data in flight.
    /// Only where there is somewhere to move (several interfaces up, or a
    /// peer that advertised other locators), and with `auto_migrate`.
    /// `None`: idle flows are never probed.
    pub idle_probe: Option<Duration>,
    /// Broadcast discovery, as the reference stack does by default: a SYN
    /// or unconnected datagram for a service no rule matches goes to the
    /// broadcast address of every native interface that is up (the first
    /// server to answer wins) instead of failing with "no route". A host
    /// with a default rule (`0/0`) never gets there. Off here (the sans-IO
    /// core stays quiet unless asked); sald turns it on unless
    /// `--no-broadcast`.
    pub broadcast_discovery: bool,
    /// A client flow carried over UDP never stays silent toward its peer
    /// for longer than this (a bare SAL ACK goes out), so that a NAT on the
    /// path keeps its mapping (see `nat.rs`). `None`: no keepalives.
    pub keepalive: Option<Duration>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            forward: false,
            relay_local: false,
            seed: 0,
            entropy: None,
            control_rto: Duration::from_millis(500),
            control_retries: 5,
            handshake_ack_repeats: 2,
            half_open_timeout: Duration::from_secs(10),
            half_open_limit: 128,
            max_half_open: 1024,
            syn_cookies: SynCookies::UnderPressure,
            peer_timeout: Duration::from_secs(30),
            orphan_timeout: Duration::from_secs(60),
            // Routers hear of a drain within milliseconds (servd withdraws
            // at once); this covers loaded daemons between them.
            drained_linger: Duration::from_secs(5),
            delay_timeout: Duration::from_secs(5),
            delay_queue_limit: 1024,
            max_flows: 1 << 22,
            ttl: 64,
            stream: default_stream_config(),
            buffer_memory_limit: None,
            buffer_memory_group_limit: None,
            datagram_queue_limit: 256,
            datagram_queue_bytes: 256 * 1024,
            auto_migrate: true,
            validate_peer_moves: true,
            liveness_timeout: Duration::from_millis(1500),
            idle_probe: Some(Duration::from_secs(10)),
            broadcast_discovery: false,
            // Under the 30 s after which many NATs forget a UDP mapping.
            keepalive: Some(Duration::from_secs(25)),
        }
    }
}

/// When a listener answers SYNs with cookies rather than half-open flows
/// (in sald's config file: `"never"`, `"under-pressure"`, `"always"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SynCookies {
    /// Never: past the half-open limits, SYNs are refused.
    Never,
    /// Once the half-open limits are reached (like Linux's
    /// `tcp_syncookies=1`): a half-open flow can still resend its SYN-ACK
    /// and take data that overtook a lost ACK, which a cookie cannot.
    UnderPressure,
    /// Always: no SYN costs the host anything.
    Always,
}

/// The SAL's TCP settings: `sal_tcp`'s defaults (MSS 1448 for a 1500-byte
/// MTU, 4 KiB first allocation, 1 MiB buffer maxima, Cubic) with Nagle off
/// (applications' writes go out as they come, as with `TCP_NODELAY`, which
/// the socket shim reports as set) and a 1 ms delayed ACK.
pub fn default_stream_config() -> sal_tcp::Config {
    sal_tcp::Config {
        nagle: false,
        ack_delay: Some(Duration::from_millis(1)),
        ..sal_tcp::Config::default()
    }
}
