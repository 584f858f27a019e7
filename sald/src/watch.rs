//! Link, address and route events from the kernel (rtnetlink multicast
//! groups), so that flows move off an interface that goes down or loses its
//! address, follow an interface that is renumbered, and so that the
//! per-source routing tables follow the main table.
//!
//! A blocking thread reads the netlink socket (it is created in the daemon's
//! network namespace, which threads share) and forwards [`LinkEvent`]s over a
//! channel; [`Interfaces`] turns them into host calls, and [`follow`] applies
//! them to the host and, through the plumbing thread, to the routing.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlag};
use netlink_packet_route::route::RouteAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use sal::proto::Host;
use sal::Locator;
use tokio::sync::mpsc;

use crate::daemon::Shared;
use crate::plumbing::PlumbingWorker;

/// rtnetlink multicast groups: links, IPv4 addresses and IPv4 routes.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// The kernel's main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// What the kernel told us about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// Administratively up and with carrier (`up`), or not.
    Link {
        /// The kernel's interface index.
        index: u32,
        /// The interface's name.
        name: String,
        /// Up and running; false too when the link was deleted.
        up: bool,
    },
    /// An IPv4 address was added to an interface.
    AddressAdded {
        /// The kernel's index of the interface.
        index: u32,
        /// The new address.
        addr: Ipv4Addr,
        /// Its subnet's prefix length.
        prefix_len: u8,
    },
    /// An IPv4 address was removed from an interface.
    AddressRemoved {
        /// The kernel's index of the interface.
        index: u32,
        /// The address that went away.
        addr: Ipv4Addr,
    },
    /// An IPv4 route of the main table was added or deleted.
    MainRoutesChanged,
}

/// Starts the watcher thread; events arrive on the returned channel. Fails
/// if the netlink socket cannot be opened (then the daemon runs without
/// automatic migration on link events, and says so).
pub fn spawn() -> std::io::Result<mpsc::UnboundedReceiver<LinkEvent>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE,
    ))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("sald-netlink".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match socket.recv(&mut &mut buf[..], 0) {
                    Ok(n) => n,
                    Err(error) => {
                        tracing::warn!(%error, "netlink watcher stopped");
                        return;
                    }
                };
                for event in parse(&buf[..n]) {
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// Decodes the link and address messages in one netlink datagram.
pub fn parse(mut bytes: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            if let NetlinkPayload::InnerMessage(inner) = message.payload {
                events.extend(event_of(inner));
            }
        }
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
    }
    events
}

fn event_of(message: RouteNetlinkMessage) -> Option<LinkEvent> {
    match message {
        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => {
            let (link, deleted) = match message {
                RouteNetlinkMessage::NewLink(link) => (link, false),
                RouteNetlinkMessage::DelLink(link) => (link, true),
                _ => return None,
            };
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            })?;
            let flags = &link.header.flags;
            let up =
                !deleted && flags.contains(&LinkFlag::Up) && flags.contains(&LinkFlag::Running);
            Some(LinkEvent::Link {
                index: link.header.index,
                name,
                up,
            })
        }
        RouteNetlinkMessage::NewAddress(address) => {
            let addr = ipv4_of(&address.attributes)?;
            Some(LinkEvent::AddressAdded {
                index: address.header.index,
                addr,
                prefix_len: address.header.prefix_len,
            })
        }
        RouteNetlinkMessage::DelAddress(address) => Some(LinkEvent::AddressRemoved {
            index: address.header.index,
            addr: ipv4_of(&address.attributes)?,
        }),
        RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route) => {
            let table = route
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(route.header.table));
            (route.header.address_family == AddressFamily::Inet && table == RT_TABLE_MAIN)
                .then_some(LinkEvent::MainRoutesChanged)
        }
        _ => None,
    }
}

fn ipv4_of(attributes: &[AddressAttribute]) -> Option<Ipv4Addr> {
    attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(std::net::IpAddr::V4(ip))
        | AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    })
}

/// The daemon's view of its interfaces' addresses, which decides what each
/// kernel event means for the host.
#[derive(Debug, Default)]
pub struct Interfaces {
    /// Interface index to name, for our SAL interfaces only.
    names: HashMap<u32, String>,
    /// Current IPv4 addresses of each SAL interface.
    addresses: HashMap<String, Vec<(Ipv4Addr, u8)>>,
}

/// What a kernel event changed, for the plumbing to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlumbingChange {
    /// A SAL interface got an address: steer protocol 144 for it too.
    Add {
        /// The SAL interface's name.
        iface: String,
        /// The address it got.
        addr: Ipv4Addr,
    },
    /// A SAL interface lost an address: remove that address's rules.
    Remove {
        /// The SAL interface's name.
        iface: String,
        /// The address it lost.
        addr: Ipv4Addr,
    },
    /// The per-source tables must be copied from the main table again.
    Routes,
}

impl Interfaces {
    /// Tracks `iface` (kernel index `index`) starting from `addr`.
    pub fn track(&mut self, index: u32, iface: &str, addr: Ipv4Addr, prefix_len: u8) {
        self.names.insert(index, iface.to_string());
        self.addresses
            .entry(iface.to_string())
            .or_default()
            .push((addr, prefix_len));
    }

