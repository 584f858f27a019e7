//! `poll` and `ppoll` over a set that holds in-process numbers. `POLLIN`
//! watches the number itself (the object's readable eventfd); `POLLOUT`
//! watches the stream's writable eventfd in its place, in a copy of the
//! set, and is mapped back. While it waits the calling thread counts as
//! inside the engine and watches its UDP socket and timerfd too, driving
//! the host when they are readable, then looks again, until a descriptor
//! of the program's is ready or the timeout passes. A signal ends the
//! wait with `EINTR`, as the kernel's `poll` (never restarted).
//!
//! A stream's `POLLHUP`, `POLLERR` and `POLLRDHUP` are read from its
//! [`Ends`](sal_inproc::Ends) at every look, as Linux's `tcp_poll` reports
//! them: a reset is a hang-up with an error (until a call took it); the
//! peer's end of stream, or this end's `SHUT_RD`, closes reading; both
//! that and this end's `SHUT_WR` are a hang-up. Each of these also makes
//! the stream readable, and a hang-up or an error writable, so a `POLLIN`
//! or `POLLOUT` watch wakes for them; an entry that asks for neither (a
//! hang-up watch, `events` 0 or `POLLRDHUP` alone) watches an eventfd of
//! the stream's that mirrors just that ([`Socket::ends_fd`]). A stream
//! inherited across `fork` is reset: everything; an inherited listener:
//! nothing, ever.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libc::{c_int, c_short, pollfd};
use sal_inproc::EndsSignal;

use super::calls::HANDED_OVER;
use super::engine;
use super::{registry, Socket};
use crate::ops::{last_errno, Res};
use crate::real;

/// What an entry of the copied set stands for.
#[derive(Clone, Copy)]
enum Role {
    /// The program's own descriptor, as it gave it.
    Direct(usize),
    /// The readable eventfd of the program's entry: its `POLLIN`.
    Readable(usize),
    /// The writable eventfd of the program's entry: its `POLLOUT`.
    Writable(usize),
    /// An eventfd of the program's entry that mirrors one of its ends:
    /// its events are read from the stream.
    Ends,
    /// The engine's UDP socket or timerfd: the host has work.
    Engine,
}

const IN: c_short = libc::POLLIN | libc::POLLRDNORM;
const OUT: c_short = libc::POLLOUT | libc::POLLWRNORM;
const RDHUP: c_short = libc::POLLRDHUP;

/// Whether any of `fds` is an in-process number (lock-free).
pub(crate) fn concerns(fds: &[pollfd]) -> bool {
    fds.iter().any(|p| registry::is(p.fd))
}

/// `ppoll` of `fds` until `deadline` (`None`: no limit) with `sigmask`
/// (null: the thread's own), for a set that holds in-process numbers:
/// how many entries have events, as the kernel's.
pub(crate) fn poll(
    fds: &mut [pollfd],
    deadline: Option<Instant>,
    sigmask: *const libc::sigset_t,
) -> Res<c_int> {
    loop {
        match poll_once(fds, deadline, sigmask) {
            // A stream of the set went to sald meanwhile (`handover`):
            // its number is a plain socket once that is over. Again,
            // from the start.
            Err(HANDED_OVER) => {
                super::handover::wait();
                if !concerns(fds) {
                    return plain(fds, deadline, sigmask);
                }
            }
            result => return result,
        }
    }
}

/// `left` as `ppoll`'s timeout.
fn timespec(left: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: left.subsec_nanos() as libc::c_long,
    }
}

/// libc's `ppoll` of `fds` until `deadline`, for a set with no
/// in-process number left.
fn plain(
    fds: &mut [pollfd],
    deadline: Option<Instant>,
    sigmask: *const libc::sigset_t,
) -> Res<c_int> {
    let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
    let timeout = left.map(timespec);
    let at = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const _);
    // SAFETY: `fds` is a valid array of its length, `at` null or a local
    // that outlives the call, `sigmask` the caller's (null or valid).
    let n = unsafe { real::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, at, sigmask) };
    match n < 0 {
        true => Err(last_errno()),
        false => Ok(n),
    }
}

