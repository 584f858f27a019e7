//! epoll registrations of in-process numbers.
//!
//! A number is a copy of the engine's readable eventfd, whose open file
//! the engine keeps (and reuses for its next stream) after the socket
//! closes: epoll drops a registration only when the last copy of its file
//! closes, so one left on a closed number would report another stream's
//! readiness. Every registration of an in-process number is therefore
//! recorded here and removed (`EPOLL_CTL_DEL`) when the number closes.
//!
//! `EPOLLOUT` interest cannot be had from the number (an eventfd is
//! always writable): it is registered on a private copy of the stream's
//! writable eventfd, for its `EPOLLIN`, under a tag of the shim's in
//! place of the program's `data`; `epoll_wait` turns a tagged event back
//! into the program's `data` with `EPOLLOUT`, merged into the number's
//! own event when both came. The number's own registration never asks
//! for `EPOLLOUT`.
//!
//! `epoll_wait` does not drive the engine: the engine's driver thread
//! does, after its grace period (2 ms) with no thread inside.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use libc::{c_int, epoll_event};
use socket_shim::fd::LOWEST_OWN;

use super::registry;
use crate::ops::{last_errno, Res};
use crate::real;

const OUT: u32 = (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32;
/// Flags of the program's registration that the writable copy's follows.
const MODES: u32 = (libc::EPOLLET | libc::EPOLLONESHOT) as u32;

/// The writable side of one registration.
struct Writable {
    /// The copy of the stream's writable eventfd, registered in the set.
    copy: OwnedFd,
    /// Its `data` in the set.
    tag: u64,
}

/// One registration of a number in an epoll set.
struct Registration {
    epfd: RawFd,
    writable: Option<Writable>,
}

/// What a tag stands for: the program's `data` and the bits of its
/// interest in output.
#[derive(Clone, Copy)]
struct Tagged {
    data: u64,
    out: u32,
}

#[derive(Default)]
struct Record {
    by_number: BTreeMap<RawFd, Vec<Registration>>,
    tags: HashMap<u64, Tagged>,
}

static RECORD: Mutex<Option<Record>> = Mutex::new(None);
/// How many tags exist: `epoll_wait` looks at its events only when some do.
static TAGS: AtomicUsize = AtomicUsize::new(0);
/// The next tag: high bits unlikely to be a program's pointer or number.
static NEXT_TAG: AtomicU64 = AtomicU64::new(0x5e5a_1000_0000_0000);

fn record() -> MutexGuard<'static, Option<Record>> {
    RECORD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes `registration` from its set and forgets its tag.
fn unregister(number: RawFd, registration: Registration, record: &mut Record, own: bool) {
    if own {
        // SAFETY: no pointers (a null event is accepted for DEL).
        unsafe {
            real::epoll_ctl(
                registration.epfd,
                libc::EPOLL_CTL_DEL,
                number,
                std::ptr::null_mut(),
            )
        };
    }
    if let Some(writable) = registration.writable {
        // SAFETY: as above; the copy is ours.
        unsafe {
            real::epoll_ctl(
                registration.epfd,
                libc::EPOLL_CTL_DEL,
                writable.copy.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
        if record.tags.remove(&writable.tag).is_some() {
            TAGS.fetch_sub(1, Ordering::Relaxed);
        }
        // Its `close` is interposed, but the copy is no in-process number:
        // it takes no lock of this module's.
        drop(writable.copy);
    }
}

/// Registers the writable side of `number` in `epfd` for `event`'s
/// output interest.
fn writable(
    number: RawFd,
    epfd: RawFd,
    event: &epoll_event,
    record: &mut Record,
) -> Res<Option<Writable>> {
    let interest = event.events;
    if interest & OUT == 0 {
        return Ok(None);
    }
    let socket = registry::get(number).ok_or(libc::EBADF)?;
    let Some(fd) = socket.writable_fd() else {
        // A listener: never writable.
        return Ok(None);
    };
    // SAFETY: no pointers; a copy of the stream's eventfd for the set.
    let copy = unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, LOWEST_OWN as libc::c_ulong) };
    if copy < 0 {
        return Err(last_errno());
    }
    // SAFETY: the kernel just made `copy`, ours alone.
    let copy = unsafe { OwnedFd::from_raw_fd(copy) };
    let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
    let mut tagged = epoll_event {
        events: libc::EPOLLIN as u32 | (interest & MODES),
        u64: tag,
    };
    // SAFETY: `tagged` is a valid event for the call.
    if unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, copy.as_raw_fd(), &mut tagged) } < 0 {
        return Err(last_errno());
    }
    record.tags.insert(
        tag,
        Tagged {
            data: event.u64,
            out: interest & OUT,
        },
    );
    TAGS.fetch_add(1, Ordering::Relaxed);
    Ok(Some(Writable { copy, tag }))
}

/// `epoll_ctl` of the in-process number `fd`.
pub(crate) fn ctl(epfd: RawFd, op: c_int, fd: RawFd, event: Option<epoll_event>) -> Res<c_int> {
    let mut own = event.map(|mut e| {
        e.events &= !OUT;
        e
    });
    let at = own
        .as_mut()
        .map_or(std::ptr::null_mut(), |e| e as *mut epoll_event);
    // SAFETY: `at` is null or a valid event for the call.
    if unsafe { real::epoll_ctl(epfd, op, fd, at) } < 0 {
        return Err(last_errno());
    }
    let mut guard = record();
    let record = guard.get_or_insert_with(Record::default);
    let mut gone = Vec::new();
    if matches!(op, libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL) {
        if let Some(list) = record.by_number.get_mut(&fd) {
            if let Some(at) = list.iter().position(|r| r.epfd == epfd) {
                gone.push(list.swap_remove(at));
            }
        }
    }
    for registration in gone {
        unregister(fd, registration, record, false);
    }
    if matches!(op, libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD) {
        let writable = match &event {
            Some(event) => writable(fd, epfd, event, record).unwrap_or(None),
            None => None,
        };
        let list = record.by_number.entry(fd).or_default();
        list.push(Registration { epfd, writable });
    }
    Ok(0)
}

/// The number `fd` is closing (or replaced by a `dup2`): its
/// registrations go from their sets.
pub(crate) fn closing(fd: RawFd) {
    let mut guard = record();
    let Some(record) = guard.as_mut() else {
        return;
    };
    let Some(list) = record.by_number.remove(&fd) else {
        return;
    };
    for registration in list {
        unregister(fd, registration, record, true);
    }
}

/// Turns tagged events among the `n` first of `events` back into the
/// program's (`EPOLLOUT` with its `data`, merged into the same `data`'s
/// event if there is one); returns how many events remain.
pub(crate) fn translate(events: &mut [epoll_event], n: usize) -> usize {
    if TAGS.load(Ordering::Relaxed) == 0 || n == 0 {
        return n;
    }
    let guard = record();
    let Some(record) = guard.as_ref() else {
        return n;
    };
    let mut kept = 0;
    for i in 0..n.min(events.len()) {
        let event = events[i];
        let (data, bits) = match record.tags.get(&{ event.u64 }) {
            Some(tagged) => (tagged.data, tagged.out),
            None => {
                events[kept] = event;
                kept += 1;
                continue;
            }
        };
        match events[..kept].iter_mut().find(|e| e.u64 == data) {
            Some(earlier) => earlier.events |= bits,
            None => {
                events[kept] = epoll_event {
                    events: bits,
                    u64: data,
                };
                kept += 1;
            }
        }
    }
    kept
}
