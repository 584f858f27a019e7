//! `Relay`: a prefix bound for a program that drives its own SAL host over
//! UDP (`docs/in-process-sal.md`). sald forwards the prefix's SYNs and
//! unconnected datagrams to the program's locator instead of serving them
//! (a relay listener of `sal::proto`), and the program's host answers its
//! clients directly; otherwise it is a bind like `Listen`'s.
//!
//! Whose port: on a host with many users, one must not point a service at
//! a UDP port that is not theirs (another user's program would be sent
//! its clients' first packets). So the program passes its socket itself,
//! as `SCM_RIGHTS` on the request: no process can pass a descriptor it
//! does not hold, and `getsockname` on it says where it receives. That is
//! proof outright, where matching `/proc/net/udp` inodes against
//! `/proc/PID/fd` of the control socket's peer would race with the port
//! changing hands and would need to read other users' `/proc` entries,
//! which a sald run by an ordinary user (UDP mode needs no privilege)
//! cannot. sald keeps the socket while the relay is bound, so that the
//! port cannot change hands meanwhile either: it stays bound, and with
//! `SO_REUSEPORT` only its owner's user could share it. Not so with
//! `SO_REUSEADDR`, which Linux lets any user share for UDP (the newest,
//! most specific socket then takes the port's datagrams: see
//! `crate::udp_ports`), so a socket is taken only without it and only if
//! no other user's socket already shares its port. The socket must also
//! be in sald's network namespace. These checks are `program_socket`'s,
//! which `Adopt` shares. The program keeps its own copy of the socket and
//! may set `SO_REUSEADDR` (or bind it to a device) afterwards: sald sees
//! that on the copy it keeps, and [`watch_sockets`] ends such a relay
//! within a second.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use sal::table::ListenerId;
use sal::{Locator, ServicePrefix};
use sal_control::{ErrorKind, Response};

use super::bind::bind_refusal;
use super::program_socket::{checked_program_socket, keeps_its_port, receives_at, SocketRefusal};
use super::{error_reply, host_error, Reply};
use crate::control::client::Client;
use crate::daemon::Shared;
use crate::owners::Binding;

/// How often [`watch_sockets`] looks at every relay's kept socket.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Why a relay was refused; each maps to one error class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayRefusal {
    /// The request came without a descriptor.
    #[error(
        "relay: attach the program's UDP socket to the request (SCM_RIGHTS on its first byte)"
    )]
    NoSocket,
    /// The descriptor is not an IPv4 UDP socket.
    #[error("relay: the descriptor passed is no IPv4 UDP socket")]
    NotUdp,
    /// The socket is not bound to a port yet.
    #[error("relay: the UDP socket passed is bound to no port")]
    Unbound,
    /// The locator asked for is a native one.
    #[error("relay: {0} is no UDP locator (a program's host is reached over UDP)")]
    NotUdpLocator(Locator),
    /// sald has no UDP locator to forward from.
    #[error("relay: this sald carries the SAL natively; relays need UDP mode (--udp)")]
    NativeMode,
    /// sald was not started with `--relays`.
    #[error("relay: relays are off in this sald (--no-relays, relays = false, or native mode)")]
    Off,
    /// The socket is in another network namespace than sald's.
    #[error("relay: the UDP socket passed is in another network namespace")]
    OtherNamespace,
    /// The locator is sald's own.
    #[error("relay: {0} is sald's own locator")]
    Own(Locator),
    /// The locator is not where the socket passed receives.
    #[error("relay: {asked} is not where the socket passed receives ({bound})")]
    NotTheSocket {
        /// The locator asked for.
        asked: Locator,
        /// The socket's own address.
        bound: SocketAddrV4,
    },
    /// The locator's address is none of this host's.
    #[error("relay: {0} is no address of this host")]
    NotLocal(Ipv4Addr),
    /// The socket has `SO_REUSEADDR` set: any user could bind its port
    /// too, and take what sald relays there.
    #[error("relay: the UDP socket passed has SO_REUSEADDR set, with which any user may bind its port too: clear it")]
    ReuseAddr,
    /// Another user's socket already shares the socket's port (both set
    /// `SO_REUSEADDR` when the later one was bound).
    #[error("relay: a socket of another user (uid {uid}) also receives on port {port}")]
    Shared {
        /// The port.
        port: u16,
        /// The other socket's owner.
        uid: u32,
    },
    /// The port's sockets could not be listed.
    #[error("relay: cannot list the UDP sockets of this host")]
    Unchecked,
    /// The socket is bound to a device (`SO_BINDTODEVICE`).
    #[error("relay: the UDP socket passed is bound to a device (SO_BINDTODEVICE): unbind it")]
    BoundToDevice,
}

impl From<SocketRefusal> for RelayRefusal {
    fn from(refusal: SocketRefusal) -> RelayRefusal {
        match refusal {
            SocketRefusal::NotUdp => RelayRefusal::NotUdp,
            SocketRefusal::Unbound => RelayRefusal::Unbound,
            SocketRefusal::OtherNamespace => RelayRefusal::OtherNamespace,
            SocketRefusal::ReuseAddr => RelayRefusal::ReuseAddr,
            SocketRefusal::Shared { port, uid } => RelayRefusal::Shared { port, uid },
            SocketRefusal::Unchecked => RelayRefusal::Unchecked,
            SocketRefusal::BoundToDevice => RelayRefusal::BoundToDevice,
        }
    }
}

