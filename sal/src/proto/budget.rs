//! Buffer memory budgets: the host's, one for each group of flows, and one
//! for each listener's flows nobody has accepted yet.
//!
//! The host-wide budget ([`HostConfig::buffer_memory_limit`], Linux's
//! `tcp_mem`) keeps all flows' TCP buffers together within memory. It
//! does not say whose flows hold it: one tenant whose flows never read
//! what peers send them (or whose service peers flood with data it does
//! not take) could hold the whole budget and put every flow of the host
//! under pressure, everyone else's small windows with it.
//!
//! So a driver may put flows into groups ([`Host::set_flow_group`],
//! [`Host::set_listener_group`] for the server flows a listener opens;
//! sald makes one group per local user), and each group has a budget of
//! its own ([`HostConfig::buffer_memory_group_limit`]): once a group's
//! flows hold that much, they are under pressure, exactly as all flows
//! are at the host's budget (see `stream.rs`), while the other groups'
//! flows grow as before. Group [`NO_GROUP`] (the default) is bounded by
//! the host's budget only.
//!
//! # Flows nobody accepted
//!
//! A server flow its application has not accepted yet counts against its
//! listener instead of its group: each listener has a total of its own for
//! them, bounded by [`UNACCEPTED_LISTENER_BUFFER`] (each such flow's
//! buffers stop growing at [`UNACCEPTED_BUFFER`] anyway). Once a listener's
//! flows hold that much, they are under pressure: those holding nothing
//! still take their first allocation (a client's first request, sent right
//! after the handshake, is buffered), none grows beyond what it holds,
//! until some are accepted or die. On [`Host::accept`] what the flow holds
//! moves to its group, as [`Host::set_flow_group`] moves it between
//! groups. Anyone who can complete handshakes can open flows to a
//! listener, as many as its backlog admits (thousands), and fill them;
//! charged to the group, they put the user's accepted flows under pressure
//! at the attacker's choice (4096 flows of 64 KiB are 256 MiB, sald's
//! default budget per user). Charged to the listener, they cost the user
//! nothing but that listener's flows' growth, and the host, for each
//! listener, at most the bound plus a first allocation per flow direction
//! (and one growth step); the host's budget counts them as every other
//! flow. A flow may outlive its
//! listener (closing it resets the flows it holds, which die at the next
//! poll): the listener's total lives here, not in the listener, and goes
//! when its last flow gives back what it holds.
//!
//! A driver that hands flows on through a queue of its own, from which the
//! application takes them when it will (sald's `Deliver`), takes them from
//! the listener with [`Host::take`] instead, and says when the application
//! has one ([`Host::accepted`]): until then it is as much the listener's
//! as one still in its backlog, though out of the backlog (and of the
//! listener's reach: closing the listener does not reset it).
//!
//! Every change of a socket's buffer memory passes through
//! [`Host::account_buffers`] with the flow's [`Charge`], which keeps both
//! totals; nothing walks the flows.
//!
//! [`HostConfig::buffer_memory_limit`]: super::HostConfig::buffer_memory_limit
//! [`HostConfig::buffer_memory_group_limit`]: super::HostConfig::buffer_memory_group_limit

use std::collections::HashMap;

use super::flow::{Endpoint, Flow};
use super::{Host, HostError};
use crate::id::FlowId;
use crate::table::ListenerId;

/// The group of flows no group budget bounds.
pub const NO_GROUP: u32 = 0;

/// What the buffers of a server flow its application has not accepted
/// yet may grow to (they stop growing once they hold this much, as under
/// pressure): a peer may send a little ahead of the application, as
/// Linux's initial receive buffer lets it (its window grows only as the
/// application reads), but flows nobody has taken must not hold their
/// maxima. Without it, a remote peer that opened flows to a user's
/// listener and filled each (1 MiB) put that user's whole group under
/// pressure at a quarter of the memory (found by a review). It is also the
/// most such a flow offers its peer to send (`sal_tcp::Socket::set_recv_cap`):
/// offered its whole window, a peer sent a large first request at once,
/// most of which was dropped at this bound and sent again after a
/// retransmission timeout.
pub const UNACCEPTED_BUFFER: usize = 64 << 10;

/// What the buffers of the flows one listener opened and nobody has
/// accepted yet may hold together before they are under pressure (see the
/// module docs): 64 flows' [`UNACCEPTED_BUFFER`]. A first request of a few
/// KiB fits the first allocation that every flow may take under pressure,
/// so a burst of clients that send theirs right after the handshake, to a
/// server slow to accept, still has them all buffered; only larger ones
/// wait for the accept beyond this.
pub const UNACCEPTED_LISTENER_BUFFER: usize = 4 << 20;

/// Whose budget a flow's buffer memory counts against, besides the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Charge {
    /// Its group's ([`NO_GROUP`]: none).
    Group(u32),
    /// Not accepted yet: its listener's total of such flows.
    Unaccepted(ListenerId),
}

impl Flow {
    /// Whose budget the flow's buffers count against (see the module docs).
    pub(super) fn charge(&self) -> Charge {
        match self.listener {
            Some(listener) if self.unaccepted => Charge::Unaccepted(listener),
            _ => Charge::Group(self.group),
        }
    }
}

