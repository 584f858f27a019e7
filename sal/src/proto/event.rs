//! What the host tells its driver: events to act on.
//!
//! The core never calls back into the application; it queues events that
//! the driver drains with [`Host::poll_event`](super::Host::poll_event) after
//! each batch of input, so that the core stays a plain state machine.

use crate::id::{FlowId, ServiceId, ServicePrefix};
use crate::locator::Locator;
use crate::table::ListenerId;

use super::ConnectError;

/// Something the application or controller may want to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A `connect` completed; the flow is established.
    Connected(FlowId),
    /// A `connect` failed; the flow is gone.
    ConnectFailed(FlowId, ConnectError),
    /// The listener has a flow waiting in its accept queue.
    Incoming(ListenerId),
    /// A peer's connect to a local listener completed: this flow is
    /// established and waits in the listener's backlog. One per flow, where
    /// `Incoming` only says that the listener has some (servd counts a
    /// served prefix's load from these).
    PeerConnected(FlowId),
    /// The flow may have become readable or writable, or its peer closed or reset it.
    Activity(FlowId),
    /// The flow is finished and its ID released.
    Closed(FlowId),
    /// A datagram socket has a datagram to read.
    Datagram(FlowId),
    /// A DELAY rule is holding a packet for this service: ask the
    /// controller.
    DelayNotify {
        /// The service to resolve.
        service: ServiceId,
        /// The local connect held, if that is what is held rather than a
        /// packet that arrived (which anyone may send): a driver can tell
        /// whose it is.
        connect: Option<FlowId>,
    },
    /// A local listener now serves this prefix (a DEMUX rule was added).
    /// The listener is named: several may serve one prefix (a drained one
    /// and its successor, or different owners), and whose it is matters
    /// to who may hear of it.
    Registered(ListenerId, ServicePrefix),
    /// A local listener stopped serving this prefix (drained or closed).
    Unregistered(ListenerId, ServicePrefix),
    /// A drained listener holds no flow for the application any more: the
    /// last one it had admitted was accepted, or died half-open or queued.
    /// It can close now without resetting anyone. Only drained listeners
    /// say so (a serving one empties its queue at every accept), each time
    /// their count falls to 0; as a drained listener admits no new flow,
    /// that is once.
    Settled(ListenerId),
    /// This end moved the flow to the locator of another interface.
    Migrated(FlowId, Locator),
    /// The peer moved the flow to a new locator.
    PeerMoved(FlowId, Locator),
}
