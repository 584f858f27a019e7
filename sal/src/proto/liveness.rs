//! Whether a flow's path still works, judged from the peer's silence.
//!
//! A path can die without anyone saying so (a Wi-Fi access point out of
//! range, a NAT that forgot us). The only evidence is silence, and silence
//! means something only when the peer had a reason to speak: when this end
//! is waiting for an answer (data or a control message in flight), a peer
//! silent for `liveness_timeout` is taken as a dead path and the flow moves.
//! An idle flow gives its peer no reason to speak, so after `idle_probe` of
//! silence it asks (a probe), which turns the idle case into the waiting one.
//!
//! One piece of evidence is not silence: a packet of ours that the peer's
//! locator refused (an ICMP port unreachable: nobody receives there, its
//! program killed outright). The peer is then gone unless it is heard, or
//! sends an RSYN from where it moved, within [`REFUSED_GRACE`].
//!
//! Silence is counted from when the peer was last heard or, if later, from
//! when this end first asked something after that: a flow that sends after a
//! long quiet spell gives its peer a full timeout to answer.
//!
//! A flow that waits may also have given its peer nothing to answer: on a
//! lossy path the segment it waits on may be lost, and TCP then stays
//! silent until its retransmission timeout, which is the round trip plus
//! 200 ms at least and doubles with each timeout in a row (a second copy
//! lost, or a timeout not yet undone by a fresh round-trip sample), past
//! `liveness_timeout` after a few.
//! Taken for a dead path, such a wait moved flows back and forth on paths
//! that worked. So where a verdict could move the flow (somewhere else to
//! go), a flow silent for half the timeout asks itself ([`Verdict::Doubt`]:
//! a probe, an RSYN from where it is, which the peer answers at once and
//! which is sent again after the control timeout; an RSYN already in
//! flight, a move or an idle probe, serves), and the path is dead only if
//! that went unanswered for the rest of the timeout too. The probe is part
//! of the wait it doubts: it gives the peer no new timeout. A
//! dead path is found as fast as before (the probe is sent within the
//! timeout, not after it); a live one is taken for dead only if its probe
//! and the probe's retransmission, or their answers, are lost as well. The
//! probe must be answerable in half the timeout: `liveness_timeout` must be
//! more than twice the path's round trip (queues included).
//!
//! This type only keeps the instants and gives verdicts; the host arms
//! one [`Timer::Liveness`](super::timer::Timer) per flow from
//! [`Liveness::next_check`] and acts on [`Liveness::check`] when it fires.
//! Those deadlines are coalesced onto a coarse grid ([`on_tick`]): a
//! verdict is at most one tick late, which nobody can tell from network
//! jitter, and flows whose deadlines fall in one tick share one wakeup.

use smoltcp::time::{Duration, Instant};

/// The grid liveness deadlines are rounded up to.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// The first tick of the liveness grid at or after `at`.
pub(super) fn on_tick(at: Instant) -> Instant {
    let tick = TICK.total_micros() as i64;
    let micros = at.total_micros();
    Instant::from_micros(micros + (tick - micros.rem_euclid(tick)) % tick)
}

/// What the silence of the peer means now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Waiting for an answer that has not come for the whole timeout (and,
    /// where the flow probes, for a probe sent half a timeout before).
    Silent,
    /// Waiting for half the timeout, and not yet asked again: probe the
    /// path, so that its silence then means the path and not a lost packet.
    Doubt,
    /// Nothing in flight, and nothing heard for the idle-probe period.
    Idle,
    /// Nothing to do yet.
    Alive,
}

