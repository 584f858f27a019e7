//! Moving an established stream flow to another host: [`Host::export_flow`]
//! takes its whole state out as a [`FlowExport`], and [`Host::import_flow`]
//! sets it up on another host (or on the same one, later), which takes the
//! flow as its own.
//!
//! The export holds the flow's identity (both flow IDs, its service, this
//! end's role), what the SAL's control exchange needs to go on (both
//! nonces, the next `verno` and the expected `ackno`), where the peer is
//! (its locator and the others it advertised), and its TCP socket's state
//! and bytes ([`sal_tcp::SocketExport`]: what was sent and not
//! acknowledged, what was not sent yet, what arrived and was not read).
//! Neither the path's measurements nor out-of-order data cross (see
//! `sal_tcp`'s `export` module): the flow changes path anyway.
//!
//! The exporting host forgets the flow without a word to the peer: no RST,
//! no FIN. Packets of the flow keep coming to it until the peer follows the
//! flow to its new host, and a host that does not know a flow answers its
//! FIN with a RST (see `teardown.rs`), which the peer would take: so the
//! exporting host keeps a tombstone of the flow ID for the peer timeout,
//! and drops everything addressed to it without an answer.
//!
//! The importing host moves the flow to its own locator at once, with the
//! RSYN of an ordinary migration (WIRE.md "Exchanges", `migration.rs`):
//! the peer checks the nonce, answers, and follows once the new address is
//! proven; data waits for the answer and then resends what the old path
//! may have swallowed, so both directions go on byte-exact.
//!
//! Only an established stream flow, open both ways or finished by the peer
//! alone (its TCP and SAL FINs in: the importer reads its end of stream
//! after the bytes), with no control exchange of its own pending beyond
//! one message, can be exported (see
//! [`NotExportable`]). An export is hostile input: it may come from an
//! unprivileged program. [`Host::import_flow`] checks every field against
//! the host's config and the others, and refuses with [`ImportError`]
//! rather than panic or hold memory beyond its limits.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smoltcp::time::Instant;

use super::budget::Charge;
use super::control::{ControlKind, ControlState};
use super::flow::{Endpoint, Flow};
use super::{Event, FlowState, Host, HostError, Role, NO_GROUP};
use crate::id::{FlowId, ServiceId};
use crate::locator::Locator;
use crate::wire::{ControlFlags, TransportProtocol, MAX_ADDRESS_ADDRS};

/// The newest version of [`FlowExport`]'s form, which this build writes for
/// a flow whose peer finished; it reads this one and
/// [`FLOW_EXPORT_OLDEST`].
/// Version 2 added [`FlowExport::local`]; version 3, a flow whose peer
/// finished (`SocketExport::peer_finished`), which a reader of version 2
/// would take for one open both ways, its end of stream never read.
pub const FLOW_EXPORT_VERSION: u32 = 3;

/// The oldest version of the form this build reads, and the one it writes
/// for a flow open both ways (so that an older importer takes it).
pub const FLOW_EXPORT_OLDEST: u32 = 2;

/// An established stream flow's whole state, taken out of one host by
/// [`Host::export_flow`] to be taken up by another with
/// [`Host::import_flow`]. Plain data, serializable, so that it can cross
/// a socket between processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowExport {
    /// The form's version ([`FLOW_EXPORT_OLDEST`] to
    /// [`FLOW_EXPORT_VERSION`]); any other is refused, and so is a
    /// version 2 form that says the peer finished.
    pub version: u32,
    /// This end's flow ID, which the peer's packets carry as destination.
    pub flow: FlowId,
    /// The peer's flow ID.
    pub peer_flow: FlowId,
    /// The service the flow was opened to.
    pub service: ServiceId,
    /// Whether this end opened the flow.
    pub role: Role,
    /// Where the flow was on the exporting host: the locator it used.
    /// [`Host::import_flow`] moves the flow to its own locator whatever
    /// this says; a driver that takes exports from others checks it
    /// against the exporter (sald's `Adopt` wants the UDP socket bound
    /// there, which proves the exporter held the flow's locator).
    pub local: Locator,
    /// Where the peer is.
    pub peer: Locator,
    /// Other locators the peer advertised (candidates only, see `path.rs`).
    pub peer_locators: Vec<Locator>,
    /// Our nonce, which the peer checks on our control messages.
    pub local_nonce: [u8; 8],
    /// The peer's nonce, which we check on its.
    pub peer_nonce: [u8; 8],
    /// The `verno` our next control message takes.
    pub next_verno: u32,
    /// The `ackno` we send: the peer's next `verno`.
    pub peer_next: u32,
    /// The flow's TCP socket.
    pub socket: sal_tcp::SocketExport,
}

