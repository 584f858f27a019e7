//! sald's end of a socketpair shared with an application, watched for
//! readability (and, on the same registration, the other end's hang-up)
//! only, and for room to write only while a write waits.
//!
//! Why not a tokio `UnixStream`: tokio registers every socket for both
//! directions (`EPOLLIN | EPOLLOUT`, edge-triggered). On a unix socket,
//! every read by the application frees socket memory charged to our end,
//! and the kernel then announces write space (`unix_write_space`), which
//! is an `EPOLLOUT` edge. So each time a program read a reply, a short
//! request, or an accepted flow, sald's thread was woken for nothing: in
//! the connect bench (`perf record -e sched:sched_wakeup`), more than half
//! of the wake-ups that programs caused sald were these. Room to write
//! matters only after a write found the socket full, which on a short flow
//! never happens, so the write direction is watched through a duplicate of
//! the descriptor registered for `EPOLLOUT` alone, made the first time a
//! write has to wait (or a drain waits for an accept queue to empty, which
//! it hears as that write space: see [`crate::accept_queue`]) and kept for
//! the socket's life (a bulk flow's socket fills often; an idle or short
//! one never gets one).

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use nix::sys::socket::{getsockopt, recv, send, sockopt, MsgFlags, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::sync::OnceCell;

/// What became of the application's end of a socket (see
/// [`AppSocket::peer_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEnd {
    /// Open both ways.
    Open,
    /// Shut for sending (`shutdown(SHUT_WR)`): it may still read.
    Shut,
    /// Closed (every copy of it) with everything written to it read, or
    /// shut down both ways: ours hangs up.
    Closed,
    /// Closed with bytes written to it unread, which are lost: ours hangs
    /// up and shows an error (`ECONNRESET`, which looking does not take).
    ClosedUnread,
}

/// A non-blocking socket of ours registered with the runtime for reading,
/// and for writing on demand.
#[derive(Debug)]
pub struct AppSocket {
    read: AsyncFd<OwnedFd>,
    /// The same socket, duplicated, registered for write space only.
    write: OnceCell<AsyncFd<OwnedFd>>,
}

impl AppSocket {
    /// Makes `fd` non-blocking and registers it for readability.
    pub fn new(fd: OwnedFd) -> io::Result<AppSocket> {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(AppSocket {
            read: register(fd, Interest::READABLE)?,
            write: OnceCell::new(),
        })
    }

    /// The descriptor, for system calls that neither wait nor need
    /// readiness (`recv` and `send` with `MSG_DONTWAIT` set by the
    /// non-blocking flag, `shutdown`).
    pub fn raw(&self) -> RawFd {
        self.read.get_ref().as_raw_fd()
    }

