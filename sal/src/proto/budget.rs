//! Buffer memory budgets: the host's, and one for each group of flows.
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
//! Every change of a socket's buffer memory passes through
//! [`Host::account_buffers`] with the flow's group, which keeps both
//! totals; nothing walks the flows.
//!
//! [`HostConfig::buffer_memory_limit`]: super::HostConfig::buffer_memory_limit
//! [`HostConfig::buffer_memory_group_limit`]: super::HostConfig::buffer_memory_group_limit

use std::collections::HashMap;

use super::flow::Endpoint;
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
/// pressure at a quarter of the memory (found by a review).
pub const UNACCEPTED_BUFFER: usize = 64 << 10;

/// What each group's flows hold, for the groups that hold anything.
#[derive(Debug, Default)]
pub(super) struct GroupBudgets {
    held: HashMap<u32, GroupUse>,
}

/// One group's buffer memory and pressure state.
#[derive(Debug, Default, Clone, Copy)]
struct GroupUse {
    bytes: u64,
    pressure: bool,
}

impl GroupBudgets {
    /// Whether `group` is under pressure of its own.
    pub(super) fn pressure(&self, group: u32) -> bool {
        // Asked for every segment: no hashing for flows in no group.
        group != NO_GROUP && self.held.get(&group).is_some_and(|u| u.pressure)
    }

    /// Bytes `group`'s flows hold.
    fn bytes(&self, group: u32) -> u64 {
        self.held.get(&group).map_or(0, |u| u.bytes)
    }

    /// Moves `group`'s total from `before` to `after` more bytes and its
    /// pressure state with it (`limit`: the group budget); returns whether
    /// the group came under pressure now.
    fn account(&mut self, group: u32, before: u64, after: u64, limit: Option<u64>) -> bool {
        if group == NO_GROUP || before == after {
            return false;
        }
        let used = self.held.entry(group).or_default();
        used.bytes = (used.bytes + after).saturating_sub(before);
        let was = used.pressure;
        used.pressure = limit.is_some_and(|limit| under_pressure(was, used.bytes, limit));
        let entered = used.pressure && !was;
        if used.bytes == 0 && !used.pressure {
            self.held.remove(&group);
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
    /// `after` bytes, of a flow in `group`: the host's total and pressure
    /// state, and the group's (see the module docs).
    pub(super) fn account_buffers(&mut self, group: u32, before: usize, after: usize) {
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
        let limit = self.config.buffer_memory_group_limit.map(|l| l as u64);
        if self.budgets.account(group, before, after, limit) {
            self.stats.group_buffer_pressures += 1;
        }
    }

    /// Whether a socket of a flow in `group` is under memory pressure: the
    /// host's, or its group's own.
    pub(super) fn buffer_pressure(&self, group: u32) -> bool {
        self.stats.buffer_pressure || self.budgets.pressure(group)
    }

    /// Whether a flow's socket holding `memory` bytes may not grow: under
    /// pressure (`pressure`, see [`Host::buffer_pressure`]), or not
    /// accepted yet and at [`UNACCEPTED_BUFFER`].
    pub(super) fn socket_pressure(pressure: bool, unaccepted: bool, memory: usize) -> bool {
        pressure || (unaccepted && memory >= UNACCEPTED_BUFFER)
    }

    /// The group of flow `id` ([`NO_GROUP`] if there is no such flow).
    pub(super) fn flow_group(&self, id: FlowId) -> u32 {
        match self.endpoints.get(id) {
            Some(Endpoint::Flow(flow)) => flow.group,
            _ => NO_GROUP,
        }
    }

    /// Puts a flow into `group` (see the module docs): what its buffers
    /// hold moves to that group's total, and from now on the flow is under
    /// pressure whenever the group is. `NO_GROUP` takes it out of any.
    pub fn set_flow_group(&mut self, id: FlowId, group: u32) -> Result<(), HostError> {
        let flow = self.flow_mut(id)?;
        let old = std::mem::replace(&mut flow.group, group);
        let memory = flow
            .stream()
            .and_then(|s| s.socket.as_ref())
            .map_or(0, sal_tcp::Socket::buffer_memory) as u64;
        if old != group && memory > 0 {
            let limit = self.config.buffer_memory_group_limit.map(|l| l as u64);
            self.budgets.account(old, memory, 0, limit);
            if self.budgets.account(group, 0, memory, limit) {
                self.stats.group_buffer_pressures += 1;
            }
        }
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

    /// Bytes of TCP buffer memory the flows of `group` hold now.
    pub fn group_buffer_bytes(&self, group: u32) -> u64 {
        self.budgets.bytes(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_enters_pressure_at_its_limit_and_leaves_below_seven_eighths() {
        let mut budgets = GroupBudgets::default();
        let limit = Some(800);
        assert!(!budgets.account(7, 0, 799, limit));
        assert!(!budgets.pressure(7));
        assert!(budgets.account(7, 0, 1, limit), "entered at the limit");
        assert!(budgets.pressure(7));
        assert!(!budgets.pressure(8), "other groups are not");
        assert!(!budgets.account(7, 100, 0, limit));
        assert!(budgets.pressure(7), "700 is not below 7/8 of 800");
        budgets.account(7, 1, 0, limit);
        assert!(!budgets.pressure(7));
        budgets.account(7, 699, 0, limit);
        assert_eq!(budgets.bytes(7), 0);
        assert!(budgets.held.is_empty(), "an empty group leaves no entry");
    }

    #[test]
    fn no_group_is_never_counted() {
        let mut budgets = GroupBudgets::default();
        assert!(!budgets.account(NO_GROUP, 0, 10_000, Some(1)));
        assert!(!budgets.pressure(NO_GROUP));
        assert!(budgets.held.is_empty());
    }
}
