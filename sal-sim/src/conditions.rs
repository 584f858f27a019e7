//! The common case in one struct: the same faults on every link.

use smoltcp::time::Duration;

use crate::node::{Delay, Duplicate, Jitter, Loss, Mtu, Path};

/// Uniform conditions for every link of a network: a shorthand for the path
/// MTU -> loss -> duplication -> delay -> jitter, each node left out when
/// it would do nothing.
#[derive(Debug, Clone, Copy)]
pub struct LinkConditions {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// One-way delay of every packet.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per packet; reorders.
    pub jitter: Duration,
    /// Largest IPv4 packet carried (SAL packet + 20 bytes).
    pub mtu: usize,
}

impl Default for LinkConditions {
    fn default() -> Self {
        LinkConditions {
            loss: 0.0,
            duplicate: 0.0,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(0),
            mtu: 1500,
        }
    }
}

impl LinkConditions {
    /// The path these conditions describe.
    pub fn path(&self) -> Path {
        let mut path = Path::new().then(Mtu::new(self.mtu));
        if self.loss > 0.0 {
            path = path.then(Loss::new(self.loss));
        }
        if self.duplicate > 0.0 {
            path = path.then(Duplicate::new(self.duplicate));
        }
        if self.delay > Duration::ZERO {
            path = path.then(Delay::new(self.delay));
        }
        if self.jitter > Duration::ZERO {
            path = path.then(Jitter::new(self.jitter));
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_faults_are_left_out() {
        assert_eq!(LinkConditions::default().path().len(), 2, "MTU and delay");
        let lossy = LinkConditions {
            loss: 0.1,
            duplicate: 0.1,
            jitter: Duration::from_millis(1),
            ..Default::default()
        };
        assert_eq!(lossy.path().len(), 5);
    }
}
