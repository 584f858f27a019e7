//! Random extra delay per packet, which reorders packets sent close together.

use crate::Packet;
use rand::rngs::SmallRng;
use rand::Rng;
use smoltcp::time::{Duration, Instant};

use super::{Node, Verdict};

/// Delays each packet by an amount drawn uniformly from `0..=max`.
#[derive(Debug, Clone, Copy)]
pub struct Jitter(Duration);

impl Jitter {
    /// Each packet is held for a uniform random time of at most `max`.
    pub fn new(max: Duration) -> Jitter {
        Jitter(max)
    }
}

impl Node for Jitter {
    fn process(&mut self, _: &Packet, now: Instant, rng: &mut SmallRng) -> Verdict {
        let extra = rng.random_range(0..=self.0.total_micros());
        Verdict::Pass(now + Duration::from_micros(extra))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{packet, rng};
    use super::*;

    #[test]
    fn packets_are_reordered_within_the_bound() {
        let mut jitter = Jitter::new(Duration::from_millis(2));
        let mut rng = rng();
        // A packet every 100 us for 1000 packets.
        let leave: Vec<Instant> = (0..1000)
            .map(|i| {
                let sent = Instant::from_micros(i * 100);
                let Verdict::Pass(at) = jitter.process(&packet(100), sent, &mut rng) else {
                    panic!("jitter never drops");
                };
                assert!(at >= sent && at <= sent + Duration::from_millis(2));
                at
            })
            .collect();
        let overtaken = leave.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(overtaken > 300, "only {overtaken} of 999 pairs reordered");
    }
}
