//! The host's own SAL interfaces, and which one a packet leaves from.
//!
//! A multi-homed host must pick a source locator for every flow it starts
//! and for every packet it answers, and must know where else a flow could
//! go when its interface fails. Those choices are policy, kept here in one
//! place; the changes of interface state that move flows (down, removed,
//! renumbered) are applied by the host through `migration.rs`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{Host, HostError};
use crate::locator::Locator;

/// One of the host's own SAL interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalInterface {
    /// The interface's name (e.g. `eth0`), unique on the host: migrations and
    /// listings name it.
    pub name: String,
    /// This host's address on the interface (and port, in UDP carriage): the
    /// local locator of flows that run over it.
    pub locator: Locator,
    /// Length of the on-link IPv4 prefix; picks the interface for a next hop.
    pub prefix_len: u8,
    /// Whether the link is usable; flows avoid interfaces that are down.
    #[serde(default = "up")]
    pub up: bool,
}

fn up() -> bool {
    true
}

impl LocalInterface {
    /// The subnet mask of the on-link prefix.
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0)
    }

    /// Whether `ip` is on this interface's subnet.
    fn on_link(&self, ip: Ipv4Addr) -> bool {
        let mask = self.mask();
        u32::from(self.locator.ip()) & mask == u32::from(ip) & mask
    }

    /// The subnet's directed broadcast address, for a native (IPv4)
    /// interface whose subnet has one (prefixes up to /30).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        match self.locator {
            Locator::Ipv4(ip) if self.prefix_len <= 30 => {
                Some(Ipv4Addr::from(u32::from(ip) | !self.mask()))
            }
            _ => None,
        }
    }
}

/// The interfaces, in the order they were added (the first is the default).
#[derive(Debug, Default)]
pub(super) struct Interfaces {
    list: Vec<LocalInterface>,
}

impl Interfaces {
    pub fn as_slice(&self) -> &[LocalInterface] {
        &self.list
    }

    /// Adds an interface, replacing one of the same name.
    pub fn add(&mut self, interface: LocalInterface) {
        self.list.retain(|i| i.name != interface.name);
        self.list.push(interface);
    }

    /// Removes an interface by name.
    pub fn remove(&mut self, name: &str) -> Option<LocalInterface> {
        let index = self.list.iter().position(|i| i.name == name)?;
        Some(self.list.remove(index))
    }

    pub fn get(&self, name: &str) -> Option<&LocalInterface> {
        self.list.iter().find(|i| i.name == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut LocalInterface> {
        self.list.iter_mut().find(|i| i.name == name)
    }

    /// The first interface's locator: where local services are reached.
    pub fn first(&self) -> Option<Locator> {
        self.list.first().map(|i| i.locator)
    }

    /// Whether `ip` is one of ours.
    pub fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.list.iter().any(|i| i.locator.ip() == ip)
    }

    /// Whether `ip` is a broadcast address of ours: the limited broadcast
    /// 255.255.255.255 or the directed broadcast of one of our native
    /// interfaces' subnets.
    pub fn is_broadcast(&self, ip: Ipv4Addr) -> bool {
        ip.is_broadcast() || self.list.iter().any(|i| i.broadcast() == Some(ip))
    }

    /// Whether `ip` can be where a peer is: a unicast address, not the
    /// unspecified one, a multicast group, or a broadcast address of ours.
    /// Nothing is ever sent to any other address on a packet's word (its
    /// IP source, SOURCE or ADDRESS extension): an answer to a broadcast
    /// or multicast source would go to everyone on the subnet (RFC 1122,
    /// 3.2.1.3, has hosts discard such packets).
    pub fn may_be_peer(&self, ip: Ipv4Addr) -> bool {
        !ip.is_unspecified() && !ip.is_multicast() && !self.is_broadcast(ip)
    }

    /// For every native interface that is up and has a broadcast address:
    /// its locator and that address. Where a SYN or datagram goes when
    /// broadcast discovery looks for a service.
    pub fn broadcasts(&self) -> impl Iterator<Item = (Locator, Locator)> + '_ {
        self.list
            .iter()
            .filter(|i| i.up)
            .filter_map(|i| Some((i.locator, Locator::Ipv4(i.broadcast()?))))
    }

