//! `fstat` and its kin on an in-process number: a socket's answer.
//!
//! An in-process number is a copy of an eventfd (see `inproc`), and the
//! kernel's `fstat` says so: an anonymous inode, mode 0600, owned by
//! root, and one inode number for every eventfd of the system. Programs
//! tell a socket from a pipe or a file by `S_ISSOCK` (libuv's
//! `uv_guess_handle`, systemd's `sd_is_socket`), and two sockets apart by
//! device and inode. So for such a number these interposers answer as for
//! a TCP socket: mode `S_IFSOCK | 0777` (sockfs gives every socket that),
//! sockfs's device, the program's user as owner, and an inode of the
//! socket's own, which its copies (`dup`) share and no kernel socket has
//! (kernel socket inodes are 32-bit numbers; these are above 2^47). The
//! rest (times, sizes, links) is the kernel's answer for the eventfd, as
//! a socket's would be; any other descriptor's answer is the kernel's,
//! untouched. The library's own identity checks use
//! [`real::kernel_stat`], never these.
//!
//! Covered: `fstat`, `fstat64`, `__fxstat` and `__fxstat64` (programs
//! built against glibc before 2.33), `fstatat`, `fstatat64`,
//! `__fxstatat`, `__fxstatat64` and `statx` of a descriptor
//! (`AT_EMPTY_PATH` with an empty path), and `isfdtype`. Not covered: the
//! same through `syscall(2)` or glibc's other internal calls, a null path
//! with `AT_EMPTY_PATH` (Linux 6.11), `statx`'s mount ID (anon_inodefs's),
//! `/proc/self/fd/N`, which still names an eventfd, and a number whose
//! socket another thread hands to sald meanwhile (`fork`, `exec`,
//! `fdopen`: its answer may be the eventfd's, or the kernel socket's with
//! the made-up inode). The look-up takes the registry's read lock, as
//! `read` and `write` on an in-process number do, so a signal handler's
//! `fstat` of such a number while its thread changes the registry waits
//! for good.

use std::ffi::{c_char, c_int};
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{inproc, real};

/// The mode sockfs gives every socket.
const SOCKET_MODE: u32 = libc::S_IFSOCK | 0o777;

/// What an in-process number's `stat` says other than its eventfd's.
struct AsSocket {
    dev: Option<u64>,
    ino: u64,
    uid: u32,
    gid: u32,
}

/// [`AsSocket`] for `fd`, if it is an in-process number. Leaves `errno`
/// as it was (the look-up's `kcmp` may set it).
fn as_socket(fd: c_int) -> Option<AsSocket> {
    // SAFETY: glibc's errno location is this thread's, always valid.
    let errno = unsafe { *libc::__errno_location() };
    let ino = catch_unwind(|| inproc::stat_ino(fd)).ok().flatten();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
    let ino = ino?;
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    Some(AsSocket {
        dev: sockfs_dev(),
        ino,
        uid,
        gid,
    })
}

/// sockfs's device, every socket's `st_dev` (0: not known yet).
static SOCKFS_DEV: AtomicU64 = AtomicU64::new(0);

/// Learns sockfs's device from `socket`, a kernel socket: the engine's
/// UDP socket, as the engine starts (no in-process number exists before).
pub(crate) fn learn_sockfs(socket: c_int) {
    if let Some(st) = real::kernel_stat(socket) {
        SOCKFS_DEV.store(st.st_dev, Ordering::Relaxed);
    }
}

/// sockfs's device, if known (lock-free: `fstat` may be called from a
/// signal handler).
fn sockfs_dev() -> Option<u64> {
    Some(SOCKFS_DEV.load(Ordering::Relaxed)).filter(|&dev| dev != 0)
}

/// A `stat` or a `stat64` (the same fields), which a socket's answer is
/// written into.
trait Stat {
    fn answer_as(&mut self, socket: &AsSocket);
}

macro_rules! stat_answers_as_socket {
    ($($stat:ty),*) => {$(
        impl Stat for $stat {
            fn answer_as(&mut self, socket: &AsSocket) {
                self.st_mode = SOCKET_MODE;
                self.st_ino = socket.ino;
                self.st_uid = socket.uid;
                self.st_gid = socket.gid;
                if let Some(dev) = socket.dev {
                    self.st_dev = dev;
                }
            }
        }
    )*};
}

stat_answers_as_socket!(libc::stat, libc::stat64);

/// After a `stat` of `fd` into `buf` that returned `rc`: a socket's
/// answer if it succeeded and `fd` is an in-process number.
///
/// # Safety
/// `buf` is null or points to the `stat` the call filled.
unsafe fn patch<T: Stat>(fd: c_int, rc: c_int, buf: *mut T) -> c_int {
    if rc == 0 {
        // SAFETY: the call succeeded, so `buf` is a `stat` it wrote.
        if let (Some(st), Some(socket)) = (unsafe { buf.as_mut() }, as_socket(fd)) {
            st.answer_as(&socket);
        }
    }
    rc
}

/// [`patch`] after an `*at` call with `path` and `flags`: only if it
/// looked at `dirfd` itself.
///
/// # Safety
/// As [`patch`]; `path` is what the call took.
unsafe fn patch_at<T: Stat>(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    rc: c_int,
    buf: *mut T,
) -> c_int {
    // SAFETY: the caller's path, readable since the call succeeded; then
    // its buffer, which the call filled.
    match rc == 0 && unsafe { of_descriptor(path, flags) } {
        true => unsafe { patch(dirfd, rc, buf) },
        false => rc,
    }
}

