//! What one ordinary user's control requests may take from sald's thread.
//!
//! sald answers its control clients and moves packets on one thread, so a
//! user who sends requests in a loop takes that thread from everyone: 8
//! connections asking for `Stats` as fast as it came (0.2 ms each) took a
//! bulk flow of another user from 285 to 57 MB/s and connects from 0.4 to
//! 32 ms, and a looping `ListRules` (70 ms each at 100,000 rules) from 722
//! to 2 MB/s. Each user's requests are therefore metered: the time a
//! request's task runs on the thread (every poll of it, not the time it
//! waits: reading and decoding the request, handling it, encoding and
//! writing the answer) is charged to its user at [`PACE`] + 1 times its length, against
//! a clock that pays it back in real time, and a user whose debt is more
//! than [`CREDIT`] ahead waits before its next request (or a listing's
//! next part) is served. A user who keeps the thread busy with requests
//! gets a quarter of it; one who asks now and then never waits. Root and sald's
//! own user (servd, operators) are not metered, nor are connects: each is
//! a flow within the user's share (`flows_per_uid`), and a client's
//! connection rate must be sald's, not a quarter of it.
//!
//! What a user's datagram sockets and flows send is its work on the thread
//! too: each message its program writes is a packet sald makes. Their
//! pumps (`pump`) take the messages in steps, each timed and charged to
//! the socket's owner through a [`Ration`], and wait for its ration before
//! the next: a user flooding its sockets gets its quarter of the thread
//! while others want it, not the thread (`benches/control_isolation.rs`,
//! "datagram flood"). `servalctl stats` counts the times a user's work
//! waited (`ration_waits`), idle turns included.
//!
//! For those steps the ration is work-conserving: a user in debt waits
//! only while the thread has other work. When it would go idle, the
//! runtime's park hook ([`thread_idle`], installed by `sald::runtime`)
//! gives the first waiting debtor a turn: one step of 16 messages, then
//! the next debtor's turn at the next idle moment, in the order they came
//! (one task per user, as in [`Rations::wait`]). Before it runs, a task
//! given a turn lets through whatever the runtime found ready meanwhile
//! (tokio looks at its timers and sockets right after the hook): others'
//! work that arrives during a debtor's step waits for that step, not for
//! the next. Waiting out its debt instead, a flooder alone on sald got a
//! quarter of the thread (25-37% of a core, with the runtime's own work)
//! while the rest sat idle; with idle turns, what the machine gives the
//! thread (42-97%, median 77%, on a busy two-core machine). That is CPU
//! the machine's other processes do not get: there, another user's
//! programs beside the flood waited for a core more often (its connects'
//! p99 went from about 1x to 1.2-6.4x of their baseline), as beside any
//! program that keeps a core busy (`benches/control_isolation.rs`,
//! "datagram flood"). Idle turns are charged like any work, and a user
//! given one owes at most [`AHEAD`] beyond its credit: what it ran up
//! while no one else wanted the thread is forgotten, so that once others
//! do, it waits at most about that long for its ration, and gets at least
//! its quarter (were it to get less, it would pay its debt back faster
//! than it runs it up, down to its credit). Charging them, rather than
//! not, keeps a flooder's own turns behind others' work where the thread
//! idles now and then: its debt stays up, and the turns it takes are the
//! idle ones.
//!
//! Requests get no idle turns: they wait out their debt. A turn cannot be
//! taken back once given, and one request or listing part may hold the
//! thread for milliseconds (a part of `ListRules` at 100,000 rules): given
//! every idle moment, a looping `ListRules` took 99% of the thread and
//! left another user's bulk flow 0.44x and its connects' p99 6.4x of
//! their baseline, where its quarter left 0.66-1.00x. A pump's step is
//! 16 short messages, tens of microseconds.
//!
//! An operator who would rather give an idle thread's CPU to the machine's
//! other programs than to a flooder turns idle turns off (`[limits]
//! idle_turns = false`): every debtor then waits out its debt, a hard
//! quarter of the thread, at the cost of a lone user's datagram rate.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A user's work is charged this many times over again, as rest.
pub const PACE: u32 = 3;
/// How far ahead of real time a user's charges may run before it waits.
pub const CREDIT: Duration = Duration::from_millis(20);
/// What a user given an idle turn may still owe beyond [`CREDIT`] (the
/// rest is forgotten; the turn's work is charged on top): once others want
/// the thread, it waits about this long at most for its ration.
pub const AHEAD: Duration = Duration::from_millis(100);
/// Users whose debt is paid are forgotten once this many are remembered.
const TIDY_AT: usize = 1024;