/// One [`poll`], or [`HANDED_OVER`] once a stream of the set is on its
/// way to sald.
fn poll_once(
    fds: &mut [pollfd],
    deadline: Option<Instant>,
    sigmask: *const libc::sigset_t,
) -> Res<c_int> {
    registry::reap();
    let mut set = Vec::with_capacity(fds.len() + 4);
    let mut roles = Vec::with_capacity(fds.len() + 4);
    // Held for the call, with their entries: the eventfds in the set stay
    // theirs meanwhile, and a stream's ends are read at every look.
    let mut held: Vec<(usize, Arc<Socket>)> = Vec::new();
    // Events known without looking (an inherited socket: reset).
    let mut known: Vec<c_short> = vec![0; fds.len()];
    let entry = |fd, events| pollfd {
        fd,
        events,
        revents: 0,
    };
    for (i, p) in fds.iter().enumerate() {
        let Some(socket) = registry::checked(p.fd) else {
            set.push(entry(p.fd, p.events));
            roles.push(Role::Direct(i));
            continue;
        };
        if socket.in_transit() {
            return Err(HANDED_OVER);
        }
        if socket.inherited() || socket.leaving() {
            // A stream: reset, every call fails at once (a forked child's
            // copy, or a number that did not take sald's file when its
            // socket left the engine). A listener: it stopped listening
            // here, and is never ready (Linux would say POLLHUP of a
            // closed listener: an accept loop would spin).
            if !socket.listens() {
                known[i] = (p.events & (IN | OUT)) | libc::POLLERR | libc::POLLHUP;
            }
            continue;
        }
        if p.events & IN != 0 {
            set.push(entry(p.fd, libc::POLLIN));
            roles.push(Role::Readable(i));
        } else if p.events & RDHUP != 0 || p.events & OUT == 0 {
            let which = match p.events & RDHUP {
                0 => EndsSignal::HungUp,
                _ => EndsSignal::ReadClosed,
            };
            if let Some(fd) = socket.ends_fd(which) {
                set.push(entry(fd, libc::POLLIN));
                roles.push(Role::Ends);
            }
        }
        if p.events & OUT != 0 {
            if let Some(writable) = socket.writable_fd()? {
                set.push(entry(writable, libc::POLLIN));
                roles.push(Role::Writable(i));
            }
        }
        held.push((i, socket));
    }
    let runtime = (!held.is_empty()).then(engine::existing).flatten();
    let _inside = runtime.as_ref().map(|runtime| runtime.enter());
    if let Some(runtime) = &runtime {
        for fd in runtime.wait_fds() {
            set.push(entry(fd.as_raw_fd(), libc::POLLIN));
            roles.push(Role::Engine);
        }
    }
    // A last look without waiting once the deadline passed right after
    // the host was driven.
    let mut last_look = false;
    loop {
        let now = Instant::now();
        let left = match known.iter().any(|&r| r != 0) {
            true => Some(Duration::ZERO),
            false => deadline.map(|at| at.saturating_duration_since(now)),
        };
        let timeout = left.map(timespec);
        let at = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: `set` is a valid array of its length, `at` null or a
        // timespec that outlives the call, `sigmask` the caller's.
        let n = unsafe { real::ppoll(set.as_mut_ptr(), set.len() as libc::nfds_t, at, sigmask) };
        if n < 0 {
            return Err(last_errno());
        }
        let mut revents = known.clone();
        let mut engine_ready = false;
        for (p, role) in set.iter_mut().zip(&roles) {
            let got = std::mem::take(&mut p.revents);
            if got == 0 {
                continue;
            }
            match *role {
                Role::Direct(i) => revents[i] |= got,
                Role::Readable(i) => revents[i] |= fds[i].events & IN,
                Role::Writable(i) => revents[i] |= fds[i].events & OUT,
                Role::Ends => {}
                Role::Engine => engine_ready = true,
            }
        }
        if held.iter().any(|(_, socket)| socket.in_transit()) {
            return Err(HANDED_OVER);
        }
        // (A listener has none.)
        for (i, socket) in &held {
            // The poll and epoll bits have the same values.
            revents[*i] |= socket.ends_events(fds[*i].events as u16 as u32) as c_short;
        }
        let ready = revents.iter().filter(|&&r| r != 0).count();
        if engine_ready {
            if let Some(runtime) = &runtime {
                // A failure here is the socket's, and the next call on
                // the stream that needs the host reports it.
                let _ = runtime.drive();
            }
        }
        let expired = deadline.is_some_and(|at| at <= Instant::now());
        if ready > 0 || (expired && (!engine_ready || last_look)) {
            for (p, r) in fds.iter_mut().zip(revents) {
                p.revents = r;
            }
            return Ok(ready as c_int);
        }
        last_look = expired;
    }
}
