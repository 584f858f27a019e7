//! Kernel TCP sockets that in-process connects took the numbers of, kept
//! for the program's next `socket()`.
//!
//! In inet mode (`serval-run --map`) every TCP socket the program makes is
//! the kernel's, since nothing says yet where it will connect; a connect to
//! a mapped port then puts the engine's stream at its number, and the
//! kernel socket was closed under it. Making and destroying that socket was
//! about 5 % of both CPUs in the connect bench (`socket` 2.2 %, its
//! destruction in the `dup3` 2.6 %), for a socket nobody used. So the
//! connect keeps it instead (a copy of the number, close-on-exec, out of
//! the program's numbers as the engine's own descriptors are), and the
//! next `socket()` of the same family takes it:
//! a copy at the lowest free number, as the kernel's `socket` gives, with
//! the options the program set on it before put back to their defaults and
//! the blocking mode asked for. The kernel socket then costs two or three
//! cheap calls (`fcntl`, `close`, a `setsockopt` per option to undo) where
//! it cost two expensive ones.
//!
//! Only sockets that are as new are kept: never bound, never connected in
//! the kernel (the in-process connect took them before; `MSG_FASTOPEN`
//! counts), no file flag but `O_NONBLOCK`, options set only among those
//! whose default is off ([`RESETTABLE`]), and no other holder: never
//! copied (`dup`, `F_DUPFD`, passed in `SCM_RIGHTS`), never registered in
//! an epoll set (a registration lasts as long as the file, and would
//! report the next program socket's events under the old one's data),
//! never shut down, no `ioctl` or `fcntl` but the blocking mode and
//! close-on-exec, and made after the process's last `fork`, `posix_spawn`,
//! `system`, `popen` or `vfork`-and-`exec` (a child's copy could still
//! hold it open, or connect it). What the program does to each number is
//! noted lock-free, before the call, a byte per number ([`made`],
//! [`option_set`], [`taint`]; a socket passed in `SCM_RIGHTS` only after
//! the send, when the message is known to be readable), and the connect
//! decides under the daemon table's lock, which `fork` and spawns take
//! too ([`Spare::of`]); anything else is closed as before. Not seen: a
//! child made by a raw `clone` or `_Fork` (no `fork` handler runs), another
//! process taking the socket with `pidfd_getfd`, sockets passed on a
//! socket of the shim's own, calls made without libc (`syscall`,
//! `io_uring`); and a kept socket keeps what its making thread gave it:
//! network namespace, owner, cgroup and security label (a program that
//! changes those between its sockets, per thread or over time, may get a
//! socket `socket()` would not have made). At most [`KEEP`] are kept per
//! process (each is a descriptor, counted against the program's limit, as
//! the engine's spare eventfds are: a program at its limit meets `EMFILE`
//! up to 16 descriptors sooner).
//!
//! A kept socket's number is the shim's: the program may still close it
//! behind the shim's back (`close_range`, `closefrom`), and the kernel
//! then gives the number to the next file opened. So each kept socket
//! carries its device and inode (a socket's inode is its own) and is taken
//! only if the number still has them (a thread that closes and reopens
//! numbers behind the shim's back at the same moment as another's
//! `socket()` may still race with that look). A forked child has copies
//! of the parent's kept sockets, the same kernel sockets, which would keep
//! them open (a peer would hear no end when the parent closes one) or be
//! handed out twice: the child closes them at once ([`fork_child`]).

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use libc::c_int;

use super::registry;
use crate::real;

/// Kept sockets at most, per process.
const KEEP: usize = 16;

/// Options a kept socket may have had set by the program: each is off
/// by default (a zero `int`), and is put back off when it is taken.
const RESETTABLE: [(c_int, c_int); 4] = [
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
];

/// What the program did to each number's socket (see [`made`]): a bit per
/// option of [`RESETTABLE`] it set, and [`TAINTED`].
static NOTES: [AtomicU8; registry::LIMIT] = [const { AtomicU8::new(0) }; registry::LIMIT];

/// Not to be kept, whatever else.
const TAINTED: u8 = 0x80;

