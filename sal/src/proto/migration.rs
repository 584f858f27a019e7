//! Migration: moving a live flow to another locator (RSYN), following a
//! peer that moved, and deciding from its silence that a path is dead.
//!
//! Either end may move at any time; the transport above never notices,
//! because the flow is named by flow IDs and only the SAL knows addresses.
//! A move is an RSYN from the new locator, retransmitted until the peer's
//! RSYN-ACK; the peer follows whichever copy it hears last, so the latest
//! move wins. Segments the old path swallowed are resent as soon as the move
//! is confirmed, or as soon as the peer is heard from its new locator
//! ([`sal_tcp::Socket::rewind`]: from the socket's own send buffer, so
//! nothing is copied while all is well), rather than after the transport's
//! retransmission timeout.
//!
//! Moves happen on request ([`Host::migrate`]), when an interface goes down
//! or is renumbered, and when the liveness verdict says a path went silent
//! (see `liveness.rs`): then the flow tries the next interface that is up,
//! else challenges the next locator the peer advertised. The flow follows
//! the peer to a new address, the source of its RSYN or a locator it
//! advertised, only once that address answered a path challenge
//! (`nat.rs`). An RSYN names both ends of the path: where the peer is (its
//! source), and where it reaches us (its destination). So a peer that
//! sought us at another of our locators, and moved there, sends an RSYN
//! there, and our end follows it (`Host::meet_peer_at`): else we would
//! go on sending from a locator whose way to the peer may be what failed.

use super::control::{ControlKind, Sequence};
use super::liveness::{on_tick, Verdict};
use super::stream::Rewind;
use super::timer::Timer;
use super::{Event, FlowState, Host, HostError};
use crate::id::FlowId;
use crate::locator::Locator;
use crate::wire::{ControlFlags, ControlRepr};

impl Host {
    /// Moves a flow to another of this host's interfaces (the RSYN exchange of
    /// WIRE.md). The transport above never notices.
    pub fn migrate(&mut self, flow: FlowId, interface: &str) -> Result<(), HostError> {
        let locator = self.up_interface_locator(interface)?;
        self.migrate_to(flow, locator)
    }

    /// The locator of our interface `name`, which a flow may move to only
    /// while it is up.
    pub(super) fn up_interface_locator(&self, name: &str) -> Result<Locator, HostError> {
        let iface = self
            .interfaces
            .get(name)
            .ok_or_else(|| HostError::NoSuchInterface(name.to_string()))?;
        if !iface.up {
            return Err(HostError::InterfaceDown(name.to_string()));
        }
        Ok(iface.locator)
    }

    /// Moves a flow to `locator` (one of ours) with an RSYN. A migration
    /// started while an earlier one is unanswered reuses its RSYN: the peer
    /// follows whichever copy arrives last, so the latest move wins.
    fn migrate_to(&mut self, id: FlowId, locator: Locator) -> Result<(), HostError> {
        let (now, rto) = (self.now, self.config.control_rto);
        let flow = self.flow_mut(id)?;
        if flow.state != FlowState::Established {
            return Err(HostError::NotConnected);
        }
        if !flow.path.move_local(locator, now) {
            return Ok(());
        }
        // Hearing nothing since the move is not yet a reason to move again.
        flow.liveness.restart(now);
        // An unanswered RSYN (a move, or a probe) is resent from here: the
        // peer follows whichever copy it hears last.
        let restarted = flow.control.restart_rsyn(now, rto);
        if let Some(deadline) = restarted {
            self.arm_timer(id, Timer::Control, deadline);
        }
        self.stats.migrations += 1;
        self.events.push_back(Event::Migrated(id, locator));
        // Whatever else is in flight (a FIN, say) goes out from here too.
        self.retransmit_now(id);
        if restarted.is_none() {
            self.send_new_control(id, ControlKind::Rsyn, ControlFlags::RSYN, false, &[]);
        }
        self.mark_dirty(id);
        Ok(())
    }

    /// Moves every established flow on `from` to `to`.
    pub(super) fn move_flows(&mut self, from: Locator, to: Locator) {
        let flows: Vec<FlowId> = self
            .endpoints
            .iter()
            .filter_map(|(id, e)| match e {
                super::flow::Endpoint::Flow(f)
                    if f.path.local == from && f.state == FlowState::Established =>
                {
                    Some(id)
                }
                _ => None,
            })
            .collect();
        for flow in flows {
            let _ = self.migrate_to(flow, to);
        }
    }