/// The liveness timing of one flow. See the module docs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Liveness {
    /// When the peer was last heard on this flow.
    heard: Instant,
    /// When this end first sent something expecting an answer since then.
    asked: Option<Instant>,
    /// When this end started waiting for an answer that has not come:
    /// unlike `asked`, moves and probes do not restart it, so that a peer
    /// that is gone for good is given up on (see [`Liveness::gone`]).
    waiting_since: Option<Instant>,
    /// When this end probed its path in the present silence (see
    /// [`Verdict::Doubt`]).
    probed: Option<Instant>,
    /// The peer answered that probe (a control message), and the transport
    /// still waits: the path carries small packets, and its transport gets
    /// half a timeout from the answer to show that it carries its own (a
    /// path-MTU black hole, or a policer dropping bulk data, answers
    /// probes and nothing else).
    answered: bool,
    /// When a packet of ours to the peer's locator first came back
    /// refused (nobody receives there: its program gone) since the peer
    /// was last heard (or sent an RSYN: [`Liveness::peer_alive`]). Our
    /// own moves and [`Liveness::restart`] keep it: they say nothing of
    /// the peer.
    refused: Option<Instant>,
}

/// How long a peer whose locator refused our packets has to be heard from
/// before it is taken as gone ([`Liveness::refused`]). A peer that moved
/// (a program that handed its flows to its sald at `exec`) sends its RSYN
/// from the new locator as it moves, which clears the refusal
/// ([`Liveness::peer_alive`]; the RSYN is resent after 500 ms if lost),
/// and refusals of the old locator are not believed while the flow
/// checks the new one (`Host::refusal`); one whose program died
/// says nothing.
pub(super) const REFUSED_GRACE: Duration = Duration::from_secs(1);

impl Liveness {
    /// A flow that has just heard from (or about) its peer.
    pub fn new(now: Instant) -> Liveness {
        Liveness {
            heard: now,
            asked: None,
            waiting_since: None,
            probed: None,
            answered: false,
            refused: None,
        }
    }

    /// When the peer was last heard.
    pub fn last_heard(&self) -> Instant {
        self.heard
    }

