//! Carrying one connection: splice in both directions, half-close, limits.

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};

/// Bytes one splice call moves at most (the pipe is grown to this).
const CHUNK: usize = 1 << 20;

/// A counting semaphore bounding the connections carried at once.
#[derive(Debug)]
pub struct Slots {
    free: Mutex<usize>,
    cond: Condvar,
}

/// One taken slot, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            free: Mutex::new(max.max(1)),
            cond: Condvar::new(),
        }
    }

    /// Waits for a free slot.
    pub fn acquire(self: &Arc<Self>) -> Slot {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.cond.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(self.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
        self.0.cond.notify_one();
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and belong to nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A larger pipe means fewer splice calls; failure just keeps the default.
    // SAFETY: no pointers.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    Ok((r, w))
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: null offsets (sockets and pipes have none); no other pointers.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Moves bytes from `from` to `to` until end of file, through a pipe.
fn pump(from: RawFd, to: RawFd) -> io::Result<u64> {
    let (r, w) = pipe()?;
    let mut total = 0u64;
    loop {
        let n = splice(from, w.as_raw_fd(), CHUNK)?;
        if n == 0 {
            return Ok(total);
        }
        let mut left = n;
        while left > 0 {
            let m = splice(r.as_raw_fd(), to, left)?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        total += n as u64;
    }
}

/// Carries a TCP connection and a flow until both directions end.
///
/// Each direction half-closes its destination at end of file; an error in
/// one direction shuts both sockets down completely so the other ends too.
pub fn relay(tcp: TcpStream, flow: UnixStream) -> io::Result<()> {
    let tcp2 = tcp.try_clone()?;
    let flow2 = flow.try_clone()?;
    let back = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            let result = pump(flow2.as_raw_fd(), tcp2.as_raw_fd());
            match &result {
                Ok(_) => {
                    let _ = tcp2.shutdown(Shutdown::Write);
                }
                Err(_) => {
                    let _ = tcp2.shutdown(Shutdown::Both);
                    let _ = flow2.shutdown(Shutdown::Both);
                }
            }
            result
        })?;
    let forward = pump(tcp.as_raw_fd(), flow.as_raw_fd());
    match &forward {
        Ok(_) => {
            let _ = flow.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = tcp.shutdown(Shutdown::Both);
            let _ = flow.shutdown(Shutdown::Both);
        }
    }
    let backward = back
        .join()
        .map_err(|_| io::Error::other("relay thread panicked"))?;
    forward?;
    backward?;
    Ok(())
}
