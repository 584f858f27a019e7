//! The program's `struct msghdr` and iovec lists (`sendmsg`, `recvmsg`,
//! `readv`) as the shared paths of `ops` take them ([`Outgoing`],
//! [`Incoming`]): checked as the kernel checks them, gathered into one
//! datagram's payload or scattered from one, or handed on as they are to
//! libc for a flow. Only datagram sockets of ours that are not connected
//! and streams that are not (their data calls intercepted) come here; a
//! flow's `sendmsg`/`recvmsg`/`readv` go to libc with no detour (a
//! datagram flow's `recvmsg` only has its peer named after: `name_room`).
//!
//! Ancillary data (`msg_control`) does not cross sald: a datagram sent
//! ignores it, and one received has none (`msg_controllen` 0).

use std::ffi::c_int;
use std::os::fd::RawFd;
use std::ptr::addr_of_mut;

use libc::{iovec, msghdr, sockaddr, socklen_t};

use crate::ops::{Errno, Incoming, Outgoing, Res};
use crate::{real, MAX_RW_COUNT};

/// The most iovecs one call takes (Linux's `UIO_MAXIOV`, glibc's
/// `IOV_MAX`).
pub(crate) const UIO_MAXIOV: usize = 1024;

/// A list of the program's iovecs, checked as the kernel checks it, and
/// copied as the kernel copies it: the buffers a datagram is scattered
/// into may overlap the list itself (or another thread may change it),
/// and what was checked is what is used.
struct Iovecs {
    list: Vec<iovec>,
    /// The bytes they hold, at most [`MAX_RW_COUNT`] (the kernel moves no
    /// more in one call, and shortens the iovec that crosses that line).
    total: usize,
}

impl Iovecs {
    /// Checks `count` iovecs at `at` as the kernel does before it moves a
    /// byte: more than [`UIO_MAXIOV`] is `too_many` (`EMSGSIZE` for
    /// `sendmsg`/`recvmsg`, `EINVAL` for `readv`), a negative length
    /// `EINVAL`, a missing list or buffer `EFAULT`.
    ///
    /// # Safety
    /// `at` is null or valid for reads of `count` iovecs, and each iovec's
    /// buffer valid for its length (as `readv(2)`/`writev(2)` require),
    /// for as long as the result is used.
    unsafe fn new(at: *const iovec, count: usize, too_many: Errno) -> Res<Iovecs> {
        if count > UIO_MAXIOV {
            return Err(too_many);
        }
        if count == 0 {
            return Ok(Iovecs {
                list: Vec::new(),
                total: 0,
            });
        }
        if at.is_null() {
            return Err(libc::EFAULT);
        }
        // SAFETY: the caller guarantees `count` readable iovecs at `at`;
        // copied at once (see the type's docs).
        let list = unsafe { std::slice::from_raw_parts(at, count) }.to_vec();
        let mut total = 0usize;
        for v in &list {
            if (v.iov_len as isize) < 0 {
                return Err(libc::EINVAL);
            }
            if v.iov_base.is_null() && v.iov_len > 0 {
                return Err(libc::EFAULT);
            }
            total += v.iov_len.min(MAX_RW_COUNT - total);
        }
        Ok(Iovecs { list, total })
    }

    /// Each iovec's buffer and the part of it within [`Iovecs::total`].
    fn parts(&self) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        let mut left = self.total;
        self.list.iter().map(move |v| {
            let len = v.iov_len.min(left);
            left -= len;
            (v.iov_base.cast::<u8>(), len)
        })
    }

    /// The bytes, gathered into one buffer.
    fn gather(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.total);
        for (at, len) in self.parts().filter(|&(_, len)| len > 0) {
            // SAFETY: `new`'s caller keeps each buffer valid for its
            // length; `len` is within it.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(at, len) });
        }
        out
    }

    /// Copies as much of `data` as fits into the buffers, in order;
    /// returns how many bytes.
    fn scatter(&self, data: &[u8]) -> usize {
        let mut rest = data;
        for (at, len) in self.parts() {
            if rest.is_empty() {
                break;
            }
            let n = len.min(rest.len());
            // SAFETY: `new`'s caller keeps each buffer valid for writes of
            // its length; `n` is within it and within `rest`, which is the
            // shim's own buffer (no overlap).
            unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), at, n) };
            rest = &rest[n..];
        }
        data.len() - rest.len()
    }
}

/// How many bytes `count` iovecs at `at` ask for, for a read the kernel
/// just answered (`read_done`'s test for a read of nothing).
///
/// # Safety
/// `count` readable iovecs at `at` (the kernel just accepted the list, or
/// the program's call promises it).
pub(crate) unsafe fn asked(at: *const iovec, count: usize) -> usize {
    if count == 0 || at.is_null() {
        return 0;
    }
    // SAFETY: as the caller guarantees.
    let list = unsafe { std::slice::from_raw_parts(at, count) };
    list.iter()
        .fold(0usize, |total, v| total.saturating_add(v.iov_len))
}