    /// Moves every established flow on `from` to another interface that is up.
    pub(super) fn evacuate(&mut self, from: Locator) {
        let to = self.interfaces.others_up(from).next();
        if let Some(to) = to {
            self.move_flows(from, to);
        }
    }

    /// An RSYN from the peer (or its RSYN-ACK answering ours) that reached
    /// us at `dst`. The nonce was checked by the caller; the `verno`
    /// decides whether it is news.
    pub(super) fn rsyn_input(
        &mut self,
        id: FlowId,
        src: Locator,
        dst: Locator,
        control: &ControlRepr,
    ) {
        let trusted = !self.config.validate_peer_moves;
        let dst_up = self.interfaces.owns_up(&dst);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let sequence = flow.control.accept_verno(control.verno);
        if sequence == Sequence::Stale {
            self.stats.stale += 1;
            return;
        }
        // Its nonce shows the peer's program lives, wherever it went: a
        // refusal from its old locator is not its death (a program that
        // handed its flows to its sald at `exec` closed that port).
        flow.liveness.peer_alive();
        // The peer sought us at `dst`, and now its new RSYN comes there:
        // it moved its end of the path there (see `Host::meet_peer_at`).
        // Not on an RSYN-ACK, which answers our own RSYN, nor while a move
        // of ours is unanswered: the latest move wins.
        let met_there = sequence == Sequence::New
            && !control.flags.contains(ControlFlags::ACK)
            && dst_up
            && flow.path.sought_here == Some(dst)
            && !flow.control.in_flight(ControlKind::Rsyn);
        if met_there {
            self.meet_peer_at(id, dst);
        }
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        // The peer says it is now at `src`. The nonce shows the RSYN is the
        // peer's, not that the peer is at `src`: a peer may spoof a victim's
        // address to have its download sent there. So the answer goes to
        // `src` (a peer that moved must get it there), a path challenge
        // with it, and the flow follows only once the challenge is answered
        // from `src` (`nat.rs`), resending its flight then. A retransmitted
        // RSYN from yet another locator redirects the answers (the latest
        // wins).
        let mut elsewhere = flow.path.remote.is_some_and(|remote| remote != src);
        if elsewhere && trusted {
            // Trusted: follow at once (WIRE.md's exchange as written).
            flow.path.follow_peer(src);
            self.events.push_back(Event::PeerMoved(id, src));
            self.rewind_stream(id, Rewind::NewPath);
            elsewhere = false;
        }
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let new_target = elsewhere && flow.path.moving_to != Some(src);
        flow.path.moving_to = elsewhere.then_some(src);
        if !elsewhere {
            // The peer speaks from where the flow runs: answers to earlier
            // challenges would come from addresses it left.
            flow.nat.forget_challenges();
        } else if new_target {
            flow.nat.keep_challenges_to(src);
        }
        let answered = flow.control.in_flight(ControlKind::RsynAck);
        if control.flags.contains(ControlFlags::ACK) {
            // An RSYN-ACK: our RSYN was retired by the caller; confirm it.
            self.send_ack(id, false, &[]);
        } else if sequence == Sequence::New {
            // One answer in flight: a newer RSYN refreshes it rather than
            // queue another (see `refresh_rsyn_ack`).
            if !self.refresh_rsyn_ack(id) {
                self.send_new_control(
                    id,
                    ControlKind::RsynAck,
                    ControlFlags::RSYN | ControlFlags::ACK,
                    false,
                    &[],
                );
            }
        } else if answered {
            // A repeated RSYN: our answer again, one packet for one, not
            // everything in flight.
            self.resend_kind(id, ControlKind::RsynAck);
        } else {
            self.send_ack(id, false, &[]);
        }
        // A new address is challenged at once (and again on a timer until
        // it answers); RSYNs repeated from one draw challenges at the rate
        // other messages from there do, so a peer's RSYNs from a victim's
        // address cost the victim at most one answer each and a few
        // challenges a second.
        if new_target && sequence == Sequence::New {
            self.challenge_rsyn_source(id, src);
        } else if elsewhere {
            // A repeated RSYN (the peer's, moved on while it was in flight,
            // or anyone's replay) is challenged at the usual rate.
            self.challenge_path(id, src, true);
        }
        if new_target {
            self.repeat_challenges(id);
        }
    }

