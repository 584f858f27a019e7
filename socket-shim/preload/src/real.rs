//! libc's own socket functions, found with `dlsym(RTLD_NEXT, ...)`.
//!
//! This library defines `socket`, `connect`, `close`, ... itself, so a plain
//! call to `libc::close` from Rust would come straight back to our own
//! definition (the preloaded library is first in the global lookup scope).
//! Everything the shim does on the application's descriptors therefore goes
//! through these wrappers. Rust code that merely drops its own descriptors
//! (a `ControlClient`, an `OwnedFd`) may go through the interposed `close`:
//! that is harmless because those numbers are never in the descriptor table
//! (see `table`), but it is why no lock is ever held while dropping one.

use std::ffi::{c_char, c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{epoll_event, size_t, sockaddr, socklen_t, ssize_t};

use crate::set_errno;

/// The next definition of `name` after this library (normally glibc's).
fn lookup(name: &'static str) -> *mut c_void {
    // SAFETY: `name` is a NUL-terminated literal (built with concat!), and
    // dlsym with RTLD_NEXT only reads it.
    unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast::<c_char>()) }
}

macro_rules! real_fns {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty; )*) => {
        $(
            $(#[$doc])*
            /// # Safety
            /// As for the libc function of the same name: pointers must be
            /// valid for the lengths given.
            pub(crate) unsafe fn $name($($arg: $ty),*) -> $ret {
                static PTR: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
                let mut p = PTR.load(Ordering::Relaxed);
                if p.is_null() {
                    p = lookup(concat!(stringify!($name), "\0"));
                    if p.is_null() {
                        set_errno(libc::ENOSYS);
                        return -1;
                    }
                    PTR.store(p, Ordering::Relaxed);
                }
                // SAFETY: `p` is the address libc exports under this name,
                // whose C prototype is the one spelled out here; the caller
                // upholds that function's own contract.
                unsafe {
                    let f: unsafe extern "C" fn($($ty),*) -> $ret = std::mem::transmute(p);
                    f($($arg),*)
                }
            }
        )*
    };
}

/// The kernel's `fstat` of `fd` (`newfstatat` with an empty path, a raw
/// system call): what the library's own identity checks compare, never
/// the answer the interposed `fstat` makes up for an in-process number
/// (`inproc::stat`), and there on every glibc (`fstat` is an exported
/// function only since 2.33). `None` if `fd` is not open.
pub(crate) fn kernel_stat(fd: c_int) -> Option<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: newfstatat writes at most one `struct stat` into the
    // buffer, which is that large, and reads the empty path's one byte.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            fd,
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    // SAFETY: it succeeded, so it initialised the struct.
    (rc == 0).then(|| unsafe { st.assume_init() })
}

/// The exec family's functions, as [`real_fns`]'s, but looked up at the
/// library's load ([`warm_exec`]) rather than at the first call: an
/// `exec` often comes from a `vfork` child, which shares its parent's
/// memory and should not run `dlsym` (locks, allocation) there.
macro_rules! exec_fns {
    ($( fn $name:ident($($arg:ident: $ty:ty),*) or $fail:expr; )*) => {
        /// Where each function was found.
        mod exec_slots {
            use super::*;
            $(
                #[allow(non_upper_case_globals)]
                pub(super) static $name: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
            )*
        }
        $(
            /// # Safety
            /// As for the libc function of the same name.
            pub(crate) unsafe fn $name($($arg: $ty),*) -> c_int {
                let Some(p) = found(&exec_slots::$name, concat!(stringify!($name), "\0")) else {
                    return $fail;
                };
                // SAFETY: `p` is the address libc exports under this name,
                // whose C prototype is the one spelled out here; the caller
                // upholds that function's own contract.
                unsafe {
                    let f: unsafe extern "C" fn($($ty),*) -> c_int = std::mem::transmute(p);
                    f($($arg),*)
                }
            }
        )*
        /// Looks every exec function up now (see [`exec_fns`]).
        pub(crate) fn warm_exec() {
            $( let _ = found(&exec_slots::$name, concat!(stringify!($name), "\0")); )*
        }
    };
}

type Strings = *const *const c_char;
type SpawnActions = *const libc::posix_spawn_file_actions_t;
type SpawnAttributes = *const libc::posix_spawnattr_t;

