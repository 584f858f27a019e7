//! `libserval_shim.so`: the Serval socket interface (WIRE.md, "The C socket
//! API") for C programs, by interposing libc's socket calls.
//!
//! Link it (`-lserval_shim`) or preload it (`serval-run -- PROGRAM`); either
//! way the definitions here come before libc's, and every call on a
//! descriptor or address family that is not ours goes straight on to libc
//! (found with `dlsym(RTLD_NEXT)`, see the `real` module).
//!
//! # Descriptor scheme
//!
//! Every Serval socket is a real kernel descriptor, so `read`, `write`,
//! `poll`, `select`, `epoll`, `fork` and `exec` work on it natively:
//!
//! - `socket(AF_SERVAL, ...)` returns a *placeholder*: one end of a Unix
//!   socketpair with a full send buffer (neither readable nor writable); its
//!   peer end stays with the shim;
//! - `connect` asks sald for a flow and `dup3`s the flow socket sald hands
//!   over onto the program's descriptor number. A non-blocking connect
//!   returns `EINPROGRESS` and completes in the process's one connector
//!   thread (see [`socket_shim::connector`], shared with the Rust client
//!   library, and `ops::finish_connect`); closing the placeholder's peer end then
//!   wakes every `poll`/`select`/`epoll_wait` sleeping on the old file,
//!   which re-examines the number and finds the writable flow (or a
//!   hang-up and `SO_ERROR` on failure). epoll registrations are re-added
//!   for the new file. A blocking connect waits for sald's answer in the
//!   calling thread, in one plain blocking `recvmsg` that a signal
//!   interrupts as it does TCP's connect; an interrupted one returns
//!   `EINTR` and is completed by a one-shot thread (`ops::park`). One on
//!   a socket with a send timeout (`SO_SNDTIMEO`) goes through the
//!   connector as a non-blocking one, and waits for the outcome that long
//!   at most, as TCP's: then it returns `EINPROGRESS` and the connect goes
//!   on (`ops::connect_timed`). A blocking `connect` on a socket whose
//!   connect is in flight (non-blocking, interrupted, timed out, or
//!   blocking in another thread) waits for its outcome, for the send
//!   timeout at most (`ops::connect_parked`).
//!   Timeouts count as the kernel counts them (the `timeout` module). As
//!   TCP's, the first `connect` after one that completed in the
//!   background returns 0, later ones `EISCONN`; `connect` checks in
//!   Linux's order (the address's pointer and length, `AF_UNSPEC`, which
//!   disconnects a connect in flight or a connected stream, whose flow it
//!   resets, and stops a listener listening, bound still, the socket's
//!   state, the address: `ops::connect`);
//! - `bind` registers the prefix with sald at once (so `EADDRINUSE` comes from
//!   `bind`); `listen` puts at the number the `SOCK_SEQPACKET` accept queue
//!   into which sald delivers each flow with its description (no thread of
//!   ours in between). `accept` is a `recvmsg` on it, so
//!   readiness, blocking and `O_NONBLOCK` behave as the kernel's, and a
//!   forked child that inherits the listener accepts from the same queue;
//! - `read`/`write`/`send`/`recv` on a stream that is not connected (never
//!   connected, failed, listening) answer as TCP: the pending error of a
//!   failed connect once, then `ENOTCONN` and `EPIPE` (with `SIGPIPE`);
//!   the placeholder would block instead, the accept queue give up an
//!   accept notice. On a listening datagram socket both are `ENOTCONN`
//!   (see `ops::refusal`);
//! - a connected stream is the flow's socket itself, which sald shuts
//!   down both ways after a reset, only for writing at a finished flow's
//!   end, and marks with a name that says which: a
//!   `read`/`recv`/`recvfrom`/`recvmsg`/`readv`/`recvmmsg` that gets end
//!   of file on a hung-up flow that sald marked reset (or left unmarked
//!   while the program still sends: `shutdown` is interposed to know), and
//!   that read no end of file before the hang-up, returns `ECONNRESET`
//!   once, as TCP's, and `SO_ERROR` holds it until then (`EPIPE` for a
//!   reset after the peer's end of stream) (`ops::error_at_end`,
//!   [`socket_shim::reset`]);
//! - datagram sockets are sald's `SOCK_SEQPACKET` sockets; `sendto`/`recvfrom`
//!   (and `send`/`recv`/`read`/`write`, `sendmsg`/`recvmsg`/`readv`/`writev`,
//!   whose iovecs the `msg` module gathers and scatters, and
//!   `sendmmsg`/`recvmmsg`, a `sendmsg`/`recvmsg` per message, see the
//!   `mmsg` module) wrap and unwrap `DatagramFrame`s.
//!   As in the reference stack, `recvfrom` gives the sender's own service ID
//!   in a `sockaddr_sv`, followed by a `sockaddr_in` with its address when
//!   the buffer holds 52 bytes; `sendto` with both sends to that service at
//!   that address, with the `sockaddr_sv` alone it resolves the service. A
//!   reset refusing one of the socket's datagrams is `ECONNREFUSED` from the
//!   next receive. A bound datagram socket may `listen` and `accept`
//!   connected datagram flows (the reference's `udp_server_user`; it then
//!   reads and sends no datagrams of its own), and
//!   an open one (bound, or sent from) may still `connect`
//!   (`ops::connect_open_datagram`).
//!
//! The `table` module remembers what each number means; `ops` does the work;
//! `inherit` carries listeners and unconnected datagram sockets (and the
//! control connections that keep them bound) across `exec`.
//!
//! # Inet mode
//!
//! With `SERVAL_SHIM_MAP=PORT=SERVICEID,...` (set by `serval-run --map`), a
//! TCP `bind` to a mapped port registers the service instead, and a TCP
//! `connect` to a mapped port (on any address, or within `SERVAL_SHIM_NET`
//! ranges) connects to the service; the program keeps seeing `AF_INET`
//! addresses from `getsockname`, `getpeername` and `accept`.
//! While a map is set, the shim watches every TCP socket the program
//! creates, recording its epoll registrations and socket-level options
//! until it is connected or bound, so that those hold for the flow a
//! mapped `connect` puts at the number (nginx registers upstream sockets
//! before connecting them); a connect or bind elsewhere leaves the socket
//! the kernel's. After a failed connect to a mapped port, the socket may
//! connect again, to a mapped port or (as a fresh kernel socket) anywhere.
//!
//! # In-process mode
//!
//! With `SERVAL_SHIM_INPROC=1` (set by `serval-run --in-process`, read
//! when the library loads), stream sockets run on a SAL host inside the
//! program instead of on flows sald carries: `connect`, and `bind` plus
//! `listen` (through sald's relay), put the engine's stream or listener
//! at the number, as a copy of its readable eventfd, and the calls on
//! such numbers, `poll`, `select` and `epoll` included, are the `inproc`
//! module's. Without the variable, or when sald has no UDP locator or no
//! relays, nothing changes.
//!
//! # Safety at the boundary
//!
//! Every exported function catches panics (`EIO`), and `unsafe` is confined
//! to reading and writing the program's buffers and calling libc.

use std::ffi::{c_int, c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use libc::{epoll_event, size_t, sockaddr, socklen_t, ssize_t};

mod addr;
mod exec;
mod inherit;
mod inproc;
mod mmsg;
mod msg;
mod ops;
mod pool;
mod real;
mod signals;
mod stat;
mod table;
mod timeout;

use addr::SockAddr;
use ops::Res;

/// Runs when the library is loaded, before the program's `main`: takes
/// what the shim needs from the environment while it is still the one
/// `serval-run` set. Programs may replace their environment before they
/// open a connection (nginx keeps only `TZ` unless told otherwise), and
/// the shim must still find sald and the port map.
extern "C" fn on_load() {
    let _ = catch_unwind(|| {
        let errno = std::io::Error::last_os_error().raw_os_error();
        socket_shim::pin_control_path();
        let _ = addr::PortMap::get();
        inproc::on_load();
        // Listeners and datagram sockets the program image before this
        // one left at their numbers.
        inherit::restore();
        // libc's `sigaction` is looked up now, not at the program's first
        // call, which may come from a signal handler (`dlsym` is not
        // async-signal-safe). Signal 0 is refused without effect.
        // SAFETY: null pointers ask nothing and install nothing.
        unsafe { real::sigaction(0, std::ptr::null(), std::ptr::null_mut()) };
        // And the exec family's, which a `vfork` child may call.
        real::warm_exec();
        if let Some(errno) = errno {
            set_errno(errno);
        }
    });
}

/// The loader calls what `.init_array` holds when it loads the library.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

/// The most bytes one read or write moves, as the kernel clamps a count
/// (`MAX_RW_COUNT`): a larger `n` is legal and must not become a slice
/// longer than any object can be.
pub(crate) const MAX_RW_COUNT: usize = 0x7fff_f000;

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(errno: c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = errno };
}

