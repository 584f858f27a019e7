//! Pipes for `splice(2)`, shared by every connection.
//!
//! Moving bytes between two sockets with splice needs a pipe in between.
//! A pipe per direction per connection would cost four descriptors per
//! connection even while it is idle, which is what used to exhaust the
//! translator's descriptors under many idle connections. Instead a
//! direction takes an empty pipe from this pool only while it has bytes to
//! move, and gives it back (empty) after. The pool holds at most `max`
//! pipes; a direction that finds none copies through a buffer instead, so
//! running out of pipes slows a connection down but never fails it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Bytes one splice call moves at most (pipes are grown to this).
pub const CHUNK: usize = 1 << 20;

/// One pipe: bytes written to `write` come out of `read`.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both were just created and belong to nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe means fewer splice calls; failure keeps the default.
        // SAFETY: no pointers.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Pipe { read, write })
    }

    pub fn read_end(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn write_end(&self) -> RawFd {
        self.write.as_raw_fd()
    }
}

/// Empty pipes ready for use, and how many exist in all.
#[derive(Debug)]
pub struct PipePool {
    state: Mutex<PoolState>,
    max: usize,
}

#[derive(Debug, Default)]
struct PoolState {
    idle: Vec<Pipe>,
    alive: usize,
}

impl PipePool {
    /// A pool that never holds more than `max` pipes (2 descriptors each).
    pub fn new(max: usize) -> PipePool {
        PipePool {
            state: Mutex::new(PoolState::default()),
            max,
        }
    }

    /// An empty pipe, new or reused; `None` when `max` are in use or none
    /// can be created (out of descriptors).
    pub fn take(&self) -> Option<Pipe> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pipe) = state.idle.pop() {
            return Some(pipe);
        }
        if state.alive >= self.max {
            return None;
        }
        let pipe = Pipe::new().ok()?;
        state.alive += 1;
        Some(pipe)
    }

    /// Gives back a pipe that is empty again.
    pub fn give(&self, pipe: Pipe) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.idle.push(pipe);
    }

    /// Forgets a pipe that may still hold bytes (it is closed).
    pub fn discard(&self, pipe: Pipe) {
        drop(pipe);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.alive = state.alive.saturating_sub(1);
    }

    /// Pipes in existence (in use or idle).
    #[cfg(test)]
    pub fn alive(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_never_holds_more_than_its_maximum() {
        let pool = PipePool::new(2);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(pool.take().is_none());
        assert_eq!(pool.alive(), 2);
        pool.give(a);
        let again = pool.take().expect("the idle one");
        pool.discard(b);
        assert_eq!(pool.alive(), 1);
        assert!(pool.take().is_some(), "room for a new one");
        pool.give(again);
    }
}