/// A new kernel TCP socket of the program's at `fd` (one the shim
/// watches): nothing done to it yet.
pub(crate) fn made(fd: RawFd) {
    if let Some(note) = note(fd) {
        note.store(0, Ordering::Relaxed);
    }
}

/// The program set option `name` at `level` on the socket at `fd`.
pub(crate) fn option_set(fd: RawFd, level: c_int, name: c_int) {
    let bit = match RESETTABLE.iter().position(|&o| o == (level, name)) {
        Some(i) => 1 << i,
        None => TAINTED,
    };
    if let Some(note) = note(fd) {
        note.fetch_or(bit, Ordering::Relaxed);
    }
}

/// The program did something to the socket at `fd` that keeping it would
/// not undo (see the module's doc).
pub(crate) fn taint(fd: RawFd) {
    if let Some(note) = note(fd) {
        note.fetch_or(TAINTED, Ordering::Relaxed);
    }
}

/// A message `sendmsg` just sent (so the kernel read it whole): the
/// sockets it passed (`SCM_RIGHTS`) have holders elsewhere now. (Noted
/// after the send, since only then is the message known to be readable:
/// a connect of another thread deciding meanwhile may keep the socket.)
///
/// # Safety
/// `msg` is null or a message the kernel just sent: readable, with its
/// control buffer.
pub(crate) unsafe fn passed(msg: *const libc::msghdr) {
    // SAFETY: null or readable, as the caller guarantees.
    let Some(msg) = (unsafe { msg.as_ref() }) else {
        return;
    };
    let control = msg.msg_control.cast::<u8>().cast_const();
    if control.is_null() {
        return;
    }
    let total = msg.msg_controllen;
    let header = std::mem::size_of::<libc::cmsghdr>();
    // SAFETY: no pointers; the length of a header with no data.
    let data_at = unsafe { libc::CMSG_LEN(0) } as usize;
    let align = std::mem::size_of::<usize>();
    let mut at = 0usize;
    while at + header <= total {
        // SAFETY: a header within the control buffer the kernel read,
        // possibly unaligned.
        let cmsg = unsafe { control.add(at).cast::<libc::cmsghdr>().read_unaligned() };
        let len = cmsg.cmsg_len.min(total - at);
        if len < data_at {
            return;
        }
        if cmsg.cmsg_level == libc::SOL_SOCKET && cmsg.cmsg_type == libc::SCM_RIGHTS {
            let count = (len - data_at) / std::mem::size_of::<c_int>();
            for i in 0..count {
                // SAFETY: within the header's data, inside the buffer.
                let fd = unsafe {
                    control
                        .add(at + data_at + i * std::mem::size_of::<c_int>())
                        .cast::<c_int>()
                        .read_unaligned()
                };
                taint(fd);
            }
        }
        at += len.div_ceil(align) * align;
    }
}

fn note(fd: RawFd) -> Option<&'static AtomicU8> {
    NOTES.get(usize::try_from(fd).ok()?)
}

/// What makes a kernel TCP socket worth keeping, read when its connect
/// went in process: see [`Spare::of`].
#[derive(Debug, Clone)]
pub(crate) struct Spare {
    family: c_int,
    /// Device and inode of the socket (the number's, at the connect).
    ident: (u64, u64),
    nonblock: bool,
    /// Options the program set on it, to put back off (`RESETTABLE`).
    set: Vec<(c_int, c_int)>,
}

impl Spare {
    /// The socket of `family` at `fd` (device and inode `ident`), whose
    /// watched entry has generation `gen`: `None` if it is not as new (see
    /// the module's doc). Call it under the daemon table's lock, which
    /// `fork` takes too, so that no `fork` comes between the look and the
    /// keeping.
    pub(crate) fn of(fd: RawFd, family: c_int, ident: (u64, u64), gen: u64) -> Option<Spare> {
        let notes = note(fd)?.load(Ordering::Relaxed);
        if notes & TAINTED != 0 || crate::table::made_before_a_fork(gen) {
            return None;
        }
        // SAFETY: no pointers.
        let flags = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
        Spare::from_notes(family, ident, flags, notes)
    }