/// Runs `f`, turning an error into `errno` and `fail`, and a panic into `EIO`.
fn guard<T>(fail: T, f: impl FnOnce() -> Res<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => value,
        Ok(Err(errno)) => {
            set_errno(errno);
            fail
        }
        Err(_) => {
            set_errno(libc::EIO);
            fail
        }
    }
}

/// [`guard`] for a data call on an in-process number; `None` when the
/// stream's flow went to sald during the call
/// (`inproc::calls::HANDED_OVER`, see `inproc::handover`): the caller
/// makes the call again on the plain path, where sald's socketpair end
/// is at the number by now.
fn inproc_data<T>(fail: T, f: impl FnOnce() -> Res<T>) -> Option<T> {
    let errno = ops::last_errno();
    let mut handed = false;
    let value = guard(fail, || match f() {
        Err(inproc::calls::HANDED_OVER) => {
            handed = true;
            Err(errno)
        }
        result => result,
    });
    (!handed).then_some(value)
}

/// The program's address as bytes (at most `sockaddr_storage`).
///
/// # Safety
/// `addr` is null or valid for reads of `len` bytes.
unsafe fn addr_bytes<'a>(addr: *const sockaddr, len: socklen_t) -> Option<&'a [u8]> {
    if addr.is_null() {
        return None;
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: the caller guarantees `len` readable bytes at `addr`.
    Some(unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) })
}

/// Writes `value` into an address result buffer, truncating as the kernel
/// does, and stores the full length.
///
/// # Safety
/// `addr`/`len` are null or valid as for `getsockname`.
unsafe fn write_addr(value: &SockAddr, addr: *mut sockaddr, len: *mut socklen_t) -> Res<()> {
    if addr.is_null() || len.is_null() {
        return Ok(());
    }
    // SAFETY: the caller guarantees `*len` writable bytes at `addr`.
    unsafe {
        let room = *len as usize;
        let bytes = value.encode_for(room);
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr.cast::<u8>(), bytes.len().min(room));
        *len = bytes.len() as socklen_t;
    }
    Ok(())
}

/// # Safety
/// As `socket(2)`.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    guard(-1, || {
        ops::socket(domain, ty, protocol, || unsafe {
            real::socket(domain, ty, protocol)
        })
    })
}

/// # Safety
/// As `connect(2)`.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    guard(-1, || {
        // SAFETY: the caller's address is valid for `len` bytes.
        let bytes = unsafe { addr_bytes(addr, len) };
        if inproc::is_settled(fd) {
            // As Linux, the address is checked before the socket's state.
            let given = ops::address_given(bytes, len)?;
            // `AF_UNSPEC` disconnects: a stream is reset and left an
            // unconnected daemon-path socket, a listener goes to sald
            // (`inproc::handover`), and the daemon path's `connect` then
            // answers (stopping the listener).
            let unspec = given.len() >= 2 && u16::from_ne_bytes([given[0], given[1]]) == 0;
            let left = match unspec {
                true => inproc::disconnect(fd),
                false => match inproc::calls::connect(fd) {
                    Some(done) => return done,
                    // Its connect failed and said so: as TCP's, the
                    // socket is unconnected and connects anew (on the
                    // daemon path, where the number goes).
                    None => inproc::unconnect(fd),
                },
            };
            if !left {
                return inproc::calls::connect(fd).unwrap_or(Err(libc::ECONNRESET));
            }
        }
        // SAFETY: forwarding the caller's arguments unchanged.
        ops::connect(fd, bytes, len, || unsafe { real::connect(fd, addr, len) })
    })
}

/// # Safety
/// As `bind(2)`.
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if inproc::is_settled(fd) {
        // Bound already (a listener) or connected: as TCP's.
        return guard(-1, || Err(libc::EINVAL));
    }
    guard(-1, || {
        // SAFETY: the caller's address is valid for `len` bytes.
        let bytes = unsafe { addr_bytes(addr, len) };
        // SAFETY: forwarding the caller's arguments unchanged.
        ops::bind(fd, bytes, || unsafe { real::bind(fd, addr, len) })
    })
}

/// # Safety
/// As `listen(2)`.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if inproc::is_settled(fd) {
        return guard(-1, || inproc::calls::listen(fd, backlog));
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    guard(-1, || {
        ops::listen(fd, backlog, || unsafe { real::listen(fd, backlog) })
    })
}

unsafe fn accept_common(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
    four: bool,
) -> c_int {
    guard(-1, || {
        // Where the peer's address would go has no length: Linux fails the
        // call (EFAULT) before a connection is taken off the queue.
        if !addr.is_null() && len.is_null() && (ops::is_ours(fd) || inproc::is(fd)) {
            return Err(libc::EFAULT);
        }
        if inproc::is(fd) {
            match inproc::calls::accept(fd, if four { flags } else { 0 }) {
                // The listener went to sald meanwhile: the daemon path's.
                Err(inproc::calls::HANDED_OVER) => {}
                accepted => {
                    let (accepted, peer) = accepted?;
                    // SAFETY: the caller's buffers are valid as for accept(2).
                    unsafe { write_addr(&peer, addr, len)? };
                    return Ok(accepted);
                }
            }
        }
        let pass = || {
            // SAFETY: forwarding the caller's arguments unchanged.
            unsafe {
                if four {
                    real::accept4(fd, addr, len, flags)
                } else {
                    real::accept(fd, addr, len)
                }
            }
        };
        match ops::accept(fd, flags, pass)? {
            Err(passed) => Ok(passed),
            Ok(accepted) => {
                // SAFETY: the caller's buffers are valid as for accept(2).
                unsafe { write_addr(&accepted.peer, addr, len)? };
                Ok(accepted.fd)
            }
        }
    })
}

/// # Safety
/// As `accept(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: same contract as ours.
    unsafe { accept_common(fd, addr, len, 0, false) }
}

/// # Safety
/// As `accept4(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: same contract as ours.
    unsafe { accept_common(fd, addr, len, flags, true) }
}

/// # Safety
/// As `close(2)`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if inproc::is(fd) {
        let socket = catch_unwind(|| inproc::calls::close(fd)).ok().flatten();
        // SAFETY: forwarding the caller's argument unchanged.
        let closed = unsafe { real::close(fd) };
        let errno = ops::last_errno();
        // The last number's socket closes its flow (an engine call), and
        // so may those of numbers found closed behind the shim's back.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            drop(socket);
            inproc::reap();
        }));
        set_errno(errno);
        return closed;
    }
    let _ = catch_unwind(|| ops::close(fd));
    // SAFETY: forwarding the caller's argument unchanged.
    unsafe { real::close(fd) }
}

unsafe fn name_common(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, peer: bool) -> c_int {
    let ours = || match inproc::is_settled(fd) {
        true => Some(inproc::calls::name(fd, peer)),
        false => ops::name(fd, peer),
    };
    guard(-1, || match ours() {
        None => {
            // SAFETY: forwarding the caller's arguments unchanged.
            Ok(unsafe {
                if peer {
                    real::getpeername(fd, addr, len)
                } else {
                    real::getsockname(fd, addr, len)
                }
            })
        }
        Some(result) => {
            let value = result?;
            if addr.is_null() || len.is_null() {
                return Err(libc::EFAULT);
            }
            // SAFETY: the caller's buffers are valid as for getsockname(2).
            unsafe { write_addr(&value, addr, len)? };
            Ok(0)
        }
    })
}

/// # Safety
/// As `getsockname(2)`.
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: same contract as ours.
    unsafe { name_common(fd, addr, len, false) }
}

/// # Safety
/// As `getpeername(2)`.
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: same contract as ours.
    unsafe { name_common(fd, addr, len, true) }
}

/// # Safety
/// As `getsockopt(2)`.
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    guard(-1, || {
        // SAFETY: forwarding the caller's arguments unchanged.
        let pass = || unsafe { real::getsockopt(fd, level, name, value, len) };
        if inproc::is_settled(fd) {
            let bytes = inproc::calls::getsockopt(fd, level, name)?;
            // SAFETY: the caller's buffers, as for getsockopt(2).
            return unsafe { write_option(&bytes, value, len) };
        }
        let answer = match ops::getsockopt(fd, level, name) {
            None => return Ok(pass()),
            Some(Err(errno)) => return Err(errno),
            Some(Ok(answer)) => answer,
        };
        match answer.value() {
            None => Ok(pass()),
            Some((bytes, size)) => {
                if value.is_null() || len.is_null() {
                    return Err(libc::EFAULT);
                }
                // SAFETY: `len` is non-null; the caller makes it readable.
                let room = unsafe { *len };
                // As Linux: a negative length is refused, and an option
                // writes at most its value (an int, a timeval), never the
                // rest of `*len`.
                if (room as i32) < 0 {
                    return Err(libc::EINVAL);
                }
                let bytes = &bytes[..size];
                let n = bytes.len().min(room as usize);
                // SAFETY: the caller guarantees `*len` >= n writable bytes
                // at `value`.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.cast::<u8>(), n);
                    *len = n as socklen_t;
                }
                Ok(0)
            }
        }
    })
}