thread_local! {
    /// This thread's idle turns (see [`thread_idle`]): sald's runtime runs
    /// every task on the thread that parks it, so this is the runtime's.
    static IDLE: Arc<Idle> = Arc::default();
}

/// Lets the first indebted user's task waiting in [`Rations::wait`] run,
/// when sald's thread is about to park with nothing else to do: the
/// runtime's `on_thread_park` hook (`sald::runtime`). The runtime looks
/// for work again after the hook, so the task runs (one step, one
/// request or part) instead of the thread sleeping. Cheap, as it runs at
/// every park: a look at a counter, and a wake-up when someone waits;
/// nothing allocated but this thread's turns, once. Without the hook (a
/// runtime built otherwise, as in tests) indebted users wait for their
/// debt alone.
pub fn thread_idle() {
    let _ = IDLE.try_with(|idle| {
        if idle.waiting.load(Ordering::Relaxed) > 0 {
            idle.turns.notify_one();
        }
    });
}

/// The turns a thread gives waiting debtors when it would go idle, one a
/// turn, in the order they came.
#[derive(Debug, Default)]
struct Idle {
    turns: tokio::sync::Notify,
    /// Tasks waiting for a turn: none, no wake-up (a turn given when no one
    /// waits would be kept for the next to come, busy thread or not). A
    /// turn given to a task dropped before it took it goes to the next,
    /// or is kept the same way: a rare turn out of place, no more.
    waiting: AtomicUsize,
}

impl Idle {
    /// Waits for this thread's next idle turn.
    async fn turn(&self) {
        loop {
            let notified = self.turns.notified();
            tokio::pin!(notified);
            // A permit found here is a turn given to a task dropped before
            // it took it, with no one else waiting (`Notified`'s drop keeps
            // it): that idle moment is gone, and the thread may be busy
            // now. Not a turn; wait for the next.
            if notified.as_mut().enable() {
                continue;
            }
            let _counted = Waiting::new(&self.waiting);
            notified.await;
            return;
        }
    }
}

/// One task counted in [`Idle::waiting`] while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiting: &'a AtomicUsize) -> Waiting<'a> {
        waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One line of a user's waiting tasks (see [`Rations::wait`]).
type Line = Arc<tokio::sync::Mutex<()>>;

/// The users' debts: when each has paid for the work charged to it.
#[derive(Debug)]
pub struct Rations {
    /// Whether steps may take the thread's idle turns (`[limits]
    /// idle_turns`); without, every debtor waits out its debt.
    idle_turns: bool,
    paid_at: Mutex<HashMap<u32, Instant>>,
    /// Each indebted user's waiting tasks, in line (see [`Rations::wait`]):
    /// its requests in one, its steps that may take idle turns in another,
    /// so that a request waiting out the debt does not hold the user's
    /// steps back from the thread's idle turns.
    lines: Mutex<HashMap<(u32, bool), Line>>,
    /// The times a task found its user in debt and waited.
    waits: AtomicU64,
}

impl Default for Rations {
    fn default() -> Self {
        Rations::new(true)
    }
}

