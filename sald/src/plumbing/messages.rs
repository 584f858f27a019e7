//! The routing-policy rules and routes the plumbing adds, finds and removes:
//! how each is built, recognised and described in log lines and errors.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleFlag, RuleMessage};
use netlink_packet_route::{AddressFamily, IpProtocol};

use super::config::PlumbingConfig;
use super::SAL_IPPROTO;

/// The kernel's `local`, `main` and `default` routing tables.
pub(crate) const RT_TABLE_LOCAL: u32 = 255;
pub(crate) const RT_TABLE_MAIN: u32 = 254;
pub(crate) const RT_TABLE_DEFAULT: u32 = 253;
/// Preference of the kernel's `lookup main` rule.
pub(crate) const RULE_PREF_MAIN: u32 = 32766;

pub(crate) fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

pub(crate) fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

pub(crate) fn rule_pref(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

pub(crate) fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

pub(crate) fn rule_ipproto(r: &RuleMessage) -> Option<i32> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::IpProtocol(p) => Some(i32::from(*p)),
        _ => None,
    })
}

pub(crate) fn rule_dst(r: &RuleMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Destination(d) => Some(*d),
        _ => None,
    })
}

pub(crate) fn rule_iif(r: &RuleMessage) -> Option<&str> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Iifname(n) => Some(n.as_str()),
        _ => None,
    })
}

/// A rule `pref N lookup local` with no selector: the kernel's default
/// `0: from all lookup local`, or that rule after we moved it.
pub(crate) fn is_plain_local(r: &RuleMessage) -> bool {
    r.header.action == RuleAction::ToTable
        && rule_table(r) == RT_TABLE_LOCAL
        && r.header.src_len == 0
        && r.header.dst_len == 0
        && r.header.tos == 0
        && !r.header.flags.contains(&RuleFlag::Invert)
        && r.attributes.iter().all(|a| match a {
            RuleAttribute::Priority(_) | RuleAttribute::Table(_) | RuleAttribute::Protocol(_) => {
                true
            }
            // the kernel always reports these; u32::MAX (-1) means "unset"
            RuleAttribute::SuppressPrefixLen(v) | RuleAttribute::SuppressIfGroup(v) => {
                *v == u32::MAX
            }
            RuleAttribute::L3MDev(on) => !on,
            _ => false,
        })
}

pub(crate) fn is_sal_rule(r: &RuleMessage, pref: u32) -> bool {
    rule_pref(r) == pref && rule_ipproto(r) == Some(i32::from(SAL_IPPROTO))
}

pub(crate) fn with_pref(r: &RuleMessage, pref: u32) -> RuleMessage {
    let mut r = r.clone();
    r.attributes
        .retain(|a| !matches!(a, RuleAttribute::Priority(_)));
    r.attributes.push(RuleAttribute::Priority(pref));
    r
}

pub(crate) fn sal_rule(pref: u32, table: u32, iface: &str, addr: Ipv4Addr) -> RuleMessage {
    let mut r = RuleMessage::default();
    r.header.family = AddressFamily::Inet;
    r.header.action = RuleAction::ToTable;
    r.header.dst_len = 32;
    r.header.table = u8::try_from(table).unwrap_or(0);
    r.attributes.push(RuleAttribute::Priority(pref));
    r.attributes.push(RuleAttribute::Table(table));
    r.attributes
        .push(RuleAttribute::Destination(IpAddr::V4(addr)));
    r.attributes.push(RuleAttribute::Iifname(iface.to_owned()));
    r.attributes
        .push(RuleAttribute::IpProtocol(IpProtocol::from(i32::from(
            SAL_IPPROTO,
        ))));
    r
}

/// The per-source rule `pref P from A/32 lookup T`.
pub(crate) fn source_rule(pref: u32, table: u32, addr: Ipv4Addr) -> RuleMessage {
    let mut r = RuleMessage::default();
    r.header.family = AddressFamily::Inet;
    r.header.action = RuleAction::ToTable;
    r.header.src_len = 32;
    r.header.table = u8::try_from(table).unwrap_or(0);
    r.attributes.push(RuleAttribute::Priority(pref));
    r.attributes.push(RuleAttribute::Table(table));
    r.attributes.push(RuleAttribute::Source(IpAddr::V4(addr)));
    r
}

pub(crate) fn rule_src(r: &RuleMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(d) => Some(*d),
        _ => None,
    })
}

/// A rule that looks like one of our per-source rules for `cfg`: at one of
/// the per-source preferences, from a single address, into one of the
/// per-source tables, with no other selector.
pub(crate) fn is_source_rule(r: &RuleMessage, cfg: &PlumbingConfig) -> bool {
    r.header.action == RuleAction::ToTable
        && r.header.src_len == 32
        && r.header.dst_len == 0
        && cfg.is_source_pref(rule_pref(r))
        && cfg.is_source_table(rule_table(r))
        && rule_ipproto(r).is_none()
        && rule_iif(r).is_none()
}

/// `route`, a main-table route, as it goes into table `table`.
pub(crate) fn copy_route(route: &RouteMessage, table: u32) -> RouteMessage {
    let mut m = route.clone();
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    // Flags such as `linkdown` are state the kernel reports, not requests.
    m.header.flags.clear();
    m.attributes.retain(|a| {
        !matches!(
            a,
            RouteAttribute::Table(_) | RouteAttribute::CacheInfo(_) | RouteAttribute::Expires(_)
        )
    });
    m.attributes.push(RouteAttribute::Table(table));
    m
}

