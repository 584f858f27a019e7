//! Weighted FORWARD sampling of the service table: shares follow the weights
//! of the highest-priority group, lower priorities are never chosen.

use std::net::Ipv4Addr;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use sal::table::{Resolution, ServiceTable, Target, TargetKey};
use sal::{Locator, ServiceId, ServicePrefix};

const DRAWS: u64 = 100_000;

fn locator(last: u8) -> Locator {
    Locator::Ipv4(Ipv4Addr::new(10, 0, 0, last))
}

fn forward(last: u8, weight: u32) -> Target {
    Target::Forward {
        locator: locator(last),
        weight,
    }
}

fn prefix(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

fn id(s: &str) -> ServiceId {
    s.parse().unwrap()
}

/// Outcome counts (`Resolution` is not `Hash`, and there are only a few).
#[derive(Debug, Default)]
struct Counts(Vec<(Resolution, u64)>);

impl Counts {
    fn add(&mut self, resolution: Resolution) {
        match self.0.iter_mut().find(|(r, _)| *r == resolution) {
            Some((_, n)) => *n += 1,
            None => self.0.push((resolution, 1)),
        }
    }

    fn get(&self, resolution: &Resolution) -> Option<&u64> {
        self.0.iter().find(|(r, _)| r == resolution).map(|(_, n)| n)
    }

    fn contains_key(&self, resolution: &Resolution) -> bool {
        self.get(resolution).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn values(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().map(|&(_, n)| n)
    }
}

/// Resolves `draws` times and counts the outcomes.
fn sample(table: &mut ServiceTable, id: &ServiceId, draws: u64, seed: u64) -> Counts {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut counts = Counts::default();
    for _ in 0..draws {
        counts.add(table.resolve(id, 100, &mut rng));
    }
    counts
}

/// A table with FORWARD weights 1, 2, 3, 4 at priority 10 and a heavy
/// lower-priority FORWARD target (and a DROP) at priority 5.
fn weighted_table() -> ServiceTable {
    let mut table = ServiceTable::new();
    let p = prefix("4001/16");
    for (last, weight) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
        assert!(table.add(p, forward(last, weight), 10));
    }
    assert!(table.add(p, forward(99, 1000), 5));
    assert!(table.add(p, Target::Drop, 5));
    table
}

#[test]
fn forward_shares_follow_weights() {
    // Several seeds, so that a lucky seed cannot hide a biased sampler.
    for seed in [1, 0xdead_beef, 42] {
        let mut table = weighted_table();
        let counts = sample(&mut table, &id("40010203"), DRAWS, seed);
        let n = DRAWS as f64;
        let mut chi_square = 0.0;
        for (last, weight) in [(1u8, 1.0f64), (2, 2.0), (3, 3.0), (4, 4.0)] {
            let observed = counts
                .get(&Resolution::Forward(locator(last)))
                .copied()
                .unwrap_or(0) as f64;
            let p = weight / 10.0;
            let expected = n * p;
            let sigma = (n * p * (1.0 - p)).sqrt();
            eprintln!(
                "seed {seed:#x}: target {last} weight {weight}: {observed} draws, \
                 expected {expected:.0} +- {sigma:.0} ({:+.2} sigma)",
                (observed - expected) / sigma
            );
            assert!(
                (observed - expected).abs() <= 5.0 * sigma,
                "seed {seed}: target {last}: {observed} draws, expected {expected} +- 5 * {sigma:.1}"
            );
            chi_square += (observed - expected).powi(2) / expected;
        }
        // 3 degrees of freedom; P(chi^2 > 22.46) = 5e-5.
        eprintln!("seed {seed:#x}: chi-square {chi_square:.2} (3 dof)");
        assert!(chi_square < 22.46, "seed {seed}: chi-square {chi_square}");

        // Nothing else was ever chosen: not the lower-priority FORWARD, not DROP.
        let chosen: u64 = counts.values().sum();
        assert_eq!(chosen, DRAWS);
        assert_eq!(counts.len(), 4, "unexpected outcomes: {counts:?}");
        assert!(!counts.contains_key(&Resolution::Forward(locator(99))));
        assert!(!counts.contains_key(&Resolution::Drop));

        // The per-target counters agree with what resolve returned.
        let rule = table.get(&prefix("4001/16")).unwrap();
        for entry in rule.targets() {
            let expected = match entry.target {
                Target::Forward { locator, .. } => counts
                    .get(&Resolution::Forward(locator))
                    .copied()
                    .unwrap_or(0),
                _ => 0,
            };
            assert_eq!(entry.counters.packets, expected, "{:?}", entry.target);
            assert_eq!(entry.counters.bytes, expected * 100);
        }
        let stats = table.stats();
        assert_eq!(stats.lookups, DRAWS);
        assert_eq!(stats.resolved.packets, DRAWS);
        assert_eq!(stats.dropped.packets, 0);
    }
}

#[test]
fn lower_priority_is_used_once_the_higher_group_is_gone() {
    let mut table = weighted_table();
    let p = prefix("4001/16");
    for last in 1..=4 {
        table
            .remove_target(
                &p,
                &TargetKey::Forward {
                    locator: locator(last),
                },
            )
            .unwrap();
    }
    // Priority 5 now holds FORWARD 99 and DROP: FORWARD wins within the group.
    let counts = sample(&mut table, &id("4001"), 1000, 7);
    assert_eq!(counts.get(&Resolution::Forward(locator(99))), Some(&1000));
}

#[test]
fn resolve_all_returns_the_active_group_only() {
    let mut table = weighted_table();
    let mut all = table.resolve_all(&id("4001"), 10);
    all.sort_by_key(|l| l.to_string());
    assert_eq!(all, (1..=4).map(locator).collect::<Vec<_>>());
}

#[test]
fn standby_targets_are_used_only_when_all_weights_are_zero() {
    let mut table = ServiceTable::new();
    let p = prefix("beef/16");
    table.add(p, forward(1, 0), 1);
    table.add(p, forward(2, 5), 1);
    let counts = sample(&mut table, &id("beef"), 10_000, 3);
    assert_eq!(counts.get(&Resolution::Forward(locator(2))), Some(&10_000));

    // Both standby: uniform between them.
    table.add(p, forward(2, 0), 1);
    let n = 20_000u64;
    let counts = sample(&mut table, &id("beef"), n, 4);
    let sigma = (n as f64 * 0.25).sqrt();
    for last in [1, 2] {
        let observed = *counts.get(&Resolution::Forward(locator(last))).unwrap() as f64;
        assert!(
            (observed - n as f64 / 2.0).abs() <= 5.0 * sigma,
            "standby {last}: {observed} of {n}"
        );
    }
}

#[test]
fn longest_prefix_rule_decides_the_group() {
    let mut table = weighted_table();
    // A more specific rule with a single target takes every matching ID.
    table.add(prefix("40010203"), forward(50, 1), 0);
    let counts = sample(&mut table, &id("40010203"), 1000, 9);
    assert_eq!(counts.get(&Resolution::Forward(locator(50))), Some(&1000));
    // IDs outside it still sample the /16 rule.
    let counts = sample(&mut table, &id("40010204"), 1000, 9);
    assert!(!counts.contains_key(&Resolution::Forward(locator(50))));
    assert_eq!(counts.values().sum::<u64>(), 1000);
    // And IDs outside the /16 match nothing.
    let counts = sample(&mut table, &id("4002"), 10, 9);
    assert_eq!(counts.get(&Resolution::NoMatch), Some(&10));
}