impl RelayRefusal {
    /// The control protocol's error class: the caller's mistake
    /// (`InvalidRequest`), a port or address that is not the caller's
    /// to name (`PermissionDenied`), or sald's own failure to check
    /// (`Internal`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            RelayRefusal::NotTheSocket { .. }
            | RelayRefusal::NotLocal(_)
            | RelayRefusal::Shared { .. } => ErrorKind::PermissionDenied,
            RelayRefusal::Unchecked => ErrorKind::Internal,
            _ => ErrorKind::InvalidRequest,
        }
    }

    fn reply(&self) -> Reply {
        error_reply(self.kind(), self.to_string())
    }
}

/// Binds `prefix` for this connection as a relay to the program whose UDP
/// socket came with the request (see the module docs).
pub(super) async fn relay(
    client: &mut Client,
    prefix: ServicePrefix,
    asked: Option<Locator>,
) -> Reply {
    let Some(socket) = client.attached.take() else {
        return RelayRefusal::NoSocket.reply();
    };
    if !client.context.shared.lock().host.config().relay_local {
        return RelayRefusal::Off.reply();
    }
    let (socket, bound) = match checked_program_socket(socket).await {
        Ok(checked) => checked,
        Err(refusal) => return RelayRefusal::from(refusal).reply(),
    };
    let context = client.context.clone();
    let mut core = context.shared.lock();
    let core = &mut *core;
    let own: Vec<Locator> = (core.host.interfaces().iter()).map(|i| i.locator).collect();
    let locator = match choose_locator(bound, asked, &own, &local_addresses()) {
        Ok(locator) => locator,
        Err(refusal) => return refusal.reply(),
    };
    if let Some(refused) = bind_refusal(client, core, &prefix) {
        return refused;
    }
    let listener = match core.host.relay(prefix, locator) {
        Ok(listener) => listener,
        Err(error) => return host_error(error),
    };
    // It queues no flow: nothing of its user's room is taken.
    let binding = Binding {
        prefix,
        uid: client.uid,
        backlog: 0,
    };
    core.owners.bind(listener, binding);
    core.relay_sockets.insert(listener, Arc::new(socket));
    client.listeners.push(listener);
    core.run();
    tracing::info!(%prefix, %locator, uid = client.uid, "service registered, relayed to a program");
    (Response::Relaying { listener, locator }, None)
}

/// Ends every relay whose kept socket no longer keeps its port to its
/// program: one its program set `SO_REUSEADDR` on again, or bound to a
/// device, since the relay was made (a later socket of another user could
/// then share the port and take the service's first packets: see the
/// module docs). Looks every [`WATCH_INTERVAL`], two system calls per
/// relay, off the lock: 0.25-0.28 µs a relay on the development VM, so
/// about 0.3 ms a second per thousand relays, 28 ms at 100,000. A
/// program that sets the option and clears it again between two looks is
/// not seen; nor is another user's socket that bound the port meanwhile,
/// which only `/proc/net/udp` would show, at a cost that grows with every
/// UDP socket of the host (`crate::udp_ports`).
pub async fn watch_sockets(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Weak: a relay closed meanwhile closes its socket at once.
        let kept: Vec<(ListenerId, Weak<OwnedFd>)> = (shared.lock().relay_sockets.iter())
            .map(|(&listener, socket)| (listener, Arc::downgrade(socket)))
            .collect();
        for (checked, chunk) in kept.chunks(256).enumerate() {
            if checked > 0 {
                // Many relays: the packets go on between chunks.
                tokio::task::yield_now().await;
            }
            for (listener, socket) in chunk {
                let Some(socket) = socket.upgrade() else {
                    continue;
                };
                if let Err(refusal) = keeps_its_port(&socket) {
                    end_relay(&shared, *listener, &socket, refusal);
                }
            }
        }
    }
}

/// Ends the relay `listener` found with `refusal` on its kept `socket`,
/// unless it ended (or its socket changed) meanwhile.
fn end_relay(shared: &Shared, listener: ListenerId, socket: &Arc<OwnedFd>, refusal: SocketRefusal) {
    let mut core = shared.lock();
    if !core
        .relay_sockets
        .get(&listener)
        .is_some_and(|kept| Arc::ptr_eq(kept, socket))
    {
        return;
    }
    let (_, binding) = core.unbind_listener(listener);
    drop(core);
    // Its control connection forgets it at its next look.
    shared.relays_ended.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        listener = listener.0,
        prefix = ?binding.map(|b| b.prefix),
        uid = ?binding.map(|b| b.uid),
        %refusal,
        "relay ended: its program made its port shareable by other users"
    );
}

