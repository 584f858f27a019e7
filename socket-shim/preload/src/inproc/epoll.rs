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
//! writable eventfd, for its `EPOLLIN`. The number's own registration
//! never asks for `EPOLLOUT`.
//!
//! # Tags
//!
//! Both parts of a registration carry a tag of the shim's in place of the
//! program's `data`: each arming (`EPOLL_CTL_ADD` or `EPOLL_CTL_MOD`)
//! takes a fresh even tag for the number's part and the next odd one for
//! the writable copy's, and retires the tags of the arming before. The
//! epoll_wait family's result is translated back ([`translate`]):
//!
//! - a tag of the current arming becomes the program's `data`, with the
//!   kernel's flags for the number's part and the program's `EPOLLOUT`
//!   bits for the writable part; both parts of one registration in one
//!   result become one event with both flags, as the kernel reports one
//!   socket;
//! - a retired tag (an event the kernel returned before another thread's
//!   `EPOLL_CTL_MOD`, `EPOLL_CTL_DEL` or `close` got to the record) is
//!   dropped: the program never sees a tag, nor `data` or flags it no
//!   longer asked for. Nothing is lost: `EPOLL_CTL_MOD` makes the kernel
//!   look at both parts again and queue what is still ready. [`wait`]
//!   waits again for the time left when dropping empties a result;
//! - with `EPOLLONESHOT` the two parts act as one registration: the
//!   first event of an arming is delivered and the other part disarmed
//!   (`EPOLL_CTL_MOD` to `EPOLLONESHOT` alone) before the result is
//!   returned; any later event of that arming (the other part's, already
//!   queued or taken by another thread) is dropped. The program's next
//!   `EPOLL_CTL_MOD` re-arms both parts for its new interest.
//!
//! # Lifetime of the record
//!
//! - `close` of a number (or a `dup2` over it) deletes its registrations
//!   from their sets ([`closing`]).
//! - A set the program closed takes its registrations with it, but not
//!   their record nor the writable copies: each `epoll_ctl` of a number
//!   checks its other recorded sets first ([`alive`]: an
//!   `EPOLL_CTL_ADD` of the registered descriptor must fail with
//!   `EEXIST`) and forgets those that are gone, so a number watched by
//!   short-lived sets keeps one record per live set (plus at most the
//!   closed ones since its last `epoll_ctl`), and all of it goes at its
//!   `close`.
//! - The record belongs to the process that made it (its pid). An epoll
//!   set is shared with a forked child: the child's first use of the
//!   record forgets the parent's entries (closing its copies of the
//!   writable eventfds) without deleting anything from the shared sets,
//!   so a child's `close` of an inherited number leaves the parent's
//!   registrations alone. The record's lock is held across `fork`
//!   ([`fork_prepare`], [`fork_release`]).
//!
//! Locking: the record's lock is innermost. Under it only `epoll_ctl`,
//! `fcntl` and `getpid` are called; the [`Socket`](super::Socket) of a
//! number is looked up before it is taken and dropped after it is let go
//! (dropping the last one closes the flow, an engine call), and writable
//! copies to close are closed after it too.
//!
//! `epoll_wait` does not drive the engine: the engine's driver thread
//! does, after its grace period (2 ms) with no thread inside.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use libc::{c_int, epoll_event};

use super::registry;
use crate::ops::{last_errno, Res};
use crate::real;

