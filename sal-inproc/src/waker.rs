//! Each thread's own wake-up: an eventfd another thread raises to tell it
//! to look at the engine's state again (the core's lock was let go, or the
//! poller role was handed to it), and a number that names the thread in the
//! engine's lists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::mirror::Signal;

/// Numbers given to threads so far (0 is nobody).
static NEXT: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's waker (`None` if its eventfd could not be made).
    static WAKER: Option<Waker> = Signal::new().ok().map(|signal| Waker {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        signal,
    });
}

/// A thread's number and wake-up eventfd.
#[derive(Debug, Clone)]
pub(crate) struct Waker {
    pub(crate) id: u64,
    pub(crate) signal: Arc<Signal>,
}

/// The calling thread's waker (made at its first use; `None` while the
/// thread's locals are being destroyed).
pub(crate) fn current() -> Option<Waker> {
    WAKER.try_with(Clone::clone).ok().flatten()
}
