//! Giving memory back after flows close.
//!
//! A flow's memory goes back to the allocator when it closes, and a busy
//! flow's TCP buffers when it goes quiet, but not by itself to the system:
//! glibc keeps freed memory in its heap for reuse, and the host's tables
//! keep the size they grew to. So sald looks every [`INTERVAL`]: when flows
//! have closed or buffers shrunk by [`TRIM_AT_LEAST`] since it last
//! trimmed, it asks glibc to return its free pages (`malloc_trim`); when
//! many flows have closed (a quarter of the most it had, and at least
//! [`COMPACT_AT_LEAST`]) it first shrinks its tables and the host's
//! ([`Core::compact`](crate::daemon::Core::compact)). Both cost a pass over
//! what is left, which is why they wait for memory to have been freed
//! rather than run on every close.
//!
//! # Why glibc's allocator
//!
//! mimalloc (crate `mimalloc` 0.1.52, its default v3) as sald's global
//! allocator was measured against glibc, same runs, both orders (connect
//! bench, 4 runs of 3 s; flows bench at 10,000 and 100,000 flows, 4 s):
//! about 9 % less daemon CPU per connection (4 parallel: 187-236 against
//! 205-244 µs) and 5-10 % more connections per second, within this
//! machine's noise run by run; 3.4-3.8 KiB per idle flow against 4.2 KiB;
//! bulk throughput the same. But an idle sald took 14 MB resident against
//! 6 MB (6.6 MB only with `MIMALLOC_ARENA_EAGER_COMMIT=0`, which has to be
//! set before the allocator starts), and 18-30 MB around the flows bench's
//! phases against 6.5 MB, while sald's promise is memory that follows use
//! and goes back after flows close (`malloc_trim` below is glibc's). Not
//! adopted: the gain is small beside what connection setup needs (see the
//! connect bench's docs), the cost at rest is not.

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::Shared;

/// How often sald looks.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Fewest closed flows worth compacting the tables for.
pub const COMPACT_AT_LEAST: usize = 1024;
/// Fewest bytes of TCP buffers given back worth a trim.
pub const TRIM_AT_LEAST: u64 = 1 << 20;

/// What to do about memory now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Action {
    /// Shrink the tables (many flows closed).
    pub compact: bool,
    /// Return free memory to the system (flows closed).
    pub trim: bool,
}

/// Decides from the number of flows seen at each look. See the module docs.
#[derive(Debug, Default)]
pub struct Housekeeper {
    /// Flows at the previous look.
    last: usize,
    /// Most flows since the tables were last compacted.
    peak: usize,
    /// Most TCP buffer memory since the last trim.
    peak_buffers: u64,
}

impl Housekeeper {
    /// What to do, given that the host has `flows` flows now and its TCP
    /// buffers hold `buffers` bytes.
    pub fn look(&mut self, flows: usize, buffers: u64) -> Action {
        self.peak = self.peak.max(flows);
        self.peak_buffers = self.peak_buffers.max(buffers);
        let closed = self.peak - flows;
        let compact = closed >= COMPACT_AT_LEAST.max(self.peak / 4);
        if compact {
            self.peak = flows;
        }
        let trim = compact || flows < self.last || self.peak_buffers - buffers >= TRIM_AT_LEAST;
        if trim {
            self.peak_buffers = buffers;
        }
        self.last = flows;
        Action { compact, trim }
    }
}

/// Looks every [`INTERVAL`] and acts (see the module docs). Runs until
/// aborted.
pub async fn housekeeping(shared: Arc<Shared>) {
    let mut housekeeper = Housekeeper::default();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut core = shared.lock();
        let action = housekeeper.look(core.host.flow_count(), core.host.stats().buffer_bytes);
        if action.compact {
            core.compact();
        }
        drop(core);
        if action.trim {
            release_free_memory();
        }
    }
}

/// Asks the allocator to return the memory it holds free to the system.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointers; it walks glibc's own free
    // lists under glibc's own locks, and is safe to call at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_when_flows_close_and_compacts_when_many_have() {
        let trim_only = Action {
            compact: false,
            trim: true,
        };
        let mut keeper = Housekeeper::default();
        assert_eq!(keeper.look(0, 0), Action::default());
        assert_eq!(
            keeper.look(10_000, 0),
            Action::default(),
            "opening costs nothing"
        );
        assert_eq!(keeper.look(9_990, 0), trim_only, "ten closed: trim only");
        assert_eq!(keeper.look(9_990, 0), Action::default(), "nothing changed");
        let many = keeper.look(5_000, 0);
        assert!(many.trim && many.compact, "half closed: compact");
        assert_eq!(keeper.look(4_500, 0), trim_only);
        // A small daemon never compacts for a handful of flows.
        let mut small = Housekeeper::default();
        small.look(100, 0);
        assert_eq!(small.look(0, 0), trim_only);
        assert_eq!(small.look(0, 0), Action::default());
    }

    #[test]
    fn trims_when_buffers_shrink_by_a_mebibyte() {
        let mut keeper = Housekeeper::default();
        assert_eq!(keeper.look(1, 8 << 20), Action::default(), "a busy flow");
        assert_eq!(keeper.look(1, 8 << 20), Action::default());
        assert_eq!(
            keeper.look(1, (8 << 20) - 4096),
            Action::default(),
            "a little"
        );
        assert!(keeper.look(1, 0).trim, "quiet again: its buffers went back");
        assert_eq!(keeper.look(1, 0), Action::default());
    }
}