    /// Whether a packet for `locator` is for this host: in UDP carriage,
    /// one of our locators, address and port (hosts in UDP carriage may
    /// share an address on different ports); natively, one of our addresses.
    pub fn owns(&self, locator: &Locator) -> bool {
        self.owners(locator).next().is_some()
    }

    /// Whether `locator` is ours (as in [`Interfaces::owns`]) on an
    /// interface that is up: one this host may answer from.
    pub fn owns_up(&self, locator: &Locator) -> bool {
        self.owners(locator).any(|i| i.up)
    }

    /// The interfaces a packet for `locator` is for (see
    /// [`Interfaces::owns`]).
    fn owners<'a>(&'a self, locator: &'a Locator) -> impl Iterator<Item = &'a LocalInterface> {
        self.list.iter().filter(move |i| match locator {
            Locator::Udp(_) => i.locator == *locator,
            Locator::Ipv4(ip) => i.locator.ip() == *ip,
        })
    }

    /// The name of the interface with this locator.
    pub fn name_of(&self, locator: Locator) -> Option<&str> {
        self.list
            .iter()
            .find(|i| i.locator == locator)
            .map(|i| i.name.as_str())
    }

    /// How many interfaces are up.
    pub fn up_count(&self) -> usize {
        self.list.iter().filter(|i| i.up).count()
    }

    /// Locators of the interfaces that are up, other than `current`: what
    /// a multi-homed host advertises to its peers.
    pub fn others_up(&self, current: Locator) -> impl Iterator<Item = Locator> + '_ {
        self.list
            .iter()
            .filter(move |i| i.up && i.locator != current)
            .map(|i| i.locator)
    }

    /// The local locator to send toward `next_hop` from. The policy for new
    /// flows: the first interface that is up and on the next hop's subnet,
    /// else the first interface that is up, else the first interface.
    pub fn source_for(&self, next_hop: &Locator) -> Option<Locator> {
        self.list
            .iter()
            .find(|i| i.up && i.on_link(next_hop.ip()))
            .or_else(|| self.list.iter().find(|i| i.up))
            .or_else(|| self.list.first())
            .map(|i| i.locator)
    }

    /// The local locator a packet from `src` to `dst` arrived on.
    pub fn arrival_locator(&self, src: &Locator, dst: &Locator) -> Locator {
        self.list
            .iter()
            .find(|i| i.locator.ip() == dst.ip())
            .map(|i| i.locator)
            .or_else(|| self.source_for(src))
            .unwrap_or(*dst)
    }

    /// Where a flow on `current` goes when its path fails: the next
    /// interface that is up after `current` (in order, wrapping), or the
    /// first one up if `current` is not up. `None` if that is `current`
    /// itself: nowhere else to go.
    pub fn next_up_after(&self, current: Locator) -> Option<Locator> {
        let up: Vec<Locator> = self
            .list
            .iter()
            .filter(|i| i.up)
            .map(|i| i.locator)
            .collect();
        let next = match up.iter().position(|l| *l == current) {
            Some(p) => up.get((p + 1) % up.len()).copied(),
            None => up.first().copied(),
        };
        next.filter(|n| *n != current)
    }
}

impl Host {
    /// The host's SAL interfaces.
    pub fn interfaces(&self) -> &[LocalInterface] {
        self.interfaces.as_slice()
    }

    /// Whether `ip` is a broadcast address of one of the host's subnets (or
    /// 255.255.255.255): where SAL broadcasts to this host arrive.
    pub fn is_broadcast(&self, ip: Ipv4Addr) -> bool {
        self.interfaces.is_broadcast(ip)
    }

