//! Where the library's own descriptors go in the program's table.
//!
//! A program that closed its standard streams (a daemon that closed 0-2,
//! or a test harness that closed stdin) gets them back from its next
//! `open`, `socket` or `dup`, and then relies on what it finds there: a
//! shell's child reads 0, a logger writes 2, `dup2(file, 1)` closes
//! whatever 1 was. A descriptor the library keeps for itself (a control
//! connection to sald, the peer end of a placeholder, a record for the next
//! program image) must therefore never be one of them, or the program
//! would take it for a standard stream, close it behind the library's back,
//! or hand it to a child as its input. Such descriptors are moved above
//! them, as other libraries' own descriptors are (glibc's `nscd` socket,
//! for one); descriptors the program gets back from a call of its own
//! (the socket `socket` returns) take the lowest free number, as the
//! kernel's. Those the library keeps while the program runs on (the
//! in-process engine's) go further, high in the table
//! ([`out_of_the_way`]).
//!
//! The moves are raw system calls: inside the preloaded shim, libc's
//! `fcntl` and `close` are the shim's own, which would take these
//! descriptors for the program's.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// The lowest descriptor number the library keeps for itself: above
/// standard input, output and error.
pub const LOWEST_OWN: i32 = 3;

/// `fd`, moved to [`LOWEST_OWN`] or above if it is one of the standard
/// streams (the copy is close-on-exec; `fd` itself is closed). Left where
/// it is if no number above them is free (`EMFILE`): better kept there
/// than lost, for a process that is out of descriptors anyway.
pub fn above_standard_streams(fd: OwnedFd) -> OwnedFd {
    at_or_above(fd, LOWEST_OWN).unwrap_or_else(|fd| fd)
}

/// `fd` itself if it is at `lowest` or above, else a close-on-exec copy
/// there (`fd` closed); `fd` back if no number there is free.
fn at_or_above(fd: OwnedFd, lowest: i32) -> Result<OwnedFd, OwnedFd> {
    if fd.as_raw_fd() >= lowest {
        return Ok(fd);
    }
    match copy_at(fd.as_fd(), lowest) {
        Some(moved) => {
            close(fd);
            Ok(moved)
        }
        None => Err(fd),
    }
}

/// A close-on-exec copy of `fd` at `lowest` or above (`F_DUPFD_CLOEXEC`),
/// `None` if none is free there or `lowest` is past the limit.
fn copy_at(fd: BorrowedFd<'_>, lowest: i32) -> Option<OwnedFd> {
    // SAFETY: no pointers; `fd` is open while borrowed, and the copy the
    // kernel makes is nobody else's.
    let copy = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_fcntl,
            fd.as_raw_fd(),
            nix::libc::F_DUPFD_CLOEXEC,
            lowest,
        )
    };
    // SAFETY: the kernel just made `copy` for us alone.
    (copy >= 0).then(|| unsafe { OwnedFd::from_raw_fd(copy as RawFd) })
}

/// Closes `fd`, one of the library's own, with the system call itself
/// (see the module docs).
pub fn close(fd: OwnedFd) {
    // SAFETY: no pointers; `fd` is ours, given up here.
    unsafe { nix::libc::syscall(nix::libc::SYS_close, fd.into_raw_fd()) };
}

/// `fd`, moved high in the table (at or above [`high`]), never below
/// [`LOWEST_OWN`]: for a descriptor the library keeps for itself while
/// the program goes on opening and closing its own (control connections
/// to sald, a listener's among them; the in-process engine's UDP socket,
/// timerfd and eventfds; the exec record).
/// Linux gives a number the program frees to the next file the program
/// opens, and programs count on it (`close(3)` then `pipe()`); a daemon
/// that closes every number up to some bound (`for (fd = 3; fd < 64;
/// fd++) close(fd)`) and reuses them would otherwise close the library's
/// descriptors behind its back and have the library write into its own
/// files. Moved above the standard streams only, if the table has no
/// room up there. What is left: the moment between the descriptor's
/// making and its move, a program with more descriptors open than the
/// mark (one it frees up there may still be taken), and a program that
/// closes every number there is (`close_range(3, ~0)`, `closefrom(3)`, a
/// loop up to `sysconf(_SC_OPEN_MAX)`).
pub fn out_of_the_way(fd: OwnedFd) -> OwnedFd {
    at_or_above(fd, high()).unwrap_or_else(above_standard_streams)
}

/// A close-on-exec copy of `fd` out of the program's numbers (see
/// [`out_of_the_way`]), or above the standard streams if no number up
/// there is free.
pub fn copy_out_of_the_way(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    (copy_at(fd, high()).or_else(|| copy_at(fd, LOWEST_OWN)))
        .ok_or_else(std::io::Error::last_os_error)
}

/// Where the library's own descriptors go ([`out_of_the_way`]): half the
/// soft `RLIMIT_NOFILE` as first seen (512 at most, never below
/// [`LOWEST_OWN`]). Read once per process: a limit the program raises
/// later leaves the mark where it was (still out of the way of the low
/// numbers); one it lowers under the mark makes the moves fail, and the
/// descriptors stay above the standard streams.
pub fn high() -> i32 {
    static HIGH: AtomicI32 = AtomicI32::new(0);
    let known = HIGH.load(Ordering::Relaxed);
    if known != 0 {
        return known;
    }
    let mut limit = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for the call.
    let high = if unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        ((limit.rlim_cur / 2).min(512) as i32).max(LOWEST_OWN)
    } else {
        LOWEST_OWN
    };
    HIGH.store(high, Ordering::Relaxed);
    high
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor opened at a low number (a test process has few open)
    /// goes high, close-on-exec.
    #[test]
    fn out_of_the_way_moves_a_low_number_high() {
        let low = OwnedFd::from(std::fs::File::open("/dev/null").expect("open"));
        let number = low.as_raw_fd();
        let moved = out_of_the_way(low);
        assert!(moved.as_raw_fd() > number, "moved up from {number}");
        assert!(moved.as_raw_fd() >= high(), "at the mark or above");
        // SAFETY: no pointers.
        let flags = unsafe { nix::libc::fcntl(moved.as_raw_fd(), nix::libc::F_GETFD) };
        assert_eq!(flags & nix::libc::FD_CLOEXEC, nix::libc::FD_CLOEXEC);
    }

    /// A copy goes high too, close-on-exec, and is the same file.
    #[test]
    fn a_copy_out_of_the_way_is_high() {
        use std::os::fd::AsFd;
        let low = OwnedFd::from(std::fs::File::open("/dev/null").expect("open"));
        let copy = copy_out_of_the_way(low.as_fd()).expect("copy");
        assert!(copy.as_raw_fd() >= high(), "at the mark or above");
        // SAFETY: no pointers.
        let flags = unsafe { nix::libc::fcntl(copy.as_raw_fd(), nix::libc::F_GETFD) };
        assert_eq!(flags & nix::libc::FD_CLOEXEC, nix::libc::FD_CLOEXEC);
        let ident = |fd: &OwnedFd| {
            let stat = nix::sys::stat::fstat(fd.as_raw_fd()).expect("fstat");
            (stat.st_dev, stat.st_ino)
        };
        assert_eq!(ident(&copy), ident(&low));
    }
}