/// Options set on our sockets: socket-level ones go to the underlying Unix
/// socket (buffer sizes, timeouts) and are accepted even where a Unix socket
/// has no such option (`SO_REUSEADDR`, `SO_KEEPALIVE`, ...); TCP- and
/// IP-level ones have no meaning for a flow carried by sald and are
/// accepted and ignored, as programs written for TCP expect them to work.
///
/// # Safety
/// As `setsockopt(2)`.
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    guard(-1, || {
        // SAFETY: forwarding the caller's arguments unchanged.
        let pass = || unsafe { real::setsockopt(fd, level, name, value, len) };
        if inproc::is_settled(fd) {
            if value.is_null() && len > 0 {
                return Err(libc::EFAULT);
            }
            // SAFETY: the caller guarantees `len` readable bytes at `value`.
            let bytes = unsafe { option_bytes(value, len) }.ok_or(libc::EINVAL)?;
            return inproc::calls::setsockopt(fd, level, name, bytes);
        }
        let Some(kind) = ops::setsockopt_kind(fd) else {
            if table::maybe_tracked(fd) && inproc::enabled() {
                // Noted first: a connect of another thread deciding
                // whether to keep the socket meanwhile sees it.
                inproc::recycle::option_set(fd, level, name);
            }
            let set = pass();
            if set == 0 && level == libc::SOL_SOCKET && table::maybe_tracked(fd) {
                // An inet-mode socket the shim watches: the option must
                // hold for the flow should a connect make it one.
                // SAFETY: the kernel just read `len` bytes at `value`.
                if let Some(bytes) = unsafe { option_bytes(value, len) } {
                    ops::note_option(fd, name, bytes);
                }
            }
            return Ok(set);
        };
        if value.is_null() && len > 0 {
            return Err(libc::EFAULT);
        }
        if level != libc::SOL_SOCKET {
            return match ops::option_level_known(kind, level) {
                true => Ok(0),
                false => Err(libc::ENOPROTOOPT),
            };
        }
        let set = pass() == 0;
        let errno = std::io::Error::last_os_error().raw_os_error();
        if set || matches!(errno, Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP)) {
            // SAFETY: the caller guarantees `len` readable bytes at `value`.
            if let Some(bytes) = unsafe { option_bytes(value, len) } {
                ops::note_option(fd, name, bytes);
            }
            return Ok(0);
        }
        Err(errno.unwrap_or(libc::EIO))
    })
}

/// An option value worth remembering for a swap (`ops::OPTION_MAX` bytes
/// at most: every socket-level option is smaller).
///
/// # Safety
/// `value` is null or valid for reads of `len` bytes.
unsafe fn option_bytes<'a>(value: *const c_void, len: socklen_t) -> Option<&'a [u8]> {
    if value.is_null() || len as usize > ops::OPTION_MAX {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes at `value`.
    Some(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len as usize) })
}

/// # Safety
/// As `sendto(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    if inproc::is(fd) {
        // SAFETY: the caller's buffer, valid for `n` bytes.
        if let Some(done) = inproc_data(-1, || {
            inproc::calls::write(fd, unsafe { data_out(buf, n)? }, flags).map(|n| n as ssize_t)
        }) {
            return done;
        }
    }
    if flags & libc::MSG_FASTOPEN != 0 && table::maybe_tracked(fd) {
        // A kernel connect: the socket is not new any more.
        inproc::recycle::taint(fd);
    }
    // Not ours, or a connected flow sent to with no address (as `send`):
    // libc's, lock-free.
    if !table::maybe_tracked(fd) || (addr.is_null() && !table::maybe_intercepted(fd)) {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real::sendto(fd, buf, n, flags, addr, len) };
    }
    guard(-1, || {
        if buf.is_null() && n > 0 {
            return Err(libc::EFAULT);
        }
        // SAFETY: the caller's buffers are valid for the lengths given
        // (`n` clamped as the kernel does, so the slice is a valid one).
        let (data, bytes) = unsafe {
            (
                if n == 0 {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(buf.cast::<u8>(), n.min(MAX_RW_COUNT))
                },
                addr_bytes(addr, len),
            )
        };
        match ops::sendto(fd, data, flags, bytes)? {
            Some(sent) => Ok(sent),
            // SAFETY: forwarding the caller's arguments unchanged.
            None => Ok(unsafe { real::sendto(fd, buf, n, flags, addr, len) }),
        }
    })
}

/// # Safety
/// As `recvfrom(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if inproc::is(fd) {
        if let Some(done) = inproc_data(-1, || {
            // SAFETY: the caller's buffer, valid for `n` bytes.
            let got = inproc::calls::read(fd, unsafe { buffer(buf, n)? }, flags)?;
            if !addr.is_null() && !len.is_null() {
                // A stream names no sender, as TCP's.
                // SAFETY: `len` is non-null and writable, as recvfrom(2) asks.
                unsafe { *len = 0 };
            }
            Ok(got as ssize_t)
        }) {
            return done;
        }
    }
    if table::maybe_intercepted(fd) {
        // SAFETY: the caller's arguments as `recvfrom(2)` takes them; the
        // fallback forwards them unchanged.
        return unsafe {
            receive(
                fd,
                flags,
                || Ok((buffer(buf, n)?, addr, len)),
                || real::recvfrom(fd, buf, n, flags, addr, len),
            )
        };
    }
    // A connected flow (or not ours): libc's, lock-free but for a datagram
    // flow's peer, named as `recvmsg` names it. A connected stream's name
    // is of length 0, as TCP's: the kernel's, or made so
    // (`unname_stream_flow`).
    let room = (!addr.is_null() && !len.is_null() && table::maybe_datagram_flow(fd))
        // SAFETY: `len` is non-null and, as `recvfrom(2)` requires,
        // readable when `addr` is given.
        .then(|| unsafe { *len });
    // SAFETY: forwarding the caller's arguments unchanged.
    let got = unsafe { real::recvfrom(fd, buf, n, flags, addr, len) };
    if got >= 0 && !addr.is_null() && !len.is_null() {
        // SAFETY: `len` is non-null, and the kernel just wrote it.
        unsafe { unname_stream_flow(fd, len) };
    }
    if let (Some(room), true) = (room, got >= 0) {
        // SAFETY: the caller's address buffers: `room` bytes at `addr`.
        unsafe { name_flow_peer(fd, addr, len, room) };
    }
    read_done(fd, || n, got)
}

/// The program's buffer of `n` bytes at `buf`, as [`receive`] fills it
/// (`n` clamped as the kernel does, so the slice is a valid one).
///
/// # Safety
/// `buf` is valid for writes of `n` bytes (or null, which is `EFAULT`
/// unless `n` is 0), for as long as the result is used.
unsafe fn buffer<'a>(buf: *mut c_void, n: size_t) -> Res<&'a mut [u8]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller guarantees `n` writable bytes at `buf`.
    Ok(unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n.min(MAX_RW_COUNT)) })
}

/// `recvfrom`, `recv`, `read`, `recvmsg` and `readv` on a descriptor that
/// may be one of our datagram sockets (or a stream that is not
/// connected): a datagram from its frames, put where `into` says (the
/// program's buffer or iovecs, and where the sender's address goes: both
/// null for none), or, when it is not ours after all (a stale entry, a
/// number reused behind our back), the call the program made (`pass`),
/// never another: a pipe must not get `recvfrom`'s ENOTSOCK.
///
/// # Safety
/// As `recvfrom(2)`: what `into` gives is valid as that call's arguments
/// are; `pass` is the program's own call with its arguments.
unsafe fn receive<I: ops::Incoming>(
    fd: c_int,
    flags: c_int,
    into: impl FnOnce() -> Res<(I, *mut sockaddr, *mut socklen_t)>,
    pass: impl FnOnce() -> ssize_t,
) -> ssize_t {
    guard(-1, || {
        if !table::maybe_tracked(fd) {
            return Ok(pass());
        }
        let (mut data, addr, len) = into()?;
        match ops::recvfrom(fd, &mut data, flags)? {
            Some((got, peer)) => {
                if !len.is_null() {
                    match peer {
                        // SAFETY: the caller's address buffers are valid.
                        Some(peer) => unsafe { write_addr(&peer, addr, len)? },
                        // A stream: no address, as TCP reports.
                        // SAFETY: `len` is non-null and writable.
                        None => unsafe { *len = 0 },
                    }
                }
                Ok(got)
            }
            None => Ok(pass()),
        }
    })
}

/// Whether a `send`/`write` on `fd` is refused before it reaches the
/// descriptor (`errno` set; see `ops::refusal`). Lock-free for every
/// descriptor but unconnected sockets of ours.
fn refused_write(fd: c_int, flags: c_int) -> bool {
    if !table::maybe_intercepted(fd) {
        return false;
    }
    match guard(None, || Ok(ops::refusal(fd, true, flags))) {
        Some(errno) => {
            set_errno(errno);
            true
        }
        None => false,
    }
}

