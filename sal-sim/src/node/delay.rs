//! A fixed one-way delay: propagation.

use crate::Packet;
use rand::rngs::SmallRng;
use smoltcp::time::{Duration, Instant};

use super::{Node, Verdict};

/// Delays every packet by the same amount; keeps their order.
#[derive(Debug, Clone, Copy)]
pub struct Delay(Duration);

impl Delay {
    /// Every packet leaves `delay` after it arrives.
    pub fn new(delay: Duration) -> Delay {
        Delay(delay)
    }
}

impl Node for Delay {
    fn process(&mut self, _: &Packet, now: Instant, _: &mut SmallRng) -> Verdict {
        Verdict::Pass(now + self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ms, packet, rng};
    use super::*;

    #[test]
    fn every_packet_is_late_by_the_delay() {
        let mut delay = Delay::new(Duration::from_millis(7));
        for t in [0, 3, 1000] {
            assert_eq!(
                delay.process(&packet(100), ms(t), &mut rng()),
                Verdict::Pass(ms(t + 7))
            );
        }
    }
}
