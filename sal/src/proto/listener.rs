//! Listeners: the local sockets that serve a service prefix.
//!
//! A listener is the DEMUX target of its prefix. Like a kernel's listening
//! socket it bounds how many flows may wait for the application at once
//! (`backlog`: half-open plus accepted-but-not-taken), so that a burst of
//! SYNs costs a bounded amount of memory and the surplus is refused rather
//! than left to time out. Half-open flows are also found by their client's
//! address and flow ID, so that a retransmitted SYN (our SYN-ACK was lost)
//! is answered by the same flow instead of opening another.
//!
//! A listener can be *drained* before it closes: its DEMUX rule goes (the
//! service is unregistered, so the controller withdraws it and new
//! connections resolve to other instances) while the flows it already
//! admitted complete their handshake and wait for `accept` as before. SYNs
//! for its prefix that still arrive meanwhile (sent before the withdrawal
//! reached the routers) are dropped without a reset, so that their clients
//! retransmit and reach another instance instead of failing. Closing a
//! drained listener once it has nothing pending costs no connection; the
//! host says when that is ([`Event::Settled`]), so that a driver waiting
//! for it need not keep looking.
//!
//! A listener can also *stop* listening and stay bound, as a TCP listener
//! that `connect(AF_UNSPEC)` disconnects (`tcp_disconnect`): its DEMUX rule
//! stays (the service is still bound here, and a second bind of it still
//! fails), but it refuses every SYN, as a bound socket that does not
//! listen, and the flows it held half-open or waiting for `accept` are
//! reset. A new backlog ([`Host::set_backlog`], a second `listen(2)`)
//! makes it listen again.
//!
//! Half-open flows are bounded twice more, per listener and host-wide (see
//! [`HostConfig::half_open_limit`](super::HostConfig)): past those bounds a
//! SYN is answered with a cookie (see `cookie.rs`), which keeps nothing, so
//! a flood of SYNs costs no memory and leaves the backlog to clients that
//! answer. Only a full accept queue refuses.

use std::collections::{HashMap, VecDeque};

use smoltcp::time::Instant;

use super::flow::Endpoint;
use super::{Event, Host, HostConfig, HostError, SynCookies};
use crate::id::{FlowId, ServiceId, ServicePrefix};
use crate::locator::Locator;
use crate::table::{ListenerId, PrefixTrie, Target, TargetKey};
use crate::wire::{SalRepr, TransportProtocol};

/// A half-open flow's client: its locator and its flow ID. The whole
/// locator, not only its address: in UDP carriage many clients share one
/// address (each program its own port, or many hosts behind one NAT), and
/// two of them may draw the same flow ID; keyed by address alone, the
/// second one's SYN was taken for a retransmission of the first's.
type ClientKey = (Locator, FlowId);

/// A local listening socket. See the module docs.
#[derive(Debug)]
pub(super) struct Listener {
    pub prefix: ServicePrefix,
    pub protocol: TransportProtocol,
    backlog: usize,
    /// Server flows whose handshake is under way, with their client.
    half_open: Vec<(ClientKey, FlowId)>,
    /// Established flows the application has not taken yet.
    accept_queue: VecDeque<FlowId>,
    /// Datagram listeners also receive unconnected datagrams, on this socket.
    pub datagram_socket: Option<FlowId>,
    /// The own service ID of an unbound datagram socket: it takes replies
    /// to the socket, no flows, and is no service of this host (no
    /// `Registered` event; listings hide it).
    pub ephemeral: bool,
    /// Drained: no DEMUX rule any more, no new flows; those admitted stay.
    draining: bool,
    /// Stopped listening: bound still, every SYN refused (see the module
    /// docs).
    stopped: bool,
    /// The buffer budget group of the server flows it opens (see
    /// `budget.rs`).
    pub group: u32,
    /// A relay: the first packets of its prefix go on to this locator (a
    /// program that drives its own SAL host there) instead of being served
    /// here (see `route.rs`).
    relay: Option<Locator>,
}

impl Listener {
    /// Whether one more flow fits in the backlog.
    fn has_room(&self) -> bool {
        self.half_open.len() + self.accept_queue.len() < self.backlog
    }
}

