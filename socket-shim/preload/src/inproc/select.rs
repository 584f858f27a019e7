//! `select` and `pselect` over sets that hold in-process numbers: the sets
//! become a `poll` set ([`super::poll`]), whose answer is put back in
//! them, as the kernel's `select` is its `poll` underneath (readable:
//! `POLLIN`, `POLLHUP`, `POLLERR`; writable: `POLLOUT`, `POLLERR`;
//! exceptional: `POLLPRI`).

use std::time::Instant;

use libc::{c_int, c_short, fd_set, pollfd};

use super::registry;
use crate::ops::Res;

const READ: c_short = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
const WRITE: c_short = libc::POLLOUT | libc::POLLERR;

/// The three sets the program gave (each null or valid).
pub(crate) struct Sets {
    read: *mut fd_set,
    write: *mut fd_set,
    except: *mut fd_set,
}

impl Sets {
    /// The program's sets.
    ///
    /// # Safety
    /// Each pointer is null or valid for reads and writes of an `fd_set`
    /// for as long as this is used.
    pub(crate) unsafe fn new(read: *mut fd_set, write: *mut fd_set, except: *mut fd_set) -> Sets {
        Sets {
            read,
            write,
            except,
        }
    }

    /// Whether `fd` is in `set` (false for a null set).
    fn has(set: *mut fd_set, fd: c_int) -> bool {
        // SAFETY: a non-null set is valid (see `new`); `fd` is below
        // `FD_SETSIZE` (the caller's bound).
        !set.is_null() && unsafe { libc::FD_ISSET(fd, set) }
    }

    /// The poll set the sets ask for, numbers below `nfds`.
    fn to_poll(&self, nfds: c_int) -> Vec<pollfd> {
        let mut set = Vec::new();
        for fd in 0..nfds {
            let mut events = 0;
            if Sets::has(self.read, fd) {
                events |= libc::POLLIN;
            }
            if Sets::has(self.write, fd) {
                events |= libc::POLLOUT;
            }
            if Sets::has(self.except, fd) {
                events |= libc::POLLPRI;
            }
            if events != 0 {
                set.push(pollfd {
                    fd,
                    events,
                    revents: 0,
                });
            }
        }
        set
    }

    /// Whether an in-process number is among the first `nfds`.
    pub(crate) fn concern(&self, nfds: c_int) -> bool {
        (0..nfds.clamp(0, libc::FD_SETSIZE as c_int)).any(|fd| {
            registry::is(fd)
                && (Sets::has(self.read, fd)
                    || Sets::has(self.write, fd)
                    || Sets::has(self.except, fd))
        })
    }

    /// Empties the sets, then puts back what `polled` found; how many
    /// bits are set, `EBADF` for a number that is not open.
    fn fill(&self, polled: &[pollfd]) -> Res<c_int> {
        if polled.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
            return Err(libc::EBADF);
        }
        for set in [self.read, self.write, self.except] {
            if !set.is_null() {
                // SAFETY: a non-null set is valid (see `new`).
                unsafe { libc::FD_ZERO(set) };
            }
        }
        let mut count = 0;
        for p in polled {
            let marks = [
                (
                    self.read,
                    p.events & libc::POLLIN != 0 && p.revents & READ != 0,
                ),
                (
                    self.write,
                    p.events & libc::POLLOUT != 0 && p.revents & WRITE != 0,
                ),
                (
                    self.except,
                    p.events & libc::POLLPRI != 0 && p.revents & libc::POLLPRI != 0,
                ),
            ];
            for (set, on) in marks {
                if on && !set.is_null() {
                    // SAFETY: as in `has`.
                    unsafe { libc::FD_SET(p.fd, set) };
                    count += 1;
                }
            }
        }
        Ok(count)
    }
}

/// `select`/`pselect` of the first `nfds` numbers of `sets` until
/// `deadline` (`None`: no limit), with `sigmask` (null: the thread's).
pub(crate) fn select(
    nfds: c_int,
    sets: &Sets,
    deadline: Option<Instant>,
    sigmask: *const libc::sigset_t,
) -> Res<c_int> {
    if !(0..=libc::FD_SETSIZE as c_int).contains(&nfds) {
        return Err(libc::EINVAL);
    }
    let mut polled = sets.to_poll(nfds);
    super::poll(&mut polled, deadline, sigmask)?;
    sets.fill(&polled)
}
