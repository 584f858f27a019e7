//! Telling a reset flow from a finished one.
//!
//! A flow reaches the application as one end of a socketpair, which
//! carries bytes and end of file but no error. So sald marks the
//! difference with how it shuts its end down (see sald's `pump`): at the
//! peer's end of stream for writing only, after a reset (or a peer given
//! up on, or sald stopping) both ways. This end then reads the bytes that
//! had arrived, end of file, and sees a hang-up with it. A reader that got
//! end of file on a hung-up socket while its own writing is still open was
//! reset: it gets `ECONNRESET` once, as from a TCP socket, and end of file
//! after that.
//!
//! Once this end has shut its own writing down, sald closes its end when
//! it is done with a finished flow too, and the two look alike: that end
//! of file stays an end of file. Another process that shares the socket
//! (after `fork`) does not know of that shutdown; sald's mark (below)
//! tells it the flow finished.
//!
//! A reset after the peer's end of stream reads as end of file too, as
//! from TCP, whose reads return 0 once its FIN came, whatever follows
//! (its reset in `CLOSE_WAIT` leaves what was received to be read, and
//! only a write learns of it: `EPIPE`, which the hang-up gives here).
//! This end knows it if it read the end of file while its socket was not
//! hung up yet (sald had shut it down for writing only). When both came
//! before any read, the socket looks as after a reset alone, so sald
//! marks it as it delivers the end of stream, before the shutdown that
//! delivers it (which alone hangs the socket up once this end shut its
//! writing down): it binds its end to an address, which this end's
//! `getpeername` shows ([`ended_first`]; one more system call, only at
//! the end of file of a hung-up socket). Once this end has shut its own reading down, its
//! reads give end of file with no end of stream from the peer, so they
//! tell nothing of it: a reset after them is `ECONNRESET`, as from TCP
//! after `SHUT_RD`, unless sald's mark shows the peer's end of stream
//! came first (TCP's reads give 0 then too).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Whether `fd` is hung up: shut down both ways by its peer (or by both
/// ends), or its peer closed.
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut polled = [PollFd::new(fd, PollFlags::empty())];
    matches!(poll(&mut polled, PollTimeout::ZERO), Ok(1))
        && polled[0]
            .revents()
            .is_some_and(|events| events.contains(PollFlags::POLLHUP))
}

/// Whether the peer of `fd` (sald's end of a flow) is marked as having
/// delivered its peer's end of stream before it hung up: bound to an
/// address, where sald's ends are otherwise unnamed (see the module docs).
///
/// A system call of its own, not libc's `getpeername`: in the preloaded
/// shim that name is the shim's, which answers with the flow's service.
pub fn ended_first(fd: BorrowedFd<'_>) -> bool {
    use nix::libc::{sa_family_t, sockaddr_un, socklen_t, syscall, SYS_getpeername};
    let mut addr = [0u8; size_of::<sockaddr_un>()];
    let mut len = addr.len() as socklen_t;
    // SAFETY: `getpeername` writes at most `len` bytes into `addr` and the
    // length into `len`, both locals that outlive the call; `fd` is open
    // while borrowed.
    let rc = unsafe {
        syscall(
            SYS_getpeername,
            fd.as_raw_fd(),
            addr.as_mut_ptr(),
            &mut len as *mut socklen_t,
        )
    };
    rc == 0 && len as usize > size_of::<sa_family_t>()
}

/// What one flow socket's reader needs to report a reset at its end of
/// file (see the module docs).
#[derive(Debug, Default)]
pub struct ResetWatch {
    /// This end shut its writing down: a hang-up proves nothing then.
    write_shut: AtomicBool,
    /// This end shut its reading down: an end of file proves no end of
    /// stream then.
    read_shut: AtomicBool,
    /// An end of file was read before any hang-up, or sald marked the
    /// hang-up as coming after the end of stream: the peer's end of stream
    /// came first, and a reset after it is no news.
    finished: AtomicBool,
    /// The reset was reported: later reads are plain end of file.
    reported: AtomicBool,
}

impl ResetWatch {
    /// This end is about to shut its writing down (call before the
    /// shutdown itself).
    pub fn write_shut(&self) {
        self.write_shut.store(true, Ordering::Release);
    }

    /// This end is about to shut its reading down (call before the
    /// shutdown itself).
    pub fn read_shut(&self) {
        self.read_shut.store(true, Ordering::Release);
    }

    /// A read of `fd` returned end of file: `ECONNRESET` if the flow was
    /// reset, no end of stream came before the reset (read here, or marked
    /// by sald: [`ended_first`]), and this is the first time it shows.
    ///
    /// The hang-up is looked at before the record of this end's own
    /// shutdown: a shutdown in another thread that lands in between (and
    /// sald's close of a finished flow after it) is then seen, where the
    /// other order would take that finished flow for a reset.
    pub fn end_of_file(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.reported.load(Ordering::Relaxed) || self.finished.load(Ordering::Relaxed) {
            return Ok(());
        }
        if !hung_up(fd) {
            // The peer's end of stream, unless this end's own `SHUT_RD`
            // (looked at after the hang-up, as the shutdown below).
            if !self.read_shut.load(Ordering::Acquire) {
                self.finished.store(true, Ordering::Relaxed);
            }
            return Ok(());
        }
        if self.write_shut.load(Ordering::Acquire) {
            return Ok(());
        }
        if ended_first(fd) {
            // The peer's end of stream, then a reset (sald's mark, made
            // before the hang-up).
            self.finished.store(true, Ordering::Relaxed);
            return Ok(());
        }
        if self.reported.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        Err(io::ErrorKind::ConnectionReset.into())
    }

    /// A reset reported by a read whose caller could not pass it on (a
    /// batch of receives that had already received something) is reported
    /// again by the next read, as Linux keeps such an error for the
    /// socket's next call.
    pub fn report_again(&self) {
        self.reported.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{bind, UnixAddr};

    use super::*;

    /// sald's mark (its end bound to an address the kernel picks) shows
    /// at this end, before and after sald's end is closed; an unnamed
    /// end is no mark.
    #[test]
    fn the_mark_is_the_peers_address() {
        let (ours, sald) = UnixStream::pair().unwrap();
        assert!(!ended_first(ours.as_fd()), "unmarked");
        bind(sald.as_raw_fd(), &UnixAddr::new_unnamed()).unwrap();
        assert!(ended_first(ours.as_fd()), "marked");
        drop(sald);
        assert!(hung_up(ours.as_fd()));
        assert!(ended_first(ours.as_fd()), "marked, and closed");
    }

    /// A hang-up with no end of file read before it is a reset, once;
    /// with sald's mark, the end of file it follows.
    #[test]
    fn a_marked_hang_up_is_an_end_of_file() {
        for marked in [false, true] {
            let (ours, sald) = UnixStream::pair().unwrap();
            if marked {
                bind(sald.as_raw_fd(), &UnixAddr::new_unnamed()).unwrap();
            }
            drop(sald);
            let watch = ResetWatch::default();
            let first = watch.end_of_file(ours.as_fd()).map_err(|e| e.kind());
            let expected = if marked {
                Ok(())
            } else {
                Err(io::ErrorKind::ConnectionReset)
            };
            assert_eq!(first, expected, "marked: {marked}");
            assert!(watch.end_of_file(ours.as_fd()).is_ok(), "then end of file");
        }
    }
}
