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
//! A hang-up alone does not tell everything, so sald also names its end
//! before it hangs this one up ([`mark`], the names in `sal_control`: one
//! more system call, only at the end of file of a hung-up socket): *ended*
//! once it delivered the peer's end of stream, whatever came after it,
//! *reset* for a reset with no end of stream before it.
//!
//! Once this end has shut its own writing down, sald closes its end when
//! it is done with a finished flow too: the hang-up is no news then, and
//! the mark tells the reset (`ECONNRESET` once, as from TCP after
//! `SHUT_WR`) from the finished flow (end of file). Another process that
//! shares the socket (after `fork`) does not know of that shutdown; sald's
//! mark tells it too. An end hung up unmarked (sald stopped, or a sald
//! older than the marks) reads as reset only while this end still sends.
//! (A shutdown of this end both ways is a close to sald, which cannot
//! tell the two apart: the flow ends there, and no reset comes after.)
//!
//! A reset after the peer's end of stream reads as end of file too, as
//! from TCP, whose reads return 0 once its FIN came, whatever follows
//! (its reset in `CLOSE_WAIT` leaves what was received to be read, and
//! only a write learns of it: `EPIPE`, which the hang-up gives here).
//! This end knows it if it read the end of file while its socket was not
//! hung up yet (sald had shut it down for writing only), or from sald's
//! *ended* mark when both came before any read. Once this end has shut
//! its own reading down, its reads give end of file with no end of stream
//! from the peer, so they tell nothing of it: a reset after them is
//! `ECONNRESET`, as from TCP after `SHUT_RD`, unless sald's mark shows the
//! peer's end of stream came first (TCP's reads give 0 then too).
//!
//! The error a TCP socket holds after a reset is also `SO_ERROR`'s, once
//! ([`ResetWatch::take_error`]): `ECONNRESET`, or `EPIPE` for a reset
//! after the peer's FIN (measured over loopback: whichever of a read and
//! `SO_ERROR` comes first takes it).
//!
//! This end marks itself too, to abort a flow ([`mark_abort`]): sald
//! resets a flow whose application end it finds so named at its end of
//! file, where a bare end of file finishes it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// What sald's end of a flow says of how the flow ended (see the module
/// docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Unnamed: the flow goes on, or sald went away (or is older than the
    /// marks).
    None,
    /// The peer's end of stream was delivered first, whatever came after
    /// it ([`sal_control::ENDED_MARK`], or any other name but a reset's).
    Ended,
    /// A reset (or a peer given up on) with no end of stream delivered
    /// before it ([`sal_control::RESET_MARK`]).
    Reset,
}

/// How sald marked its end of the flow at `fd` (its name, see the module
/// docs). A system call of its own, not libc's `getpeername`: in the
/// preloaded shim that name is the shim's, which answers with the flow's
/// service.
pub fn mark(fd: BorrowedFd<'_>) -> Mark {
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
    let family = size_of::<sa_family_t>();
    let len = (len as usize).min(addr.len());
    if rc != 0 || len <= family {
        return Mark::None;
    }
    // An abstract name: a NUL, then the name's bytes.
    match addr[family..len].split_first() {
        Some((0, name)) if name.starts_with(sal_control::RESET_MARK) => Mark::Reset,
        _ => Mark::Ended,
    }
}