/// How a listener takes a new SYN (see [`Listeners::admission`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// A half-open flow, kept until the client's ACK.
    HalfOpen,
    /// A cookie: nothing is kept until the client's ACK.
    Cookie,
    /// A refusal: wrong protocol, or the accept queue is full.
    Refuse,
}

/// What [`Listeners::remove`] leaves to be cleaned up.
#[derive(Debug)]
pub(super) struct Removed {
    pub prefix: ServicePrefix,
    pub ephemeral: bool,
    /// It was drained: its rule is gone and `Unregistered` went out then.
    pub draining: bool,
    pub datagram_socket: Option<FlowId>,
    pub half_open: Vec<FlowId>,
    pub accept_queue: VecDeque<FlowId>,
}

/// The host's listeners. See the module docs.
#[derive(Debug)]
pub(super) struct Listeners {
    by_id: HashMap<ListenerId, Listener>,
    next_id: u64,
    /// Half-open server flows by client, across all listeners.
    by_client: HashMap<ClientKey, FlowId>,
    /// The prefixes of drained listeners, each with how many are drained
    /// on it (a prefix drained, then bound and drained again, has two):
    /// whether a SYN is for a drained listener is one lookup, however
    /// many listeners there are (every unbound datagram socket is one).
    drained: PrefixTrie<usize>,
    /// Drained listeners that closed, with when their count in `drained`
    /// lapses (see [`HostConfig::drained_linger`]), oldest first.
    lingering: VecDeque<(Instant, ServicePrefix)>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            by_id: HashMap::new(),
            next_id: 1,
            by_client: HashMap::new(),
            drained: PrefixTrie::new(),
            lingering: VecDeque::new(),
        }
    }
}

impl Listeners {
    /// Reserves the ID of the next listener.
    pub fn allocate_id(&mut self) -> ListenerId {
        let id = ListenerId(self.next_id);
        self.next_id += 1;
        id
    }

    /// Adds a listener under an ID from [`Listeners::allocate_id`].
    pub fn insert(
        &mut self,
        id: ListenerId,
        prefix: ServicePrefix,
        protocol: TransportProtocol,
        backlog: usize,
        datagram_socket: Option<FlowId>,
    ) {
        let listener = Listener {
            prefix,
            protocol,
            backlog: backlog.max(1),
            half_open: Vec::new(),
            accept_queue: VecDeque::new(),
            datagram_socket,
            ephemeral: false,
            draining: false,
            stopped: false,
            group: super::NO_GROUP,
            relay: None,
        };
        self.by_id.insert(id, listener);
    }

    /// Makes `id` a relay to `locator`; whether there is such a listener.
    pub fn set_relay(&mut self, id: ListenerId, locator: Locator) -> bool {
        match self.by_id.get_mut(&id) {
            Some(listener) => {
                listener.relay = Some(locator);
                true
            }
            None => false,
        }
    }

    /// Where listener `id` relays its prefix's first packets, if it is a
    /// relay.
    pub fn relay(&self, id: ListenerId) -> Option<Locator> {
        self.get(id)?.relay
    }

    /// Sets the budget group of the flows `id` opens; whether there is
    /// such a listener.
    pub fn set_group(&mut self, id: ListenerId, group: u32) -> bool {
        match self.by_id.get_mut(&id) {
            Some(listener) => {
                listener.group = group;
                true
            }
            None => false,
        }
    }

    /// Sets how many flows `id` may queue, and makes it listen again if it
    /// stopped; whether there is such a listener.
    pub fn set_backlog(&mut self, id: ListenerId, backlog: usize) -> bool {
        match self.by_id.get_mut(&id) {
            Some(listener) => {
                listener.backlog = backlog.max(1);
                listener.stopped = false;
                true
            }
            None => false,
        }
    }

    /// Stops `id` listening (see the module docs): the flows it held
    /// half-open and waiting for `accept`, now the caller's to end. `None`
    /// if there is no such stream listener (an unbound datagram socket's
    /// own service ID, or a datagram listener, which does not listen as a
    /// stream does).
    pub fn stop(&mut self, id: ListenerId) -> Option<(Vec<FlowId>, VecDeque<FlowId>)> {
        let listener = self
            .by_id
            .get_mut(&id)
            .filter(|l| !l.ephemeral && l.protocol == TransportProtocol::Stream)?;
        listener.stopped = true;
        for (client, _) in &listener.half_open {
            self.by_client.remove(client);
        }
        let half_open = listener.half_open.drain(..).map(|(_, flow)| flow).collect();
        Some((half_open, std::mem::take(&mut listener.accept_queue)))
    }