/// Why a flow cannot be exported (now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotExportable {
    /// A datagram flow or socket: only stream flows are exported.
    #[error("only stream flows can be exported")]
    Datagram,
    /// Still opening (half-open, resolving, held by DELAY) or dead.
    #[error("the flow is not established")]
    NotEstablished,
    /// Closing: this end has finished sending or the application closed
    /// it. Its teardown exchange is not carried. (A flow whose peer
    /// finished, and this end not, is exported.)
    #[error("the flow is closing")]
    Closing,
    /// A server flow still in its listener's accept queue: the listener's.
    #[error("the flow has not been accepted")]
    Unaccepted,
    /// The handshake is not confirmed yet (the client's ACK is still
    /// repeated), more than one control message of ours is in flight
    /// (a move and an answer), or the peer moved and is not followed yet:
    /// retry once they are answered.
    #[error("a control exchange of the flow is in progress; retry")]
    Busy,
    /// The flow's buffers hold more than the caller can carry: drain
    /// them first.
    #[error("the flow's buffers hold {buffered} bytes, more than the {most} an export may carry")]
    Buffered {
        /// Unsent and unread bytes together.
        buffered: usize,
        /// The most the caller asked for.
        most: usize,
    },
}

/// Why [`Host::import_flow`] refused an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// A version of the form this build does not read.
    #[error("unknown flow export version {0} (this build reads {FLOW_EXPORT_OLDEST} to {FLOW_EXPORT_VERSION})")]
    Version(u32),
    /// The TCP state does not hold together or does not fit this host.
    #[error(transparent)]
    Socket(#[from] sal_tcp::ImportError),
    /// The peer's locator, or one it advertised, is no address a peer can
    /// have (unspecified, multicast, broadcast, one of this host's own
    /// locators), or is carried otherwise than the interface the flow is
    /// to use (native against UDP).
    #[error("unusable peer locator {0}")]
    PeerLocator(Locator),
    /// More advertised locators than a packet can carry.
    #[error("{0} advertised peer locators, more than a packet carries")]
    TooManyLocators(usize),
    /// The flow's buffers would take the host past its buffer budget, or
    /// the host is under memory pressure.
    #[error("the flow's {0} bytes of buffers do not fit the host's buffer budget")]
    OverBudget(usize),
    /// The flow's buffers would take its group past the group's budget,
    /// or the group is under memory pressure (see `budget.rs`).
    #[error("the flow's {bytes} bytes of buffers do not fit group {group}'s buffer budget")]
    GroupOverBudget {
        /// The buffer memory the import would take.
        bytes: usize,
        /// The group it was to be charged to.
        group: u32,
    },
}

impl ImportError {
    /// Whether the export was refused for want of memory (the host's or
    /// its group's), not because it is malformed: a caller may try again
    /// once memory is free.
    pub fn is_exhaustion(&self) -> bool {
        matches!(
            self,
            ImportError::OverBudget(_) | ImportError::GroupOverBudget { .. }
        )
    }
}

/// The buffer memory [`sal_tcp::Socket::import`] takes for `export` under
/// `config`: each buffer that holds bytes allocates `min_buffer` first and
/// doubles up to its maximum until the bytes fit, as `sal_tcp`'s
/// `ElasticBuffer` grows (a test checks that the two agree). Reckoned from
/// the lengths alone, before anything is allocated, so that an import can
/// be refused for want of memory first. Lengths beyond the maximum (which
/// the import refuses anyway) count as the maximum.
pub fn import_memory(config: &sal_tcp::Config, export: &sal_tcp::SocketExport) -> usize {
    let allocation = |len: usize, max: usize| {
        let max = max.clamp(1, sal_tcp::MAX_BUFFER);
        if len == 0 {
            return 0;
        }
        let mut cap = config.min_buffer.clamp(1, max);
        while cap < len.min(max) {
            cap = cap.saturating_mul(2);
        }
        cap.min(max)
    };
    allocation(export.send_buffer.len(), config.max_send_buffer)
        + allocation(export.recv_buffer.len(), config.max_recv_buffer)
}

