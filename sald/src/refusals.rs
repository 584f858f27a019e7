//! The packets of ours that came back refused (ICMP "port unreachable" on
//! the UDP link, "protocol unreachable" on native carriage's raw sockets),
//! read from a socket's error queue and kept until the host takes them
//! (`Host::handle_unreachable`). One store per socket that asks for the
//! errors (`IP_RECVERR`): the UDP link and each raw receiver.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use sal_inproc::udp::{read_errors, Unreachable};

/// Refusals read and not taken yet (at most `sal_inproc::udp::BATCH`: the
/// rest are read, so that the queue does not stay full, and dropped).
#[derive(Debug, Default)]
pub struct Refusals {
    kept: Mutex<Vec<Unreachable>>,
    /// Whether `kept` may hold any: the packet path looks at this, not at
    /// the lock.
    any: AtomicBool,
}

impl Refusals {
    /// Reads `socket`'s error queue to the end; returns how many errors
    /// it read (refusals or not).
    pub fn read(&self, socket: BorrowedFd<'_>) -> usize {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let before = kept.len();
        let read = read_errors(socket, &mut kept);
        if kept.len() > before {
            self.any.store(true, Ordering::Release);
        }
        read
    }

    /// Whether refusals wait to be taken.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The refusals read since the last call: where each packet went, and
    /// its start as the ICMP error quoted it. Empty, without taking the
    /// lock, when there were none.
    pub fn take(&self) -> Vec<Unreachable> {
        if !self.any.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *kept)
    }
}
