//! The engine's UDP socket, batched: each wake reads what waits with
//! `recvmmsg` (up to [`BATCH`] datagrams a call) and each flush writes what
//! the host produced with one `sendmmsg`, as sald's UDP link does (without
//! GSO/GRO, which connection setup's one-packet bursts never use). Public so
//! that sald's tests and in-process bench, which drive a host of their own
//! on the caller's thread, use the same link.
//!
//! The socket stays blocking, so that a send batch always goes out whole;
//! receives ask `MSG_DONTWAIT`, and the event loop waits in `ppoll`.
//!
//! **Datagrams that come back.** The socket asks for ICMP errors
//! (`IP_RECVERR`): a datagram sent to a port where nobody listens (a
//! program gone) comes back as "port unreachable", quoting its start,
//! which [`UdpLink::take_unreachable`] hands on (the connect whose SYN
//! it was goes through sald, or fails, see `Core::report_unreachable`
//! and `Host::handle_unreachable`). The kernel
//! reports such an error once, on the next send or receive, and queues it
//! on the socket's error queue: the link reads the queue then, and repeats
//! the call that reported it, so no datagram is lost to the report. A
//! `sendmmsg` that stops short may have spent a report without saying so
//! (Linux returns the count sent): the queue is read then too, since an
//! entry left in it would keep the socket polling ready (`POLLERR`) with
//! nothing to report, and the engine's waiters spinning.
//!
//! **Sending after the lock.** The engine sends the last batch of a locked
//! section after letting its lock go ([`UdpLink::fill_from`],
//! [`UdpLink::take_queued`] into the thread's [`Outbox`], sent by
//! [`Outbox::send`]): over a veth pair or loopback a `sendmmsg` runs the
//! receiver's side of each packet too (its softirq, in the sender's
//! context), which made it most of a locked section's time, and the
//! threads that wanted the lock meanwhile slept on it.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, recvmsg, sendmmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned,
    MsgFlags, MultiHeaders, SockaddrIn,
};
use sal::proto::Host;
use sal::Locator;

/// Datagrams per `recvmmsg` or `sendmmsg` at most.
pub const BATCH: usize = 32;
/// Bytes of one datagram slot: a 1500-byte MTU's UDP payload fits.
const SLOT: usize = 2048;
/// Receive buffer asked for: room for a burst of connection setups (or a
/// flood of forged SYNs, which the host answers with cookies) without the
/// kernel dropping real packets while the engine's threads are busy.
/// Granted past `net.core.rmem_max` only to a process with
/// `CAP_NET_ADMIN`; otherwise as far as that maximum allows.
const RECEIVE_BUFFER: usize = 4 << 20;

/// A bound UDP socket with its receive and send batches.
pub struct UdpLink {
    socket: UdpSocket,
    rx: Vec<Vec<u8>>,
    rx_headers: MultiHeaders<SockaddrIn>,
    /// Sender, slot and length of each datagram of the last receive batch.
    received: Vec<(SocketAddrV4, usize, usize)>,
    tx: Vec<Vec<u8>>,
    tx_headers: MultiHeaders<SockaddrIn>,
    /// Destination and length of each datagram waiting in `tx`.
    queued: Vec<(SockaddrIn, usize)>,
    /// Datagrams that came back as port unreachable, read from the error
    /// queue and not taken yet.
    unreachable: Vec<Unreachable>,
}

/// A datagram that came back as port unreachable: where it went, and its
/// start (as much as the ICMP error quoted).
pub type Unreachable = (SocketAddrV4, Vec<u8>);

/// Whether a send or receive that failed with `errno` says the socket
/// cannot work at all. Other errors (but `EAGAIN` and `EINTR`) may be the
/// kernel reporting an ICMP error about an earlier datagram, or one
/// datagram's own refusal: worth reading the error queue
/// ([`read_errors`]) and trying again.
pub fn is_fatal(errno: Errno) -> bool {
    matches!(
        errno,
        Errno::EBADF | Errno::ENOTSOCK | Errno::EFAULT | Errno::EINVAL
    )
}

