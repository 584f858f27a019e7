//! A short busy-poll before a thread sleeps in the engine.
//!
//! **Why.** A blocking call waits for its peer's next packet: over a veth
//! pair or loopback that is often tens of microseconds away, less than what
//! sleeping and being woken cost (`ppoll`'s wait-queue set-up, a context
//! switch each way, and in a virtual machine a halted CPU woken by an
//! interrupt). Kernel TCP rarely pays it: it takes most packets in the
//! sender's softirq. So before sleeping, a thread looks at what it would
//! wait for (atomics, or the socket with a zero-timeout `ppoll`) until it
//! is ready or a short window ([`crate::Config::spin`]) passes, yielding
//! the CPU between looks to any other runnable thread (`sched_yield`): a
//! spin that caught its event replaces a sleep and a wake-up with a few
//! looks, and a CPU that would have gone idle between two packets of a
//! conversation keeps working. The kernel's `busy_poll` and KVM's halt
//! polling do the same for the same reason.
//!
//! **When it stops.** A spin that misses costs its whole window. The
//! engine keeps a score of its spins (all threads' together: which thread
//! waits for the socket changes from wait to wait): a catch adds
//! [`CATCH`], a miss takes 1 away, so the score falls while fewer than one
//! spin in `CATCH + 1` catches. That threshold is a judgment, not a
//! measurement: a miss costs a window of CPU time that only threads with
//! nothing better to do could have used (the spinner yields at every
//! look), a catch saves a sleep and a wake-up on two CPUs. At zero the
//! threads stop spinning, but every [`PROBE`]th wait spins anyway, so
//! that the score comes back when the traffic does. So a program whose
//! waits are long (an idle server's accept, a reader of a slow peer),
//! after its first misses (the score starts at [`CEILING`]), spins in one
//! wait in [`PROBE`], and a little more when a probe catches something.
//! What is ready before the spin's first look (input that came while the
//! thread was outside the engine) is not scored: it saves nothing. A spin
//! cut short by the wait's own limit (the host's timer, the call's
//! deadline) is not scored either. A thread queued behind another for its
//! object (one of many in `accept`) spins too, for its wake-up eventfd:
//! leaving it out did worse in the connect bench (4 parallel 0.41-0.49x
//! kernel TCP's rate against 0.48-0.58x, same rounds). On a
//! machine with one CPU nobody else could make the event happen while a
//! thread spins: no spin there.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What [`crate::Config::spin`] is unless set: about a round trip over a
/// veth pair between two busy programs on the machines measured (25 and
/// 100 µs did no better in the connect bench: `docs/in-process-sal.md`,
/// stage 4).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// What a spin that caught its event adds to the score (a miss takes 1).
const CATCH: u32 = 3;

/// The highest score: after a burst of catches, spinning stops after this
/// many misses in a row at most.
const CEILING: u32 = 16 * CATCH;

/// With the score at zero, one wait in this many spins (to see whether
/// spinning pays again).
const PROBE: u32 = 16;

/// What a wait's spin came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spun {
    /// It did not spin (off, no time, or it does not pay now).
    Not,
    /// What it waits for was ready at the first look: no need to sleep,
    /// and nothing saved (not scored).
    Ready,
    /// What it waited for came: no need to sleep.
    Caught,
    /// It spun its window in vain: it sleeps.
    Missed,
}

/// The engine's spin setting and score.
#[derive(Debug)]
pub(crate) struct Spin {
    /// The longest a spin lasts (zero: never spin).
    window: Duration,
    /// Catches and misses so far (see the module's doc).
    score: AtomicU32,
    /// Waits without a spin since the last probe.
    unspun: AtomicU32,
}

impl Spin {
    /// Spins of `window` at most (none on a machine with one CPU).
    pub(crate) fn new(window: Duration) -> Spin {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Spin {
            window: if cpus > 1 { window } else { Duration::ZERO },
            score: AtomicU32::new(CEILING),
            unspun: AtomicU32::new(0),
        }
    }

