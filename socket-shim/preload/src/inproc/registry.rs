//! Which of the program's descriptor numbers are in-process sockets, and
//! the [`Socket`] each means: copies of a number (`dup` and the like)
//! share one. A lock-free bitset answers "not in-process" for every other
//! number, so that the interposed calls cost others one atomic load.
//!
//! # Identity
//!
//! A number can stop being the socket's behind the shim's back
//! (`syscall(SYS_close)`, `close_range`, `closefrom`, glibc's `fclose` of
//! an `fdopen`ed socket, `posix_spawn` file actions), and the kernel then
//! gives it to the next file opened, possibly one of the engine's own
//! eventfds. So each entry records, at insert, the engine eventfd the
//! number must be a copy of, and the checked look-up ([`checked`], which
//! the interposed calls reach through [`live`]) asks the kernel whether it
//! still is: `kcmp(KCMP_FILE)`, one system call per call on an in-process
//! number (measured about 0.9 µs here, against 0.2 µs for `getppid` and
//! 0.4 µs for `fstat`: every eventfd shares one anonymous inode, so
//! `fstat` cannot tell two of them apart). `close` checks too: a number
//! that fails must not let go of its socket there (the close may be the
//! engine's own, of an eventfd that landed on the number, under its
//! lock), but at the next safe point, below. Where `kcmp` is refused
//! (`ENOSYS` without `CONFIG_CHECKPOINT_RESTORE`, `EPERM` under a seccomp
//! filter), the check falls back to `fstat`'s device and inode (the
//! eventfd's, read at insert until `kcmp` is known to work), which
//! catches a number reused by a pipe, a socket or a file, and misses one
//! reused by another anonymous-inode file (an eventfd, epoll, timerfd or
//! signalfd descriptor, the engine's or the program's). A number that
//! fails the check is forgotten (not
//! in-process from then on: the call takes the plain path), and its
//! [`Socket`] is kept aside and dropped at the next safe point ([`reap`]):
//! the look-up may run inside the engine (its own `read` of a new eventfd
//! that landed on the number), where dropping the last reference, which
//! closes the flow, would take the engine's lock again.
//!
//! The check cannot be skipped for a number checked "recently", say
//! while no descriptor was closed since: what it guards against is
//! exactly what the shim does not see (a raw `syscall(SYS_close)` or
//! `close_range`, glibc's internal `close` in `fclose` and `closedir`,
//! and the internal opens that may take the number next), so no counter
//! of the shim's could tell that nothing happened.
//!
//! Locking rule: the registry's lock (read for a look-up, the data calls'
//! path; written to insert or remove) is held only for that; never across
//! an engine call, and a [`Socket`] is never dropped under it (dropping
//! the last one closes its flow, an engine call).

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

use super::Socket;

/// Numbers below this may be in-process; a socket whose number is higher
/// stays on the daemon path.
pub(crate) const LIMIT: usize = 1 << 16;
const WORDS: usize = LIMIT / 64;

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static NUMBERS: [AtomicU64; WORDS] = [ZERO; WORDS];

/// What a number means, and what it must still be to mean it.
struct Entry {
    socket: Arc<Socket>,
    /// The engine's eventfd (the object's readable one) the number is a
    /// copy of: held open by `socket`.
    target: RawFd,
    /// Device and inode of that eventfd, for the `fstat` fallback: read
    /// at insert while `kcmp` is not known to work, else (0, 0), and read
    /// from `target` should `kcmp` be refused later (see [`insert`]).
    ident: (u64, u64),
    /// Whether the program wants the number closed at `exec`. The kernel's
    /// flag is always set on an in-process number (a bare eventfd would
    /// cross); this is what `F_GETFD` answers and what the number gets
    /// when its socket is handed over to sald (`handover`).
    cloexec: bool,
}

struct Registry {
    map: BTreeMap<RawFd, Entry>,
    /// Sockets of numbers found no longer theirs, to be dropped by
    /// [`reap`] (see the module's doc).
    orphans: Vec<Arc<Socket>>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    map: BTreeMap::new(),
    orphans: Vec::new(),
});

fn bit(fd: RawFd) -> Option<(usize, u64)> {
    let fd = usize::try_from(fd).ok()?;
    (fd < LIMIT).then(|| (fd / 64, 1u64 << (fd % 64)))
}