    /// Whether listener `id` stopped listening.
    pub fn is_stopped(&self, id: ListenerId) -> bool {
        self.get(id).is_some_and(|l| l.stopped)
    }

    /// Whether `id` is an unbound datagram socket's own service ID.
    pub fn is_ephemeral(&self, id: ListenerId) -> bool {
        self.get(id).is_some_and(|l| l.ephemeral)
    }

    pub fn get(&self, id: ListenerId) -> Option<&Listener> {
        self.by_id.get(&id)
    }

    /// How many listeners there are, unbound datagram sockets' own
    /// service IDs left out.
    pub fn len(&self) -> usize {
        self.by_id.values().filter(|l| !l.ephemeral).count()
    }

    /// Gives back the memory the backlogs hold beyond what they use.
    pub fn shrink_to_fit(&mut self) {
        self.by_client.shrink_to_fit();
        for listener in self.by_id.values_mut() {
            listener.half_open.shrink_to_fit();
            listener.accept_queue.shrink_to_fit();
        }
    }

    /// Removes a listener; its flows are the caller's to end. A drained
    /// one leaves its prefix drained until `linger_until`.
    pub fn remove(&mut self, id: ListenerId, linger_until: Instant) -> Option<Removed> {
        let listener = self.by_id.remove(&id)?;
        for (client, _) in &listener.half_open {
            self.by_client.remove(client);
        }
        if listener.draining {
            self.lingering.push_back((linger_until, listener.prefix));
        }
        Some(Removed {
            prefix: listener.prefix,
            ephemeral: listener.ephemeral,
            draining: listener.draining,
            datagram_socket: listener.datagram_socket,
            half_open: listener.half_open.iter().map(|&(_, flow)| flow).collect(),
            accept_queue: listener.accept_queue,
        })
    }

    /// Marks a listener drained. Returns whether it was serving until now
    /// (false: already drained), or `None` if there is no such listener or
    /// it is an unbound datagram socket's own service ID (no service).
    pub fn drain(&mut self, id: ListenerId) -> Option<bool> {
        let listener = self.by_id.get_mut(&id).filter(|l| !l.ephemeral)?;
        let newly = !std::mem::replace(&mut listener.draining, true);
        if newly {
            match self.drained.get_mut(&listener.prefix) {
                Some(count) => *count += 1,
                None => {
                    self.drained.insert(&listener.prefix, 1);
                }
            }
        }
        Some(newly)
    }

    /// Whether listener `id` is drained.
    pub fn is_draining(&self, id: ListenerId) -> bool {
        self.get(id).is_some_and(|l| l.draining)
    }

    /// Whether a drained listener's prefix covers `service` (the listener
    /// open still, or closed less than its linger ago): a SYN for it is
    /// one the routers sent before they learned of the drain.
    pub fn draining_covers(&mut self, service: &ServiceId, now: Instant) -> bool {
        self.forget_lingering(now);
        self.drained.longest_match(service).is_some()
    }

    /// Forgets the drained prefixes of closed listeners whose linger ended.
    fn forget_lingering(&mut self, now: Instant) {
        while let Some(&(until, prefix)) = self.lingering.front() {
            if until > now {
                break;
            }
            self.lingering.pop_front();
            let left = (self.drained.get_mut(&prefix)).map(|count| {
                *count = count.saturating_sub(1);
                *count
            });
            if left == Some(0) {
                self.drained.remove(&prefix);
            }
        }
    }

    /// Flows listener `id` admitted that the application has not taken
    /// yet: half-open plus waiting for `accept`.
    pub fn pending(&self, id: ListenerId) -> Option<usize> {
        self.get(id)
            .map(|l| l.half_open.len() + l.accept_queue.len())
    }