exec_fns! {
    fn execve(path: *const c_char, argv: Strings, envp: Strings) or -1;
    fn execv(path: *const c_char, argv: Strings) or -1;
    fn execvp(file: *const c_char, argv: Strings) or -1;
    fn execvpe(file: *const c_char, argv: Strings, envp: Strings) or -1;
    fn execveat(dirfd: c_int, path: *const c_char, argv: Strings, envp: Strings, flags: c_int) or -1;
    fn fexecve(fd: c_int, argv: Strings, envp: Strings) or -1;
    // These return the error, not -1.
    fn posix_spawn(pid: *mut libc::pid_t, path: *const c_char, actions: SpawnActions, attributes: SpawnAttributes, argv: Strings, envp: Strings) or libc::ENOSYS;
    fn posix_spawnp(pid: *mut libc::pid_t, file: *const c_char, actions: SpawnActions, attributes: SpawnAttributes, argv: Strings, envp: Strings) or libc::ENOSYS;
}

/// libc's `fcntl`, whose third argument (an int or a pointer, when the
/// command takes one) is passed on as the caller gave it.
///
/// # Safety
/// As `fcntl(2)`: `arg` is what `cmd` expects.
pub(crate) unsafe fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    static PTR: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
    // SAFETY: the caller upholds fcntl's contract.
    unsafe { variadic_fcntl(&PTR, "fcntl\0", fd, cmd, arg) }
}

/// libc's `fcntl64` (what programs built with a 64-bit `off_t` on 32-bit
/// ABIs, or with newer headers, call), or `fcntl` where there is none.
///
/// # Safety
/// As [`fcntl`].
pub(crate) unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    static PTR: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
    // SAFETY: the caller upholds fcntl's contract.
    unsafe { variadic_fcntl(&PTR, "fcntl64\0", fd, cmd, arg) }
}

/// libc's `ioctl`, whose third argument (an int or a pointer, when the
/// request takes one) is passed on as the caller gave it.
///
/// # Safety
/// As `ioctl(2)`: `arg` is what `request` expects.
pub(crate) unsafe fn ioctl(fd: c_int, request: libc::c_ulong, arg: libc::c_ulong) -> c_int {
    static PTR: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
    let Some(p) = found(&PTR, "ioctl\0") else {
        return -1;
    };
    // SAFETY: `p` is libc's ioctl, declared variadic as in C; the caller
    // passes what `request` expects.
    unsafe {
        let f: unsafe extern "C" fn(c_int, libc::c_ulong, ...) -> c_int = std::mem::transmute(p);
        f(fd, request, arg)
    }
}

/// Calls the variadic `name` (an `fcntl`), found once and kept in `slot`.
///
/// # Safety
/// As [`fcntl`]; `name` is NUL-terminated.
unsafe fn variadic_fcntl(
    slot: &AtomicPtr<c_void>,
    name: &'static str,
    fd: c_int,
    cmd: c_int,
    arg: libc::c_ulong,
) -> c_int {
    let mut p = slot.load(Ordering::Relaxed);
    if p.is_null() {
        p = lookup(name);
        if p.is_null() {
            p = lookup("fcntl\0");
        }
        if p.is_null() {
            set_errno(libc::ENOSYS);
            return -1;
        }
        slot.store(p, Ordering::Relaxed);
    }
    // SAFETY: `p` is libc's fcntl (or fcntl64), declared variadic as in C;
    // the caller passes what `cmd` expects.
    unsafe {
        let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = std::mem::transmute(p);
        f(fd, cmd, arg)
    }
}

/// The next definition of `name` (NUL-terminated), found once and kept in
/// `slot`; `None` (and `ENOSYS`) where there is none.
/// libc's `system`.
///
/// # Safety
/// As `system(3)`.
pub(crate) unsafe fn system(command: *const c_char) -> c_int {
    static PTR: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
    let Some(p) = found(&PTR, "system\0") else {
        return -1;
    };
    // SAFETY: libc's `system`, whose prototype this is.
    unsafe {
        let f: unsafe extern "C" fn(*const c_char) -> c_int = std::mem::transmute(p);
        f(command)
    }
}