    fn from_notes(family: c_int, ident: (u64, u64), flags: c_int, notes: u8) -> Option<Spare> {
        const LARGEFILE: c_int = 0o100000;
        let plain = libc::O_ACCMODE | libc::O_NONBLOCK | LARGEFILE;
        let clean = notes & TAINTED == 0 && flags >= 0 && flags & !plain == 0;
        if !clean || ident == (0, 0) {
            return None;
        }
        let set = (RESETTABLE.iter().enumerate())
            .filter(|&(i, _)| notes & (1 << i) != 0)
            .map(|(_, &option)| option)
            .collect();
        Some(Spare {
            family,
            ident,
            nonblock: flags & libc::O_NONBLOCK != 0,
            set,
        })
    }
}

struct Pool {
    /// The process whose descriptors `kept` are (see the module's doc).
    pid: libc::pid_t,
    kept: Vec<(RawFd, Spare)>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    pid: 0,
    kept: Vec::new(),
});

/// The pool, for this process: `None` while another thread uses it (never
/// waited for: the calls that use it may run under the daemon table's
/// lock, or in a signal handler). A child that a raw `clone` or `_Fork`
/// made (no `fork` handlers ran: see [`fork_child`]) closes its copies of
/// the parent's sockets here, at its first look, if its process id is
/// known to be its own (see `registry::pid`).
fn pool() -> Option<MutexGuard<'static, Pool>> {
    let mut pool = POOL.try_lock().ok()?;
    let pid = registry::pid();
    if pool.pid != pid {
        forget(&mut pool, pid);
    }
    Some(pool)
}

/// Closes the pool's copies, which are a parent's: this is a child.
fn forget(pool: &mut Pool, pid: libc::pid_t) {
    for (fd, _) in pool.kept.drain(..) {
        // SAFETY: no pointers; this process's copy of a parent's kept
        // socket, which nothing else here uses.
        unsafe { real::close(fd) };
    }
    pool.pid = pid;
}

thread_local! {
    static FORK_GUARD: RefCell<Option<MutexGuard<'static, Pool>>> = const { RefCell::new(None) };
}

/// Before `fork` (the engine's handler): the pool is held across it, so
/// that the child's copy is not held by a thread it does not have.
pub(crate) fn fork_prepare() {
    let guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = FORK_GUARD.try_with(|held| *held.borrow_mut() = Some(guard));
}

/// In the child, right after `fork`: its copies of the parent's kept
/// sockets are closed at once (held, they would keep a socket the parent
/// hands out and closes open: its peer would hear no end).
pub(crate) fn fork_child() {
    // SAFETY: no pointers.
    let pid = unsafe { libc::getpid() };
    let _ = FORK_GUARD.try_with(|held| {
        if let Some(pool) = held.borrow_mut().as_mut() {
            forget(pool, pid);
        }
    });
}

/// After `fork`, in both processes: the pool goes.
pub(crate) fn fork_release() {
    let _ = FORK_GUARD.try_with(|held| held.borrow_mut().take());
}

/// Keeps a copy of the socket at `fd` (to be [`park`]ed once the number
/// is the engine's): its number, or `None` if the pool is full or busy.
pub(crate) fn keep(fd: RawFd) -> Option<RawFd> {
    if pool()?.kept.len() >= KEEP {
        return None;
    }
    // Out of the program's numbers (`socket_shim::fd::out_of_the_way`):
    // none free up there, and it is not kept.
    let high = socket_shim::fd::high() as libc::c_ulong;
    // SAFETY: no pointers; a copy of the program's socket, the shim's.
    let copy = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, high) };
    (copy >= 0).then_some(copy)
}

/// Puts the copy [`keep`] made into the pool (closed if it cannot be).
pub(crate) fn park(copy: RawFd, spare: Spare) {
    match pool() {
        Some(mut pool) if pool.kept.len() < KEEP => pool.kept.push((copy, spare)),
        _ => unkeep(copy),
    }
}

/// Closes a copy [`keep`] made that is not (or no longer) to be kept.
pub(crate) fn unkeep(copy: RawFd) {
    // SAFETY: no pointers; the shim's own copy.
    unsafe { real::close(copy) };
}

