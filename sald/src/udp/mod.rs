//! UDP encapsulation (WIRE.md "Carriage"): the SAL packet is the UDP
//! payload. Needs no privileges and crosses NATs.
//!
//! The link moves datagrams in batches, which is what makes it faster than
//! the TUN device (one system call per packet each way): a send is one
//! `sendmmsg` of messages that the kernel cuts into segments itself (UDP
//! GSO), and a receive is one `recvmmsg` of messages in which the kernel
//! coalesced consecutive datagrams of one sender (UDP GRO). Where the
//! kernel offers neither, the batches are of single datagrams. The socket
//! buffers are made large (past the system maximum where the process may),
//! so that a burst waits in the kernel instead of being dropped.
//!
//! - [`batch`]: the batches, on plain byte buffers (no system calls);
//! - `sys`: the system calls and socket options (all of the unsafe code);
//! - [`UdpLink`]: the socket, for tokio.

pub mod batch;
mod sys;

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub use batch::{ReceivedDatagram, RxBatch, TxBatch};
/// Socket buffers past the system's maximum, for sald's other sockets too.
pub(crate) use sys::{set_buffer, Buffer};
pub use sys::{MAX_PAYLOAD, MAX_SEGMENTS, RECV_BATCH, SEND_BATCH};

use crate::link::LinkError;

/// Socket buffer size asked for, each way. 8 MiB holds several windows of
/// a fast flow; unprivileged, the kernel caps it at `net.core.rmem_max` /
/// `wmem_max`.
pub const SOCKET_BUFFER: usize = 8 << 20;
/// Bytes a send batch keeps at most while the socket cannot take them;
/// datagrams beyond are dropped (and counted), as a full device queue would.
pub const TX_BACKLOG: usize = 8 << 20;
/// Receive buffer per message with GRO: the kernel coalesces at most 64
/// datagrams and 64 KiB.
const GRO_SLOT: usize = 1 << 16;
/// Receive buffer per message without GRO: one datagram of at most this
/// size (larger ones are cut and dropped).
const PLAIN_SLOT: usize = 9216;

/// What the kernel granted the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// Sends are cut into segments by the kernel (UDP GSO).
    pub gso: bool,
    /// Receives coalesce datagrams (UDP GRO).
    pub gro: bool,
    /// Receive buffer in bytes, as the kernel reports it.
    pub recv_buffer: usize,
    /// Send buffer in bytes, as the kernel reports it.
    pub send_buffer: usize,
}

/// What one [`UdpLink::send_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams given up on (the kernel refused them).
    pub dropped: usize,
    /// The socket is full: what is left waits in the batch.
    pub blocked: bool,
}

/// The UDP socket of the link, registered with tokio. See the module docs.
#[derive(Debug)]
pub struct UdpLink {
    fd: AsyncFd<std::net::UdpSocket>,
    local: SocketAddrV4,
    /// Cleared for good if a send with GSO fails with `EIO` (a device
    /// without checksum offload).
    gso: AtomicBool,
    gro: bool,
    /// Bound to the unspecified address: each datagram's source address is
    /// chosen per send (`IP_PKTINFO`) and each one's destination is reported.
    any_address: bool,
    buffers: (usize, usize),
}

