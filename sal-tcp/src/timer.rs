//! The socket's timers: retransmission, zero-window probe, keep-alive,
//! TIME-WAIT, and the delayed-ACK timer.
//!
//! Forked from smoltcp 0.14.0 `src/socket/tcp.rs` (0BSD, see the crate docs).
//! Changed: `poll_at` answers with this crate's [`PollAt`] (smoltcp's is
//! crate-private); the tail loss probe's timer (`crate::tlp`) stands in
//! for the retransmission timer.

use smoltcp::time::{Duration, Instant};

use crate::rtt::RTTE_MAX_RTO;

/// When a socket next needs the caller's attention, as the timers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PollAt {
    /// Immediately.
    Now,
    /// At the given instant.
    Time(Instant),
    /// Only when a segment arrives (or the application acts).
    Ingress,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Timer {
    Idle {
        keep_alive_at: Option<Instant>,
    },
    Retransmit {
        expires_at: Instant,
    },
    FastRetransmit,
    /// sal-tcp: the tail loss probe's timer (`crate::tlp`), in place of
    /// the retransmission timer: data is in flight, and the probe goes at
    /// `expires_at`, no later than the retransmission timeout would
    /// have fired (`rto_at`). Same size as the other variants. Also RACK's
    /// reordering timer (`crate::rack`).
    LossProbe {
        expires_at: Instant,
        rto_at: Instant,
    },
    ZeroWindowProbe {
        expires_at: Instant,
        delay: Duration,
    },
    Close {
        expires_at: Instant,
    },
}

pub(crate) const ACK_DELAY_DEFAULT: Duration = Duration::from_millis(10);
pub(crate) const CLOSE_DELAY: Duration = Duration::from_millis(10_000);

impl Timer {
    pub(crate) fn new() -> Timer {
        Timer::Idle {
            keep_alive_at: None,
        }
    }

    pub(crate) fn should_keep_alive(&self, timestamp: Instant) -> bool {
        matches!(*self, Timer::Idle {
                keep_alive_at: Some(keep_alive_at),
            } if timestamp >= keep_alive_at)
    }

    pub(crate) fn should_retransmit(&self, timestamp: Instant) -> bool {
        match *self {
            Timer::Retransmit { expires_at } if timestamp >= expires_at => true,
            Timer::FastRetransmit => true,
            _ => false,
        }
    }

    /// sal-tcp: whether the tail loss probe is due.
    pub(crate) fn should_probe(&self, timestamp: Instant) -> bool {
        matches!(*self, Timer::LossProbe { expires_at, .. } if timestamp >= expires_at)
    }

    pub(crate) fn should_close(&self, timestamp: Instant) -> bool {
        matches!(*self, Timer::Close { expires_at } if timestamp >= expires_at)
    }

    pub(crate) fn should_zero_window_probe(&self, timestamp: Instant) -> bool {
        matches!(*self, Timer::ZeroWindowProbe { expires_at, .. } if timestamp >= expires_at)
    }

    pub(crate) fn poll_at(&self) -> PollAt {
        match *self {
            Timer::Idle {
                keep_alive_at: Some(keep_alive_at),
            } => PollAt::Time(keep_alive_at),
            Timer::Idle {
                keep_alive_at: None,
            } => PollAt::Ingress,
            Timer::ZeroWindowProbe { expires_at, .. } => PollAt::Time(expires_at),
            Timer::Retransmit { expires_at, .. } => PollAt::Time(expires_at),
            Timer::LossProbe { expires_at, .. } => PollAt::Time(expires_at),
            Timer::FastRetransmit => PollAt::Now,
            Timer::Close { expires_at } => PollAt::Time(expires_at),
        }
    }

    pub(crate) fn set_for_idle(&mut self, timestamp: Instant, interval: Option<Duration>) {
        *self = Timer::Idle {
            keep_alive_at: interval.map(|interval| timestamp + interval),
        }
    }

    pub(crate) fn set_keep_alive(&mut self) {
        if let Timer::Idle {
            keep_alive_at: keep_alive_at @ None,
        } = self
        {
            *keep_alive_at = Some(Instant::from_millis(0))
        }
    }

