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
//! of file stays an end of file.
//!
//! A reset after the peer's end of stream reads as end of file too, as
//! from TCP, whose reads return 0 once its FIN came, whatever follows.
//! Here that is known only if this end read the end of file while its
//! socket was not hung up yet (sald had shut it down for writing only):
//! when the reset came before any read saw the end of file, the socket
//! looks as after a reset alone, and the end of file is `ECONNRESET`.
//! Once this end has shut its own reading down, its reads give end of
//! file with no end of stream from the peer, so they tell nothing of it:
//! a reset after them is `ECONNRESET`, as from TCP after `SHUT_RD`.

use std::io;
use std::os::fd::BorrowedFd;
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

/// What one flow socket's reader needs to report a reset at its end of
/// file (see the module docs).
#[derive(Debug, Default)]
pub struct ResetWatch {
    /// This end shut its writing down: a hang-up proves nothing then.
    write_shut: AtomicBool,
    /// This end shut its reading down: an end of file proves no end of
    /// stream then.
    read_shut: AtomicBool,
    /// An end of file was read before any hang-up: the peer's end of
    /// stream came first, and a reset after it is no news.
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
    /// reset, no end of stream was read before the reset, and this is the
    /// first time it shows.
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
        if self.write_shut.load(Ordering::Acquire) || self.reported.swap(true, Ordering::Relaxed) {
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
