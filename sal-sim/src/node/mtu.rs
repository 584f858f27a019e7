//! A path MTU: packets larger than the link carries are dropped, as a
//! router with the don't-fragment bit would.

use crate::Packet;
use rand::rngs::SmallRng;
use sal::wire::IPV4_HEADER_LEN;
use smoltcp::time::Instant;

use super::{DropReason, Node, Verdict};

/// Drops packets whose IPv4 size (SAL packet + 20 bytes) exceeds the MTU.
#[derive(Debug, Clone, Copy)]
pub struct Mtu(usize);

impl Mtu {
    /// Passes IPv4 packets of up to `mtu` bytes (header included).
    pub fn new(mtu: usize) -> Mtu {
        Mtu(mtu)
    }
}

impl Node for Mtu {
    fn process(&mut self, packet: &Packet, now: Instant, _: &mut SmallRng) -> Verdict {
        if packet.payload.len() + IPV4_HEADER_LEN > self.0 {
            Verdict::Drop(DropReason::TooBig)
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
    fn only_oversized_packets_are_dropped() {
        let mut mtu = Mtu::new(1500);
        let mut rng = rng();
        assert_eq!(
            mtu.process(&packet(1480), ms(1), &mut rng),
            Verdict::Pass(ms(1))
        );
        assert_eq!(
            mtu.process(&packet(1481), ms(1), &mut rng),
            Verdict::Drop(DropReason::TooBig)
        );
        assert_eq!(
            mtu.process(&packet(0), ms(1), &mut rng),
            Verdict::Pass(ms(1))
        );
    }
}
