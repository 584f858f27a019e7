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
//! **Datagrams that come back.** The socket asks for ICMP errors
//! (`IP_RECVERR`), as a program's own engine does (`sal_inproc::udp`): a
//! datagram sent to a port where nobody listens any more (a peer sald
//! restarted or gone) comes back as "port unreachable", quoting its start.
//! The kernel reports such an error once, on the next send or receive, and
//! queues it on the socket's error queue: the link reads the queue then
//! and repeats the call, so that no datagram is lost to the report, and
//! keeps what came back for the host ([`UdpLink::take_unreachable`]; see
//! `Host::handle_unreachable`: a SYN refused goes by another of its rule's
//! next hops if it has one, or fails at once, a flow whose peer is gone is
//! reset unless the peer is heard within a second).
//!
//! - [`batch`]: the batches, on plain byte buffers (no system calls);
//! - `sys`: the system calls and socket options (all of the unsafe code);
//! - [`UdpLink`]: the socket, for tokio.

pub mod batch;
mod sys;

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use sal_inproc::udp::{is_fatal, Unreachable, REPORT_RETRIES};
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};

pub use batch::{ReceivedDatagram, RxBatch, TxBatch};
/// Socket buffers past the system's maximum, for sald's other sockets too.
pub(crate) use sys::{set_buffer, Buffer};
pub use sys::{MAX_PAYLOAD, MAX_SEGMENTS, RECV_BATCH, SEND_BATCH};

use crate::link::LinkError;
use crate::refusals::Refusals;

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
/// How long a blocked writer sleeps before it looks for room again, once
/// tokio no longer tells when there is (see [`UdpLink::writable`]): 1 ms
/// is about 1.2 MB at 10 Gbit/s, well within the socket's buffer.
const WRITABLE_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

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
    /// Datagrams that came back as port unreachable, not taken yet.
    refusals: Refusals,
}