/// What the flows of each group, and each listener's flows nobody has
/// accepted, hold, for those that hold anything.
#[derive(Debug, Default)]
pub(super) struct Budgets {
    held: HashMap<Charge, Use>,
}

/// The buffer memory and pressure state of one group, or of one
/// listener's flows nobody has accepted.
#[derive(Debug, Default, Clone, Copy)]
struct Use {
    bytes: u64,
    pressure: bool,
}

impl Budgets {
    /// Whether the flows of `charge` are under pressure of their own.
    pub(super) fn pressure(&self, charge: Charge) -> bool {
        // Asked for every segment: no hashing for flows in no group.
        charge != Charge::Group(NO_GROUP) && self.held.get(&charge).is_some_and(|u| u.pressure)
    }

    /// Bytes the flows of `charge` hold.
    fn bytes(&self, charge: Charge) -> u64 {
        self.held.get(&charge).map_or(0, |u| u.bytes)
    }

    /// Moves the total of `charge` from `before` to `after` more bytes and
    /// its pressure state with it (`limit`: its budget); returns whether
    /// it came under pressure now.
    fn account(&mut self, charge: Charge, before: u64, after: u64, limit: Option<u64>) -> bool {
        if charge == Charge::Group(NO_GROUP) || before == after {
            return false;
        }
        let used = self.held.entry(charge).or_default();
        used.bytes = (used.bytes + after).saturating_sub(before);
        let was = used.pressure;
        used.pressure = limit.is_some_and(|limit| under_pressure(was, used.bytes, limit));
        let entered = used.pressure && !was;
        if used.bytes == 0 && !used.pressure {
            self.held.remove(&charge);
        }
        entered
    }

    /// Gives back the memory the map holds beyond what it uses.
    pub(super) fn shrink_to_fit(&mut self) {
        self.held.shrink_to_fit();
    }
}

/// The next pressure state of a total of `bytes` against `limit`, from
/// `pressure`: on once the total reaches the limit, off again once it
/// falls below 7/8 of it, so that a total at its limit does not flip at
/// every segment.
fn under_pressure(pressure: bool, bytes: u64, limit: u64) -> bool {
    if pressure {
        bytes >= limit - limit / 8
    } else {
        bytes >= limit
    }
}

impl Host {
    /// Accounts for a change in one socket's buffer memory, `before` to
    /// `after` bytes, of a flow whose memory counts against `charge`: the
    /// host's total and pressure state, and those of `charge` (see the
    /// module docs).
    pub(super) fn account_buffers(&mut self, charge: Charge, before: usize, after: usize) {
        let (before, after) = (before as u64, after as u64);
        let stats = &mut self.stats;
        stats.buffer_bytes = (stats.buffer_bytes + after).saturating_sub(before);
        if let Some(limit) = self.config.buffer_memory_limit {
            let was = stats.buffer_pressure;
            stats.buffer_pressure = under_pressure(was, stats.buffer_bytes, limit as u64);
            if stats.buffer_pressure && !was {
                stats.buffer_pressures += 1;
            }
        }
        self.account_charge(charge, before, after);
    }

    /// Moves the total of `charge` alone (not the host's) from `before` to
    /// `after` bytes, and counts its coming under pressure.
    fn account_charge(&mut self, charge: Charge, before: u64, after: u64) {
        let limit = match charge {
            Charge::Group(_) => self.config.buffer_memory_group_limit,
            Charge::Unaccepted(_) => {
                let held = &mut self.stats.unaccepted_buffer_bytes;
                *held = (*held + after).saturating_sub(before);
                Some(UNACCEPTED_LISTENER_BUFFER)
            }
        };
        if self
            .budgets
            .account(charge, before, after, limit.map(|l| l as u64))
        {
            match charge {
                Charge::Group(_) => self.stats.group_buffer_pressures += 1,
                Charge::Unaccepted(_) => self.stats.unaccepted_buffer_pressures += 1,
            }
        }
    }

    /// Whether a socket of a flow whose memory counts against `charge` is
    /// under memory pressure: the host's, or that of `charge`.
    pub(super) fn buffer_pressure(&self, charge: Charge) -> bool {
        self.stats.buffer_pressure || self.budgets.pressure(charge)
    }

    /// Tells a flow's socket its bounds before it takes or sends a
    /// segment: it may not grow under pressure (`pressure`, see
    /// [`Host::buffer_pressure`]), nor past [`UNACCEPTED_BUFFER`] while
    /// nobody has accepted its flow (`unaccepted`), whose window that caps
    /// too.
    pub(super) fn bound_socket(socket: &mut sal_tcp::Socket, pressure: bool, unaccepted: bool) {
        let memory = socket.buffer_memory();
        socket.set_memory_pressure(pressure || (unaccepted && memory >= UNACCEPTED_BUFFER));
        socket.set_recv_cap(unaccepted.then_some(UNACCEPTED_BUFFER));
    }

