//! A listener the application holds, with the eventfd that mirrors its
//! accept queue.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use sal::table::ListenerId;

use crate::lock::Closing;
use crate::mirror::Signal;
use crate::{Error, Mode, Runtime, Stream};

/// A bound prefix (a listening socket's counterpart). Dropping it unbinds
/// the prefix and resets the flows not yet accepted.
pub struct Listener {
    runtime: Runtime,
    id: ListenerId,
    readable: Arc<Signal>,
}

impl Listener {
    pub(crate) fn new(runtime: Runtime, id: ListenerId, readable: Arc<Signal>) -> Listener {
        Listener {
            runtime,
            id,
            readable,
        }
    }

    /// Readable exactly while an established flow waits to be accepted
    /// (made at the first call: `EMFILE` and the like if it cannot be).
    pub fn readable_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        self.readable.fd()
    }

    /// Stops listening, as `shutdown` of a listening socket does on Linux:
    /// the prefix is unbound at once (flows not yet accepted are reset),
    /// and every accept, those waiting now included, fails with
    /// [`Error::NotListening`] (`EINVAL`); the listener stays readable.
    pub fn stop(&self) {
        let id = self.id;
        let stopped = self.runtime.call(Mode::NonBlocking, None, |core| {
            core.stop_listener(id);
            Ok(())
        });
        if let Err(error) = stopped {
            tracing::debug!(%error, "stopping a listener");
        }
    }

    /// Changes how many flows the listener may hold half-open or waiting
    /// to be accepted, as a second `listen(2)` does: flows it holds beyond
    /// a smaller backlog stay, new ones wait for room. A stopped listener
    /// stays stopped ([`Error::NotListening`]).
    pub fn set_backlog(&self, backlog: usize) -> Result<(), Error> {
        let id = self.id;
        self.runtime.call(Mode::NonBlocking, None, |core| {
            if core.listener_stopped(id) {
                return Err(Error::NotListening);
            }
            core.host.set_backlog(id, backlog)?;
            Ok(())
        })
    }

    /// Takes the next established flow, waiting as `mode` allows.
    pub fn accept(&self, mode: Mode) -> Result<Stream, Error> {
        let id = self.id;
        let (key, flow, signals) = self
            .runtime
            .call(mode, Some(&self.readable), |core| core.accept(id))?;
        Ok(Stream::new(self.runtime.clone(), key, flow, signals))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let id = self.id;
        let closed = (self.runtime).close(Closing::Listener(id), |core| core.close_listener(id));
        if let Err(error) = closed {
            tracing::debug!(%error, "closing a dropped listener");
        }
    }
}
