//! The engine's own descriptors (its eventfds, timerfd and UDP socket)
//! keep out of the program's numbers.
//!
//! The engine opens them lazily, at a program's first socket call and as
//! streams come: a daemon that closed 0-2 first would otherwise find one
//! of them at 0, 1 or 2 and read, write or close it as a standard stream;
//! a program that closes every number up to some bound and reuses them
//! would close them behind the engine's back, and the engine would write
//! into the program's files; and the program's own next `open` or `pipe`
//! would not get the number Linux gives. They are moved high in the table
//! (`socket_shim::fd::out_of_the_way`). A program's number for an
//! in-process socket is a copy of one of them, made where the program's
//! call puts it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::timerfd::{TimerFd, TimerFlags};

pub(crate) use socket_shim::fd::copy_out_of_the_way as copy;
pub(crate) use socket_shim::fd::out_of_the_way as own;

/// An eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`, counter 0) out of the
/// program's numbers: a level a thread can wait on in `poll`.
#[derive(Debug)]
pub(crate) struct Counter(OwnedFd);

impl Counter {
    pub(crate) fn new() -> nix::Result<Counter> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Counter(own(fd.into())))
    }

    /// Adds 1 to the counter: readable from now on.
    pub(crate) fn add(&self) -> nix::Result<usize> {
        nix::unistd::write(&self.0, &1u64.to_ne_bytes())
    }

    /// Takes the counter back to 0 (`EAGAIN` if it was 0 already).
    pub(crate) fn take(&self) -> nix::Result<u64> {
        let mut value = [0u8; 8];
        nix::unistd::read(self.0.as_raw_fd(), &mut value)?;
        Ok(u64::from_ne_bytes(value))
    }
}

impl AsFd for Counter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Counter {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// A timerfd on `CLOCK_MONOTONIC` (`TFD_NONBLOCK | TFD_CLOEXEC`) out of
/// the program's numbers, moved as the engine's other descriptors are.
pub(crate) fn timer() -> nix::Result<TimerFd> {
    let flags = TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC;
    // SAFETY: no pointers.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags.bits()) };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: the timerfd just made, nobody else's.
    let moved = own(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: `moved` is that timerfd (or its copy, the original closed).
    Ok(unsafe { TimerFd::from_raw_fd(moved.into_raw_fd()) })
}
