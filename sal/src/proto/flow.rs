//! One end of a flow, as a few parts that each have one job.
//!
//! A flow is an identity (flow IDs, service, role) with a life ([`FlowState`])
//! and parts that the exchanges of the other modules work on: its [`Path`]
//! (addresses and moves), its [`ControlState`] (numbered control messages in
//! flight), its [`Liveness`] (the peer's silence), its armed [`FlowTimers`],
//! its [`Teardown`] progress, and its transport. The transport part is what
//! differs between streams and datagrams, so it is an enum: a stream flow
//! owns its TCP socket, a datagram flow its queue of received datagrams.

use smoltcp::time::Instant;

use super::control::ControlState;
use super::datagram::{DatagramQueue, DatagramSocket};
use super::liveness::Liveness;
use super::nat::NatState;
use super::path::Path;
use super::stream::StreamPart;
use super::teardown::Teardown;
use super::timer::{FlowTimers, Timer};
use super::{FlowCounters, FlowState, Host, HostError, Role};
use crate::id::{FlowId, ServiceId};
use crate::locator::Locator;
use crate::table::ListenerId;
use crate::wire::TransportProtocol;

/// What a flow ID names on this host.
#[derive(Debug)]
pub(super) enum Endpoint {
    Flow(Box<Flow>),
    Datagram(DatagramSocket),
}

/// The transport-specific part of a flow. A stream's socket lives inline:
/// the whole [`Flow`] is boxed already, and streams are the common case, so
/// boxing the socket apart would cost every stream flow one more allocation.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum FlowTransport {
    Stream(StreamPart),
    /// Datagrams received on a connected datagram flow, oldest first.
    Datagram(DatagramQueue<Vec<u8>>),
}

/// An end of a flow. See the module docs.
#[derive(Debug)]
pub(super) struct Flow {
    pub id: FlowId,
    pub peer_flow: Option<FlowId>,
    pub service: ServiceId,
    pub role: Role,
    pub state: FlowState,
    /// Server: the listener whose SYN opened the flow.
    pub listener: Option<ListenerId>,
    pub path: Path,
    pub control: ControlState,
    pub liveness: Liveness,
    pub timers: FlowTimers,
    pub teardown: Teardown,
    /// Keepalives and path validation across NATs.
    pub nat: NatState,
    pub transport: FlowTransport,
    pub counters: FlowCounters,
    /// Already in the host's list of flows to look at after this poll.
    pub dirty: bool,
    /// Whose buffer budget the flow's TCP buffers count against, besides
    /// the host's, once accepted (see `budget.rs` and [`Flow::charge`]).
    pub group: u32,
    /// A server flow its application has not accepted yet: its buffers
    /// grow only to [`UNACCEPTED_BUFFER`](super::budget::UNACCEPTED_BUFFER),
    /// and count against its listener's bound rather than its group.
    pub unaccepted: bool,
}

impl Flow {
    /// A flow that is not yet connected, in state `Resolving`: callers set
    /// the rest. Its ID is assigned when the flow table stores it.
    pub fn new(
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
            role,
            state: FlowState::Resolving,
            listener: None,
            path: Path::new(local),
            control,
            liveness: Liveness::new(now),
            timers: FlowTimers::default(),
            teardown: Teardown::default(),
            nat: NatState::default(),
            transport: match protocol {
                TransportProtocol::Stream => FlowTransport::Stream(StreamPart::default()),
                TransportProtocol::Datagram => FlowTransport::Datagram(DatagramQueue::default()),
            },
            counters: FlowCounters::default(),
            dirty: false,
            group: super::NO_GROUP,
            unaccepted: false,
        }
    }

    /// Counts a packet this end sent on the flow, at `now`.
    pub fn count_sent(&mut self, now: Instant) {
        self.counters.packets_out += 1;
        self.nat.sent(now);
    }

    pub fn protocol(&self) -> TransportProtocol {
        match self.transport {
            FlowTransport::Stream(_) => TransportProtocol::Stream,
            FlowTransport::Datagram(_) => TransportProtocol::Datagram,
        }
    }

    /// The stream part, for a stream flow.
    pub fn stream(&self) -> Option<&StreamPart> {
        match &self.transport {
            FlowTransport::Stream(stream) => Some(stream),
            FlowTransport::Datagram(_) => None,
        }
    }

    pub fn stream_mut(&mut self) -> Option<&mut StreamPart> {
        match &mut self.transport {
            FlowTransport::Stream(stream) => Some(stream),
            FlowTransport::Datagram(_) => None,
        }
    }
}

impl Host {
    /// The flow `id` names, if it names a flow (not a datagram socket).
    pub(super) fn flow_mut(&mut self, id: FlowId) -> Result<&mut Flow, HostError> {
        match self.endpoints.get_mut(id) {
            Some(Endpoint::Flow(flow)) => Ok(flow),
            _ => Err(HostError::NoSuchFlow(id)),
        }
    }

    /// Stores a new flow under a fresh random flow ID.
    pub(super) fn insert_flow(&mut self, mut flow: Flow) -> Result<FlowId, HostError> {
        let limit = self.endpoints.capacity();
        let id = self
            .endpoints
            .insert_new(&mut self.rng, |id| {
                flow.id = id;
                Endpoint::Flow(Box::new(flow))
            })
            .map_err(|_| HostError::TooManyFlows(limit))?;
        self.flow_count += 1;
        Ok(id)
    }

    /// Arms one of a flow's timers to fire by `at` (see [`TimerQueue::arm`]).
    ///
    /// [`TimerQueue::arm`]: super::timer::TimerQueue::arm
    pub(super) fn arm_timer(&mut self, id: FlowId, timer: Timer, at: Instant) {
        if let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) {
            self.timers.arm(id, &mut flow.timers, timer, at);
        }
    }

    /// Disarms every timer of flow `id` but those in `keep`.
    pub(super) fn disarm_timers_except(&mut self, id: FlowId, keep: &[Timer]) {
        if let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) {
            self.timers.disarm_except(&mut flow.timers, keep);
        }
    }

    /// Notes that a flow changed, so that the end of this poll reports
    /// activity, sends its FIN if due, and releases it if finished.
    pub(super) fn mark_dirty(&mut self, id: FlowId) {
        if let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) {
            if !flow.dirty {
                flow.dirty = true;
                self.dirty.push(id);
            }
        }
    }
}