/// Whether an `*at` call with `path` and `flags` looks at `dirfd` itself.
///
/// # Safety
/// `path` is null or a C string (the call that took it succeeded).
unsafe fn of_descriptor(path: *const c_char, flags: c_int) -> bool {
    // SAFETY: a non-null path is the caller's C string: its first byte
    // is readable.
    flags & libc::AT_EMPTY_PATH != 0 && !path.is_null() && unsafe { *path } == 0
}

/// # Safety
/// As `fstat(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: the caller's arguments, unchanged; then its buffer.
    unsafe { patch(fd, real::fstat(fd, buf), buf) }
}

/// # Safety
/// As `fstat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstat64(fd: c_int, buf: *mut libc::stat64) -> c_int {
    // SAFETY: as in `fstat`.
    unsafe { patch(fd, real::fstat64(fd, buf), buf) }
}

/// # Safety
/// As glibc's `__fxstat` (`fstat` of programs built before glibc 2.33).
#[no_mangle]
pub unsafe extern "C" fn __fxstat(version: c_int, fd: c_int, buf: *mut libc::stat) -> c_int {
    // SAFETY: as in `fstat`.
    unsafe { patch(fd, real::__fxstat(version, fd, buf), buf) }
}

/// # Safety
/// As glibc's `__fxstat64`.
#[no_mangle]
pub unsafe extern "C" fn __fxstat64(version: c_int, fd: c_int, buf: *mut libc::stat64) -> c_int {
    // SAFETY: as in `fstat`.
    unsafe { patch(fd, real::__fxstat64(version, fd, buf), buf) }
}

/// # Safety
/// As glibc's `__fxstatat` (`fstatat` of programs built before 2.33).
#[no_mangle]
pub unsafe extern "C" fn __fxstatat(
    version: c_int,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let rc = unsafe { real::__fxstatat(version, dirfd, path, buf, flags) };
    // SAFETY: the caller's path and buffer, which the call took.
    unsafe { patch_at(dirfd, path, flags, rc, buf) }
}

/// # Safety
/// As glibc's `__fxstatat64`.
#[no_mangle]
pub unsafe extern "C" fn __fxstatat64(
    version: c_int,
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat64,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let rc = unsafe { real::__fxstatat64(version, dirfd, path, buf, flags) };
    // SAFETY: the caller's path and buffer, which the call took.
    unsafe { patch_at(dirfd, path, flags, rc, buf) }
}

/// `isfdtype(3)`: glibc's calls its own `fstat` inside, which no
/// interposer sees; answered here from the interposed one.
///
/// # Safety
/// None beyond `fstat`'s: `fd` is any number.
#[no_mangle]
pub unsafe extern "C" fn isfdtype(fd: c_int, fdtype: c_int) -> c_int {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is one `struct stat`, which fstat fills on success.
    if unsafe { fstat(fd, st.as_mut_ptr()) } != 0 {
        return -1;
    }
    // SAFETY: fstat succeeded, so it initialised the struct.
    let mode = unsafe { st.assume_init() }.st_mode;
    c_int::from(mode & libc::S_IFMT == fdtype as u32)
}

/// # Safety
/// As `fstatat(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstatat(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let rc = unsafe { real::fstatat(dirfd, path, buf, flags) };
    // SAFETY: the caller's path and buffer, which the call took.
    unsafe { patch_at(dirfd, path, flags, rc, buf) }
}

/// # Safety
/// As `fstatat64(2)`.
#[no_mangle]
pub unsafe extern "C" fn fstatat64(
    dirfd: c_int,
    path: *const c_char,
    buf: *mut libc::stat64,
    flags: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let rc = unsafe { real::fstatat64(dirfd, path, buf, flags) };
    // SAFETY: the caller's path and buffer, which the call took.
    unsafe { patch_at(dirfd, path, flags, rc, buf) }
}

/// # Safety
/// As `statx(2)`.
#[no_mangle]
pub unsafe extern "C" fn statx(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mask: libc::c_uint,
    buf: *mut libc::statx,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    let rc = unsafe { real::statx(dirfd, path, flags, mask, buf) };
    // SAFETY: the caller's path.
    if rc != 0 || !unsafe { of_descriptor(path, flags) } {
        return rc;
    }
    // SAFETY: the call succeeded, so `buf` is a `statx` it wrote.
    let Some(stx) = (unsafe { buf.as_mut() }) else {
        return rc;
    };
    let Some(socket) = as_socket(dirfd) else {
        return rc;
    };
    // Only what the call was asked for and filled (`stx_mask`).
    if stx.stx_mask & libc::STATX_TYPE != 0 {
        stx.stx_mode = (stx.stx_mode & !(libc::S_IFMT as u16)) | libc::S_IFSOCK as u16;
    }
    if stx.stx_mask & libc::STATX_MODE != 0 {
        stx.stx_mode = SOCKET_MODE as u16;
    }
    if stx.stx_mask & libc::STATX_INO != 0 {
        stx.stx_ino = socket.ino;
    }
    if stx.stx_mask & libc::STATX_UID != 0 {
        stx.stx_uid = socket.uid;
    }
    if stx.stx_mask & libc::STATX_GID != 0 {
        stx.stx_gid = socket.gid;
    }
    if let Some(dev) = socket.dev {
        stx.stx_dev_major = libc::major(dev);
        stx.stx_dev_minor = libc::minor(dev);
    }
    rc
}
