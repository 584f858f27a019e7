//! The engine's own descriptors (its eventfds, timerfd and UDP socket)
//! never take a standard stream's number.
//!
//! The engine opens them lazily, at a program's first socket call: a
//! daemon that closed 0-2 first would otherwise find one of them at 0, 1
//! or 2 and read, write or close it as a standard stream, and its own next
//! `socket` would not get the lowest number, as the kernel's does
//! (`socket_shim::fd` explains the rule; the daemon path follows it too).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::timerfd::{ClockId, TimerFd, TimerFlags};

pub(crate) use socket_shim::fd::above_standard_streams as own;

/// An eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`, counter 0) above the
/// standard streams: a level a thread can wait on in `poll`.
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

/// A timerfd on `CLOCK_MONOTONIC` (`TFD_NONBLOCK | TFD_CLOEXEC`) above
/// the standard streams.
pub(crate) fn timer() -> nix::Result<TimerFd> {
    let timer = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?;
    if timer.as_fd().as_raw_fd() >= socket_shim::fd::LOWEST_OWN {
        return Ok(timer);
    }
    // A copy at 3 or above (`F_DUPFD_CLOEXEC`), the original closed.
    let copy = (timer.as_fd().try_clone_to_owned())
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EMFILE)))?;
    // SAFETY: `copy` is a copy of the timerfd just made, which nobody
    // else holds (the original is closed here).
    Ok(unsafe { TimerFd::from_raw_fd(copy.into_raw_fd()) })
}