/// A kept socket of `family` as `socket(family, ty, protocol)` makes one
/// (`ty`'s `SOCK_NONBLOCK` and `SOCK_CLOEXEC`), at the lowest free number,
/// or `None` (none kept, or the call could not be made: the caller makes
/// a socket).
pub(crate) fn take(family: c_int, ty: c_int) -> Option<RawFd> {
    let (fd, spare) = {
        let mut pool = pool()?;
        let at = pool.kept.iter().rposition(|(_, s)| s.family == family)?;
        pool.kept.swap_remove(at)
    };
    if crate::table::ident(fd) != spare.ident {
        // The program closed the number behind the shim's back: it is
        // another file's now, or none's.
        return None;
    }
    let made = ready(fd, &spare, ty);
    if made.is_none() {
        unkeep(fd);
    }
    made
}

/// The kept socket `fd` made new (see [`take`]).
fn ready(fd: RawFd, spare: &Spare, ty: c_int) -> Option<RawFd> {
    let off: c_int = 0;
    for &(level, name) in &spare.set {
        // SAFETY: the value is one int, as these options expect.
        let rc = unsafe {
            real::setsockopt(
                fd,
                level,
                name,
                (&off as *const c_int).cast(),
                std::mem::size_of::<c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return None;
        }
    }
    let nonblock = ty & libc::SOCK_NONBLOCK != 0;
    if nonblock != spare.nonblock {
        let flags = libc::O_RDWR | if nonblock { libc::O_NONBLOCK } else { 0 };
        // SAFETY: no pointers.
        if unsafe { real::fcntl(fd, libc::F_SETFL, flags as libc::c_ulong) } < 0 {
            return None;
        }
    }
    let cloexec = ty & libc::SOCK_CLOEXEC != 0;
    let dup = if cloexec {
        libc::F_DUPFD_CLOEXEC
    } else {
        libc::F_DUPFD
    };
    // The lowest free number, as `socket` gives: a copy's, if one below
    // the kept number is free, else the kept number itself.
    // SAFETY: no pointers.
    let copy = unsafe { real::fcntl(fd, dup, 0) };
    if copy < 0 {
        return None;
    }
    if copy < fd {
        // SAFETY: no pointers; the shim's own copy, now the program's at
        // `copy`.
        unsafe { real::close(fd) };
        return Some(copy);
    }
    // SAFETY: no pointers; the copy just made, not wanted.
    unsafe { real::close(copy) };
    // SAFETY: no pointers.
    if !cloexec && unsafe { real::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return None;
    }
    Some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sockets_as_new_are_kept() {
        let (ident, rw) = ((1, 2), libc::O_RDWR);
        let nodelay = (libc::IPPROTO_TCP, libc::TCP_NODELAY);
        let keepalive = (libc::SOL_SOCKET, libc::SO_KEEPALIVE);
        let fd = 70_000 - registry::LIMIT as RawFd;
        made(fd);
        option_set(fd, nodelay.0, nodelay.1);
        option_set(fd, nodelay.0, nodelay.1);
        option_set(fd, keepalive.0, keepalive.1);
        let notes = note(fd).unwrap().load(Ordering::Relaxed);
        let spare = Spare::from_notes(libc::AF_INET, ident, rw, notes);
        assert_eq!(spare.map(|s| s.set), Some(vec![nodelay, keepalive]));
        let nonblock = Spare::from_notes(libc::AF_INET, ident, rw | libc::O_NONBLOCK, 0);
        assert!(nonblock.is_some_and(|s| s.nonblock));
        option_set(fd, libc::SOL_SOCKET, libc::SO_RCVBUF);
        let notes = note(fd).unwrap().load(Ordering::Relaxed);
        assert!(Spare::from_notes(libc::AF_INET, ident, rw, notes).is_none());
        made(fd);
        taint(fd);
        let notes = note(fd).unwrap().load(Ordering::Relaxed);
        assert!(Spare::from_notes(libc::AF_INET, ident, rw, notes).is_none());
        let async_io = rw | libc::O_ASYNC;
        assert!(Spare::from_notes(libc::AF_INET, ident, async_io, 0).is_none());
        assert!(Spare::from_notes(libc::AF_INET, (0, 0), rw, 0).is_none());
        assert!(Spare::from_notes(libc::AF_INET, ident, -1, 0).is_none());
        assert!(note(registry::LIMIT as RawFd).is_none() && note(-1).is_none());
    }
}
