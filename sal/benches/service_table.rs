//! Service table benchmark: longest-prefix-match lookups, inserts and memory of
//! [`PrefixTrie`] and [`ServiceTable`], next to same-run baselines.
//!
//! Run with `cargo bench -p sal --bench service_table`; set `SAL_BENCH_QUICK=1`
//! for a smoke run (N = 1 000 and 100 000, fewer lookups), and `SAL_BENCH_N`
//! to measure a single N.
//!
//! For each N the program builds, from one seeded [`SmallRng`]:
//!
//! - N random 256-bit prefixes, lengths uniform over 8..=256, stored in our
//!   [`PrefixTrie<u32>`], in a [`ServiceTable`] (one FORWARD target per rule),
//!   and in a plain 1-bit binary trie (one node per bit, the structure the
//!   original Serval used; see [`BitTrie`]);
//! - N random IPv6 prefixes, lengths uniform over 8..=128, stored in the two
//!   IPv6 baselines: `prefix_trie::PrefixMap` (`get_lpm`) and
//!   `ip_network_table_deps_treebitmap::IpLookupTable` (`longest_match`).
//!
//! Lookups use random keys (256-bit, or 128-bit for IPv6) generated before the
//! timed loop. Lookups are timed in [`BATCHES`] rounds of one batch per
//! structure, and every figure is a median over rounds; ratios are medians of
//! per-round ratios. On a shared machine, load from elsewhere then hits all
//! structures alike instead of whichever ran at the time. Following
//! DESIGN.md "Performance method", every figure is printed next to its
//! baselines of the same run, with ratios, and the targets are checked at the
//! largest N.

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv6Net;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sal::table::{PrefixTrie, ServiceTable, Target};
use sal::{Locator, ServiceId, ServicePrefix};

/// Seed of every random draw: runs are reproducible.
const SEED: u64 = 0x5e7a_1b3e_0c4f_11e5;
/// Lookups are timed in this many rounds; figures are medians over them.
const BATCHES: usize = 5;
/// The 1-bit trie is built only if its arena bound fits in this many bytes.
const BIT_TRIE_MEMORY_LIMIT: usize = 4 << 30;

/// Targets checked at N = 1 000 000.
const TARGET_N: usize = 1_000_000;
const TARGET_LOOKUPS_PER_SEC: f64 = 5e6;
const TARGET_VS_IPV6: f64 = 0.5;
const TARGET_VS_BIT_TRIE: f64 = 10.0;

/// How much work one run does.
struct Config {
    sizes: Vec<usize>,
    /// Lookups per structure, split evenly over [`BATCHES`] rounds.
    lookups: usize,
    /// Distinct pre-generated keys, cycled through by the lookup loop.
    keys: usize,
    quick: bool,
}

impl Config {
    fn from_env() -> Config {
        let quick = std::env::var("SAL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut config = if quick {
            Config {
                sizes: vec![1_000, 100_000],
                lookups: 1_000_000,
                keys: 100_000,
                quick,
            }
        } else {
            Config {
                sizes: vec![1_000, 100_000, 1_000_000],
                lookups: 10_000_000,
                keys: 1_000_000,
                quick,
            }
        };
        // For experiments: a single N, e.g. SAL_BENCH_N=1000000.
        if let Some(n) = std::env::var("SAL_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config.sizes = vec![n];
        }
        config
    }
}

/// A plain binary trie over 256-bit keys: one node per bit, no compression.
///
/// This is the structure of the original Serval service table. Nodes live in
/// one arena with `u32` child indices, 12 bytes each, so a million random
/// prefixes (about 115 million nodes, 1.4 GB) fit in memory.
struct BitTrie {
    nodes: Vec<BitNode>,
}

/// One bit of a [`BitTrie`]: child by next bit (0 = none; the root, index 0,
/// is nobody's child) and the value of the prefix ending here.
#[derive(Clone, Copy)]
struct BitNode {
    child: [u32; 2],
    /// [`BitNode::NO_VALUE`] when no prefix ends here.
    value: u32,
}

impl BitNode {
    const NO_VALUE: u32 = u32::MAX;
    const EMPTY: BitNode = BitNode {
        child: [0; 2],
        value: BitNode::NO_VALUE,
    };
}

