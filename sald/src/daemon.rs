//! The daemon's shared state: the sans-IO [`Host`] behind a mutex, the links
//! it transmits on, and the bookkeeping that connects host events to the
//! tasks waiting on them (app flows, pending accepts and connects, waiting
//! drains, subscribers), with who owns what ([`Owners`]) and who installed
//! which rule ([`Origins`]). Everything here belongs to one daemon: two
//! daemons in one process share nothing.
//!
//! Every task that touches the host does so in a short critical section and
//! ends it with [`Core::run`], which advances the host, writes its transmits
//! to the link and dispatches its events. No lock is held across an await.
//!
//! Transmits are written by the host straight into one buffer with room in
//! front for the IPv4 header, which is written there before the buffer goes
//! to the TUN device (or, without it, to the UDP socket): no allocation and
//! no copy per packet on the way out.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use sal::proto::{ConnectError, Event, FlowInfo, Host, HostError, Transmit, TransmitKind};
use sal::table::ListenerId;
use sal::time::Instant;
use sal::wire::{Ipv4Carriage, IPV4_HEADER_LEN};
use sal::{FlowId, Locator};
use sal_control::{ControlEvent, StatsReport};
use tokio::sync::{oneshot, watch, Notify};

use crate::accept_queue::AcceptQueue;
use crate::drains::DrainWatches;
use crate::events::{Audience, EventBus, Subscription};
use crate::link::{tun_egress_ttl, TunLink};
use crate::origins::Origins;
use crate::owners::Owners;
use crate::raw::RawSender;
use crate::udp::{TxBatch, UdpLink};

/// Wakes the task serving one app-owned flow or datagram socket: data may
/// be readable from the host, send room may have opened, or the flow ended.
/// A wake-up that finds the task busy is kept for its next wait.
#[derive(Debug, Default)]
pub struct FlowSignal(Notify);

impl FlowSignal {
    fn wake(&self) {
        self.0.notify_one();
    }

    /// Waits for the next wake-up (at once if one came since the last wait).
    pub async fn notified(&self) {
        self.0.notified().await
    }
}

/// The largest packet: room for the IPv4 header and any SAL packet.
const PACKET_BUFFER: usize = 65_535;
/// Times one run hands the host the refusals its own sends found (see
/// [`Core::run`]); any beyond wait for the next run (the next packet,
/// timer or request: the error queue they came from is empty by then, so
/// nothing wakes the link for them).
const REFUSAL_ROUNDS: usize = 2;

/// How packets leave this host.
#[derive(Clone)]
pub enum Links {
    /// Native IPv4 protocol 144 through the TUN device.
    Tun(Arc<TunLink>),
    /// UDP encapsulation.
    Udp(Arc<UdpLink>),
}

/// Counters of the link layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkStats {
    /// Packets read from the links and handed to the host.
    pub rx: u64,
    /// Packets written to the links (TUN, raw socket, or UDP datagrams).
    pub tx: u64,
    /// Packets a link failed to send or dropped, plus UDP datagrams
    /// received unusable.
    pub errors: u64,
}

/// A `Deliver` feeder's claim on a listener ([`Core::start_delivering`]):
/// the listener's one feeder, until it ends or the listener stops
/// listening, when a new `Deliver` may claim it while the old feeder has
/// yet to learn it lost the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim(u64);

/// A listener's `Deliver` feeder: its claim, and the accept queue it feeds
/// once it has one.
#[derive(Debug)]
struct Delivery {
    claim: Claim,
    queue: Option<Arc<AcceptQueue>>,
}

