//! `servd`, the service controller: turns binds into routing state across
//! the network (DESIGN.md, "Control plane").
//!
//! - [`controller`]: the sans-IO state machine (announcements, leases,
//!   FORWARD rules on routers, aggregation, DELAY queries, default route).
//! - [`wire`]: the controller-to-controller datagram format (versioned JSON,
//!   size cap, optional HMAC-SHA256 with timestamp and sequence number).
//! - [`keys`]: the shared keys messages are tagged with.
//! - [`replay`]: refusing captured tagged datagrams sent again.
//! - [`policy`]: what a router accepts from announcements.
//! - [`log_limit`]: log lines that senders trigger, and replies to
//!   unauthenticated queries and solicits, at a bounded rate.
//! - [`driver`]: the tokio shell around it (one UDP socket on the host
//!   network, the UDP loop and the signals).
//! - [`sald_link`]: everything said to the local sald (its own task:
//!   batched rule changes, the event subscription, reconnection).
//!
//! Soft state, end to end: a host announces what is bound on it with a
//! lease and refreshes it; a router holds the resulting FORWARD rules only
//! as long as refreshes keep coming. Nothing needs to be cleaned up by hand
//! after a crash, a partition or a restart of either side.

pub mod controller;
pub mod deadlines;
pub mod driver;
pub mod keys;
pub mod log_limit;
pub mod policy;
pub mod replay;
pub mod sald_link;
pub mod wire;

pub use controller::{
    Config, Controller, DefaultRoute, Mode, SaldAction, Stats, Transmit, WeightPolicy,
};
pub use keys::{Key, Keyring};
pub use policy::Policy;