impl BitTrie {
    /// An empty trie with room for `nodes` nodes.
    fn with_capacity(nodes: usize) -> BitTrie {
        let mut trie = BitTrie {
            nodes: Vec::with_capacity(nodes.max(1)),
        };
        trie.nodes.push(BitNode::EMPTY);
        trie
    }

    /// Upper bound of the nodes `prefixes` need: one per bit plus the root.
    fn node_bound(prefixes: &[ServicePrefix]) -> usize {
        1 + prefixes.iter().map(|p| usize::from(p.len())).sum::<usize>()
    }

    fn bit(bytes: &[u8; 32], index: usize) -> usize {
        usize::from(bytes[index / 8] >> (7 - index % 8) & 1)
    }

    fn insert(&mut self, prefix: &ServicePrefix, value: u32) {
        let bytes = prefix.id().as_bytes();
        let mut node = 0usize;
        for index in 0..usize::from(prefix.len()) {
            let bit = BitTrie::bit(bytes, index);
            let next = self.nodes[node].child[bit];
            node = if next == 0 {
                let new = u32::try_from(self.nodes.len()).expect("1-bit trie under 2^32 nodes");
                self.nodes.push(BitNode::EMPTY);
                self.nodes[node].child[bit] = new;
                new as usize
            } else {
                next as usize
            };
        }
        self.nodes[node].value = value;
    }

    fn longest_match(&self, key: &ServiceId) -> Option<u32> {
        let bytes = key.as_bytes();
        let mut node = &self.nodes[0];
        let mut best = None;
        for index in 0..256 {
            if node.value != BitNode::NO_VALUE {
                best = Some(node.value);
            }
            match node.child[BitTrie::bit(bytes, index)] {
                0 => return best,
                next => node = &self.nodes[next as usize],
            }
        }
        if node.value != BitNode::NO_VALUE {
            best = Some(node.value);
        }
        best
    }

    fn memory_bytes(&self) -> usize {
        self.nodes.len() * std::mem::size_of::<BitNode>()
    }
}

/// Figures of one structure at one N.
#[derive(Default, Clone)]
struct Figures {
    /// Lookup rate of each round (see [`bench_size`]).
    lookup_rates: Vec<f64>,
    inserts_per_sec: f64,
    bytes_per_rule: Option<f64>,
    nodes: Option<usize>,
    /// Why a structure was not measured, if it was not.
    skipped: Option<String>,
}

impl Figures {
    fn lookups_per_sec(&self) -> f64 {
        median(self.lookup_rates.clone())
    }

    /// Median over rounds of this structure's rate over `other`'s in the same
    /// round: noise from the rest of the machine mostly cancels out.
    fn ratio_to(&self, other: &Figures) -> f64 {
        let ratios = self.lookup_rates.iter().zip(&other.lookup_rates);
        median(ratios.map(|(a, b)| a / b).collect())
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// All figures at one N.
struct Results {
    n: usize,
    rules: usize,
    ours: Figures,
    table: Figures,
    prefix_trie: Figures,
    treebitmap: Figures,
    bit_trie: Figures,
    /// N the 1-bit trie was measured at, if smaller than `n`.
    bit_trie_n: Option<usize>,
}

impl Results {
    /// The faster of the two IPv6 baselines, by median lookup rate.
    fn faster_ipv6(&self) -> (&'static str, &Figures) {
        if self.treebitmap.lookups_per_sec() >= self.prefix_trie.lookups_per_sec() {
            ("treebitmap", &self.treebitmap)
        } else {
            ("prefix-trie", &self.prefix_trie)
        }
    }

    fn vs_ipv6(&self) -> f64 {
        self.ours.ratio_to(self.faster_ipv6().1)
    }

    fn vs_bit_trie(&self) -> Option<f64> {
        (self.bit_trie.skipped.is_none()).then(|| self.ours.ratio_to(&self.bit_trie))
    }
}

/// Random 256-bit prefixes with lengths uniform over 8..=256.
fn random_service_prefixes(rng: &mut SmallRng, n: usize) -> Vec<ServicePrefix> {
    (0..n)
        .map(|_| ServicePrefix::new(random_service_id(rng), rng.random_range(8..=256)))
        .collect()
}

fn random_service_id(rng: &mut SmallRng) -> ServiceId {
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.random::<u64>().to_be_bytes());
    }
    ServiceId::from_bytes(bytes)
}

