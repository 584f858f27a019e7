//! An eventfd that mirrors one readiness of one object: readable (its
//! counter at 1) exactly while the object is ready, so that `poll`,
//! `select` and `epoll` wait on it natively.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::Error;

/// The descriptor, shared by the object (which lends it out) and the
/// engine's core (which raises and lowers it).
#[derive(Debug)]
pub(crate) struct Signal(EventFd);

impl Signal {
    /// A new, lowered eventfd (`EFD_NONBLOCK | EFD_CLOEXEC`).
    pub(crate) fn new() -> Result<Arc<Signal>, Error> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Arc::new(Signal(fd)))
    }

    /// Makes it readable (wakes whoever waits on it).
    pub(crate) fn raise(&self) {
        // Fails only at a counter of 2^64-2, which one write per change
        // never reaches.
        let _ = self.0.write(1);
    }

    /// Makes it not readable.
    pub(crate) fn lower(&self) {
        // EAGAIN: it was not raised.
        let _ = self.0.read();
    }

    /// The descriptor, to wait on.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// One readiness: the signal and whether it is raised (known under the
/// core's lock, so that each change costs one system call and no change
/// costs none).
#[derive(Debug)]
pub(crate) struct Mirror {
    signal: Arc<Signal>,
    raised: bool,
}

impl Mirror {
    /// A lowered mirror on a new eventfd.
    pub(crate) fn new() -> Result<Mirror, Error> {
        Ok(Mirror {
            signal: Signal::new()?,
            raised: false,
        })
    }

    /// The shared descriptor.
    pub(crate) fn signal(&self) -> Arc<Signal> {
        Arc::clone(&self.signal)
    }

    /// Raises or lowers the eventfd to `ready`, if it is not there yet.
    pub(crate) fn set(&mut self, ready: bool) {
        if ready != self.raised {
            if ready {
                self.signal.raise();
            } else {
                self.signal.lower();
            }
            self.raised = ready;
        }
    }
}
