//! The program's vector of messages (`struct mmsghdr`), for `sendmmsg`
//! and `recvmmsg` on our sockets: each message goes through the shim's own
//! `sendmsg` or `recvmsg`, in turn, as Linux loops over a batch
//! (`net/socket.c`): the count of messages done is returned and each one's
//! `msg_len` set; an error is returned only when the first message fails,
//! and a later failure ends the batch.

use std::ffi::{c_int, c_uint};
use std::ptr::addr_of_mut;
use std::time::{Duration, Instant};

use libc::{mmsghdr, msghdr, timespec};

use crate::msg::UIO_MAXIOV;
use crate::ops::{Errno, Res};

/// What one message of a batch came to.
pub(crate) struct Step {
    /// Bytes sent or received (the message's `msg_len`).
    pub len: usize,
    /// Whether the batch goes on after it.
    pub more: bool,
}

/// How a batch ended.
pub(crate) struct Ran {
    /// Messages done.
    pub done: c_int,
    /// The error of the message that ended the batch after the first one
    /// was done, if one did.
    pub stopped_by: Option<Errno>,
}

/// The program's messages.
pub(crate) struct Batch {
    at: *mut mmsghdr,
    len: usize,
}

impl Batch {
    /// `vlen` messages at `at`; as Linux, a batch takes [`UIO_MAXIOV`] of
    /// them at most.
    ///
    /// # Safety
    /// `at` is null or valid for reads and writes of `vlen` messages (as
    /// `sendmmsg(2)` requires), for as long as the result is used.
    pub(crate) unsafe fn new(at: *mut mmsghdr, vlen: c_uint) -> Batch {
        Batch {
            at,
            len: (vlen as usize).min(UIO_MAXIOV),
        }
    }

    /// Runs `one` on each message's header in turn, until one fails or
    /// `one` ends the batch; sets the `msg_len` of each message done.
    pub(crate) fn run(&self, mut one: impl FnMut(*mut msghdr) -> Res<Step>) -> Res<Ran> {
        if self.len > 0 && self.at.is_null() {
            return Err(libc::EFAULT);
        }
        let mut done = 0;
        let mut stopped_by = None;
        while done < self.len {
            // SAFETY: within the `len` messages `new`'s caller vouches for.
            let entry = unsafe { self.at.add(done) };
            // SAFETY: as above; only a raw pointer is made.
            let step = match one(unsafe { addr_of_mut!((*entry).msg_hdr) }) {
                Ok(step) => step,
                Err(errno) if done == 0 => return Err(errno),
                Err(errno) => {
                    stopped_by = Some(errno);
                    break;
                }
            };
            // SAFETY: as above, writable.
            unsafe { (*entry).msg_len = step.len as c_uint };
            done += 1;
            if !step.more {
                break;
            }
        }
        Ok(Ran {
            done: done as c_int,
            stopped_by,
        })
    }
}

/// `recvmmsg`'s timeout, as Linux takes it: looked at after each message
/// received (it does not cut a wait for one short), and the time left
/// written back into it.
pub(crate) struct Deadline {
    at: *mut timespec,
    start: Instant,
    span: Duration,
}

impl Deadline {
    /// The program's timeout at `at` (`None` if null); `EINVAL` if it is
    /// not a valid time.
    ///
    /// # Safety
    /// `at` is null or valid for reads and writes of one `timespec`, for
    /// as long as the result is used.
    pub(crate) unsafe fn new(at: *mut timespec) -> Res<Option<Deadline>> {
        // SAFETY: null, or valid as the caller guarantees.
        let Some(given) = (unsafe { at.as_ref() }) else {
            return Ok(None);
        };
        let secs = u64::try_from(given.tv_sec).map_err(|_| libc::EINVAL)?;
        let nanos = u32::try_from(given.tv_nsec)
            .ok()
            .filter(|&nanos| nanos < 1_000_000_000)
            .ok_or(libc::EINVAL)?;
        Ok(Some(Deadline {
            at,
            start: Instant::now(),
            span: Duration::new(secs, nanos),
        }))
    }

    /// Writes the time left into the program's timeout; whether any is.
    pub(crate) fn time_left(&self) -> bool {
        let left = self.span.saturating_sub(self.start.elapsed());
        // SAFETY: valid for writes, as `new`'s caller guarantees; a
        // duration that came from a `timespec` fits in one.
        unsafe {
            (*self.at).tv_sec = left.as_secs() as libc::time_t;
            (*self.at).tv_nsec = left.subsec_nanos() as libc::c_long;
        }
        !left.is_zero()
    }
}
