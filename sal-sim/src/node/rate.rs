//! A slow link with a queue in front: bandwidth and bufferbloat.
//!
//! Packets are serialized one after another at the link's rate; a packet
//! leaves once its last byte is on the wire. Those waiting are held in a
//! queue of bounded size, and a packet that does not fit is dropped (tail
//! drop), which is how a congested router tells TCP to slow down.

use crate::Packet;
use rand::rngs::SmallRng;
use sal::wire::IPV4_HEADER_LEN;
use smoltcp::time::{Duration, Instant};

use super::{DropReason, Node, Verdict};

const MICROS_PER_SECOND: u128 = 1_000_000;

/// A link of `rate` bytes per second behind a queue of `queue` bytes.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    rate: u64,
    queue: usize,
    /// When the link finishes sending what it has taken so far.
    busy_until: Option<Instant>,
    /// Serialization time below the microsecond clock, in 1/`rate`
    /// microseconds, carried so that rounding does not add up.
    carry: u128,
}

impl RateLimit {
    /// A link of `rate` bytes per second (IPv4 bytes: SAL packet + 20)
    /// whose queue holds `queue` bytes, the packet being sent included.
    /// A queue smaller than a packet drops that packet.
    pub fn new(rate: u64, queue: usize) -> RateLimit {
        RateLimit {
            rate: rate.max(1),
            queue,
            busy_until: None,
            carry: 0,
        }
    }

    /// Bytes still to be serialized at `now`.
    fn backlog(&self, now: Instant) -> u64 {
        let Some(busy_until) = self.busy_until.filter(|&b| b > now) else {
            return 0;
        };
        let waiting = (busy_until - now).total_micros();
        (u128::from(waiting) * u128::from(self.rate) / 1_000_000) as u64
    }
}

impl Node for RateLimit {
    fn process(&mut self, packet: &Packet, now: Instant, _: &mut SmallRng) -> Verdict {
        let size = packet.payload.len() + IPV4_HEADER_LEN;
        if self.backlog(now) + size as u64 > self.queue as u64 {
            return Verdict::Drop(DropReason::QueueFull);
        }
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let scaled = size as u128 * MICROS_PER_SECOND + self.carry;
        self.carry = scaled % u128::from(self.rate);
        let micros = u64::try_from(scaled / u128::from(self.rate)).unwrap_or(u64::MAX / 2);
        let done = start + Duration::from_micros(micros);
        self.busy_until = Some(done);
        Verdict::Pass(done)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ms, packet, rng};
    use super::*;

    #[test]
    fn a_burst_leaves_spaced_by_the_rate() {
        // 1 MB/s: a 1000-byte packet takes 1 ms on the wire.
        let mut link = RateLimit::new(1_000_000, 100_000);
        let mut rng = rng();
        let leave: Vec<Instant> = (0..10)
            .map(|_| match link.process(&packet(980), ms(0), &mut rng) {
                Verdict::Pass(at) => at,
                verdict => panic!("{verdict:?}"),
            })
            .collect();
        let expected: Vec<Instant> = (1..=10).map(ms).collect();
        assert_eq!(leave, expected);
        // Once the link is idle again, a packet waits only for itself.
        assert_eq!(
            link.process(&packet(980), ms(50), &mut rng),
            Verdict::Pass(ms(51))
        );
    }

    #[test]
    fn a_full_queue_drops_the_tail() {
        // Room for three 1000-byte packets.
        let mut link = RateLimit::new(1_000_000, 3000);
        let mut rng = rng();
        let verdicts: Vec<Verdict> = (0..5)
            .map(|_| link.process(&packet(980), ms(0), &mut rng))
            .collect();
        assert_eq!(&verdicts[..3], [1, 2, 3].map(|t| Verdict::Pass(ms(t))));
        assert_eq!(&verdicts[3..], [Verdict::Drop(DropReason::QueueFull); 2]);
        // After one packet left there is room for one more.
        assert_eq!(
            link.process(&packet(980), ms(1), &mut rng),
            Verdict::Pass(ms(4))
        );
        assert_eq!(
            link.process(&packet(980), ms(1), &mut rng),
            Verdict::Drop(DropReason::QueueFull)
        );
    }

    #[test]
    fn sub_microsecond_times_do_not_drift() {
        // 3 MB/s: 1000 bytes take 333.33 us; 3000 packets take exactly 1 s.
        let mut link = RateLimit::new(3_000_000, usize::MAX);
        let mut rng = rng();
        let mut last = ms(0);
        for _ in 0..3000 {
            if let Verdict::Pass(at) = link.process(&packet(980), ms(0), &mut rng) {
                last = at;
            }
        }
        assert_eq!(last, ms(1000));
    }
}
