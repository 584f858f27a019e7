//! Who may hold how many control connections, and how often refusals and
//! accept failures are logged.
//!
//! The accept loop holds one permit of a semaphore of `clients` per
//! connection, so sald never has more control connections than that. Of
//! those, ordinary users together may hold all but `root_reserve`, and each
//! of them at most `clients_per_uid`: one user cannot exhaust sald's file
//! descriptors, and root's `servalctl` always gets in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This user holds its share already.
    #[error("uid {uid} has {limit} control connections, the most one user may hold")]
    PerUid {
        /// The user.
        uid: u32,
        /// `clients_per_uid`.
        limit: usize,
    },
    /// Ordinary users hold every connection not reserved for root.
    #[error("all {limit} control connections open to ordinary users are in use")]
    Ordinary {
        /// `clients - root_reserve`.
        limit: usize,
    },
}

#[derive(Debug, Default)]
struct Counts {
    per_uid: HashMap<u32, usize>,
    ordinary: usize,
}

/// Counts connections per user.
#[derive(Debug)]
pub struct Admission {
    per_uid: usize,
    ordinary: usize,
    counts: Mutex<Counts>,
}

/// A connection counted against its user; uncounted when dropped.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    uid: Option<u32>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(uid) = self.uid else {
            return;
        };
        let mut counts = self.admission.lock();
        counts.ordinary = counts.ordinary.saturating_sub(1);
        if let Some(n) = counts.per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                counts.per_uid.remove(&uid);
            }
        }
    }
}

impl Admission {
    /// Counting by `limits`.
    pub fn new(limits: &Limits) -> Arc<Admission> {
        Arc::new(Admission {
            per_uid: limits.clients_per_uid,
            ordinary: limits.clients.saturating_sub(limits.root_reserve),
            counts: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection of `uid`; privileged users are only bounded by
    /// the total (the accept loop's semaphore).
    pub fn admit(self: &Arc<Self>, uid: u32, privileged: bool) -> Result<Admitted, Refusal> {
        if privileged {
            return Ok(Admitted {
                admission: self.clone(),
                uid: None,
            });
        }
        let mut counts = self.lock();
        let held = counts.per_uid.get(&uid).copied().unwrap_or(0);
        if held >= self.per_uid {
            return Err(Refusal::PerUid {
                uid,
                limit: self.per_uid,
            });
        }
        if counts.ordinary >= self.ordinary {
            return Err(Refusal::Ordinary {
                limit: self.ordinary,
            });
        }
        counts.ordinary += 1;
        *counts.per_uid.entry(uid).or_default() += 1;
        Ok(Admitted {
            admission: self.clone(),
            uid: Some(uid),
        })
    }
}

/// Lets a repeated log line through at most once per interval, counting
/// what it held back.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were
    /// held back since the last one; `None` to stay quiet.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

/// Exponential back-off for a failing `accept`: 10 ms, doubling, at most 1 s.
#[derive(Debug, Default)]
pub struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// The next wait after a failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.delay = Some(delay);
        delay
    }

    /// After a success: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.delay = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_users_are_capped_and_root_keeps_its_reserve() {
        let limits = Limits {
            clients: 5,
            clients_per_uid: 2,
            root_reserve: 2,
            ..Limits::default()
        };
        let admission = Admission::new(&limits);
        let a1 = admission.admit(1000, false).unwrap();
        let _a2 = admission.admit(1000, false).unwrap();
        assert_eq!(
            admission.admit(1000, false).unwrap_err(),
            Refusal::PerUid {
                uid: 1000,
                limit: 2
            }
        );
        let _b = admission.admit(1001, false).unwrap();
        assert_eq!(
            admission.admit(1002, false).unwrap_err(),
            Refusal::Ordinary { limit: 3 }
        );
        assert!(admission.admit(0, true).is_ok());
        drop(a1);
        assert!(admission.admit(1002, false).is_ok());
    }

    #[test]
    fn logs_are_rate_limited_with_a_count() {
        let limiter = LogLimiter::new(Duration::from_secs(60));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        let limiter = LogLimiter::new(Duration::ZERO);
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0));
    }

    #[test]
    fn backoff_doubles_up_to_a_second_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..9).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(10));
    }
}