/// The room for the sender's address in the program's `recvmsg` message
/// (its `msg_namelen`), read before the call; `None` when it asks for no
/// address (`msg_name` null).
///
/// # Safety
/// `msg` is null or valid for reads as for `recvmsg(2)`.
pub(crate) unsafe fn name_room(msg: *const msghdr) -> Option<socklen_t> {
    // SAFETY: null, or valid as the caller guarantees.
    let hdr = unsafe { msg.as_ref() }?;
    (!hdr.msg_name.is_null()).then_some(hdr.msg_namelen)
}

/// A `sendmsg` of the program's to one of our sockets.
pub(crate) struct MsgOut {
    msg: *const msghdr,
    iov: Iovecs,
}

impl MsgOut {
    /// The program's message, checked as the kernel checks it.
    ///
    /// # Safety
    /// `msg` is null or valid as for `sendmsg(2)` (its name, iovecs and
    /// their buffers too), for as long as the result is used.
    pub(crate) unsafe fn new(msg: *const msghdr) -> Res<MsgOut> {
        // SAFETY: null, or valid as the caller guarantees.
        let hdr = unsafe { msg.as_ref() }.ok_or(libc::EFAULT)?;
        // SAFETY: the caller guarantees the iovecs.
        let iov = unsafe { Iovecs::new(hdr.msg_iov, hdr.msg_iovlen, libc::EMSGSIZE)? };
        Ok(MsgOut { msg, iov })
    }

    /// The destination (`msg_name`), if the program gave one: as the
    /// kernel's, a name of length 0 is none.
    pub(crate) fn addr(&self) -> Option<&[u8]> {
        // SAFETY: checked non-null in `new`, valid while `self` is.
        let hdr = unsafe { &*self.msg };
        if hdr.msg_namelen == 0 {
            return None;
        }
        // SAFETY: the caller of `new` guarantees `msg_namelen` bytes there.
        unsafe { crate::addr_bytes(hdr.msg_name.cast::<sockaddr>(), hdr.msg_namelen) }
    }
}

impl Outgoing for MsgOut {
    fn size(&self) -> usize {
        self.iov.total
    }

    fn payload(&self) -> Vec<u8> {
        self.iov.gather()
    }

    /// libc's `sendmsg` of the message without its name: a stream
    /// ignores the address, as `sendto` on a TCP socket does.
    fn send(&self, fd: RawFd, flags: c_int) -> isize {
        // SAFETY: checked non-null in `new`, valid while `self` is.
        let mut hdr = unsafe { *self.msg };
        hdr.msg_name = std::ptr::null_mut();
        hdr.msg_namelen = 0;
        // SAFETY: `hdr` is the program's valid message, nameless.
        unsafe { real::sendmsg(fd, &hdr, flags) }
    }
}

/// A `recvmsg` (or `readv`) of the program's on one of our sockets.
pub(crate) struct MsgIn {
    msg: *mut msghdr,
    iov: Iovecs,
}

impl MsgIn {
    /// The program's message, checked as the kernel checks it (`too_many`
    /// iovecs: see [`Iovecs::new`]).
    ///
    /// # Safety
    /// `msg` is null or valid as for `recvmsg(2)` (its name, iovecs and
    /// their buffers too), for as long as the result is used, and nothing
    /// else refers to it meanwhile.
    pub(crate) unsafe fn new(msg: *mut msghdr, too_many: Errno) -> Res<MsgIn> {
        // SAFETY: null, or valid as the caller guarantees.
        let hdr = unsafe { msg.as_ref() }.ok_or(libc::EFAULT)?;
        // SAFETY: the caller guarantees the iovecs.
        let iov = unsafe { Iovecs::new(hdr.msg_iov, hdr.msg_iovlen, too_many)? };
        Ok(MsgIn { msg, iov })
    }

    /// Where the sender's address goes, as `recvfrom`'s arguments: both
    /// null when the program asks for none (`msg_name` null; the kernel
    /// then leaves `msg_namelen` alone too).
    pub(crate) fn name(&self) -> (*mut sockaddr, *mut socklen_t) {
        // SAFETY: checked non-null in `new`, valid while `self` is; only
        // raw pointers are made, no reference.
        unsafe {
            let name = (*self.msg).msg_name.cast::<sockaddr>();
            if name.is_null() {
                return (std::ptr::null_mut(), std::ptr::null_mut());
            }
            (name, addr_of_mut!((*self.msg).msg_namelen))
        }
    }
}

impl Incoming for MsgIn {
    fn room(&self) -> usize {
        self.iov.total
    }

    /// Scatters the payload and sets the message's flags as the kernel
    /// does for a datagram: `MSG_TRUNC` when it did not fit, and no
    /// ancillary data.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = self.iov.scatter(data);
        let flags = if n < data.len() { libc::MSG_TRUNC } else { 0 };
        // SAFETY: checked non-null in `new`, valid and writable while
        // `self` is.
        unsafe {
            (*self.msg).msg_flags = flags;
            (*self.msg).msg_controllen = 0;
        }
        n
    }

    /// libc's `recvmsg` of the whole message (name, control and flags as
    /// the kernel fills them).
    fn recv(&mut self, fd: RawFd, flags: c_int) -> isize {
        // SAFETY: the program's valid message (see `new`).
        unsafe { real::recvmsg(fd, self.msg, flags) }
    }
}