    /// The half-open flow already opened for this client's SYN, if any.
    pub fn half_open_flow(&self, client: Locator, client_flow: FlowId) -> Option<FlowId> {
        self.by_client.get(&(client, client_flow)).copied()
    }

    /// Whether listener `id` takes a new flow of `protocol` now.
    #[cfg(test)]
    pub fn admits(&self, id: ListenerId, protocol: TransportProtocol) -> bool {
        self.get(id)
            .is_some_and(|l| l.protocol == protocol && !l.stopped && l.has_room())
    }

    /// How listener `id` takes a new SYN of `protocol` now, given the
    /// host's half-open bounds and cookie policy (see the module docs).
    pub fn admission(
        &self,
        id: ListenerId,
        protocol: TransportProtocol,
        config: &HostConfig,
    ) -> Admission {
        let Some(listener) = self
            .get(id)
            .filter(|l| l.protocol == protocol && !l.stopped)
        else {
            return Admission::Refuse;
        };
        if listener.accept_queue.len() >= listener.backlog {
            return Admission::Refuse;
        }
        let stateful = config.syn_cookies != SynCookies::Always
            && listener.has_room()
            && listener.half_open.len() < config.half_open_limit
            && self.by_client.len() < config.max_half_open;
        match (stateful, config.syn_cookies) {
            (true, _) => Admission::HalfOpen,
            (false, SynCookies::Never) => Admission::Refuse,
            (false, _) => Admission::Cookie,
        }
    }

    /// Whether listener `id`'s accept queue takes one more flow (a
    /// handshake completed from a cookie).
    pub fn has_accept_room(&self, id: ListenerId) -> bool {
        self.get(id)
            .is_some_and(|l| !l.stopped && l.accept_queue.len() < l.backlog)
    }

    /// Half-open flows, all listeners together.
    pub fn half_open_count(&self) -> usize {
        self.by_client.len()
    }

    /// Counts a new half-open flow against its listener's backlog.
    pub fn syn_received(
        &mut self,
        id: ListenerId,
        client: Locator,
        client_flow: FlowId,
        flow: FlowId,
    ) {
        if let Some(listener) = self.by_id.get_mut(&id) {
            let client = (client, client_flow);
            listener.half_open.push((client, flow));
            self.by_client.insert(client, flow);
        }
    }

    /// A half-open flow completed its handshake: it waits in the accept
    /// queue. Returns whether its listener is still there to take it.
    pub fn established(&mut self, id: ListenerId, flow: FlowId) -> bool {
        let Some(listener) = self.by_id.get_mut(&id) else {
            return false;
        };
        if let Some(at) = listener.half_open.iter().position(|&(_, f)| f == flow) {
            let (client, _) = listener.half_open.swap_remove(at);
            self.by_client.remove(&client);
        }
        listener.accept_queue.push_back(flow);
        true
    }

    /// Forgets a flow that is going away, half-open or waiting for accept;
    /// whether it was either (false: accepted already, or its listener is
    /// gone).
    pub fn forget(&mut self, id: ListenerId, flow: FlowId) -> bool {
        let Some(listener) = self.by_id.get_mut(&id) else {
            return false;
        };
        if let Some(at) = listener.half_open.iter().position(|&(_, f)| f == flow) {
            let (client, _) = listener.half_open.swap_remove(at);
            self.by_client.remove(&client);
            return true;
        }
        let queued = listener.accept_queue.len();
        listener.accept_queue.retain(|&queued| queued != flow);
        listener.accept_queue.len() < queued
    }

    /// Takes the next established flow from a listener's accept queue.
    pub fn accept(&mut self, id: ListenerId) -> Result<FlowId, HostError> {
        let listener = self
            .by_id
            .get_mut(&id)
            .ok_or(HostError::NoSuchListener(id))?;
        listener
            .accept_queue
            .pop_front()
            .ok_or(HostError::WouldBlock)
    }
}

impl Host {
    /// Binds a listener to `prefix`: installs the DEMUX rule (registering the
    /// service) and emits [`Event::Registered`]. At most `backlog` flows may be
    /// half-open or waiting to be accepted at once.
    pub fn listen(
        &mut self,
        prefix: ServicePrefix,
        protocol: TransportProtocol,
        backlog: usize,
    ) -> Result<ListenerId, HostError> {
        let id = self.bind_listener(prefix, protocol, backlog, false, None)?;
        self.events.push_back(Event::Registered(id, prefix));
        Ok(id)
    }