/// Whether `errno` is a refusal an ICMP error made (port or protocol
/// unreachable): never a datagram's own error on an unconnected socket,
/// so a report even when another call read the queue first.
pub fn is_refusal(errno: Errno) -> bool {
    matches!(errno, Errno::ECONNREFUSED | Errno::ENOPROTOOPT)
}

/// Times a send or receive is tried again after reading the errors
/// reported instead of it (each try may meet a new one).
pub const REPORT_RETRIES: usize = 3;

/// ICMP's "destination unreachable", code "port unreachable"
/// (`SO_EE_ORIGIN_ICMP`, RFC 792).
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
/// Code "protocol unreachable": what a host without a SAL answers a packet
/// of native carriage (IPv4 protocol 144) with, as a raw socket reads it.
const ICMP_PROT_UNREACH: u8 = 2;

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
        let socket = UdpSocket::from(crate::descriptors::own(UdpSocket::bind(addr)?.into()));
        // Best effort: a smaller buffer only drops more under bursts.
        if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            let _ = setsockopt(&socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
        }
        // Best effort too: without it, a SYN to a port gone waits out its
        // retransmissions.
        let _ = setsockopt(&socket, sockopt::Ipv4RecvErr, &true);
        Ok(UdpLink {
            socket,
            rx: vec![vec![0; SLOT]; BATCH],
            rx_headers: MultiHeaders::preallocate(BATCH, None),
            received: Vec::with_capacity(BATCH),
            tx: vec![vec![0; SLOT]; BATCH],
            tx_headers: MultiHeaders::preallocate(BATCH, None),
            queued: Vec::with_capacity(BATCH),
            unreachable: Vec::new(),
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
        // An error about an earlier datagram is reported once, instead of
        // what waits: read the error queue, then the datagrams (again
        // after another error, a few times at most).
        for _ in 0..REPORT_RETRIES {
            let mut slots = self.rx.iter_mut();
            let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
                [IoSliceMut::new(
                    slots.next().expect("a slot per datagram of a batch"),
                )]
            });
            let results = recvmmsg(
                self.socket.as_raw_fd(),
                &mut self.rx_headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            );
            match results {
                Ok(results) => {
                    for (slot, message) in results.enumerate() {
                        // A datagram longer than a slot arrives cut: no SAL
                        // packet is (the MTU bounds them), so it is dropped.
                        let cut = message.flags.contains(MsgFlags::MSG_TRUNC);
                        if let (Some(from), false) = (message.address, cut) {
                            self.received.push((from.into(), slot, message.bytes));
                        }
                    }
                    break;
                }
                Err(Errno::EAGAIN | Errno::EINTR) => break,
                Err(errno) if is_fatal(errno) => return Err(errno.into()),
                Err(_) => {
                    self.read_errors();
                }
            }
        }
        Ok(self.received.len())
    }

    /// Reads the socket's error queue (see [`read_errors`]).
    fn read_errors(&mut self) -> usize {
        read_errors(self.socket.as_fd(), &mut self.unreachable)
    }

    /// The datagrams that came back as port unreachable since the last
    /// call: where each went, and its start (as much as the ICMP error
    /// quoted). Empty, and no allocation, when none did.
    pub fn take_unreachable(&mut self) -> Vec<Unreachable> {
        std::mem::take(&mut self.unreachable)
    }

    /// Adds reports read elsewhere ([`Outbox::send`]) to those
    /// [`UdpLink::take_unreachable`] hands on (at most a batch kept).
    pub fn report(&mut self, unreachable: Vec<Unreachable>) {
        let room = BATCH.saturating_sub(self.unreachable.len());
        self.unreachable.extend(unreachable.into_iter().take(room));
    }

    /// Datagram `i` of the last receive batch: its sender and payload.
    pub fn datagram(&self, i: usize) -> (SocketAddrV4, &[u8]) {
        let (from, slot, len) = self.received[i];
        (from, &self.rx[slot][..len])
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

    /// Sends everything `host` has to send at `now`, in batches, written
    /// straight into the send slots. Returns how many datagrams were for a
    /// native locator, which a UDP link cannot carry (dropped).
    pub fn send_from(&mut self, host: &mut Host, now: sal::time::Instant) -> io::Result<u64> {
        let unsendable = self.fill_from(host, now)?;
        self.send_batch()?;
        Ok(unsendable)
    }

    /// As [`UdpLink::send_from`], but the last batch (not full) stays
    /// queued, for [`UdpLink::take_queued`] or [`UdpLink::send_batch`].
    pub fn fill_from(&mut self, host: &mut Host, now: sal::time::Instant) -> io::Result<u64> {
        let mut unsendable = 0;
        loop {
            let Some(slot) = self.slot() else {
                self.send_batch()?;
                continue;
            };
            let Some(transmit) = host.poll_transmit(now, slot) else {
                break;
            };
            match transmit.dst {
                Locator::Udp(to) => self.queue(to, transmit.len),
                Locator::Ipv4(_) => unsendable += 1,
            }
        }
        Ok(unsendable)
    }

    /// Moves the queued datagrams into `outbox` (a copy of each), to be
    /// sent there.
    pub fn take_queued(&mut self, outbox: &mut Outbox) {
        for ((to, len), slot) in self.queued.iter().zip(&self.tx) {
            outbox.push(*to, &slot[..*len]);
        }
        self.queued.clear();
    }

    /// Sends every queued datagram (see [`send_each`]); returns how many
    /// went out. Only a socket that can send nothing at all (closed, not
    /// a socket) is an error.
    pub fn send_batch(&mut self) -> io::Result<usize> {
        let mut datagrams = [(
            SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            &[][..],
        ); BATCH];
        for (datagram, ((to, len), slot)) in
            datagrams.iter_mut().zip(self.queued.iter().zip(&self.tx))
        {
            *datagram = (*to, &slot[..*len]);
        }
        let count = self.queued.len();
        let result = send_each(
            self.socket.as_fd(),
            &mut self.tx_headers,
            &datagrams[..count],
            &mut self.unreachable,
        );
        self.queued.clear();
        result
    }
}

