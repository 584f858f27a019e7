//! A deterministic network simulator for whole topologies of SAL
//! [`Host`](sal::proto::Host)s, used by the protocol tests.
//!
//! Hosts share one medium ([`Network`]); what happens to packets on the way
//! is a [`Path`] of fault [`node`]s per (source, destination) address pair:
//! [`Delay`], [`Jitter`] (reordering), [`Loss`], [`Duplicate`], [`Mtu`],
//! [`Partition`] and [`RateLimit`], in any order and number.
//! [`LinkConditions`] is the shorthand for the same simple faults on every
//! link. A [`Nat`] may translate between a private subnet and the rest. Time is virtual, and everything random comes from one seed: the
//! test's own, or `SIMULATION_SEED` when set; a failing test prints the
//! seed it ran with (see [`seed`]), so any failing run can be replayed.
//!
//! Modelled after neqo's `test-fixture` simulator.

#![warn(missing_docs)]

mod conditions;
pub mod nat;
mod network;
pub mod node;
mod packet;
pub mod seed;

pub use conditions::LinkConditions;
pub use nat::Nat;
pub use network::{HostId, Network, PacketFilter, PathFactory, SimHost, WireStats};
pub use node::{
    Delay, DropReason, Duplicate, Jitter, Loss, Mtu, Node, Partition, PartitionSwitch, Path,
    RateLimit, Verdict,
};
pub use packet::Packet;