/// Everything behind the daemon's one lock.
pub struct Core {
    /// The sans-IO protocol core: service table, flows and listeners.
    pub host: Host,
    epoch: std::time::Instant,
    links: Links,
    /// Native mode: the raw socket for relays and broadcasts.
    raw: Option<RawSender>,
    ident: u16,
    /// Where transmits are written: the IPv4 header's room, then the packet.
    buffer: Box<[u8]>,
    /// The links' packet counters, for `servalctl stats`.
    pub link_stats: LinkStats,
    flows: HashMap<FlowId, Arc<FlowSignal>>,
    pending_accepts: HashMap<ListenerId, VecDeque<oneshot::Sender<FlowId>>>,
    /// Flows the host has let go of (accepted) that a waiter got but has
    /// not handed to the application yet, by listener: drains count them.
    in_hand: HashMap<ListenerId, usize>,
    /// Listeners whose flows a `Deliver` feeder is handing out: one each,
    /// with the accept queue it feeds once it has one (drains count what
    /// the program has not taken from it).
    delivering: HashMap<ListenerId, Delivery>,
    /// The claim the next `Deliver` feeder gets ([`Core::start_delivering`]).
    next_claim: u64,
    /// Drained listeners that waiting drains watch until nothing is
    /// pending on them (see [`Core::pending`]).
    drain_watches: DrainWatches,
    /// Listeners drains looked at (see [`Core::drain_look`]).
    drain_looks: u64,
    pending_connects: HashMap<FlowId, oneshot::Sender<Result<FlowInfo, ConnectError>>>,
    events: EventBus,
    /// Who installed which rule target.
    pub origins: Origins,
    /// Who owns which binding and flow.
    pub owners: Owners,
    /// The UDP socket of each relay's program (`Relay`), kept while the
    /// relay is bound: it proved the port is the program's, and holding
    /// it keeps anybody else from binding the port meanwhile (shared with
    /// the watch that ends a relay whose port became shareable).
    pub relay_sockets: HashMap<ListenerId, Arc<OwnedFd>>,
    /// Control connections being served now, kept by the client tasks.
    pub control_clients: usize,
    /// Tells the timer task that the host's next deadline may have moved.
    timer: Arc<Notify>,
    /// UDP mode: datagrams waiting for the socket, sent at the end of each
    /// [`Core::run`] in one batch.
    udp_tx: Option<TxBatch>,
    /// Tells the UDP writer task that the socket was full.
    udp_blocked: Arc<Notify>,
}

/// The daemon state shared by all tasks.
pub struct Shared {
    core: Mutex<Core>,
    /// The host's next deadline may have moved earlier.
    pub timer: Arc<Notify>,
    /// UDP mode: the socket was full and datagrams wait in the batch.
    pub udp_blocked: Arc<Notify>,
    /// Relays sald ended itself (`control/cmd/relay.rs`, `watch_sockets`;
    /// `servalctl stats`' `relays_ended`): a control connection that holds
    /// listeners looks which of its own are gone when this changed.
    pub relays_ended: AtomicU64,
}

impl Shared {
    /// The state of a daemon driving `host` over `links`, keeping up to
    /// `event_queue` events for slow subscribers.
    pub fn new(host: Host, links: Links, event_queue: usize) -> Arc<Shared> {
        let timer = Arc::new(Notify::new());
        let udp_blocked = Arc::new(Notify::new());
        let udp_tx = match &links {
            Links::Udp(udp) => Some(udp.tx_batch()),
            Links::Tun(_) => None,
        };
        Arc::new(Shared {
            core: Mutex::new(Core {
                host,
                epoch: std::time::Instant::now(),
                links,
                raw: None,
                ident: 0,
                buffer: vec![0u8; PACKET_BUFFER].into_boxed_slice(),
                link_stats: LinkStats::default(),
                flows: HashMap::new(),
                pending_accepts: HashMap::new(),
                in_hand: HashMap::new(),
                delivering: HashMap::new(),
                next_claim: 0,
                drain_watches: DrainWatches::default(),
                drain_looks: 0,
                pending_connects: HashMap::new(),
                events: EventBus::new(event_queue),
                origins: Origins::default(),
                owners: Owners::default(),
                relay_sockets: HashMap::new(),
                control_clients: 0,
                timer: timer.clone(),
                udp_tx,
                udp_blocked: udp_blocked.clone(),
            }),
            timer,
            udp_blocked,
            relays_ended: AtomicU64::new(0),
        })
    }

    /// Locks the core. A panic while holding the lock is a bug that already
    /// took a task down; the state is still the host's own, so keep serving.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        let mut core = self
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Whatever the caller does next starts its deadlines from now, not
        // from the last poll (which may be long ago on an idle host).
        let now = core.now();
        core.host.advance_clock(now);
        core
    }
}

