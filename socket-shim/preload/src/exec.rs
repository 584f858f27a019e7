//! The exec family, interposed for the in-process mode: an in-process
//! socket lives in the process's memory, which `exec` replaces, so before
//! the call every one goes to sald (`inproc::before_exec`) and crosses
//! into the new image as a daemon-path socket, as TCP's would cross. With
//! the in-process mode off each function is glibc's, plus a look at a
//! flag; without an engine, or in a `vfork` child, plus one `getpid`.
//!
//! glibc's own callers of `execve` (`execl`, `execvp`, `posix_spawn`,
//! `system`, `popen`) reach the system call through its internal
//! `__execve`, which a preloaded library cannot interpose; so each public
//! function is interposed by itself. `posix_spawn` and `posix_spawnp`
//! hand over, before the call, the sockets the new program may inherit
//! (see [`posix_spawn`]). `system` and `popen` hand nothing over: their
//! shell inherits no in-process socket (the numbers are close-on-exec in
//! the kernel), and the caller keeps them all in-process; they only mark
//! the process's kernel sockets as shared with a child
//! (`table::spawning`, see `inproc::recycle`).
//!
//! `execl`, `execlp` and `execle` are variadic, which stable Rust cannot
//! define; on x86-64 a few instructions ([`execl`]) line the register
//! arguments up in front of those the caller passed on the stack, which
//! makes the list (NULL-terminated by the caller) an `argv` as it stands,
//! with no copy and no allocation (a `vfork` child may call them). On
//! other machines they are not interposed.

use std::ffi::{c_char, c_int};

use crate::real;

type Strings = *const *const c_char;

/// A hand-over made for an `exec` that has not happened yet, or for a
/// spawn: once the `exec` returns (it failed) or the spawn did, dropping
/// this lets the calls that waited for it go on (`inproc::exec_failed`),
/// with the call's `errno`.
struct Pending(bool);

impl Pending {
    /// Hands the in-process sockets over, if this process has any.
    fn begin() -> Pending {
        // A `vfork` child's `exec`: the parent's sockets have copies in
        // the new program from now on (no `fork` handler ran).
        crate::table::forking();
        Pending::with(crate::inproc::before_exec)
    }

    /// Hands over the sockets a spawned program may inherit.
    fn spawn() -> Pending {
        crate::table::spawning();
        Pending::with(crate::inproc::before_spawn)
    }

    fn with(hand_over: fn() -> bool) -> Pending {
        let errno = crate::ops::last_errno();
        let pending = std::panic::catch_unwind(hand_over).unwrap_or(false);
        crate::set_errno(errno);
        Pending(pending)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.0 {
            let errno = crate::ops::last_errno();
            crate::inproc::exec_failed();
            crate::set_errno(errno);
        }
    }
}

/// `execve`: in-process sockets go to sald first (see the module's doc).
///
/// # Safety
/// As `execve(2)`.
#[no_mangle]
pub unsafe extern "C" fn execve(path: *const c_char, argv: Strings, envp: Strings) -> c_int {
    let _pending = Pending::begin();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::execve(path, argv, envp) }
}

/// `execv`, as [`execve`].
///
/// # Safety
/// As `execv(3)`.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: Strings) -> c_int {
    let _pending = Pending::begin();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::execv(path, argv) }
}

/// `execvp`, as [`execve`].
///
/// # Safety
/// As `execvp(3)`.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: Strings) -> c_int {
    let _pending = Pending::begin();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::execvp(file, argv) }
}

/// `execvpe`, as [`execve`].
///
/// # Safety
/// As `execvpe(3)`.
#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: Strings, envp: Strings) -> c_int {
    let _pending = Pending::begin();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::execvpe(file, argv, envp) }
}

/// `execveat`, as [`execve`].
///
/// # Safety
/// As `execveat(2)`.
#[no_mangle]
pub unsafe extern "C" fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: Strings,
    envp: Strings,
    flags: c_int,
) -> c_int {
    let _pending = Pending::begin();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::execveat(dirfd, path, argv, envp, flags) }
}

/// `fexecve`, as [`execve`].
///
/// # Safety
/// As `fexecve(3)`.
#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: Strings, envp: Strings) -> c_int {
    let _pending = Pending::begin();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::fexecve(fd, argv, envp) }
}

