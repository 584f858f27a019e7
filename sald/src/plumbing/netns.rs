//! Which network namespace the plumbing belongs to: a stable identity for
//! the lock and state file names, and a handle to come back to it.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt as _;

#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_NETNS_COOKIE: nix::libc::c_int = 71;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_NETNS_COOKIE: nix::libc::c_int = 0x50;

/// The calling thread's network namespace: an fd on it (to come back to it
/// from another thread) and a stable identity for file names.
#[derive(Debug)]
pub(crate) struct NetnsHandle {
    pub(crate) id: String,
    pub(crate) file: File,
}

/// The cookie of the network namespace `socket` belongs to
/// (`SO_NETNS_COOKIE`, Linux 5.14); `None` on older kernels.
pub(crate) fn netns_cookie(socket: BorrowedFd<'_>) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: `socket` is an open socket for the duration of the call; the
    // option value pointer and length describe `cookie`, a live u64 that the
    // kernel writes at most `len` bytes into.
    let rc = unsafe {
        nix::libc::getsockopt(
            socket.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

pub(crate) fn current_netns_id() -> io::Result<String> {
    use nix::sys::socket::{socket, AddressFamily as SockFamily, SockFlag, SockType};
    let sock = socket(
        SockFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    if let Some(cookie) = netns_cookie(sock.as_fd()) {
        return Ok(format!("netns-c{cookie}"));
    }
    // Kernels before 5.14: fall back to the nsfs inode (may be reused after
    // the namespace dies, which only matters for stale state files).
    let ino = fs::metadata("/proc/thread-self/ns/net")?.ino();
    Ok(format!("netns-i{ino}"))
}

impl NetnsHandle {
    pub(crate) fn current() -> io::Result<Self> {
        Ok(NetnsHandle {
            id: current_netns_id()?,
            file: File::open("/proc/thread-self/ns/net")?,
        })
    }
}