    /// Changes how many flows `listener` may hold half-open or waiting to be
    /// accepted, as a second `listen(2)` does: flows it holds beyond a
    /// smaller backlog stay, new ones wait for room. As `listen(2)` on a
    /// bound socket, it makes a listener that stopped
    /// ([`Host::stop_listening`]) listen again.
    pub fn set_backlog(&mut self, listener: ListenerId, backlog: usize) -> Result<(), HostError> {
        if self.listeners.set_backlog(listener, backlog) {
            Ok(())
        } else {
            Err(HostError::NoSuchListener(listener))
        }
    }

    /// Stops a stream listener listening while it stays bound (see the
    /// module docs): its DEMUX rule stays, new SYNs are refused, and the
    /// flows it held are reset (half-open ones too, as
    /// [`Host::close_listener`] ends them). [`Host::set_backlog`] makes it
    /// listen again. Stopping a
    /// stopped listener changes nothing.
    pub fn stop_listening(&mut self, id: ListenerId) -> Result<(), HostError> {
        let (half_open, accept_queue) = self
            .listeners
            .stop(id)
            .ok_or(HostError::NoSuchListener(id))?;
        self.reset_unaccepted(accept_queue, half_open);
        self.pending_fell(id);
        Ok(())
    }

    /// Ends the flows a listener had not handed out: established ones and
    /// half-open ones alike are reset, then let go. Half-open ones too: a
    /// client counts its flow open once the SYN-ACK arrived, while its
    /// ACK may still be on the way, and nothing here would answer that
    /// ACK; without the reset it would wait on a flow nobody holds.
    fn reset_unaccepted(
        &mut self,
        accept_queue: impl IntoIterator<Item = FlowId>,
        half_open: impl IntoIterator<Item = FlowId>,
    ) {
        for flow in accept_queue {
            self.abort(flow).ok();
            self.close(flow).ok();
        }
        for flow in half_open {
            self.abort(flow).ok();
            self.free_flow(flow);
        }
    }

    /// Whether `listener` stopped listening ([`Host::stop_listening`]).
    pub fn is_stopped(&self, listener: ListenerId) -> bool {
        self.listeners.is_stopped(listener)
    }

    /// Installs a listener and its DEMUX rule; a datagram listener gets its
    /// socket, whose own service ID is the prefix's.
    pub(super) fn bind_listener(
        &mut self,
        prefix: ServicePrefix,
        protocol: TransportProtocol,
        backlog: usize,
        ephemeral: bool,
        relay: Option<Locator>,
    ) -> Result<ListenerId, HostError> {
        let taken = self.table.get(&prefix).is_some_and(|rule| {
            rule.targets()
                .iter()
                .any(|t| matches!(t.target, Target::Demux { .. }))
        });
        if taken {
            return Err(HostError::AddressInUse(prefix));
        }
        let id = self.listeners.allocate_id();
        let datagram_socket = match protocol {
            TransportProtocol::Datagram => {
                Some(self.new_datagram_socket(id, *prefix.id(), ephemeral)?)
            }
            TransportProtocol::Stream => None,
        };
        self.listeners
            .insert(id, prefix, protocol, backlog, datagram_socket);
        if let Some(listener) = self.listeners.by_id.get_mut(&id) {
            listener.ephemeral = ephemeral;
        }
        // Before its rule: adding it looks again at packets a DELAY rule
        // (or a reservation) holds, and a relay's must go on to its program.
        if let Some(locator) = relay {
            self.listeners.set_relay(id, locator);
        }
        self.reserved.retain(|reserved| *reserved != prefix);
        self.add_rule(prefix, Target::Demux { listener: id }, 0);
        Ok(id)
    }

    /// Whether `listener` is an unbound datagram socket's own service ID
    /// rather than a service bound by an application.
    pub fn is_ephemeral(&self, listener: ListenerId) -> bool {
        self.listeners.is_ephemeral(listener)
    }