/// Sends each datagram (at most [`BATCH`]) to its destination, in as few
/// `sendmmsg` calls as the kernel takes them; returns how many went out.
/// A datagram the kernel refuses (an unreachable or filtered
/// destination, no buffer) is dropped, as a full device queue would drop
/// it, and the rest still go: `sendmmsg` stops at the first refusal. A
/// refusal that only reports an error about an earlier datagram is read
/// from the error queue (into `unreachable`) and the datagram tried again.
/// Only a socket that can send nothing at all (closed, not a socket) is
/// an error.
fn send_each(
    socket: BorrowedFd<'_>,
    headers: &mut MultiHeaders<SockaddrIn>,
    datagrams: &[(SockaddrIn, &[u8])],
    unreachable: &mut Vec<Unreachable>,
) -> io::Result<usize> {
    let mut start = 0;
    let mut sent = 0;
    // Times the datagram at `start` failed: perhaps only to report an
    // error about an earlier one (read then), so it is tried again.
    let mut failures = 0;
    while start < datagrams.len() {
        let pending = &datagrams[start..];
        let mut slices = [[IoSlice::new(&[])]; BATCH];
        let mut addrs = [None; BATCH];
        for (i, (to, bytes)) in pending.iter().enumerate() {
            slices[i] = [IoSlice::new(bytes)];
            addrs[i] = Some(*to);
        }
        let outcome = sendmmsg(
            socket.as_raw_fd(),
            headers,
            &slices[..pending.len()],
            &addrs[..pending.len()],
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        )
        .map(Iterator::count);
        match outcome {
            Ok(0) => start += 1,
            Ok(count) => {
                sent += count;
                start += count;
                failures = 0;
                // Stopped short: the next datagram failed, and Linux
                // keeps that error to itself once some went. If it was
                // the report of an earlier datagram's, the report is
                // spent and the error queue still holds it.
                if start < datagrams.len() {
                    read_errors(socket, unreachable);
                }
            }
            Err(Errno::EINTR) => {}
            Err(errno @ (Errno::EBADF | Errno::ENOTSOCK | Errno::EFAULT)) => {
                return Err(errno.into())
            }
            Err(errno) => {
                failures += 1;
                // Refused itself (nothing was reported instead), or too
                // often: this datagram is dropped; the next may go. A
                // refused connection is never a datagram's own error on
                // an unconnected socket, always a report, which another
                // thread may have read from the queue meanwhile (the
                // engine sends without its lock): tried again all the same.
                let read = read_errors(socket, unreachable);
                let reported = read > 0 || is_refusal(errno);
                if !reported || failures >= REPORT_RETRIES {
                    start += 1;
                    failures = 0;
                }
            }
        }
    }
    Ok(sent)
}