/// `posix_spawn`: the program it starts inherits the caller's sockets
/// that are not close-on-exec, and only this process's engine can drive
/// an in-process one, so those go to sald first, as at `fork`
/// (`inproc::before_spawn`); the caller goes on with them there.
///
/// # Safety
/// As `posix_spawn(3)`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attributes: *const libc::posix_spawnattr_t,
    argv: Strings,
    envp: Strings,
) -> c_int {
    let _pending = Pending::spawn();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::posix_spawn(pid, path, actions, attributes, argv, envp) }
}

/// `posix_spawnp`, as [`posix_spawn`].
///
/// # Safety
/// As `posix_spawnp(3)`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attributes: *const libc::posix_spawnattr_t,
    argv: Strings,
    envp: Strings,
) -> c_int {
    let _pending = Pending::spawn();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::posix_spawnp(pid, file, actions, attributes, argv, envp) }
}

/// Lines a variadic exec call's list up as an `argv` and calls `$target`
/// with the first argument and it. At entry: the first argument in `rdi`,
/// the list's first five in `rsi`, `rdx`, `rcx`, `r8`, `r9`, the rest on
/// the stack above the return address. The return address is taken off
/// (into `r11`), the five registers pushed where it was and below, so the
/// whole list lies in order from `rsp` up; the address is kept below the
/// list for the call (which leaves `rsp` 16-byte aligned, as the ABI
/// asks) and put back in its slot before returning `$target`'s result.
#[cfg(target_arch = "x86_64")]
macro_rules! lined_up {
    ($target:path) => {
        core::arch::naked_asm!(
            "pop r11",
            "push r9",
            "push r8",
            "push rcx",
            "push rdx",
            "push rsi",
            "mov rsi, rsp",
            "push r11",
            "call {target}",
            "pop r11",
            "add rsp, 40",
            "push r11",
            "ret",
            target = sym $target,
        )
    };
}

/// `execl(path, arg, ..., NULL)`, as [`execv`].
///
/// # Safety
/// As `execl(3)`: the list ends with a null pointer.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn execl(path: *const c_char, arg: *const c_char) -> c_int {
    lined_up!(execl_lined_up)
}

/// `execlp(file, arg, ..., NULL)`, as [`execvp`].
///
/// # Safety
/// As `execlp(3)`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn execlp(file: *const c_char, arg: *const c_char) -> c_int {
    lined_up!(execlp_lined_up)
}

/// `execle(path, arg, ..., NULL, envp)`, as [`execve`].
///
/// # Safety
/// As `execle(3)`: the environment follows the list's null pointer.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn execle(path: *const c_char, arg: *const c_char) -> c_int {
    lined_up!(execle_lined_up)
}

/// [`execl`]'s list as an `argv`.
///
/// # Safety
/// `argv` is the caller's NULL-terminated list, lined up.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn execl_lined_up(path: *const c_char, argv: Strings) -> c_int {
    // SAFETY: as the caller's `execl`.
    unsafe { execv(path, argv) }
}

/// [`execlp`]'s list as an `argv`.
///
/// # Safety
/// As [`execl_lined_up`].
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn execlp_lined_up(file: *const c_char, argv: Strings) -> c_int {
    // SAFETY: as the caller's `execlp`.
    unsafe { execvp(file, argv) }
}

/// [`execle`]'s list as an `argv`, the environment the argument after
/// its null pointer.
///
/// # Safety
/// As [`execl_lined_up`], and the environment follows the null pointer.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn execle_lined_up(path: *const c_char, argv: Strings) -> c_int {
    let mut end = argv;
    // SAFETY: the list is NULL-terminated (the caller's contract), and
    // the environment is the argument after that null pointer, lined up
    // after it.
    unsafe {
        while !(*end).is_null() {
            end = end.add(1);
        }
        execve(path, argv, *end.add(1) as Strings)
    }
}

/// `system`: its shell may inherit the program's kernel sockets (see the
/// module's doc).
///
/// # Safety
/// As `system(3)`.
#[no_mangle]
pub unsafe extern "C" fn system(command: *const c_char) -> c_int {
    if !command.is_null() {
        crate::table::spawning();
    }
    // SAFETY: forwarding the caller's argument unchanged.
    unsafe { real::system(command) }
}

/// `popen`, as [`system`].
///
/// # Safety
/// As `popen(3)`.
#[no_mangle]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    crate::table::spawning();
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::popen(command, mode) }
}
