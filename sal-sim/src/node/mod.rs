//! Fault nodes: the pieces a simulated path is built from.
//!
//! Each node does one thing to the packets that cross it (delay them, lose
//! some, duplicate some, reorder them, drop the oversized, cut the link for
//! a while, or queue them behind a slow link), and a [`Path`] chains nodes
//! in order, as neqo's test fixture does. So a test states exactly the
//! faults it is about, and every fault has its own unit test.
//!
//! A node sees one packet at a time, at the virtual instant the packet
//! reaches it, and says when the packet leaves it ([`Verdict`]). The
//! network processes packets in time order, so a node with state (a rate
//! limit's queue, a partition's clock) sees time move forward only.

mod delay;
mod duplicate;
mod jitter;
mod loss;
mod mtu;
mod partition;
mod rate;

use std::fmt;

use crate::Packet;
use rand::rngs::SmallRng;
use smoltcp::time::Instant;

pub use delay::Delay;
pub use duplicate::Duplicate;
pub use jitter::Jitter;
pub use loss::Loss;
pub use mtu::Mtu;
pub use partition::{Partition, PartitionSwitch};
pub use rate::RateLimit;

/// What a node does with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The packet leaves the node at this instant.
    Pass(Instant),
    /// Two copies leave the node, at these instants.
    Duplicate(Instant, Instant),
    /// The packet is gone.
    Drop(DropReason),
}

/// Why a node dropped a packet (counted in [`WireStats`](crate::WireStats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random loss.
    Loss,
    /// Larger than the path's MTU.
    TooBig,
    /// The link was cut.
    Partition,
    /// The queue in front of a slow link was full.
    QueueFull,
}

/// One fault of a path. See the module docs.
pub trait Node: fmt::Debug {
    /// Takes `packet` as it reaches this node at `now` and says what leaves.
    /// Random choices come from `rng`, the network's seeded generator.
    fn process(&mut self, packet: &Packet, now: Instant, rng: &mut SmallRng) -> Verdict;
}

/// A probability, clamped to 0.0..=1.0.
#[derive(Debug, Clone, Copy)]
struct Chance(f64);

impl Chance {
    fn new(p: f64) -> Chance {
        Chance(p.clamp(0.0, 1.0))
    }

    /// Draws whether it happens this time.
    fn happens(self, rng: &mut SmallRng) -> bool {
        rand::Rng::random_bool(rng, self.0)
    }
}

/// Nodes in the order a packet crosses them; an empty path delivers at once.
#[derive(Debug, Default)]
pub struct Path {
    nodes: Vec<Box<dyn Node>>,
}

impl Path {
    /// A path with no faults: packets arrive the instant they are sent.
    pub fn new() -> Path {
        Path::default()
    }

    /// This path followed by `node`.
    pub fn then(mut self, node: impl Node + 'static) -> Path {
        self.nodes.push(Box::new(node));
        self
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the path has no nodes (packets arrive the instant they are sent).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node at `hop`, if the path is that long.
    pub(crate) fn node_mut(&mut self, hop: usize) -> Option<&mut dyn Node> {
        Some(self.nodes.get_mut(hop)?.as_mut())
    }
}

/// Helpers for the nodes' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::Packet;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use smoltcp::time::Instant;

    /// A packet of `len` payload bytes from 10.0.0.1 to 10.0.0.2.
    pub fn packet(len: usize) -> Packet {
        Packet {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            ttl: 64,
            kind: sal::proto::TransmitKind::Own,
            payload: vec![0; len],
        }
    }

    pub fn rng() -> SmallRng {
        SmallRng::seed_from_u64(0x5eed)
    }

    pub fn ms(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }
}