impl UdpLink {
    /// Binds `addr` (`--udp ADDR:PORT`) and turns on what the kernel
    /// offers (GSO and GRO only if `offload`). Must be called inside a
    /// tokio runtime with I/O enabled.
    pub fn bind(addr: SocketAddrV4, offload: bool) -> Result<UdpLink, LinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LinkError::NoRuntime);
        }
        let socket = std::net::UdpSocket::bind(addr).map_err(|source| LinkError::Bind {
            addr: SocketAddr::V4(addr),
            source,
        })?;
        UdpLink::adopt(socket, addr, offload)
    }

    /// As [`UdpLink::bind`], with a socket bound to `addr` already (one a
    /// service manager passed: `crate::activation`); what waits in it is
    /// read first.
    pub fn adopt(
        socket: std::net::UdpSocket,
        addr: SocketAddrV4,
        offload: bool,
    ) -> Result<UdpLink, LinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LinkError::NoRuntime);
        }
        let bind_error = |source| LinkError::Bind {
            addr: SocketAddr::V4(addr),
            source,
        };
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
        if !gro {
            // Receive slots are cut for single datagrams then.
            sys::disable_gro(fd);
        }
        // Best effort: without it, a SYN to a sald gone waits out its
        // retransmissions and a flow whose peer is gone its peer timeout.
        if !sys::enable_recverr(fd) {
            tracing::debug!("IP_RECVERR refused: ICMP errors about sent datagrams are not seen");
        }
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
            refusals: Refusals::default(),
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
    /// (replacing what it held); returns how many messages arrived: 0 when
    /// what it read was reports of earlier sends only (see
    /// [`UdpLink::take_unreachable`]), so that the caller hands them on.
    pub async fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|_| self.recv_into(batch)) {
                Ok(Ok(0)) => {
                    // Reports only (or datagrams behind a report met
                    // again, which a later wake-up gives): let the caller
                    // hand them on.
                    guard.clear_ready();
                    return Ok(0);
                }
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until the kernel has reports of earlier sends queued (the
    /// socket polls `EPOLLERR`) and reads them; returns how many errors it
    /// read. Without this, they would wait for the next send or receive,
    /// which a refused SYN's next try is half a second away from.
    pub async fn reports(&self) -> io::Result<usize> {
        let mut guard = self.fd.ready(Interest::ERROR).await?;
        let read = self.read_reports();
        guard.clear_ready_matching(Ready::ERROR);
        Ok(read)
    }

    /// Reads a batch if datagrams are queued, else fails with `WouldBlock`
    /// (or returns 0 if it read reports only).
    pub fn try_recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize> {
        self.recv_into(batch)
    }

    /// One `recvmmsg`; an error that was a report about an earlier send is
    /// read from the error queue and the receive made again.
    fn recv_into(&self, batch: &mut RxBatch) -> io::Result<usize> {
        batch.count = 0;
        let fd = self.fd.get_ref().as_raw_fd();
        let mut tries = 0;
        loop {
            let (buffer, slot, meta) = batch.buffers();
            match sys::recv(fd, buffer, slot, meta) {
                Ok(count) => {
                    batch.count = count;
                    return Ok(count);
                }
                // Reports read, nothing else: the caller hands them on.
                Err(_) if tries > 0 && self.has_reports() => return Ok(0),
                Err(error) if !is_report(&error) || tries >= REPORT_RETRIES => return Err(error),
                Err(error) => {
                    tries += 1;
                    // Another caller may have read the queue meanwhile: a
                    // refused connection is a report all the same.
                    let read = self.read_reports();
                    if read == 0 && !is_refusal(&error) {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// Whether reports wait for [`UdpLink::take_unreachable`].
    pub fn has_reports(&self) -> bool {
        self.refusals.any()
    }

    /// Reads the socket's error queue into the reports kept for the host;
    /// returns how many errors it read.
    fn read_reports(&self) -> usize {
        self.refusals.read(self.fd.get_ref().as_fd())
    }

    /// The datagrams that came back as port unreachable since the last
    /// call: where each went, and its start (as much as the ICMP error
    /// quoted). Empty, without taking a lock, when none did.
    pub fn take_unreachable(&self) -> Vec<Unreachable> {
        self.refusals.take()
    }

    /// Sends what `batch` holds, as far as the socket takes it, without
    /// waiting: what is sent or refused leaves the batch, the rest stays
    /// (then [`SendOutcome::blocked`]; call again after
    /// [`UdpLink::writable`]).
    pub fn send_batch(&self, batch: &mut TxBatch) -> SendOutcome {
        let fd = self.fd.get_ref().as_raw_fd();
        let mut outcome = SendOutcome::default();
        // Times the first datagram failed: perhaps only to report an ICMP
        // error about an earlier one, so it is tried again.
        let mut failures = 0;
        while !batch.is_empty() {
            let call = batch.next_call(self.any_address);
            let messages = call.len();
            let result = sys::send(fd, &call);
            drop(call);
            match result {
                Ok(count) => {
                    outcome.sent += batch.consume(count);
                    failures = 0;
                    // Stopped short: the next message failed, and Linux
                    // keeps that error to itself once some went. If it was
                    // a report, the error queue still holds it.
                    if count < messages {
                        self.read_reports();
                    }
                }
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
                    failures = 0;
                }
                Err(error)
                    if batch.first_is_segmented()
                        && error.raw_os_error() == Some(nix::libc::EINVAL) =>
                {
                    batch.split_first();
                    failures = 0;
                }
                // A refused connection is never a datagram's own error on
                // an unconnected socket, always a report.
                Err(error) if is_report(&error) && failures < REPORT_RETRIES => {
                    let read = self.read_reports();
                    failures += 1;
                    if read == 0 && !is_refusal(&error) {
                        tracing::debug!(%error, "UDP send refused");
                        outcome.dropped += batch.drop_first();
                        failures = 0;
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "UDP send refused");
                    outcome.dropped += batch.drop_first();
                    failures = 0;
                }
            }
        }
        outcome
    }

    /// Waits until the socket may take more after a blocked send. Sends
    /// tried after this returns see any room that opened meanwhile.
    ///
    /// Once a report made the socket poll `EPOLLERR` beside `EPOLLOUT`,
    /// tokio takes the socket for closed to writing, for good, and its
    /// writability wait returns at once from then on: the socket's room is
    /// then looked at here, and without room the wait is a short sleep,
    /// so that a full socket does not make its writer spin.
    pub async fn writable(&self) -> io::Result<()> {
        let mut guard = self.fd.writable().await?;
        if guard.ready().is_write_closed() {
            if !sys::has_room(self.fd.get_ref().as_raw_fd()) {
                tokio::time::sleep(WRITABLE_RETRY).await;
            }
            return Ok(());
        }
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

/// Whether a failed send or receive may be the kernel reporting an ICMP
/// error about an earlier datagram (read the error queue, then try again).
/// Not `ENOBUFS`: a queue dropped this very datagram, which `IP_RECVERR`
/// makes the kernel tell (it is counted as dropped). `EMSGSIZE` may be
/// either: a report ("fragmentation needed") or this datagram too big;
/// the kernel queues the latter as a local error too, so the datagram is
/// sent again (`read > 0`) until [`REPORT_RETRIES`] tries are spent, then
/// dropped and counted.
pub(crate) fn is_report(error: &io::Error) -> bool {
    match error.raw_os_error() {
        Some(errno) => {
            let errno = Errno::from_raw(errno);
            !is_fatal(errno) && !matches!(errno, Errno::EAGAIN | Errno::EINTR | Errno::ENOBUFS)
        }
        None => false,
    }
}

/// Whether `error` is a refusal an ICMP error made (see
/// `sal_inproc::udp::is_refusal`).
fn is_refusal(error: &io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|errno| sal_inproc::udp::is_refusal(Errno::from_raw(errno)))
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
    async fn a_datagram_to_a_port_gone_is_reported_and_the_next_send_still_goes() {
        let (a, b) = pair(false);
        let gone = gone();
        let mut tx = a.tx_batch();
        tx.push(None, gone, b"to nobody");
        assert_eq!(a.send_batch(&mut tx).sent, 1);
        // The refusal comes back (over loopback, at once); the next send
        // reports it, is made again, and arrives.
        let (mut reported, mut sent) = (Vec::new(), 0);
        while reported.is_empty() && sent < 100 {
            tx.push(None, b.local_addr(), b"to b");
            let outcome = a.send_batch(&mut tx);
            assert_eq!((outcome.sent, outcome.dropped), (1, 0), "{outcome:?}");
            sent += 1;
            reported = a.take_unreachable();
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert_eq!(reported[0].0, gone);
        assert_eq!(reported[0].1, b"to nobody");
        assert!(a.take_unreachable().is_empty(), "taken once");
        // None of the sends was lost to the report.
        let arrived = receive(&b, sent).await;
        assert_eq!(arrived, sent);
    }

    /// Receives on `link` until `count` datagrams came (5 s at most each
    /// batch; with GRO, one message may hold several).
    async fn receive(link: &UdpLink, count: usize) -> usize {
        let mut rx = link.rx_batch();
        let mut arrived = 0;
        while arrived < count {
            let wait = std::time::Duration::from_secs(5);
            tokio::time::timeout(wait, link.recv_batch(&mut rx))
                .await
                .expect("every datagram arrives")
                .unwrap();
            arrived += rx.datagrams().count();
        }
        arrived
    }

    /// The reports `link` read, waiting for them (5 s at most) if none
    /// came yet.
    async fn reported(link: &UdpLink) -> Vec<Unreachable> {
        let reported = link.take_unreachable();
        if !reported.is_empty() {
            return reported;
        }
        let wait = std::time::Duration::from_secs(5);
        tokio::time::timeout(wait, link.reports())
            .await
            .expect("a report comes")
            .unwrap();
        link.take_unreachable()
    }

    /// A port nobody listens on.
    fn gone() -> SocketAddrV4 {
        let (c, _) = pair(false);
        c.local_addr()
    }

    #[tokio::test]
    async fn a_report_within_one_batch_loses_none_of_it() {
        for offload in [false, true] {
            let (a, b) = pair(offload);
            let gone = gone();
            let mut tx = a.tx_batch();
            tx.push(None, gone, b"to nobody");
            tx.push(None, b.local_addr(), b"to b, 1");
            tx.push(None, b.local_addr(), b"to b, 2");
            let outcome = a.send_batch(&mut tx);
            assert_eq!((outcome.sent, outcome.dropped), (3, 0), "{outcome:?}");
            assert_eq!(receive(&b, 2).await, 2);
            // Over loopback the refusal came back during the batch's send,
            // or comes now.
            let reported = reported(&a).await;
            assert_eq!(reported.len(), 1, "{reported:?}");
            assert_eq!(reported[0], (gone, b"to nobody".to_vec()));
        }
    }

    #[tokio::test]
    async fn a_report_met_by_a_receive_is_kept_and_the_datagram_still_read() {
        let (a, b) = pair(false);
        let mut tx = a.tx_batch();
        tx.push(None, gone(), b"to nobody");
        assert_eq!(a.send_batch(&mut tx).sent, 1);
        let mut tx = b.tx_batch();
        tx.push(None, a.local_addr(), b"to a");
        assert_eq!(b.send_batch(&mut tx).sent, 1);
        // Whichever call meets the report, the datagram and the report
        // both come out.
        let mut rx = a.rx_batch();
        let mut arrived = 0;
        for _ in 0..3 {
            let wait = std::time::Duration::from_secs(5);
            arrived += tokio::time::timeout(wait, a.recv_batch(&mut rx))
                .await
                .expect("the datagram arrives")
                .unwrap();
            if arrived > 0 {
                break;
            }
        }
        assert_eq!(arrived, 1);
        assert_eq!(rx.datagrams().next().unwrap().payload, b"to a");
        // The refusal may come after the datagram (softirqs deferred).
        let reported = reported(&a).await;
        assert_eq!(reported.len(), 1, "{reported:?}");
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