/// Tombstones kept at most: a bound on their memory (about 40 bytes
/// each) that one user's exports cannot reach by churning one flow, since
/// a flow buried again takes its own place.
const MAX_TOMBSTONES: usize = 1 << 16;

/// Flow IDs exported lately, dropped without an answer when packets of
/// theirs arrive (see the module docs), each until its deadline, with the
/// flow's own nonce: only the flow itself (an export carrying that nonce)
/// may take the ID back meanwhile. All deadlines are one fixed time after
/// the export, so the oldest is first.
#[derive(Debug, Default)]
pub(super) struct Tombstones {
    until: FxHashMap<FlowId, (Instant, [u8; 8])>,
    order: VecDeque<(Instant, FlowId)>,
}

impl Tombstones {
    /// Keeps `id` (whose local nonce is `nonce`) until `until`, at most
    /// `limit` IDs in all (the oldest go first).
    fn bury(&mut self, id: FlowId, nonce: [u8; 8], now: Instant, until: Instant, limit: usize) {
        while self.order.front().is_some_and(|&(at, _)| at <= now) {
            self.pop_oldest();
        }
        let fresh = !self.until.contains_key(&id);
        while fresh && self.until.len() >= limit.max(1) && !self.order.is_empty() {
            self.pop_oldest();
        }
        self.until.insert(id, (until, nonce));
        self.order.push_back((until, id));
        // Entries of IDs buried again or raised: dropped once they are
        // half the queue, so that churn cannot grow it.
        if self.order.len() > 2 * self.until.len() + 16 {
            let until = &self.until;
            self.order
                .retain(|(at, id)| until.get(id).is_some_and(|(live, _)| live == at));
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, id)) = self.order.pop_front() {
            // Only if not buried again since, with a later deadline.
            if self.until.get(&id).is_some_and(|(live, _)| *live == at) {
                self.until.remove(&id);
            }
        }
    }

    /// Whether `id` was exported and its tombstone stands at `now`.
    pub(super) fn holds(&self, id: FlowId, now: Instant) -> bool {
        self.until.get(&id).is_some_and(|&(until, _)| until > now)
    }

    /// Whether an export of `id` carrying `nonce` may take the ID at
    /// `now`: no tombstone stands for it, or it is the flow's own.
    fn admits(&self, id: FlowId, nonce: [u8; 8], now: Instant) -> bool {
        match self.until.get(&id) {
            Some(&(until, own)) if until > now => own == nonce,
            _ => true,
        }
    }

    /// Forgets `id`'s tombstone: the flow is back.
    fn raise(&mut self, id: FlowId) {
        self.until.remove(&id);
    }
}

impl Host {
    /// Takes an established stream flow out of this host: returns its
    /// whole state (see the module docs), and forgets it without a word to
    /// the peer. No [`Event::Closed`] is queued for it: the caller knows.
    /// Packets of the flow that still arrive are dropped without an answer
    /// for [`HostConfig::peer_timeout`](super::HostConfig::peer_timeout).
    pub fn export_flow(&mut self, id: FlowId) -> Result<FlowExport, HostError> {
        self.export_flow_within(id, usize::MAX)
    }

    /// [`Host::export_flow`], unless the flow's buffers hold more than
    /// `most` bytes together (unsent and unread): then the flow stays
    /// ([`NotExportable::Buffered`]), as when the export must fit a frame
    /// of a bounded size (sald's `Adopt`).
    pub fn export_flow_within(&mut self, id: FlowId, most: usize) -> Result<FlowExport, HostError> {
        let now = self.now;
        let flow = match self.endpoints.get(id) {
            Some(Endpoint::Flow(flow)) => flow,
            Some(Endpoint::Datagram(_)) => return Err(NotExportable::Datagram.into()),
            None => return Err(HostError::NoSuchFlow(id)),
        };
        let export = flow_export(flow, now)?;
        let buffered = export.socket.send_buffer.len() + export.socket.recv_buffer.len();
        if buffered > most {
            return Err(NotExportable::Buffered { buffered, most }.into());
        }
        let charge = flow.charge();
        let memory = flow
            .stream()
            .and_then(|s| s.socket.as_ref())
            .map_or(0, sal_tcp::Socket::buffer_memory);
        if let Some(Endpoint::Flow(flow)) = self.endpoints.remove(id) {
            self.timers.forget(&flow.timers);
        }
        self.flow_count -= 1;
        self.account_buffers(charge, memory, 0);
        let until = now + self.config.peer_timeout;
        let limit = self.config.max_flows.min(MAX_TOMBSTONES);
        self.exported
            .bury(id, export.local_nonce, now, until, limit);
        self.stats.flows_exported += 1;
        Ok(export)
    }