    /// Half-open server flows (SYN answered, ACK awaited), all listeners
    /// together: bounded by the backlogs and `HostConfig::max_half_open`,
    /// whatever arrives (see the module docs).
    pub fn half_open_count(&self) -> usize {
        self.listeners.half_open_count()
    }

    /// Number of bound listeners.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// The datagram socket of a datagram listener (where unconnected
    /// datagrams to its service arrive).
    pub fn listener_socket(&self, listener: ListenerId) -> Option<FlowId> {
        self.listeners.get(listener)?.datagram_socket
    }

    /// Drains a listener (see the module docs): removes its DEMUX rule and
    /// emits [`Event::Unregistered`], so that new connections go elsewhere,
    /// while the flows it admitted complete and wait for
    /// [`Host::accept`]. Draining a drained listener changes nothing.
    pub fn drain_listener(&mut self, id: ListenerId) -> Result<(), HostError> {
        let newly = self
            .listeners
            .drain(id)
            .ok_or(HostError::NoSuchListener(id))?;
        if newly {
            let prefix = self.listeners.get(id).map(|l| l.prefix);
            if let Some(prefix) = prefix {
                let _ = self
                    .table
                    .remove_target(&prefix, &TargetKey::Demux { listener: id });
                self.events.push_back(Event::Unregistered(id, prefix));
            }
        }
        Ok(())
    }

    /// Whether `listener` was drained.
    pub fn is_draining(&self, listener: ListenerId) -> bool {
        self.listeners.is_draining(listener)
    }

    /// How many flows `listener` admitted that the application has not
    /// accepted yet (half-open or queued); `None` if there is no such
    /// listener. A drained listener with none pending can close without
    /// resetting anyone.
    pub fn listener_pending(&self, listener: ListenerId) -> Option<usize> {
        self.listeners.pending(listener)
    }

    /// The listener a server flow arrived through (still known after the
    /// flow is accepted); `None` for client flows.
    pub fn flow_listener(&self, flow: FlowId) -> Option<ListenerId> {
        match self.endpoints.get(flow)? {
            Endpoint::Flow(flow) => flow.listener,
            Endpoint::Datagram(_) => None,
        }
    }

    /// The listener bound to exactly `prefix` and serving it (not drained).
    pub fn bound_listener(&self, prefix: &ServicePrefix) -> Option<ListenerId> {
        self.table
            .get(prefix)?
            .targets()
            .iter()
            .find_map(|t| match t.target {
                Target::Demux { listener } if !self.listeners.is_ephemeral(listener) => {
                    Some(listener)
                }
                _ => None,
            })
    }

    /// A SYN that no rule serves here, for the prefix of a drained
    /// listener: the client of one of its half-open flows retransmitting
    /// (answered again), or a SYN a router sent before the drain reached it
    /// (dropped without a reset: the client's retransmission finds another
    /// instance). Returns whether the SYN was handled so.
    pub(super) fn syn_for_drained(&mut self, client: Locator, repr: &SalRepr) -> bool {
        let (Some(service), Some(client_flow)) = (repr.service, repr.src_flow) else {
            return false;
        };
        if !self.listeners.draining_covers(&service, self.now) {
            return false;
        }
        match self.listeners.half_open_flow(client, client_flow) {
            Some(existing) => self.retransmit_now(existing),
            None => self.stats.drained_syns += 1,
        }
        true
    }

    /// Unbinds a listener: removes its DEMUX rule, resets flows not yet
    /// accepted, and emits [`Event::Unregistered`] (unless it was drained,
    /// which already did).
    pub fn close_listener(&mut self, id: ListenerId) -> Result<(), HostError> {
        let removed = self
            .listeners
            .remove(id, self.now + self.config.drained_linger)
            .ok_or(HostError::NoSuchListener(id))?;
        let _ = self
            .table
            .remove_target(&removed.prefix, &TargetKey::Demux { listener: id });
        self.reset_unaccepted(removed.accept_queue, removed.half_open);
        if let Some(socket) = removed.datagram_socket {
            self.endpoints.remove(socket);
        }
        if !removed.ephemeral && !removed.draining {
            self.events
                .push_back(Event::Unregistered(id, removed.prefix));
        }
        Ok(())
    }

