//! Which of the program's descriptor numbers are in-process sockets, and
//! the [`Socket`] each means: copies of a number (`dup` and the like)
//! share one. A lock-free bitset answers "not in-process" for every other
//! number, so that the interposed calls cost others one atomic load.
//!
//! Locking rule: the registry's lock (read for a look-up, the data calls'
//! path; written to insert or remove) is held only for that; never across an engine call, and a [`Socket`] is never dropped
//! under it (dropping the last one closes its flow, an engine call).

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use super::Socket;

/// Numbers below this may be in-process; a socket whose number is higher
/// stays on the daemon path.
pub(crate) const LIMIT: usize = 1 << 16;
const WORDS: usize = LIMIT / 64;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static NUMBERS: [AtomicU64; WORDS] = [ZERO; WORDS];

type Map = BTreeMap<RawFd, Arc<Socket>>;

static REGISTRY: RwLock<Map> = RwLock::new(BTreeMap::new());

fn bit(fd: RawFd) -> Option<(usize, u64)> {
    let fd = usize::try_from(fd).ok()?;
    (fd < LIMIT).then(|| (fd / 64, 1u64 << (fd % 64)))
}

/// Whether `fd` is an in-process socket's number (lock-free).
#[inline]
pub(crate) fn is(fd: RawFd) -> bool {
    match bit(fd) {
        Some((word, mask)) => NUMBERS[word].load(Ordering::Acquire) & mask != 0,
        None => false,
    }
}

/// Whether `fd` may be registered at all.
pub(crate) fn fits(fd: RawFd) -> bool {
    bit(fd).is_some()
}

/// The registry, to change it.
fn lock() -> RwLockWriteGuard<'static, Map> {
    REGISTRY.write().unwrap_or_else(PoisonError::into_inner)
}

/// The socket at `fd`, if it is in-process.
pub(crate) fn get(fd: RawFd) -> Option<Arc<Socket>> {
    if !is(fd) {
        return None;
    }
    let map = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    map.get(&fd).cloned()
}

/// `fd` now means `socket`; what it meant before is returned, to be
/// dropped by the caller after this returns. `false` with the socket
/// given back if `fd` is out of range.
pub(crate) fn insert(fd: RawFd, socket: Arc<Socket>) -> Result<Option<Arc<Socket>>, Arc<Socket>> {
    let Some((word, mask)) = bit(fd) else {
        return Err(socket);
    };
    let old = lock().insert(fd, socket);
    NUMBERS[word].fetch_or(mask, Ordering::AcqRel);
    Ok(old)
}

/// `fd` no longer means anything here; what it meant is returned, to be
/// dropped by the caller once the number is closed.
pub(crate) fn remove(fd: RawFd) -> Option<Arc<Socket>> {
    let (word, mask) = bit(fd)?;
    if NUMBERS[word].load(Ordering::Acquire) & mask == 0 {
        return None;
    }
    let mut map = lock();
    NUMBERS[word].fetch_and(!mask, Ordering::AcqRel);
    map.remove(&fd)
}

/// After a successful copy of `old` to `new` (`dup`, `dup2`, `dup3`,
/// `fcntl(F_DUPFD)`): `new` means what `old` means, and what `new` meant
/// is returned, to be dropped by the caller.
pub(crate) fn copy(old: RawFd, new: RawFd) -> Option<Arc<Socket>> {
    if old == new || !(is(old) || is(new)) {
        return None;
    }
    match get(old) {
        Some(socket) => match insert(new, socket) {
            Ok(replaced) => replaced,
            // Out of range: the copy is a plain eventfd to the program.
            Err(_) => remove(new),
        },
        None => remove(new),
    }
}

/// Every socket, taken out (the numbers stay open, in-process no more):
/// for the process's exit, which closes them all.
pub(crate) fn drain() -> Vec<Arc<Socket>> {
    let mut map = lock();
    for word in &NUMBERS {
        word.store(0, Ordering::Release);
    }
    std::mem::take(&mut *map).into_values().collect()
}

thread_local! {
    static FORK_GUARD: std::cell::RefCell<Option<RwLockWriteGuard<'static, Map>>> =
        const { std::cell::RefCell::new(None) };
}

/// Holds the registry's lock across `fork` (see `engine::fork_prepare`).
pub(crate) fn fork_prepare() {
    let guard = lock();
    let _ = FORK_GUARD.try_with(|held| *held.borrow_mut() = Some(guard));
}

/// Lets the lock go after `fork`, in the parent and in the child.
pub(crate) fn fork_release() {
    let _ = FORK_GUARD.try_with(|held| held.borrow_mut().take());
}