    /// Applies one event to the host; returns what the plumbing must follow.
    pub fn apply(&mut self, host: &mut Host, event: LinkEvent) -> Option<PlumbingChange> {
        match event {
            LinkEvent::Link { index, up, .. } => {
                let name = self.names.get(&index)?.clone();
                let was_up = host.interfaces().iter().any(|i| i.name == name && i.up);
                let has_address = self.addresses.get(&name).is_some_and(|a| !a.is_empty());
                let up = up && has_address;
                if was_up != up {
                    tracing::info!(iface = %name, up, "interface state changed");
                    let _ = host.set_interface_up(&name, up);
                }
                None
            }
            LinkEvent::AddressAdded {
                index,
                addr,
                prefix_len,
            } => {
                let name = self.names.get(&index)?.clone();
                let addresses = self.addresses.entry(name.clone()).or_default();
                if addresses.iter().any(|(a, _)| *a == addr) {
                    return None;
                }
                addresses.push((addr, prefix_len));
                let current = host.interfaces().iter().find(|i| i.name == name).cloned()?;
                if !current.up && addresses.len() == 1 {
                    // The interface had lost its address and has one again.
                    let locator = relocate(&current.locator, addr);
                    let _ = host.set_interface_locator(&name, locator, prefix_len);
                    let _ = host.set_interface_up(&name, true);
                    tracing::info!(iface = %name, %locator, "interface has an address again");
                }
                Some(PlumbingChange::Add { iface: name, addr })
            }
            LinkEvent::AddressRemoved { index, addr } => {
                let name = self.names.get(&index)?.clone();
                let addresses = self.addresses.entry(name.clone()).or_default();
                addresses.retain(|(a, _)| *a != addr);
                let replacement = addresses.first().copied();
                let current = host.interfaces().iter().find(|i| i.name == name).cloned()?;
                if current.locator.ip() == addr {
                    match replacement {
                        // Renumbered: the flows follow the interface's new address.
                        Some((new, prefix_len)) => {
                            let locator = relocate(&current.locator, new);
                            tracing::info!(iface = %name, %locator, "interface renumbered");
                            let _ = host.set_interface_locator(&name, locator, prefix_len);
                        }
                        // No address left: flows move to another interface.
                        None => {
                            tracing::info!(iface = %name, %addr, "interface lost its address");
                            let _ = host.set_interface_up(&name, false);
                        }
                    }
                }
                Some(PlumbingChange::Remove { iface: name, addr })
            }
            LinkEvent::MainRoutesChanged => Some(PlumbingChange::Routes),
        }
    }
}

/// Applies the kernel's link, address and route events to the host (moving
/// flows) and to the plumbing (rules for new addresses, per-source tables),
/// until the daemon stops it. Routing changes are queued for the plumbing
/// thread; this task never waits for netlink.
pub async fn follow(
    shared: Arc<Shared>,
    plumbing: Arc<PlumbingWorker>,
    mut view: Interfaces,
    events: Option<mpsc::UnboundedReceiver<LinkEvent>>,
) {
    let Some(mut events) = events else {
        return std::future::pending().await;
    };
    // A refresh of the per-source tables is queued and has not started: a
    // later burst need not queue another.
    let refresh_queued = Arc::new(AtomicBool::new(false));
    while let Some(first) = events.recv().await {
        // Take whatever else already arrived (a link going down brings a
        // burst), so that the routing tables are refreshed once per burst.
        let mut batch = vec![first];
        while let Ok(event) = events.try_recv() {
            batch.push(event);
        }
        let mut changes = Vec::new();
        {
            let mut core = shared.lock();
            for event in batch {
                changes.extend(view.apply(&mut core.host, event));
            }
            core.run();
        }
        if changes.contains(&PlumbingChange::Routes) && refresh_queued.swap(true, Ordering::AcqRel)
        {
            changes.retain(|c| *c != PlumbingChange::Routes);
        }
        if changes.is_empty() {
            continue;
        }
        // Queued, not awaited: the next kernel event is applied to the host
        // while the routing follows this one.
        let refresh_queued = refresh_queued.clone();
        let job = move |plumbing: &mut Option<crate::plumbing::Plumbing>| {
            if changes.contains(&PlumbingChange::Routes) {
                // From here on, a new change needs a new refresh.
                refresh_queued.store(false, Ordering::Release);
            }
            if let Some(plumbing) = plumbing {
                follow_in_routing(plumbing, changes);
            }
        };
        if plumbing.submit(job).is_err() {
            tracing::warn!("the plumbing thread is gone; routing no longer follows the kernel");
            break;
        }
    }
    std::future::pending().await
}

