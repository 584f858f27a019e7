//! sald's end of a listener's accept queue (`Deliver`, see
//! `control::cmd::deliver`): the notices it sends into it, each with its
//! flow's socket, and how many of them the program has not taken out yet.
//!
//! The kernel charges a message in a unix socket to the socket that sent
//! it until the other end has read it: `SIOCOUTQ` on our end
//! ([`AppSocket::unread_memory`]) is the memory of the notices still in
//! the queue, and it falls, by one message's worth, only when the program
//! takes one (or closes its end, which throws them away). So sald can tell
//! what the program has taken without a word from it, and without looking
//! at anything while it accepts: nothing is counted per flow, and a
//! listener nobody drains costs no system call and no wake-up more. A
//! drain looks only when it asks ([`AcceptQueue::untaken`]), and a drain
//! waiting for the queue to empty ([`AcceptQueue::emptied`]) hears each
//! take as the write space it frees (an `EPOLLOUT` edge on the write
//! watch of [`AppSocket`], which exists only once a write had to wait or a
//! drain waited), one wake-up per flow taken while it waits.
//!
//! The kernel announces write space only while what the queue holds is at
//! most a quarter of its send buffer (`unix_writable`): a take that leaves
//! more is silent. So the feeder keeps no more notices in the queue than
//! that ([`AcceptQueue::send`] waits first: about 70 at Linux's default
//! buffer, the flows past them waiting in the host's backlog), and every
//! take is heard; a wait for one flow's take could otherwise last for as
//! long as the program took nothing more. It looks at the queue only when
//! as many notices as that were sent since it last looked, once per that
//! many flows while the program keeps up.
//!
//! The memory a message holds is not its length but the kernel's buffer
//! for it, the same for every message of one length (768 bytes for a
//! notice of either kind, with or without a descriptor, on Linux 6.18):
//! it is measured once per queue, on a socket pair of its own, before the
//! first notice is sent. Counted in it, a notice
//! that sald had no socket for a flow ([`sal_control::ACCEPT_EXHAUSTED`],
//! which the program's accept reads as an error) counts as one flow.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use nix::sys::socket::{
    recv, send, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use tokio::sync::Notify;

use crate::app_socket::{unread_memory, AppSocket, PeerEnd};

/// sald's end of an accept queue. See the module docs.
#[derive(Debug)]
pub struct AcceptQueue {
    socket: AppSocket,
    /// How long the notices sent into it are (all alike).
    notice_len: usize,
    /// The memory one notice holds until it is read (see the module
    /// docs); `None` if it could not be measured.
    notice_memory: OnceLock<Option<u32>>,
    /// Notices sent into it so far: the queue is first in, first out, so
    /// with [`AcceptQueue::untaken`] it tells which the program took (see
    /// [`AcceptQueue::took`]).
    sent: AtomicU64,
    /// [`AcceptQueue::sent`] less [`AcceptQueue::untaken`] when the feeder
    /// last looked: the program has taken at least this many.
    seen_taken: AtomicU64,
    /// The most notices the queue may hold for every take to be heard
    /// (see the module docs), worked out on first use.
    most_heard: OnceLock<u64>,
    /// Its listener stopped listening ([`AcceptQueue::stop`]).
    stopped: AtomicBool,
    /// Wakes the feeder waiting in [`AcceptQueue::stopped`] (one waiter:
    /// the queue's one feeder; a permit if it is not waiting yet).
    stop: Notify,
}

impl AcceptQueue {
    /// Registers `fd`, sald's end of the queue, with the runtime; the
    /// notices sent into it are `notice_len` bytes long.
    pub fn new(fd: OwnedFd, notice_len: usize) -> io::Result<AcceptQueue> {
        Ok(AcceptQueue {
            socket: AppSocket::new(fd)?,
            notice_len,
            notice_memory: OnceLock::new(),
            sent: AtomicU64::new(0),
            seen_taken: AtomicU64::new(0),
            most_heard: OnceLock::new(),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
        })
    }

