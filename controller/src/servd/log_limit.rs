//! Log lines whose rate a sender controls, bounded: a flood of refused
//! messages must not turn into a flood of log lines.
//!
//! Each kind of line is written at most once per [`INTERVAL`]; the ones
//! held back meanwhile are counted and reported with the next line of the
//! same kind. Counters in [`super::Stats`] keep the exact totals.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Shortest time between two lines of one kind.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// When each kind of line may next be written, and how many were held back.
#[derive(Debug, Default)]
pub struct LogLimiter {
    kinds: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    /// Whether a line of `kind` may be written at `now`: `Some(n)` with the
    /// number of lines held back since the last one, or `None` (counted).
    pub fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(kind) {
            Some((next, held)) if now < *next => {
                *held += 1;
                None
            }
            Some((next, held)) => {
                *next = now + INTERVAL;
                Some(std::mem::take(held))
            }
            None => {
                self.kinds.insert(kind, (now + INTERVAL, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_kind_with_the_count_of_the_rest() {
        let mut limiter = LogLimiter::default();
        let start = Instant::now();
        assert_eq!(limiter.allow("a", start), Some(0));
        assert_eq!(limiter.allow("b", start), Some(0));
        for i in 1..100 {
            assert_eq!(limiter.allow("a", start + Duration::from_millis(i)), None);
        }
        assert_eq!(limiter.allow("a", start + INTERVAL), Some(99));
        assert_eq!(limiter.allow("a", start + INTERVAL), None);
    }
}