/// Makes the plumbing follow `changes` (on the plumbing thread): rules for
/// added and removed addresses, then one refresh of the per-source tables.
fn follow_in_routing(plumbing: &mut crate::plumbing::Plumbing, changes: Vec<PlumbingChange>) {
    let refresh = changes.contains(&PlumbingChange::Routes);
    for change in changes {
        let result = match &change {
            PlumbingChange::Add { iface, addr } => plumbing.add_address(iface, *addr),
            PlumbingChange::Remove { iface, addr } => plumbing.remove_address(iface, *addr),
            PlumbingChange::Routes => continue,
        };
        if let Err(error) = result {
            tracing::warn!(%error, ?change, "routing did not follow an address change");
        }
    }
    if refresh {
        match plumbing.refresh_routes() {
            Ok(0) => {}
            Ok(changed) => tracing::info!(changed, "per-source routes follow the main table"),
            Err(error) => {
                tracing::warn!(%error, "per-source routes did not follow the main table")
            }
        }
    }
}

/// `template` moved to `ip`, keeping its carriage (and UDP port).
fn relocate(template: &Locator, ip: Ipv4Addr) -> Locator {
    match template {
        Locator::Ipv4(_) => Locator::Ipv4(ip),
        Locator::Udp(addr) => Locator::Udp(std::net::SocketAddrV4::new(ip, addr.port())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sal::proto::{HostConfig, LocalInterface};
    use sal::time::Instant;

    fn host() -> Host {
        let mut host = Host::new(HostConfig::default(), Instant::from_millis(0));
        for (name, ip) in [("wlan", "10.0.0.1"), ("cell", "10.1.0.1")] {
            host.add_interface(LocalInterface {
                name: name.into(),
                locator: Locator::Ipv4(ip.parse().unwrap()),
                prefix_len: 24,
                up: true,
            });
        }
        host
    }

    fn tracked() -> Interfaces {
        let mut interfaces = Interfaces::default();
        interfaces.track(2, "wlan", "10.0.0.1".parse().unwrap(), 24);
        interfaces.track(3, "cell", "10.1.0.1".parse().unwrap(), 24);
        interfaces
    }

    fn up(host: &Host, name: &str) -> bool {
        host.interfaces().iter().any(|i| i.name == name && i.up)
    }

    #[test]
    fn link_down_and_up_follow_the_kernel() {
        let (mut host, mut interfaces) = (host(), tracked());
        let down = LinkEvent::Link {
            index: 2,
            name: "wlan".into(),
            up: false,
        };
        assert_eq!(interfaces.apply(&mut host, down), None);
        assert!(!up(&host, "wlan"));
        let back = LinkEvent::Link {
            index: 2,
            name: "wlan".into(),
            up: true,
        };
        interfaces.apply(&mut host, back);
        assert!(up(&host, "wlan"));
        // Interfaces that are not ours are ignored.
        let other = LinkEvent::Link {
            index: 9,
            name: "docker0".into(),
            up: false,
        };
        assert_eq!(interfaces.apply(&mut host, other), None);
    }

    #[test]
    fn only_main_table_routes_matter() {
        use netlink_packet_route::route::RouteMessage;
        let route = |table: u32| {
            let mut m = RouteMessage::default();
            m.header.address_family = AddressFamily::Inet;
            m.header.table = 252; // RT_TABLE_COMPAT: the real one is the attribute
            m.attributes.push(RouteAttribute::Table(table));
            m
        };
        assert_eq!(
            event_of(RouteNetlinkMessage::NewRoute(route(254))),
            Some(LinkEvent::MainRoutesChanged)
        );
        assert_eq!(
            event_of(RouteNetlinkMessage::DelRoute(route(254))),
            Some(LinkEvent::MainRoutesChanged)
        );
        // Our own per-source tables (and the local table) do not feed back.
        assert_eq!(event_of(RouteNetlinkMessage::NewRoute(route(1000))), None);
        assert_eq!(event_of(RouteNetlinkMessage::NewRoute(route(255))), None);
        let (mut host, mut interfaces) = (host(), tracked());
        assert_eq!(
            interfaces.apply(&mut host, LinkEvent::MainRoutesChanged),
            Some(PlumbingChange::Routes)
        );
    }

    #[test]
    fn renumbering_and_address_loss() {
        let (mut host, mut interfaces) = (host(), tracked());
        let added = LinkEvent::AddressAdded {
            index: 2,
            addr: "10.0.0.9".parse().unwrap(),
            prefix_len: 24,
        };
        assert!(matches!(
            interfaces.apply(&mut host, added),
            Some(PlumbingChange::Add { .. })
        ));
        let removed = LinkEvent::AddressRemoved {
            index: 2,
            addr: "10.0.0.1".parse().unwrap(),
        };
        interfaces.apply(&mut host, removed);
        let wlan = host.interfaces().iter().find(|i| i.name == "wlan").unwrap();
        assert_eq!(wlan.locator, Locator::Ipv4("10.0.0.9".parse().unwrap()));
        // Losing the last address takes the interface out of use.
        let gone = LinkEvent::AddressRemoved {
            index: 3,
            addr: "10.1.0.1".parse().unwrap(),
        };
        interfaces.apply(&mut host, gone);
        assert!(!up(&host, "cell"));
        let again = LinkEvent::AddressAdded {
            index: 3,
            addr: "10.1.0.7".parse().unwrap(),
            prefix_len: 24,
        };
        interfaces.apply(&mut host, again);
        assert!(up(&host, "cell"));
    }
}