/// Names `fd`, this application's end of a flow, for sald to reset the
/// flow at its end of file rather than finish it (see the module docs):
/// call before shutting it down both ways. The name is this process's
/// own ([`sal_control::ABORT_MARK`], its process ID and a count), or one
/// the kernel picks if that is taken (sald takes any name for the mark).
/// Best effort: an end left unnamed finishes the flow. System calls of
/// its own, not libc's `bind`: in the preloaded shim that name is the
/// shim's, which would take the lock its caller may hold.
pub fn mark_abort(fd: BorrowedFd<'_>) {
    use nix::libc::{sa_family_t, sockaddr_un, socklen_t, syscall, SYS_bind, AF_UNIX};
    static MARKS: AtomicU64 = AtomicU64::new(0);
    let n = MARKS.fetch_add(1, Ordering::Relaxed);
    let own = format!("{}-{n:x}", std::process::id());
    // SAFETY: all zeroes is a valid `sockaddr_un`.
    let mut addr: sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = AF_UNIX as sa_family_t;
    // An abstract name: a NUL, then the name's bytes.
    let name = sal_control::ABORT_MARK.iter().chain(own.as_bytes());
    for (slot, byte) in addr.sun_path.iter_mut().skip(1).zip(name) {
        *slot = *byte as nix::libc::c_char;
    }
    let family = size_of::<sa_family_t>();
    let len = family + 1 + sal_control::ABORT_MARK.len() + own.len();
    let bind = |len: usize| {
        // SAFETY: `bind` reads `len` bytes of `addr`, a local that outlives
        // the call and is at least that long; `fd` is open while borrowed.
        unsafe {
            syscall(
                SYS_bind,
                fd.as_raw_fd(),
                &addr as *const sockaddr_un,
                len.min(size_of::<sockaddr_un>()) as socklen_t,
            )
        }
    };
    // With the family alone, the kernel picks a name (autobind).
    if bind(len) != 0 {
        bind(family);
    }
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
    /// by sald: [`mark`]), and this is the first time it shows.
    ///
    /// The hang-up is looked at before the mark and the record of this
    /// end's own shutdown: sald marks its end before it hangs this one up,
    /// and a shutdown in another thread that lands in between (and sald's
    /// close of a finished flow after it) is then seen, where the other
    /// order would take that finished flow for a reset.
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
        match mark(fd) {
            Mark::Ended => {
                // The peer's end of stream, then whatever hung it up.
                self.finished.store(true, Ordering::Relaxed);
                Ok(())
            }
            // Unmarked: a hang-up this end's own shutdown may have made
            // tells nothing; else sald went away, which is a reset.
            Mark::None if self.write_shut.load(Ordering::Acquire) => Ok(()),
            Mark::Reset | Mark::None if self.first_report() => {
                Err(io::ErrorKind::ConnectionReset.into())
            }
            Mark::Reset | Mark::None => Ok(()),
        }
    }

    /// The error a TCP socket would hold now, for `SO_ERROR`, taken as
    /// TCP's is (once, by whichever of a read and this comes first):
    /// `ECONNRESET` for a reset with no end of stream before it (the reads
    /// then give end of file), `EPIPE` for a reset after the peer's end of
    /// stream (TCP's in `CLOSE_WAIT`); 0 for none. A hang-up after the end
    /// of stream is a reset only while this end still sends: once it shut
    /// its writing down the flow simply finished.
    pub fn take_error(&self, fd: BorrowedFd<'_>) -> i32 {
        use nix::libc::{ECONNRESET, EPIPE};
        if self.reported.load(Ordering::Relaxed) || !hung_up(fd) {
            return 0;
        }
        let sending = !self.write_shut.load(Ordering::Acquire);
        let error = if self.finished.load(Ordering::Relaxed) {
            sending.then_some(EPIPE)
        } else {
            match mark(fd) {
                Mark::Ended => sending.then_some(EPIPE),
                Mark::Reset => Some(ECONNRESET),
                // Sald went away, or this end's own shutdown hung it up.
                Mark::None => sending.then_some(ECONNRESET),
            }
        };
        match error {
            Some(errno) if self.first_report() => errno,
            _ => 0,
        }
    }

    /// Whether this is the first report of the reset (which it records).
    fn first_report(&self) -> bool {
        !self.reported.swap(true, Ordering::Relaxed)
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
        assert_eq!(mark(ours.as_fd()), Mark::None, "unmarked");
        bind(sald.as_raw_fd(), &UnixAddr::new_unnamed()).unwrap();
        assert_eq!(mark(ours.as_fd()), Mark::Ended, "marked");
        drop(sald);
        assert!(hung_up(ours.as_fd()));
        assert_eq!(mark(ours.as_fd()), Mark::Ended, "marked, and closed");
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

    /// sald's end of a flow named as sald names it: the mark, then a name
    /// of its own (tests run in parallel, each naming ends with the same
    /// marks).
    fn named(sald: &UnixStream, mark: &[u8]) {
        static NAMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NAMED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = mark.to_vec();
        name.extend_from_slice(format!("test-{}-{n}", std::process::id()).as_bytes());
        let addr = UnixAddr::new_abstract(&name).unwrap();
        bind(sald.as_raw_fd(), &addr).unwrap();
    }

    /// A reset after this end shut its writing down (or both ways, which
    /// hangs it up at once) is `ECONNRESET` once, as from TCP (measured
    /// over loopback, Linux 6.18: `SHUT_WR` or `SHUT_RDWR`, the peer's
    /// RST, then reads give `ECONNRESET`, then 0), where the hang-up alone
    /// cannot tell it from a finished flow: sald's reset mark does. The
    /// finished flow (ended mark) and an unmarked hang-up (sald gone) stay
    /// end of file. Such a reset read as end of file.
    #[test]
    fn a_reset_after_this_end_shut_its_writing_is_econnreset() {
        for both_ways in [false, true] {
            for (mark, reset) in [
                (Some(sal_control::RESET_MARK), true),
                (Some(sal_control::ENDED_MARK), false),
                (None, false),
            ] {
                let (ours, sald) = UnixStream::pair().unwrap();
                let watch = ResetWatch::default();
                watch.write_shut();
                if both_ways {
                    watch.read_shut();
                }
                ours.shutdown(if both_ways {
                    std::net::Shutdown::Both
                } else {
                    std::net::Shutdown::Write
                })
                .unwrap();
                if let Some(mark) = mark {
                    named(&sald, mark);
                }
                drop(sald);
                let first = watch.end_of_file(ours.as_fd()).map_err(|e| e.kind());
                let expected = if reset {
                    Err(io::ErrorKind::ConnectionReset)
                } else {
                    Ok(())
                };
                assert_eq!(first, expected, "{mark:?}, both ways: {both_ways}");
                assert!(watch.end_of_file(ours.as_fd()).is_ok(), "then end of file");
            }
        }
    }

    /// `SO_ERROR` takes a reset as TCP's does (measured over loopback):
    /// `ECONNRESET` once for a reset alone, after which reads give end of
    /// file; `EPIPE` once for a reset after the peer's end of stream
    /// (marked, or read before the hang-up); nothing once a read took the
    /// reset, nor for a flow still open, nor for a hang-up after the end
    /// of stream once this end shut its writing down (finished). It was 0
    /// in every case.
    #[test]
    fn so_error_takes_the_reset_once() {
        let (ours, sald) = UnixStream::pair().unwrap();
        let watch = ResetWatch::default();
        assert_eq!(watch.take_error(ours.as_fd()), 0, "open");
        named(&sald, sal_control::RESET_MARK);
        drop(sald);
        assert_eq!(watch.take_error(ours.as_fd()), nix::libc::ECONNRESET);
        assert_eq!(watch.take_error(ours.as_fd()), 0, "taken");
        assert!(
            watch.end_of_file(ours.as_fd()).is_ok(),
            "reads: end of file"
        );

        let (ours, sald) = UnixStream::pair().unwrap();
        let watch = ResetWatch::default();
        drop(sald);
        assert!(watch.end_of_file(ours.as_fd()).is_err(), "a read takes it");
        assert_eq!(watch.take_error(ours.as_fd()), 0, "taken by the read");

        for read_first in [false, true] {
            let (ours, sald) = UnixStream::pair().unwrap();
            let watch = ResetWatch::default();
            sald.shutdown(std::net::Shutdown::Write).unwrap();
            if read_first {
                assert!(watch.end_of_file(ours.as_fd()).is_ok(), "the FIN");
            } else {
                named(&sald, sal_control::ENDED_MARK);
            }
            drop(sald);
            assert_eq!(watch.take_error(ours.as_fd()), nix::libc::EPIPE);
            assert_eq!(watch.take_error(ours.as_fd()), 0, "taken");
            assert!(
                watch.end_of_file(ours.as_fd()).is_ok(),
                "reads: end of file"
            );
        }

        let (ours, sald) = UnixStream::pair().unwrap();
        let watch = ResetWatch::default();
        named(&sald, sal_control::ENDED_MARK);
        watch.write_shut();
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        drop(sald);
        assert_eq!(watch.take_error(ours.as_fd()), 0, "finished both ways");
    }

    /// This end's abort mark is what sald's end sees as its peer's name.
    #[test]
    fn the_abort_mark_names_this_end() {
        let (ours, sald) = UnixStream::pair().unwrap();
        assert_eq!(mark(sald.as_fd()), Mark::None);
        mark_abort(ours.as_fd());
        let peer = nix::sys::socket::getpeername::<UnixAddr>(sald.as_raw_fd()).unwrap();
        let name = peer.as_abstract().expect("an abstract name");
        assert!(name.starts_with(sal_control::ABORT_MARK), "{name:?}");
    }
}