/// Reads `socket`'s error queue (after the kernel reported an error, or
/// may have: see [`send_each`]) to the end, since a queue left with
/// anything in it keeps the socket polling as ready (`POLLERR`) while no
/// call reports anything more. Keeps the datagrams that came back as port
/// unreachable (or protocol unreachable, on a raw socket of native
/// carriage) in `unreachable`, at most a batch of them until they are
/// taken; returns how many errors it read. Public for sald's UDP link and
/// raw sockets, which ask for the same reports (`IP_RECVERR`).
pub fn read_errors(socket: BorrowedFd<'_>, unreachable: &mut Vec<Unreachable>) -> usize {
    let mut start = [0u8; SLOT];
    let mut read = 0;
    loop {
        // Room for the packet information too, which a socket that asks
        // for it (sald's, `IP_PKTINFO`) gets first: without it, the error
        // itself would be cut off.
        let mut space =
            nix::cmsg_space!(libc::in_pktinfo, libc::sock_extended_err, libc::sockaddr_in);
        let mut iov = [IoSliceMut::new(&mut start)];
        let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
        let message = recvmsg::<SockaddrIn>(socket.as_raw_fd(), &mut iov, Some(&mut space), flags);
        let message = match message {
            Ok(message) => message,
            Err(Errno::EINTR) => continue,
            // EAGAIN: the queue is empty.
            Err(_) => return read,
        };
        read += 1;
        let port_unreachable = message.cmsgs().is_ok_and(|mut cmsgs| {
            cmsgs.any(|cmsg| {
                matches!(cmsg, ControlMessageOwned::Ipv4RecvErr(error, _)
                    if error.ee_origin == libc::SO_EE_ORIGIN_ICMP
                        && error.ee_type == ICMP_DEST_UNREACH
                        && matches!(error.ee_code, ICMP_PORT_UNREACH | ICMP_PROT_UNREACH))
            })
        });
        let (to, len) = (message.address, message.bytes);
        if let (true, Some(to)) = (port_unreachable, to) {
            if unreachable.len() < BATCH {
                unreachable.push((to.into(), start[..len].to_vec()));
            }
        }
    }
}

/// The datagrams of one locked section, taken out of the link
/// ([`UdpLink::take_queued`]) so that the thread sends them after letting
/// the engine's lock go. One per thread, reused: it keeps the room its
/// largest batch needed, up to [`Outbox::KEEP`] bytes.
#[derive(Default)]
pub struct Outbox {
    /// The datagrams, one after the other.
    bytes: Vec<u8>,
    /// Destination, start in `bytes` and length of each.
    queued: Vec<(SockaddrIn, usize, usize)>,
    /// Made at the first send (a thread that never sends allocates nothing).
    headers: Option<MultiHeaders<SockaddrIn>>,
}

