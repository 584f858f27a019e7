//! The program's iovecs (`readv`, `writev`, `recvmsg`, `sendmsg`) as one
//! buffer for an in-process stream: gathered before a write, scattered
//! after a read.

use libc::iovec;

use crate::ops::Res;
use crate::MAX_RW_COUNT;

/// The most iovecs one call takes (Linux's `UIO_MAXIOV`).
const UIO_MAXIOV: usize = 1024;

/// The program's `count` iovecs at `iov`, checked as the kernel checks
/// them (`EINVAL` for too many or a negative count, `EFAULT` for a null
/// list or a null base of a non-empty one).
///
/// # Safety
/// `iov` is null or valid for reads of `count` iovecs, each valid for its
/// length, for `'a`.
unsafe fn list<'a>(iov: *const iovec, count: usize) -> Res<&'a [iovec]> {
    if count > UIO_MAXIOV {
        return Err(libc::EINVAL);
    }
    if count == 0 {
        return Ok(&[]);
    }
    if iov.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: as the caller guarantees.
    let list = unsafe { std::slice::from_raw_parts(iov, count) };
    if list.iter().any(|v| v.iov_base.is_null() && v.iov_len > 0) {
        return Err(libc::EFAULT);
    }
    Ok(list)
}

/// The bytes the iovecs hold, gathered (at most [`MAX_RW_COUNT`]).
///
/// # Safety
/// As [`list`].
pub(crate) unsafe fn gather(iov: *const iovec, count: usize) -> Res<Vec<u8>> {
    // SAFETY: as the caller guarantees.
    let list = unsafe { list(iov, count)? };
    let mut out = Vec::new();
    for v in list {
        let take = v.iov_len.min(MAX_RW_COUNT - out.len());
        if take == 0 {
            continue;
        }
        // SAFETY: a non-null base valid for `iov_len >= take` bytes.
        out.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), take) });
    }
    Ok(out)
}

/// How many bytes the iovecs have room for (at most [`MAX_RW_COUNT`]).
///
/// # Safety
/// As [`list`].
pub(crate) unsafe fn room(iov: *const iovec, count: usize) -> Res<usize> {
    // SAFETY: as the caller guarantees.
    let list = unsafe { list(iov, count)? };
    Ok(list
        .iter()
        .fold(0usize, |sum, v| sum.saturating_add(v.iov_len))
        .min(MAX_RW_COUNT))
}

/// Copies `data` into the iovecs, in order.
///
/// # Safety
/// As [`list`], the iovecs valid for writes.
pub(crate) unsafe fn scatter(iov: *const iovec, count: usize, mut data: &[u8]) -> Res<()> {
    // SAFETY: as the caller guarantees.
    let list = unsafe { list(iov, count)? };
    for v in list {
        if data.is_empty() {
            break;
        }
        let n = v.iov_len.min(data.len());
        if n == 0 {
            continue;
        }
        // SAFETY: a non-null base valid for writes of `iov_len >= n` bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), v.iov_base.cast::<u8>(), n) };
        data = &data[n..];
    }
    Ok(())
}
