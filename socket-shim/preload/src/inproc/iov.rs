//! The program's iovecs (`readv`, `writev`, `recvmsg`, `sendmsg`) on an
//! in-process stream, with no allocation sized to them: a read goes
//! straight into the iovecs, one engine read per iovec filled (no copy of
//! the shim's); a write of one iovec goes straight from it, and one of
//! several gathers them into a bounded buffer ([`CHUNK`], the thread's,
//! made once) one chunk at a time (one copy, bounded). At most
//! [`MAX_RW_COUNT`] bytes per call, as the kernel's.

use std::cell::RefCell;

use libc::{c_int, iovec};

use super::Socket;
use crate::ops::Res;
use crate::MAX_RW_COUNT;

/// The most iovecs one call takes (Linux's `UIO_MAXIOV`).
const UIO_MAXIOV: usize = 1024;

/// The most bytes a write of several iovecs gathers at once.
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// The thread's gathering buffer (see [`write`]).
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The program's `count` iovecs at `iov`, checked as the kernel checks
/// them (`EINVAL` for too many or a negative count, `EFAULT` for a null
/// list or a null base of a non-empty one), without the empty ones.
///
/// # Safety
/// `iov` is null or valid for reads of `count` iovecs, each valid for its
/// length, for `'a`.
unsafe fn list<'a>(iov: *const iovec, count: usize) -> Res<impl Iterator<Item = &'a iovec>> {
    if count > UIO_MAXIOV {
        return Err(libc::EINVAL);
    }
    let list: &[iovec] = match count {
        0 => &[],
        _ if iov.is_null() => return Err(libc::EFAULT),
        // SAFETY: as the caller guarantees.
        _ => unsafe { std::slice::from_raw_parts(iov, count) },
    };
    if list.iter().any(|v| v.iov_base.is_null() && v.iov_len > 0) {
        return Err(libc::EFAULT);
    }
    Ok(list.iter().filter(|v| v.iov_len > 0))
}

/// A read of `socket` into the iovecs (`flags` as `recv`'s): the first
/// iovec waits as a read does, the next ones are filled with what is
/// there already (or waited for too under `MSG_WAITALL`), as the kernel's
/// `readv` of a stream. An error after some bytes is the next call's. A
/// peek (`MSG_PEEK`) is one across the iovecs ([`peek`]).
///
/// # Safety
/// As [`list`], the iovecs valid for writes.
pub(crate) unsafe fn read(
    socket: &Socket,
    iov: *const iovec,
    count: usize,
    flags: c_int,
) -> Res<usize> {
    // SAFETY: as the caller guarantees.
    let list = unsafe { list(iov, count)? };
    if flags & libc::MSG_PEEK != 0 {
        return peek(socket, list, flags);
    }
    let mut got = 0usize;
    for v in list {
        let room = v.iov_len.min(MAX_RW_COUNT - got);
        if room == 0 {
            break;
        }
        // SAFETY: a non-null base valid for writes of `iov_len >= room`
        // bytes, the program's for the call.
        let buf = unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), room) };
        let flags = match got > 0 && flags & libc::MSG_WAITALL == 0 {
            true => flags | libc::MSG_DONTWAIT,
            false => flags,
        };
        let read = match got {
            0 => socket.read(buf, flags),
            _ => socket.read_more(buf, flags),
        };
        match read {
            Ok(n) => {
                got += n;
                if n < room {
                    break;
                }
            }
            Err(errno) if got == 0 => return Err(errno),
            Err(_) => break,
        }
    }
    if got == 0 {
        // No iovec with room: a read of nothing, checked as one.
        return socket.read(&mut [], flags);
    }
    Ok(got)
}

/// The most one peek over several iovecs looks at (a short read, as a
/// stream's may be).
const PEEK_MAX: usize = 1 << 20;