/// `throw <destination of route>` for table `table`: a lookup there for
/// that prefix fails and the rules after it (the main table) decide.
pub(crate) fn throw_route(route: &RouteMessage, table: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = route.header.destination_prefix_length;
    m.header.tos = route.header.tos;
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Throw;
    m.attributes.extend(
        route
            .attributes
            .iter()
            .filter(|a| matches!(a, RouteAttribute::Destination(_)))
            .cloned(),
    );
    m.attributes.push(RouteAttribute::Table(table));
    m
}

/// What identifies a route within one table: kind, destination, gateway,
/// device and metric.
pub(crate) fn route_key(r: &RouteMessage) -> String {
    let metric = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Priority(p) => Some(*p),
        _ => None,
    });
    format!("{} metric {}", describe_route(r), metric.unwrap_or(0))
}

pub(crate) fn route_has_gateway(r: &RouteMessage) -> bool {
    r.attributes
        .iter()
        .any(|a| matches!(a, RouteAttribute::Gateway(_)))
}

pub(crate) fn show_route_addr(a: &RouteAddress) -> String {
    match a {
        RouteAddress::Inet(v) => v.to_string(),
        RouteAddress::Inet6(v) => v.to_string(),
        other => format!("{other:?}"),
    }
}

pub(crate) fn describe_route(r: &RouteMessage) -> String {
    let mut s = String::new();
    if r.header.kind != RouteType::Unicast {
        s.push_str(&format!("{:?} ", r.header.kind).to_lowercase());
    }
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => Some(show_route_addr(d)),
        _ => None,
    });
    match dst {
        Some(d) => s.push_str(&format!("{d}/{}", r.header.destination_prefix_length)),
        None => s.push_str("default"),
    }
    if let Some(g) = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => Some(g),
        _ => None,
    }) {
        s.push_str(&format!(" via {}", show_route_addr(g)));
    }
    if let Some(o) = route_oif(r) {
        s.push_str(&format!(" dev #{o}"));
    }
    s
}

pub(crate) fn describe_rule(r: &RuleMessage) -> String {
    let mut s = format!("pref {}", rule_pref(r));
    if let Some(src) = rule_src(r) {
        s.push_str(&format!(" from {src}/{}", r.header.src_len));
    }
    if let Some(p) = rule_ipproto(r) {
        s.push_str(&format!(" ipproto {p}"));
    }
    if let Some(d) = rule_dst(r) {
        s.push_str(&format!(" to {d}/{}", r.header.dst_len));
    }
    if let Some(i) = rule_iif(r) {
        s.push_str(&format!(" iif {i}"));
    }
    s.push_str(&format!(" lookup {}", rule_table(r)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_rule_predicates() {
        let cfg = PlumbingConfig::new("sal0")
            .interface("eth0", vec![Ipv4Addr::new(10, 0, 0, 1)])
            .interface("eth1", vec![Ipv4Addr::new(10, 0, 1, 1)]);
        let r = source_rule(111, 1001, Ipv4Addr::new(10, 0, 1, 1));
        assert!(is_source_rule(&r, &cfg));
        assert!(!is_sal_rule(&r, 111));
        assert!(!is_plain_local(&r));
        assert_eq!(describe_rule(&r), "pref 111 from 10.0.1.1/32 lookup 1001");
        assert!(!is_source_rule(
            &source_rule(112, 1001, Ipv4Addr::new(10, 0, 1, 1)),
            &cfg
        ));
        assert!(!is_source_rule(
            &source_rule(111, 1002, Ipv4Addr::new(10, 0, 1, 1)),
            &cfg
        ));
        let s = sal_rule(110, 1000, "eth0", Ipv4Addr::new(10, 0, 0, 1));
        assert!(!is_source_rule(&s, &cfg));
    }

    #[test]
    fn copied_route_goes_to_the_source_table() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Unicast;
        r.attributes.push(RouteAttribute::Table(254));
        r.attributes
            .push(RouteAttribute::Gateway(Ipv4Addr::new(10, 0, 0, 254).into()));
        r.attributes.push(RouteAttribute::Oif(3));
        let c = copy_route(&r, 1000);
        assert_eq!(route_table(&c), 1000);
        assert_eq!(c.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(route_has_gateway(&c));
        assert_eq!(describe_route(&c), "default via 10.0.0.254 dev #3");
        assert_eq!(route_table(&copy_route(&r, 200)), 200);
        assert_eq!(copy_route(&r, 200).header.table, 200);

        let mut net = r.clone();
        net.header.destination_prefix_length = 16;
        net.attributes.push(RouteAttribute::Destination(
            Ipv4Addr::new(172, 17, 0, 0).into(),
        ));
        let t = throw_route(&net, 1001);
        assert_eq!(t.header.kind, RouteType::Throw);
        assert_eq!(route_table(&t), 1001);
        assert!(!route_has_gateway(&t) && route_oif(&t).is_none());
        assert_eq!(describe_route(&t), "throw 172.17.0.0/16");
    }

    #[test]
    fn sal_rule_round_trip_predicates() {
        let r = sal_rule(100, 144, "eth0", Ipv4Addr::new(10, 0, 0, 1));
        assert!(is_sal_rule(&r, 100));
        assert!(!is_sal_rule(&r, 101));
        assert!(!is_plain_local(&r));
        assert_eq!(rule_table(&r), 144);
        assert_eq!(rule_iif(&r), Some("eth0"));
        assert_eq!(
            describe_rule(&r),
            "pref 100 ipproto 144 to 10.0.0.1/32 iif eth0 lookup 144"
        );
        let mut local = RuleMessage::default();
        local.header.family = AddressFamily::Inet;
        local.header.action = RuleAction::ToTable;
        local.header.table = 255;
        local.attributes.push(RuleAttribute::Table(255));
        assert!(is_plain_local(&local));
        assert_eq!(rule_pref(&with_pref(&local, 101)), 101);
    }
}
