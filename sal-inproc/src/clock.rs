//! The host's clock on `CLOCK_MONOTONIC`, so that the timerfd can be armed
//! at the host's deadline exactly (an absolute expiry), and a `ppoll`
//! timeout reach it to the nanosecond: when either ends, the host's clock
//! has reached the deadline.

use std::time::Duration;

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

/// Microseconds since the runtime was made, as the host counts them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// `CLOCK_MONOTONIC` at the runtime's birth, in microseconds.
    epoch_us: i64,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (0 if the clock is unreadable).
fn monotonic_ns() -> i128 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        .unwrap_or(0)
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

    /// The time left until the host's time `at_us` (microseconds), to the
    /// nanosecond: a sleep that long ends with the host's clock at `at_us`
    /// or later. Zero if it passed.
    pub(crate) fn until_micros(&self, at_us: u64) -> Duration {
        let at_ns = (i128::from(self.epoch_us) + i128::from(at_us)) * 1_000;
        let left = (at_ns - monotonic_ns()).max(0);
        Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
    }
}
