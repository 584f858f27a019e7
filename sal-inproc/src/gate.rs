//! Who watches the socket: the count of application threads inside the
//! engine's waits, and the driver thread that watches only while that count
//! is 0.
//!
//! A thread waiting inside the engine (or holding an
//! [`EnterGuard`](crate::EnterGuard)) watches the UDP socket and the timerfd
//! itself, so the driver thread sleeps on a private eventfd and costs
//! nothing. The thread that brings the count to 0 signals that eventfd: the
//! driver thread then watches the socket and the timer until a thread comes
//! back (it notices at its next wake-up, and goes back to sleep without
//! driving).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::runtime::Inner;
use crate::Error;

/// State shared by the runtime and its driver thread (which must not keep
/// the runtime alive).
#[derive(Debug)]
pub(crate) struct Gate {
    /// Threads inside the engine's waits, watching the socket.
    inside: AtomicUsize,
    /// The driver thread's private eventfd.
    wake: EventFd,
    /// The runtime is gone: the driver thread ends.
    stop: AtomicBool,
    /// Times the driver thread woke up.
    wakeups: AtomicU64,
    /// Times it drove the host.
    turns: AtomicU64,
}

impl Gate {
    pub(crate) fn new() -> Result<Arc<Gate>, Error> {
        Ok(Arc::new(Gate {
            inside: AtomicUsize::new(0),
            wake: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?,
            stop: AtomicBool::new(false),
            wakeups: AtomicU64::new(0),
            turns: AtomicU64::new(0),
        }))
    }

    /// One more thread watches the socket.
    pub(crate) fn enter(self: &Arc<Gate>) -> Inside {
        self.inside.fetch_add(1, Ordering::AcqRel);
        Inside(Arc::clone(self))
    }

    /// Wakes the driver thread.
    fn signal(&self) {
        let _ = self.wake.write(1);
    }

    /// Ends the driver thread.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.signal();
    }

    /// The driver thread's wake-ups and turns so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.wakeups.load(Ordering::Relaxed),
            self.turns.load(Ordering::Relaxed),
        )
    }

    /// Threads inside now.
    pub(crate) fn inside(&self) -> usize {
        self.inside.load(Ordering::Acquire)
    }
}

/// A thread's presence inside the engine: while it lives, the driver thread
/// leaves the socket to the application's threads.
#[derive(Debug)]
pub(crate) struct Inside(Arc<Gate>);

impl Drop for Inside {
    fn drop(&mut self) {
        if self.0.inside.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one leaves: nobody watches the socket any more.
            self.0.signal();
        }
    }
}

/// The driver thread's loop: while no application thread is inside, wait
/// on the UDP socket, the timerfd and the private eventfd, and drive on
/// input; otherwise wait on the private eventfd only. `udp` and `timer` are
/// its own duplicates of the runtime's descriptors.
pub(crate) fn drive_while_away(
    gate: Arc<Gate>,
    runtime: Weak<Inner>,
    udp: OwnedFd,
    timer: OwnedFd,
) {
    loop {
        if gate.stop.load(Ordering::Acquire) {
            return;
        }
        // Cleared before the count is read: a signal after this stays.
        let _ = gate.wake.read();
        if gate.inside() > 0 {
            let mut fds = [PollFd::new(gate.wake.as_fd(), PollFlags::POLLIN)];
            if let Err(error) = wait(&mut fds) {
                tracing::warn!(%error, "driver thread: ppoll failed; it stops");
                return;
            }
            gate.wakeups.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let fds: [BorrowedFd<'_>; 3] = [udp.as_fd(), timer.as_fd(), gate.wake.as_fd()];
        let mut polled = fds.map(|fd| PollFd::new(fd, PollFlags::POLLIN));
        if let Err(error) = wait(&mut polled) {
            tracing::warn!(%error, "driver thread: ppoll failed; it stops");
            return;
        }
        gate.wakeups.fetch_add(1, Ordering::Relaxed);
        let input = polled[..2]
            .iter()
            .any(|fd| fd.revents().is_some_and(|r| !r.is_empty()));
        // A thread that came in meanwhile drives for itself.
        if !input || gate.inside() > 0 {
            continue;
        }
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        gate.turns.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = runtime.drive() {
            tracing::warn!(%error, "driver thread: driving the host failed");
        }
    }
}

/// `ppoll` without a timeout; EINTR is a wake-up like any other.
fn wait(fds: &mut [PollFd<'_>]) -> Result<(), Error> {
    match ppoll(fds, None, None) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}