impl UdpLink {
    /// Binds `addr` (`--udp ADDR:PORT`) and turns on what the kernel
    /// offers (GSO and GRO only if `offload`). Must be called inside a
    /// tokio runtime with I/O enabled.
    pub fn bind(addr: SocketAddrV4, offload: bool) -> Result<UdpLink, LinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LinkError::NoRuntime);
        }
        let bind_error = |source| LinkError::Bind {
            addr: SocketAddr::V4(addr),
            source,
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
        socket.set_nonblocking(true).map_err(bind_error)?;
        let local = match socket.local_addr().map_err(bind_error)? {
            SocketAddr::V4(local) => local,
            SocketAddr::V6(_) => addr,
        };
        let fd = socket.as_raw_fd();
        sys::enable_pktinfo(fd).map_err(bind_error)?;
        let recv_buffer = sys::set_buffer(fd, sys::Buffer::Receive, SOCKET_BUFFER).unwrap_or(0);
        let send_buffer = sys::set_buffer(fd, sys::Buffer::Send, SOCKET_BUFFER).unwrap_or(0);
        let gso = offload && sys::probe_gso(fd);
        let gro = offload && sys::enable_gro(fd);
        // SAFETY: the `UdpSocket` owns its descriptor and never closes or
        // replaces it while alive; the `AsyncFd` takes ownership of the
        // socket, so the descriptor stays open for the whole registration.
        let fd = unsafe {
            AsyncFd::register_with_interest(socket, Interest::READABLE | Interest::WRITABLE)
        }
        .map_err(|e| LinkError::Reactor(e.into()))?;
        Ok(UdpLink {
            fd,
            local,
            gso: AtomicBool::new(gso),
            gro,
            any_address: local.ip().is_unspecified(),
            buffers: (recv_buffer, send_buffer),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// What the kernel granted.
    pub fn offloads(&self) -> Offloads {
        Offloads {
            gso: self.gso.load(Ordering::Relaxed),
            gro: self.gro,
            recv_buffer: self.buffers.0,
            send_buffer: self.buffers.1,
        }
    }

    /// An empty send batch that coalesces as this socket allows.
    pub fn tx_batch(&self) -> TxBatch {
        let segments = if self.gso.load(Ordering::Relaxed) {
            MAX_SEGMENTS
        } else {
            1
        };
        TxBatch::new(segments, TX_BACKLOG)
    }

    /// Receive buffers sized for this socket.
    pub fn rx_batch(&self) -> RxBatch {
        RxBatch::new(if self.gro { GRO_SLOT } else { PLAIN_SLOT })
    }

    /// Waits until datagrams arrive and reads a batch of them into `batch`
    /// (replacing what it held); returns how many messages arrived.
    pub async fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|socket| Self::recv_into(socket.get_ref(), batch)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads a batch if datagrams are queued, else fails with `WouldBlock`.
    pub fn try_recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        Self::recv_into(self.fd.get_ref(), batch)
    }

    fn recv_into(socket: &std::net::UdpSocket, batch: &mut RxBatch) -> io::Result<usize> {
        batch.count = 0;
        let (buffer, slot, meta) = batch.buffers();
        let count = sys::recv(socket.as_raw_fd(), buffer, slot, meta)?;
        batch.count = count;
        Ok(count)
    }

    /// Sends what `batch` holds, as far as the socket takes it, without
    /// waiting: what is sent or refused leaves the batch, the rest stays
    /// (then [`SendOutcome::blocked`]; call again after
    /// [`UdpLink::writable`]).
    pub fn send_batch(&self, batch: &mut TxBatch) -> SendOutcome {
        let fd = self.fd.get_ref().as_raw_fd();
        let mut outcome = SendOutcome::default();
        while !batch.is_empty() {
            let result = sys::send(fd, &batch.next_call(self.any_address));
            match result {
                Ok(count) => outcome.sent += batch.consume(count),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    outcome.blocked = true;
                    break;
                }
                // A device that cannot checksum segments refuses GSO with
                // EIO; EINVAL refuses one message (a segment over the MTU,
                // say): send its datagrams one by one.
                Err(error)
                    if batch.first_is_segmented()
                        && error.raw_os_error() == Some(nix::libc::EIO) =>
                {
                    tracing::info!(
                        "UDP GSO refused by the kernel ({error}); sending datagrams one by one"
                    );
                    self.gso.store(false, Ordering::Relaxed);
                    batch.stop_coalescing();
                }
                Err(error)
                    if batch.first_is_segmented()
                        && error.raw_os_error() == Some(nix::libc::EINVAL) =>
                {
                    batch.split_first();
                }
                Err(error) => {
                    tracing::debug!(%error, "UDP send refused");
                    outcome.dropped += batch.drop_first();
                }
            }
        }
        outcome
    }

    /// Waits until the socket may take more after a blocked send. Sends
    /// tried after this returns see any room that opened meanwhile.
    pub async fn writable(&self) -> io::Result<()> {
        let mut guard = self.fd.writable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// The address a datagram was received on: its destination if the
    /// socket reports it, else the bound address.
    pub fn arrival(&self, datagram: &ReceivedDatagram<'_>) -> SocketAddrV4 {
        let ip = datagram.dst.unwrap_or(*self.local.ip());
        SocketAddrV4::new(ip, self.local.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(offload: bool) -> (UdpLink, UdpLink) {
        let a = UdpLink::bind("127.0.0.1:0".parse().unwrap(), offload).unwrap();
        let b = UdpLink::bind("127.0.0.1:0".parse().unwrap(), offload).unwrap();
        (a, b)
    }

    #[test]
    fn binding_needs_a_runtime() {
        assert!(matches!(
            UdpLink::bind("127.0.0.1:0".parse().unwrap(), true),
            Err(LinkError::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order_with_offloads() {
        let (a, b) = pair(true);
        assert!(
            a.offloads().gso && a.offloads().gro,
            "this kernel offers both"
        );
        let messages = a_batch_arrives_whole_and_in_order(a, b).await;
        // Sent as a few GSO messages, received as a few GRO ones.
        assert!(messages <= 20, "{messages} messages for 200 datagrams");
    }

    #[tokio::test]
    async fn a_batch_arrives_whole_and_in_order_without_offloads() {
        let (a, b) = pair(false);
        assert!(!a.offloads().gso && !a.offloads().gro);
        let messages = a_batch_arrives_whole_and_in_order(a, b).await;
        assert_eq!(messages, 200);
    }

    /// Sends 200 datagrams in one batch; returns how many messages the
    /// receiver read them in.
    async fn a_batch_arrives_whole_and_in_order(a: UdpLink, b: UdpLink) -> usize {
        let mut tx = a.tx_batch();
        let datagrams: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                // Runs of equal sizes (coalesced) broken by odd ones.
                let len = if i % 50 == 49 { 300 } else { 1200 };
                let mut d = vec![(i % 251) as u8; len];
                d[..4].copy_from_slice(&i.to_be_bytes());
                d
            })
            .collect();
        for d in &datagrams {
            assert!(tx.push(None, b.local_addr(), d));
        }
        let outcome = a.send_batch(&mut tx);
        assert_eq!(outcome.sent, 200, "{outcome:?}");
        assert!(tx.is_empty());
        let mut rx = b.rx_batch();
        let mut got = Vec::new();
        let mut messages = 0;
        while got.len() < datagrams.len() {
            messages +=
                tokio::time::timeout(std::time::Duration::from_secs(5), b.recv_batch(&mut rx))
                    .await
                    .expect("datagrams arrive")
                    .unwrap();
            for d in rx.datagrams() {
                assert_eq!(d.src, a.local_addr());
                assert_eq!(b.arrival(&d), b.local_addr());
                got.push(d.payload.to_vec());
            }
        }
        assert_eq!(got, datagrams);
        assert!(matches!(
            b.try_recv_batch(&mut rx),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        ));
        messages
    }

    #[tokio::test]
    async fn the_kernel_grants_large_buffers_and_reports_offloads() {
        let (a, _b) = pair(true);
        let offloads = a.offloads();
        // Whatever was granted, the buffers are at least the defaults.
        assert!(offloads.recv_buffer >= 200_000, "{offloads:?}");
        assert!(offloads.send_buffer >= 200_000, "{offloads:?}");
    }

    #[tokio::test]
    async fn refused_datagrams_are_dropped_and_counted_not_retried() {
        let (a, _b) = pair(true);
        let mut tx = a.tx_batch();
        // Port 0 is not a destination: the kernel refuses it.
        tx.push(None, "127.0.0.1:0".parse().unwrap(), b"nowhere");
        tx.push(None, a.local_addr(), b"somewhere");
        let outcome = a.send_batch(&mut tx);
        assert_eq!((outcome.sent, outcome.dropped), (1, 1), "{outcome:?}");
        assert!(tx.is_empty());
    }
}