/// Whether `fd` was made an in-process socket's number and not closed
/// through the shim since (lock-free; no identity check: a hint, see
/// [`live`]).
#[inline]
pub(crate) fn is(fd: RawFd) -> bool {
    match bit(fd) {
        Some((word, mask)) => NUMBERS[word].load(Ordering::Acquire) & mask != 0,
        None => false,
    }
}

/// Whether `fd` is an in-process socket's number now: [`is`], then the
/// identity check (one `kcmp` for such a number, nothing for others).
pub(crate) fn live(fd: RawFd) -> bool {
    is(fd) && checked(fd).is_some()
}

/// Whether `fd` may be registered at all.
pub(crate) fn fits(fd: RawFd) -> bool {
    bit(fd).is_some()
}

/// The registry, to change it.
fn lock() -> RwLockWriteGuard<'static, Registry> {
    REGISTRY.write().unwrap_or_else(PoisonError::into_inner)
}

/// The socket at `fd`, if it is in-process, with no identity check: for
/// a call that just found the number [`live`].
pub(crate) fn get(fd: RawFd) -> Option<Arc<Socket>> {
    if !is(fd) {
        return None;
    }
    let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    registry.map.get(&fd).map(|entry| Arc::clone(&entry.socket))
}

/// The socket at `fd`, if it is in-process and the number is still a
/// copy of its eventfd; a number that is not is forgotten (see the
/// module's doc).
pub(crate) fn checked(fd: RawFd) -> Option<Arc<Socket>> {
    if !is(fd) {
        return None;
    }
    let (socket, target, ident) = {
        let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
        let entry = registry.map.get(&fd)?;
        (Arc::clone(&entry.socket), entry.target, entry.ident)
    };
    if same_file(fd, target, ident) {
        return Some(socket);
    }
    let mut registry = lock();
    if registry
        .map
        .get(&fd)
        .is_some_and(|entry| Arc::ptr_eq(&entry.socket, &socket))
    {
        if let Some((word, mask)) = bit(fd) {
            NUMBERS[word].fetch_and(!mask, Ordering::AcqRel);
        }
        if let Some(entry) = registry.map.remove(&fd) {
            registry.orphans.push(entry.socket);
        }
    }
    // Possibly the last reference now (a close raced with this): kept
    // aside as well, never dropped here.
    registry.orphans.push(socket);
    None
}

/// The address of the socket at `fd`, if it is in-process and the number
/// is still a copy of its eventfd ([`checked`]'s test, under the read
/// lock, which keeps the eventfd open meanwhile): a name for the socket
/// that takes no reference to it, so that the caller (an `fstat`, maybe
/// in a signal handler) never drops the last one. A number that failed
/// the test is left for the next [`checked`] to forget.
pub(crate) fn address(fd: RawFd) -> Option<usize> {
    if !is(fd) {
        return None;
    }
    let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    let entry = registry.map.get(&fd)?;
    same_file(fd, entry.target, entry.ident).then_some(Arc::as_ptr(&entry.socket) as usize)
}

/// `kcmp`'s `KCMP_FILE` (`linux/kcmp.h`).
const KCMP_FILE: libc::c_long = 0;

/// Whether `kcmp` works here: not tried yet, yes, refused.
static KCMP: AtomicU8 = AtomicU8::new(KCMP_UNTRIED);
const KCMP_UNTRIED: u8 = 0;
const KCMP_WORKS: u8 = 1;
const KCMP_REFUSED: u8 = 2;

/// This process's id, kept (glibc's `getpid` is a system call): read
/// again in a forked child ([`pid`]'s `fork` handler, and [`forked`]). A child made by a raw `clone` that
/// skips the `fork` handlers keeps its parent's, and `kcmp` then answers
/// for the parent (`ESRCH` once it is gone: the `fstat` check then).
static PID: AtomicI32 = AtomicI32::new(0);

pub(crate) fn pid() -> libc::pid_t {
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        // Read again in a forked child, even one of a process that has
        // no engine (whose own `fork` handlers are not in yet).
        extern "C" fn forget() {
            PID.store(0, Ordering::Relaxed);
        }
        // SAFETY: a plain `extern "C" fn()` that lives as long as the
        // process, for the child only.
        unsafe { libc::pthread_atfork(None, None, Some(forget)) };
    });
    match PID.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: no pointers.
            let pid = unsafe { libc::getpid() };
            PID.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// In a forked child, right after `fork` (the registry's lock still
