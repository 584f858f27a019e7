//! Human-readable output of servalctl's listings: aligned tables.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use sal::proto::{FlowInfo, FlowState, LocalInterface, Role};
use sal::table::{Rule, RuleOrigin, Target};
use sal::wire::TransportProtocol;
use sal_control::{ResolvedRoute, StatsReport};

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table: a header row, then rows, columns separated by two spaces.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len());
        self.rows.push(cells);
    }

    /// The table as text, every line ending in a newline, no trailing blanks.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let width = widths[i];
                match self.columns[i].1 {
                    Align::Left => {
                        let _ = write!(line, "{cell:<width$}");
                    }
                    Align::Right => {
                        let _ = write!(line, "{cell:>width$}");
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `servalctl services`: one line per target, rules by prefix.
pub fn services(rules: &[Rule]) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    services_at(rules, now_ms)
}

/// Leaves out the own service IDs of unbound datagram sockets (and rules
/// left without targets).
pub fn hide_ephemeral(rules: &mut Vec<Rule>) {
    rules.retain(|rule| (rule.targets().iter()).any(|entry| entry.origin != RuleOrigin::Ephemeral));
}

/// The line after the services table: what happens to a service no rule
/// matches.
pub fn discovery(on: bool) -> String {
    if on {
        "broadcast discovery: on (a SYN or datagram that no rule matches goes to every \
         interface's broadcast address)\n"
            .into()
    } else {
        "broadcast discovery: off (no matching rule: no route)\n".into()
    }
}

/// [`services`] as seen at `now_ms` (Unix time, ms): TARGET is `relay
/// LOCATOR` for a service bound here whose program drives its own SAL host
/// at LOCATOR; ORIGIN says who put
/// the target there (`static`, `local` for a bound service, `announced
/// HOST`, `resolved HOST`, `default ROUTER`, `ephemeral` for an unbound
/// datagram socket's own ID), EXPIRES when servd will take it away unless
/// it is refreshed.
pub fn services_at(rules: &[Rule], now_ms: u64) -> String {
    let mut table = Table::new(&[
        ("PREFIX", Align::Left),
        ("TARGET", Align::Left),
        ("WEIGHT", Align::Right),
        ("PRIORITY", Align::Right),
        ("PACKETS", Align::Right),
        ("BYTES", Align::Right),
        ("ORIGIN", Align::Left),
        ("EXPIRES", Align::Left),
    ]);
    for rule in rules {
        for entry in rule.targets() {
            let (target, weight) = match (entry.target, &entry.origin) {
                (Target::Forward { locator, weight }, _) => {
                    (format!("forward {locator}"), weight.to_string())
                }
                // Bound here, served by the program's own SAL host there.
                (Target::Demux { .. }, RuleOrigin::Relay { locator }) => {
                    (format!("relay {locator}"), "-".into())
                }
                (Target::Demux { listener }, _) => {
                    (format!("demux listener {}", listener.0), "-".into())
                }
                (Target::Delay, _) => ("delay".into(), "-".into()),
                (Target::Drop, _) => ("drop".into(), "-".into()),
            };
            table.row(vec![
                rule.prefix.to_string(),
                target,
                weight,
                entry.priority.to_string(),
                entry.counters.packets.to_string(),
                entry.counters.bytes.to_string(),
                match (&entry.target, &entry.origin) {
                    (Target::Demux { .. }, RuleOrigin::Static | RuleOrigin::Relay { .. }) => {
                        "local".into()
                    }
                    (_, origin) => origin.label(),
                },
                match entry.origin.expires_unix_ms() {
                    Some(at) if at > now_ms => {
                        format!("in {:.1}s", (at - now_ms) as f64 / 1000.0)
                    }
                    Some(_) => "due".into(),
                    None => "-".into(),
                },
            ]);
        }
    }
    table.render()
}

fn state_name(state: FlowState) -> &'static str {
    match state {
        FlowState::Resolving => "resolving",
        FlowState::SynSent => "syn-sent",
        FlowState::SynReceived => "syn-received",
        FlowState::Established => "established",
        FlowState::Dead => "dead",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Client => "client",
        Role::Server => "server",
    }
}