/// # Safety
/// As `send(2)`.
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    if inproc::is(fd) {
        // SAFETY: the caller's buffer, valid for `n` bytes.
        if let Some(done) = inproc_data(-1, || {
            inproc::calls::write(fd, unsafe { data_out(buf, n)? }, flags).map(|n| n as ssize_t)
        }) {
            return done;
        }
    }
    if refused_write(fd, flags) {
        return -1;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::send(fd, buf, n, flags) }
}

/// # Safety
/// As `write(2)`.
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    if inproc::is(fd) {
        // SAFETY: the caller's buffer, valid for `n` bytes.
        if let Some(done) = inproc_data(-1, || {
            inproc::calls::write(fd, unsafe { data_out(buf, n)? }, 0).map(|n| n as ssize_t)
        }) {
            return done;
        }
    }
    if refused_write(fd, 0) {
        return -1;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::write(fd, buf, n) }
}

/// As `write`: a socket of ours with no destination (a datagram socket
/// that is not connected) or that is not connected (a stream, or a
/// listener of either kind) refuses it.
///
/// # Safety
/// As `writev(2)`.
#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, count: c_int) -> ssize_t {
    if inproc::is(fd) {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        // SAFETY: the caller's iovecs, valid as writev(2) requires.
        if let Some(done) = inproc_data(-1, || {
            unsafe { inproc::calls::writev(fd, iov, count, 0) }.map(|n| n as ssize_t)
        }) {
            return done;
        }
    }
    if refused_write(fd, 0) {
        return -1;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::writev(fd, iov, count) }
}

/// On a datagram socket of ours that is neither connected nor listening,
/// the iovecs gathered into one datagram sent as `sendto` sends it, to
/// `msg_name` (`EDESTADDRREQ` without one), with `sendto`'s flags;
/// `msg_control` is ignored (no ancillary data crosses sald). On a stream
/// that is not connected, and on a listener of either kind, the error
/// `send` gives; a destination given to a connected socket of ours is
/// treated as `sendto` treats it. Anything else (a flow's message without
/// a destination) is libc's.
///
/// # Safety
/// As `sendmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> ssize_t {
    if inproc::is(fd) {
        if let Some(done) = inproc_data(-1, || {
            // SAFETY: the caller's message, null or valid for the call.
            let msg = unsafe { msg.as_ref() }.ok_or(libc::EFAULT)?;
            // SAFETY: its iovecs, valid as sendmsg(2) requires.
            unsafe { inproc::calls::writev(fd, msg.msg_iov, msg.msg_iovlen, flags) }
                .map(|n| n as ssize_t)
        }) {
            return done;
        }
    }
    if flags & libc::MSG_FASTOPEN != 0 && table::maybe_tracked(fd) {
        // A kernel connect: the socket is not new any more.
        inproc::recycle::taint(fd);
    }
    if !table::maybe_tracked(fd) {
        // SAFETY: forwarding the caller's arguments unchanged.
        let sent = unsafe { real::sendmsg(fd, msg, flags) };
        if sent >= 0 && inproc::enabled() {
            // SAFETY: the message the kernel just sent.
            unsafe { inproc::recycle::passed(msg) };
        }
        return sent;
    }
    guard(-1, || {
        // SAFETY: the caller's message is null or valid for the call.
        let out = unsafe { msg::MsgOut::new(msg)? };
        let addr = out.addr();
        if addr.is_none() && !table::maybe_intercepted(fd) {
            // A flow's message: as it is.
            // SAFETY: forwarding the caller's arguments unchanged.
            return Ok(unsafe { real::sendmsg(fd, msg, flags) });
        }
        match ops::sendto(fd, &out, flags, addr)? {
            Some(sent) => Ok(sent),
            // SAFETY: forwarding the caller's arguments unchanged.
            None => Ok(unsafe { real::sendmsg(fd, msg, flags) }),
        }
    })
}

/// # Safety
/// As `recv(2)`.
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    if inproc::is(fd) {
        // SAFETY: the caller's buffer, valid for `n` bytes.
        if let Some(done) = inproc_data(-1, || {
            inproc::calls::read(fd, unsafe { buffer(buf, n)? }, flags).map(|n| n as ssize_t)
        }) {
            return done;
        }
    }
    if table::maybe_intercepted(fd) {
        let (addr, len) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: same contract as `recvfrom`, without an address.
        return unsafe {
            receive(
                fd,
                flags,
                || Ok((buffer(buf, n)?, addr, len)),
                || real::recv(fd, buf, n, flags),
            )
        };
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    read_done(fd, || n, unsafe { real::recv(fd, buf, n, flags) })
}

/// # Safety
/// As `read(2)`.
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    if inproc::is(fd) {
        // SAFETY: the caller's buffer, valid for `n` bytes.
        if let Some(done) = inproc_data(-1, || {
            inproc::calls::read(fd, unsafe { buffer(buf, n)? }, 0).map(|n| n as ssize_t)
        }) {
            return done;
        }
    }
    // A read of nothing reads nothing from a socket (a datagram stays
    // queued; `recv` of nothing takes it): the kernel's answer, 0 or an
    // error for a bad descriptor, is the one.
    if n > 0 && table::maybe_intercepted(fd) {
        let (addr, len) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: same contract as `recvfrom`, without an address.
        return unsafe {
            receive(
                fd,
                0,
                || Ok((buffer(buf, n)?, addr, len)),
                || real::read(fd, buf, n),
            )
        };
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    read_done(fd, || n, unsafe { real::read(fd, buf, n) })
}

/// On a datagram socket of ours that is neither connected nor listening,
/// a datagram as `recvfrom` receives it, scattered into the iovecs: the
/// sender's address in `msg_name` (as `recvfrom` gives it) and
/// `msg_flags` as the kernel sets them for a datagram (`MSG_TRUNC` when
/// it was longer than the iovecs hold; no ancillary data,
/// `msg_controllen` 0). On a stream that is not connected, and on a
/// listener of either kind, the error `recv` gives. On a connected stream
/// flow, libc's `recvmsg`, whose end of file after a reset is
/// `ECONNRESET` once, as from `recv` (`read_done`), and whose
/// `msg_namelen` is 0, as TCP's; on a connected datagram
/// flow, libc's, with the peer in `msg_name` as `recvfrom` gives it.
/// Anything else is libc's.
///
/// # Safety
/// As `recvmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> ssize_t {
    if inproc::is(fd) {
        if let Some(done) = inproc_data(-1, || {
            // SAFETY: the caller's message, null or valid for the call.
            let msg = unsafe { msg.as_mut() }.ok_or(libc::EFAULT)?;
            // SAFETY: its iovecs, valid as recvmsg(2) requires.
            let got = unsafe { inproc::calls::readv(fd, msg.msg_iov, msg.msg_iovlen, flags)? };
            // A stream names no sender and carries no ancillary data.
            msg.msg_namelen = 0;
            msg.msg_controllen = 0;
            msg.msg_flags = 0;
            Ok(got as ssize_t)
        }) {
            return done;
        }
    }
    if table::maybe_intercepted(fd) {
        let into = || {
            // SAFETY: the caller's message is null or valid for the call.
            let sink = unsafe { msg::MsgIn::new(msg, libc::EMSGSIZE)? };
            let (addr, len) = sink.name();
            Ok((sink, addr, len))
        };
        // SAFETY: `into` checks the caller's message; the fallback
        // forwards the caller's arguments unchanged.
        return unsafe { receive(fd, flags, into, || real::recvmsg(fd, msg, flags)) };
    }
    // Only a datagram flow's peer is named: a connected stream's `recvmsg`
    // is libc's, with the name's length 0, as TCP's (the kernel's, or made
    // so: `unname_stream_flow`).
    let room = table::maybe_datagram_flow(fd)
        // SAFETY: the caller's message is null or valid for the call.
        .then(|| unsafe { msg::name_room(msg) })
        .flatten();
    // SAFETY: forwarding the caller's arguments unchanged.
    let got = unsafe { real::recvmsg(fd, msg, flags) };
    // SAFETY: a message the kernel just filled, for a call that succeeded.
    if got >= 0 && unsafe { !(*msg).msg_name.is_null() } {
        // SAFETY: as above; its name's length is the kernel's.
        unsafe { unname_stream_flow(fd, std::ptr::addr_of_mut!((*msg).msg_namelen)) };
    }
    if let (Some(room), true) = (room, got >= 0) {
        // SAFETY: the message the kernel just filled; `room` is what its
        // name had before.
        unsafe {
            name_flow_peer(
                fd,
                (*msg).msg_name.cast::<sockaddr>(),
                std::ptr::addr_of_mut!((*msg).msg_namelen),
                room,
            )
        };
    }
    // SAFETY: asked only after the kernel read the message and its iovecs
    // for a call that succeeded.
    read_done(
        fd,
        || unsafe { msg::asked((*msg).msg_iov, (*msg).msg_iovlen) },
        got,
    )
}

