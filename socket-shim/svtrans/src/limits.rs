//! How much the translator takes on: descriptors, connections, log lines.
//!
//! A connection costs two descriptors while it lives (the TCP socket and
//! the flow), one more for a moment while ingress connects to sald, and
//! borrows pipes (two descriptors each) only while bytes move. At start the
//! translator raises its descriptor limit as far as it may, then sizes the
//! pipe pool and the number of connections so that both fit under the
//! limit with a reserve to spare: a connection over the limit is refused
//! (one log line), it never makes the translator run out of descriptors,
//! which would break the connections it already carries or its binding.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Descriptors kept for the process itself: stdio, the listener, sald's
/// control connection, the spare descriptor, a descriptor in flight on an
/// accept.
pub const RESERVE: u64 = 16;
/// Descriptors one connection may hold at its peak, pipes apart.
pub const PER_CONNECTION: u64 = 3;
/// Most pipes in the pool, whatever the limit.
pub const MAX_PIPES: u64 = 256;

/// Raises the soft descriptor limit to the hard limit; returns the limit
/// now in force.
pub fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    // An "unlimited" hard limit cannot be set as is; this is the kernel's
    // default ceiling (fs.nr_open).
    let hard = if limit.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_max
    };
    if limit.rlim_cur < hard {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: a valid rlimit; lowering nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return hard;
        }
    }
    limit.rlim_cur
}

/// What fits under a descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Connections carried at once.
    pub connections: usize,
    /// Pipes in the pool.
    pub pipes: usize,
}

impl Capacity {
    /// The share of `nofile` descriptors: an eighth (at most
    /// [`MAX_PIPES`] pipes) for pipes, the rest, past the reserve, for
    /// connections, and no more connections than `wanted`.
    pub fn for_limit(nofile: u64, wanted: usize) -> Capacity {
        let usable = nofile.saturating_sub(RESERVE);
        let pipes = (usable / 8 / 2).min(MAX_PIPES);
        let connections = (usable - pipes * 2) / PER_CONNECTION;
        Capacity {
            connections: usize::try_from(connections)
                .unwrap_or(usize::MAX)
                .min(wanted)
                .max(1),
            pipes: usize::try_from(pipes).unwrap_or(0),
        }
    }
}

/// Connections carried now, against the maximum.
#[derive(Debug)]
pub struct Slots {
    free: Mutex<usize>,
}

/// One taken slot, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            free: Mutex::new(max.max(1)),
        }
    }

    /// A slot if one is free.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if *free == 0 {
            return None;
        }
        *free -= 1;
        Some(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += 1;
    }
}

/// Log lines that clients can trigger (refusals), at most one per
/// interval; the others are counted into the next line.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    pub fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Writes `line()` to stderr unless a line went out less than an
    /// interval ago (then it is only counted).
    pub fn log(&self, line: impl FnOnce() -> String) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if state.0.is_some_and(|last| now < last + self.interval) {
            state.1 += 1;
            return;
        }
        let held = std::mem::take(&mut state.1);
        state.0 = Some(now);
        drop(state);
        if held > 0 {
            eprintln!("svtrans: {} ({held} similar not logged)", line());
        } else {
            eprintln!("svtrans: {}", line());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_fits_under_the_limit() {
        for nofile in [64u64, 1024, 20_000, 1 << 20] {
            let capacity = Capacity::for_limit(nofile, usize::MAX);
            let used =
                RESERVE + capacity.pipes as u64 * 2 + capacity.connections as u64 * PER_CONNECTION;
            assert!(used <= nofile, "{nofile}: {capacity:?}");
            assert!(
                capacity.connections as u64 * 2 > nofile / 3,
                "{nofile}: {capacity:?}"
            );
        }
        assert_eq!(Capacity::for_limit(1024, 100).connections, 100);
        assert_eq!(Capacity::for_limit(0, 100).connections, 1);
    }

    #[test]
    fn slots_refuse_when_full_and_come_back() {
        let slots = Arc::new(Slots::new(2));
        let a = slots.try_acquire().unwrap();
        let _b = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none());
        drop(a);
        assert!(slots.try_acquire().is_some());
    }
}