    /// The queue's listener stopped listening (`StopListening`): its
    /// feeder sends nothing more (a flow it holds is reset rather than
    /// sent) and ends, which closes this end; the program's end then
    /// hangs up once what is in it was taken.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.stop.notify_one();
    }

    /// Returns once [`AcceptQueue::stop`] was called (at once if it was).
    pub async fn stopped(&self) {
        if !self.stopped.load(Ordering::Relaxed) {
            self.stop.notified().await;
        }
    }

    /// Waits until the queue holds fewer notices than
    /// [`AcceptQueue::most_heard`] allows: at once, without a system call,
    /// while fewer than that were sent since the last look. Returns at
    /// once if the program's end hung up, for the send to fail.
    async fn within_hearing(&self) -> io::Result<()> {
        let most = *self.most_heard.get_or_init(|| self.most_heard());
        loop {
            let sent = self.sent.load(Ordering::Relaxed);
            if sent - self.seen_taken.load(Ordering::Relaxed) < most {
                return Ok(());
            }
            let taken = sent.saturating_sub(self.untaken() as u64);
            self.seen_taken.store(taken, Ordering::Relaxed);
            if sent - taken < most || !self.socket.write_space().await? {
                return Ok(());
            }
        }
    }

    /// The most notices the queue may hold with a take out of it still
    /// heard: the kernel wakes a writer when the memory in use (counted
    /// one more than `SIOCOUTQ`) is at most a quarter of the send buffer.
    /// No limit if that cannot be told.
    fn most_heard(&self) -> u64 {
        let each = self
            .notice_memory
            .get_or_init(|| message_memory(self.notice_len));
        match (each, self.socket.send_buffer()) {
            (Some(each), Ok(buffer)) => {
                let quarter = (buffer as u64 / 4).saturating_sub(1);
                quarter / u64::from(*each) + 1
            }
            _ => u64::MAX,
        }
    }

    /// Sends one message with `fd` attached (`SCM_RIGHTS`), waiting until
    /// the queue holds few enough for its takes to be heard (see the
    /// module docs), and for room. The descriptor is ours to close afterwards either way.
    pub async fn send_with_fd(&self, message: &[u8], fd: &OwnedFd) -> io::Result<()> {
        self.within_hearing().await?;
        let fds = [fd.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&fds)];
        let iov = [io::IoSlice::new(message)];
        self.socket
            .write_with(|socket| {
                Ok(sendmsg::<()>(
                    socket,
                    &iov,
                    &rights,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )?)
            })
            .await
            .map(|_| self.count_sent())
    }

    /// Sends one message without a descriptor, waiting as
    /// [`AcceptQueue::send_with_fd`] does.
    pub async fn send(&self, message: &[u8]) -> io::Result<()> {
        self.within_hearing().await?;
        self.socket
            .write_with(|fd| Ok(send(fd, message, MsgFlags::MSG_NOSIGNAL)?))
            .await
            .map(|_| self.count_sent())
    }

    fn count_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// The place in the queue of the next notice sent: its feeder's
    /// notices go one at a time, so a flow handed over now has its notice
    /// sent as this one, unless the program closes the queue first.
    pub fn next_place(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the program has taken the notice sent at `place`
    /// ([`AcceptQueue::next_place`]) out of the queue: every notice before
    /// it was taken too, as the queue is first in, first out. One system
    /// call. Also true once the program closed its end (which threw the
    /// rest away, with the flows' sockets).
    pub fn took(&self, place: u64) -> bool {
        let sent = self.sent.load(Ordering::Relaxed);
        sent.saturating_sub(self.untaken() as u64) > place
    }

    /// Waits until [`AcceptQueue::took`] `place`: a look now, then one at
    /// each take (an `EPOLLOUT` edge, as for [`AcceptQueue::emptied`]).
    /// Never returns if the queue's write space cannot be watched, or
    /// once the program's end hung up (shut down both ways, its notices
    /// unread), whose write space is for good and tells no take.
    pub async fn taken(&self, place: u64) {
        loop {
            if self.took(place) {
                return;
            }
            if !matches!(self.socket.write_space().await, Ok(true)) {
                return std::future::pending().await;
            }
        }
    }

    /// Returns once the other end is closed (every copy of it), or sends
    /// anything. The program only reads from its end (the shims never
    /// write into it): one that writes into it is taken as gone from it,
    /// after one read. Reading and dropping its messages instead cost sald
    /// a read per message, unrationed, for as long as it wrote.
    pub async fn closed(&self) {
        let mut scratch = [0u8; 1];
        let _ = self
            .socket
            .read_with(|fd| Ok(recv(fd, &mut scratch, MsgFlags::empty())?))
            .await;
    }

    /// The messages in the queue that the program has not taken out yet:
    /// one system call (two and a socket pair the first time it finds
    /// any, see the module docs). 0 exactly when the queue is empty.
    pub fn untaken(&self) -> usize {
        let unread = self.socket.unread_memory();
        if unread == 0 {
            return 0;
        }
        let each = self
            .notice_memory
            .get_or_init(|| message_memory(self.notice_len));
        match each {
            Some(each) => unread.div_ceil(*each) as usize,
            // Unknown: at least one is there.
            None => 1,
        }
    }

    /// Waits until the program has taken everything out of the queue (or
    /// its end is closed, which throws what was left away): at once if
    /// it holds nothing. Each take on the way is a wake-up and a look at
    /// [`AcceptQueue::untaken`]. While the program's end is hung up or shut
    /// with messages left in it, this never returns: the feeder reads that
    /// end of file and ends, and its end wakes the drains (see
    /// `Core::stop_delivering`).
    pub async fn emptied(&self) {
        loop {
            if self.untaken() == 0 {
                return;
            }
            if self.socket.peer_end() != PeerEnd::Open {
                // Its write space is for good now: no edge to wait for.
                return std::future::pending().await;
            }
            if self.socket.writable().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// The memory a message of `len` bytes holds in a unix `SOCK_SEQPACKET`
/// socket until it is read, measured on a socket pair of its own (no
/// descriptor attached: one does not change it); `None` if it cannot be.
fn message_memory(len: usize) -> Option<u32> {
    let (ours, _theirs) = pair(SockType::SeqPacket).ok()?;
    let message = vec![0u8; len];
    send(ours.as_raw_fd(), &message, MsgFlags::MSG_DONTWAIT).ok()?;
    let memory = unread_memory(ours.as_fd());
    (memory > 0).then_some(memory)
}

/// A unix socket pair of `kind`.
fn pair(kind: SockType) -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, kind, None, SockFlag::SOCK_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn notice_pair(len: usize) -> (AcceptQueue, OwnedFd) {
        let (ours, theirs) = pair(SockType::SeqPacket).unwrap();
        (AcceptQueue::new(ours, len).unwrap(), theirs)
    }

    fn take(theirs: &OwnedFd) {
        let mut buf = [0u8; 256];
        recv(theirs.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).unwrap();
    }

    /// The count follows the program's takes exactly, descriptors
    /// attached or not, for either kind of notice.
    #[tokio::test]
    async fn untaken_counts_what_the_program_has_not_read() {
        for len in [sal_control::AcceptNotice::LEN, sal_control::FlowNotice::LEN] {
            let (queue, theirs) = notice_pair(len);
            assert_eq!(queue.untaken(), 0);
            let (attached, _other) = pair(SockType::Stream).unwrap();
            for n in 1..=5 {
                queue
                    .send_with_fd(&vec![1u8; len], &attached)
                    .await
                    .unwrap();
                assert_eq!(queue.untaken(), n, "notices of {len} bytes");
            }
            queue.send(&sal_control::ACCEPT_EXHAUSTED).await.unwrap();
            assert_eq!(queue.untaken(), 6, "an exhausted notice counts as one");
            for n in (0..6).rev() {
                take(&theirs);
                assert_eq!(queue.untaken(), n);
            }
        }
    }

    /// A notice's place is taken once the program read it, and every
    /// notice before it: the queue is first in, first out. A wait for a
    /// place ends with its take, not an earlier one's.
    #[tokio::test]
    async fn a_place_is_taken_when_the_program_reads_its_notice() {
        let (queue, theirs) = notice_pair(sal_control::AcceptNotice::LEN);
        let queue = std::sync::Arc::new(queue);
        let mut places = Vec::new();
        for _ in 0..3 {
            places.push(queue.next_place());
            queue
                .send(&[3u8; sal_control::AcceptNotice::LEN])
                .await
                .unwrap();
        }
        assert_eq!(places, [0, 1, 2]);
        assert!(!queue.took(0));
        take(&theirs);
        assert!(queue.took(0));
        assert!(!queue.took(1));
        assert!(!queue.took(queue.next_place()), "nothing sent there yet");
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.taken(2).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        take(&theirs);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "ended with an earlier take");
        take(&theirs);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ended with its own take")
            .unwrap();
        assert!(queue.took(2));
    }

    /// A wait for the queue to empty ends with the last take, not before,
    /// and at once when the program closes its end.
    #[tokio::test]
    async fn emptied_ends_with_the_last_take() {
        let (queue, theirs) = notice_pair(sal_control::FlowNotice::LEN);
        tokio::time::timeout(Duration::from_secs(1), queue.emptied())
            .await
            .expect("an empty queue is emptied");
        for _ in 0..3 {
            queue
                .send(&[2u8; sal_control::FlowNotice::LEN])
                .await
                .unwrap();
        }
        let queue = std::sync::Arc::new(queue);
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.emptied().await }
        });
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            take(&theirs);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiting.is_finished(), "ended with a notice left");
        }
        take(&theirs);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ended with the last take")
            .unwrap();

        queue
            .send(&[2u8; sal_control::FlowNotice::LEN])
            .await
            .unwrap();
        drop(theirs);
        tokio::time::timeout(Duration::from_secs(5), queue.emptied())
            .await
            .expect("a closed end holds nothing");
    }
}
