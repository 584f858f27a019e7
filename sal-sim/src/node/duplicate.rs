//! Random duplication.

use crate::Packet;
use rand::rngs::SmallRng;
use smoltcp::time::Instant;

use super::{Chance, Node, Verdict};

/// Delivers each packet twice with probability `p` (the copies leave
/// together; a later [`Jitter`](super::Jitter) separates them).
#[derive(Debug, Clone, Copy)]
pub struct Duplicate(Chance);

impl Duplicate {
    /// A duplication rate of `p` (0.0 to 1.0; values outside are clamped).
    pub fn new(p: f64) -> Duplicate {
        Duplicate(Chance::new(p))
    }
}

impl Node for Duplicate {
    fn process(&mut self, _: &Packet, now: Instant, rng: &mut SmallRng) -> Verdict {
        if self.0.happens(rng) {
            Verdict::Duplicate(now, now)
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
    fn the_duplication_rate_is_close_to_p() {
        let mut duplicate = Duplicate::new(0.05);
        let mut rng = rng();
        let mut twice = 0;
        for _ in 0..10_000 {
            match duplicate.process(&packet(100), ms(3), &mut rng) {
                Verdict::Duplicate(a, b) => {
                    assert_eq!((a, b), (ms(3), ms(3)));
                    twice += 1;
                }
                verdict => assert_eq!(verdict, Verdict::Pass(ms(3))),
            }
        }
        // Binomial(10 000, 0.05): sd 22.
        assert!((370..=630).contains(&twice), "duplicated {twice}");
    }
}