    /// The descriptor, borrowed (for `poll` and the like).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.get_ref().as_fd()
    }

    /// Waits until the socket may have something to read (or the other end
    /// closed), and forgets that readiness: the caller reads until
    /// `WouldBlock`, and the next wait ends with the next edge.
    pub async fn readable(&self) -> io::Result<()> {
        self.read.readable().await?.clear_ready();
        Ok(())
    }

    /// What became of the other end, without waiting (see [`PeerEnd`]).
    pub fn peer_end(&self) -> PeerEnd {
        use nix::libc::{poll, pollfd, POLLERR, POLLHUP, POLLRDHUP};
        // `poll` itself: nix's flags know no `POLLRDHUP`, and drop the
        // answer when it is set.
        let mut polled = pollfd {
            fd: self.raw(),
            events: POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one `pollfd`, a local that outlives the call; `self`
        // keeps the descriptor open.
        let ready = unsafe { poll(&mut polled, 1, 0) };
        let revents = if ready == 1 { polled.revents } else { 0 };
        if revents & POLLERR != 0 {
            PeerEnd::ClosedUnread
        } else if revents & POLLHUP != 0 {
            PeerEnd::Closed
        } else if revents & POLLRDHUP != 0 {
            PeerEnd::Shut
        } else {
            PeerEnd::Open
        }
    }

    /// Memory that what was written into this socket holds until the
    /// application has read it (`SIOCOUTQ`, a unix socket's send memory in
    /// use): the kernel gives each write's buffer back once the other end
    /// has read the whole of it, so this falls only when the application
    /// reads (or its end is closed, which throws what was unread away). 0
    /// if it cannot be told.
    pub fn unread_memory(&self) -> u32 {
        unread_memory(self.fd())
    }

    /// Marks this socket as one that delivered its peer's end of stream
    /// before it hangs up, for the application's shim to tell the hang-up
    /// from a reset alone (`socket_shim::reset`): a socketpair carries no
    /// error, and both ways shut down look the same whatever came first.
    /// The mark is an address ([`sal_control::ENDED_MARK`] and a random
    /// part): the socket is bound to an abstract name, which the other
    /// end's `getpeername` shows from then on, after this end is closed
    /// too. Best effort: a socket left unmarked reads as reset.
    ///
    /// The name is random ([`mark_name`]), so that nobody can take it
    /// first. The first version used the kernel's autobind, which searches
    /// its 2^20 names from a random start on sald's one thread and would
    /// walk them all once a local user held most of them (a million
    /// autobound sockets); the next, a name of sald's own (its process ID
    /// and a count), falling back to autobind when that was taken, which
    /// a local user could do in advance for as many names as it liked. A
    /// name is tried [`MARK_TRIES`] times: only a name someone holds
    /// (`EADDRINUSE`) is worth another, and no one holds a random one but
    /// by a chance of 2^-128; anything else (no memory for the address)
    /// would fail again. After that the socket is left unmarked, in one
    /// or two `bind` calls whatever other users hold.
    pub fn mark_ended(&self) {
        self.mark_as(|| mark_name(sal_control::ENDED_MARK));
    }

    /// Marks the socket with the names `name` gives ([`MARK_TRIES`] at
    /// most; see [`AppSocket::mark_ended`]): whether it is marked.
    fn mark_as(&self, mut name: impl FnMut() -> Vec<u8>) -> bool {
        for _ in 0..MARK_TRIES {
            let bound = UnixAddr::new_abstract(&name())
                .and_then(|addr| nix::sys::socket::bind(self.raw(), &addr));
            match bound {
                Ok(()) => return true,
                Err(nix::errno::Errno::EADDRINUSE) => continue,
                Err(errno) => {
                    tracing::debug!(%errno, "a flow's socket left unmarked at its end of stream");
                    return false;
                }
            }
        }
        tracing::debug!("a flow's socket left unmarked: its names were taken");
        false
    }

    /// Marks this socket as one whose flow was reset (or its peer given
    /// up on) with no end of stream delivered before, as it is about to
    /// hang up ([`sal_control::RESET_MARK`]; see [`AppSocket::mark_ended`]):
    /// the application's shim reports the reset even where the hang-up
    /// alone tells nothing (the application shut its own writing down, so
    /// that a finished flow hangs up too). No autobind when the name is
    /// taken: that would read as the end of stream, and an unmarked
    /// hang-up still reads as reset while the application sends. Random
    /// names as [`AppSocket::mark_ended`]'s.
    pub fn mark_reset(&self) {
        self.mark_as(|| mark_name(sal_control::RESET_MARK));
    }

    /// Whether the application named its end to abort the flow
    /// ([`sal_control::ABORT_MARK`]: a socket shim's `connect(AF_UNSPEC)`,
    /// which then shuts its end down both ways): the flow is to be reset,
    /// as TCP's `tcp_disconnect` resets it, not finished. Any name counts
    /// (the application falls back to a name the kernel picks). One system
    /// call; asked only once the application's end is closed or shut down
    /// both ways.
    pub fn aborted(&self) -> bool {
        nix::sys::socket::getpeername::<UnixAddr>(self.raw()).is_ok_and(|addr| addr.path_len() > 0)
    }

    /// The most memory what is written into this socket may hold until
    /// the application reads it (`SO_SNDBUF` as the kernel keeps it, which
    /// is twice what was asked for: room for each write's bookkeeping). A
    /// write goes on while less than this is held, so the memory held may
    /// pass it by the last write's.
    pub fn send_buffer(&self) -> io::Result<usize> {
        Ok(getsockopt(self.read.get_ref(), sockopt::SndBuf)?)
    }

    /// Makes [`AppSocket::send_buffer`] `bytes` (an even number): asks for
    /// half of it, which the kernel doubles. A larger buffer wakes a write
    /// that waits for room.
    ///
    /// Past twice `net.core.wmem_max` where sald may (`CAP_NET_ADMIN`:
    /// `SO_SNDBUFFORCE`), else as near as that maximum lets any program
    /// ask: a socket starts with `net.core.wmem_default`, which may be set
    /// larger, and a buffer read with [`AppSocket::send_buffer`] and made
    /// smaller for a while must come back whole (`SO_SNDBUF` alone gave
    /// back twice the maximum).
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        crate::udp::set_buffer(self.raw(), crate::udp::Buffer::Send, bytes / 2).map(drop)
    }

    /// Waits until the other end has hung up: closed (every copy of it),
    /// or shut down both ways. A hang-up is final: once it came, this
    /// returns at once.
    ///
    /// Readability cannot tell: once the other end shut its writing down,
    /// its end of file keeps ours readable for good, and the runtime keeps
    /// that readiness (a closed direction is final to it). The hang-up
    /// comes on the read registration all the same (epoll reports hang-ups
    /// and errors whatever the interest): the runtime files a hang-up as
    /// "write closed", and the error that a close with bytes unread leaves
    /// as "error". This registration never hears write space, so "write
    /// closed" is all its write readiness can be.
    pub async fn hung_up(&self) -> io::Result<()> {
        self.read
            .ready(Interest::WRITABLE | Interest::ERROR)
            .await
            .map(drop)
    }

    /// Waits until the socket may have room to write, and forgets that
    /// readiness, as [`AppSocket::readable`] does.
    pub async fn writable(&self) -> io::Result<()> {
        self.write_watch()?.writable().await?.clear_ready();
        Ok(())
    }

    /// [`AppSocket::writable`], telling also whether the wait may end
    /// again: false once the other end has hung up, after which the
    /// runtime keeps the write watch ready for good (a closed direction
    /// is final to it), so a caller that waits again returns at once, for
    /// ever.
    pub async fn write_space(&self) -> io::Result<bool> {
        let mut ready = self.write_watch()?.writable().await?;
        let hung_up = ready.ready().is_write_closed();
        ready.clear_ready();
        Ok(!hung_up)
    }

    /// Reads bytes into `buf`, waiting for some, with the descriptor that
    /// rode on the first of them (`SCM_RIGHTS`), if one did: a request
    /// frame's first read (see `control::frame`). Room for one descriptor:
    /// the kernel closes any more that came with it.
    pub async fn recv_with_fd(&self, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
        self.read_with(|fd| recv_with_fd(fd, buf)).await
    }

    /// `op` (a non-blocking read of this socket) until it does not find the
    /// socket empty.
    pub async fn read_with<R>(&self, op: impl FnMut(RawFd) -> io::Result<R>) -> io::Result<R> {
        self.until_done(op, || self.readable()).await
    }

    /// `op` (a non-blocking write to this socket) until it does not find
    /// the socket full.
    pub async fn write_with<R>(&self, op: impl FnMut(RawFd) -> io::Result<R>) -> io::Result<R> {
        self.until_done(op, || self.writable()).await
    }

    /// `op` first, then `wait` and `op` again for as long as `op` would
    /// block.
    async fn until_done<R, W: Future<Output = io::Result<()>>>(
        &self,
        mut op: impl FnMut(RawFd) -> io::Result<R>,
        wait: impl Fn() -> W,
    ) -> io::Result<R> {
        loop {
            match op(self.raw()) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => wait().await?,
                result => return result,
            }
        }
    }

    /// The write-space registration, made on first use. Registering a
    /// socket that already has room reports it at once (epoll checks the
    /// current state when an interest is added), so room that opened
    /// between a failed write and this call is not missed.
    fn write_watch(&self) -> io::Result<&AsyncFd<OwnedFd>> {
        if let Some(watch) = self.write.get() {
            return Ok(watch);
        }
        let duplicate = self.read.get_ref().as_fd().try_clone_to_owned()?;
        // Only a task holding `&self` gets here, and the runtime is
        // single-threaded; had another set it meanwhile, its watch stays.
        let _ = self.write.set(register(duplicate, Interest::WRITABLE)?);
        Ok(self.write.get().expect("set just now"))
    }
}