/// libc's `popen`.
///
/// # Safety
/// As `popen(3)`.
pub(crate) unsafe fn popen(command: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    static PTR: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
    let Some(p) = found(&PTR, "popen\0") else {
        return null_mut();
    };
    // SAFETY: libc's `popen`, whose prototype this is.
    unsafe {
        let f: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE =
            std::mem::transmute(p);
        f(command, mode)
    }
}

fn found(slot: &AtomicPtr<c_void>, name: &'static str) -> Option<*mut c_void> {
    let mut p = slot.load(Ordering::Relaxed);
    if p.is_null() {
        p = lookup(name);
        if p.is_null() {
            set_errno(libc::ENOSYS);
            return None;
        }
        slot.store(p, Ordering::Relaxed);
    }
    Some(p)
}

/// libc's `fdopen`.
///
/// # Safety
/// As `fdopen(3)`: `mode` is a NUL-terminated string.
pub(crate) unsafe fn fdopen(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
    static PTR: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
    let Some(p) = found(&PTR, "fdopen\0") else {
        return null_mut();
    };
    // SAFETY: `p` is libc's fdopen, with this C prototype; the caller
    // upholds its contract.
    unsafe {
        let f: unsafe extern "C" fn(c_int, *const c_char) -> *mut libc::FILE =
            std::mem::transmute(p);
        f(fd, mode)
    }
}

real_fns! {
    fn fstat(fd: c_int, buf: *mut libc::stat) -> c_int;
    fn fstat64(fd: c_int, buf: *mut libc::stat64) -> c_int;
    fn __fxstat(version: c_int, fd: c_int, buf: *mut libc::stat) -> c_int;
    fn __fxstat64(version: c_int, fd: c_int, buf: *mut libc::stat64) -> c_int;
    fn __fxstatat(version: c_int, dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int;
    fn __fxstatat64(version: c_int, dirfd: c_int, path: *const c_char, buf: *mut libc::stat64, flags: c_int) -> c_int;
    fn fstatat(dirfd: c_int, path: *const c_char, buf: *mut libc::stat, flags: c_int) -> c_int;
    fn fstatat64(dirfd: c_int, path: *const c_char, buf: *mut libc::stat64, flags: c_int) -> c_int;
    fn statx(dirfd: c_int, path: *const c_char, flags: c_int, mask: libc::c_uint, buf: *mut libc::statx) -> c_int;
    fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t;
    fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut libc::off64_t, count: size_t) -> ssize_t;
    fn splice(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: size_t, flags: libc::c_uint) -> ssize_t;
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn close(fd: c_int) -> c_int;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int;
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t;
    fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t;
    fn sendmmsg(fd: c_int, msgvec: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int) -> c_int;
    fn recvmmsg(fd: c_int, msgvec: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    fn readv(fd: c_int, iov: *const libc::iovec, count: c_int) -> ssize_t;
    fn writev(fd: c_int, iov: *const libc::iovec, count: c_int) -> ssize_t;
    fn shutdown(fd: c_int, how: c_int) -> c_int;
    fn sigaction(signum: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
    fn siginterrupt(signum: c_int, flag: c_int) -> c_int;
    /// Returns the old handler, or -1 (`SIG_ERR`).
    fn sysv_signal(signum: c_int, handler: libc::sighandler_t) -> isize;
    /// Returns the old handler, or -1 (`SIG_ERR`).
    fn __sysv_signal(signum: c_int, handler: libc::sighandler_t) -> isize;
    /// Returns the old handler, or -1 (`SIG_ERR`).
    fn sigset(signum: c_int, handler: libc::sighandler_t) -> isize;
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int;
    fn dup(old: c_int) -> c_int;
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fn epoll_wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int) -> c_int;
    fn epoll_pwait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int, sigmask: *const libc::sigset_t) -> c_int;
    fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: *const libc::timespec, sigmask: *const libc::sigset_t) -> c_int;
    fn select(nfds: c_int, read: *mut libc::fd_set, write: *mut libc::fd_set, except: *mut libc::fd_set, timeout: *mut libc::timeval) -> c_int;
    fn pselect(nfds: c_int, read: *mut libc::fd_set, write: *mut libc::fd_set, except: *mut libc::fd_set, timeout: *const libc::timespec, sigmask: *const libc::sigset_t) -> c_int;
    fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int;
    fn ppoll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: *const libc::timespec, sigmask: *const libc::sigset_t) -> c_int;
}