    /// Hurries a flow that is [`NotExportable::Busy`] only because its
    /// server has not spoken yet (the client's handshake ACK is still
    /// repeated: a client that sent nothing yet, to a server that waits
    /// for a request, may stay so for seconds): sends a probe, an RSYN
    /// from where the flow is, which the peer answers at once, and
    /// hearing the peer confirms the handshake. Returns whether a probe
    /// went; the flow is exportable once its answer came.
    pub fn hurry_export(&mut self, id: FlowId) -> bool {
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        let pending = &flow.control.pending;
        let only_handshake_ack =
            pending.len() == 1 && pending.iter().all(|p| p.kind == ControlKind::HandshakeAck);
        if flow.state != FlowState::Established || !only_handshake_ack {
            return false;
        }
        self.stats.probes += 1;
        self.send_new_control(id, ControlKind::Probe, ControlFlags::RSYN, false, &[]);
        true
    }

    /// Takes up a flow another host (or this one) exported, on interface
    /// `interface`, and moves it there at once with an RSYN (see the
    /// module docs). Returns its flow ID, the export's. The flow is in no
    /// group ([`Host::import_flow_in_group`] puts it in one).
    ///
    /// Refused: an export that does not hold together or does not fit
    /// this host ([`HostError::BadImport`]), a flow ID in use here
    /// ([`HostError::FlowIdInUse`]), a full flow table, an interface that
    /// is unknown or down.
    pub fn import_flow(
        &mut self,
        export: FlowExport,
        interface: &str,
    ) -> Result<FlowId, HostError> {
        self.import_flow_in_group(export, interface, NO_GROUP)
    }

