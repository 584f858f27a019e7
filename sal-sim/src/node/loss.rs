//! Random loss.

use crate::Packet;
use rand::rngs::SmallRng;
use smoltcp::time::Instant;

use super::{Chance, DropReason, Node, Verdict};

/// Drops each packet independently with probability `p`.
#[derive(Debug, Clone, Copy)]
pub struct Loss(Chance);

impl Loss {
    /// A loss of `p` (0.0 to 1.0; values outside are clamped).
    pub fn new(p: f64) -> Loss {
        Loss(Chance::new(p))
    }
}

impl Node for Loss {
    fn process(&mut self, _: &Packet, now: Instant, rng: &mut SmallRng) -> Verdict {
        if self.0.happens(rng) {
            Verdict::Drop(DropReason::Loss)
        } else {
            Verdict::Pass(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ms, packet, rng};
    use super::*;

    #[test]
    fn the_drop_rate_is_close_to_p() {
        let mut loss = Loss::new(0.1);
        let mut rng = rng();
        let dropped = (0..10_000)
            .filter(|_| loss.process(&packet(100), ms(0), &mut rng) != Verdict::Pass(ms(0)))
            .count();
        // Binomial(10 000, 0.1): sd 30; this is six and a half of them.
        assert!((800..=1200).contains(&dropped), "dropped {dropped}");
    }

    #[test]
    fn no_loss_and_total_loss_are_exact() {
        let mut rng = rng();
        let mut none = Loss::new(0.0);
        let mut all = Loss::new(2.0);
        for _ in 0..1000 {
            assert_eq!(
                none.process(&packet(1), ms(5), &mut rng),
                Verdict::Pass(ms(5))
            );
            assert_eq!(
                all.process(&packet(1), ms(5), &mut rng),
                Verdict::Drop(DropReason::Loss)
            );
        }
    }
}