    /// The peer sought us at `dst`, one of our locators that is up (it
    /// challenged us there and got our answer from there), and then its
    /// new RSYN reached us there: its path to where we send from went
    /// silent, and it moved its end of the flow to `dst` (see
    /// `Host::peer_rebound`). Our end moves there too. The way back from
    /// the locator we leave may be what failed: a peer that only sends,
    /// while we only acknowledge, would hear nothing of us until a probe
    /// of ours went unanswered; and if our packets still reached it from
    /// there, it would not take them, from a locator it left, as us
    /// speaking, and would give up on the flow at its peer timeout. No
    /// RSYN of ours is needed: the peer's challenge proved the way from
    /// `dst` to it, its RSYN the way back, and our answer to the RSYN goes
    /// out from `dst`. Our flight is resent from there at once.
    ///
    /// Only the peer moves our end so: anyone may challenge us anywhere,
    /// but the RSYN carries the peer's nonce and a `verno` not seen before
    /// (a replayed one is not news), and all it moves is our end, to
    /// another locator of our own; the flow still goes only to the peer's
    /// proven address.
    fn meet_peer_at(&mut self, id: FlowId, dst: Locator) {
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.state != FlowState::Established || !flow.path.move_local(dst, now) {
            return;
        }
        flow.liveness.restart(now);
        self.stats.migrations += 1;
        self.events.push_back(Event::Migrated(id, dst));
        self.rewind_stream(id, Rewind::NewPath);
        self.retransmit_now(id);
        self.mark_dirty(id);
    }

    /// This end sent something on the flow that expects an answer: if that
    /// starts a wait, the liveness timer must fire when the wait is first
    /// looked at (and a client flow over UDP nudges its peer sooner, see
    /// `nat.rs`).
    pub(super) fn note_asked(&mut self, id: FlowId) {
        let (now, timeout) = (self.now, self.config.liveness_timeout);
        let (auto_migrate, peer_timeout) = (self.config.auto_migrate, self.config.peer_timeout);
        let interfaces_up = self.interfaces.up_count();
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.state != FlowState::Established || !flow.liveness.asked(now) {
            return;
        }
        // Looked at only once a wait starts: this runs for every segment.
        let probes = interfaces_up > 1 || flow.path.peer_has_alternatives();
        if auto_migrate {
            if let Some(at) = flow.liveness.next_check(now, true, timeout, None, probes) {
                self.arm_timer(id, Timer::Liveness, on_tick(at));
            }
        } else if let Some(gone) = flow.liveness.gone_at(peer_timeout) {
            self.arm_timer(id, Timer::Liveness, on_tick(gone));
        }
        self.arm_nudge(id);
    }

    /// Whether the flow has somewhere else to go: another interface up, or
    /// a peer that advertised other locators. Only then is an idle path
    /// worth probing, or a silent one worth probing before it is left.
    fn somewhere_else(&mut self, id: FlowId) -> bool {
        let interfaces_up = self.interfaces.up_count();
        self.flow_mut(id)
            .is_ok_and(|flow| interfaces_up > 1 || flow.path.peer_has_alternatives())
    }

    /// Arms the flow's liveness timer for when its verdict may next change.
    /// An idle flow with nowhere else to go (one interface up, a peer that
    /// advertised no other locator) has nothing to probe for, and gets no
    /// timer at all: a host's idle flows cost it no work until that changes
    /// (see [`Host::rearm_idle_probes`]).
    pub(super) fn arm_liveness(&mut self, id: FlowId) {
        // A refusal of the peer's locator is looked at again whatever
        // else the flow waits for (see `Host::handle_unreachable`).
        let refused = (self.flow_mut(id).ok()).and_then(|flow| flow.liveness.refused_until());
        if let Some(until) = refused {
            self.arm_timer(id, Timer::Liveness, on_tick(until));
        }
        let waiting = self.awaits_peer(id);
        if !self.config.auto_migrate {
            // No moves: only a peer gone for good is looked for.
            let peer_timeout = self.config.peer_timeout;
            let gone = self.flow_mut(id).ok().and_then(|flow| {
                let at = flow.liveness.gone_at(peer_timeout)?;
                (waiting && flow.state == FlowState::Established).then_some(at)
            });
            if let Some(at) = gone {
                self.arm_timer(id, Timer::Liveness, on_tick(at));
            }
            return;
        }
        let (now, timeout) = (self.now, self.config.liveness_timeout);
        let somewhere_else = self.somewhere_else(id);
        let idle = self.config.idle_probe.filter(|_| somewhere_else);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.state != FlowState::Established {
            return;
        }
        if let Some(at) = flow
            .liveness
            .next_check(now, waiting, timeout, idle, somewhere_else)
        {
            self.arm_timer(id, Timer::Liveness, on_tick(at));
        }
    }