    /// [`Host::import_flow`], the flow going into buffer budget group
    /// `group` (see `budget.rs`; [`NO_GROUP`]: none) as
    /// [`Host::set_flow_group`] would put it, except that the group's
    /// budget is checked first:
    /// the buffers the export needs ([`import_memory`]) must fit both the
    /// host's budget and the group's, and neither may be under memory
    /// pressure if they need any, or the import is refused
    /// ([`ImportError::OverBudget`], [`ImportError::GroupOverBudget`])
    /// before anything is allocated. A flow opened here would start with
    /// empty buffers that grow only while there is no pressure; an
    /// imported one arrives with its bytes, so it must fit at once.
    pub fn import_flow_in_group(
        &mut self,
        export: FlowExport,
        interface: &str,
        group: u32,
    ) -> Result<FlowId, HostError> {
        let readable = FLOW_EXPORT_OLDEST..=FLOW_EXPORT_VERSION;
        if !readable.contains(&export.version)
            || (export.socket.peer_finished && export.version < FLOW_EXPORT_VERSION)
        {
            return Err(ImportError::Version(export.version).into());
        }
        let local = self.up_interface_locator(interface)?;
        if export.peer_locators.len() > MAX_ADDRESS_ADDRS {
            return Err(ImportError::TooManyLocators(export.peer_locators.len()).into());
        }
        let usable = |peer: &Locator| {
            self.interfaces.may_be_peer(peer.ip())
                && !self.interfaces.owns(peer)
                && matches!(
                    (peer, local),
                    (Locator::Ipv4(_), Locator::Ipv4(_)) | (Locator::Udp(_), Locator::Udp(_))
                )
        };
        let unusable = std::iter::once(&export.peer)
            .chain(&export.peer_locators)
            .find(|peer| !usable(peer));
        if let Some(&peer) = unusable {
            return Err(ImportError::PeerLocator(peer).into());
        }
        let id = export.flow;
        // An ID in use, or exported lately by another flow: a made-up
        // export of someone's exported flow would take its late packets
        // and, once gone, leave its peer's FIN to be reset.
        if self.endpoints.get(id).is_some()
            || !self.exported.admits(id, export.local_nonce, self.now)
        {
            return Err(HostError::FlowIdInUse(id));
        }
        if self.endpoints.len() >= self.endpoints.capacity() {
            return Err(HostError::TooManyFlows(self.endpoints.capacity()));
        }
        // Memory first, from the lengths alone: nothing is allocated for
        // an export that does not fit. Buffers longer than this host's
        // sockets hold are the export's fault, not a want of memory.
        (export.socket)
            .check_buffer_lengths(&self.config.stream)
            .map_err(ImportError::from)?;
        let needed = import_memory(&self.config.stream, &export.socket);
        self.check_import_budget(needed, group)?;
        let now = self.now;
        let socket = sal_tcp::Socket::import(&self.config.stream, &export.socket, now)
            .map_err(ImportError::from)?;
        let peer_finished = export.socket.peer_finished;
        let memory = socket.buffer_memory();
        // `import_memory` reckons what the import takes; should the two
        // ever disagree, what was taken is what counts.
        if memory > needed {
            self.check_import_budget(memory, group)?;
        }

        let mut control = ControlState::new(export.local_nonce, export.next_verno);
        control.peer_nonce = Some(export.peer_nonce);
        control.peer_next = export.peer_next;
        let mut flow = Flow::new(
            export.service,
            TransportProtocol::Stream,
            export.role,
            local,
            control,
            now,
        );
        flow.id = id;
        flow.group = group;
        flow.peer_flow = Some(export.peer_flow);
        flow.state = FlowState::Established;
        flow.path.remote = Some(export.peer);
        flow.path.set_peer_locators(export.peer_locators);
        // Taken from elsewhere: a move, as far as the counters go.
        flow.path.migrations = 1;
        flow.path.last_migration = Some(now);
        if let Some(stream) = flow.stream_mut() {
            stream.socket = Some(socket);
        }
        if peer_finished {
            // Its SAL FIN came and was acknowledged at the exporter: the
            // flow lingers as one whose FIN came now.
            flow.teardown.peer_fin = true;
            flow.teardown.linger_until = Some(now + self.config.control_rto * 4);
        }
        self.endpoints
            .insert(id, Endpoint::Flow(Box::new(flow)))
            .map_err(|_| HostError::FlowIdInUse(id))?;
        self.flow_count += 1;
        self.account_buffers(Charge::Group(group), 0, memory);
        self.exported.raise(id);
        self.stats.flows_imported += 1;
        self.stats.migrations += 1;
        self.events.push_back(Event::Migrated(id, local));
        // The move: our RSYN from here. Data waits for its answer, then
        // resends what the old path may have swallowed (`migration.rs`).
        self.send_new_control(id, ControlKind::Rsyn, ControlFlags::RSYN, false, &[]);
        self.arm_liveness(id);
        self.arm_keepalive(id);
        self.queue_output(id);
        self.mark_dirty(id);
        Ok(id)
    }

    /// Refuses an import whose buffers take `bytes` (none: always
    /// admitted) when they do not fit the host's budget or `group`'s, or
    /// either is under memory pressure (see [`Host::import_flow_in_group`]).
    fn check_import_budget(&self, bytes: usize, group: u32) -> Result<(), ImportError> {
        if bytes == 0 {
            return Ok(());
        }
        let fits = |held: u64, limit: Option<usize>| {
            limit.is_none_or(|limit| held.saturating_add(bytes as u64) <= limit as u64)
        };
        if self.stats.buffer_pressure
            || !fits(self.stats.buffer_bytes, self.config.buffer_memory_limit)
        {
            return Err(ImportError::OverBudget(bytes));
        }
        let charge = Charge::Group(group);
        if group != NO_GROUP
            && (self.buffer_pressure(charge)
                || !fits(
                    self.group_buffer_bytes(group),
                    self.config.buffer_memory_group_limit,
                ))
        {
            return Err(ImportError::GroupOverBudget { bytes, group });
        }
        Ok(())
    }

    /// Whether packets for flow `id`, which this host does not have, are
    /// to be dropped without an answer: it was exported lately.
    pub(super) fn exported_lately(&self, id: FlowId) -> bool {
        self.exported.holds(id, self.now)
    }
}