/// A peek into the iovecs (`MSG_PEEK` in `flags`): each peek starts at the
/// first unread byte, so one peek of their whole length ([`PEEK_MAX`] at
/// most), scattered, as Linux's `tcp_recvmsg` copies one across them.
fn peek<'a>(socket: &Socket, list: impl Iterator<Item = &'a iovec>, flags: c_int) -> Res<usize> {
    let list: Vec<&iovec> = list.collect();
    if let [one] = list[..] {
        // SAFETY: a non-null base valid for writes of `iov_len` bytes, the
        // program's for the call.
        let buf = unsafe { std::slice::from_raw_parts_mut(one.iov_base.cast::<u8>(), one.iov_len) };
        return socket.read(&mut buf[..one.iov_len.min(PEEK_MAX)], flags);
    }
    let total = list
        .iter()
        .map(|v| v.iov_len)
        .fold(0usize, usize::saturating_add);
    let mut all = vec![0u8; total.min(PEEK_MAX)];
    let n = socket.read(&mut all, flags)?;
    let mut rest = &all[..n];
    for v in list {
        if rest.is_empty() {
            break;
        }
        let take = v.iov_len.min(rest.len());
        // SAFETY: a non-null base valid for writes of `iov_len >= take`
        // bytes, the program's for the call; `rest` is ours.
        unsafe { std::ptr::copy_nonoverlapping(rest.as_ptr(), v.iov_base.cast::<u8>(), take) };
        rest = &rest[take..];
    }
    Ok(n)
}

/// A write of the iovecs to `socket` (`flags` as `send`'s), gathered a
/// [`CHUNK`] at a time; stops at the first short write. An error after
/// some bytes is the next call's (no `SIGPIPE` then, as TCP's).
///
/// # Safety
/// As [`list`].
pub(crate) unsafe fn write(
    socket: &Socket,
    iov: *const iovec,
    count: usize,
    flags: c_int,
) -> Res<usize> {
    // SAFETY: as the caller guarantees.
    let mut list = unsafe { list(iov, count)? }.peekable();
    let Some(first) = list.next() else {
        return socket.write(&[], flags);
    };
    let whole = |v: &iovec| -> &[u8] {
        // SAFETY: a non-null base valid for reads of `iov_len` bytes (at
        // most `MAX_RW_COUNT` taken below).
        unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len.min(MAX_RW_COUNT)) }
    };
    if list.peek().is_none() {
        // One iovec: straight from it.
        return socket.write(whole(first), flags);
    }
    let mut pieces = std::iter::once(first).chain(list).map(whole);
    let mut piece: &[u8] = pieces.next().unwrap_or(&[]);
    let mut sent = 0usize;
    let mut gather = |chunk: &mut Vec<u8>| -> Res<usize> {
        loop {
            chunk.clear();
            while chunk.len() < CHUNK && sent + chunk.len() < MAX_RW_COUNT {
                if piece.is_empty() {
                    match pieces.next() {
                        Some(next) => piece = next,
                        None => break,
                    }
                    continue;
                }
                let room = (CHUNK - chunk.len()).min(MAX_RW_COUNT - sent - chunk.len());
                let take = piece.len().min(room);
                chunk.extend_from_slice(&piece[..take]);
                piece = &piece[take..];
            }
            if chunk.is_empty() {
                return Ok(sent);
            }
            let flags = match sent > 0 {
                true => flags | libc::MSG_NOSIGNAL,
                false => flags,
            };
            let written = match sent {
                0 => socket.write(chunk, flags),
                _ => socket.write_more(chunk, flags),
            };
            match written {
                Ok(n) => {
                    sent += n;
                    if n < chunk.len() {
                        return Ok(sent);
                    }
                }
                Err(errno) if sent == 0 => return Err(errno),
                Err(_) => return Ok(sent),
            }
        }
    };
    let done = GATHER.try_with(|buffer| match buffer.try_borrow_mut() {
        Ok(mut chunk) => Some(gather(&mut chunk)),
        // In use by this thread already (a signal handler's write): one
        // of its own.
        Err(_) => None,
    });
    match done {
        Ok(Some(result)) => result,
        _ => gather(&mut Vec::with_capacity(CHUNK)),
    }
}
