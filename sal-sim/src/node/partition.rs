//! A cut link: every packet is dropped during set intervals, or while a
//! test holds a switch open.

use std::cell::Cell;
use std::rc::Rc;

use crate::Packet;
use rand::rngs::SmallRng;
use smoltcp::time::Instant;

use super::{DropReason, Node, Verdict};

/// A handle that cuts and heals every [`Partition`] made with it, so one
/// switch can cut both directions of a link at once. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct PartitionSwitch(Rc<Cell<bool>>);

impl PartitionSwitch {
    /// A switch with the link up.
    pub fn new() -> PartitionSwitch {
        PartitionSwitch::default()
    }

    /// Cuts the link until [`PartitionSwitch::heal`].
    pub fn cut(&self) {
        self.0.set(true);
    }

    /// Lets packets through again, except during a partition's own
    /// intervals.
    pub fn heal(&self) {
        self.0.set(false);
    }

    /// Whether the switch is cut now (a partition's intervals aside).
    pub fn is_cut(&self) -> bool {
        self.0.get()
    }
}

/// Drops every packet while the link is cut. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Partition {
    /// Cut from the first instant (inclusive) to the second (exclusive).
    intervals: Vec<(Instant, Instant)>,
    switch: Option<PartitionSwitch>,
}

impl Partition {
    /// Cut from `start` (inclusive) to `end` (exclusive).
    pub fn during(start: Instant, end: Instant) -> Partition {
        Partition {
            intervals: vec![(start, end)],
            switch: None,
        }
    }

    /// Cut whenever `switch` is.
    pub fn switched(switch: &PartitionSwitch) -> Partition {
        Partition {
            intervals: Vec::new(),
            switch: Some(switch.clone()),
        }
    }

    /// This partition, also cut from `start` to `end`.
    pub fn and_during(mut self, start: Instant, end: Instant) -> Partition {
        self.intervals.push((start, end));
        self
    }

    fn is_cut(&self, now: Instant) -> bool {
        self.switch.as_ref().is_some_and(PartitionSwitch::is_cut)
            || self
                .intervals
                .iter()
                .any(|&(start, end)| start <= now && now < end)
    }
}

impl Node for Partition {
    fn process(&mut self, _: &Packet, now: Instant, _: &mut SmallRng) -> Verdict {
        if self.is_cut(now) {
            Verdict::Drop(DropReason::Partition)
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
    fn drops_only_during_its_interval() {
        let mut partition = Partition::during(ms(100), ms(200)).and_during(ms(500), ms(501));
        let mut rng = rng();
        for t in 0..1000 {
            let cut = (100..200).contains(&t) || t == 500;
            let expected = if cut {
                Verdict::Drop(DropReason::Partition)
            } else {
                Verdict::Pass(ms(t))
            };
            assert_eq!(
                partition.process(&packet(10), ms(t), &mut rng),
                expected,
                "at {t} ms"
            );
        }
    }

    #[test]
    fn a_switch_cuts_every_partition_made_with_it_until_healed() {
        let switch = PartitionSwitch::new();
        let mut there = Partition::switched(&switch);
        let mut back = Partition::switched(&switch);
        let mut rng = rng();
        assert_eq!(
            there.process(&packet(1), ms(1), &mut rng),
            Verdict::Pass(ms(1))
        );
        switch.cut();
        for node in [&mut there, &mut back] {
            assert_eq!(
                node.process(&packet(1), ms(2), &mut rng),
                Verdict::Drop(DropReason::Partition)
            );
        }
        switch.heal();
        assert_eq!(
            back.process(&packet(1), ms(3), &mut rng),
            Verdict::Pass(ms(3))
        );
    }
}
