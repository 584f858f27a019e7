//! The UDP socket a program that drives its own SAL host passes with a
//! request (`SCM_RIGHTS` on the frame's first byte) to prove that a port
//! is its own: `Relay` (the port sald is to forward a prefix's SYNs to)
//! and `Adopt` (the port a flow it hands to sald lived on). No process can
//! pass a descriptor it does not hold, and `getsockname` on it says where
//! it receives; see `relay`'s module docs for why this rather than
//! `/proc`. What is checked here is common to both: the descriptor is a
//! bound IPv4 UDP socket in sald's network namespace, and where it
//! receives.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{getsockopt, sockopt, SockType};
use socket2::{Protocol, SockRef};

use crate::plumbing::netns_cookie;
use crate::udp_ports::{self, UdpSocketEntry};

/// Why a descriptor passed is not a program's UDP socket here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SocketRefusal {
    /// The descriptor is not an IPv4 UDP socket.
    #[error("the descriptor passed is no IPv4 UDP socket")]
    NotUdp,
    /// The socket is not bound to a port yet.
    #[error("the UDP socket passed is bound to no port")]
    Unbound,
    /// The socket is in another network namespace than sald's.
    #[error("the UDP socket passed is in another network namespace")]
    OtherNamespace,
    /// The socket has `SO_REUSEADDR` set: any user could bind its port
    /// too, and take what is sent there.
    #[error("the UDP socket passed has SO_REUSEADDR set, with which any user may bind its port too: clear it")]
    ReuseAddr,
    /// Another user's socket already shares the socket's port (both set
    /// `SO_REUSEADDR` when the later one was bound).
    #[error("a socket of another user (uid {uid}) also receives on port {port}")]
    Shared {
        /// The port.
        port: u16,
        /// The other socket's owner.
        uid: u32,
    },
    /// The port's sockets could not be listed.
    #[error("cannot list the UDP sockets of this host")]
    Unchecked,
    /// The socket is bound to a device (`SO_BINDTODEVICE`): another
    /// user's socket on another device may share its port without any
    /// option.
    #[error("the UDP socket passed is bound to a device (SO_BINDTODEVICE): unbind it")]
    BoundToDevice,
}

/// The uid the kernel shows for an owner a user namespace does not map
/// (`/proc/sys/kernel/overflowuid`, 65534 by default).
const OVERFLOW_UID: u32 = 65534;

/// Where `socket` receives, if it is a bound IPv4 UDP socket in sald's
/// network namespace (see [`in_our_namespace`]) whose port no other user
/// shares (see [`unshared`]).
pub(super) fn program_socket_address(socket: &OwnedFd) -> Result<SocketAddrV4, SocketRefusal> {
    let bound = udp_address(socket)?;
    in_our_namespace(socket)?;
    unshared(socket, bound)?;
    Ok(bound)
}

/// [`program_socket_address`] on a blocking thread, handing the socket
/// back with its address: listing the port's sockets reads
/// `/proc/net/udp`, whose cost grows with every UDP socket of the host (in
/// 4 KiB reads, each walking the table from its start), and must not hold
/// up sald's thread, which also moves every packet.
pub(super) async fn checked_program_socket(
    socket: OwnedFd,
) -> Result<(OwnedFd, SocketAddrV4), SocketRefusal> {
    let check = move || {
        let bound = program_socket_address(&socket)?;
        Ok((socket, bound))
    };
    (tokio::task::spawn_blocking(check).await).unwrap_or(Err(SocketRefusal::Unchecked))
}

/// Whether a socket bound at `bound` receives what is sent to `addr`: the
/// same port, and the same address unless it is bound to any.
pub(super) fn receives_at(bound: SocketAddrV4, addr: SocketAddrV4) -> bool {
    addr.port() == bound.port() && (bound.ip().is_unspecified() || addr.ip() == bound.ip())
}

/// Checks that `socket` lives in sald's network namespace: an address
/// and port name a socket only within one. Without this, a user could
/// make a namespace of their own (unprivileged user namespaces), give it
/// this host's address, bind there the port of another user's program
/// here, and pass that socket: its address would pass every other check.
/// Compared by the namespaces' cookies (`SO_NETNS_COOKIE`, Linux 5.14);
/// a kernel without them is refused, since nothing else proves it.
fn in_our_namespace(socket: &OwnedFd) -> Result<(), SocketRefusal> {
    let ours = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|_| SocketRefusal::OtherNamespace)?;
    match (netns_cookie(socket.as_fd()), netns_cookie(ours.as_fd())) {
        (Some(theirs), Some(ours)) if theirs == ours => Ok(()),
        _ => Err(SocketRefusal::OtherNamespace),
    }
}