/// Takes back the name the kernel gave (its length at `len`) where libc's
/// `recvfrom` or `recvmsg` just received bytes on `fd`, if `fd` is a
/// connected stream flow: a stream names no sender, as TCP's does not.
/// The kernel names the sender of the bytes read when it has a name, as
/// sald's end of a flow has once it marked the flow's end of stream, or a
/// reset as it hung up (`socket_shim::reset::mark`), with bytes perhaps
/// still unread. Lock-free unless the kernel gave a name on a socket that
/// may be a flow.
///
/// # Safety
/// `len` is valid for reads and writes.
unsafe fn unname_stream_flow(fd: c_int, len: *mut socklen_t) {
    // SAFETY: as the caller guarantees.
    if unsafe { *len } > 0 && table::maybe_flow(fd) && ops::stream_flow(fd) {
        // SAFETY: as the caller guarantees.
        unsafe { *len = 0 };
    }
}

/// Names a connected datagram flow's peer where libc's `recvmsg` or
/// `recvfrom` just received a message on `fd` (`addr`, its length at
/// `len`), as `recvfrom` of ours names it: the flow's socket (one end of
/// a socket pair) has no name to give. Costs a look at the table, for a
/// call that asks for a name on a socket that may be such a flow
/// (`table::maybe_datagram_flow`: never a connected stream).
///
/// # Safety
/// `addr` has `room` writable bytes and `len` is writable.
unsafe fn name_flow_peer(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, room: socklen_t) {
    let Some(peer) = ops::datagram_peer(fd) else {
        return;
    };
    // SAFETY: as the caller guarantees; the length is set back to the
    // room for `write_addr`, which sets it to the address's length.
    unsafe {
        *len = room;
        let _ = write_addr(&peer, addr, len);
    }
}

/// What a call that returns -1 and sets `errno` on failure returned, as a
/// count or the error.
fn counted(returned: ssize_t) -> Res<usize> {
    usize::try_from(returned).map_err(|_| ops::last_errno())
}

/// On a socket of ours, each message in turn as [`sendmsg`] sends it, as
/// Linux's `sendmmsg` loops (see `mmsg`); a message not sent whole (a
/// stream's full buffer) ends the batch, as there. Anything else is
/// libc's.
///
/// # Safety
/// As `sendmmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgvec: *mut libc::mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    if !table::maybe_tracked(fd) && !inproc::is(fd) {
        // SAFETY: forwarding the caller's arguments unchanged.
        let sent = unsafe { real::sendmmsg(fd, msgvec, vlen, flags) };
        if inproc::enabled() {
            for i in 0..usize::try_from(sent).unwrap_or(0) {
                // SAFETY: one of the messages the kernel just sent.
                unsafe { inproc::recycle::passed(&(*msgvec.add(i)).msg_hdr) };
            }
        }
        return sent;
    }
    guard(-1, || {
        // SAFETY: the caller's `vlen` messages, valid for the call.
        let batch = unsafe { mmsg::Batch::new(msgvec, vlen) };
        let ran = batch.run(|hdr| {
            // SAFETY: one of the caller's messages, valid as for `sendmsg`.
            let sent = counted(unsafe { sendmsg(fd, hdr, flags) })?;
            // SAFETY: its iovecs, which the send just read.
            let asked = unsafe { msg::asked((*hdr).msg_iov, (*hdr).msg_iovlen) };
            Ok(mmsg::Step {
                len: sent,
                more: sent >= asked.min(MAX_RW_COUNT),
            })
        })?;
        Ok(ran.done)
    })
}

/// On a socket of ours, each message in turn as [`recvmsg`] receives it,
/// as Linux's `recvmmsg` loops (see `mmsg`): after the first, the rest
/// without waiting with `MSG_WAITFORONE`; `timeout`, as Linux's, is looked
/// at after each message (it does not cut a wait short) and gets the time
/// left. A reset that ends a batch after its first message is reported by
/// the next read (`ops::report_again`).
/// Anything else is libc's.
///
/// # Safety
/// As `recvmmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgvec: *mut libc::mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    if !table::maybe_tracked(fd) && !inproc::is(fd) {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real::recvmmsg(fd, msgvec, vlen, flags, timeout) };
    }
    guard(-1, || {
        // SAFETY: the caller's timeout, null or valid for the call.
        let deadline = unsafe { mmsg::Deadline::new(timeout)? };
        // SAFETY: the caller's `vlen` messages, valid for the call.
        let batch = unsafe { mmsg::Batch::new(msgvec, vlen) };
        let mut each = flags & !libc::MSG_WAITFORONE;
        let ran = batch.run(|hdr| {
            // SAFETY: one of the caller's messages, valid as for `recvmsg`.
            let got = counted(unsafe { recvmsg(fd, hdr, each) })?;
            if flags & libc::MSG_WAITFORONE != 0 {
                each |= libc::MSG_DONTWAIT;
            }
            Ok(mmsg::Step {
                len: got,
                more: deadline.as_ref().is_none_or(mmsg::Deadline::time_left),
            })
        })?;
        if let Some(errno) = ran.stopped_by {
            match inproc::is(fd) {
                true => inproc::calls::report_again(fd, errno),
                false => ops::report_again(fd, errno),
            }
        }
        Ok(ran.done)
    })
}

/// As [`recvmsg`] without an address or flags: a datagram's payload
/// scattered into the iovecs on a datagram socket of ours that is not
/// connected, `ECONNRESET` once after a connected stream flow's reset.
///
/// # Safety
/// As `readv(2)`.
#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, count: c_int) -> ssize_t {
    if inproc::is(fd) {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        // SAFETY: the caller's iovecs, valid as readv(2) requires.
        if let Some(done) = inproc_data(-1, || {
            unsafe { inproc::calls::readv(fd, iov, count, 0) }.map(|n| n as ssize_t)
        }) {
            return done;
        }
    }
    // As `read`: nothing asked, nothing read.
    let nothing = || {
        usize::try_from(count).is_ok_and(|count| count <= msg::UIO_MAXIOV)
            && (count == 0 || !iov.is_null())
            // SAFETY: the caller's iovecs, valid as `readv(2)` requires (a
            // list the kernel would refuse is left to it and `MsgIn::new`).
            && unsafe { msg::asked(iov, count as usize) } == 0
    };
    if table::maybe_intercepted(fd) && !nothing() {
        // SAFETY: a message of the caller's iovecs, nothing more.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = iov.cast_mut();
        hdr.msg_iovlen = usize::try_from(count).unwrap_or(usize::MAX);
        let at = &mut hdr as *mut libc::msghdr;
        let into = || {
            // SAFETY: `hdr` is a valid message over the caller's iovecs
            // (a negative count is refused as too many, `EINVAL`).
            let sink = unsafe { msg::MsgIn::new(at, libc::EINVAL)? };
            Ok((sink, std::ptr::null_mut(), std::ptr::null_mut()))
        };
        // SAFETY: as above; the fallback forwards the caller's arguments
        // unchanged.
        return unsafe { receive(fd, 0, into, || real::readv(fd, iov, count)) };
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    let got = unsafe { real::readv(fd, iov, count) };
    // SAFETY: asked only after the kernel read `count` iovecs at `iov`
    // for a call that succeeded.
    read_done(fd, || unsafe { msg::asked(iov, count as usize) }, got)
}

/// What a read of `fd` that asked for `asked()` bytes (counted only when
/// needed) and that the kernel answered (`got`) returns: on a connected
/// stream flow, an end of file that is a reset is `ECONNRESET`, once
/// (`ops::error_at_end`, which also fails a read that waited on a flow
/// disconnected meanwhile). Every other read costs a comparison, an end of
/// file on another descriptor one atomic load more.
#[inline]
fn read_done(fd: c_int, asked: impl FnOnce() -> size_t, got: ssize_t) -> ssize_t {
    if got != 0 || !table::maybe_tracked(fd) || asked() == 0 {
        return got;
    }
    reset_read(fd)
}

/// [`read_done`]'s end of file on a descriptor that may be ours. The
/// program's `errno` is left as the read left it unless this is a reset
/// (the table lock or `poll` may change it on the way).
#[cold]
fn reset_read(fd: c_int) -> ssize_t {
    let errno = std::io::Error::last_os_error().raw_os_error();
    match catch_unwind(|| ops::error_at_end(fd)) {
        Ok(Some(error)) => {
            set_errno(error);
            -1
        }
        _ => {
            if let Some(errno) = errno {
                set_errno(errno);
            }
            0
        }
    }
}

