//! The least round trip of the last five minutes, in 12 bytes: Kathleen
//! Nichols' windowed minimum filter, which Linux keeps for its
//! `tcp_min_rtt` (`lib/win_minmax.c`, window `tcp_min_rtt_wlen`, 300 s).
//!
//! sal-tcp, not in smoltcp. RACK's reordering window is a quarter of the
//! least round trip (`crate::rack`). Kept for the connection's life, that
//! least was the shortest the flow ever saw: a path whose round trip rose
//! for good (a queue that stays, a route that changed) kept a reordering
//! window sized for the old one, and RACK took reordering there for loss.
//! A true windowed minimum would keep every sample of the window; the
//! filter keeps three, the best, and the best of the samples that came
//! after it in later quarters and halves of the window, so that when the
//! best ages out of the window one of the others takes its place: the
//! answer is the least of the window's samples, or a sample of the window
//! close to it (the second choice may stand for a quarter window before a
//! better one of a later time is found).

use smoltcp::time::Instant;

/// The window, in seconds (Linux's `tcp_min_rtt_wlen`).
const WINDOW_SECS: u16 = 300;

/// No sample yet.
const NONE: u16 = u16::MAX;

/// A sample: when, in the clock's whole seconds, wrapping (18 hours), and
/// the value, in milliseconds, at most `NONE - 1` (no round trip sample
/// comes near the 65 s: the retransmission timeout is at most 60 s, and
/// no sample is taken past it, Karn). After 18 hours without a sample, the
/// samples kept may be taken for recent ones: the least of them then
/// outlives the window by one window at most, as the samples that follow
/// age it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at: u16,
    value: u16,
}

/// The filter's state: `best` the least sample of the window, `second`
/// and `third` the least of those taken after it, each from a later part
/// of the window; times and values never decrease from one to the next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowedMin {
    best: Sample,
    second: Sample,
    third: Sample,
}

impl Default for WindowedMin {
    fn default() -> Self {
        let none = Sample { at: 0, value: NONE };
        WindowedMin {
            best: none,
            second: none,
            third: none,
        }
    }
}

impl WindowedMin {
    /// The least value of the window, `None` before a sample.
    pub(crate) fn get(&self) -> Option<u32> {
        (self.best.value != NONE).then_some(u32::from(self.best.value))
    }

    /// A sample of `value` came at `now`.
    pub(crate) fn update(&mut self, now: Instant, value: u32) {
        let new = Sample {
            at: now.secs() as u16,
            value: value.min(u32::from(NONE - 1)) as u16,
        };
        let age = |s: Sample| new.at.wrapping_sub(s.at);
        // A new least, or nothing of the window left: the sample is all
        // three choices.
        if new.value <= self.best.value || age(self.third) > WINDOW_SECS {
            *self = WindowedMin {
                best: new,
                second: new,
                third: new,
            };
            return;
        }
        if new.value <= self.second.value {
            self.second = new;
            self.third = new;
        } else if new.value <= self.third.value {
            self.third = new;
        }
        let best_age = age(self.best);
        if best_age > WINDOW_SECS {
            // The best aged out: the others move up, and if the second did
            // too, once more.
            self.best = self.second;
            self.second = self.third;
            self.third = new;
            if age(self.best) > WINDOW_SECS {
                self.best = self.second;
                self.second = self.third;
            }
        } else if self.second == self.best && best_age > WINDOW_SECS / 4 {
            // A quarter of the window passed with nothing but the best:
            // the new sample is the second choice, for when it ages out.
            self.second = new;
            self.third = new;
        } else if self.third == self.second && best_age > WINDOW_SECS / 2 {
            // Half the window: and the third.
            self.third = new;
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn at(secs: i64) -> Instant {
        Instant::from_secs(secs)
    }

    #[test]
    fn the_least_of_the_window_is_kept_and_a_lower_sample_replaces_it() {
        let mut m = WindowedMin::default();
        assert_eq!(m.get(), None);
        m.update(at(0), 40);
        m.update(at(1), 30);
        m.update(at(2), 50);
        assert_eq!(m.get(), Some(30));
        m.update(at(200), 60);
        assert_eq!(m.get(), Some(30));
        m.update(at(201), 20);
        assert_eq!(m.get(), Some(20));
    }

    #[test]
    fn a_round_trip_that_rose_for_good_is_followed_within_the_window() {
        // 10 ms for a minute, then 100 ms a sample a second: the 10 ms
        // stands until the window has passed, not longer.
        let mut m = WindowedMin::default();
        for s in 0..60 {
            m.update(at(s), 10);
        }
        for s in 60..=359 {
            m.update(at(s), 100);
            assert_eq!(m.get(), Some(10), "at {s} s");
        }
        m.update(at(360), 100);
        assert_eq!(m.get(), Some(100));
    }

    #[test]
    fn when_the_best_ages_out_the_best_of_the_later_samples_follows() {
        let mut m = WindowedMin::default();
        m.update(at(0), 10);
        m.update(at(100), 20);
        m.update(at(200), 30);
        m.update(at(301), 40);
        // 20 ms, taken at 100 s, is the least of the last 300 s.
        assert_eq!(m.get(), Some(20));
        m.update(at(401), 45);
        assert_eq!(m.get(), Some(30));
        // Everything kept is older than the window: the sample alone.
        m.update(at(1000), 50);
        assert_eq!(m.get(), Some(50));
    }

    #[test]
    fn values_saturate_and_the_clock_may_wrap() {
        let mut m = WindowedMin::default();
        m.update(at(0), u32::MAX);
        assert_eq!(m.get(), Some(u32::from(NONE - 1)));
        // Near the 18-hour wrap of the seconds kept, and past it.
        let wrap = i64::from(u16::MAX) + 1;
        m.update(at(wrap - 10), 30);
        m.update(at(wrap + 100), 40);
        assert_eq!(m.get(), Some(30));
        m.update(at(wrap + 400), 50);
        assert_eq!(m.get(), Some(40));
    }
}