/// The export of `flow` at `now`, if it can be exported.
fn flow_export(flow: &Flow, now: Instant) -> Result<FlowExport, NotExportable> {
    let Some(stream) = flow.stream() else {
        return Err(NotExportable::Datagram);
    };
    if flow.state != FlowState::Established {
        return Err(NotExportable::NotEstablished);
    }
    let teardown = &flow.teardown;
    if teardown.app_closed || teardown.send_shut || teardown.fin_sent {
        return Err(NotExportable::Closing);
    }
    if flow.unaccepted {
        return Err(NotExportable::Unaccepted);
    }
    let (Some(peer_flow), Some(peer), Some(peer_nonce)) =
        (flow.peer_flow, flow.path.remote, flow.control.peer_nonce)
    else {
        return Err(NotExportable::NotEstablished);
    };
    let Some(socket) = stream.socket.as_ref() else {
        return Err(NotExportable::NotEstablished);
    };
    let socket = socket.export(now).map_err(|_| match socket.state() {
        sal_tcp::State::SynSent | sal_tcp::State::SynReceived | sal_tcp::State::Listen => {
            NotExportable::NotEstablished
        }
        _ => NotExportable::Closing,
    })?;
    // The peer finished: its TCP FIN and its SAL FIN both in, the latter
    // acknowledged. One without the other, or an acknowledgement still
    // owed (or waiting to ride the socket's next segment), is an exchange
    // under way (the two come within a round trip).
    if socket.peer_finished != teardown.peer_fin || teardown.fin_ack_owed || stream.riders.fin_ack {
        return Err(NotExportable::Busy);
    }
    // A message of ours in flight (a move, a probe, the answer to the
    // peer's move) gives its `verno` to the importer's RSYN: if the peer
    // never got it, the RSYN is the news it expects; if it did, the RSYN
    // repeats it from a new locator, which moves the flow all the same
    // (`Host::rsyn_input`). Two in flight would leave the RSYN stale.
    let pending = &flow.control.pending;
    // A peer that moved and that we have not followed yet (its path
    // challenge unanswered) would be sought at its old locator, perhaps
    // dead, while its own RSYNs reach only the exporter's tombstone.
    if pending.iter().any(|p| p.kind == ControlKind::HandshakeAck)
        || pending.len() > 1
        || flow.path.moving_to.is_some()
    {
        return Err(NotExportable::Busy);
    }
    let next_verno = pending.front().map_or(flow.control.next_verno, |p| p.verno);
    Ok(FlowExport {
        version: match socket.peer_finished {
            true => FLOW_EXPORT_VERSION,
            false => FLOW_EXPORT_OLDEST,
        },
        flow: flow.id,
        peer_flow,
        service: flow.service,
        role: flow.role,
        local: flow.path.local,
        peer,
        peer_locators: flow.path.peer_locators().to_vec(),
        local_nonce: flow.control.local_nonce,
        peer_nonce,
        next_verno,
        peer_next: flow.control.peer_next,
        socket,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::time::Duration;

    /// Tombstones hold at most their limit, and one flow exported again
    /// and again (churn) neither grows them nor pushes others out.
    #[test]
    fn tombstones_are_bounded_and_churn_pushes_nobody_out() {
        let mut stones = Tombstones::default();
        let id = |n| FlowId::new(n).unwrap();
        let (now, until) = (Instant::ZERO, Instant::from_secs(30));
        for n in 1..=8 {
            stones.bury(id(n), [n as u8; 8], now, until, 8);
        }
        for round in 0..10_000 {
            let at = Instant::from_millis(round);
            stones.bury(id(100), [1; 8], at, at + Duration::from_secs(30), 9);
        }
        assert!((1..=8).all(|n| stones.holds(id(n), now)), "churn evicted");
        assert!(stones.order.len() <= 2 * stones.until.len() + 17);
        for n in 200..300 {
            stones.bury(id(n), [0; 8], now, until, 9);
        }
        assert_eq!(stones.until.len(), 9);
        assert!(stones.admits(id(299), [0; 8], now));
        assert!(!stones.admits(id(299), [1; 8], now));
        assert!(stones.admits(id(299), [1; 8], until), "it lapsed");
    }
}