/// One non-blocking `recvmsg` into `buf` with room for one descriptor,
/// taken close-on-exec (see [`AppSocket::recv_with_fd`]).
fn recv_with_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::os::fd::FromRawFd;
    // Room for as many descriptors as one message can carry (the kernel's
    // SCM_MAX_FD): with less, a sender of more gets the message truncated,
    // and the descriptors the kernel did install would be lost to sald,
    // open for ever. Those beyond the first are closed here.
    let mut space = nix::cmsg_space!([RawFd; 253]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let message = recvmsg::<()>(
        fd,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )?;
    let mut received = None;
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            for raw in fds {
                // SAFETY: the kernel installed `raw` in our table for this
                // message just now; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                received.get_or_insert(owned);
            }
        }
    }
    Ok((message.bytes, received))
}

/// Bytes, for the control connection's framing. Like every operation
/// here it tries the socket first and takes readiness only as the signal
/// to try again, so it works whatever [`AppSocket::readable`] forgot.
impl AsyncRead for AppSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match recv(self.raw(), buf.initialize_unfilled(), MsgFlags::empty()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(errno) => return Poll::Ready(Err(errno.into())),
            }
            ready!(self.read.poll_read_ready(cx))?.clear_ready();
        }
    }
}

/// Bytes, for the control connection's framing: written at once while
/// there is room, and through the write watch when there is none.
impl AsyncWrite for AppSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            match send(self.raw(), data, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(errno) => return Poll::Ready(Err(errno.into())),
            }
            ready!(self.write_watch()?.poll_write_ready(cx))?.clear_ready();
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = nix::sys::socket::shutdown(self.raw(), nix::sys::socket::Shutdown::Write);
        Poll::Ready(shut.map_err(io::Error::from))
    }
}