    /// Looks at `ready` until it says yes, the window passes, or `limit`
    /// (the time the wait may last at all) does, yielding the CPU between
    /// looks; or not at all, if spinning does not pay now.
    pub(crate) fn run(&self, limit: Option<Duration>, mut ready: impl FnMut() -> bool) -> Spun {
        let window = limit.map_or(self.window, |limit| limit.min(self.window));
        if window.is_zero() || !self.pays() {
            return Spun::Not;
        }
        if ready() {
            return Spun::Ready;
        }
        let start = Instant::now();
        loop {
            // At every look: yielding only every few looks, with pause
            // loops between, halved the connect bench's rate (a runnable
            // thread with work waited for the spinner's time slice).
            std::thread::yield_now();
            if ready() {
                self.scored(true);
                return Spun::Caught;
            }
            if start.elapsed() >= window {
                if window == self.window {
                    self.scored(false);
                }
                return Spun::Missed;
            }
        }
    }

    /// Whether this wait spins: while the score is up, and every
    /// [`PROBE`]th wait otherwise.
    fn pays(&self) -> bool {
        if self.score.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let unspun = self.unspun.fetch_add(1, Ordering::Relaxed) + 1;
        if unspun >= PROBE {
            self.unspun.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    fn scored(&self, caught: bool) {
        let _ = (self.score).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |score| {
            Some(if caught {
                (score + CATCH).min(CEILING)
            } else {
                score.saturating_sub(1)
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(50);

    /// Not ready at a spin's first look; at the second, `catch`.
    fn second_look(catch: bool) -> impl FnMut() -> bool {
        let mut looks = 0;
        move || {
            looks += 1;
            looks > 1 && catch
        }
    }

    fn two_cpus() -> bool {
        std::thread::available_parallelism().map_or(1, usize::from) >= 2
    }

    #[test]
    fn a_spin_looks_until_ready_within_its_window() {
        if !two_cpus() {
            return;
        }
        // A window no preemption of this thread can outlast.
        let long = Spin::new(Duration::from_secs(60));
        let mut looks = 0;
        let spun = long.run(None, || {
            looks += 1;
            looks == 3
        });
        assert_eq!(spun, Spun::Caught);
        assert_eq!(looks, 3, "looked until ready");
        let score = long.score.load(Ordering::Relaxed);
        assert_eq!(long.run(None, || true), Spun::Ready, "ready at once");
        assert_eq!(long.score.load(Ordering::Relaxed), score, "not scored");
        let spin = Spin::new(WINDOW);
        let start = Instant::now();
        assert_eq!(spin.run(None, || false), Spun::Missed, "never ready");
        assert!(start.elapsed() >= WINDOW, "spun its window");
        assert_eq!(
            spin.run(Some(Duration::ZERO), || panic!("no time to look")),
            Spun::Not,
            "a wait with no time left does not spin"
        );
        let score = spin.score.load(Ordering::Relaxed);
        let short = Some(WINDOW / 5);
        assert_eq!(spin.run(short, || false), Spun::Missed);
        assert_eq!(
            spin.score.load(Ordering::Relaxed),
            score,
            "a spin its wait's limit cut short is not scored"
        );
        let off = Spin::new(Duration::ZERO);
        assert_eq!(off.run(None, || panic!("spinning is off")), Spun::Not);
    }

    #[test]
    fn spinning_stops_while_few_spins_catch_and_probes_bring_it_back() {
        if !two_cpus() {
            return;
        }
        let spin = Spin::new(Duration::from_micros(1));
        // One catch in five: the score falls (a probe's catch may still
        // hold it a little above zero).
        for i in 0..CEILING * 5 {
            spin.run(None, second_look(i % 5 == 0));
        }
        let score = spin.score.load(Ordering::Relaxed);
        assert!(score < CEILING / 4, "below the rate: {score}");
        // Misses alone take it to zero.
        for _ in 0..score {
            spin.run(None, || false);
        }
        assert_eq!(spin.score.load(Ordering::Relaxed), 0);
        let mut spins = 0;
        for _ in 0..PROBE * 4 {
            spins += u32::from(spin.run(None, || false) == Spun::Missed);
        }
        assert!(
            (4..=5).contains(&spins),
            "only every {PROBE}th wait spins: {spins} in {}",
            PROBE * 4
        );
        // A probe that catches puts spinning back.
        let mut probes = 0;
        while spin.run(None, second_look(true)) == Spun::Not {
            probes += 1;
            assert!(probes <= PROBE, "a probe came");
        }
        assert_eq!(
            spin.run(None, second_look(true)),
            Spun::Caught,
            "spinning again"
        );
        // One catch in three: it stays up.
        for i in 0..CEILING * 5 {
            spin.run(None, second_look(i % 3 == 0));
        }
        assert!(spin.score.load(Ordering::Relaxed) > 0, "above the rate");
    }
}
