//! The host's clock on `CLOCK_MONOTONIC`, so that the timerfd can be armed
//! at the host's deadline exactly (an absolute expiry): when it fires, the
//! host's clock has reached the deadline.

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

/// Microseconds since the runtime was made, as the host counts them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// `CLOCK_MONOTONIC` at the runtime's birth, in microseconds.
    epoch_us: i64,
}

/// `CLOCK_MONOTONIC` now, in microseconds (0 if the clock is unreadable,
/// which Linux never does for this clock).
fn monotonic_us() -> i64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() * 1_000_000 + t.tv_nsec() / 1_000)
        .unwrap_or(0)
}

impl Clock {
    /// A clock starting now.
    pub(crate) fn new() -> Clock {
        Clock {
            epoch_us: monotonic_us(),
        }
    }

    /// The host's time now.
    pub(crate) fn now(&self) -> sal::time::Instant {
        sal::time::Instant::from_micros(monotonic_us() - self.epoch_us)
    }

    /// `CLOCK_MONOTONIC` at the host's time `at` (never 0, which would
    /// disarm a timerfd).
    pub(crate) fn absolute(&self, at: sal::time::Instant) -> TimeSpec {
        let us = (self.epoch_us + at.total_micros()).max(1);
        TimeSpec::new(us / 1_000_000, (us % 1_000_000) * 1_000)
    }
}
