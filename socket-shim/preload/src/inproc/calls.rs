//! The interposed calls on an in-process number, by number: each finds
//! the [`Socket`] (`EBADF` if the number stopped being in-process
//! meanwhile) and asks it. `lib.rs` calls these once [`super::is`] said
//! the number is in-process.

use std::os::fd::RawFd;
use std::sync::Arc;

use libc::{c_int, iovec};

use super::{epoll, iov, registry, setup, Moved, Socket};
use crate::addr::SockAddr;
use crate::ops::Res;
use crate::real;

/// The socket at `fd`.
fn socket(fd: RawFd) -> Res<Arc<Socket>> {
    registry::get(fd).ok_or(libc::EBADF)
}

/// What a data call or `accept` on an in-process number returns when its
/// socket went to sald during the call, or before it found the socket
/// (`handover`): not an errno; the interposed call makes the call again
/// on the plain path.
pub(crate) const HANDED_OVER: c_int = -1;

/// `call` on the socket at `fd`; a failure that was the flow going to
/// sald meanwhile is [`HANDED_OVER`], one that was a `connect` to
/// `AF_UNSPEC` meanwhile `EPIPE` (see `Socket::moved`).
fn data_call<T>(fd: RawFd, mut call: impl FnMut(&Socket) -> Res<T>) -> Res<T> {
    // Gone from the registry since the caller looked: the plain path's
    // (sald's socket at the number now, or nothing: `EBADF` there).
    let socket = registry::get(fd).ok_or(HANDED_OVER)?;
    loop {
        let result = call(&socket);
        if result.is_ok() {
            return result;
        }
        return match socket.moved() {
            Moved::Not => result,
            // The flow came back to the engine: again.
            Moved::Back => continue,
            // A number that did not take sald's file stays a reset stream.
            _ if registry::is(fd) => Err(libc::ECONNRESET),
            Moved::ToSald => Err(HANDED_OVER),
            Moved::Disconnected => Err(libc::EPIPE),
        };
    }
}

/// `read`, `recv`, `recvfrom` (no address is given: a stream's sender
/// has none).
pub(crate) fn read(fd: RawFd, buf: &mut [u8], flags: c_int) -> Res<usize> {
    data_call(fd, |socket| socket.read(buf, flags))
}

/// `write`, `send`, `sendto` (an address is ignored, as TCP's).
pub(crate) fn write(fd: RawFd, buf: &[u8], flags: c_int) -> Res<usize> {
    data_call(fd, |socket| socket.write(buf, flags))
}

/// `readv`, `recvmsg`: a read scattered into the iovecs (see
/// [`iov::read`]).
///
/// # Safety
/// `iov` is null or valid for `count` iovecs, each valid for writes of
/// its length.
pub(crate) unsafe fn readv(fd: RawFd, iov: *const iovec, count: usize, flags: c_int) -> Res<usize> {
    // SAFETY: as the caller guarantees.
    data_call(fd, |socket| unsafe { iov::read(socket, iov, count, flags) })
}

/// `writev`, `sendmsg`: the iovecs written in order (see
/// [`iov::write`]).
///
/// # Safety
/// `iov` is null or valid for `count` iovecs, each valid for reads of its
/// length.
pub(crate) unsafe fn writev(
    fd: RawFd,
    iov: *const iovec,
    count: usize,
    flags: c_int,
) -> Res<usize> {
    // SAFETY: as the caller guarantees.
    data_call(fd, |socket| unsafe {
        iov::write(socket, iov, count, flags)
    })
}

/// A batch of reads (`recvmmsg`) that read something ended on `errno`: a
/// reset's (or failed connect's) error stays for the next call, as Linux
/// keeps it. (A read reports no other error once it read.)
pub(crate) fn report_again(fd: RawFd, errno: c_int) {
    let reports = [
        libc::ECONNRESET,
        libc::ECONNREFUSED,
        libc::EHOSTUNREACH,
        libc::ETIMEDOUT,
    ];
    if reports.contains(&errno) {
        if let Ok(socket) = socket(fd) {
            socket.report_again();
        }
    }
}

/// `accept`, `accept4`: the new number and the peer's address.
pub(crate) fn accept(fd: RawFd, flags: c_int) -> Res<(RawFd, SockAddr)> {
    data_call(fd, |socket| setup::accept(socket, flags))
}

/// `connect` on a socket in-process already; `None` when it may connect
/// anew (see `Socket::connect_again`).
pub(crate) fn connect(fd: RawFd) -> Option<Res<c_int>> {
    match socket(fd) {
        Ok(socket) => socket.connect_again(),
        Err(errno) => Some(Err(errno)),
    }
}

/// `listen` on a socket in-process already: a listener takes the new
/// backlog, a stream cannot listen.
pub(crate) fn listen(fd: RawFd, backlog: c_int) -> Res<c_int> {
    socket(fd)?.listen_again(backlog)
}

/// `shutdown`.
pub(crate) fn shutdown(fd: RawFd, how: c_int) -> Res<c_int> {
    socket(fd)?.shutdown(how).map(|()| 0)
}

