//! The raw IPv4 sockets of native mode, beside the TUN device, for the two
//! kinds of packets a TUN cannot carry (measured on Linux 6.x):
//!
//! - **relayed packets**: a service router forwards a client's SYN or
//!   datagram with the client's address as IP source (as the reference
//!   router does, so that the server answers the client directly). Written
//!   into the TUN, such a packet is dropped by reverse-path filtering
//!   whenever `net.ipv4.conf.all.rp_filter` is not 0 (systemd sets 2), and
//!   the kernel forwards it out of the TUN as a router would, one more TTL.
//! - **broadcasts**: the kernel delivers a broadcast written into the TUN to
//!   the host itself and never sends it; and a broadcast protocol-144
//!   packet that arrives is delivered locally (`ip_forward` refuses
//!   non-unicast packets, so no policy rule can steer it into the TUN).
//!
//! [`RawSender`] is one `IPPROTO_RAW` socket (the header is ours, the kernel
//! only fills the checksum) with `SO_BROADCAST`: it sends whole IPv4 packets
//! through the host's own output path, which neither reverse-path filters
//! nor forwards (so the nftables fence, on the forward hook, never sees
//! them), and costs no TTL. [`BroadcastReceiver`] is one protocol-144 raw
//! socket per SAL interface (`SO_BINDTODEVICE`): raw sockets get a copy of
//! every protocol-144 packet delivered locally on that interface, which,
//! with the plumbing steering unicast into the TUN, is the broadcasts (and
//! our own, looped back; the core drops those). Both need `CAP_NET_RAW`.
//! UDP encapsulation has neither: relays leave from the router's socket and
//! nothing is broadcast.
//!
//! The receivers also ask for ICMP errors (`IP_RECVERR`): the kernel hands
//! raw sockets of a protocol the errors about any packet of that protocol
//! (`raw_icmp_error`), the TUN's too, if the error arrives on the
//! interface the socket is bound to. A host without a SAL (its sald gone)
//! answers a protocol-144 packet with "protocol unreachable", quoting it:
//! [`BroadcastReceiver::refusals`] reads those for the host, as the UDP
//! link reads "port unreachable". Without the receivers (no
//! `CAP_NET_RAW`), or for an error that arrives on an interface that is
//! not a SAL interface, a peer gone is noticed by the peer timeout only.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;

use nix::sys::socket::{setsockopt, sockopt};
use sal_inproc::udp::Unreachable;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};

use crate::plumbing::SAL_IPPROTO;
use crate::refusals::Refusals;

/// Sends whole IPv4 packets (our header, any source address, broadcast
/// destinations allowed). Non-blocking: a full socket buffer drops.
#[derive(Debug)]
pub struct RawSender {
    socket: Socket,
}

impl RawSender {
    /// Opens the socket (needs `CAP_NET_RAW`).
    pub fn open() -> io::Result<RawSender> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))?;
        socket.set_broadcast(true)?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        Ok(RawSender { socket })
    }

    /// Sends one IPv4 packet to the destination its header names.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        let dst = ipv4_destination(packet)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 packet"))?;
        self.socket
            .send_to(packet, &SockAddr::from(SocketAddrV4::new(dst, 0)))
    }
}

/// `IPPROTO_RAW`: a raw socket that sends packets with their own header
/// (`IP_HDRINCL` implied) and receives nothing.
const IPPROTO_RAW: i32 = 255;

/// The destination address of an IPv4 header.
fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    (packet[0] >> 4 == 4).then(|| Ipv4Addr::from(dst))
}

/// Receives the protocol-144 packets the kernel delivers locally on one
/// interface: broadcasts, since the plumbing steers unicast SAL packets for
/// our addresses into the TUN. Reads return whole IPv4 packets, TTL as on
/// the wire.
#[derive(Debug)]
pub struct BroadcastReceiver {
    socket: AsyncFd<Socket>,
    iface: String,
    /// Packets that came back refused, not taken yet (see the module
    /// docs).
    refused: Refusals,
}

impl BroadcastReceiver {
    /// Opens the socket, bound to interface `iface` (needs `CAP_NET_RAW`
    /// and a tokio runtime).
    pub fn open(iface: &str) -> io::Result<BroadcastReceiver> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(SAL_IPPROTO))),
        )?;
        socket.bind_device(Some(iface.as_bytes()))?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        // Best effort: without it, a flow whose peer's sald is gone waits
        // out the peer timeout.
        if let Err(error) = setsockopt(&socket.as_fd(), sockopt::Ipv4RecvErr, &true) {
            tracing::debug!(%error, "IP_RECVERR refused: refused packets are not seen");
        }
        // SAFETY: the `Socket` owns its descriptor, never closes or
        // replaces it while alive, and returns that same descriptor from
        // `as_raw_fd`; the `AsyncFd` takes ownership of the socket, so the
        // descriptor stays open for the whole registration.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(BroadcastReceiver {
            socket,
            iface: iface.to_owned(),
            refused: Refusals::default(),
        })
    }

    /// The interface it listens on.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Waits for and reads one packet; 0 (no packet is that short) when
    /// it met the kernel reporting a refused packet instead, whose reports
    /// it read from the error queue for [`BroadcastReceiver::take_refused`].
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.socket.readable().await?;
            match guard.try_io(|socket| recv(socket.get_ref(), buf)) {
                Ok(Err(error)) if crate::udp::is_report(&error) => {
                    self.read_refusals();
                    return Ok(0);
                }
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one packet if one is queued, else `WouldBlock` (or the error
    /// a refused packet made, its report kept as [`BroadcastReceiver::recv`]
    /// keeps it).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let received = recv(self.socket.get_ref(), buf);
        if received.as_ref().is_err_and(crate::udp::is_report) {
            self.read_refusals();
        }
        received
    }

    /// Waits until the kernel has errors queued (the socket polls
    /// `EPOLLERR`) and reads them.
    pub async fn refusals(&self) -> io::Result<()> {
        let mut guard = self.socket.ready(Interest::ERROR).await?;
        self.read_refusals();
        guard.clear_ready_matching(Ready::ERROR);
        Ok(())
    }

    /// The packets that came back refused since the last call: where each
    /// went (port 0) and its SAL packet's start, as quoted.
    pub fn take_refused(&self) -> Vec<Unreachable> {
        self.refused.take()
    }

    fn read_refusals(&self) {
        self.refused.read(self.socket.get_ref().as_fd());
    }
}

/// One `recv` into an initialised buffer.
fn recv(mut socket: &Socket, buf: &mut [u8]) -> io::Result<usize> {
    std::io::Read::read(&mut socket, buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_comes_from_the_header() {
        let mut header = [0u8; 20];
        header[0] = 0x45;
        header[16..20].copy_from_slice(&[10, 77, 1, 255]);
        assert_eq!(
            ipv4_destination(&header),
            Some(Ipv4Addr::new(10, 77, 1, 255))
        );
        header[0] = 0x60;
        assert_eq!(ipv4_destination(&header), None, "IPv6");
        assert_eq!(ipv4_destination(&header[..10]), None, "truncated");
    }
}