impl Rations {
    /// No one in debt yet; `idle_turns` says whether a pump's steps may
    /// take the thread's idle turns (the default) or wait out their debt
    /// as requests do, a hard cap (`[limits] idle_turns = false`).
    pub fn new(idle_turns: bool) -> Rations {
        Rations {
            idle_turns,
            paid_at: Mutex::default(),
            lines: Mutex::default(),
            waits: AtomicU64::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Instant>> {
        self.paid_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `uid` may have the thread again: at once for a user not
    /// in debt beyond [`CREDIT`], and for privileged ones; for an indebted
    /// one, until its debt is paid (a request's wait; see [`Ration::step`]
    /// for work that may take idle turns too).
    ///
    /// An indebted user's tasks wait in line: only the first waits, and
    /// the next one looks once the one before it has run (its work is
    /// charged by the end of the poll that returned from here). Sleeping
    /// each on its own, a user's tasks that waited for the same debt woke
    /// together and all ran in one go: 120 waiting drains over 4,096
    /// listeners held the thread at once, and connects' p99 went to
    /// 14-25 ms (`benches/control_isolation.rs`).
    pub async fn wait(&self, uid: u32, privileged: bool) {
        self.wait_for(uid, privileged, false).await;
    }

    /// [`Rations::wait`], for work that may also take the thread's idle
    /// turns (`idle_turns`): only work in short steps, a pump's batch of
    /// messages (see the module docs).
    async fn wait_for(&self, uid: u32, privileged: bool, idle_turns: bool) {
        let idle_turns = idle_turns && self.idle_turns;
        if privileged || self.ready_at(uid).is_none() {
            return;
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        let line = {
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() >= TIDY_AT {
                lines.retain(|_, line| Arc::strong_count(line) > 1);
            }
            lines.entry((uid, idle_turns)).or_default().clone()
        };
        let _turn = line.lock().await;
        // (A thread being torn down has no turns to give.)
        let idle = IDLE.try_with(Arc::clone).unwrap_or_default();
        while let Some(start) = self.ready_at(uid) {
            if !idle_turns {
                tokio::time::sleep_until(start.into()).await;
                continue;
            }
            tokio::select! {
                // An idle turn taken is not given up for the sleep.
                biased;
                () = idle.turn() => {
                    self.forgive(uid);
                    // Work that came in while the thread was parking (the
                    // runtime looks for it right after the turn is given)
                    // goes first: this task goes on once it has run.
                    tokio::task::yield_now().await;
                    return;
                }
                () = tokio::time::sleep_until(start.into()) => {}
            }
        }
    }

    /// Forgets what `uid` owes beyond [`AHEAD`] past its credit, as it is
    /// let go on an idle turn (see the module docs).
    fn forgive(&self, uid: u32) {
        let most = Instant::now() + CREDIT + AHEAD;
        if let Some(paid_at) = self.lock().get_mut(&uid) {
            *paid_at = (*paid_at).min(most);
        }
    }

    /// When `uid` may have the thread again, if not now.
    fn ready_at(&self, uid: u32) -> Option<Instant> {
        let paid_at = self.lock().get(&uid).copied()?;
        paid_at
            .checked_sub(CREDIT)
            .filter(|&start| start > Instant::now())
    }

    /// `uid` used the thread for `worked`.
    fn charge(&self, uid: u32, worked: Duration) {
        let now = Instant::now();
        let mut paid_at = self.lock();
        if paid_at.len() >= TIDY_AT {
            paid_at.retain(|_, at| *at > now);
        }
        let at = paid_at.entry(uid).or_insert(now);
        *at = (*at).max(now) + worked * (PACE + 1);
    }

    /// Charges `uid` for `worked` done on its behalf off the thread (not if
    /// `privileged`): what it would have cost on the thread, it costs.
    pub fn charge_for(&self, uid: u32, privileged: bool, worked: Duration) {
        if !privileged {
            self.charge(uid, worked);
        }
    }

    /// `work`, charged to `uid` as it runs (not metered if `privileged`).
    pub fn meter<F: Future>(self: &Arc<Self>, uid: u32, privileged: bool, work: F) -> Metered<F> {
        Metered {
            work: Box::pin(work),
            charged: (!privileged).then(|| (self.clone(), uid)),
        }
    }

    /// `uid`'s ration, for a task that works on its behalf in steps (see
    /// [`Ration::step`]).
    pub fn ration(self: &Arc<Self>, uid: u32, privileged: bool) -> Ration {
        Ration {
            rations: self.clone(),
            uid,
            privileged,
        }
    }

    /// The times a task found its user in debt and waited (see
    /// [`Rations::wait`]), for `servalctl stats` (`ration_waits`).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

/// One user's share of the thread, held by a task that works on its
/// behalf outside its requests: a datagram pump, which sends what the
/// user's program writes (see `pump`).
#[derive(Debug, Clone)]
pub struct Ration {
    rations: Arc<Rations>,
    uid: u32,
    privileged: bool,
}

impl Ration {
    /// Runs `work` (one step of the user's, a batch of its messages) once
    /// the user may have the thread, and charges it the time its polls
    /// took: one look at the ration and one charge per step, whatever the
    /// step's length (nothing for a privileged user). A step that waits
    /// midway (for the program to write more) is charged when it ends:
    /// until then what it did runs on credit, a batch at most.
    pub async fn step<F: Future>(&self, work: F) -> F::Output {
        self.rations.wait_for(self.uid, self.privileged, true).await;
        let (output, worked) = Timed::new(work).await;
        self.rations.charge_for(self.uid, self.privileged, worked);
        output
    }
}

/// A future that sums the time its polls take (the thread's time it
/// used), for work whose user is known, or found exempt, only once it is
/// done (a request's reading: see `control::client`).
pub struct Timed<F> {
    work: Pin<Box<F>>,
    spent: Duration,
}

impl<F: Future> Timed<F> {
    /// `work`, timed.
    pub fn new(work: F) -> Timed<F> {
        Timed {
            work: Box::pin(work),
            spent: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = (F::Output, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let started = Instant::now();
        let polled = self.work.as_mut().poll(cx);
        self.spent += started.elapsed();
        polled.map(|output| (output, self.spent))
    }
}

/// A future whose polls are charged to a user (see [`Rations::meter`]).
pub struct Metered<F> {
    work: Pin<Box<F>>,
    charged: Option<(Arc<Rations>, u32)>,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let polled = self.work.as_mut().poll(cx);
        if let Some((rations, uid)) = &self.charged {
            rations.charge(*uid, started.elapsed());
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another user's work, ready all along from `started` for `time`:
    /// the thread never goes idle meanwhile.
    async fn busy_for(started: Instant, time: Duration) {
        while started.elapsed() < time {
            std::thread::sleep(Duration::from_millis(1));
            tokio::task::yield_now().await;
        }
    }

    // `#[tokio::test]` runtimes have no park hook: a debtor there waits
    // out its debt, as on a thread that is never idle. The tests of idle
    // turns run on sald's own runtime (`crate::runtime`).

    #[tokio::test]
    async fn a_busy_user_waits_for_a_quarter_of_the_thread_and_root_never() {
        let rations = Arc::new(Rations::default());
        // Within the credit: no wait.
        rations.charge(1000, Duration::from_millis(4));
        rations.wait(1000, false).await;
        assert_eq!(rations.waits(), 0);
        // 40 ms of work owes 160 ms: served again about 140 ms on (the
        // credit being 20).
        rations.charge(1000, Duration::from_millis(36));
        let started = Instant::now();
        rations.wait(1000, false).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(120) && waited <= Duration::from_secs(1),
            "{waited:?}"
        );
        assert_eq!(rations.waits(), 1);
        // Others, and root, are not held up by that user's debt.
        rations.charge(1000, Duration::from_secs(1));
        rations.wait(1001, false).await;
        rations.wait(1000, true).await;
        assert_eq!(rations.waits(), 1);
    }

    #[test]
    fn an_indebted_user_takes_the_thread_s_idle_turns() {
        crate::runtime().unwrap().block_on(async {
            let rations = Arc::new(Rations::default());
            // 4 s owed: without the idle turns, a 4 s wait.
            rations.charge(1000, Duration::from_secs(1));
            let started = Instant::now();
            let waiter = rations.clone();
            tokio::spawn(async move { waiter.wait_for(1000, false, true).await })
                .await
                .unwrap();
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(2), "{waited:?}");
            assert_eq!(rations.waits(), 1);
            // What it owed beyond its credit and AHEAD is forgotten.
            let owed = rations.lock()[&1000].saturating_duration_since(Instant::now());
            assert!(owed > CREDIT && owed <= CREDIT + AHEAD, "{owed:?}");
        });
    }

    #[test]
    fn without_idle_turns_a_step_waits_out_its_debt_even_on_an_idle_thread() {
        // With idle turns, a step on this idle thread would go at once
        // (the test above).
        let waited = idle_thread_wait(Rations::new(false), true);
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
    }

    /// How long a task of a user owing 400 ms (380 beyond the credit)
    /// waits on sald's idle runtime: a pump's `step`, or a request.
    fn idle_thread_wait(rations: Rations, step: bool) -> Duration {
        crate::runtime().unwrap().block_on(async {
            let rations = Arc::new(rations);
            rations.charge(1000, Duration::from_millis(100));
            let started = Instant::now();
            tokio::spawn(async move { rations.wait_for(1000, false, step).await })
                .await
                .unwrap();
            started.elapsed()
        })
    }

    #[test]
    fn a_step_takes_an_idle_turn_while_its_user_s_request_waits_out_its_debt() {
        crate::runtime().unwrap().block_on(async {
            let rations = Arc::new(Rations::default());
            // 400 ms owed. A request (servalctl stats, say) waits them out;
            // the same user's pump step, on an idle thread, need not.
            rations.charge(1000, Duration::from_millis(100));
            let waiter = rations.clone();
            let request = tokio::spawn(async move { waiter.wait(1000, false).await });
            tokio::task::yield_now().await;
            let started = Instant::now();
            let waiter = rations.clone();
            tokio::spawn(async move { waiter.wait_for(1000, false, true).await })
                .await
                .unwrap();
            let waited = started.elapsed();
            request.await.unwrap();
            assert!(
                waited < Duration::from_millis(250),
                "the step waited {waited:?}"
            );
        });
    }

    #[test]
    fn a_request_waits_out_its_debt_even_on_an_idle_thread() {
        // A request waits its debt out, idle thread or not (a listing part
        // may hold the thread for milliseconds: only short steps take idle
        // turns).
        let waited = idle_thread_wait(Rations::default(), false);
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
    }

    #[test]
    fn while_the_thread_is_busy_a_debtor_waits_for_its_ration() {
        crate::runtime().unwrap().block_on(async {
            let rations = Arc::new(Rations::default());
            // 40 s owed, most of it forgotten at the first idle turn.
            rations.charge(1000, Duration::from_secs(10));
            let waiter = rations.clone();
            tokio::spawn(async move { waiter.wait_for(1000, false, true).await })
                .await
                .unwrap();
            // Another user's work, ready all along for half a second.
            let started = Instant::now();
            let busy = tokio::spawn(busy_for(started, Duration::from_millis(500)));
            let waiter = rations.clone();
            let waited = tokio::spawn(async move {
                waiter.wait_for(1000, false, true).await;
                started.elapsed()
            });
            let waited = waited.await.unwrap();
            // No idle turn: it waited for its debt, about AHEAD (from
            // CREDIT + AHEAD ahead down to CREDIT), not the 40 s.
            assert!(
                waited >= AHEAD - Duration::from_millis(30) && waited < Duration::from_secs(2),
                "{waited:?}"
            );
            busy.await.unwrap();
        });
    }

    #[test]
    fn work_that_is_ready_goes_before_each_idle_turn() {
        crate::runtime().unwrap().block_on(async {
            const STEP: Duration = Duration::from_millis(10);
            let rations = Arc::new(Rations::default());
            let started = Instant::now();
            let steps = Arc::new(Mutex::new(Vec::new()));
            // Two users deep in debt, taking idle turns for steps that
            // hold the thread.
            let debtors: Vec<_> = [1000, 1001]
                .into_iter()
                .map(|uid| {
                    rations.charge(uid, Duration::from_secs(10));
                    let (rations, steps) = (rations.clone(), steps.clone());
                    tokio::spawn(async move {
                        loop {
                            rations.wait_for(uid, false, true).await;
                            steps.lock().unwrap().push(started.elapsed());
                            std::thread::sleep(STEP);
                            rations.charge(uid, STEP);
                        }
                    })
                })
                .collect();
            // Another task's timers, each due in the middle of a step
            // (of either debtor: the turns go to each in turn).
            let dues = [15, 25, 35, 45].map(Duration::from_millis);
            let ran = tokio::spawn(async move {
                let mut ran = Vec::new();
                for due in dues {
                    tokio::time::sleep_until((started + due).into()).await;
                    ran.push(started.elapsed());
                }
                ran
            })
            .await
            .unwrap();
            for debtor in debtors {
                debtor.abort();
            }
            // Once one was due (the timer rounds up to the next
            // millisecond), no debtor's step began before the task ran:
            // neither the turn given as the thread parked (before the
            // runtime looked at its timers) nor another debtor's turn
            // given at the same time.
            let steps = steps.lock().unwrap().clone();
            for (due, ran) in dues.into_iter().zip(ran) {
                let due = due + Duration::from_millis(2);
                assert!(
                    steps.iter().all(|&at| at <= due || at >= ran),
                    "steps at {steps:?}, due at {due:?}, ran at {ran:?}"
                );
            }
            assert!(steps.len() >= 4, "{steps:?}");
        });
    }

    #[test]
    fn a_turn_given_to_a_task_dropped_before_it_ran_is_not_kept_for_a_busy_moment() {
        crate::runtime().unwrap().block_on(async {
            let rations = Arc::new(Rations::default());
            rations.charge(1000, Duration::from_secs(10));
            rations.charge(1001, Duration::from_secs(10));
            let waiter = rations.clone();
            let a = tokio::spawn(async move { waiter.wait_for(1000, false, true).await });
            // Let `a` wait for a turn.
            tokio::task::yield_now().await;
            // A timer that the runtime finds due right after the hook gave
            // `a` its turn: this future runs first and drops `a` (as a
            // pump's select! drops its `up` when `down` or shutdown ends).
            let due = tokio::time::sleep(Duration::from_millis(1));
            tokio::pin!(due);
            std::thread::sleep(Duration::from_millis(3));
            due.await;
            a.abort();
            let _ = a.await;
            // The thread is busy from now on for 300 ms.
            let started = Instant::now();
            let busy = tokio::spawn(busy_for(started, Duration::from_millis(300)));
            let waiter = rations.clone();
            let waited = tokio::spawn(async move {
                waiter.wait_for(1001, false, true).await;
                started.elapsed()
            })
            .await
            .unwrap();
            busy.await.unwrap();
            assert!(
                waited >= Duration::from_millis(250),
                "another debtor passed at {waited:?} on a busy thread"
            );
        });
    }

    #[tokio::test]
    async fn a_user_s_waiting_tasks_go_one_at_a_time() {
        let rations = Arc::new(Rations::default());
        // 40 ms owed, 20 ms beyond the credit.
        rations.charge(1000, Duration::from_millis(10));
        let started = Instant::now();
        let passed = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (rations, passed) = (rations.clone(), passed.clone());
                tokio::spawn(async move {
                    rations.wait(1000, false).await;
                    passed.lock().unwrap().push(started.elapsed());
                    // Its work, charged before anyone else looks.
                    rations.charge(1000, Duration::from_millis(10));
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // Each one's 40 ms put the next 20 ms beyond the credit again:
        // they pass about 20 ms apart, not together.
        let passed = passed.lock().unwrap().clone();
        for pair in passed.windows(2) {
            assert!(pair[1] >= pair[0] + Duration::from_millis(15), "{passed:?}");
        }
    }

    #[tokio::test]
    async fn timed_work_counts_the_thread_s_time_not_the_wait() {
        let ((), busy) = Timed::new(async { std::thread::sleep(Duration::from_millis(10)) }).await;
        assert!(busy >= Duration::from_millis(10), "{busy:?}");
        let ((), waiting) = Timed::new(tokio::time::sleep(Duration::from_millis(50))).await;
        assert!(waiting < Duration::from_millis(10), "{waiting:?}");
        // Charged as the caller decides: not for a privileged user.
        let rations = Rations::default();
        rations.charge_for(1000, true, busy);
        assert!(rations.lock().is_empty());
        rations.charge_for(1000, false, busy);
        assert!(rations.lock().contains_key(&1000));
    }

    #[tokio::test]
    async fn a_ration_s_steps_are_charged_and_wait_only_when_ordinary() {
        let rations = Arc::new(Rations::default());
        let busy = || async { std::thread::sleep(Duration::from_millis(30)) };
        rations.ration(0, true).step(busy()).await;
        assert!(rations.lock().is_empty(), "root is not charged");
        // 30 ms of work owes 120 ms: the next step waits about 100 ms.
        let ration = rations.ration(1000, false);
        ration.step(busy()).await;
        assert_eq!(rations.waits(), 0);
        let started = Instant::now();
        ration.step(async {}).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert_eq!(rations.waits(), 1);
    }

    #[tokio::test]
    async fn metered_work_is_charged_to_its_user_only_when_ordinary() {
        let rations = Arc::new(Rations::default());
        let busy = || async { std::thread::sleep(Duration::from_millis(10)) };
        rations.meter(0, true, busy()).await;
        assert!(rations.lock().is_empty(), "root is not metered");
        rations.meter(1000, false, busy()).await;
        let paid_at = rations.lock()[&1000];
        assert!(
            paid_at >= Instant::now() + Duration::from_millis(25),
            "{paid_at:?}"
        );
    }
}