/// held by [`fork_prepare`]): the process id changed, and the child's
/// copies of its listeners' relay connections are closed (see
/// `Socket::forked`).
pub(crate) fn forked() {
    // SAFETY: no pointers.
    PID.store(unsafe { libc::getpid() }, Ordering::Relaxed);
    let _ = FORK_GUARD.try_with(|held| {
        if let Some(registry) = held.borrow().as_ref() {
            let sockets = registry.map.values().map(|entry| &entry.socket);
            for socket in sockets.chain(&registry.orphans) {
                socket.forked();
            }
        }
    });
}

/// Whether the number `fd` is a copy of the eventfd `target` (device and
/// inode `ident`): see the module's doc.
fn same_file(fd: RawFd, target: RawFd, ident: (u64, u64)) -> bool {
    if KCMP.load(Ordering::Relaxed) != KCMP_REFUSED {
        let pid = libc::c_long::from(pid());
        let (a, b) = (libc::c_long::from(fd), libc::c_long::from(target));
        // SAFETY: no pointers; kcmp only compares two of this process's
        // descriptors.
        let answer = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
        if answer >= 0 {
            KCMP.store(KCMP_WORKS, Ordering::Relaxed);
            return answer == 0;
        }
        match crate::ops::last_errno() {
            // A closed number (or the target closed with it, by
            // `close_range`): not the socket's any more.
            libc::EBADF => return false,
            libc::ENOSYS | libc::EPERM | libc::EACCES => {
                KCMP.store(KCMP_REFUSED, Ordering::Relaxed);
            }
            // ESRCH (a stale process id, see [`PID`]) and the like: this
            // once, the weaker check.
            _ => {}
        }
    }
    let ident = match ident {
        // Not read at insert (`kcmp` worked then): `target` is still the
        // eventfd, held open by the socket the caller holds.
        (0, 0) => crate::table::ident(target),
        ident => ident,
    };
    ident != (0, 0) && crate::table::ident(fd) == ident
}

/// `fd` now means `socket`, a copy of its readable eventfd, and the
/// program wants it closed at `exec` if `cloexec`; what it meant before
/// is returned, to be dropped by the caller after this returns. The
/// socket is given back if `fd` is out of range.
pub(crate) fn insert(
    fd: RawFd,
    socket: Arc<Socket>,
    cloexec: bool,
) -> Result<Option<Arc<Socket>>, Arc<Socket>> {
    let Some((word, mask)) = bit(fd) else {
        return Err(socket);
    };
    let Some(target) = socket.identity_fd() else {
        return Err(socket);
    };
    // The fallback's reference, read only where the fallback may be
    // needed: once `kcmp` worked, an `fstat` per socket would be wasted
    // (`same_file` reads it then, should `kcmp` be refused later on, as
    // under a seccomp filter installed meanwhile).
    let ident = match KCMP.load(Ordering::Relaxed) {
        KCMP_WORKS => (0, 0),
        _ => crate::table::ident(target),
    };
    let entry = Entry {
        socket,
        target,
        ident,
        cloexec,
    };
    let old = lock().map.insert(fd, entry);
    NUMBERS[word].fetch_or(mask, Ordering::AcqRel);
    Ok(old.map(|entry| entry.socket))
}

/// `fd` no longer means anything here; what it meant is returned, to be
/// dropped by the caller once the number is closed.
pub(crate) fn remove(fd: RawFd) -> Option<Arc<Socket>> {
    let (word, mask) = bit(fd)?;
    if NUMBERS[word].load(Ordering::Acquire) & mask == 0 {
        return None;
    }
    let mut registry = lock();
    NUMBERS[word].fetch_and(!mask, Ordering::AcqRel);
    registry.map.remove(&fd).map(|entry| entry.socket)
}

/// After a successful copy of `old` to `new` (`dup`, `dup2`, `dup3`,
/// `fcntl(F_DUPFD)`), which the program wants closed at `exec` if
/// `cloexec`: `new` means what `old` means, and what `new` meant is
/// returned, to be dropped by the caller.
pub(crate) fn copy(old: RawFd, new: RawFd, cloexec: bool) -> Option<Arc<Socket>> {
    if old == new || !(is(old) || is(new)) {
        return None;
    }
    match checked(old) {
        Some(socket) => match insert(new, socket, cloexec) {
            Ok(replaced) => replaced,
            // Out of range: the copy is a plain eventfd to the program.
            Err(_) => remove(new),
        },
        None => remove(new),
    }
}