/// Records a shutdown of a flow's writing (`SHUT_WR`, `SHUT_RDWR`) before
/// it happens, so that the flow's end of file, which then comes with a
/// hang-up, is not taken for a reset (`ops::write_shut`); and one of its
/// reading (`SHUT_RD`), so that the end of file it makes is not taken for
/// the peer's end of stream (`ops::read_shut`).
///
/// # Safety
/// As `shutdown(2)`.
#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if inproc::is_settled(fd) {
        return guard(-1, || inproc::calls::shutdown(fd, how));
    }
    // Only connected flows (tracked, their data calls not intercepted)
    // take the table lock: a signal handler that shuts a listener down to
    // wake an accept loop must not wait on a lock the thread it
    // interrupted may hold (the note for `inproc::recycle` is lock-free).
    if table::maybe_tracked(fd) {
        inproc::recycle::taint(fd);
    }
    if matches!(how, libc::SHUT_WR | libc::SHUT_RDWR) && table::maybe_flow(fd) {
        let _ = catch_unwind(|| ops::write_shut(fd));
    } else if how == libc::SHUT_RD && table::maybe_flow(fd) {
        // Its reads' end of file is no peer's end of stream: a reset
        // after it is still one (`socket_shim::reset`).
        let _ = catch_unwind(|| ops::read_shut(fd));
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::shutdown(fd, how) }
}

/// Installs the handler, noting whether it interrupts blocking calls (see
/// `signals`).
///
/// # Safety
/// As `sigaction(2)`.
#[no_mangle]
pub unsafe extern "C" fn sigaction(
    signum: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    // SAFETY: `act` is null or points to a valid sigaction, as the caller
    // promises; copied before the call, which may write `old` over it.
    let new = unsafe { act.as_ref() }.copied();
    // Noted first if it interrupts (a blocking connect of another thread
    // then waits so before the handler can run), exactly after.
    signals::installing(signum, new.as_ref());
    // SAFETY: forwarding the caller's arguments unchanged.
    let result = unsafe { real::sigaction(signum, act, old) };
    if new.is_some() {
        signals::settled(signum);
    }
    result
}

/// Notes that `signum`'s handler may now interrupt blocking calls (see
/// `signals`).
///
/// # Safety
/// As `siginterrupt(3)`.
#[no_mangle]
pub unsafe extern "C" fn siginterrupt(signum: c_int, flag: c_int) -> c_int {
    if flag != 0 {
        // Whatever the handler is: a function, most likely.
        signals::installing_without_restart(signum, 2);
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    let result = unsafe { real::siginterrupt(signum, flag) };
    signals::settled(signum);
    result
}

/// Notes a handler installed without `SA_RESTART` (see `signals`).
///
/// # Safety
/// As `sysv_signal(3)`.
#[no_mangle]
pub unsafe extern "C" fn sysv_signal(
    signum: c_int,
    handler: libc::sighandler_t,
) -> libc::sighandler_t {
    signals::installing_without_restart(signum, handler);
    // SAFETY: forwarding the caller's arguments unchanged.
    let old = unsafe { real::sysv_signal(signum, handler) as libc::sighandler_t };
    signals::settled(signum);
    old
}

/// `signal` in a strict ISO C build: [`sysv_signal`].
///
/// # Safety
/// As `sysv_signal(3)`.
#[no_mangle]
pub unsafe extern "C" fn __sysv_signal(
    signum: c_int,
    handler: libc::sighandler_t,
) -> libc::sighandler_t {
    signals::installing_without_restart(signum, handler);
    // SAFETY: forwarding the caller's arguments unchanged.
    let old = unsafe { real::__sysv_signal(signum, handler) as libc::sighandler_t };
    signals::settled(signum);
    old
}

/// Notes a handler installed without `SA_RESTART` (see `signals`).
///
/// # Safety
/// As `sigset(3)`.
#[no_mangle]
pub unsafe extern "C" fn sigset(signum: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    signals::installing_without_restart(signum, handler);
    // SAFETY: forwarding the caller's arguments unchanged.
    let old = unsafe { real::sigset(signum, handler) as libc::sighandler_t };
    signals::settled(signum);
    old
}

/// Remembers epoll registrations of our sockets, so they can be re-added
/// when a flow replaces a placeholder.
///
/// # Safety
/// As `epoll_ctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    if inproc::is_settled(fd) {
        // SAFETY: `event` is null or points to a valid epoll_event.
        let copy = unsafe { event.as_ref().copied() };
        return guard(-1, || inproc::epoll::ctl(epfd, op, fd, copy));
    }
    if !table::maybe_tracked(fd) {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real::epoll_ctl(epfd, op, fd, event) };
    }
    // SAFETY: `event` is null or points to a valid epoll_event.
    let copy = unsafe { event.as_ref().copied() };
    let previous = catch_unwind(|| ops::note_epoll(epfd, op, fd, copy));
    // SAFETY: forwarding the caller's arguments unchanged.
    let result = unsafe { real::epoll_ctl(epfd, op, fd, event) };
    if result != 0 {
        // The kernel kept what it had (a bad epfd, EEXIST, a MOD without
        // an event): so does the record.
        let errno = std::io::Error::last_os_error().raw_os_error();
        if let Ok(previous) = previous {
            let _ = catch_unwind(|| ops::set_epoll(epfd, fd, previous));
        }
        if let Some(errno) = errno {
            set_errno(errno);
        }
    }
    result
}

/// After a successful copy of `old` to `result`, the copy means what
/// `old` means, and what `result` meant is let go of as by `close` (see
/// `ops::copy`); a failed one changes nothing, as in Linux.
fn copied(old: c_int, result: c_int) -> c_int {
    if result >= 0 && table::maybe_tracked(old) {
        // Two numbers for one kernel socket (see [`copying`]).
        inproc::recycle::taint(result);
    }
    if result >= 0 {
        let _ = catch_unwind(|| inproc::calls::copied(old, result));
        let _ = catch_unwind(|| ops::copy(old, result));
    }
    result
}

/// Before a copy of `old` is made: a kernel socket of the program's with
/// two numbers is not kept at a connect (`inproc::recycle`), noted before
/// the copy exists.
fn copying(old: c_int) {
    if table::maybe_tracked(old) {
        inproc::recycle::taint(old);
    }
}

/// # Safety
/// As `dup(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    copying(old);
    // SAFETY: forwarding the caller's argument unchanged.
    copied(old, unsafe { real::dup(old) })
}

/// `dup2` or `dup3` (`copy`) of `old` onto `new`: an in-process `new`
/// stops being one before the kernel replaces its file (its epoll
/// registrations, on the eventfd that is still there, go; after the
/// call they could no longer be found), unless the copy is a no-op
/// (`old == new`) or bound to fail (`old` not open). Its socket is let go
/// of after the call.
fn replace(old: c_int, new: c_int, copy: impl FnOnce() -> c_int) -> c_int {
    copying(old);
    let replaced = match inproc::enabled() && old != new && inproc::is(new) {
        true => catch_unwind(|| inproc::calls::replacing(old, new))
            .ok()
            .flatten(),
        false => None,
    };
    let result = copied(old, copy());
    if replaced.is_some() {
        let errno = ops::last_errno();
        let _ = catch_unwind(AssertUnwindSafe(|| drop(replaced)));
        set_errno(errno);
    }
    result
}

/// # Safety
/// As `dup2(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    replace(old, new, || unsafe { real::dup2(old, new) })
}

/// # Safety
/// As `dup3(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarding the caller's arguments unchanged.
    replace(old, new, || unsafe { real::dup3(old, new, flags) })
}

/// Hands the in-process socket at each of `fds` to sald (see
/// `inproc::handover`), for a call that reaches the descriptor through
/// libc's internal calls, which the shim does not see: there its number
/// is a kernel socket. Nothing for any other number.
fn to_kernel_socket(fds: &[c_int]) {
    for &fd in fds {
        if inproc::enabled() && inproc::is(fd) {
            let errno = ops::last_errno();
            let _ = catch_unwind(|| inproc::hand_over(fd));
            set_errno(errno);
        }
    }
}

/// `fdopen`: glibc's stdio reads and writes through its own internal
/// calls, so an in-process socket goes to sald first.
///
/// # Safety
/// As `fdopen(3)`.
#[no_mangle]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const libc::c_char) -> *mut libc::FILE {
    to_kernel_socket(&[fd]);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::fdopen(fd, mode) }
}

/// `sendfile`: the kernel copies into the socket itself, so an
/// in-process socket goes to sald first.
///
/// # Safety
/// As `sendfile(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off_t,
    count: size_t,
) -> ssize_t {
    to_kernel_socket(&[out_fd, in_fd]);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::sendfile(out_fd, in_fd, offset, count) }
}

/// `sendfile64`, as [`sendfile`].
///
/// # Safety
/// As `sendfile(2)`.
#[no_mangle]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off64_t,
    count: size_t,
) -> ssize_t {
    to_kernel_socket(&[out_fd, in_fd]);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::sendfile64(out_fd, in_fd, offset, count) }
}

/// `splice`, as [`sendfile`].
///
/// # Safety
/// As `splice(2)`.
#[no_mangle]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut libc::loff_t,
    fd_out: c_int,
    off_out: *mut libc::loff_t,
    len: size_t,
    flags: libc::c_uint,
) -> ssize_t {
    to_kernel_socket(&[fd_in, fd_out]);
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { real::splice(fd_in, off_in, fd_out, off_out, len, flags) }
}

