//! The engine's UDP socket, batched: each wake reads what waits with
//! `recvmmsg` (up to [`BATCH`] datagrams a call) and each flush writes what
//! the host produced with one `sendmmsg`, as sald's UDP link does (without
//! GSO/GRO, which connection setup's one-packet bursts never use). Public so
//! that sald's tests and in-process bench, which drive a host of their own
//! on the caller's thread, use the same link.
//!
//! The socket stays blocking, so that a send batch always goes out whole;
//! receives ask `MSG_DONTWAIT`, and the event loop waits in `ppoll`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};

/// Datagrams per `recvmmsg` or `sendmmsg` at most.
pub const BATCH: usize = 32;
/// Bytes of one datagram slot: a 1500-byte MTU's UDP payload fits.
const SLOT: usize = 2048;

/// A bound UDP socket with its receive and send batches.
pub struct UdpLink {
    socket: UdpSocket,
    rx: Vec<Vec<u8>>,
    rx_headers: MultiHeaders<SockaddrIn>,
    /// Sender and length of each datagram of the last receive batch.
    received: Vec<(SocketAddrV4, usize)>,
    tx: Vec<Vec<u8>>,
    tx_headers: MultiHeaders<SockaddrIn>,
    /// Destination and length of each datagram waiting in `tx`.
    queued: Vec<(SockaddrIn, usize)>,
}

// SAFETY: `MultiHeaders` is not `Send` only because its `mmsghdr`s hold raw
// pointers: to its own heap buffers (the address slots it owns and moves
// with it) and to the iovecs of the last call (set afresh by every
// `recvmmsg`/`sendmmsg` before the kernel reads them, never dereferenced
// otherwise). Nothing is shared with another thread, so moving the link to
// one (the engine's host moves between the threads that drive it, one at a
// time under a mutex) is sound.
unsafe impl Send for UdpLink {}

impl UdpLink {
    /// Binds `addr`.
    pub fn bind(addr: SocketAddrV4) -> io::Result<UdpLink> {
        let socket = UdpSocket::bind(addr)?;
        Ok(UdpLink {
            socket,
            rx: vec![vec![0; SLOT]; BATCH],
            rx_headers: MultiHeaders::preallocate(BATCH, None),
            received: Vec::with_capacity(BATCH),
            tx: vec![vec![0; SLOT]; BATCH],
            tx_headers: MultiHeaders::preallocate(BATCH, None),
            queued: Vec::with_capacity(BATCH),
        })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        match self.socket.local_addr()? {
            std::net::SocketAddr::V4(addr) => Ok(addr),
            std::net::SocketAddr::V6(_) => Err(io::Error::other("bound to IPv6")),
        }
    }

    /// The descriptor, to wait on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Reads the datagrams waiting, up to a batch, without waiting; returns
    /// how many (0 if none). Read them with [`UdpLink::datagram`].
    pub fn recv_batch(&mut self) -> io::Result<usize> {
        self.received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .rx
            .iter_mut()
            .map(|slot| [IoSliceMut::new(slot)])
            .collect();
        let results = recvmmsg(
            self.socket.as_raw_fd(),
            &mut self.rx_headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        );
        match results {
            Ok(results) => {
                for message in results {
                    if let Some(from) = message.address {
                        self.received.push((from.into(), message.bytes));
                    }
                }
            }
            Err(Errno::EAGAIN) => {}
            // Errors queued by ICMP about earlier sends end nothing.
            Err(Errno::ECONNREFUSED) => {}
            Err(errno) => return Err(errno.into()),
        }
        Ok(self.received.len())
    }

    /// Datagram `i` of the last receive batch: its sender and payload.
    pub fn datagram(&self, i: usize) -> (SocketAddrV4, &[u8]) {
        let (from, len) = self.received[i];
        (from, &self.rx[i][..len])
    }

    /// The next free send slot, if the batch is not full: write a datagram
    /// there, then [`UdpLink::queue`] it.
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        let next = self.queued.len();
        self.tx.get_mut(next).map(Vec::as_mut_slice)
    }

    /// Queues the datagram written in the slot last given, `len` bytes, to `to`.
    pub fn queue(&mut self, to: SocketAddrV4, len: usize) {
        self.queued.push((to.into(), len));
    }

    /// Sends every queued datagram with one `sendmmsg`; returns how many
    /// went out (a datagram the kernel refuses is dropped, as a full
    /// device queue would drop it).
    pub fn send_batch(&mut self) -> io::Result<usize> {
        if self.queued.is_empty() {
            return Ok(0);
        }
        let slices: Vec<[IoSlice<'_>; 1]> = (self.tx.iter().zip(&self.queued))
            .map(|(slot, (_, len))| [IoSlice::new(&slot[..*len])])
            .collect();
        let addrs: Vec<Option<SockaddrIn>> = self.queued.iter().map(|(to, _)| Some(*to)).collect();
        let sent = sendmmsg(
            self.socket.as_raw_fd(),
            &mut self.tx_headers,
            &slices,
            &addrs,
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        );
        self.queued.clear();
        match sent {
            Ok(results) => Ok(results.count()),
            Err(Errno::ECONNREFUSED) => Ok(0),
            Err(errno) => Err(errno.into()),
        }
    }
}