impl Core {
    /// The host's clock: microseconds since the daemon started.
    pub fn now(&self) -> Instant {
        Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Advances the host, sends what it produced, dispatches its events.
    pub fn run(&mut self) {
        let now = self.now();
        // What was found refused (UDP mode: reports of earlier sends) goes
        // to the host first, so that nothing more goes to a hop gone; what
        // the host does about it (a SYN sent another way, a reset) goes
        // out with the rest, and reports those sends read are taken too,
        // a few rounds at most.
        self.take_refusals(now);
        self.host.poll(now);
        self.flush();
        for _ in 0..REFUSAL_ROUNDS {
            if !self.take_refusals(now) {
                break;
            }
            self.host.poll(now);
            self.flush();
        }
        self.dispatch();
        self.timer.notify_one();
    }

    /// UDP mode: hands the host the datagrams that came back as port
    /// unreachable (see `udp`'s module docs); whether there were any.
    fn take_refusals(&mut self, now: Instant) -> bool {
        let Links::Udp(udp) = &self.links else {
            return false;
        };
        let refused = udp.take_unreachable();
        for (to, start) in &refused {
            self.host.handle_unreachable(now, Locator::Udp(*to), start);
        }
        !refused.is_empty()
    }

    /// The host's next deadline as a wall-clock instant.
    pub fn deadline(&mut self) -> Option<std::time::Instant> {
        let at = self.host.poll_timeout()?;
        let micros = u64::try_from(at.total_micros()).unwrap_or(0);
        Some(self.epoch + std::time::Duration::from_micros(micros))
    }

    /// Writes every pending transmit to the link. Native mode: the host
    /// writes each packet after the room for the IPv4 header, which goes in
    /// front; relayed packets and broadcasts leave through the raw socket
    /// (when there is one), the rest through the TUN. UDP mode: the host
    /// writes each packet straight into the send batch.
    fn flush(&mut self) {
        let now = self.now();
        if matches!(self.links, Links::Udp(_)) {
            self.flush_udp(now);
            return;
        }
        while let Some(transmit) = self
            .host
            .poll_transmit(now, &mut self.buffer[IPV4_HEADER_LEN..])
        {
            let packet = &mut self.buffer[..IPV4_HEADER_LEN + transmit.len];
            let sent = match &self.links {
                Links::Tun(tun) => {
                    let raw = (self.raw.as_ref()).filter(|_| transmit.kind != TransmitKind::Own);
                    let ttl = match raw {
                        Some(_) => transmit.ttl,
                        None => tun_egress_ttl(transmit.ttl),
                    };
                    self.ident = self.ident.wrapping_add(1);
                    let carriage = Ipv4Carriage {
                        src: transmit.src.ip(),
                        dst: transmit.dst.ip(),
                        ttl,
                        ident: self.ident,
                    };
                    carriage.emit(packet, transmit.len).is_ok()
                        && match raw {
                            Some(raw) => raw.send(packet).is_ok(),
                            None => tun.try_send(packet).is_ok(),
                        }
                }
                Links::Udp(_) => false,
            };
            if sent {
                self.link_stats.tx += 1;
            } else {
                self.link_stats.errors += 1;
                tracing::debug!(dst = %transmit.dst, "link dropped a packet");
            }
        }
        self.send_datagrams();
    }

    /// UDP mode: the host writes its packets straight into the send batch,
    /// which then goes out in as few system calls as the socket allows.
    fn flush_udp(&mut self, now: sal::time::Instant) {
        loop {
            let Some(batch) = self.udp_tx.as_mut() else {
                return;
            };
            let host = &mut self.host;
            let mut polled = None;
            let added = batch.push_with(crate::udp::MAX_PAYLOAD, |room| {
                let transmit = host.poll_transmit(now, room)?;
                polled = Some(transmit.dst);
                Some((
                    Some(transmit.src.ip()),
                    udp_destination(&transmit)?,
                    transmit.len,
                ))
            });
            if added {
                continue;
            }
            // Not sent: the batch is full (take the packet out of the host
            // and drop it, as a full socket would) or it has no UDP address.
            let dropped = match polled {
                Some(dst) => Some(dst),
                None => self
                    .host
                    .poll_transmit(now, &mut self.buffer)
                    .map(|transmit| transmit.dst),
            };
            let Some(dst) = dropped else {
                break;
            };
            self.link_stats.errors += 1;
            tracing::debug!(%dst, "UDP link dropped a packet");
        }
        self.send_datagrams();
    }

    /// UDP mode: sends the batch as far as the socket takes it; returns
    /// whether some is left (the writer task is told, and calls this again
    /// when the socket has room).
    pub fn send_datagrams(&mut self) -> bool {
        let (Links::Udp(udp), Some(batch)) = (&self.links, self.udp_tx.as_mut()) else {
            return false;
        };
        if batch.is_empty() {
            return false;
        }
        let outcome = udp.send_batch(batch);
        self.link_stats.tx += outcome.sent as u64;
        self.link_stats.errors += outcome.dropped as u64;
        if outcome.blocked {
            self.udp_blocked.notify_one();
        }
        outcome.blocked
    }

    /// Gives native mode its raw socket for relayed packets and broadcasts.
    pub fn set_raw_sender(&mut self, raw: RawSender) {
        self.raw = Some(raw);
    }

    /// Routes host events to whoever waits for them.
    fn dispatch(&mut self) {
        while let Some(event) = self.host.poll_event() {
            match event {
                Event::Activity(flow) | Event::Datagram(flow) => {
                    if let Some(signal) = self.flows.get(&flow) {
                        signal.wake();
                    }
                }
                Event::Connected(flow) => {
                    let info = self.host.flow(flow);
                    if let Some(waiter) = self.pending_connects.remove(&flow) {
                        let _ = waiter.send(info.clone().ok_or(ConnectError::Refused));
                    }
                    let owner = self.flow_owner(flow);
                    if let Some(uid) = owner {
                        // Remembered for `FlowClosed`, when the flow is gone.
                        self.owners.remember(flow, uid);
                    }
                    let service = info.map(|f| f.service).unwrap_or_default();
                    self.publish(
                        ControlEvent::FlowOpened {
                            flow,
                            service,
                            accepted: false,
                        },
                        owner,
                    );
                }
                Event::ConnectFailed(flow, error) => {
                    if let Some(waiter) = self.pending_connects.remove(&flow) {
                        let _ = waiter.send(Err(error));
                    }
                }
                Event::PeerConnected(flow) => {
                    let owner = self.flow_owner(flow);
                    if let Some(uid) = owner {
                        // As for a connect: `FlowClosed` goes to the same
                        // audience, even if the flow closes before anyone
                        // accepts it.
                        self.owners.remember(flow, uid);
                    }
                    let service = self.host.flow_service(flow).unwrap_or_default();
                    let event = ControlEvent::FlowOpened {
                        flow,
                        service,
                        accepted: true,
                    };
                    self.publish(event, owner);
                }
                Event::Incoming(listener) => self.serve_accepts(listener),
                Event::Closed(flow) => {
                    if let Some(signal) = self.flows.remove(&flow) {
                        signal.wake();
                    }
                    // A connect given up on (its timeout, an abort) ends
                    // here without `Connected` or `ConnectFailed`.
                    self.pending_connects.remove(&flow);
                    let owner = self.owners.release(flow);
                    self.publish(ControlEvent::FlowClosed { flow }, owner);
                }
                Event::DelayNotify { service, connect } => {
                    // The connect's owner was recorded when it began.
                    let uid = connect.and_then(|flow| self.owners.flow_owner(flow, None));
                    let event = ControlEvent::DelayNotify {
                        service,
                        connect: connect.is_some(),
                        uid,
                    };
                    self.publish(event, None)
                }
                // Before the listener is forgotten (`Owners::unbind` follows
                // the `run` that brought these), so its owner is known.
                Event::Registered(listener, prefix) => {
                    let owner = self.owners.listener_owner(listener);
                    self.publish(ControlEvent::Registered { prefix }, owner);
                }
                Event::Unregistered(listener, prefix) => {
                    let owner = self.owners.listener_owner(listener);
                    self.publish(ControlEvent::Unregistered { prefix }, owner);
                }
                Event::Settled(listener) => self.pending_fell(listener),
                Event::Migrated(flow, locator) => {
                    tracing::info!(%flow, %locator, "flow migrated");
                    if let Some(signal) = self.flows.get(&flow) {
                        signal.wake();
                    }
                }
                Event::PeerMoved(flow, locator) => {
                    tracing::info!(%flow, %locator, "peer moved");
                }
            }
        }
    }

    /// Publishes an event about `owner`'s flow or binding (`None`: for
    /// privileged subscribers only).
    fn publish(&self, event: ControlEvent, owner: Option<u32>) {
        let audience = owner.map_or(Audience::Privileged, Audience::User);
        self.events.publish(event, audience);
    }

    /// Hands queued flows to waiting accepts.
    fn serve_accepts(&mut self, listener: ListenerId) {
        let Some(waiters) = self.pending_accepts.get_mut(&listener) else {
            return;
        };
        while !waiters.is_empty() {
            let Ok(flow) = self.host.take(listener) else {
                break;
            };
            // A waiter whose client went away is skipped; the flow goes to the next.
            let mut flow = Some(flow);
            while let Some(waiter) = waiters.pop_front() {
                match waiter.send(flow.take().expect("set above")) {
                    Ok(()) => {
                        *self.in_hand.entry(listener).or_default() += 1;
                        break;
                    }
                    Err(returned) => flow = Some(returned),
                }
            }
            if let Some(orphan) = flow {
                // Nobody wanted it after all: reset it rather than leak it.
                let _ = self.host.abort(orphan);
                let _ = self.host.close(orphan);
            }
        }
    }

    /// Shrinks the host's tables and sald's own per-flow maps to what they
    /// hold now (see [`crate::memory`]).
    pub fn compact(&mut self) {
        self.host.compact();
        self.flows.shrink_to_fit();
        self.pending_accepts.shrink_to_fit();
        self.in_hand.shrink_to_fit();
        self.drain_watches.shrink_to_fit();
        self.pending_connects.shrink_to_fit();
        self.owners.shrink_to_fit();
    }

    /// Registers interest in a flow (or datagram socket) handed to an app.
    pub fn adopt(&mut self, flow: FlowId) -> Arc<FlowSignal> {
        let signal = Arc::new(FlowSignal::default());
        self.flows.insert(flow, signal.clone());
        signal
    }

    /// Forgets an app-owned datagram socket (flows go on `Closed`).
    pub fn disown(&mut self, flow: FlowId) {
        self.flows.remove(&flow);
    }

    /// Waits for the next flow of `listener`: at once if one is queued; the
    /// receiver fails when the listener is (or already was) closed. A flow
    /// received is in hand (see [`Core::in_hand`]) until [`Core::released`],
    /// or [`Core::give_up_accept`] if none was received. The host counts it
    /// as accepted only once handed over, as that says ([`Host::take`]).
    pub fn wait_accept(&mut self, listener: ListenerId) -> oneshot::Receiver<FlowId> {
        let (tx, rx) = oneshot::channel();
        match self.host.take(listener) {
            Ok(flow) => {
                let _ = tx.send(flow);
                *self.in_hand.entry(listener).or_default() += 1;
            }
            Err(HostError::NoSuchListener(_)) => drop(tx),
            Err(_) => self
                .pending_accepts
                .entry(listener)
                .or_default()
                .push_back(tx),
        }
        rx
    }

    /// Flows of `listener` its waiters took from the host and have not
    /// handed over yet (at most one per waiter).
    pub fn in_hand(&self, listener: ListenerId) -> usize {
        self.in_hand.get(&listener).copied().unwrap_or(0)
    }

    /// A flow of `listener` taken by [`Core::wait_accept`] is now the
    /// application's, or gone.
    pub fn released(&mut self, listener: ListenerId) {
        if let Some(count) = self.in_hand.get_mut(&listener) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.in_hand.remove(&listener);
            }
        }
        self.pending_fell(listener);
    }

    /// Flows `listener` admitted that are not the application's yet: those
    /// sald holds (`Core::held`) and those in the application's accept
    /// queue that it has not taken out ([`AcceptQueue::untaken`], one
    /// system call); none once it is closed. What a drain waits to see at
    /// 0: on a drained listener, which admits no new flow, it only ever
    /// falls.
    pub fn pending(&self, listener: ListenerId) -> usize {
        self.held(listener).map_or(0, |held| {
            held + self
                .accept_queue(listener)
                .map_or(0, |queue| queue.untaken())
        })
    }

    /// Flows `listener` admitted that sald holds: those the host still
    /// holds (half-open or queued) and those on their way to the
    /// application ([`Core::in_hand`]); `None` once it is closed. On a
    /// drained listener it only ever falls, and once it is 0 nothing more
    /// goes into its accept queue.
    fn held(&self, listener: ListenerId) -> Option<usize> {
        let queued = self.host.listener_pending(listener)?;
        Some(queued + self.in_hand(listener))
    }

    /// The accept queue `listener`'s flows are delivered into, if any.
    fn accept_queue(&self, listener: ListenerId) -> Option<&Arc<AcceptQueue>> {
        self.delivering.get(&listener)?.queue.as_ref()
    }

    /// [`Core::pending`], looked at on a drain's behalf: counted, for
    /// `servalctl stats` (`drain_looks`) and the tests that check that a
    /// waiting drain does not poll.
    pub fn drain_look(&mut self, listener: ListenerId) -> usize {
        self.drain_looks += 1;
        self.pending(listener)
    }

    /// A waiting drain's look: the first of `listeners` that has flows
    /// pending, with its index, watched from now on (see
    /// [`crate::drains`]), so that sald letting go of its last one wakes
    /// the drain even if it comes before the drain sleeps; `None` if none
    /// has any. With it, once sald holds none of them, the accept queue
    /// that still holds the rest, for the drain to wait until it is
    /// emptied ([`AcceptQueue::emptied`]). Give the watch back with
    /// [`Core::unwatch_drained`].
    pub fn watch_first_pending(&mut self, listeners: &[ListenerId]) -> Option<DrainWatch> {
        let (at, &listener) =
            (listeners.iter().enumerate()).find(|&(_, &l)| self.drain_look(l) > 0)?;
        let queue = match self.held(listener) {
            Some(0) => self.accept_queue(listener).cloned(),
            _ => None,
        };
        Some(DrainWatch {
            at,
            listener,
            receiver: self.drain_watches.watch(listener),
            queue,
        })
    }

    /// Gives back a watch of [`Core::watch_first_pending`].
    pub fn unwatch_drained(&mut self, listener: ListenerId, watch: watch::Receiver<()>) {
        self.drain_watches.unwatch(listener, watch);
    }

    /// The flows sald holds for `listener` fell (the host let one go, one
    /// on its way reached the application or its accept queue, the
    /// listener closed, or its accept queue went): the drains watching it
    /// wake if none are left, to look again (what the queue still holds
    /// they wait for themselves, see [`Core::watch_first_pending`]). One
    /// lookup for a listener nobody watches.
    fn pending_fell(&mut self, listener: ListenerId) {
        if self.drain_watches.is_watched(listener) && self.held(listener).unwrap_or(0) == 0 {
            self.drain_watches.settled(listener);
        }
    }

    /// Withdraws a wait for `listener`'s next flow: a flow that reached
    /// `waiter` meanwhile is reset rather than left established with
    /// nobody to take it.
    pub fn give_up_accept(&mut self, listener: ListenerId, mut waiter: oneshot::Receiver<FlowId>) {
        waiter.close();
        if let Ok(orphan) = waiter.try_recv() {
            let _ = self.host.abort(orphan);
            let _ = self.host.close(orphan);
            self.released(listener);
            self.run();
        }
        self.prune_accepts(listener);
    }

    /// Unbinds a listener for good: closes it ([`Core::close_listener`]),
    /// runs the host so that its `Unregistered` event goes out (which
    /// needs the owner), then forgets its owner. Returns the close's
    /// outcome and the binding it had.
    pub fn unbind_listener(
        &mut self,
        listener: ListenerId,
    ) -> (Result<(), HostError>, Option<crate::owners::Binding>) {
        let closed = self.close_listener(listener);
        self.run();
        (closed, self.owners.unbind(listener))
    }

    /// Closes a listener (see [`Host::close_listener`]); whoever waits for
    /// its flows (an `Accept`, a `Deliver` queue's feeder) or for them to
    /// be taken (a waiting drain) learns it is gone.
    pub fn close_listener(&mut self, listener: ListenerId) -> Result<(), HostError> {
        self.pending_accepts.remove(&listener);
        self.relay_sockets.remove(&listener);
        let socket = self.host.listener_socket(listener);
        let closed = self.host.close_listener(listener);
        // A datagram listener's socket went with it: its pump, waiting for
        // datagrams, must hear so and end (the application then reads end
        // of file), or it would hold its task and descriptor for good.
        if let Some(signal) = socket.and_then(|socket| self.flows.get(&socket)) {
            signal.wake();
        }
        // Nothing is pending on it any more: drains waiting on it answer.
        self.pending_fell(listener);
        closed
    }

    /// Stops a stream listener listening, bound still (see
    /// [`Host::stop_listening`]): whoever waits for its flows learns it,
    /// a blocking `Accept` as a closed listener's, and a `Deliver` queue's
    /// feeder, which sends nothing more and ends its queue (see
    /// [`AcceptQueue::stop`]).
    pub fn stop_listening(&mut self, listener: ListenerId) -> Result<(), HostError> {
        self.host.stop_listening(listener)?;
        self.pending_accepts.remove(&listener);
        // The feeder's claim goes now, whether or not the feeder has run
        // yet (it looks at its claim before it waits for a flow): a new
        // `Deliver` may come as soon as the answer has gone out.
        if let Some(Delivery {
            queue: Some(queue), ..
        }) = self.delivering.remove(&listener)
        {
            queue.stop();
        }
        // Nothing is pending on it any more: drains waiting on it answer.
        self.pending_fell(listener);
        Ok(())
    }

    /// Drops accept waiters whose clients are gone.
    pub fn prune_accepts(&mut self, listener: ListenerId) {
        if let Some(waiters) = self.pending_accepts.get_mut(&listener) {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                self.pending_accepts.remove(&listener);
            }
        }
    }

    /// Claims `listener` for a `Deliver` feeder; `None` if one has it.
    pub fn start_delivering(&mut self, listener: ListenerId) -> Option<Claim> {
        match self.delivering.entry(listener) {
            Entry::Occupied(_) => None,
            Entry::Vacant(entry) => {
                let claim = Claim(self.next_claim);
                self.next_claim += 1;
                entry.insert(Delivery { claim, queue: None });
                Some(claim)
            }
        }
    }

    /// The feeder that claimed `listener` delivers into `queue`: what the
    /// program has not taken from it counts as pending (see
    /// [`Core::pending`]). False if the claim is gone (the listener
    /// stopped listening since: the feeder ends).
    pub fn delivering_into(
        &mut self,
        listener: ListenerId,
        claim: Claim,
        queue: Arc<AcceptQueue>,
    ) -> bool {
        match self.delivering.get_mut(&listener) {
            Some(delivery) if delivery.claim == claim => {
                delivery.queue = Some(queue);
                true
            }
            _ => false,
        }
    }

    /// Whether the feeder that claimed `listener` with `claim` still has
    /// it (the listener did not stop listening since).
    pub fn still_delivering(&self, listener: ListenerId, claim: Claim) -> bool {
        self.delivering
            .get(&listener)
            .is_some_and(|delivery| delivery.claim == claim)
    }

    /// Gives up the claim of [`Core::start_delivering`], if the feeder
    /// still has it: its queue no longer counts, and the drains waiting on
    /// it look again.
    pub fn stop_delivering(&mut self, listener: ListenerId, claim: Claim) {
        if !self.still_delivering(listener, claim) {
            return;
        }
        if let Some(Delivery { queue: Some(_), .. }) = self.delivering.remove(&listener) {
            self.pending_fell(listener);
        }
    }

    /// Waits for a connect to complete.
    pub fn wait_connect(
        &mut self,
        flow: FlowId,
    ) -> oneshot::Receiver<Result<FlowInfo, ConnectError>> {
        let (tx, rx) = oneshot::channel();
        self.pending_connects.insert(flow, tx);
        rx
    }

    /// Adds an event subscriber.
    pub fn subscribe(&self) -> Subscription {
        self.events.subscribe()
    }

    /// The IDs of every flow `uid` may see: all of them when `privileged`,
    /// else those [`Owners::flows_of`] knows to be the user's, found
    /// without a walk over the host's flows (which any user could have
    /// sald make under this lock, as often as it liked).
    pub fn visible_flow_ids(&self, uid: u32, privileged: bool) -> Vec<FlowId> {
        if privileged {
            return self.host.flow_ids().collect();
        }
        self.owners
            .flows_of(uid)
            // Datagram sockets are owned too, but not listed as flows.
            .filter(|&flow| self.host.flow_service(flow).is_some())
            .collect()
    }

    /// The flows of `ids` that still exist and `uid` may see (an ID may
    /// have gone, or even come back as another flow, since it was listed).
    pub fn visible_flows(&self, ids: &[FlowId], uid: u32, privileged: bool) -> Vec<FlowInfo> {
        ids.iter()
            .filter(|&&flow| privileged || self.flow_owner(flow) == Some(uid))
            .filter_map(|&flow| self.host.flow(flow))
            .collect()
    }

    /// Who owns `flow` (see [`Owners::flow_owner`]).
    fn flow_owner(&self, flow: FlowId) -> Option<u32> {
        self.owners.flow_owner(flow, self.host.flow_listener(flow))
    }

    /// Everything `servalctl stats` shows but the descriptor counts, which
    /// [`count_descriptors`] adds once the caller has let go of the core.
    pub fn stats(&self, uptime: std::time::Duration) -> StatsReport {
        StatsReport {
            host: self.host.stats(),
            table: self.host.table().stats(),
            rules: self.host.table().len(),
            flows: self.host.flow_count(),
            listeners: self.host.listener_count(),
            control_clients: self.control_clients,
            link_rx: self.link_stats.rx,
            link_tx: self.link_stats.tx,
            link_errors: self.link_stats.errors,
            uptime_secs: uptime.as_secs(),
            // See `count_descriptors`.
            fd_limit: 0,
            fds_open: 0,
            buffer_limit: self.host.config().buffer_memory_limit.unwrap_or(0) as u64,
            buffer_limit_per_uid: self.host.config().buffer_memory_group_limit.unwrap_or(0) as u64,
            connects_pending: self.pending_connects.len() as u64,
            drains_watching: self.drain_watches.len() as u64,
            drain_looks: self.drain_looks,
            // The control server's and `Shared`'s: see
            // `control::cmd::inspect::stats`.
            ration_waits: 0,
            relays_ended: 0,
        }
    }

    /// Takes one packet read from the link.
    pub fn receive(&mut self, src: Locator, dst: Locator, ttl: u8, payload: &[u8]) {
        self.link_stats.rx += 1;
        let now = self.now();
        self.host.handle_packet(now, src, dst, ttl, payload);
    }
}