/// Whether the program wants the in-process number `fd` closed at `exec`
/// (`None`: not an in-process number).
pub(crate) fn cloexec(fd: RawFd) -> Option<bool> {
    let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    registry.map.get(&fd).map(|entry| entry.cloexec)
}

/// The program now wants the in-process number `fd` closed at `exec` if
/// `on` (`fcntl(F_SETFD)`, `ioctl(FIOCLEX)`); false if `fd` is none.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> bool {
    let mut registry = lock();
    match registry.map.get_mut(&fd) {
        Some(entry) => {
            entry.cloexec = on;
            true
        }
        None => false,
    }
}

/// A socket's numbers, each with whether the program wants it closed at
/// `exec`.
pub(crate) type Numbers = Vec<(RawFd, bool)>;

/// Every socket this process holds, with its numbers, for the hand-over
/// to sald.
pub(crate) fn by_socket() -> Vec<(Arc<Socket>, Numbers)> {
    let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    let mut all: Vec<(Arc<Socket>, Numbers)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for (&fd, entry) in &registry.map {
        let at = *index.entry(Arc::as_ptr(&entry.socket)).or_insert_with(|| {
            all.push((Arc::clone(&entry.socket), Vec::new()));
            all.len() - 1
        });
        all[at].1.push((fd, entry.cloexec));
    }
    all
}

/// The numbers of `socket`, for its hand-over to sald.
pub(crate) fn numbers_of(socket: &Arc<Socket>) -> Numbers {
    let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    let numbers = registry.map.iter();
    numbers
        .filter(|(_, entry)| Arc::ptr_eq(&entry.socket, socket))
        .map(|(&fd, entry)| (fd, entry.cloexec))
        .collect()
}

/// Replaces the number `fd` of `socket` with another file (`swap`, a
/// `dup3` onto it that says whether it worked) under the registry's
/// lock, so that no `close` or copy of the number comes between the check
/// that it is still the socket's (its entry, and the kernel's word that
/// it is still a copy of the socket's eventfd) and the swap; the number
/// then leaves the registry. Whether it was swapped. What it meant is
/// returned through `let_go`, to be dropped once the lock is released.
pub(crate) fn replace(
    fd: RawFd,
    socket: &Arc<Socket>,
    swap: impl FnOnce() -> bool,
    let_go: &mut Vec<Arc<Socket>>,
) -> bool {
    let Some((word, mask)) = bit(fd) else {
        return false;
    };
    let mut registry = lock();
    let ours = registry.map.get(&fd).is_some_and(|entry| {
        Arc::ptr_eq(&entry.socket, socket) && same_file(fd, entry.target, entry.ident)
    });
    if !ours || !swap() {
        return false;
    }
    NUMBERS[word].fetch_and(!mask, Ordering::AcqRel);
    let_go.extend(registry.map.remove(&fd).map(|entry| entry.socket));
    true
}

/// Every socket, taken out (the numbers stay open, in-process no more),
/// those kept aside included: for the process's exit, which closes them
/// all.
pub(crate) fn drain() -> Vec<Arc<Socket>> {
    let mut registry = lock();
    for word in &NUMBERS {
        word.store(0, Ordering::Release);
    }
    let map = std::mem::take(&mut registry.map);
    let mut all = std::mem::take(&mut registry.orphans);
    all.extend(map.into_values().map(|entry| entry.socket));
    all
}

/// Drops the sockets of numbers found no longer theirs (see [`checked`]):
/// called where the calling thread holds no lock of the shim's or the
/// engine's (the program's `close` of an in-process number, `connect`,
/// `listen`, `accept`, `poll`).
pub(crate) fn reap() {
    let orphans = {
        let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
        if registry.orphans.is_empty() {
            return;
        }
        drop(registry);
        std::mem::take(&mut lock().orphans)
    };
    drop(orphans);
}

thread_local! {
    static FORK_GUARD: std::cell::RefCell<Option<RwLockWriteGuard<'static, Registry>>> =
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
