//! Packet I/O for the daemon: the TUN device (native mode, whole IPv4
//! packets of protocol 144); the UDP encapsulation socket is
//! [`crate::udp::UdpLink`].
//!
//! [`TunDevice`] is the plain, blocking device (used as is by the
//! `tun-forwarder` baseline); [`TunLink`] wraps it for tokio with
//! `AsyncFd`, which is what sald's event loop uses. The TUN is opened
//! without packet information (`IFF_NO_PI`): a read returns exactly one IP
//! packet, a write takes exactly one.
//!
//! Reads return whatever the kernel routes into the device. With the
//! plumbing of [`crate::plumbing`] that is the protocol-144 packets for our
//! addresses; IPv6 is disabled on the device at creation so router
//! solicitations and MLD reports do not show up, but callers must still
//! ignore anything that is not an IPv4 packet of protocol 144.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::plumbing::{validate_ifname, PlumbingError, Rtnl};

/// Packets the kernel queues in the TUN device for sald to read (its
/// transmit queue). The default, 500, is about 6 ms of a 1 Gbit/s stream: a
/// scheduling hiccup longer than that drops segments, and smoltcp recovers a
/// second loss in one window only by its one-second timeout. 4096 holds a
/// full window of one flow (1 MiB, about 725 segments) several times over.
pub const TUN_QUEUE_LEN: u32 = 4096;

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The device name or MTU was refused before any system call.
    #[error("TUN device {name:?}: {reason}")]
    Invalid {
        /// The requested name.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// The kernel refused to create the device.
    #[error("creating TUN device {name}: {source} (needs CAP_NET_ADMIN and /dev/net/tun)")]
    Create {
        /// The requested name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The device exists but could not be configured (MTU, up, non-blocking).
    #[error("configuring TUN device {name}: {reason}")]
    Configure {
        /// The device name.
        name: String,
        /// What failed.
        reason: String,
    },
    /// The UDP socket could not be bound.
    #[error("binding UDP socket {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Async links must be created from inside a tokio runtime.
    #[error("no tokio runtime with I/O enabled: create links from inside the daemon's runtime")]
    NoRuntime,
    /// Registering the descriptor with the runtime failed.
    #[error("registering with the tokio reactor: {0}")]
    Reactor(#[source] io::Error),
}

/// The kernel routes the packets sald reads from and writes to the TUN like
/// an IP router: a packet for one of our addresses is forwarded into the
/// TUN, one written into it is forwarded out of it, each time one TTL
/// less. A SAL host must cost nothing in TTL where it originates or
/// receives a packet, and a service router exactly one, as an IP router
/// does (the core spends that one): so sald gives the kernel one more TTL
/// on the way out and hands the core the TTL the packet had on the wire.
///
/// The TTL to write into the TUN so that the packet leaves with `wire_ttl`
/// (at most 254 then: 255 leaves as 254).
pub fn tun_egress_ttl(wire_ttl: u8) -> u8 {
    wire_ttl.saturating_add(1)
}

/// The TTL a packet read from the TUN had on the wire (see
/// [`tun_egress_ttl`]).
pub fn tun_ingress_wire_ttl(tun_ttl: u8) -> u8 {
    tun_ttl.saturating_add(1)
}

/// Smallest MTU the kernel accepts for IPv4.
pub const MIN_MTU: u32 = 68;
/// The largest IPv4 packet.
pub const MAX_MTU: u32 = 65535;

/// A TUN device in blocking mode unless [`TunDevice::set_nonblocking`] is
/// called. The device disappears when this is dropped (it is not
/// persistent), and with it every route through it.
#[derive(Debug)]
pub struct TunDevice {
    iface: tun_tap::Iface,
    index: u32,
    mtu: u32,
}

impl TunDevice {
    /// Creates TUN device `name` (no packet info), disables IPv6 on it, sets
    /// its MTU and brings it up, all in the calling thread's network
    /// namespace.
    pub fn create(name: &str, mtu: u32) -> Result<TunDevice, LinkError> {
        validate_ifname(name).map_err(|e| LinkError::Invalid {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        if name.contains('%') {
            return Err(LinkError::Invalid {
                name: name.to_owned(),
                reason: "name templates (%d) are not supported: sald needs a fixed name".into(),
            });
        }
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(LinkError::Invalid {
                name: name.to_owned(),
                reason: format!("MTU {mtu} outside {MIN_MTU}..={MAX_MTU}"),
            });
        }
        let iface =
            tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tun).map_err(|source| {
                LinkError::Create {
                    name: name.to_owned(),
                    source,
                }
            })?;
        let configure = |e: PlumbingError| LinkError::Configure {
            name: name.to_owned(),
            reason: e.to_string(),
        };
        // IPv6 off before the link comes up: otherwise the kernel sends
        // router solicitations and MLD reports into the TUN.
        let v6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if let Err(e) = std::fs::write(&v6, "1") {
            tracing::debug!("{v6}: {e} (IPv6 unavailable?)");
        }
        let mut rtnl = Rtnl::new().map_err(configure)?;
        let index =
            rtnl.link_index(name)
                .map_err(configure)?
                .ok_or_else(|| LinkError::Configure {
                    name: name.to_owned(),
                    reason: "device vanished after creation".into(),
                })?;
        rtnl.set_link(index, Some(mtu), Some(TUN_QUEUE_LEN), true)
            .map_err(configure)?;
        Ok(TunDevice { iface, index, mtu })
    }

    /// The device name.
    pub fn name(&self) -> &str {
        self.iface.name()
    }

    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.index
    }

    /// The MTU the device was created with.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Switches `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        let fd = self.iface.as_raw_fd();
        let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let mut flags = OFlag::from_bits_truncate(flags);
        flags.set(OFlag::O_NONBLOCK, on);
        fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        Ok(())
    }

    /// Reads one packet (blocking unless non-blocking mode is on). A buffer
    /// shorter than the packet truncates it: use at least `mtu()` bytes.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.iface.recv(buf)
    }

    /// Writes one whole IP packet.
    pub fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        self.iface.send(pkt)
    }
}