/// The refusal of a request that works on a listener's accept queue, for a
/// relay (which has none: its flows are its program's); `None` for any
/// other listener.
pub(super) fn without_queue(client: &Client, listener: ListenerId) -> Option<Reply> {
    let locator = client.context.shared.lock().host.listener_relay(listener)?;
    Some(error_reply(
        ErrorKind::InvalidRequest,
        format!(
            "listener {} relays to {locator}: it has no accept queue",
            listener.0
        ),
    ))
}

/// The locator a relay forwards to, for a socket bound at `bound` and the
/// locator `asked` for (see `Request::Relay`), given sald's own locators
/// `own` and the host's addresses `local`.
fn choose_locator(
    bound: SocketAddrV4,
    asked: Option<Locator>,
    own: &[Locator],
    local: &[Ipv4Addr],
) -> Result<Locator, RelayRefusal> {
    let Some(sald) = own.iter().find_map(|l| match l {
        Locator::Udp(addr) => Some(*addr.ip()),
        Locator::Ipv4(_) => None,
    }) else {
        return Err(RelayRefusal::NativeMode);
    };
    let chosen = match asked {
        None if bound.ip().is_unspecified() => SocketAddrV4::new(sald, bound.port()),
        None => bound,
        Some(native @ Locator::Ipv4(_)) => return Err(RelayRefusal::NotUdpLocator(native)),
        Some(Locator::Udp(addr)) => {
            if !receives_at(bound, addr) {
                return Err(RelayRefusal::NotTheSocket {
                    asked: Locator::Udp(addr),
                    bound,
                });
            }
            addr
        }
    };
    // A socket may be bound to an address that is not the host's
    // (`IP_FREEBIND`): sald would then forward somewhere else entirely.
    if !chosen.ip().is_loopback() && !local.contains(chosen.ip()) {
        return Err(RelayRefusal::NotLocal(*chosen.ip()));
    }
    let chosen = Locator::Udp(chosen);
    if own.contains(&chosen) {
        return Err(RelayRefusal::Own(chosen));
    }
    Ok(chosen)
}

/// The IPv4 addresses of this host's interfaces (in sald's network
/// namespace); none if they cannot be listed.
fn local_addresses() -> Vec<Ipv4Addr> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addresses
        .filter_map(|interface| interface.address)
        .filter_map(|address| address.as_sockaddr_in().map(|a| a.ip()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn loc(s: &str) -> Locator {
        s.parse().unwrap()
    }

    const SALD: &str = "udp:10.0.0.1:7077";

    fn choose(bound: &str, asked: Option<&str>) -> Result<Locator, RelayRefusal> {
        let local = [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 1, 1)];
        choose_locator(addr(bound), asked.map(loc), &[loc(SALD)], &local)
    }

    #[test]
    fn a_relay_goes_where_the_socket_receives() {
        assert_eq!(choose("10.0.1.1:4000", None), Ok(loc("udp:10.0.1.1:4000")));
        assert_eq!(
            choose("0.0.0.0:4000", None),
            Ok(loc("udp:10.0.0.1:4000")),
            "any address: sald's own, at the socket's port"
        );
        assert_eq!(
            choose("0.0.0.0:4000", Some("udp:10.0.1.1:4000")),
            Ok(loc("udp:10.0.1.1:4000"))
        );
        assert_eq!(
            choose("0.0.0.0:4000", Some("udp:127.0.0.1:4000")),
            Ok(loc("udp:127.0.0.1:4000"))
        );
        assert_eq!(
            choose("10.0.0.1:4000", Some("udp:10.0.0.1:4000")),
            Ok(loc("udp:10.0.0.1:4000"))
        );
    }

    #[test]
    fn a_relay_to_anywhere_the_socket_does_not_receive_is_refused() {
        let other_port = choose("10.0.0.1:4000", Some("udp:10.0.0.1:4001"));
        assert!(matches!(other_port, Err(RelayRefusal::NotTheSocket { .. })));
        assert_eq!(other_port.unwrap_err().kind(), ErrorKind::PermissionDenied);
        let other_address = choose("10.0.0.1:4000", Some("udp:10.0.1.1:4000"));
        assert!(matches!(
            other_address,
            Err(RelayRefusal::NotTheSocket { .. })
        ));
        let elsewhere = choose("0.0.0.0:4000", Some("udp:192.0.2.7:4000"));
        assert_eq!(
            elsewhere,
            Err(RelayRefusal::NotLocal(Ipv4Addr::new(192, 0, 2, 7)))
        );
        assert_eq!(elsewhere.unwrap_err().kind(), ErrorKind::PermissionDenied);
        // Bound with IP_FREEBIND to an address the host does not have.
        assert_eq!(
            choose("192.0.2.7:4000", None),
            Err(RelayRefusal::NotLocal(Ipv4Addr::new(192, 0, 2, 7)))
        );
        assert_eq!(
            choose("0.0.0.0:4000", Some("10.0.0.1")),
            Err(RelayRefusal::NotUdpLocator(loc("10.0.0.1")))
        );
        assert_eq!(
            choose("0.0.0.0:7077", None),
            Err(RelayRefusal::Own(loc(SALD)))
        );
        let native = choose_locator(addr("10.0.0.1:4000"), None, &[loc("10.0.0.1")], &[]);
        assert_eq!(native, Err(RelayRefusal::NativeMode));
    }
}