    /// The peer spoke.
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
        self.asked = None;
        self.waiting_since = None;
        self.probed = None;
        self.answered = false;
        self.refused = None;
    }

    /// The peer spoke with a control message only (no transport evidence).
    /// Outside a doubt, as [`Liveness::heard`]. In one, the answer to the
    /// probe: the path is up, but what the transport waits on is still
    /// unanswered; no new probe, and the path is dead if the transport
    /// stays silent for half a timeout more (see `answered`). The peer
    /// timeout keeps counting.
    pub fn answered(&mut self, now: Instant) {
        if self.probed.is_none() {
            return self.heard(now);
        }
        self.heard = now;
        self.asked = None;
        self.answered = true;
        self.refused = None;
    }

    /// A packet of ours to the peer's locator came back refused: unless
    /// the peer is heard by [`Liveness::refused_until`], it is gone (see
    /// [`Liveness::refused_for`]). Later refusals do not move it.
    pub fn refused(&mut self, now: Instant) {
        self.refused.get_or_insert(now);
    }

    /// The peer's program is known to live (an RSYN with its nonce, from
    /// wherever it moved): a refusal of its old locator means nothing.
    pub fn peer_alive(&mut self) {
        self.refused = None;
    }

    /// When a refusal of the peer's locator, if one is counting, turns
    /// into the peer taken as gone.
    pub fn refused_until(&self) -> Option<Instant> {
        self.refused.map(|at| at + REFUSED_GRACE)
    }

    /// Whether the peer's locator refused our packets [`REFUSED_GRACE`]
    /// ago or more, and the peer has not been heard since.
    pub fn refused_for(&self, now: Instant) -> bool {
        self.refused_until().is_some_and(|until| now >= until)
    }

    /// Whether a probe of the present silence is out or was answered.
    pub fn doubting(&self) -> bool {
        self.probed.is_some()
    }

    /// This end sent something that expects an answer. Returns whether this
    /// starts a wait (the liveness timer must then be armed from
    /// [`Liveness::next_check`]); `false` if a wait was already counting.
    /// A probe sent on a [`Verdict::Doubt`] is part of the wait it doubts,
    /// which counts from when the peer was last heard: it gives the peer no
    /// new timeout.
    pub fn asked(&mut self, now: Instant) -> bool {
        if self.asked.is_some() {
            return false;
        }
        let since = if self.probed.is_some() {
            self.heard
        } else {
            now
        };
        self.asked = Some(since);
        self.waiting_since.get_or_insert(since);
        true
    }

    /// This end probes its path on a [`Verdict::Doubt`] (or has a probe or
    /// move in flight, which asks as well): call before sending the probe.
    pub fn probed(&mut self, now: Instant) {
        self.probed = Some(now);
    }

    /// Whether a peer that has not answered for `peer_timeout` while this
    /// end was `waiting` must be taken as gone, whatever moves and probes
    /// were tried meanwhile.
    pub fn gone(&self, now: Instant, waiting: bool, peer_timeout: Duration) -> bool {
        waiting
            && self
                .waiting_since
                .is_some_and(|since| now >= since + peer_timeout)
    }

    /// When [`Liveness::gone`] may turn true, if a wait is counting.
    pub fn gone_at(&self, peer_timeout: Duration) -> Option<Instant> {
        self.waiting_since.map(|since| since + peer_timeout)
    }

    /// Counts silence afresh from `now` (the flow just moved, or probed its
    /// idle path: hearing nothing before is not yet a reason to act again).
    pub fn restart(&mut self, now: Instant) {
        self.heard = self.heard.max(now);
        self.asked = None;
        self.probed = None;
        self.answered = false;
    }

    /// Since when the peer has failed to answer.
    fn silent_since(&self) -> Instant {
        self.asked.map_or(self.heard, |asked| asked.max(self.heard))
    }

    /// When a waiting flow's verdict next changes: the doubt halfway
    /// through the timeout if it `probes` and has not probed yet, else the
    /// end of the timeout. A probe sent on the doubt's tick (when the timer
    /// fires) leaves the verdict at the end of the timeout; one sent later
    /// (somewhere else to go appeared only then, say) gets half a timeout
    /// from when it went.
    fn wait_ends(&self, timeout: Duration, probes: bool) -> Instant {
        let since = self.silent_since();
        let half = timeout / 2;
        if probes && self.answered {
            return since + half;
        }
        match (probes, self.probed) {
            (true, None) => since + half,
            (true, Some(probed)) if probed > on_tick(since + half) => probed + half,
            _ => since + timeout,
        }
    }

    /// The verdict at `now`, given whether this end is `waiting` for an
    /// answer (control messages or transport data in flight) and whether it
    /// `probes` a silent path before it gives up on it (it has somewhere
    /// else to go).
    pub fn check(
        &self,
        now: Instant,
        waiting: bool,
        timeout: Duration,
        idle_probe: Option<Duration>,
        probes: bool,
    ) -> Verdict {
        if waiting {
            if now >= self.wait_ends(timeout, probes) {
                return match (probes, self.probed) {
                    (true, None) => Verdict::Doubt,
                    _ => Verdict::Silent,
                };
            }
        } else if idle_probe.is_some_and(|after| now >= self.heard + after) {
            return Verdict::Idle;
        }
        Verdict::Alive
    }

    /// When the verdict may next change, absent news: the doubt or the
    /// timeout of a wait, or the end of an idle period (never at or before
    /// `now`: a verdict acted on without effect is looked at again a period
    /// later). `None` if only a new wait ([`Liveness::asked`]) could change
    /// it.
    pub fn next_check(
        &self,
        now: Instant,
        waiting: bool,
        timeout: Duration,
        idle_probe: Option<Duration>,
        probes: bool,
    ) -> Option<Instant> {
        let (at, period) = if waiting {
            (self.wait_ends(timeout, probes), timeout)
        } else {
            let period = idle_probe?;
            (self.heard + period, period)
        };
        Some(if at > now { at } else { now + period })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms as i64)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    const TIMEOUT: u64 = 1500;
    const IDLE: Option<Duration> = Some(Duration::from_secs(10));

    /// The verdict of a flow with nowhere else to go (it does not probe).
    fn check(l: &Liveness, now: u64, waiting: bool) -> Verdict {
        l.check(at(now), waiting, ms(TIMEOUT), IDLE, false)
    }

    /// The verdict of a flow with somewhere else to go (it probes).
    fn check_probing(l: &Liveness, now: u64) -> Verdict {
        l.check(at(now), true, ms(TIMEOUT), IDLE, true)
    }

    #[test]
    fn a_wait_unanswered_for_the_timeout_is_silence() {
        let mut l = Liveness::new(at(0));
        assert!(l.asked(at(100)));
        assert!(!l.asked(at(200)), "already counting");
        assert_eq!(
            l.next_check(at(100), true, ms(TIMEOUT), IDLE, false),
            Some(at(1600))
        );
        assert_eq!(check(&l, 1599, true), Verdict::Alive);
        assert_eq!(check(&l, 1600, true), Verdict::Silent);
        // Each answer pushes the verdict back.
        l.heard(at(1000));
        assert_eq!(check(&l, 1600, true), Verdict::Alive);
        assert_eq!(
            l.next_check(at(1600), true, ms(TIMEOUT), IDLE, false),
            Some(at(2500))
        );
    }

    #[test]
    fn sending_after_a_quiet_spell_gives_the_peer_a_full_timeout() {
        let mut l = Liveness::new(at(0));
        // Heard at 0, quiet until 5 s, then data goes out.
        assert!(l.asked(at(5000)));
        assert_eq!(check(&l, 5100, true), Verdict::Alive);
        assert_eq!(check(&l, 6500, true), Verdict::Silent);
    }

    #[test]
    fn a_flow_with_somewhere_to_go_probes_halfway_and_gives_up_only_on_the_probe() {
        let mut l = Liveness::new(at(0));
        l.asked(at(100));
        // Halfway through the timeout: doubt, and the next look then.
        assert_eq!(check_probing(&l, 849), Verdict::Alive);
        assert_eq!(
            l.next_check(at(100), true, ms(TIMEOUT), IDLE, true),
            Some(at(850))
        );
        assert_eq!(check_probing(&l, 850), Verdict::Doubt);
        // The timeout alone is no verdict: the path was not asked again.
        assert_eq!(check_probing(&l, 5000), Verdict::Doubt);
        // Probed on the doubt's tick: the verdict stays where the timeout
        // puts it.
        l.probed(at(900));
        assert_eq!(
            l.next_check(at(900), true, ms(TIMEOUT), IDLE, true),
            Some(at(1600))
        );
        assert_eq!(check_probing(&l, 1599), Verdict::Alive);
        assert_eq!(check_probing(&l, 1600), Verdict::Silent);
    }

    #[test]
    fn a_probe_gives_the_peer_no_new_timeout() {
        // Data went out before the peer was last heard, at 100; nothing
        // since: the wait counts from 100, and the probe does not move it.
        let mut l = Liveness::new(at(100));
        assert_eq!(check_probing(&l, 850), Verdict::Doubt);
        l.probed(at(900));
        assert!(l.asked(at(900)), "the probe starts the wait");
        assert_eq!(check_probing(&l, 1599), Verdict::Alive);
        assert_eq!(check_probing(&l, 1600), Verdict::Silent);
        // The peer timeout counts from then too.
        assert_eq!(l.gone_at(Duration::from_secs(30)), Some(at(30_100)));
    }

    #[test]
    fn an_answered_probe_starts_the_count_again() {
        let mut l = Liveness::new(at(0));
        l.asked(at(0));
        l.probed(at(800));
        // The probe's answer: the peer is there, whatever TCP waits for.
        l.heard(at(850));
        assert_eq!(check_probing(&l, 1500), Verdict::Alive);
        assert_eq!(check_probing(&l, 1600), Verdict::Doubt, "a new doubt");
        // A move (or an idle probe) restarts the count, and the doubt.
        l.probed(at(1600));
        l.restart(at(2000));
        assert_eq!(check_probing(&l, 2749), Verdict::Alive);
        assert_eq!(check_probing(&l, 2750), Verdict::Doubt);
    }

    #[test]
    fn an_answered_probe_without_transport_progress_does_not_keep_a_path() {
        // Data out at 0; the probe at 750 is answered at 760, and nothing
        // of the transport's comes: dead at 760 + 750, no second probe.
        let mut l = Liveness::new(at(0));
        l.asked(at(0));
        assert_eq!(check_probing(&l, 750), Verdict::Doubt);
        l.probed(at(800));
        l.answered(at(810));
        assert_eq!(check_probing(&l, 1559), Verdict::Alive);
        assert_eq!(check_probing(&l, 1560), Verdict::Silent);
        // The peer timeout still counts from the data.
        assert_eq!(l.gone_at(Duration::from_secs(30)), Some(at(30_000)));
        // Transport evidence clears the doubt.
        l.heard(at(1000));
        assert_eq!(check_probing(&l, 1749), Verdict::Alive);
        assert_eq!(check_probing(&l, 1750), Verdict::Doubt);
    }

    #[test]
    fn a_late_probe_gets_half_a_timeout() {
        let mut l = Liveness::new(at(0));
        l.asked(at(0));
        // Somewhere else to go appeared only at 3 s: the probe goes then.
        assert_eq!(check_probing(&l, 3000), Verdict::Doubt);
        l.probed(at(3000));
        assert_eq!(check_probing(&l, 3749), Verdict::Alive);
        assert_eq!(check_probing(&l, 3750), Verdict::Silent);
        assert_eq!(
            l.next_check(at(3000), true, ms(TIMEOUT), IDLE, true),
            Some(at(3750))
        );
    }

    #[test]
    fn an_idle_flow_is_probed_after_the_idle_period_only() {
        let mut l = Liveness::new(at(0));
        assert_eq!(check(&l, 9999, false), Verdict::Alive);
        assert_eq!(check(&l, 10_000, false), Verdict::Idle);
        assert_eq!(
            l.check(at(60_000), false, ms(TIMEOUT), None, true),
            Verdict::Alive,
            "probing off"
        );
        assert_eq!(l.next_check(at(0), false, ms(TIMEOUT), None, true), None);
        assert_eq!(
            l.next_check(at(300), false, ms(TIMEOUT), IDLE, true),
            Some(at(10_000))
        );
        // A probe is a question: from then on it is a wait.
        l.restart(at(10_000));
        l.asked(at(10_000));
        assert_eq!(check(&l, 11_499, true), Verdict::Alive);
        assert_eq!(check(&l, 11_500, true), Verdict::Silent);
    }

    #[test]
    fn a_verdict_without_effect_is_looked_at_a_period_later() {
        let l = Liveness::new(at(0));
        // Idle for 30 s with nowhere to probe: next look in one period,
        // not at once.
        assert_eq!(
            l.next_check(at(30_000), false, ms(TIMEOUT), IDLE, true),
            Some(at(40_000))
        );
    }

    #[test]
    fn deadlines_round_up_to_the_tick() {
        assert_eq!(on_tick(at(0)), at(0));
        assert_eq!(on_tick(at(100)), at(100));
        assert_eq!(on_tick(Instant::from_micros(100_001)), at(200));
        assert_eq!(on_tick(at(1549)), at(1600));
        assert_eq!(on_tick(Instant::from_micros(-1)), at(0));
    }

    #[test]
    fn a_peer_silent_through_moves_and_probes_is_gone_after_the_peer_timeout() {
        let peer_timeout = Duration::from_secs(30);
        let mut l = Liveness::new(at(0));
        assert!(!l.gone(at(100_000), true, peer_timeout), "never asked");
        l.asked(at(1000));
        // Moves restart the silence the path verdict counts, not this.
        l.restart(at(5000));
        l.asked(at(5000));
        assert_eq!(l.gone_at(peer_timeout), Some(at(31_000)));
        assert!(!l.gone(at(30_999), true, peer_timeout));
        assert!(l.gone(at(31_000), true, peer_timeout));
        assert!(
            !l.gone(at(31_000), false, peer_timeout),
            "no longer waiting"
        );
        l.heard(at(31_000));
        assert!(!l.gone(at(90_000), true, peer_timeout), "the peer answered");
    }

    #[test]
    fn restart_never_moves_the_clock_back() {
        let mut l = Liveness::new(at(5000));
        l.restart(at(4000));
        assert_eq!(check(&l, 14_999, false), Verdict::Alive);
        assert_eq!(check(&l, 15_000, false), Verdict::Idle);
    }
}