/// `getsockname` (`peer` false), `getpeername` (`peer` true).
pub(crate) fn name(fd: RawFd, peer: bool) -> Res<SockAddr> {
    socket(fd)?.name(peer)
}

/// `getsockopt`: the value's bytes.
pub(crate) fn getsockopt(fd: RawFd, level: c_int, name: c_int) -> Res<Vec<u8>> {
    socket(fd)?.getsockopt(level, name)
}

/// `setsockopt`.
pub(crate) fn setsockopt(fd: RawFd, level: c_int, name: c_int, value: &[u8]) -> Res<c_int> {
    socket(fd)?.setsockopt(level, name, value).map(|()| 0)
}

/// `fcntl(F_GETFL)`: the file's flags (`flags`, as the kernel gave them
/// for the eventfd) with the socket's own `O_NONBLOCK`.
pub(crate) fn get_flags(fd: RawFd, flags: c_int) -> Res<c_int> {
    let nonblock = socket(fd)?.nonblock();
    Ok((flags & !libc::O_NONBLOCK) | if nonblock { libc::O_NONBLOCK } else { 0 })
}

/// `ioctl(FIONREAD)`, `ioctl(SIOCOUTQ)`, `ioctl(SIOCOUTQNSD)`,
/// `ioctl(SIOCATMARK)` (see `Socket::queued`): the answer, as an int, at
/// `arg`.
pub(crate) fn queued(fd: RawFd, request: libc::c_ulong, arg: *mut c_int) -> Res<c_int> {
    if arg.is_null() {
        return Err(libc::EFAULT);
    }
    let bytes = match data_call(fd, |socket| socket.queued(request)) {
        // A number that did not take sald's file reads as reset: nothing
        // queued, as a reset TCP socket's `ioctl` says.
        Err(libc::ECONNRESET) => 0,
        // Disconnected meanwhile: the placeholder's `ioctl` answers.
        Err(libc::EPIPE) => return Err(HANDED_OVER),
        result => result?,
    };
    // SAFETY: these requests take a pointer to an int, checked non-null;
    // the program gave it for this call.
    unsafe { *arg = c_int::try_from(bytes).unwrap_or(c_int::MAX) };
    Ok(0)
}

/// `fcntl(F_SETFL)`, `ioctl(FIONBIO)`: the socket's `O_NONBLOCK` (the
/// other flags a socket takes, `O_ASYNC` and the like, are not kept).
pub(crate) fn set_nonblock(fd: RawFd, on: bool) -> Res<c_int> {
    socket(fd)?.set_nonblock(on);
    Ok(0)
}

/// `fcntl(F_GETFD)`: whether the program wants the in-process number
/// closed at `exec` (the kernel's flag is always set on one, see
/// `registry`); `None`: not an in-process number after all.
pub(crate) fn cloexec(fd: RawFd) -> Option<bool> {
    registry::checked(fd)?;
    registry::cloexec(fd)
}

/// `fcntl(F_SETFD)`, `ioctl(FIOCLEX/FIONCLEX)`: the program's wish, kept
/// for `F_GETFD` and the hand-over to sald; false: not an in-process
/// number after all.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> bool {
    registry::checked(fd).is_some() && registry::set_cloexec(fd, on)
}

/// `close`: the number no longer means the socket; what it meant is
/// returned, to be dropped once the number is closed (the last number's
/// drop closes the flow).
pub(crate) fn close(fd: RawFd) -> Option<Arc<Socket>> {
    epoll::closing(fd);
    registry::remove(fd)
}

/// Before `dup2`/`dup3` of `old` onto the in-process number `new`: if
/// `old` is open (the copy will be made), `new` stops being in-process
/// now, while its epoll registrations can still be found on its file;
/// what it meant is returned, to be dropped after the copy.
pub(crate) fn replacing(old: RawFd, new: RawFd) -> Option<Arc<Socket>> {
    // SAFETY: no pointers; whether `old` is open.
    if old == new || unsafe { real::fcntl(old, libc::F_GETFD, 0) } < 0 {
        return None;
    }
    epoll::closing(new);
    registry::remove(new)
}

/// After a successful copy of `old` to `new`: see [`registry::copy`]
/// (`new`'s epoll registrations, made on what it was, go). A copy of an
/// in-process number is close-on-exec, as every such number (after
/// `exec` it would be a bare eventfd): `dup`, `dup2` and `F_DUPFD` make
/// it so here, where the kernel would not. What the program asked for
/// (the kernel's flag as the copy made it) is kept for `F_GETFD` and
/// the hand-over to sald.
pub(crate) fn copied(old: RawFd, new: RawFd) {
    if old == new {
        return;
    }
    if registry::is(new) {
        epoll::closing(new);
    }
    if !registry::is(old) && !registry::is(new) {
        return;
    }
    let cloexec = crate::inherit::cloexec(new);
    let replaced = registry::copy(old, new, cloexec);
    if registry::is(new) {
        // SAFETY: no pointers; `new` is the copy just made.
        unsafe { real::fcntl(new, libc::F_SETFD, libc::FD_CLOEXEC as libc::c_ulong) };
    }
    drop(replaced);
}