    /// Somewhere else to go has appeared (an interface came up): idle flows
    /// that had nothing to probe for get their liveness timers. Costs a pass
    /// over the flows, on an interface event.
    pub(super) fn rearm_idle_probes(&mut self) {
        if !self.config.auto_migrate || self.config.idle_probe.is_none() {
            return;
        }
        let flows: Vec<FlowId> = self
            .endpoints
            .iter()
            .filter_map(|(id, e)| match e {
                super::flow::Endpoint::Flow(f) if f.state == FlowState::Established => Some(id),
                _ => None,
            })
            .collect();
        for id in flows {
            self.arm_liveness(id);
        }
    }

    /// The liveness timer fired: a flow waiting on a silent peer probes its
    /// path, then tries another if the probe goes unanswered too; an idle
    /// flow with somewhere else to go probes its own.
    pub(super) fn liveness_due(&mut self, id: FlowId) {
        let waiting = self.awaits_peer(id);
        let (now, timeout, idle) = (
            self.now,
            self.config.liveness_timeout,
            self.config.idle_probe,
        );
        let (auto_migrate, peer_timeout) = (self.config.auto_migrate, self.config.peer_timeout);
        let somewhere_else = self.somewhere_else(id);
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        if flow.state != FlowState::Established {
            return;
        }
        if flow.liveness.refused_for(now) {
            // Its locator refused our packets, and nothing came since.
            self.stats.peers_gone += 1;
            let _ = self.abort(id);
            return;
        }
        if flow.liveness.gone(now, waiting, peer_timeout) {
            // Nothing heard for the whole peer timeout, on any path tried.
            return self.give_up_on_peer(id);
        }
        if !auto_migrate {
            return self.arm_liveness(id);
        }
        match flow
            .liveness
            .check(now, waiting, timeout, idle, somewhere_else)
        {
            Verdict::Silent => self.abandon_path(id),
            Verdict::Doubt => {
                // The peer may be silent only because what it would answer
                // was lost, and TCP waits out its backed-off timeout: ask
                // it now. An RSYN in flight (a move, or a probe) asks
                // already, and is resent on its own timer.
                flow.liveness.probed(now);
                let asking = flow.control.in_flight(ControlKind::Rsyn)
                    || flow.control.in_flight(ControlKind::Probe);
                if !asking {
                    self.stats.probes += 1;
                    self.send_new_control(id, ControlKind::Probe, ControlFlags::RSYN, false, &[]);
                }
            }
            Verdict::Idle if somewhere_else => {
                // The silence that matters from now on is the probe's.
                flow.liveness.restart(now);
                self.stats.probes += 1;
                self.send_new_control(id, ControlKind::Probe, ControlFlags::RSYN, false, &[]);
            }
            Verdict::Idle | Verdict::Alive => {}
        }
        self.arm_liveness(id);
    }

    /// The path went silent: move to the next local interface that is up,
    /// else challenge the peer's next advertised locator, else wait another
    /// timeout before looking again. The flow stays where it is until a
    /// challenged locator answers (see `nat.rs`): a peer may advertise an
    /// address that is not its own, to have our traffic sent there.
    fn abandon_path(&mut self, id: FlowId) {
        let now = self.now;
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let local = flow.path.local;
        if let Some(next) = self.interfaces.next_up_after(local) {
            let _ = self.migrate_to(id, next);
            return;
        }
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        // Only one way out of here: the peer's other locators, once one
        // proves the peer is there.
        flow.liveness.restart(now);
        if let Some(other) = flow.path.next_peer_locator() {
            self.seek_peer_locator(id, other);
        }
    }
}