    pub(crate) fn rewind_keep_alive(&mut self, timestamp: Instant, interval: Option<Duration>) {
        if let Timer::Idle { keep_alive_at } = self {
            *keep_alive_at = interval.map(|interval| timestamp + interval)
        }
    }

    pub(crate) fn set_for_retransmit(&mut self, timestamp: Instant, delay: Duration) {
        match *self {
            Timer::Idle { .. }
            | Timer::FastRetransmit
            | Timer::Retransmit { .. }
            | Timer::LossProbe { .. }
            | Timer::ZeroWindowProbe { .. } => {
                *self = Timer::Retransmit {
                    expires_at: timestamp + delay,
                }
            }
            Timer::Close { .. } => (),
        }
    }

    /// sal-tcp: arm the tail loss probe `pto` from now, but no later than
    /// the retransmission timeout: the one running, else one restarted
    /// now with `rto`. Not from the TIME-WAIT timer.
    pub(crate) fn set_for_loss_probe(&mut self, timestamp: Instant, pto: Duration, rto: Duration) {
        let rto_at = match *self {
            Timer::Retransmit { expires_at } => expires_at,
            Timer::LossProbe { rto_at, .. } => rto_at,
            Timer::Close { .. } => return,
            _ => timestamp + rto,
        };
        *self = Timer::LossProbe {
            expires_at: (timestamp + pto).min(rto_at),
            rto_at,
        }
    }

    /// sal-tcp: RACK's timer (`crate::rack`): look for losses again at
    /// `at`, in the tail loss probe's slot, and no later than the probe or
    /// the retransmission timeout already running. Only while one of them
    /// runs: a fast retransmit due, a zero-window probe or the TIME-WAIT
    /// timer stays.
    pub(crate) fn set_for_rack(&mut self, at: Instant) {
        let (expires_at, rto_at) = match *self {
            Timer::Retransmit { expires_at } => (at, expires_at),
            Timer::LossProbe { expires_at, rto_at } => (expires_at.min(at), rto_at),
            _ => return,
        };
        *self = Timer::LossProbe {
            expires_at: expires_at.min(rto_at),
            rto_at,
        }
    }

    /// sal-tcp: the tail loss probe's timer fired but no probe may go:
    /// the retransmission timeout stands where it was (`rto_at`, now at
    /// the latest), not a whole timeout from now.
    pub(crate) fn set_for_retransmit_instead_of_probe(&mut self) {
        if let Timer::LossProbe { rto_at, .. } = *self {
            *self = Timer::Retransmit { expires_at: rto_at }
        }
    }

    pub(crate) fn set_for_fast_retransmit(&mut self) {
        *self = Timer::FastRetransmit
    }

    pub(crate) fn set_for_close(&mut self, timestamp: Instant) {
        *self = Timer::Close {
            expires_at: timestamp + CLOSE_DELAY,
        }
    }

    pub(crate) fn set_for_zero_window_probe(&mut self, timestamp: Instant, delay: Duration) {
        *self = Timer::ZeroWindowProbe {
            expires_at: timestamp + delay,
            delay,
        }
    }

    pub(crate) fn rewind_zero_window_probe(&mut self, timestamp: Instant) {
        if let Timer::ZeroWindowProbe { mut delay, .. } = *self {
            delay = (delay * 2).min(Duration::from_millis(RTTE_MAX_RTO as _));
            *self = Timer::ZeroWindowProbe {
                expires_at: timestamp + delay,
                delay,
            }
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        matches!(self, Timer::Idle { .. })
    }

    pub(crate) fn is_zero_window_probe(&self) -> bool {
        matches!(self, Timer::ZeroWindowProbe { .. })
    }

    pub(crate) fn is_retransmit(&self) -> bool {
        matches!(
            self,
            Timer::Retransmit { .. } | Timer::FastRetransmit | Timer::LossProbe { .. }
        )
    }
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum AckDelayTimer {
    Idle,
    Waiting(Instant),
    Immediate,
}