    /// Whose budget flow `id`'s memory counts against (no group's if there
    /// is no such flow).
    pub(super) fn flow_charge(&self, id: FlowId) -> Charge {
        match self.endpoints.get(id) {
            Some(Endpoint::Flow(flow)) => flow.charge(),
            _ => Charge::Group(NO_GROUP),
        }
    }

    /// Changes flow `id` with `change`, and moves what its buffers hold to
    /// whatever its charge is then.
    fn recharge(&mut self, id: FlowId, change: impl FnOnce(&mut Flow)) -> Result<(), HostError> {
        let flow = self.flow_mut(id)?;
        let old = flow.charge();
        change(flow);
        let new = flow.charge();
        let memory = flow
            .stream()
            .and_then(|s| s.socket.as_ref())
            .map_or(0, sal_tcp::Socket::buffer_memory) as u64;
        if old != new && memory > 0 {
            self.account_charge(old, memory, 0);
            self.account_charge(new, 0, memory);
        }
        Ok(())
    }

    /// Puts a flow into `group` (see the module docs): what its buffers
    /// hold moves to that group's total, and from now on the flow is under
    /// pressure whenever the group is. `NO_GROUP` takes it out of any. A
    /// flow nobody has accepted yet counts against its listener until it
    /// is, then against this group.
    pub fn set_flow_group(&mut self, id: FlowId, group: u32) -> Result<(), HostError> {
        self.recharge(id, |flow| flow.group = group)
    }

    /// The application has flow `id` now (see the module docs): its
    /// buffers may grow from now on, and what they hold counts against
    /// its group instead of its listener. [`Host::accept`] says so itself;
    /// a flow taken with [`Host::take`] waits for this. Nothing changes
    /// for a flow accepted already, or one no listener opened.
    pub fn accepted(&mut self, id: FlowId) -> Result<(), HostError> {
        if !self.flow_mut(id)?.unaccepted {
            return Ok(());
        }
        self.recharge(id, |flow| flow.unaccepted = false)?;
        // Driven at the end of this poll: its window may open.
        self.mark_dirty(id);
        Ok(())
    }

    /// Puts the server flows `listener` opens from now on into `group`
    /// (flows it already opened keep theirs: see [`Host::set_flow_group`]).
    pub fn set_listener_group(
        &mut self,
        listener: ListenerId,
        group: u32,
    ) -> Result<(), HostError> {
        if self.listeners.set_group(listener, group) {
            Ok(())
        } else {
            Err(HostError::NoSuchListener(listener))
        }
    }

    /// Bytes of TCP buffer memory the flows of `group` hold now (those
    /// nobody has accepted yet are their listener's:
    /// [`Host::unaccepted_buffer_bytes`]).
    pub fn group_buffer_bytes(&self, group: u32) -> u64 {
        self.budgets.bytes(Charge::Group(group))
    }

    /// Bytes of TCP buffer memory the flows `listener` opened and nobody
    /// has accepted yet hold now (also after the listener closed, until
    /// they are gone).
    pub fn unaccepted_buffer_bytes(&self, listener: ListenerId) -> u64 {
        self.budgets.bytes(Charge::Unaccepted(listener))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEVEN: Charge = Charge::Group(7);

    #[test]
    fn a_group_enters_pressure_at_its_limit_and_leaves_below_seven_eighths() {
        let mut budgets = Budgets::default();
        let limit = Some(800);
        assert!(!budgets.account(SEVEN, 0, 799, limit));
        assert!(!budgets.pressure(SEVEN));
        assert!(budgets.account(SEVEN, 0, 1, limit), "entered at the limit");
        assert!(budgets.pressure(SEVEN));
        assert!(!budgets.pressure(Charge::Group(8)), "other groups are not");
        assert!(!budgets.account(SEVEN, 100, 0, limit));
        assert!(budgets.pressure(SEVEN), "700 is not below 7/8 of 800");
        budgets.account(SEVEN, 1, 0, limit);
        assert!(!budgets.pressure(SEVEN));
        budgets.account(SEVEN, 699, 0, limit);
        assert_eq!(budgets.bytes(SEVEN), 0);
        assert!(budgets.held.is_empty(), "an empty group leaves no entry");
    }

    #[test]
    fn no_group_is_never_counted() {
        let mut budgets = Budgets::default();
        let none = Charge::Group(NO_GROUP);
        assert!(!budgets.account(none, 0, 10_000, Some(1)));
        assert!(!budgets.pressure(none));
        assert!(budgets.held.is_empty());
    }

    #[test]
    fn a_listener_s_flows_nobody_accepted_are_not_its_group_s() {
        let mut budgets = Budgets::default();
        let listener = Charge::Unaccepted(ListenerId(7));
        assert!(budgets.account(listener, 0, 800, Some(800)));
        assert!(budgets.pressure(listener));
        assert!(!budgets.pressure(SEVEN), "group 7 is another total");
        assert_eq!(budgets.bytes(SEVEN), 0);
        budgets.account(listener, 800, 0, Some(800));
        assert!(!budgets.pressure(listener));
        assert!(budgets.held.is_empty());
    }
}