    /// Adds (or replaces, by name) one of the host's own interfaces.
    pub fn add_interface(&mut self, interface: LocalInterface) {
        let up_before = self.interfaces.up_count();
        self.interfaces.add(interface);
        self.interfaces_changed(up_before);
    }

    /// A second interface up gives idle flows somewhere to go.
    fn interfaces_changed(&mut self, up_before: usize) {
        if up_before <= 1 && self.interfaces.up_count() > 1 {
            self.rearm_idle_probes();
        }
    }

    /// Removes an interface by name (its flows move elsewhere first, with
    /// `auto_migrate`); returns whether it existed.
    pub fn remove_interface(&mut self, name: &str) -> bool {
        let Some(iface) = self.interfaces.get_mut(name) else {
            return false;
        };
        iface.up = false;
        let locator = iface.locator;
        if self.config.auto_migrate {
            self.evacuate(locator);
        }
        self.interfaces.remove(name);
        true
    }

    /// Marks an interface up or down. Going down moves its flows to another
    /// interface that is up (with `auto_migrate`).
    pub fn set_interface_up(&mut self, name: &str, up: bool) -> Result<(), HostError> {
        let iface = self
            .interfaces
            .get_mut(name)
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        let (was_up, locator) = (iface.up, iface.locator);
        let up_before = self.interfaces.up_count();
        let Some(iface) = self.interfaces.get_mut(name) else {
            return Ok(());
        };
        iface.up = up;
        if was_up && !up && self.config.auto_migrate {
            self.evacuate(locator);
        }
        self.interfaces_changed(up_before);
        Ok(())
    }