const OUT: u32 = (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32;
const ONESHOT: u32 = libc::EPOLLONESHOT as u32;
/// Flags of the program's registration that the writable copy's follows.
const MODES: u32 = (libc::EPOLLET | libc::EPOLLONESHOT) as u32;

/// The first tag: high bits unlikely to be a program's pointer or number.
/// Tags handed out so far are `FIRST_TAG..NEXT_TAG`; only `data` in that
/// range is looked at by [`translate`].
const FIRST_TAG: u64 = 0x5e5a_1000_0000_0000;
static NEXT_TAG: AtomicU64 = AtomicU64::new(FIRST_TAG);

/// One registration of a number in an epoll set, as last armed.
struct Registration {
    /// The set.
    epfd: RawFd,
    /// The program's `data`.
    data: u64,
    /// The program's events (its output bits included).
    interest: u32,
    /// The arming's tag: the number's part is registered under it, the
    /// writable copy's under `tag + 1`.
    tag: u64,
    /// The copy of the stream's writable eventfd, registered in the set,
    /// when the program wants output.
    copy: Option<OwnedFd>,
    /// An `EPOLLONESHOT` arming whose event was delivered: both parts are
    /// disarmed until the program's next `EPOLL_CTL_MOD`.
    fired: bool,
}

impl Registration {
    /// A registration just made or modified: armed, not fired.
    fn armed(epfd: RawFd, data: u64, interest: u32, tag: u64, copy: Option<OwnedFd>) -> Self {
        Registration {
            epfd,
            data,
            interest,
            tag,
            copy,
            fired: false,
        }
    }
}

/// What the process registered.
struct Record {
    /// The process whose registrations these are.
    pid: u32,
    /// Each number's registrations, one per set.
    by_number: BTreeMap<RawFd, Vec<Registration>>,
    /// The current armings' tags, and the number each is of.
    tags: HashMap<u64, RawFd>,
}

impl Record {
    fn new(pid: u32) -> Record {
        Record {
            pid,
            by_number: BTreeMap::new(),
            tags: HashMap::new(),
        }
    }
}

static RECORD: Mutex<Option<Record>> = Mutex::new(None);

/// The record, locked, and the writable copies to close once it is let
/// go. Fields drop in order: the lock goes first, then the copies.
struct Locked {
    guard: MutexGuard<'static, Option<Record>>,
    trash: Vec<OwnedFd>,
}

impl Locked {
    /// The record (made now if there was none).
    fn record(&mut self) -> &mut Record {
        self.guard
            .get_or_insert_with(|| Record::new(super::registry::pid() as u32))
    }
}

/// The record, locked; a parent's record is forgotten first if this is a
/// forked child (its copies closed, nothing deleted from the sets the
/// parent shares).
fn lock() -> Locked {
    let mut guard = RECORD.lock().unwrap_or_else(PoisonError::into_inner);
    let mut trash = Vec::new();
    let pid = super::registry::pid() as u32;
    if guard.as_ref().is_some_and(|record| record.pid != pid) {
        if let Some(inherited) = guard.take() {
            trash.extend(
                inherited
                    .by_number
                    .into_values()
                    .flatten()
                    .filter_map(|registration| registration.copy),
            );
        }
    }
    Locked { guard, trash }
}

/// A fresh arming's tag (even; its writable part's is the next).
fn new_tag() -> u64 {
    NEXT_TAG.fetch_add(2, Ordering::AcqRel)
}

/// Whether `data` may be a tag: one handed out so far.
fn tagged(data: u64) -> bool {
    (FIRST_TAG..NEXT_TAG.load(Ordering::Acquire)).contains(&data)
}

/// The kernel's `epoll_ctl`.
fn kernel(epfd: RawFd, op: c_int, fd: RawFd, event: Option<epoll_event>) -> Res<()> {
    let mut event = event;
    let at = event
        .as_mut()
        .map_or(std::ptr::null_mut(), |e| e as *mut epoll_event);
    // SAFETY: `at` is null (accepted for DEL) or a valid event for the
    // call's duration.
    if unsafe { real::epoll_ctl(epfd, op, fd, at) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// The number's part of the program's `interest` armed under `tag`.
fn own(interest: u32, tag: u64) -> epoll_event {
    epoll_event {
        events: interest & !OUT,
        u64: tag,
    }
}

/// The writable copy's part of the program's `interest` armed under
/// `tag`.
fn output(interest: u32, tag: u64) -> epoll_event {
    epoll_event {
        events: libc::EPOLLIN as u32 | (interest & MODES),
        u64: tag + 1,
    }
}

/// A private copy of the stream's writable eventfd `fd`, for a set, out
/// of the program's numbers.
fn duplicate(fd: RawFd) -> Res<OwnedFd> {
    // SAFETY: `fd` is the stream's eventfd, open while the socket is held.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    socket_shim::fd::copy_out_of_the_way(fd)
        .map_err(|error| error.raw_os_error().unwrap_or(libc::EMFILE))
}

/// Whether the set `registration` was made in still holds it: an
/// `EPOLL_CTL_ADD` of its registered descriptor there fails with
/// `EEXIST`. Any other answer means the program closed that set (the
/// number may name another file now, or nothing); an `ADD` that
/// succeeded on a newer set is undone.
fn alive(number: RawFd, registration: &Registration) -> bool {
    let fd = registration
        .copy
        .as_ref()
        .map_or(number, |copy| copy.as_raw_fd());
    let probe = epoll_event { events: 0, u64: 0 };
    match kernel(registration.epfd, libc::EPOLL_CTL_ADD, fd, Some(probe)) {
        Err(errno) => errno == libc::EEXIST,
        Ok(()) => {
            let _ = kernel(registration.epfd, libc::EPOLL_CTL_DEL, fd, None);
            false
        }
    }
}

impl Locked {
    /// Forgets `registration` (its tag retired, its copy closed after the
    /// lock), deleting both parts from its set first if `delete`.
    fn forget(&mut self, number: RawFd, registration: Registration, delete: bool) {
        let record = self.record();
        if record.tags.get(&registration.tag) == Some(&number) {
            record.tags.remove(&registration.tag);
        }
        if delete {
            let _ = kernel(registration.epfd, libc::EPOLL_CTL_DEL, number, None);
            if let Some(copy) = &registration.copy {
                let _ = kernel(
                    registration.epfd,
                    libc::EPOLL_CTL_DEL,
                    copy.as_raw_fd(),
                    None,
                );
            }
        }
        self.trash.extend(registration.copy);
    }

    /// Takes out `number`'s registration in `epfd`, if recorded.
    fn take(&mut self, number: RawFd, epfd: RawFd) -> Option<Registration> {
        let record = self.record();
        let list = record.by_number.get_mut(&number)?;
        let at = list.iter().position(|r| r.epfd == epfd)?;
        let registration = list.swap_remove(at);
        if list.is_empty() {
            record.by_number.remove(&number);
        }
        Some(registration)
    }

    /// Records `registration` of `number` (armed under its tag).
    fn put(&mut self, number: RawFd, registration: Registration) {
        let record = self.record();
        record.tags.insert(registration.tag, number);
        record
            .by_number
            .entry(number)
            .or_default()
            .push(registration);
    }

    /// Forgets `number`'s registrations in sets other than `epfd` that
    /// the program closed (see [`alive`]).
    fn prune(&mut self, number: RawFd, epfd: RawFd) {
        let Some(list) = self.record().by_number.get_mut(&number) else {
            return;
        };
        let mut gone = Vec::new();
        let mut at = 0;
        while at < list.len() {
            if list[at].epfd != epfd && !alive(number, &list[at]) {
                gone.push(list.swap_remove(at));
            } else {
                at += 1;
            }
        }
        for registration in gone {
            self.forget(number, registration, false);
        }
    }

    /// A fresh copy of `fd` (a stream's writable eventfd) added to `epfd`
    /// as the writable part of the arming `tag` for `interest`. A copy the
    /// kernel refused is closed with the trash, once the lock is let go.
    fn add_copy(&mut self, epfd: RawFd, fd: RawFd, interest: u32, tag: u64) -> Res<OwnedFd> {
        let copy = duplicate(fd)?;
        let event = Some(output(interest, tag));
        match kernel(epfd, libc::EPOLL_CTL_ADD, copy.as_raw_fd(), event) {
            Ok(()) => Ok(copy),
            Err(errno) => {
                self.trash.push(copy);
                Err(errno)
            }
        }
    }

    /// `EPOLL_CTL_ADD`: both parts, or neither.
    fn add(
        &mut self,
        epfd: RawFd,
        number: RawFd,
        event: epoll_event,
        out: Option<RawFd>,
    ) -> Res<()> {
        let interest = event.events;
        let tag = new_tag();
        kernel(epfd, libc::EPOLL_CTL_ADD, number, Some(own(interest, tag)))?;
        // The kernel took it: a recorded registration in `epfd` was made
        // in a set since closed (the number's registration went with it).
        if let Some(stale) = self.take(number, epfd) {
            self.forget(number, stale, false);
        }
        let copy = match out.filter(|_| interest & OUT != 0) {
            Some(fd) => match self.add_copy(epfd, fd, interest, tag) {
                Ok(copy) => Some(copy),
                Err(errno) => {
                    let _ = kernel(epfd, libc::EPOLL_CTL_DEL, number, None);
                    return Err(errno);
                }
            },
            None => None,
        };
        self.put(
            number,
            Registration::armed(epfd, event.u64, interest, tag, copy),
        );
        Ok(())
    }

    /// `EPOLL_CTL_MOD`: both parts re-armed for the new interest under a
    /// fresh tag, or neither changed. The writable part goes first, so
    /// that a failure of the number's (not registered, say) can be
    /// undone.
    fn modify(
        &mut self,
        epfd: RawFd,
        number: RawFd,
        event: epoll_event,
        out: Option<RawFd>,
    ) -> Res<()> {
        let interest = event.events;
        let tag = new_tag();
        let mut old = self.take(number, epfd);
        let kept = old.as_mut().and_then(|old| old.copy.take());
        let wants = out.filter(|_| interest & OUT != 0);
        let mut fresh = None;
        if let Some(fd) = wants {
            let step = match &kept {
                Some(copy) => kernel(
                    epfd,
                    libc::EPOLL_CTL_MOD,
                    copy.as_raw_fd(),
                    Some(output(interest, tag)),
                ),
                None => self
                    .add_copy(epfd, fd, interest, tag)
                    .map(|copy| fresh = Some(copy)),
            };
            if let Err(errno) = step {
                self.restore(number, old, kept);
                return Err(errno);
            }
        }
        if let Err(errno) = kernel(epfd, libc::EPOLL_CTL_MOD, number, Some(own(interest, tag))) {
            // Undo the writable part: a fresh copy goes, a kept one gets
            // its arming back (disarmed if it had fired).
            if let Some(copy) = fresh.take() {
                let _ = kernel(epfd, libc::EPOLL_CTL_DEL, copy.as_raw_fd(), None);
                self.trash.push(copy);
            }
            if let (Some(old), Some(copy), Some(_)) = (&old, &kept, wants) {
                let back = match old.fired {
                    true => epoll_event {
                        events: ONESHOT,
                        u64: old.tag + 1,
                    },
                    false => output(old.interest, old.tag),
                };
                let _ = kernel(epfd, libc::EPOLL_CTL_MOD, copy.as_raw_fd(), Some(back));
            }
            self.restore(number, old, kept);
            return Err(errno);
        }
        let copy = match wants {
            Some(_) => fresh.or(kept),
            None => {
                // No output wanted any more: the copy goes.
                if let Some(copy) = kept {
                    let _ = kernel(epfd, libc::EPOLL_CTL_DEL, copy.as_raw_fd(), None);
                    self.trash.push(copy);
                }
                None
            }
        };
        if let Some(old) = old {
            self.forget(number, old, false);
        }
        self.put(
            number,
            Registration::armed(epfd, event.u64, interest, tag, copy),
        );
        Ok(())
    }

    /// Puts back `old` (taken out by a failed [`Locked::modify`]) with its
    /// `copy`.
    fn restore(&mut self, number: RawFd, old: Option<Registration>, copy: Option<OwnedFd>) {
        match old {
            Some(mut old) => {
                old.copy = copy;
                self.put(number, old);
            }
            None => self.trash.extend(copy),
        }
    }

    /// `EPOLL_CTL_DEL`: both parts. A registration the kernel does not
    /// have (`ENOENT`, or a set that is gone) is forgotten as well.
    fn delete(&mut self, epfd: RawFd, number: RawFd) -> Res<()> {
        let result = kernel(epfd, libc::EPOLL_CTL_DEL, number, None);
        if let Some(registration) = self.take(number, epfd) {
            if let Some(copy) = &registration.copy {
                let _ = kernel(epfd, libc::EPOLL_CTL_DEL, copy.as_raw_fd(), None);
            }
            match result {
                Ok(()) | Err(libc::ENOENT) | Err(libc::EBADF) | Err(libc::EINVAL) => {
                    self.forget(number, registration, false)
                }
                // A failure that leaves the kernel's registration (none
                // known): keep the record as it was.
                Err(_) => self.put(number, registration),
            }
        }
        result
    }
}

/// `epoll_ctl` of the in-process number `fd`.
pub(crate) fn ctl(epfd: RawFd, op: c_int, fd: RawFd, event: Option<epoll_event>) -> Res<c_int> {
    // Looked up before the lock and dropped after it: dropping the last
    // `Socket` closes its flow (a concurrent `close` may have left this
    // one the last).
    let socket = registry::get(fd);
    // The writable eventfd is made only for an interest in output.
    let wants_out = matches!(op, libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD)
        && event.is_some_and(|event| event.events & OUT != 0);
    let out = match socket.as_ref().filter(|_| wants_out) {
        Some(socket) => socket.writable_fd()?,
        None => None,
    };
    let result = {
        let mut locked = lock();
        locked.prune(fd, epfd);
        match (op, event) {
            (libc::EPOLL_CTL_DEL, _) => locked.delete(epfd, fd),
            (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, _) if socket.is_none() => Err(libc::EBADF),
            (libc::EPOLL_CTL_ADD, Some(event)) => locked.add(epfd, fd, event, out),
            (libc::EPOLL_CTL_MOD, Some(event)) => locked.modify(epfd, fd, event, out),
            (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, None) => Err(libc::EFAULT),
            _ => Err(libc::EINVAL),
        }
    };
    drop(socket);
    result.map(|()| 0)
}

/// The number `fd` is closing (or replaced by a `dup2`): its
/// registrations go from their sets (in a forked child, whose sets are
/// its parent's too, they are only forgotten: see [`lock`]).
pub(crate) fn closing(fd: RawFd) {
    let mut locked = lock();
    let Some(record) = locked.guard.as_mut() else {
        return;
    };
    let Some(list) = record.by_number.remove(&fd) else {
        return;
    };
    for registration in list {
        locked.forget(fd, registration, true);
    }
}

/// The number `fd` is being handed over to sald (`handover`): its
/// registrations go from their sets, as at [`closing`], and come back as
/// the program made them (set, events, `data`), to be made again on the
/// file that takes the number. An `EPOLLONESHOT` one that fired comes
/// back disarmed (`EPOLLONESHOT` alone), as the kernel keeps it.
pub(crate) fn handed_over(fd: RawFd) -> Vec<(RawFd, epoll_event)> {
    let mut locked = lock();
    let Some(record) = locked.guard.as_mut() else {
        return Vec::new();
    };
    let Some(list) = record.by_number.remove(&fd) else {
        return Vec::new();
    };
    let mut program = Vec::with_capacity(list.len());
    for registration in list {
        let events = match registration.fired {
            true => libc::EPOLLONESHOT as u32,
            false => registration.interest,
        };
        let event = epoll_event {
            events,
            u64: registration.data,
        };
        program.push((registration.epfd, event));
        locked.forget(fd, registration, true);
    }
    program
}

/// Turns tagged events among the `n` first of `events` back into the
/// program's (see the module's documentation: retired tags dropped, the
/// two parts of one registration merged, `EPOLLONESHOT` armings
/// delivered once); returns how many events remain, in order.
pub(crate) fn translate(events: &mut [epoll_event], n: usize) -> usize {
    let n = n.min(events.len());
    if !events[..n].iter().any(|e| tagged(e.u64)) {
        return n;
    }
    let mut locked = lock();
    let record = locked.record();
    // Where each arming's event is in the result, for its other part's.
    let mut delivered: HashMap<u64, usize> = HashMap::new();
    // The numbers of the events delivered, with the program's interest,
    // for their ends (looked at once the record is let go).
    let mut numbers: Vec<(usize, RawFd, u32)> = Vec::new();
    let mut kept = 0;
    for i in 0..n {
        let event = events[i];
        let data = event.u64;
        if !tagged(data) {
            events[kept] = event;
            kept += 1;
            continue;
        }
        let (tag, writable) = (data & !1, data & 1 == 1);
        let Some(&number) = record.tags.get(&tag) else {
            continue;
        };
        let Some(registration) = record
            .by_number
            .get_mut(&number)
            .and_then(|list| list.iter_mut().find(|r| r.tag == tag))
        else {
            continue;
        };
        let bits = match writable {
            true => registration.interest & OUT,
            false => event.events & !OUT,
        };
        if bits == 0 {
            continue;
        }
        if let Some(&earlier) = delivered.get(&tag) {
            events[earlier].events |= bits;
            continue;
        }
        if registration.interest & ONESHOT != 0 {
            if registration.fired {
                continue;
            }
            registration.fired = true;
            // Disarm the other part before the program hears of this one.
            let epfd = registration.epfd;
            match (writable, &registration.copy) {
                (true, _) => {
                    let off = epoll_event {
                        events: ONESHOT,
                        u64: tag,
                    };
                    let _ = kernel(epfd, libc::EPOLL_CTL_MOD, number, Some(off));
                }
                (false, Some(copy)) => {
                    let off = epoll_event {
                        events: ONESHOT,
                        u64: tag + 1,
                    };
                    let _ = kernel(epfd, libc::EPOLL_CTL_MOD, copy.as_raw_fd(), Some(off));
                }
                (false, None) => {}
            }
        }
        events[kept] = epoll_event {
            events: bits,
            u64: registration.data,
        };
        delivered.insert(tag, kept);
        numbers.push((kept, number, registration.interest));
        kept += 1;
    }
    drop(locked);
    for (at, number, interest) in numbers {
        if let Some(socket) = registry::get(number) {
            events[at].events |= socket.ends_events(interest);
        }
    }
    kept
}

/// An epoll_wait family call whose result is translated ([`translate`]),
/// made again for the time left when translating dropped every event of
/// a result (a timeout of zero returns 0 then). `call` makes the kernel's
/// call with the time left (`None`: no limit) and returns its result,
/// `events` its buffer. Returns what the program gets.
///
/// # Safety
/// Every result `n > 0` of `call` has `n` events written at `events`.
pub(crate) unsafe fn wait(
    events: *mut epoll_event,
    timeout: Option<Duration>,
    mut call: impl FnMut(Option<Duration>) -> c_int,
) -> c_int {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut left = timeout;
    loop {
        let n = call(left);
        let Ok(count) = usize::try_from(n) else {
            return n;
        };
        if count == 0 {
            return 0;
        }
        // SAFETY: the kernel just wrote `count` events there.
        let set = unsafe { std::slice::from_raw_parts_mut(events, count) };
        // A panic (none is expected) leaves the result as the kernel's.
        let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| translate(set, count)))
            .unwrap_or(count);
        if kept > 0 {
            return kept as c_int;
        }
        left = match (timeout, deadline) {
            (Some(t), _) if t.is_zero() => return 0,
            (Some(_), Some(deadline)) => {
                let now = Instant::now();
                if now >= deadline {
                    return 0;
                }
                Some(deadline - now)
            }
            // No limit (or one too far to tell from none).
            _ => None,
        };
    }
}

/// A millisecond timeout for `epoll_wait` from [`wait`]'s time left:
/// rounded up, so that a wait never ends before its deadline.
pub(crate) fn millis(left: Option<Duration>) -> c_int {
    match left {
        None => -1,
        Some(left) => {
            let ms = left.as_nanos().div_ceil(1_000_000);
            c_int::try_from(ms).unwrap_or(c_int::MAX)
        }
    }
}

thread_local! {
    static FORK_GUARD: std::cell::RefCell<Option<MutexGuard<'static, Option<Record>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Holds the record's lock across `fork` (see `engine::fork_prepare`), so
/// that a child never inherits it held by a thread it does not have.
pub(crate) fn fork_prepare() {
    let guard = RECORD.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = FORK_GUARD.try_with(|held| *held.borrow_mut() = Some(guard));
}

/// Lets the lock go after `fork`, in the parent and in the child (whose
/// first use of the record forgets the parent's, see [`lock`]).
pub(crate) fn fork_release() {
    let _ = FORK_GUARD.try_with(|held| held.borrow_mut().take());
}