/// `ioctl`, variadic in C as [`fcntl`] is, and taken the same way. The
/// shim answers `FIOCLEX` and `FIONCLEX` (whether a listener or a
/// datagram socket crosses `exec` changed: Python's `os.set_inheritable`
/// clears close-on-exec this way), `FIONBIO`, `FIONREAD`, `SIOCOUTQ`,
/// `SIOCOUTQNSD` and `SIOCATMARK` on in-process numbers (the engine's
/// queues), and on daemon-path stream sockets (see
/// [`daemon_path_queue`]): `SIOCATMARK` 0, a listener's other three
/// `EINVAL` (as TCP's), and on a stream `SIOCOUTQNSD` the socketpair
/// end's `SIOCOUTQ`; the kernel answers `FIONREAD` and `SIOCOUTQ` for
/// sald's socketpair end (bytes sald delivered and the program did not
/// read, and bytes the program wrote and sald did not take yet). Any
/// other request costs a few comparisons.
///
/// # Safety
/// As `ioctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: libc::c_ulong, arg: libc::c_ulong) -> c_int {
    let cloexec_request =
        request == libc::FIOCLEX as libc::c_ulong || request == libc::FIONCLEX as libc::c_ulong;
    if cloexec_request && inproc::is_settled(fd) {
        let on = request == libc::FIOCLEX as libc::c_ulong;
        if catch_unwind(|| inproc::calls::set_cloexec(fd, on)).unwrap_or(false) {
            return 0;
        }
    }
    if request == libc::FIONBIO as libc::c_ulong && inproc::is_settled(fd) {
        return guard(-1, || {
            let on = arg as *const c_int;
            // SAFETY: FIONBIO's argument is a pointer to an int.
            let on = unsafe { on.as_ref() }.ok_or(libc::EFAULT)?;
            inproc::calls::set_nonblock(fd, *on != 0)
        });
    }
    let queue_request = request == libc::FIONREAD as libc::c_ulong
        || request == inproc::SIOCOUTQ
        || request == inproc::SIOCOUTQNSD
        || request == inproc::SIOCATMARK;
    if queue_request && inproc::is_settled(fd) {
        let count = arg as *mut c_int;
        if let Some(done) = inproc_data(-1, || inproc::calls::queued(fd, request, count)) {
            return done;
        }
    }
    if queue_request && ops::is_stream(fd) {
        if let Some(done) = daemon_path_queue(fd, request, arg) {
            return done;
        }
    }
    if !cloexec_request && request != libc::FIONBIO as libc::c_ulong && table::maybe_tracked(fd) {
        inproc::recycle::taint(fd);
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    let result = unsafe { real::ioctl(fd, request, arg) };
    if result == 0 && cloexec_request {
        let _ = catch_unwind(|| ops::cloexec_set(fd));
    }
    result
}

/// `sockatmark`: glibc's calls its internal `ioctl`, which the shim does
/// not see, so it goes through [`ioctl`] here.
///
/// # Safety
/// As `sockatmark(3)`.
#[no_mangle]
pub unsafe extern "C" fn sockatmark(fd: c_int) -> c_int {
    let mut at_mark: c_int = 0;
    // SAFETY: SIOCATMARK writes one int, at a pointer to this one.
    let rc = unsafe {
        ioctl(
            fd,
            inproc::SIOCATMARK,
            &mut at_mark as *mut c_int as libc::c_ulong,
        )
    };
    if rc < 0 {
        -1
    } else {
        at_mark
    }
}

/// `ioctl`'s queue requests on a daemon-path stream socket the kernel does
/// not answer as TCP's (see [`ioctl`]); `None`: the kernel's answer
/// stands.
fn daemon_path_queue(fd: c_int, request: libc::c_ulong, arg: libc::c_ulong) -> Option<c_int> {
    if request == inproc::SIOCATMARK {
        // As TCP's without urgent data, listening or not (sald's flows
        // carry none).
        return Some(guard(-1, || {
            let at_mark = arg as *mut c_int;
            // SAFETY: SIOCATMARK's argument is a pointer to an int, the
            // program's for this call; checked non-null.
            let at_mark = unsafe { at_mark.as_mut() }.ok_or(libc::EFAULT)?;
            *at_mark = 0;
            Ok(0)
        }));
    }
    if ops::listens(fd) {
        // The daemon path's listener is no TCP socket to count.
        set_errno(libc::EINVAL);
        return Some(-1);
    }
    if request == inproc::SIOCOUTQNSD {
        // What the program wrote and sald has not taken is not sent yet:
        // the socketpair end's SIOCOUTQ, which AF_UNIX answers.
        // SAFETY: forwarding the caller's argument, a pointer to an int.
        return Some(unsafe { real::ioctl(fd, inproc::SIOCOUTQ, arg) });
    }
    None
}

/// `fcntl`, a variadic function in C: its one optional argument is an int
/// or a pointer, which the C calling conventions of Linux's 64-bit ABIs
/// pass where a third fixed argument goes, so it is taken and passed on as
/// one. Only `F_DUPFD` and `F_DUPFD_CLOEXEC` concern the shim (the copy
/// means what the original means).
///
/// # Safety
/// As `fcntl(2)`.
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    fcntl_noted(fd, cmd, arg);
    if let Some(done) = inproc_fcntl(fd, cmd, arg) {
        return done;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    fcntl_done(fd, cmd, unsafe { real::fcntl(fd, cmd, arg) })
}

/// `fcntl64`, as [`fcntl`] (glibc's name for it under a 64-bit `off_t`).
///
/// # Safety
/// As `fcntl(2)`.
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    fcntl_noted(fd, cmd, arg);
    if let Some(done) = inproc_fcntl(fd, cmd, arg) {
        return done;
    }
    // SAFETY: forwarding the caller's arguments unchanged.
    fcntl_done(fd, cmd, unsafe { real::fcntl64(fd, cmd, arg) })
}

/// Before an `fcntl` of `fd`: any command but the flags' (a copy, an
/// owner, a lease, `O_ASYNC`) makes a kernel socket of the program's one
/// not to keep (`inproc::recycle`, see [`copying`]).
fn fcntl_noted(fd: c_int, cmd: c_int, arg: libc::c_ulong) {
    let plain = match cmd {
        libc::F_GETFL | libc::F_GETFD | libc::F_SETFD => true,
        libc::F_SETFL => arg & libc::O_ASYNC as libc::c_ulong == 0,
        _ => false,
    };
    if !plain && table::maybe_tracked(fd) {
        inproc::recycle::taint(fd);
    }
}

/// What an `fcntl` of `fd` returned: for the commands that copy a
/// descriptor, the copy means what `fd` means (see [`copied`]).
fn fcntl_done(fd: c_int, cmd: c_int, result: c_int) -> c_int {
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => copied(fd, result),
        libc::F_SETFD if result == 0 => {
            let _ = catch_unwind(|| ops::cloexec_set(fd));
            result
        }
        _ => result,
    }
}

/// `fcntl`'s `F_GETFL` and `F_SETFL` on an in-process number: the
/// socket's `O_NONBLOCK` is the shim's (the eventfd's flags are the
/// engine's, see `inproc`); `F_GETFD` and `F_SETFD`: the program's
/// close-on-exec, kept by the shim (the kernel's flag stays set). `None`:
/// any other call, libc's.
fn inproc_fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> Option<c_int> {
    let cmds = [libc::F_GETFL, libc::F_SETFL, libc::F_GETFD, libc::F_SETFD];
    if !cmds.contains(&cmd) || !inproc::is_settled(fd) {
        return None;
    }
    match cmd {
        libc::F_GETFD => {
            let on = catch_unwind(|| inproc::calls::cloexec(fd)).ok().flatten()?;
            return Some(if on { libc::FD_CLOEXEC } else { 0 });
        }
        libc::F_SETFD => {
            let on = arg as c_int & libc::FD_CLOEXEC != 0;
            let kept = catch_unwind(|| inproc::calls::set_cloexec(fd, on)).unwrap_or(false);
            return kept.then_some(0);
        }
        _ => {}
    }
    Some(guard(-1, || match cmd {
        libc::F_GETFL => {
            // SAFETY: no pointers.
            let flags = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
            if flags < 0 {
                return Err(ops::last_errno());
            }
            inproc::calls::get_flags(fd, flags)
        }
        _ => inproc::calls::set_nonblock(fd, arg as c_int & libc::O_NONBLOCK != 0),
    }))
}

/// The program's buffer of `n` bytes at `buf` to send (`n` clamped as
/// the kernel does).
///
/// # Safety
/// `buf` is valid for reads of `n` bytes (or null, which is `EFAULT`
/// unless `n` is 0), for as long as the result is used.
unsafe fn data_out<'a>(buf: *const c_void, n: size_t) -> Res<&'a [u8]> {
    if n == 0 {
        return Ok(&[]);
    }
    if buf.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller guarantees `n` readable bytes at `buf`.
    Ok(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n.min(MAX_RW_COUNT)) })
}