    /// Gives an interface a new locator (renumbering): flows using the old
    /// one move to the new one (with `auto_migrate`).
    pub fn set_interface_locator(
        &mut self,
        name: &str,
        locator: Locator,
        prefix_len: u8,
    ) -> Result<(), HostError> {
        let iface = self
            .interfaces
            .get_mut(name)
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        let old = iface.locator;
        iface.locator = locator;
        iface.prefix_len = prefix_len;
        if old != locator && self.config.auto_migrate {
            self.move_flows(old, locator);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locator {
        s.parse().unwrap()
    }

    fn interfaces(list: &[(&str, &str, bool)]) -> Interfaces {
        let mut interfaces = Interfaces::default();
        for (name, locator, up) in list {
            interfaces.add(LocalInterface {
                name: name.to_string(),
                locator: loc(locator),
                prefix_len: 24,
                up: *up,
            });
        }
        interfaces
    }

    #[test]
    fn sources_prefer_an_up_interface_on_the_next_hops_subnet() {
        let i = interfaces(&[
            ("wlan", "10.0.0.1", true),
            ("cell", "10.1.0.1", true),
            ("usb", "10.3.0.1", false),
        ]);
        assert_eq!(i.source_for(&loc("10.1.0.77")), Some(loc("10.1.0.1")));
        assert_eq!(
            i.source_for(&loc("10.3.0.77")),
            Some(loc("10.0.0.1")),
            "usb is down"
        );
        assert_eq!(i.source_for(&loc("192.0.2.1")), Some(loc("10.0.0.1")));
        let down = interfaces(&[("a", "10.0.0.1", false), ("b", "10.1.0.1", false)]);
        assert_eq!(down.source_for(&loc("10.1.0.9")), Some(loc("10.0.0.1")));
        assert_eq!(Interfaces::default().source_for(&loc("10.0.0.9")), None);
    }

    #[test]
    fn arrivals_are_on_the_addressed_interface() {
        let i = interfaces(&[("wlan", "10.0.0.1", true), ("cell", "10.1.0.1", true)]);
        assert_eq!(
            i.arrival_locator(&loc("10.0.0.9"), &loc("10.1.0.1")),
            loc("10.1.0.1")
        );
        // A broadcast: the interface facing the sender.
        assert_eq!(
            i.arrival_locator(&loc("10.1.0.9"), &loc("10.1.0.255")),
            loc("10.1.0.1")
        );
    }

    #[test]
    fn broadcasts_are_per_native_subnet() {
        let mut i = interfaces(&[("eth0", "10.77.1.2", true), ("eth1", "10.77.2.2", false)]);
        i.add(LocalInterface {
            name: "p2p".into(),
            locator: loc("10.9.0.1"),
            prefix_len: 31,
            up: true,
        });
        i.add(LocalInterface {
            name: "udp".into(),
            locator: loc("udp:10.8.0.1:54325"),
            prefix_len: 24,
            up: true,
        });
        assert!(i.is_broadcast(Ipv4Addr::new(10, 77, 1, 255)));
        assert!(
            i.is_broadcast(Ipv4Addr::new(10, 77, 2, 255)),
            "down, still ours"
        );
        assert!(i.is_broadcast(Ipv4Addr::BROADCAST));
        assert!(!i.is_broadcast(Ipv4Addr::new(10, 77, 1, 2)));
        assert!(
            !i.is_broadcast(Ipv4Addr::new(10, 9, 0, 1)),
            "a /31 has none"
        );
        assert!(
            !i.is_broadcast(Ipv4Addr::new(10, 8, 0, 255)),
            "UDP carriage"
        );
        let up: Vec<_> = i.broadcasts().collect();
        assert_eq!(up, [(loc("10.77.1.2"), loc("10.77.1.255"))]);
    }

    #[test]
    fn a_failing_flow_goes_to_the_next_interface_up() {
        let i = interfaces(&[
            ("wlan", "10.0.0.1", true),
            ("cell", "10.1.0.1", false),
            ("usb", "10.3.0.1", true),
        ]);
        assert_eq!(i.next_up_after(loc("10.0.0.1")), Some(loc("10.3.0.1")));
        assert_eq!(i.next_up_after(loc("10.3.0.1")), Some(loc("10.0.0.1")));
        assert_eq!(i.next_up_after(loc("10.1.0.1")), Some(loc("10.0.0.1")));
        let single = interfaces(&[("eth0", "10.0.0.1", true)]);
        assert_eq!(single.next_up_after(loc("10.0.0.1")), None);
        assert_eq!(i.up_count(), 2);
        let others: Vec<Locator> = i.others_up(loc("10.0.0.1")).collect();
        assert_eq!(others, [loc("10.3.0.1")]);
    }

    #[test]
    fn answers_leave_only_from_our_own_locators_that_are_up() {
        let mut i = interfaces(&[("eth0", "10.0.0.1", true), ("eth1", "10.2.0.1", false)]);
        i.add(LocalInterface {
            name: "udp".into(),
            locator: loc("udp:10.8.0.1:54325"),
            prefix_len: 24,
            up: true,
        });
        assert!(i.owns_up(&loc("10.0.0.1")));
        assert!(i.owns(&loc("10.2.0.1")));
        assert!(!i.owns_up(&loc("10.2.0.1")), "down");
        assert!(!i.owns_up(&loc("10.0.0.99")), "not ours");
        assert!(i.owns_up(&loc("udp:10.8.0.1:54325")));
        assert!(!i.owns_up(&loc("udp:10.8.0.1:54324")), "another port");
    }

    #[test]
    fn adding_by_an_existing_name_replaces() {
        let mut i = interfaces(&[("wlan", "10.0.0.1", true)]);
        i.add(LocalInterface {
            name: "wlan".into(),
            locator: loc("10.0.0.20"),
            prefix_len: 24,
            up: true,
        });
        assert_eq!(i.as_slice().len(), 1);
        assert!(i.is_local(Ipv4Addr::new(10, 0, 0, 20)));
        assert_eq!(i.name_of(loc("10.0.0.20")), Some("wlan"));
        assert!(i.remove("wlan").is_some());
        assert_eq!(i.first(), None);
    }
}