/// Checks that no other user can take what sald would relay to the port
/// of `socket`, bound at `bound`: `socket` must not have `SO_REUSEADDR`
/// set (without it, its port admits no other user's socket; this holds
/// only while its program does not set the option again on its own copy
/// of the descriptor, which would let a later socket of another user that
/// also sets it take the port's datagrams: README), nor be bound to a
/// device (sockets on different devices share a port without any
/// option, and which one receives depends on the arriving interface),
/// and no socket of another user than
/// its owner's may already receive there (co-bound while both set
/// `SO_REUSEADDR`, one of them cleared since). Either way, that user's
/// program would be sent the relayed service's first packets: another's
/// clients' if the victim relays, or another's service's if the victim
/// is the one sharing the port. A socket bound to any address is checked
/// against every socket on its port, as the relay may go to any address.
fn unshared(socket: &OwnedFd, bound: SocketAddrV4) -> Result<(), SocketRefusal> {
    keeps_its_port(socket)?;
    let inode = (nix::sys::stat::fstat(socket.as_raw_fd()))
        .map_err(|_| SocketRefusal::Unchecked)?
        .st_ino;
    let sockets = udp_ports::bound_to(bound.port()).map_err(|_| SocketRefusal::Unchecked)?;
    let owner = (sockets.iter().find(|s| s.inode == inode))
        .ok_or(SocketRefusal::Unchecked)?
        .uid;
    // Inside a user namespace, every owner it does not map shows as the
    // overflow uid: those may be anyone, so never the same user.
    let same_user = |uid: u32| uid == owner && uid != OVERFLOW_UID;
    let shares = |other: &&UdpSocketEntry| {
        other.inode != inode
            && !same_user(other.uid)
            && (bound.ip().is_unspecified() || other.may_receive(*bound.ip()))
    };
    match sockets.iter().find(shares) {
        Some(other) => Err(SocketRefusal::Shared {
            port: bound.port(),
            uid: other.uid,
        }),
        None => Ok(()),
    }
}

/// Checks the options of `socket` with which another user's socket could
/// bind its port too (see [`unshared`]): neither `SO_REUSEADDR` nor a
/// device. Two system calls; what a relay's kept socket is checked with
/// while the relay lasts (`relay::watch_sockets`), since its program may
/// set either on its own copy at any time.
pub(super) fn keeps_its_port(socket: &OwnedFd) -> Result<(), SocketRefusal> {
    if getsockopt(socket, sockopt::ReuseAddr).unwrap_or(true) {
        return Err(SocketRefusal::ReuseAddr);
    }
    match SockRef::from(socket).device() {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(SocketRefusal::BoundToDevice),
        Err(_) => Err(SocketRefusal::Unchecked),
    }
}

/// Where `socket` receives, if it is a bound IPv4 UDP socket.
fn udp_address(socket: &OwnedFd) -> Result<SocketAddrV4, SocketRefusal> {
    // Fails (`ENOTSOCK`) on anything but a socket, before `SockRef`
    // takes it for one.
    let kind = getsockopt(socket, sockopt::SockType).map_err(|_| SocketRefusal::NotUdp)?;
    if kind != SockType::Datagram {
        return Err(SocketRefusal::NotUdp);
    }
    let socket = SockRef::from(socket);
    // A datagram socket of another protocol (an ICMP "ping" socket) has a
    // port of sorts too.
    if socket.protocol().ok().flatten() != Some(Protocol::UDP) {
        return Err(SocketRefusal::NotUdp);
    }
    let bound = (socket.local_addr().ok())
        .and_then(|addr| addr.as_socket_ipv4())
        .ok_or(SocketRefusal::NotUdp)?;
    if bound.port() == 0 {
        return Err(SocketRefusal::Unbound);
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};

    use socket2::{Domain, Socket, Type};

    use super::*;

    #[test]
    fn only_a_bound_ipv4_udp_socket_is_taken() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        assert_eq!(
            program_socket_address(&OwnedFd::from(udp)),
            Ok(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        );
        let unbound = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        assert_eq!(
            udp_address(&OwnedFd::from(unbound)),
            Err(SocketRefusal::Unbound)
        );
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(udp_address(&OwnedFd::from(tcp)), Err(SocketRefusal::NotUdp));
        let v6 = Socket::new(Domain::IPV6, Type::DGRAM, None).unwrap();
        let _ = v6.bind(&"[::1]:0".parse::<std::net::SocketAddr>().unwrap().into());
        assert_eq!(udp_address(&OwnedFd::from(v6)), Err(SocketRefusal::NotUdp));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(
            udp_address(&OwnedFd::from(file)),
            Err(SocketRefusal::NotUdp)
        );
    }

    #[test]
    fn a_socket_bound_to_a_device_is_refused() {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        if socket.bind_device(Some(b"lo")).is_err() {
            eprintln!("SKIPPED: SO_BINDTODEVICE not allowed here");
            return;
        }
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        assert_eq!(
            program_socket_address(&OwnedFd::from(socket)),
            Err(SocketRefusal::BoundToDevice)
        );
    }

    #[test]
    fn a_socket_receives_at_its_port_on_its_address_or_any() {
        let addr = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        assert!(receives_at(addr("10.0.0.1:4000"), addr("10.0.0.1:4000")));
        assert!(receives_at(addr("0.0.0.0:4000"), addr("10.0.0.1:4000")));
        assert!(!receives_at(addr("10.0.0.1:4000"), addr("10.0.0.2:4000")));
        assert!(!receives_at(addr("0.0.0.0:4000"), addr("10.0.0.1:4001")));
    }
}