/// What a waiting drain watches (see [`Core::watch_first_pending`]).
#[derive(Debug)]
pub struct DrainWatch {
    /// The listener's index among those looked at.
    pub at: usize,
    /// The first listener found with flows pending.
    pub listener: ListenerId,
    /// Its watch: changed when sald lets go of the last flow it holds
    /// for it (or it closes, or its accept queue goes).
    pub receiver: watch::Receiver<()>,
    /// Its accept queue, once sald holds none of its flows and the rest
    /// wait there for the program to take them.
    pub queue: Option<Arc<AcceptQueue>>,
}

/// Adds sald's descriptor limit and use to `report`. Counting walks
/// `/proc/self/fd`, one entry per flow handed out (about 1 µs each), so
/// it is never done under the core's lock, which the packet path and
/// every other client wait for.
pub fn count_descriptors(report: &mut StatsReport) {
    report.fd_limit = fd_limit();
    report.fds_open = fds_open();
}

/// The process's file descriptor limit (soft `RLIMIT_NOFILE`), 0 if unknown.
pub fn fd_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft)
}

/// File descriptors the process has open (0 if unknown).
///
/// Linux 6.2 and later give the count as the size of `/proc/self/fd`, a
/// look at the descriptor table's bitmap. Counting its entries instead
/// costs about a microsecond each, under whatever lock the caller holds, on
/// the thread that moves packets: 100 ms at 100,000 flows, and any user may
/// ask for `Stats` in a loop. So older kernels get a count at most a second
/// old.
pub fn fds_open() -> u64 {
    if let Some(open) = std::fs::metadata("/proc/self/fd")
        .ok()
        .map(|dir| dir.len())
        .filter(|&n| n > 0)
    {
        return open;
    }
    static COUNTED: std::sync::Mutex<Option<(std::time::Instant, u64)>> =
        std::sync::Mutex::new(None);
    let mut counted = COUNTED.lock().unwrap_or_else(|e| e.into_inner());
    match *counted {
        Some((at, open)) if at.elapsed() < std::time::Duration::from_secs(1) => open,
        _ => {
            let open = std::fs::read_dir("/proc/self/fd")
                .map_or(0, |dir| dir.count().saturating_sub(1) as u64);
            *counted = Some((std::time::Instant::now(), open));
            open
        }
    }
}

/// Where a UDP-encapsulated transmit goes.
fn udp_destination(transmit: &Transmit) -> Option<SocketAddrV4> {
    match transmit.dst {
        Locator::Udp(addr) => Some(addr),
        // A native locator reached over UDP: the peer listens on the same port
        // as we do (one port per deployment, as in the reference stack).
        Locator::Ipv4(ip) => match transmit.src {
            Locator::Udp(local) => Some(SocketAddrV4::new(ip, local.port())),
            Locator::Ipv4(_) => None,
        },
    }
}