fn protocol_name(protocol: TransportProtocol) -> &'static str {
    match protocol {
        TransportProtocol::Stream => "stream",
        TransportProtocol::Datagram => "datagram",
    }
}

/// `servalctl flows`.
pub fn flows(flows: &[FlowInfo]) -> String {
    let mut table = Table::new(&[
        ("FLOW", Align::Left),
        ("SERVICE", Align::Left),
        ("PROTO", Align::Left),
        ("STATE", Align::Left),
        ("ROLE", Align::Left),
        ("LOCAL", Align::Left),
        ("REMOTE", Align::Left),
        ("IFACE", Align::Left),
        ("BYTES-IN", Align::Right),
        ("BYTES-OUT", Align::Right),
        ("MOVES", Align::Right),
        ("LAST-MOVE", Align::Right),
    ]);
    for flow in flows {
        table.row(vec![
            flow.flow.to_string(),
            flow.service.to_string(),
            protocol_name(flow.protocol).into(),
            state_name(flow.state).into(),
            role_name(flow.role).into(),
            flow.local.to_string(),
            flow.remote.map_or_else(|| "-".into(), |r| r.to_string()),
            flow.interface.clone().unwrap_or_else(|| "-".into()),
            flow.counters.bytes_in.to_string(),
            flow.counters.bytes_out.to_string(),
            flow.migrations.to_string(),
            flow.last_migration_us_ago
                .map_or_else(|| "-".into(), |us| format!("{:.1}s ago", us as f64 / 1e6)),
        ]);
    }
    table.render()
}

/// `servalctl ifaces`: name, locator and on-link network.
pub fn interfaces(interfaces: &[LocalInterface]) -> String {
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("LOCATOR", Align::Left),
        ("NETWORK", Align::Left),
    ]);
    for iface in interfaces {
        let len = iface.prefix_len.min(32);
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let network = Ipv4Addr::from(u32::from(iface.locator.ip()) & mask);
        table.row(vec![
            iface.name.clone(),
            iface.locator.to_string(),
            format!("{network}/{len}"),
        ]);
    }
    table.render()
}

/// `servalctl resolve`: the route sald lets a program use on its own for
/// `service`, and for how long; or that the program must send that
/// service's connections to sald for that long.
pub fn resolution(
    service: &sal::ServiceId,
    route: Option<&ResolvedRoute>,
    lifetime_ms: u64,
) -> String {
    let Some(route) = route else {
        return format!(
            "{service}: no route to cache; programs send its connections through sald (ask again in {lifetime_ms} ms)\n"
        );
    };
    let mut out = format!(
        "{service}: forward (sald's rule {}), cacheable for {lifetime_ms} ms\n",
        route.matched
    );
    let mut table = Table::new(&[("NEXT HOP", Align::Left), ("WEIGHT", Align::Right)]);
    for hop in &route.next_hops {
        table.row(vec![hop.locator.to_string(), hop.weight.to_string()]);
    }
    out += &table.render();
    out
}

/// Flattens a JSON value into `(dotted.key, value)` pairs.
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.into(), s.clone())),
        other => out.push((prefix.into(), other.to_string())),
    }
}