/// Random IPv6 prefixes (host bits cleared) with lengths uniform over 8..=128.
fn random_ipv6_prefixes(rng: &mut SmallRng, n: usize) -> Vec<Ipv6Net> {
    (0..n)
        .map(|_| {
            let addr = Ipv6Addr::from(rng.random::<u128>());
            Ipv6Net::new(addr, rng.random_range(8..=128))
                .expect("length at most 128")
                .trunc()
        })
        .collect()
}

/// Times `count` calls of `lookup` on keys from `keys[start..]` (wrapping
/// around) and returns the rate in lookups per second. `lookup` returns
/// something derived from its result so that it cannot be optimised away.
fn time_lookups<K>(
    keys: &[K],
    start: usize,
    count: usize,
    lookup: &mut impl FnMut(&K) -> u64,
) -> f64 {
    let mut sink = 0u64;
    let mut i = start % keys.len();
    let started = Instant::now();
    for _ in 0..count {
        sink = sink.wrapping_add(lookup(black_box(&keys[i])));
        i += 1;
        if i == keys.len() {
            i = 0;
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    black_box(sink);
    rate
}

/// Runs `build` once and returns its result and the insert rate for `n` prefixes.
fn measure_build<T>(n: usize, build: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let built = black_box(build());
    (built, n as f64 / start.elapsed().as_secs_f64())
}

/// Builds every structure for N prefixes, timing the inserts, then measures
/// lookups in [`BATCHES`] rounds; each round runs one batch on every structure
/// in turn, so that all of them see the same machine load, and the ratios are
/// taken round by round.
fn bench_size(config: &Config, n: usize, seed: u64) -> Results {
    let mut rng = SmallRng::seed_from_u64(seed);
    let prefixes = random_service_prefixes(&mut rng, n);
    let keys: Vec<ServiceId> = (0..config.keys)
        .map(|_| random_service_id(&mut rng))
        .collect();
    let v6_prefixes = random_ipv6_prefixes(&mut rng, n);
    let v6_keys: Vec<Ipv6Addr> = (0..config.keys)
        .map(|_| Ipv6Addr::from(rng.random::<u128>()))
        .collect();

    let (trie, insert_rate) = measure_build(n, || {
        let mut trie = PrefixTrie::new();
        for (value, prefix) in (0u32..).zip(&prefixes) {
            trie.insert(prefix, value);
        }
        trie
    });
    let rules = trie.len();
    let mut ours = Figures {
        inserts_per_sec: insert_rate,
        bytes_per_rule: Some(trie.memory_bytes() as f64 / rules as f64),
        nodes: Some(trie.node_count()),
        ..Figures::default()
    };

    let (table, table_insert_rate) = measure_build(n, || {
        let mut table = ServiceTable::new();
        for (i, prefix) in (0u32..).zip(&prefixes) {
            let locator = Locator::Ipv4(i.into());
            table.add(*prefix, Target::Forward { locator, weight: 1 }, 0);
        }
        table
    });
    let mut table_figures = Figures {
        inserts_per_sec: table_insert_rate,
        bytes_per_rule: Some(table.memory_bytes() as f64 / table.len() as f64),
        ..Figures::default()
    };

    let (prefix_map, pm_insert_rate) = measure_build(n, || {
        let mut map = prefix_trie::PrefixMap::<Ipv6Net, u32>::new();
        for (value, prefix) in (0u32..).zip(&v6_prefixes) {
            map.insert(*prefix, value);
        }
        map
    });
    let mut prefix_trie_figures = Figures {
        inserts_per_sec: pm_insert_rate,
        ..Figures::default()
    };

    let (tbm, tbm_insert_rate) = measure_build(n, || {
        let mut table = ip_network_table_deps_treebitmap::IpLookupTable::<Ipv6Addr, u32>::new();
        for (value, prefix) in (0u32..).zip(&v6_prefixes) {
            table.insert(prefix.addr(), u32::from(prefix.prefix_len()), value);
        }
        table
    });
    let (tbm_nodes, tbm_results) = tbm.mem_usage();
    let mut treebitmap_figures = Figures {
        inserts_per_sec: tbm_insert_rate,
        bytes_per_rule: Some((tbm_nodes + tbm_results) as f64 / tbm.len() as f64),
        ..Figures::default()
    };

    // The 1-bit trie, at the largest prefix count (a prefix of the same random
    // set) whose arena bound fits the memory limit.
    let node_size = std::mem::size_of::<BitNode>();
    let mut bit_n = n;
    while bit_n > 0 && BitTrie::node_bound(&prefixes[..bit_n]) * node_size > BIT_TRIE_MEMORY_LIMIT {
        bit_n /= 10;
    }
    let mut bit_trie_figures = Figures::default();
    let bits = if bit_n == 0 {
        bit_trie_figures.skipped = Some("does not fit in 4 GiB".into());
        None
    } else {
        let bit_prefixes = &prefixes[..bit_n];
        let (bits, bit_insert_rate) = measure_build(bit_n, || {
            let mut bits = BitTrie::with_capacity(BitTrie::node_bound(bit_prefixes));
            for (value, prefix) in (0u32..).zip(bit_prefixes) {
                bits.insert(prefix, value);
            }
            bits
        });
        if bit_n == n {
            check_against_bit_trie(&trie, &bits, &keys, bit_prefixes);
        }
        bit_trie_figures.inserts_per_sec = bit_insert_rate;
        bit_trie_figures.bytes_per_rule =
            Some(bits.memory_bytes() as f64 / bit_n.min(rules) as f64);
        bit_trie_figures.nodes = Some(bits.nodes.len());
        Some(bits)
    };

    let mut ours_lookup = |key: &ServiceId| {
        trie.longest_match(key)
            .map_or(0, |(len, &v)| u64::from(v) + u64::from(len))
    };
    let mut table_lookup = |key: &ServiceId| {
        table
            .longest_match(key)
            .map_or(0, |rule| u64::from(rule.prefix.len()))
    };
    let mut prefix_trie_lookup = |&key: &Ipv6Addr| {
        let host = Ipv6Net::new(key, 128).expect("/128");
        prefix_map.get_lpm(&host).map_or(0, |(_, &v)| u64::from(v))
    };
    let mut treebitmap_lookup = |&key: &Ipv6Addr| {
        tbm.longest_match(key)
            .map_or(0, |(_, len, &v)| u64::from(v) + u64::from(len))
    };
    let mut bit_trie_lookup = |key: &ServiceId| {
        bits.as_ref()
            .map_or(0, |b| b.longest_match(key).map_or(0, u64::from))
    };

    // Round 0 warms caches and branch predictors on a tenth of a batch and
    // is not recorded.
    let per_batch = (config.lookups / BATCHES).max(1);
    for round in 0..=BATCHES {
        let (start, count) = match round {
            0 => (0, per_batch / 10),
            _ => (round * per_batch, per_batch),
        };
        let rates = [
            time_lookups(&keys, start, count, &mut ours_lookup),
            time_lookups(&keys, start, count, &mut table_lookup),
            time_lookups(&v6_keys, start, count, &mut prefix_trie_lookup),
            time_lookups(&v6_keys, start, count, &mut treebitmap_lookup),
            match bits {
                Some(_) => time_lookups(&keys, start, count, &mut bit_trie_lookup),
                None => f64::NAN,
            },
        ];
        if round > 0 {
            let figures = [
                &mut ours,
                &mut table_figures,
                &mut prefix_trie_figures,
                &mut treebitmap_figures,
                &mut bit_trie_figures,
            ];
            for (figures, rate) in figures.into_iter().zip(rates) {
                figures.lookup_rates.push(rate);
            }
        }
    }

    Results {
        n,
        rules,
        ours,
        table: table_figures,
        prefix_trie: prefix_trie_figures,
        treebitmap: treebitmap_figures,
        bit_trie: bit_trie_figures,
        bit_trie_n: (bit_n < n && bit_n > 0).then_some(bit_n),
    }
}

/// Checks that our trie and the 1-bit trie, built from the same prefixes,
/// agree on a sample of random keys and of keys under stored prefixes. (A
/// duplicate prefix keeps the last value in both.)
fn check_against_bit_trie(
    trie: &PrefixTrie<u32>,
    bits: &BitTrie,
    keys: &[ServiceId],
    prefixes: &[ServicePrefix],
) {
    let under_prefixes = prefixes.iter().take(10_000).map(|p| *p.id());
    for key in keys.iter().take(10_000).copied().chain(under_prefixes) {
        let ours = trie.longest_match(&key).map(|(_, &v)| v);
        let theirs = bits.longest_match(&key);
        assert_eq!(ours, theirs, "tries disagree on {key}");
    }
}

fn main() {
    let config = Config::from_env();
    let started = Instant::now();
    println!(
        "service_table bench{}: random prefixes (256-bit: /8../256; IPv6: /8../128), \
         random keys, {} lookups per structure in {BATCHES} interleaved rounds (medians), \
         {} distinct keys",
        if config.quick {
            " (SAL_BENCH_QUICK)"
        } else {
            ""
        },
        config.lookups,
        config.keys,
    );
    let results: Vec<Results> = config
        .sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let size_started = Instant::now();
            let results = bench_size(&config, n, SEED + i as u64);
            print_results(&results, size_started.elapsed());
            results
        })
        .collect();
    print_targets(&config, results.last().expect("at least one size"));
    println!(
        "\ntotal bench time {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn print_results(r: &Results, elapsed: Duration) {
    println!(
        "\nN = {} ({} distinct 256-bit rules), measured in {:.1} s",
        r.n,
        r.rules,
        elapsed.as_secs_f64()
    );
    println!(
        "  {:<36} {:>12} {:>10} {:>12} {:>11} {:>11}",
        "structure", "lookups/s", "ns/lookup", "inserts/s", "bytes/rule", "nodes"
    );
    let bit_name = match r.bit_trie_n {
        Some(n) => format!("1-bit trie, 256-bit (N = {n})"),
        None => "1-bit trie, 256-bit (Serval)".to_string(),
    };
    let rows: [(&str, &Figures); 5] = [
        ("ours: PrefixTrie<u32>, 256-bit", &r.ours),
        ("ours: ServiceTable::longest_match", &r.table),
        ("IPv6 prefix-trie 0.10 PrefixMap", &r.prefix_trie),
        ("IPv6 treebitmap 0.5 IpLookupTable", &r.treebitmap),
        (&bit_name, &r.bit_trie),
    ];
    for (name, f) in rows {
        if let Some(why) = &f.skipped {
            println!("  {name:<36} not measured: {why}");
            continue;
        }
        let opt = |v: Option<String>| v.unwrap_or_else(|| "n/a".into());
        println!(
            "  {:<36} {:>12} {:>10.1} {:>12} {:>11} {:>11}",
            name,
            format_rate(f.lookups_per_sec()),
            1e9 / f.lookups_per_sec(),
            format_rate(f.inserts_per_sec),
            opt(f.bytes_per_rule.map(|b| format!("{b:.1}"))),
            opt(f.nodes.map(|n| n.to_string())),
        );
    }
    let (faster, _) = r.faster_ipv6();
    println!(
        "  lookups ratio ours / faster IPv6 baseline ({faster}) = {:.2}x",
        r.vs_ipv6()
    );
    match r.vs_bit_trie() {
        Some(ratio) => println!("  lookups ratio ours / 1-bit trie = {ratio:.1}x"),
        None => println!("  lookups ratio ours / 1-bit trie: not measured"),
    }
}

fn print_targets(config: &Config, r: &Results) {
    println!("\ntargets at N = {}:", r.n);
    if r.n != TARGET_N {
        println!(
            "  (the targets apply at N = {TARGET_N}; {} run, shown for information)",
            if config.quick { "quick" } else { "partial" }
        );
    }
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    let lookups = r.ours.lookups_per_sec();
    println!(
        "  ours lookups/s                  {:>10}   target >= {:>6}   {}",
        format_rate(lookups),
        format_rate(TARGET_LOOKUPS_PER_SEC),
        met(lookups >= TARGET_LOOKUPS_PER_SEC)
    );
    let vs_ipv6 = r.vs_ipv6();
    println!(
        "  ours / faster IPv6 baseline     {:>9.2}x   target >= {:>5.1}x   {}",
        vs_ipv6,
        TARGET_VS_IPV6,
        met(vs_ipv6 >= TARGET_VS_IPV6)
    );
    match r.vs_bit_trie() {
        Some(ratio) => {
            let note = r
                .bit_trie_n
                .map(|n| format!(" (1-bit trie at N = {n})"))
                .unwrap_or_default();
            println!(
                "  ours / 1-bit trie               {:>9.1}x   target >= {:>5.1}x   {}{}",
                ratio,
                TARGET_VS_BIT_TRIE,
                met(ratio >= TARGET_VS_BIT_TRIE),
                note
            );
        }
        None => println!("  ours / 1-bit trie               not measured (does not fit in memory)"),
    }
}

/// `12.3M`-style rendering of a rate.
fn format_rate(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}