impl Outbox {
    /// Bytes of room kept between sends: a full batch's, so that a bulk
    /// transfer does not allocate at each.
    const KEEP: usize = BATCH * SLOT;

    fn push(&mut self, to: SockaddrIn, datagram: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(datagram);
        self.queued.push((to, start, datagram.len()));
    }

    /// Whether no datagram waits.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends every datagram on `socket` (the link's, or a duplicate of
    /// it) as [`UdpLink::send_batch`] does, and empties the outbox.
    /// Returns the datagrams that came back as port unreachable, which the
    /// kernel reported on these sends instead of at the link's next call:
    /// for the host ([`UdpLink::report`]). Errors are not returned: the
    /// datagrams of a socket that can send nothing are dropped, and the
    /// link's next call on the same socket reports that.
    pub fn send(&mut self, socket: BorrowedFd<'_>) -> Vec<Unreachable> {
        let mut unreachable = Vec::new();
        let headers = self
            .headers
            .get_or_insert_with(|| MultiHeaders::preallocate(BATCH, None));
        for chunk in self.queued.chunks(BATCH) {
            let mut datagrams = [(
                SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
                &[][..],
            ); BATCH];
            for (datagram, (to, at, len)) in datagrams.iter_mut().zip(chunk) {
                *datagram = (*to, &self.bytes[*at..*at + *len]);
            }
            let sent = send_each(socket, headers, &datagrams[..chunk.len()], &mut unreachable);
            if let Err(error) = sent {
                tracing::warn!(%error, "sending the engine's datagrams failed");
                break;
            }
        }
        self.queued.clear();
        self.bytes.clear();
        self.bytes.shrink_to(Self::KEEP);
        unreachable
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    fn queue(link: &mut UdpLink, to: SocketAddrV4, payload: &[u8]) {
        let slot = link.slot().expect("room in the batch");
        slot[..payload.len()].copy_from_slice(payload);
        link.queue(to, payload.len());
    }

    /// `sendmmsg` stops at the first datagram the kernel refuses (here one
    /// to the limited broadcast address, without `SO_BROADCAST`): that one
    /// is dropped, those after it still go.
    #[test]
    fn a_refused_datagram_does_not_take_the_rest_of_the_batch_with_it() {
        let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let to = match receiver.local_addr().unwrap() {
            std::net::SocketAddr::V4(addr) => addr,
            std::net::SocketAddr::V6(_) => unreachable!("bound to IPv4"),
        };
        let mut link = UdpLink::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        queue(&mut link, to, b"first");
        queue(
            &mut link,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 9),
            b"refused",
        );
        queue(&mut link, to, b"third");
        assert_eq!(link.send_batch().unwrap(), 2);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        for _ in 0..2 {
            let n = receiver.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        assert_eq!(got, [b"first".to_vec(), b"third".to_vec()]);
        assert_eq!(link.send_batch().unwrap(), 0, "the batch is empty after");
    }

    fn addr(socket: &UdpSocket) -> SocketAddrV4 {
        match socket.local_addr().unwrap() {
            std::net::SocketAddr::V4(addr) => addr,
            std::net::SocketAddr::V6(_) => unreachable!("bound to IPv4"),
        }
    }

    /// A receiver (reads time out after 2 s), the address of a port
    /// nobody holds, and a link, all on loopback.
    fn receiver_closed_and_link() -> (UdpSocket, SocketAddrV4, UdpLink) {
        let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let closed = addr(&UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
        let link = UdpLink::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        (receiver, closed, link)
    }

    /// A datagram to a port nobody holds comes back (ICMP port
    /// unreachable, at once on loopback) and is handed on with its start;
    /// the send or receive that the kernel reports the error on still does
    /// its own work.
    #[test]
    fn a_datagram_sent_back_unreachable_is_reported_and_costs_the_next_nothing() {
        let (receiver, closed, mut link) = receiver_closed_and_link();
        let wait_for_icmp = || std::thread::sleep(Duration::from_millis(20));
        // Reported on the next send.
        queue(&mut link, closed, b"to nobody");
        assert_eq!(link.send_batch().unwrap(), 1);
        wait_for_icmp();
        queue(&mut link, addr(&receiver), b"next");
        assert_eq!(link.send_batch().unwrap(), 1, "the next datagram went");
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"next");
        assert_eq!(link.take_unreachable(), [(closed, b"to nobody".to_vec())]);
        assert!(link.take_unreachable().is_empty());
        // Reported on the next receive.
        queue(&mut link, closed, b"again");
        assert_eq!(link.send_batch().unwrap(), 1);
        wait_for_icmp();
        receiver
            .send_to(b"hello", link.local_addr().unwrap())
            .unwrap();
        assert_eq!(
            link.recv_batch().unwrap(),
            1,
            "the datagram waiting was read"
        );
        assert_eq!(link.datagram(0).1, b"hello");
        assert_eq!(link.take_unreachable(), [(closed, b"again".to_vec())]);
        assert!(!ready(&link), "nothing is left to report");
        // In one batch: the ICMP error comes back within the `sendmmsg`
        // (on loopback), fails the next datagram's send, and Linux returns
        // the count sent so far, the error spent.
        queue(&mut link, closed, b"in a batch");
        queue(&mut link, addr(&receiver), b"after it");
        assert_eq!(link.send_batch().unwrap(), 2);
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"after it");
        assert_eq!(link.take_unreachable(), [(closed, b"in a batch".to_vec())]);
        assert!(!ready(&link), "nothing is left to report");
    }