/// `servalctl stats`: one counter a line, sald-wide numbers first, then the
/// host's and the table's counters by section.
pub fn stats(stats: &StatsReport) -> String {
    let value = serde_json::to_value(stats).unwrap_or_default();
    let mut pairs = Vec::new();
    flatten("", &value, &mut pairs);
    // Top-level numbers first, then sections; alphabetical within each.
    pairs.sort_by_key(|(key, _)| key.contains('.'));
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use sal::proto::FlowCounters;
    use sal::table::{ServiceTable, Target};

    use super::*;

    #[test]
    fn services_table_is_aligned() {
        let mut table = ServiceTable::new();
        let prefix = "beef/16".parse().unwrap();
        table.add(
            prefix,
            Target::Forward {
                locator: "udp:10.0.0.2:54325".parse().unwrap(),
                weight: 3,
            },
            2,
        );
        table.add(prefix, Target::Drop, 0);
        let mut rules: Vec<Rule> = table.rules().cloned().collect();
        let forward = rules[0].targets()[0].target.key();
        rules[0].set_origin(
            &forward,
            RuleOrigin::Announced {
                by: "s1 (10.0.0.2)".into(),
                expires_unix_ms: Some(11_500),
            },
        );
        let text = services_at(&rules, 10_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "PREFIX   TARGET                      WEIGHT  PRIORITY  PACKETS  BYTES  ORIGIN                   EXPIRES",
                "beef/16  forward udp:10.0.0.2:54325       3         2        0      0  announced s1 (10.0.0.2)  in 1.5s",
                "beef/16  drop                             -         0        0      0  static                   -",
            ]
        );
    }

    #[test]
    fn a_relayed_service_shows_where_its_program_is() {
        let mut table = ServiceTable::new();
        let prefix = "c0ec70/24".parse().unwrap();
        let listener = sal::table::ListenerId(4);
        table.add(prefix, Target::Demux { listener }, 0);
        let mut rules: Vec<Rule> = table.rules().cloned().collect();
        let locator = "udp:10.0.0.2:40000".parse().unwrap();
        rules[0].set_origin(
            &Target::Demux { listener }.key(),
            RuleOrigin::Relay { locator },
        );
        let text = services_at(&rules, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "c0ec7/24  relay udp:10.0.0.2:40000       -         0        0      0  local   -"
        );
    }

    #[test]
    fn flows_and_interfaces() {
        let flow = FlowInfo {
            flow: sal::FlowId::new(0x1a).unwrap(),
            peer_flow: None,
            service: "beef".parse().unwrap(),
            protocol: TransportProtocol::Stream,
            role: Role::Client,
            state: FlowState::SynSent,
            local: "10.0.0.1".parse().unwrap(),
            remote: None,
            interface: Some("eth0".into()),
            counters: FlowCounters {
                bytes_in: 10,
                bytes_out: 2000,
                ..Default::default()
            },
            migrations: 0,
            peer_moves: 0,
            last_migration_us_ago: None,
        };
        let text = flows(&[flow]);
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "0000001a", "beef", "stream", "syn-sent", "client", "10.0.0.1", "-", "eth0", "10",
                "2000", "0", "-"
            ]
        );
        let iface = LocalInterface {
            name: "eth0".into(),
            locator: "10.1.2.3".parse().unwrap(),
            prefix_len: 24,
            up: true,
        };
        assert!(interfaces(&[iface]).contains("eth0  10.1.2.3  10.1.2.0/24"));
    }

    #[test]
    fn stats_lists_every_counter() {
        let text = stats(&StatsReport {
            flows: 3,
            fd_limit: 1_048_576,
            fds_open: 12,
            ..Default::default()
        });
        assert!(text
            .lines()
            .any(|l| l.starts_with("fd_limit ") && l.ends_with(" 1048576")));
        assert!(text
            .lines()
            .any(|l| l.starts_with("fds_open ") && l.ends_with(" 12")));
        assert!(text
            .lines()
            .any(|l| l.starts_with("flows ") && l.ends_with(" 3")));
        assert!(text.lines().any(|l| l.starts_with("host.packets_in ")));
        assert!(text
            .lines()
            .any(|l| l.starts_with("table.resolved.packets ")));
        let first_section = text.lines().position(|l| l.contains('.')).unwrap();
        assert!(text.lines().skip(first_section).all(|l| l.contains('.')));
    }
}