/// Writes an option's value into `getsockopt`'s buffers: at most
/// `*len` bytes, and the length written.
///
/// # Safety
/// `value`/`len` are null or valid as for `getsockopt(2)`.
unsafe fn write_option(bytes: &[u8], value: *mut c_void, len: *mut socklen_t) -> Res<c_int> {
    if value.is_null() || len.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: `len` is non-null; the caller makes it readable.
    let room = unsafe { *len };
    if (room as i32) < 0 {
        return Err(libc::EINVAL);
    }
    let n = bytes.len().min(room as usize);
    // SAFETY: the caller guarantees `*len >= n` writable bytes at `value`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.cast::<u8>(), n);
        *len = n as socklen_t;
    }
    Ok(0)
}

/// The milliseconds of `poll`'s timeout as a deadline (`None`: no limit,
/// for a negative one).
fn poll_deadline(timeout: c_int) -> Option<std::time::Instant> {
    let millis = u64::try_from(timeout).ok()?;
    Some(std::time::Instant::now() + std::time::Duration::from_millis(millis))
}

/// The program's `nfds` entries at `fds`, if any is an in-process number
/// (and the mode is on): `None` sends the call to libc untouched.
///
/// # Safety
/// `fds` is null or valid for reads and writes of `nfds` entries.
unsafe fn inproc_set<'a>(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
) -> Option<&'a mut [libc::pollfd]> {
    if !inproc::enabled() || fds.is_null() || nfds == 0 {
        return None;
    }
    let nfds = usize::try_from(nfds).ok()?;
    // SAFETY: as the caller guarantees.
    let set = unsafe { std::slice::from_raw_parts_mut(fds, nfds) };
    inproc::concerns(set).then_some(set)
}

/// `poll`: libc's unless an in-process number is in the set (see
/// `inproc::poll`).
///
/// # Safety
/// As `poll(2)`.
#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    // SAFETY: the caller's set, valid as poll(2) requires.
    match unsafe { inproc_set(fds, nfds) } {
        Some(set) => guard(-1, || {
            inproc::poll(set, poll_deadline(timeout), std::ptr::null())
        }),
        // SAFETY: forwarding the caller's arguments unchanged.
        None => unsafe { real::poll(fds, nfds, timeout) },
    }
}

/// `poll` as glibc's `_FORTIFY_SOURCE` calls it, with the set's size.
///
/// # Safety
/// As `poll(2)`.
#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: c_int,
    _fdslen: size_t,
) -> c_int {
    // SAFETY: same contract as ours.
    unsafe { poll(fds, nfds, timeout) }
}

/// `ppoll`: libc's unless an in-process number is in the set (see
/// `inproc::poll`).
///
/// # Safety
/// As `ppoll(2)`.
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's set, valid as ppoll(2) requires.
    let Some(set) = (unsafe { inproc_set(fds, nfds) }) else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real::ppoll(fds, nfds, timeout, sigmask) };
    };
    guard(-1, || {
        // SAFETY: the caller's timeout, null or valid for the call.
        let deadline = unsafe { timespec_deadline(timeout)? };
        inproc::poll(set, deadline, sigmask)
    })
}

/// `ppoll` as glibc's `_FORTIFY_SOURCE` calls it, with the set's size.
///
/// # Safety
/// As `ppoll(2)`.
#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
    _fdslen: size_t,
) -> c_int {
    // SAFETY: same contract as ours.
    unsafe { ppoll(fds, nfds, timeout, sigmask) }
}

/// An `epoll_wait` family call: `call` makes the kernel's with the time
/// left, and its events are translated (`inproc::epoll::wait`: tagged
/// events of in-process numbers turned back into the program's, and the
/// call made again for the time left when that left none).
///
/// # Safety
/// Every result `n > 0` of `call` has `n` events written at `events`.
unsafe fn epoll_done(
    events: *mut epoll_event,
    timeout: Option<std::time::Duration>,
    call: impl FnMut(Option<std::time::Duration>) -> c_int,
) -> c_int {
    // SAFETY: as ours.
    unsafe { inproc::epoll::wait(events, timeout, call) }
}

/// An `epoll_wait` timeout in milliseconds as a limit (`None`: none).
fn epoll_limit(timeout: c_int) -> Option<std::time::Duration> {
    u64::try_from(timeout)
        .ok()
        .map(std::time::Duration::from_millis)
}

/// # Safety
/// As `epoll_wait(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    // SAFETY: forwarding the caller's arguments, the timeout shortened
    // to the time left; then its events, as the kernel filled them.
    unsafe {
        epoll_done(events, epoll_limit(timeout), |left| {
            real::epoll_wait(epfd, events, max, inproc::epoll::millis(left))
        })
    }
}

/// # Safety
/// As `epoll_pwait(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    sigmask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: as `epoll_wait`.
    unsafe {
        epoll_done(events, epoll_limit(timeout), |left| {
            real::epoll_pwait(epfd, events, max, inproc::epoll::millis(left), sigmask)
        })
    }
}

/// # Safety
/// As `epoll_pwait2(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: `timeout` is null or valid, as the caller promised.
    let given = unsafe { timeout.as_ref() }.copied();
    // A negative timeout is the kernel's to refuse: passed on as given.
    let limit = given.and_then(|t| {
        Some(std::time::Duration::new(
            u64::try_from(t.tv_sec).ok()?,
            u32::try_from(t.tv_nsec).ok()?,
        ))
    });
    // SAFETY: as `epoll_wait`; the time left as a timespec of ours.
    unsafe {
        epoll_done(events, limit, |left| {
            let spec = left.map(|left| libc::timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: left.subsec_nanos().into(),
            });
            let at = match (limit, &spec) {
                (Some(_), Some(spec)) => spec as *const libc::timespec,
                _ => timeout,
            };
            real::epoll_pwait2(epfd, events, max, at, sigmask)
        })
    }
}

/// `select`: libc's unless a set holds an in-process number (see
/// `inproc::select`); then, as Linux's, the timeout is left holding the
/// time not slept.
///
/// # Safety
/// As `select(2)`.
#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    read: *mut libc::fd_set,
    write: *mut libc::fd_set,
    except: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    // SAFETY: the caller's sets, null or valid as select(2) requires.
    let sets = unsafe { inproc::select::Sets::new(read, write, except) };
    if !inproc::enabled() || !sets.concern(nfds) {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real::select(nfds, read, write, except, timeout) };
    }
    guard(-1, || {
        // SAFETY: the caller's timeout, null or valid for the call.
        let deadline = match unsafe { timeout.as_ref() } {
            None => None,
            Some(tv) => {
                let secs = u64::try_from(tv.tv_sec).map_err(|_| libc::EINVAL)?;
                let micros = u32::try_from(tv.tv_usec)
                    .ok()
                    .filter(|&us| us < 1_000_000)
                    .ok_or(libc::EINVAL)?;
                let limit = std::time::Duration::new(secs, micros * 1000);
                let now = std::time::Instant::now();
                Some(now.checked_add(limit).ok_or(libc::EINVAL)?)
            }
        };
        let result = inproc::select::select(nfds, &sets, deadline, std::ptr::null());
        // SAFETY: as above.
        if let (Some(tv), Some(at)) = (unsafe { timeout.as_mut() }, deadline) {
            let left = at.saturating_duration_since(std::time::Instant::now());
            tv.tv_sec = left.as_secs() as libc::time_t;
            tv.tv_usec = left.subsec_micros() as libc::suseconds_t;
        }
        result
    })
}

/// `pselect`: as [`select`], with a timespec and a signal mask (the
/// timeout is not updated, as glibc's).
///
/// # Safety
/// As `pselect(2)`.
#[no_mangle]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    read: *mut libc::fd_set,
    write: *mut libc::fd_set,
    except: *mut libc::fd_set,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's sets, null or valid as pselect(2) requires.
    let sets = unsafe { inproc::select::Sets::new(read, write, except) };
    if !inproc::enabled() || !sets.concern(nfds) {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { real::pselect(nfds, read, write, except, timeout, sigmask) };
    }
    guard(-1, || {
        // SAFETY: the caller's timeout, null or valid for the call.
        let deadline = unsafe { timespec_deadline(timeout)? };
        inproc::select::select(nfds, &sets, deadline, sigmask)
    })
}

/// A `timespec` timeout (null: none) as a deadline; `EINVAL` for one
/// the kernel refuses.
///
/// # Safety
/// `timeout` is null or valid for reads.
unsafe fn timespec_deadline(timeout: *const libc::timespec) -> Res<Option<std::time::Instant>> {
    // SAFETY: as the caller guarantees.
    let Some(ts) = (unsafe { timeout.as_ref() }) else {
        return Ok(None);
    };
    let secs = u64::try_from(ts.tv_sec).map_err(|_| libc::EINVAL)?;
    let nanos = u32::try_from(ts.tv_nsec)
        .ok()
        .filter(|&n| n < 1_000_000_000)
        .ok_or(libc::EINVAL)?;
    let left = std::time::Duration::new(secs, nanos);
    std::time::Instant::now()
        .checked_add(left)
        .map(Some)
        .ok_or(libc::EINVAL)
}