/// Names [`AppSocket::mark_ended`] and [`AppSocket::mark_reset`] try before they leave a socket
/// unmarked.
const MARK_TRIES: usize = 2;

/// A name for a mark: `mark`, then 128 bits from the thread's
/// generator, which the operating system seeds (a cryptographic one, so
/// no name tells the next).
fn mark_name(mark: &[u8]) -> Vec<u8> {
    let mut name = mark.to_vec();
    name.extend_from_slice(format!("{:032x}", rand::random::<u128>()).as_bytes());
    name
}

/// [`AppSocket::unread_memory`] of any unix socket.
pub fn unread_memory(socket: BorrowedFd<'_>) -> u32 {
    let mut bytes: nix::libc::c_int = 0;
    // SAFETY: `SIOCOUTQ` (`TIOCOUTQ`) writes one c_int through the
    // pointer, which points at a local that outlives the call; `socket`
    // is an open descriptor for as long as it is borrowed.
    let rc = unsafe { nix::libc::ioctl(socket.as_raw_fd(), nix::libc::TIOCOUTQ, &mut bytes) };
    if rc == 0 {
        u32::try_from(bytes).unwrap_or(0)
    } else {
        0
    }
}

/// Registers `fd` with the runtime for `interest`.
fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` keeps its descriptor open and unchanged until it is
    // dropped, which happens only when the `AsyncFd` is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(fd, interest) };
    registered.map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The epoll events every epoll instance of this process registered for
    /// descriptor `fd` (from `/proc/self/fdinfo`: one `tfd:` line per
    /// registration, with the mask and the file's inode in hex; the inode
    /// tells our socket from another test's that has the same number). An
    /// epoll instance may be open under two descriptors (mio duplicates
    /// it), so identical lines count once.
    fn registrations(fd: RawFd) -> Vec<u32> {
        let inode = format!("{:x}", nix::sys::stat::fstat(fd).unwrap().st_ino);
        let mut lines = std::collections::BTreeSet::new();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap().flatten() {
            let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in info.lines().filter(|l| l.starts_with("tfd:")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let field = |name: &str| {
                    let at = words.iter().position(|w| *w == name)?;
                    words.get(at + 1).copied()
                };
                let ino = line.split_whitespace().find_map(|w| w.strip_prefix("ino:"));
                if field("tfd:").and_then(|t| t.parse::<RawFd>().ok()) == Some(fd)
                    && ino == Some(inode.as_str())
                    && lines.insert(line.to_string())
                {
                    let events = field("events:").unwrap();
                    found.push(u32::from_str_radix(events, 16).unwrap());
                }
            }
        }
        found
    }

    /// `EPOLLOUT` in the kernel's event mask.
    const EPOLLOUT: u32 = 0x004;

    #[tokio::test]
    async fn only_a_waiting_write_watches_for_room() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let socket = AppSocket::new(OwnedFd::from(ours)).unwrap();
        let registered = registrations(socket.raw());
        assert_eq!(registered.len(), 1, "{registered:x?}");
        assert_eq!(registered[0] & EPOLLOUT, 0, "{:x}", registered[0]);

        // A short write and the application's read of it: no watch, so the
        // write space that read announces wakes nobody here.
        let sent = socket
            .write_with(|fd| Ok(nix::sys::socket::send(fd, b"ping", MsgFlags::MSG_NOSIGNAL)?))
            .await
            .unwrap();
        assert_eq!(sent, 4);
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut theirs, &mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert!(socket.write.get().is_none());

        // Fill the socket; the write that finds it full waits for room,
        // through a second registration for EPOLLOUT alone.
        let chunk = [7u8; 4096];
        let mut queued = 0usize;
        loop {
            match nix::sys::socket::send(socket.raw(), &chunk, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => queued += n,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => panic!("{e}"),
            }
        }
        let reader = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut sink = vec![0u8; queued + chunk.len()];
            std::io::Read::read_exact(&mut theirs, &mut sink).unwrap();
            assert!(sink.iter().all(|&b| b == 7));
            theirs
        });
        let sent = socket
            .write_with(|fd| Ok(nix::sys::socket::send(fd, &chunk, MsgFlags::MSG_NOSIGNAL)?))
            .await
            .unwrap();
        assert!(sent > 0);
        // What did not fit goes too, so the reader gets its exact count.
        let mut rest = &chunk[sent..];
        while !rest.is_empty() {
            let n = socket
                .write_with(|fd| Ok(nix::sys::socket::send(fd, rest, MsgFlags::MSG_NOSIGNAL)?))
                .await
                .unwrap();
            rest = &rest[n..];
        }
        let mut theirs = reader.join().unwrap();
        let watch = socket
            .write
            .get()
            .expect("a write waited, so room is watched");
        let mut events = registrations(socket.raw());
        events.extend(registrations(watch.get_ref().as_raw_fd()));
        events.sort();
        assert_eq!(events.len(), 2, "{events:x?}");
        assert_eq!(events.iter().filter(|e| *e & EPOLLOUT != 0).count(), 1);

        // Reading waits for the application's bytes.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::io::Write::write_all(&mut theirs, b"pong").unwrap();
            theirs
        });
        let mut buf = [0u8; 16];
        let n = socket
            .read_with(|fd| Ok(nix::sys::socket::recv(fd, &mut buf, MsgFlags::empty())?))
            .await
            .unwrap();
        assert_eq!(&buf[..n], b"pong");
        drop(writer.join().unwrap());
        let n = socket
            .read_with(|fd| Ok(nix::sys::socket::recv(fd, &mut buf, MsgFlags::empty())?))
            .await
            .unwrap();
        assert_eq!(n, 0, "end of file once the application closed");
    }

    /// The send buffer reads back as it was set (the kernel doubles what
    /// it is asked for, and `set_send_buffer` asks for half), so what is
    /// read may be given back; and it bounds what the socket holds.
    #[tokio::test]
    async fn a_send_buffer_set_is_the_one_read_back() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let socket = AppSocket::new(OwnedFd::from(ours)).unwrap();
        let normal = socket.send_buffer().unwrap();
        socket.set_send_buffer(32 << 10).unwrap();
        assert_eq!(socket.send_buffer().unwrap(), 32 << 10);
        let chunk = [7u8; 64 << 10];
        while nix::sys::socket::send(socket.raw(), &chunk, MsgFlags::MSG_NOSIGNAL).is_ok() {}
        let held = socket.unread_memory();
        assert!((16 << 10..=48 << 10).contains(&held), "{held} held");
        socket.set_send_buffer(normal).unwrap();
        assert_eq!(socket.send_buffer().unwrap(), normal);
        drop(theirs);
    }

    /// A send buffer larger than twice `net.core.wmem_max`, as every
    /// socket's is while `net.core.wmem_default` is set above that (made
    /// so here on one socket, the sysctls untouched), comes back whole
    /// after it was made small, where sald may (`CAP_NET_ADMIN`): it came
    /// back at twice the maximum. Without the capability (dropped in one
    /// thread), as near as the maximum allows.
    #[tokio::test]
    async fn a_send_buffer_past_twice_wmem_max_comes_back_whole() {
        let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let forced = wmem_max <= (i32::MAX / 8) as usize
            && nix::sys::socket::setsockopt(&ours, sockopt::SndBufForce, &(3 * wmem_max)).is_ok();
        if !forced {
            eprintln!("skipped: needs CAP_NET_ADMIN and a wmem_max below 256 MiB");
            return;
        }
        let socket = AppSocket::new(OwnedFd::from(ours)).unwrap();
        let born = socket.send_buffer().unwrap();
        assert_eq!(born, 6 * wmem_max);
        socket.set_send_buffer(32 << 10).unwrap();
        assert_eq!(socket.send_buffer().unwrap(), 32 << 10);
        socket.set_send_buffer(born).unwrap();
        assert_eq!(socket.send_buffer().unwrap(), born);

        socket.set_send_buffer(32 << 10).unwrap();
        let dumpable = this_process_dumpable();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                drop_net_admin_in_this_thread().unwrap();
                socket.set_send_buffer(born).unwrap();
            });
        });
        assert_eq!(socket.send_buffer().unwrap(), 2 * wmem_max);
        assert_eq!(
            this_process_dumpable(),
            dumpable,
            "nothing moved outside the thread"
        );
        drop(theirs);
    }

    /// Takes `CAP_NET_ADMIN` out of the calling thread's effective
    /// capabilities (the raw system call: other threads keep theirs), its
    /// user IDs and permitted capabilities unchanged. Another effective
    /// user ID in the thread (`setresuid`, as this test first did) took
    /// the capabilities too, but reset the dumpable flag of the whole
    /// process, which outlives the thread.
    fn drop_net_admin_in_this_thread() -> io::Result<()> {
        /// `struct __user_cap_header_struct`.
        #[repr(C)]
        struct Header {
            version: u32,
            pid: nix::libc::c_int,
        }
        /// `struct __user_cap_data_struct`.
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        /// `_LINUX_CAPABILITY_VERSION_3`: capabilities 0-31 in the first
        /// `Data`, 32-63 in the second. Process ID 0 is the caller.
        const VERSION_3: u32 = 0x2008_0522;
        let mut header = Header {
            version: VERSION_3,
            pid: 0,
        };
        let mut data = [Data::default(); 2];
        // SAFETY: capget reads `header` and writes two `Data` into `data`,
        // locals that outlive the call.
        let rc = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_capget,
                &mut header as *mut Header,
                data.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        data[0].effective &= !(1 << crate::privileges::CAP_NET_ADMIN);
        // SAFETY: capset reads `header` and two `Data` from `data`, locals
        // that outlive the call.
        let rc = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_capset,
                &mut header as *mut Header,
                data.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `prctl(PR_GET_DUMPABLE)`: a flag of the whole process (its memory),
    /// which a change of any thread's credentials may reset.
    fn this_process_dumpable() -> i32 {
        // SAFETY: PR_GET_DUMPABLE takes no pointer and only reads a flag.
        unsafe { nix::libc::prctl(nix::libc::PR_GET_DUMPABLE) }
    }

    #[tokio::test]
    async fn a_hang_up_is_heard_where_an_end_of_file_is_not() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let socket = AppSocket::new(OwnedFd::from(ours)).unwrap();
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        socket.readable().await.unwrap();
        let while_open = std::time::Duration::from_millis(100);
        let heard = tokio::time::timeout(while_open, socket.hung_up()).await;
        assert!(heard.is_err(), "an end of file is no hang-up");

        drop(theirs);
        let within = std::time::Duration::from_secs(5);
        let heard = tokio::time::timeout(within, socket.hung_up()).await;
        heard.expect("the close hangs up").unwrap();
        let again = tokio::time::timeout(within, socket.hung_up()).await;
        again.expect("a hang-up is final").unwrap();
    }

    /// The name `theirs`' peer is bound to (`None`: unnamed), as the
    /// application's shim sees it.
    fn peer_name(theirs: &UnixStream) -> Option<Vec<u8>> {
        let addr: UnixAddr = nix::sys::socket::getpeername(theirs.as_raw_fd()).unwrap();
        addr.as_abstract().map(<[u8]>::to_vec)
    }

    /// A socket bound to abstract `name`, held by a squatter.
    fn squat(name: &[u8]) -> OwnedFd {
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let addr = UnixAddr::new_abstract(name).unwrap();
        nix::sys::socket::bind(fd.as_raw_fd(), &addr).unwrap();
        fd
    }

    /// A local user who holds the names sald's marks would take (its
    /// process ID and a count, as they were) neither leaves a socket
    /// unmarked nor sends the mark into the kernel's autobind, which
    /// searches 2^20 names on sald's thread (its names are five hex
    /// digits); marks are unlike each other.
    #[tokio::test]
    async fn names_held_in_advance_neither_block_a_mark_nor_send_it_to_autobind() {
        let pid = std::process::id();
        let _squatted: Vec<OwnedFd> = (0..256u64)
            .map(|n| squat(format!("sald-ended-{pid}-{n:x}").as_bytes()))
            .collect();
        let mut names = Vec::new();
        for _ in 0..2 {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let socket = AppSocket::new(OwnedFd::from(ours)).unwrap();
            socket.mark_ended();
            let name = peer_name(&theirs).expect("marked");
            assert!(
                name.len() > 5,
                "autobound: {:?}",
                String::from_utf8_lossy(&name)
            );
            assert!(name.starts_with(b"sald-ended-"));
            names.push(name);
        }
        assert_ne!(names[0], names[1]);
    }

    /// A mark whose names are all taken gives up after [`MARK_TRIES`] of
    /// them, the socket unmarked, rather than search further on sald's
    /// thread.
    #[tokio::test]
    async fn a_mark_whose_names_are_taken_gives_up() {
        let name = format!("sald-ended-squatted-{}", std::process::id());
        let _squatter = squat(name.as_bytes());
        let (ours, theirs) = UnixStream::pair().unwrap();
        let socket = AppSocket::new(OwnedFd::from(ours)).unwrap();
        let mut tried = 0;
        let marked = socket.mark_as(|| {
            tried += 1;
            name.clone().into_bytes()
        });
        assert!(!marked);
        assert_eq!(tried, MARK_TRIES);
        assert_eq!(peer_name(&theirs), None, "no other name either");
    }
}
