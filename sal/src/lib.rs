//! The Serval service access layer (SAL), sans-IO.
//!
//! Applications name *services* by 256-bit [`ServiceId`]s; the SAL resolves them
//! by longest-prefix match in a [`table::ServiceTable`], and names established
//! connections by [`FlowId`]s so they survive address changes. This crate holds
//! the protocol core: no sockets, no runtime, no clock. Time is passed in and
//! packets are byte buffers, so whole networks can be simulated in-process.
//!
//! Modules, one concept each:
//! - [`id`]: service IDs, prefixes, flow IDs and their text forms.
//! - [`wire`]: the SAL header and its extensions (WIRE.md), zero-copy views and `Repr`s.
//! - [`table`]: the service table, a 256-bit longest-prefix-match trie with
//!   FORWARD / DEMUX / DELAY / DROP targets.
//! - [`locator`]: where packets go (IPv4 address, or address and UDP port).
//! - [`flow`]: the flow table, flows by local flow ID.
//! - [`proto`]: the host state machine: handshakes, routing, DELAY, datagrams,
//!   streams (each flow owning its TCP socket, [`tcp`]).
//!
//! The control-socket protocol (`sal-control`) and the deterministic network
//! simulator used by tests (`sal-sim`) are crates of their own: neither is
//! protocol core.

#![warn(missing_docs)]

pub mod flow;
pub mod id;
pub mod locator;
pub mod proto;
pub mod table;
pub mod wire;

pub use id::{FlowId, ParseIdError, ServiceId, ServicePrefix};
pub use locator::Locator;
/// The stream transport: each stream flow owns one of its sockets.
pub use sal_tcp as tcp;
/// The core's clock types: time is passed in, never read.
pub use smoltcp::time;