impl AsRawFd for TunDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.iface.as_raw_fd()
    }
}

/// For poll(2) and friends (tun-tap only exposes the raw descriptor).
impl AsFd for TunDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.iface`, which closes it
        // only when dropped; the borrow is tied to `&self`, so it cannot
        // outlive the descriptor.
        unsafe { BorrowedFd::borrow_raw(self.iface.as_raw_fd()) }
    }
}

/// The TUN device driven by tokio: sald reads packets the kernel steered to
/// it and writes packets the SAL sends.
#[derive(Debug)]
pub struct TunLink {
    fd: AsyncFd<TunDevice>,
}

impl TunLink {
    /// Creates and configures TUN `name` (see [`TunDevice::create`]) and
    /// registers it with the current tokio runtime. Must be called inside a
    /// runtime with I/O enabled; returns [`LinkError::NoRuntime`] otherwise.
    pub fn open(name: &str, mtu: u32) -> Result<TunLink, LinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LinkError::NoRuntime);
        }
        let dev = TunDevice::create(name, mtu)?;
        Self::from_device(dev)
    }

    /// Wraps an already created device (switching it to non-blocking).
    pub fn from_device(dev: TunDevice) -> Result<TunLink, LinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LinkError::NoRuntime);
        }
        dev.set_nonblocking(true)
            .map_err(|e| LinkError::Configure {
                name: dev.name().to_owned(),
                reason: format!("O_NONBLOCK: {e}"),
            })?;
        // SAFETY: `TunDevice` owns its descriptor (a `File` inside
        // `tun_tap::Iface`), never closes or replaces it while alive, and its
        // `as_raw_fd()` always returns that same descriptor; the `AsyncFd`
        // takes ownership of the device, so the descriptor stays open for the
        // whole registration.
        let fd = unsafe {
            AsyncFd::register_with_interest(dev, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| LinkError::Reactor(e.into()))?;
        Ok(TunLink { fd })
    }

    /// The device.
    pub fn device(&self) -> &TunDevice {
        self.fd.get_ref()
    }

    /// The device name.
    pub fn name(&self) -> &str {
        self.device().name()
    }

    /// The MTU.
    pub fn mtu(&self) -> u32 {
        self.device().mtu()
    }

    /// Waits for and reads one packet.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| inner.get_ref().recv(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one packet if one is queued, else fails with `WouldBlock`: after
    /// `recv().await` returns, [`drain_batch`] uses it to take the rest of a
    /// batch without going back to the reactor.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device().recv(buf)
    }

    /// Writes one whole IP packet, waiting if the device is not writable.
    pub async fn send(&self, pkt: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|inner| inner.get_ref().send(pkt)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one packet without waiting (`WouldBlock` if it cannot).
    pub fn try_send(&self, pkt: &[u8]) -> io::Result<usize> {
        self.device().send(pkt)
    }
}

/// Hands `handle` the packet already in `buf[..first]`, then up to
/// `limit - 1` more that `next` reads into `buf` (it returns `None` when
/// nothing more is queued). Returns how many packets were handled.
///
/// A packet is read only when it will be handled: reading one more than the
/// batch takes would lose it, and on a busy link that is one lost segment
/// every batch (a one-second transport stall each time, as smoltcp recovers
/// a second loss in a window only by timeout).
pub fn drain_batch(
    buf: &mut [u8],
    first: usize,
    limit: usize,
    mut next: impl FnMut(&mut [u8]) -> Option<usize>,
    mut handle: impl FnMut(&[u8]),
) -> usize {
    let mut len = first;
    let mut handled = 0;
    loop {
        handle(&buf[..len.min(buf.len())]);
        handled += 1;
        if handled >= limit {
            return handled;
        }
        match next(buf) {
            Some(n) => len = n,
            None => return handled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names_and_mtus_without_syscalls() {
        assert!(matches!(
            TunDevice::create("a-name-that-is-too-long", 1500),
            Err(LinkError::Invalid { .. })
        ));
        assert!(matches!(
            TunDevice::create("sal%d", 1500),
            Err(LinkError::Invalid { .. })
        ));
        assert!(matches!(
            TunDevice::create("sal0", 10),
            Err(LinkError::Invalid { .. })
        ));
        assert!(matches!(
            TunDevice::create("sal0", 70000),
            Err(LinkError::Invalid { .. })
        ));
    }

    #[test]
    fn batches_handle_every_packet_once_in_order() {
        // 200 queued packets, each carrying its number; batches of 64.
        let mut queue: std::collections::VecDeque<u8> = (0..200u8).collect();
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        let mut buf = [0u8; 4];
        while let Some(first) = queue.pop_front() {
            buf[0] = first;
            let next = |b: &mut [u8]| {
                let p = queue.pop_front()?;
                b[0] = p;
                Some(1)
            };
            sizes.push(drain_batch(&mut buf, 1, 64, next, |p| seen.push(p[0])));
        }
        assert_eq!(seen, (0..200u8).collect::<Vec<_>>());
        assert_eq!(sizes, [64, 64, 64, 8]);
    }

    #[test]
    fn async_links_need_a_runtime() {
        assert!(matches!(
            TunLink::open("sal0", 1500),
            Err(LinkError::NoRuntime)
        ));
    }
}