    /// Takes the next established flow from a listener's accept queue: the
    /// application has it ([`Host::take`], then [`Host::accepted`]).
    pub fn accept(&mut self, id: ListenerId) -> Result<FlowId, HostError> {
        let flow = self.take(id)?;
        let _ = self.accepted(flow);
        Ok(flow)
    }

    /// Takes the next established flow from a listener's accept queue, as
    /// [`Host::accept`] does, for a driver that hands it on through a
    /// queue of its own (sald's `Deliver`): the flow no longer counts
    /// against the listener's backlog nor among its pending flows (a
    /// drained listener left with none says so), but it still counts as
    /// not accepted (see `budget.rs`) until the driver learns that the
    /// application took it from there and says so ([`Host::accepted`]).
    pub fn take(&mut self, id: ListenerId) -> Result<FlowId, HostError> {
        let flow = self.listeners.accept(id)?;
        self.pending_fell(id);
        Ok(flow)
    }

    /// A flow left `listener`'s pending ones (accepted, or gone before):
    /// a drained listener left with none says so ([`Event::Settled`]).
    pub(super) fn pending_fell(&mut self, listener: ListenerId) {
        if self.listeners.is_draining(listener) && self.listeners.pending(listener) == Some(0) {
            self.events.push_back(Event::Settled(listener));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn flow(n: u32) -> FlowId {
        FlowId::new(n).unwrap()
    }

    const CLIENT: Locator = Locator::Ipv4(Ipv4Addr::new(10, 0, 0, 1));

    /// Two programs on one host (or two hosts behind one NAT) in UDP
    /// carriage: one address, two ports.
    fn udp_client(port: u16) -> Locator {
        Locator::Udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100), port))
    }

    #[test]
    fn clients_that_share_an_address_are_told_apart_by_port() {
        let (mut l, id) = listeners(8);
        l.syn_received(id, udp_client(1000), flow(100), flow(1));
        assert_eq!(l.half_open_flow(udp_client(1000), flow(100)), Some(flow(1)));
        assert_eq!(l.half_open_flow(udp_client(2000), flow(100)), None);
        l.syn_received(id, udp_client(2000), flow(100), flow(2));
        assert_eq!(l.half_open_flow(udp_client(2000), flow(100)), Some(flow(2)));
        assert_eq!(l.half_open_count(), 2);
        assert!(l.established(id, flow(1)));
        assert_eq!(l.half_open_flow(udp_client(1000), flow(100)), None);
        assert_eq!(l.half_open_flow(udp_client(2000), flow(100)), Some(flow(2)));
    }

    fn listeners(backlog: usize) -> (Listeners, ListenerId) {
        let mut listeners = Listeners::default();
        let id = listeners.allocate_id();
        listeners.insert(
            id,
            "beef/16".parse().unwrap(),
            TransportProtocol::Stream,
            backlog,
            None,
        );
        (listeners, id)
    }

    #[test]
    fn the_backlog_counts_half_open_and_unaccepted_flows() {
        let (mut l, id) = listeners(2);
        assert!(l.admits(id, TransportProtocol::Stream));
        assert!(!l.admits(id, TransportProtocol::Datagram), "wrong protocol");
        l.syn_received(id, CLIENT, flow(100), flow(1));
        l.syn_received(id, CLIENT, flow(101), flow(2));
        assert!(!l.admits(id, TransportProtocol::Stream), "two half-open");
        assert!(l.established(id, flow(1)));
        assert!(
            !l.admits(id, TransportProtocol::Stream),
            "one queued, one half-open"
        );
        assert_eq!(l.accept(id), Ok(flow(1)));
        assert!(l.admits(id, TransportProtocol::Stream));
        assert_eq!(l.accept(id), Err(HostError::WouldBlock));
        assert_eq!(
            l.accept(ListenerId(99)),
            Err(HostError::NoSuchListener(ListenerId(99)))
        );
    }

    #[test]
    fn a_retransmitted_syn_finds_its_half_open_flow_until_established() {
        let (mut l, id) = listeners(8);
        l.syn_received(id, CLIENT, flow(100), flow(1));
        assert_eq!(l.half_open_flow(CLIENT, flow(100)), Some(flow(1)));
        assert_eq!(l.half_open_flow(CLIENT, flow(101)), None);
        l.established(id, flow(1));
        assert_eq!(l.half_open_flow(CLIENT, flow(100)), None);
    }

    #[test]
    fn forgetting_and_removing_undo_the_accounting() {
        let (mut l, id) = listeners(1);
        l.syn_received(id, CLIENT, flow(100), flow(1));
        assert!(l.forget(id, flow(1)), "it was half-open");
        assert!(!l.forget(id, flow(1)), "forgotten already");
        assert!(l.admits(id, TransportProtocol::Stream));
        assert_eq!(l.half_open_flow(CLIENT, flow(100)), None);
        l.syn_received(id, CLIENT, flow(102), flow(3));
        let removed = l.remove(id, Instant::ZERO).unwrap();
        assert_eq!(removed.half_open, [flow(3)]);
        assert_eq!(l.half_open_flow(CLIENT, flow(102)), None);
        assert_eq!(l.len(), 0);
        assert!(!l.established(id, flow(3)), "the listener is gone");
    }

    #[test]
    fn a_prefix_stays_drained_while_a_drained_listener_on_it_remains() {
        let (mut l, first) = listeners(8);
        let service: ServiceId = "beef01".parse().unwrap();
        let t = |ms| Instant::from_millis(ms);
        assert!(!l.draining_covers(&service, t(0)));
        assert_eq!(l.drain(first), Some(true));
        assert_eq!(l.drain(first), Some(false), "counted once");
        assert!(l.draining_covers(&service, t(0)));
        assert!(!l.draining_covers(&"cafe".parse().unwrap(), t(0)));
        // Bound again on the same prefix, and drained again.
        let second = l.allocate_id();
        l.insert(
            second,
            "beef/16".parse().unwrap(),
            TransportProtocol::Stream,
            8,
            None,
        );
        assert_eq!(l.drain(second), Some(true));
        l.remove(first, t(1000));
        l.remove(second, t(3000));
        assert!(l.draining_covers(&service, t(2000)), "the second lingers");
        assert!(!l.draining_covers(&service, t(3000)));
        assert!(l.lingering.is_empty() && l.drained.is_empty());
        // A listener that was never drained leaves nothing behind.
        let third = l.allocate_id();
        l.insert(
            third,
            "beef/16".parse().unwrap(),
            TransportProtocol::Stream,
            8,
            None,
        );
        l.remove(third, t(9000));
        assert!(!l.draining_covers(&service, t(4000)));
        assert!(l.lingering.is_empty());
    }

    /// A listener that stops listening (`connect(AF_UNSPEC)`, as TCP's)
    /// gives up its half-open and queued flows, refuses every SYN, cookie
    /// or not, and listens again at its next backlog.
    #[test]
    fn a_stopped_listener_admits_nothing_until_a_new_backlog() {
        let (mut l, id) = listeners(4);
        l.syn_received(id, CLIENT, flow(100), flow(1));
        l.syn_received(id, CLIENT, flow(101), flow(2));
        assert!(l.established(id, flow(2)));
        let (half_open, queued) = l.stop(id).expect("a stream listener");
        assert_eq!(half_open, [flow(1)]);
        assert_eq!(queued, [flow(2)]);
        assert_eq!(l.half_open_flow(CLIENT, flow(100)), None);
        assert_eq!(l.pending(id), Some(0));
        assert!(l.is_stopped(id));
        assert!(!l.admits(id, TransportProtocol::Stream));
        assert!(!l.has_accept_room(id));
        let config = HostConfig::default();
        assert_eq!(
            l.admission(id, TransportProtocol::Stream, &config),
            Admission::Refuse
        );
        assert!(l.set_backlog(id, 4));
        assert!(!l.is_stopped(id));
        assert!(l.admits(id, TransportProtocol::Stream));

        let datagrams = l.allocate_id();
        l.insert(
            datagrams,
            "d0/8".parse().unwrap(),
            TransportProtocol::Datagram,
            4,
            None,
        );
        assert!(l.stop(datagrams).is_none(), "a datagram listener");
    }

    #[test]
    fn a_zero_backlog_still_admits_one() {
        let (l, id) = listeners(0);
        assert!(l.admits(id, TransportProtocol::Stream));
    }
}
