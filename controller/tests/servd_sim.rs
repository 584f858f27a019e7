//! servd's controllers in-process: several `Controller`s joined by a
//! simulated UDP network, each with a fake sald (a real `ServiceTable` that
//! applies the controller's rule changes), driven by a virtual clock.
//!
//! Covers: announcement to reachability, refresh, lease expiry, withdrawal,
//! resync after a router restart (and adoption of its old rules), hierarchy
//! aggregation, DELAY query round trips (positive, negative, relayed),
//! default route and host-only mode, router discovery, malformed and
//! unauthenticated messages, load-aware weights.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use controller::servd::wire::{self, Message, Node};
use controller::servd::{Config, Controller, DefaultRoute, Mode, SaldAction, WeightPolicy};
use sal::proto::LocalInterface;
use sal::table::{Rule, RuleOrigin, ServiceTable, Target, TargetKey};
use sal::{Locator, ServiceId, ServicePrefix};
use sal_control::ControlEvent;

const PORT: u16 = 54326;
const LEASE: Duration = Duration::from_secs(2);
const REFRESH: Duration = Duration::from_millis(500);

fn p(s: &str) -> ServicePrefix {
    s.parse().unwrap()
}

fn id(s: &str) -> ServiceId {
    s.parse().unwrap()
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn loc(last: u8) -> Locator {
    Locator::Ipv4(ip(last))
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::new(ip(last).into(), PORT)
}

/// eth0 with 10.0.0.`last`/24 (through serde, so that fields added to
/// `LocalInterface` later with defaults do not break the test).
fn interface(last: u8) -> LocalInterface {
    serde_json::from_value(serde_json::json!({
        "name": "eth0",
        "locator": loc(last),
        "prefix_len": 24,
    }))
    .unwrap()
}

/// One simulated host: a controller and its (fake) sald's table.
struct SimHost {
    last: u8,
    controller: Controller,
    table: ServiceTable,
    origins: HashMap<(ServicePrefix, TargetKey), RuleOrigin>,
    up: bool,
}

impl SimHost {
    fn rules(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self.table.rules().cloned().collect();
        for rule in &mut rules {
            let keys: Vec<TargetKey> = rule.targets().iter().map(|e| e.target.key()).collect();
            for key in keys {
                if let Some(origin) = self.origins.get(&(rule.prefix, key)) {
                    rule.set_origin(&key, origin.clone());
                }
            }
        }
        rules
    }

    /// FORWARD locators (with weights) of the rule at exactly `prefix`.
    fn forwards(&self, prefix: &str) -> Vec<(Locator, u32)> {
        let Some(rule) = self.table.get(&p(prefix)) else {
            return Vec::new();
        };
        let mut out: Vec<(Locator, u32)> = rule
            .targets()
            .iter()
            .filter_map(|e| match e.target {
                Target::Forward { locator, weight } => Some((locator, weight)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    fn has(&self, prefix: &str, target: TargetKey) -> bool {
        self.table
            .get(&p(prefix))
            .is_some_and(|r| r.targets().iter().any(|e| e.target.key() == target))
    }
}

struct Net {
    now: Instant,
    hosts: Vec<SimHost>,
}

fn config(name: &str) -> Config {
    Config {
        name: name.into(),
        lease: LEASE,
        refresh: REFRESH,
        query_timeout: Duration::from_millis(200),
        cache_lifetime: Duration::from_secs(5),
        negative_lifetime: Duration::from_secs(1),
        ..Config::default()
    }
}

impl Net {
    fn new() -> Net {
        Net {
            now: Instant::now(),
            hosts: Vec::new(),
        }
    }

    fn add(&mut self, last: u8, config: Config) -> usize {
        let epoch = 1000 + u64::from(last) * 7 + self.hosts.len() as u64;
        let mut controller = Controller::new(config, self.now, epoch);
        controller.set_interfaces(self.now, vec![interface(last)]);
        self.hosts.push(SimHost {
            last,
            controller,
            table: ServiceTable::new(),
            origins: HashMap::new(),
            up: true,
        });
        self.hosts.len() - 1
    }

    fn host(&mut self, last: u8, upstreams: &[u8]) -> usize {
        let mut c = config(&format!("h{last}"));
        c.upstreams = upstreams.iter().map(|&u| addr(u)).collect();
        self.add(last, c)
    }

    fn router(&mut self, last: u8, upstreams: &[u8]) -> usize {
        let mut c = config(&format!("r{last}"));
        c.router = true;
        c.upstreams = upstreams.iter().map(|&u| addr(u)).collect();
        self.add(last, c)
    }

    fn event(&mut self, host: usize, event: ControlEvent) {
        let now = self.now;
        self.hosts[host].controller.handle_local_event(now, event);
        self.settle();
    }

    fn register(&mut self, host: usize, prefix: &str) {
        self.event(host, ControlEvent::Registered { prefix: p(prefix) });
    }

    /// Delivers datagrams and applies actions until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for i in 0..self.hosts.len() {
                while let Some(action) = self.hosts[i].controller.poll_action() {
                    moved = true;
                    let host = &mut self.hosts[i];
                    match action {
                        SaldAction::Add {
                            prefix,
                            target,
                            priority,
                            origin,
                            ..
                        } => {
                            host.table.add(prefix, target, priority);
                            host.origins.insert((prefix, target.key()), origin);
                        }
                        SaldAction::Remove { prefix, key } => {
                            let _ = host.table.remove_target(&prefix, &key);
                            host.origins.remove(&(prefix, key));
                        }
                    }
                }
                while let Some(transmit) = self.hosts[i].controller.poll_transmit() {
                    moved = true;
                    if !self.hosts[i].up {
                        continue;
                    }
                    let src = addr(self.hosts[i].last);
                    let broadcast = transmit.to.ip() == std::net::IpAddr::from(ip(255));
                    for j in 0..self.hosts.len() {
                        let dst = addr(self.hosts[j].last);
                        if self.hosts[j].up && j != i && (broadcast || dst == transmit.to) {
                            let now = self.now;
                            self.hosts[j]
                                .controller
                                .handle_message(now, src, &transmit.bytes);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network did not settle");
    }

    /// Advances the virtual clock by `duration`, in 10 ms steps.
    fn run(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.now += Duration::from_millis(10);
            let now = self.now;
            for host in &mut self.hosts {
                if host.up && host.controller.poll_timeout() <= now {
                    host.controller.handle_timeout(now);
                }
            }
            self.settle();
        }
    }

    /// Replaces a host's controller by a fresh one (a restart), keeping
    /// its sald's table.
    fn restart(&mut self, host: usize, config: Config, epoch: u64) {
        let now = self.now;
        let last = self.hosts[host].last;
        let mut controller = Controller::new(config, now, epoch);
        controller.set_interfaces(now, vec![interface(last)]);
        let rules = self.hosts[host].rules();
        controller.adopt_rules(now, &rules);
        self.hosts[host].controller = controller;
        self.settle();
    }
}

#[test]
fn announcement_becomes_a_forward_rule_and_withdrawal_removes_it() {
    let mut net = Net::new();
    let r = net.router(1, &[]);
    let h = net.host(2, &[1]);
    net.run(Duration::from_millis(50));
    net.register(h, "beef/16");
    assert_eq!(net.hosts[r].forwards("beef/16"), vec![(loc(2), 1)]);
    let origin =
        net.hosts[r].origins[&(p("beef/16"), TargetKey::Forward { locator: loc(2) })].clone();
    assert!(
        matches!(&origin, RuleOrigin::Announced { by, .. } if by.starts_with("h2")),
        "{origin:?}"
    );
    // Refreshes keep it for many leases.
    net.run(LEASE * 5);
    assert_eq!(net.hosts[r].forwards("beef/16"), vec![(loc(2), 1)]);
    net.event(
        h,
        ControlEvent::Unregistered {
            prefix: p("beef/16"),
        },
    );
    assert!(net.hosts[r].forwards("beef/16").is_empty());
    assert!(net.hosts[r].controller.stats().withdrawals >= 1);
}

#[test]
fn lease_expires_when_refreshes_stop() {
    let mut net = Net::new();
    let r = net.router(1, &[]);
    let h1 = net.host(2, &[1]);
    let h2 = net.host(3, &[1]);
    net.run(Duration::from_millis(50));
    net.register(h1, "beef/16");
    net.register(h2, "beef/16");
    assert_eq!(net.hosts[r].forwards("beef/16").len(), 2);
    net.run(Duration::from_millis(300));
    // h1 crashes: nothing more from it.
    net.hosts[h1].up = false;
    net.run(LEASE - REFRESH);
    assert_eq!(
        net.hosts[r].forwards("beef/16").len(),
        2,
        "still within the lease"
    );
    net.run(REFRESH + Duration::from_millis(20));
    assert_eq!(net.hosts[r].forwards("beef/16"), vec![(loc(3), 1)]);
    assert_eq!(net.hosts[r].controller.stats().expired, 1);
    assert_eq!(net.hosts[r].controller.learned_entries(), 1);
}

#[test]
fn restarted_router_relearns_everything_and_drops_only_the_dead() {
    let mut net = Net::new();
    let r = net.router(1, &[]);
    let h1 = net.host(2, &[1]);
    let h2 = net.host(3, &[1]);
    net.run(Duration::from_millis(50));
    net.register(h1, "aa/8");
    net.register(h2, "bb/8");
    net.register(h2, "cc/8");
    // h1 dies while the router restarts.
    net.hosts[h1].up = false;
    let mut c = config("r1");
    c.router = true;
    net.restart(r, c, 99);
    // Immediately: the old rules are still in sald (adopted, not removed).
    assert_eq!(net.hosts[r].forwards("aa/8"), vec![(loc(2), 1)]);
    // A new registration on h2 reaches a router that does not know h2: it
    // asks for a resync and gets everything at once.
    net.register(h2, "dd/8");
    for prefix in ["bb/8", "cc/8", "dd/8"] {
        assert_eq!(net.hosts[r].forwards(prefix), vec![(loc(3), 1)], "{prefix}");
    }
    assert_eq!(net.hosts[r].controller.learned_entries(), 3);
    // One lease later, the dead host's adopted rule is gone, the rest stays.
    net.run(LEASE + Duration::from_millis(50));
    assert!(net.hosts[r].forwards("aa/8").is_empty());
    for prefix in ["bb/8", "cc/8", "dd/8"] {
        assert_eq!(net.hosts[r].forwards(prefix), vec![(loc(3), 1)], "{prefix}");
    }
}

#[test]
fn restarted_host_controller_resyncs_from_its_sald() {
    let mut net = Net::new();
    let r = net.router(1, &[]);
    let h = net.host(2, &[1]);
    net.run(Duration::from_millis(50));
    net.register(h, "beef/16");
    // sald still has the DEMUX rule when servd restarts.
    net.hosts[h].table.add(
        p("beef/16"),
        Target::Demux {
            listener: sal::table::ListenerId(1),
        },
        0,
    );
    let mut c = config("h2");
    c.upstreams = vec![addr(1)];
    net.restart(h, c, 4242);
    assert_eq!(
        net.hosts[h]
            .controller
            .local_prefixes()
            .copied()
            .collect::<Vec<_>>(),
        vec![p("beef/16")]
    );
    net.run(LEASE * 3);
    assert_eq!(net.hosts[r].forwards("beef/16"), vec![(loc(2), 1)]);
}

#[test]
fn default_route_toward_the_router_and_host_only_mode() {
    let mut net = Net::new();
    let _r = net.router(1, &[]);
    let h = net.host(2, &[1]);
    let lonely = net.host(3, &[]);
    net.run(Duration::from_millis(50));
    assert_eq!(net.hosts[h].controller.mode(), Mode::Connected);
    assert_eq!(net.hosts[h].forwards("0/0"), vec![(loc(1), 1)]);
    // Without upstream or discovery, and with an upstream nobody answers on.
    let mut c = config("h4");
    c.upstreams = vec![addr(77)];
    let dead_upstream = net.add(4, c);
    net.run(Duration::from_secs(2));
    assert_eq!(net.hosts[lonely].controller.mode(), Mode::HostOnly);
    assert_eq!(net.hosts[dead_upstream].controller.mode(), Mode::HostOnly);
    assert!(net.hosts[dead_upstream].table.is_empty());
}

#[test]
fn routers_are_discovered_on_the_local_link() {
    let mut net = Net::new();
    let r = net.router(1, &[]);
    let mut c = config("h2");
    c.discover_port = Some(PORT);
    let h = net.add(2, c);
    net.run(Duration::from_millis(50));
    assert_eq!(net.hosts[h].controller.mode(), Mode::Connected);
    assert_eq!(net.hosts[h].forwards("0/0"), vec![(loc(1), 1)]);
    net.register(h, "beef/16");
    assert_eq!(net.hosts[r].forwards("beef/16"), vec![(loc(2), 1)]);
}

#[test]
fn hierarchy_aggregates_and_resolves_through_the_core() {
    let mut net = Net::new();
    let core = net.router(100, &[]);
    let mut site = config("site1");
    site.router = true;
    site.upstreams = vec![addr(100)];
    site.aggregates = vec![p("beef/16")];
    let site1 = net.add(10, site);
    let site2 = net.router(20, &[100]);
    let server = net.host(11, &[10]);
    let mut c = config("client");
    c.upstreams = vec![addr(20)];
    c.default_route = DefaultRoute::Delay;
    let client = net.add(21, c);
    net.run(Duration::from_millis(50));

    net.register(server, "beef01/24");
    net.register(server, "beef02/24");
    assert_eq!(net.hosts[site1].forwards("beef01/24"), vec![(loc(11), 1)]);
    assert_eq!(net.hosts[site1].forwards("beef02/24"), vec![(loc(11), 1)]);
    // The core only sees the covering prefix, toward the site router.
    assert_eq!(net.hosts[core].forwards("beef/16"), vec![(loc(10), 1)]);
    assert!(net.hosts[core].forwards("beef01/24").is_empty());
    assert_eq!(
        net.hosts[site1]
            .controller
            .exported_prefixes()
            .copied()
            .collect::<Vec<_>>(),
        vec![p("beef/16")]
    );

    // The client's DELAY asks site2, which asks the core.
    assert!(net.hosts[client].has("0/0", TargetKey::Delay));
    net.event(
        client,
        ControlEvent::DelayNotify {
            service: id("beef0123"),
        },
    );
    assert_eq!(net.hosts[client].forwards("beef/16"), vec![(loc(10), 1)]);
    assert_eq!(net.hosts[site2].controller.stats().answers, 1);
    // The cached route expires (cache lifetime 5 s); the DELAY stays.
    net.run(Duration::from_secs(6));
    assert!(net.hosts[client].forwards("beef/16").is_empty());
    assert!(net.hosts[client].has("0/0", TargetKey::Delay));

    // Withdrawing both specifics withdraws the aggregate at the core.
    net.event(
        server,
        ControlEvent::Unregistered {
            prefix: p("beef01/24"),
        },
    );
    assert_eq!(net.hosts[core].forwards("beef/16").len(), 1);
    net.event(
        server,
        ControlEvent::Unregistered {
            prefix: p("beef02/24"),
        },
    );
    assert!(net.hosts[core].forwards("beef/16").is_empty());
}

#[test]
fn delay_query_round_trip_positive_and_negative() {
    let mut net = Net::new();
    let _r = net.router(1, &[]);
    let server = net.host(2, &[1]);
    let mut c = config("client");
    c.upstreams = vec![addr(1)];
    c.default_route = DefaultRoute::Delay;
    let client = net.add(3, c);
    net.run(Duration::from_millis(50));
    net.register(server, "5e/8");
    net.event(
        client,
        ControlEvent::DelayNotify {
            service: id("5e77"),
        },
    );
    assert_eq!(net.hosts[client].forwards("5e/8"), vec![(loc(2), 1)]);
    let origin = &net.hosts[client].origins[&(p("5e/8"), TargetKey::Forward { locator: loc(2) })];
    assert!(matches!(origin, RuleOrigin::Resolved { .. }), "{origin:?}");

    // Nobody has 0bad: the exact ID gets a DROP (connect fails "no route"),
    // for the negative lifetime only.
    let bad = id("0bad");
    net.event(client, ControlEvent::DelayNotify { service: bad });
    let exact = ServicePrefix::exact(bad).to_string();
    assert!(net.hosts[client].has(&exact, TargetKey::Drop));
    assert_eq!(net.hosts[client].controller.stats().negative_answers, 1);
    net.run(Duration::from_millis(1100));
    assert!(!net.hosts[client].has(&exact, TargetKey::Drop));
}

#[test]
fn unanswered_queries_are_retried_then_dropped() {
    let mut net = Net::new();
    let mut c = config("client");
    c.upstreams = vec![addr(9)];
    c.default_route = DefaultRoute::Delay;
    let client = net.add(3, c);
    net.event(client, ControlEvent::DelayNotify { service: id("ab") });
    net.run(Duration::from_secs(1));
    // Unknown is not "no such service": nothing is installed.
    assert_eq!(net.hosts[client].table.len(), 1, "only the /0 DELAY");
}

#[test]
fn malformed_oversized_and_unauthenticated_datagrams_are_dropped_and_counted() {
    let key = b"0123456789abcdef0123".to_vec();
    let mut net = Net::new();
    let mut rc = config("r1");
    rc.router = true;
    rc.key = Some(key.clone());
    let r = net.add(1, rc);
    let mut good = config("good");
    good.upstreams = vec![addr(1)];
    good.key = Some(key.clone());
    let good = net.add(2, good);
    let mut wrong = config("intruder");
    wrong.upstreams = vec![addr(1)];
    wrong.key = Some(b"not the domain key!!".to_vec());
    let wrong = net.add(3, wrong);
    let keyless = net.host(4, &[1]);
    net.run(Duration::from_millis(50));
    net.register(good, "beef/16");
    net.register(wrong, "beef/16");
    net.register(keyless, "beef/16");
    net.run(Duration::from_secs(1));
    assert_eq!(net.hosts[r].forwards("beef/16"), vec![(loc(2), 1)]);
    assert_eq!(net.hosts[keyless].controller.mode(), Mode::HostOnly);
    let before = net.hosts[r].controller.stats();
    assert!(before.dropped_unauthenticated >= 4, "{before:?}");

    let now = net.now;
    let ctl = &mut net.hosts[r].controller;
    let src = addr(50);
    ctl.handle_message(now, src, b"");
    ctl.handle_message(now, src, b"GET / HTTP/1.1");
    ctl.handle_message(now, src, &vec![b'S'; wire::MAX_DATAGRAM + 1]);
    ctl.handle_message(now, src, b"SRVD\x09\x00{}");
    let node = Node {
        name: "x".repeat(1000),
        epoch: 1,
        locators: vec![],
    };
    // Too long a name, even correctly tagged.
    let mut body = b"SRVD\x01\x01".to_vec();
    let json = serde_json::to_vec(&Message::Solicit { from: node }).unwrap();
    {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"SRVD\x01\x01");
        mac.update(&json);
        body.extend_from_slice(&mac.finalize().into_bytes());
    }
    body.extend_from_slice(&json);
    ctl.handle_message(now, src, &body);
    let after = ctl.stats();
    assert_eq!(after.dropped_malformed - before.dropped_malformed, 3);
    assert_eq!(after.dropped_oversized - before.dropped_oversized, 1);
    assert_eq!(after.dropped_version - before.dropped_version, 1);
    assert!(ctl.poll_transmit().is_none(), "nothing answered");
}

#[test]
fn fuzzed_datagrams_never_panic() {
    let mut net = Net::new();
    let r = net.router(1, &[9]);
    let good = wire::encode(
        &Message::Announce {
            from: Node {
                name: "h".into(),
                epoch: 1,
                locators: vec![loc(2)],
            },
            lease_ms: 1000,
            entries: vec![wire::Announcement {
                prefix: p("ab/8"),
                weight: 1,
                priority: 0,
                load: 0,
            }],
            full: true,
        },
        None,
    )
    .unwrap();
    let mut x: u32 = 0x9e37_79b9;
    for round in 0..5000 {
        let mut bytes = good.clone();
        for _ in 0..1 + round % 4 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let i = x as usize % bytes.len();
            bytes[i] = (x >> 8) as u8;
        }
        bytes.truncate(x as usize % (bytes.len() + 1));
        let now = net.now;
        net.hosts[r].controller.handle_message(now, addr(2), &bytes);
    }
    net.settle();
}

#[test]
fn least_loaded_policy_shares_by_power_of_two_choices() {
    let mut net = Net::new();
    let mut rc = config("r1");
    rc.router = true;
    rc.weight_policy = WeightPolicy::LeastLoaded;
    let r = net.add(1, rc);
    let h1 = net.host(2, &[1]);
    let h2 = net.host(3, &[1]);
    let h3 = net.host(4, &[1]);
    net.run(Duration::from_millis(50));
    for h in [h1, h2, h3] {
        net.register(h, "beef/16");
    }
    assert_eq!(
        net.hosts[r].forwards("beef/16"),
        vec![(loc(2), 5), (loc(3), 5), (loc(4), 5)],
        "equal loads, equal shares"
    );
    // h1 gets busy with 4 flows, h2 with 1.
    for (host, flows) in [(h1, 4u32), (h2, 1)] {
        for f in 0..flows {
            net.event(
                host,
                ControlEvent::FlowOpened {
                    flow: sal::FlowId::new(f + 1).unwrap(),
                    service: id("beef01"),
                },
            );
        }
    }
    net.run(REFRESH + Duration::from_millis(20));
    // Ranks by load: h3 (0) 5, h2 (1) 3, h1 (4) 1 = (2(n-r)-1).
    assert_eq!(
        net.hosts[r].forwards("beef/16"),
        vec![(loc(2), 1), (loc(3), 3), (loc(4), 5)]
    );
    let _ = h3;
}