    /// Datagrams taken out of the link go out from the outbox, on a
    /// duplicate of the socket; an error the kernel reports on those sends
    /// is read and returned, and the datagram it was reported on still goes.
    #[test]
    fn an_outbox_sends_what_the_link_queued_and_returns_what_came_back() {
        let (receiver, closed, mut link) = receiver_closed_and_link();
        let copy = link.fd().try_clone_to_owned().unwrap();
        let mut outbox = Outbox::default();
        // In one batch, the error comes back within the `sendmmsg` (on
        // loopback) and is spent on the next datagram's send.
        queue(&mut link, closed, b"in a batch");
        queue(&mut link, addr(&receiver), b"first");
        link.take_queued(&mut outbox);
        assert_eq!(link.send_batch().unwrap(), 0, "the link's batch is empty");
        let reported = outbox.send(copy.as_fd());
        assert!(outbox.is_empty());
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"first");
        assert_eq!(reported, [(closed, b"in a batch".to_vec())]);
        // Alone, the error is reported on the next send.
        queue(&mut link, closed, b"to nobody");
        link.take_queued(&mut outbox);
        assert!(outbox.send(copy.as_fd()).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        queue(&mut link, addr(&receiver), b"second");
        link.take_queued(&mut outbox);
        let reported = outbox.send(copy.as_fd());
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"second", "the datagram the report came on went");
        assert_eq!(reported, [(closed, b"to nobody".to_vec())]);
        assert!(!ready(&link), "nothing is left to report");
        link.report(reported);
        assert_eq!(link.take_unreachable().len(), 1, "handed to the link");
    }

    /// Whether the link's socket polls as ready (data, or an error queued).
    fn ready(link: &UdpLink) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            link.fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).unwrap() > 0
    }

    #[test]
    fn the_receive_buffer_is_as_large_as_allowed() {
        let link = UdpLink::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let got = nix::sys::socket::getsockopt(&link.socket, sockopt::RcvBuf).unwrap();
        let system_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // The kernel reports twice what it was given (its bookkeeping).
        // CAP_NET_ADMIN (bit 12 of the effective set) lets it past the maximum.
        let net_admin = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
                u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << 12) != 0);
        let expected = match net_admin {
            true => RECEIVE_BUFFER,
            false => RECEIVE_BUFFER.min(system_max),
        };
        assert!(got >= 2 * expected, "{got} bytes, expected 2 x {expected}");
    }
}
