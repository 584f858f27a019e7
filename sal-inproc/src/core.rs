//! What the engine's mutex guards: the host, its UDP link and timerfd, and
//! the state of each flow and listener the application holds. Whoever holds
//! the lock drives: a locked section reads what waits on the socket before
//! its work when its thread saw input there (or nobody watches it), and
//! sends what the host produced after it; as it lets the lock go, it
//! publishes the host's next deadline to the threads sleeping until it
//! ([`Core::settle`], `deadline.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use nix::sys::timerfd::{Expiration, TimerFd, TimerSetTimeFlags};
use sal::proto::{
    ConnectError, Event, FlowExport, Host, HostError, LocalInterface, NotExportable, Refusal,
};
use sal::table::{ListenerId, Target};
use sal::{FlowId, Locator, ServicePrefix};

use crate::clock::Clock;
use crate::deadline::Deadlines;
use crate::ends::{EndsCell, EndsSignal, Facts};
use crate::lock::Parked;
use crate::mirror::{Mirror, Signal, Spares};
use crate::resolve::Resolution;
use crate::udp::{Outbox, UdpLink, BATCH};
use crate::{Config, Error};

/// Where a flow's opening is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opening {
    /// The SYN is out, no answer yet.
    Pending,
    /// Established (or accepted).
    Done,
    /// The connect failed; the host forgot the flow.
    Failed(ConnectError),
    /// The application reset the flow before it was established
    /// ([`crate::Stream::abort`]): it reads as reset, and a call waiting
    /// for the connect's outcome ends.
    Aborted,
}

/// The engine's name for a stream the application holds: unlike its flow
/// ID, which the host releases when a connect fails (and may then give to
/// another flow), never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(u64);

/// The name of the host's one interface.
const INTERFACE: &str = "udp";

/// The engine's state of one flow the application holds.
#[derive(Debug)]
pub(crate) struct FlowEntry {
    /// The host's flow; `None` once the host forgot it (a failed connect).
    pub(crate) flow: Option<FlowId>,
    pub(crate) opening: Opening,
    /// The application shut its sending direction down.
    pub(crate) write_shut: bool,
    /// The application shut its receiving direction down: reads give what
    /// is queued, then end of stream.
    pub(crate) read_shut: bool,
    readable: Mirror,
    writable: Mirror,
    /// The ends beyond the bytes, shared with the [`crate::Stream`].
    ends: Arc<EndsCell>,
    /// The eventfds that mirror some of the ends, made when a `poll`
    /// first needs one (by [`EndsSignal::index`]).
    ends_signals: [Option<Mirror>; 2],
}

/// The engine's state of one listener the application holds.
#[derive(Debug)]
struct ListenerEntry {
    /// Established flows waiting in the accept queue, as counted from the
    /// host's events (an overcount, for a flow that died queued, is
    /// corrected by the accept that finds none).
    queued: usize,
    /// Stopped by the application (`shutdown` of a listening socket): the
    /// host's listener is gone, accepts fail at once.
    stopped: bool,
    readable: Mirror,
}

/// The eventfds of a new stream.
pub(crate) struct StreamSignals {
    pub(crate) readable: Arc<Signal>,
    pub(crate) writable: Arc<Signal>,
    pub(crate) ends: Arc<EndsCell>,
}

/// The host and everything driven with it.
pub(crate) struct Core {
    pub(crate) host: Host,
    link: UdpLink,
    local: Locator,
    clock: Clock,
    timer: TimerFd,
    /// The deadline the timer is armed for (it may have passed: the timer
    /// then stays readable until it is set again).
    armed: Option<sal::time::Instant>,
    /// The host's next deadline as published at each release, and the
    /// threads sleeping until it.
    deadlines: Arc<Deadlines>,
    streams: HashMap<Key, FlowEntry>,
    /// The stream of each flow the host still has.
    by_flow: HashMap<FlowId, Key>,
    next_key: u64,
    listeners: HashMap<ListenerId, ListenerEntry>,
    /// Datagrams the host asked to send to a non-UDP locator: counted, not sent.
    unsendable: u64,
    /// Mirrors changed in this locked section, published at its end.
    pending: Vec<Arc<Signal>>,
    /// Eventfds of closed streams, for new ones.
    spares: Spares,
    /// Bytes of room a stream's send buffer needs to show writable (see
    /// [`write_low_water`]).
    low_water: usize,
    /// What sends after a release read, for the next turn.
    parked: Arc<Parked>,
    /// The runtime's cached resolution, if it has a resolver: its routes
    /// to a hop found gone are taken out before the host hears of it.
    resolution: Option<Arc<Resolution>>,
}

/// The room a send buffer needs before its stream shows writable: a
/// quarter of the largest buffer, at most half the smallest (which memory
/// pressure never takes a buffer below, so the mark is always reachable
/// once the peer acknowledges). As Linux's `sk_stream_min_wspace`, it keeps
/// a program that waits for `POLLOUT` from waking for every few bytes the
/// peer acknowledges (a window probe's one byte above all).
fn write_low_water(config: &Config) -> usize {
    (config.max_send_buffer / 4)
        .min(config.min_buffer / 2)
        .max(1)
}

impl Core {
    /// The UDP socket at `config.addr`, the host with its one interface and
    /// its one rule, a disarmed timerfd, and its deadline published.
    pub(crate) fn new(config: &Config) -> Result<Core, Error> {
        let link = UdpLink::bind(config.addr)?;
        let addr = link.local_addr()?;
        let local = Locator::Udp(addr);
        let clock = Clock::new();
        let mut host = Host::new(config.host_config(), clock.now());
        host.add_interface(LocalInterface {
            name: INTERFACE.into(),
            locator: local,
            prefix_len: 24,
            up: true,
        });
        host.add_rule(
            ServicePrefix::DEFAULT,
            Target::Forward {
                locator: config.route,
                weight: 1,
            },
            0,
        );
        let deadlines = Arc::new(Deadlines::new(clock, host.poll_timeout()));
        let timer = crate::descriptors::timer()?;
        Ok(Core {
            host,
            link,
            local,
            clock,
            timer,
            armed: None,
            deadlines,
            streams: HashMap::new(),
            by_flow: HashMap::new(),
            next_key: 0,
            listeners: HashMap::new(),
            unsendable: 0,
            pending: Vec::new(),
            spares: Spares::default(),
            low_water: write_low_water(config),
            parked: Arc::default(),
            resolution: None,
        })
    }

    /// Gives the core the runtime's cached resolution (see
    /// [`Core::report_unreachable`]).
    pub(crate) fn set_resolution(&mut self, resolution: Option<Arc<Resolution>>) {
        self.resolution = resolution;
    }

    /// Where releases park the reports their sends read.
    pub(crate) fn parked(&self) -> Arc<Parked> {
        Arc::clone(&self.parked)
    }

    /// The host's locator.
    pub(crate) fn local(&self) -> Locator {
        self.local
    }

    /// The published deadline and its sleepers, shared with the threads
    /// that sleep until it without the lock.
    pub(crate) fn deadlines(&self) -> Arc<Deadlines> {
        Arc::clone(&self.deadlines)
    }

    /// The UDP socket and the timerfd: what the engine waits on.
    pub(crate) fn wait_fds(&self) -> [std::os::fd::BorrowedFd<'_>; 2] {
        use std::os::fd::AsFd;
        [self.link.fd(), self.timer.as_fd()]
    }

    /// Before a call's work: the host's clock to now, and (if `drain`)
    /// what waits on the socket handled. A caller that did not see the
    /// socket readable and will wait on it anyway if its call cannot
    /// complete, or that leaves the socket to the thread watching it, skips
    /// the `recvmmsg` that would mostly find nothing.
    pub(crate) fn before(&mut self, drain: bool) -> Result<(), Error> {
        self.host.advance_clock(self.clock.now());
        self.link.report(self.parked.take());
        if drain {
            self.receive()?;
        } else {
            self.report_unreachable();
        }
        self.poll();
        Ok(())
    }

    /// The mirrors changed since the last call, to publish
    /// ([`Signal::publish`]) once the core is let go: a raise undone
    /// meanwhile costs nothing.
    pub(crate) fn take_pending(&mut self) -> Vec<Arc<Signal>> {
        std::mem::take(&mut self.pending)
    }

    /// After a call's work: the host polled, its output sent but for the
    /// last batch, which the thread sends once it let the lock go
    /// ([`Core::take_outgoing`], `lock.rs`). (Its next deadline is
    /// published as the lock is let go: [`Core::settle`].)
    pub(crate) fn after(&mut self) -> Result<(), Error> {
        self.poll();
        self.flush()
    }

    /// As the lock is let go, whatever the locked section did (every
    /// release passes here, `Held`'s drop in `lock.rs`, error paths and
    /// panics included): publishes the host's next deadline for the
    /// threads that sleep until it (`ppoll`'s timeout), and arms the
    /// timerfd at it only if one of them recorded a later one and would
    /// sleep past it. Once the timerfd is lent out ([`Deadlines::lend`]),
    /// every deadline is armed. Never fails: a timerfd that cannot be set
    /// (which Linux does not do for a valid one) is logged.
    pub(crate) fn settle(&mut self) {
        // Released while a panic unwinds: the host is not run again (a
        // second panic would abort the process); every sleeper is told the
        // deadline is now, and the first to take the lock publishes the
        // real one.
        let at = match std::thread::panicking() {
            true => Some(self.clock.now()),
            false => self.host.poll_timeout(),
        };
        let wake = self.deadlines.publish(at);
        let armed = if self.deadlines.lent() {
            self.rearm(at)
        } else {
            self.arm_for_sleepers(at, wake)
        };
        if let Err(error) = armed {
            tracing::warn!(%error, "arming the engine's timerfd failed");
        }
    }

    /// One full turn: read, poll, mirror, send. Its caller is about to
    /// wait, or woke up to drive: the handshake ACKs held before it go
    /// ([`Core::release_held_acks`]); those of this turn's SYN-ACKs wait
    /// for their connects' callers.
    pub(crate) fn drive(&mut self) -> Result<(), Error> {
        self.release_held_acks();
        self.before(true)?;
        self.after()
    }

    /// Sends the handshake ACKs that connected streams hold for their
    /// application's first write (see `Config::host_config`): for a caller
    /// about to wait for the network, who will not write meanwhile. A
    /// server that speaks first then sees its client at once, not at the
    /// delayed-ACK timer.
    pub(crate) fn release_held_acks(&mut self) {
        self.host.release_held_acks();
    }

    /// Hands every datagram waiting on the socket to the host.
    fn receive(&mut self) -> Result<(), Error> {
        loop {
            let count = self.link.recv_batch()?;
            let now = self.clock.now();
            for i in 0..count {
                let (from, payload) = self.link.datagram(i);
                (self.host).handle_packet(now, Locator::Udp(from), self.local, 64, payload);
            }
            if count < BATCH {
                self.report_unreachable();
                return Ok(());
            }
        }
    }

    /// Tells the host of the datagrams that came back as port unreachable
    /// (see `udp.rs`); true if there were any. A connect's SYN refused so
    /// at a hop the resolution cache routes by (a program gone) takes
    /// that hop's routes out first, so that the host sends the SYN again
    /// by its default route, through sald, which knows where the service
    /// went: the connect goes on instead of being refused.
    fn report_unreachable(&mut self) -> bool {
        let unreachable = self.link.take_unreachable();
        let now = self.clock.now();
        for (to, start) in &unreachable {
            let hop = Locator::Udp(*to);
            let refusal = self.host.refusal(hop, start);
            if let (Some(resolution), Some(Refusal::Syn(_))) = (&self.resolution, refusal) {
                resolution.cache().forget_hop(&mut self.host, hop);
            }
            (self.host).handle_refusal(now, hop, refusal);
        }
        !unreachable.is_empty()
    }

    /// Advances the host to now and mirrors its events.
    fn poll(&mut self) {
        self.host.poll(self.clock.now());
        while let Some(event) = self.host.poll_event() {
            self.on_event(event);
        }
    }

    /// Sends everything the host has to send, in batches, but the last
    /// one (not full), left queued for [`Core::take_outgoing`].
    fn flush(&mut self) -> Result<(), Error> {
        let now = self.clock.now();
        let mut unsendable = self.link.fill_from(&mut self.host, now)?;
        // A send read errors about earlier datagrams: the connects they
        // fail are reported now, not at the next wake (a few rounds: what
        // the host sends in answer may read more).
        for _ in 0..3 {
            if !self.report_unreachable() {
                break;
            }
            self.poll();
            unsendable += self.link.fill_from(&mut self.host, now)?;
        }
        if unsendable > 0 {
            self.unsendable += unsendable;
            tracing::debug!(
                unsendable = self.unsendable,
                "datagram for a native locator dropped"
            );
        }
        Ok(())
    }

    /// Moves what this locked section left to send into `outbox`, which
    /// the thread sends after letting the lock go (`lock.rs`).
    pub(crate) fn take_outgoing(&mut self, outbox: &mut Outbox) {
        self.link.take_queued(outbox);
    }

    /// Sends what this locked section left to send, under the lock: for
    /// a thread that has no [`Outbox`] any more (it is exiting). Errors
    /// reported on these sends wait for the next turn.
    pub(crate) fn send_queued(&mut self) {
        if let Err(error) = self.link.send_batch() {
            tracing::warn!(%error, "sending the host's output failed");
        }
    }

    /// Hands the host the datagrams that came back as port unreachable,
    /// as reported on sends made after the lock was let go (parked), and
    /// queues what it answers, as [`Core::after`] leaves it.
    pub(crate) fn take_parked(&mut self) {
        if let Err(error) = self.before(false).and_then(|()| self.after()) {
            tracing::warn!(%error, "sending the host's output failed");
        }
    }

    /// Arms the timerfd at the host's next deadline `at` (absolute, so
    /// that the host's clock has reached it when it fires), or disarms it,
    /// for whoever waits on the timerfd alone (the lent descriptors).
    /// Setting it also clears an expiry that was read by nobody (nobody
    /// reads it): a deadline left unarmed (a SYN's retransmission) would
    /// stall its flow for good, and one left expired would keep every
    /// waiter spinning.
    fn rearm(&mut self, at: Option<sal::time::Instant>) -> Result<(), Error> {
        let due = at.is_some_and(|at| at <= self.clock.now());
        if at == self.armed && !due {
            return Ok(());
        }
        self.set_timer(at)
    }

    /// Arms the timerfd at `at` if a sleeper would sleep past it (`wake`,
    /// from [`Deadlines::publish`]); it is left alone if it is armed there
    /// already (it fires, or fired and stays readable until set again).
    /// Otherwise every sleeper wakes by `at` on its own, and a timer that
    /// fired is disarmed (it would keep the sleepers, who watch it,
    /// spinning); one armed for later is left to fire (a turn for
    /// nothing, cheaper than a system call at each release).
    fn arm_for_sleepers(
        &mut self,
        at: Option<sal::time::Instant>,
        wake: bool,
    ) -> Result<(), Error> {
        if wake {
            if at != self.armed {
                self.set_timer(at)?;
            }
            return Ok(());
        }
        match self.armed {
            Some(armed) if armed <= self.clock.now() => self.set_timer(None),
            _ => Ok(()),
        }
    }

    /// Sets the timerfd to fire at the host's time `at` (or never).
    fn set_timer(&mut self, at: Option<sal::time::Instant>) -> Result<(), Error> {
        match at {
            Some(at) => self.timer.set(
                Expiration::OneShot(self.clock.absolute(at)),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )?,
            None => self.timer.unset()?,
        }
        self.armed = at;
        Ok(())
    }

    /// Mirrors one event on the object it concerns: cost per event, never
    /// per flow held.
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected(id) => {
                let Some(&key) = self.by_flow.get(&id) else {
                    return;
                };
                if let Some(entry) = self.streams.get_mut(&key) {
                    // (An aborted one stays so.)
                    if matches!(entry.opening, Opening::Pending) {
                        entry.opening = Opening::Done;
                    }
                }
                self.refresh(key);
            }
            Event::ConnectFailed(id, error) => self.forget(id, Some(error)),
            Event::Closed(id) => self.forget(id, None),
            Event::Activity(id) => {
                if let Some(&key) = self.by_flow.get(&id) {
                    self.refresh(key);
                }
            }
            Event::PeerConnected(id) => {
                let listener = self.host.flow_listener(id);
                if let Some(entry) = listener.and_then(|l| self.listeners.get_mut(&l)) {
                    entry.queued += 1;
                    entry.readable.set(true, &mut self.pending);
                }
            }
            Event::Incoming(listener) => {
                if let Some(entry) = self.listeners.get_mut(&listener) {
                    entry.queued = entry.queued.max(1);
                    entry.readable.set(true, &mut self.pending);
                }
            }
            _ => {}
        }
    }

    /// The host forgot a flow (and may give its ID to another): its stream,
    /// if the application holds it, has only its error (or a reset) left.
    fn forget(&mut self, id: FlowId, error: Option<ConnectError>) {
        let Some(key) = self.by_flow.remove(&id) else {
            return;
        };
        if let Some(entry) = self.streams.get_mut(&key) {
            entry.flow = None;
            if let Some(error) = error.filter(|_| !matches!(entry.opening, Opening::Aborted)) {
                entry.opening = Opening::Failed(error);
            }
        }
        self.refresh(key);
    }

    /// Sets a flow's mirrors from the host's view of it: readable while it
    /// has bytes, its end, or an error to read; writable while its send
    /// buffer has room to the low-water mark, or writing would fail at once.
    pub(crate) fn refresh(&mut self, key: Key) {
        let Some(entry) = self.streams.get_mut(&key) else {
            return;
        };
        let mut facts = Facts {
            read_shut: entry.read_shut,
            write_shut: entry.write_shut,
            ..Facts::default()
        };
        let (readable, writable) = match (entry.opening, entry.flow) {
            (Opening::Failed(_) | Opening::Aborted, _) | (_, None) => {
                facts.reset = true;
                (true, true)
            }
            (Opening::Pending, Some(_)) => (false, false),
            (Opening::Done, Some(id)) => {
                // A read of nothing: tells bytes or end (Ok) from nothing
                // yet (WouldBlock) from an error, and consumes nothing.
                let readable = entry.read_shut
                    || !matches!(
                        self.host.recv_with(id, |_| (0, ())),
                        Err(HostError::WouldBlock)
                    );
                let writable = match self.host.send_room(id) {
                    Ok(room) => room >= self.low_water || entry.write_shut,
                    Err(_) => true,
                };
                // An end of stream or a reset makes the flow readable:
                // no need to ask while it is not.
                if readable {
                    if let Ok(ends) = self.host.stream_ends(id) {
                        facts.peer_finished = ends.peer_finished;
                        facts.reset = ends.reset;
                    }
                }
                (readable, writable)
            }
        };
        entry.readable.set(readable, &mut self.pending);
        entry.writable.set(writable, &mut self.pending);
        entry.ends.note(facts);
        let ends = entry.ends.ends();
        for which in EndsSignal::ALL {
            if let Some(mirror) = &mut entry.ends_signals[which.index()] {
                mirror.set(which.raised_by(ends), &mut self.pending);
            }
        }
    }

    /// The eventfd that mirrors `which` of a stream's ends, made now if
    /// no `poll` needed it before.
    pub(crate) fn ends_signal(
        &mut self,
        key: Key,
        which: EndsSignal,
    ) -> Result<Arc<Signal>, Error> {
        let entry = self.streams.get_mut(&key).ok_or(Error::Reset)?;
        if let Some(mirror) = &entry.ends_signals[which.index()] {
            return Ok(mirror.signal());
        }
        let raised = which.raised_by(entry.ends.ends());
        let mirror = Mirror::new(&mut self.spares, raised, &mut self.pending)?;
        let signal = mirror.signal();
        entry.ends_signals[which.index()] = Some(mirror);
        Ok(signal)
    }

    /// Starts a connect: the flow's entry, its SYN queued.
    pub(crate) fn connect(
        &mut self,
        service: sal::ServiceId,
    ) -> Result<(Key, FlowId, StreamSignals), Error> {
        // The eventfds first, as for accept: a process out of descriptors
        // gets `EMFILE` before the host makes a flow (and a SYN) for it.
        let mirrors = self.mirrors(false, true)?;
        let connected = (self.host).connect(service, sal::wire::TransportProtocol::Stream);
        let id = match connected {
            Ok(id) => id,
            Err(error) => {
                self.spares.give(mirrors.0.into_signal());
                self.spares.give(mirrors.1.into_signal());
                return Err(error.into());
            }
        };
        let (key, signals) = self.insert_flow(id, Opening::Pending, mirrors);
        Ok((key, id, signals))
    }

    /// Takes an established flow from a listener's queue. The stream's
    /// eventfds are made first: a process out of descriptors gets `EMFILE`
    /// and the flow stays queued for a later accept (as Linux's `accept`
    /// leaves the connection queued), rather than being reset.
    pub(crate) fn accept(
        &mut self,
        listener: ListenerId,
    ) -> Result<(Key, FlowId, StreamSignals), Error> {
        // Set as an accepted flow mostly is (established, its first bytes
        // in): a spare at those levels costs no system call.
        if self
            .listeners
            .get(&listener)
            .is_some_and(|entry| entry.stopped)
        {
            return Err(Error::NotListening);
        }
        let mirrors = self.mirrors(true, false)?;
        let taken = self.host.accept(listener);
        if let Some(entry) = self.listeners.get_mut(&listener) {
            match taken {
                Ok(_) => entry.queued = entry.queued.saturating_sub(1),
                Err(_) => entry.queued = 0,
            }
            entry.readable.set(entry.queued > 0, &mut self.pending);
        }
        let id = match taken {
            Ok(id) => id,
            Err(error) => {
                self.spares.give(mirrors.0.into_signal());
                self.spares.give(mirrors.1.into_signal());
                return Err(error.into());
            }
        };
        let (key, signals) = self.insert_flow(id, Opening::Done, mirrors);
        self.refresh(key);
        Ok((key, id, signals))
    }

    /// A new stream's readable and writable mirrors, at `ready` (until
    /// the caller sets them; spares at that level are taken first). The
    /// writable one's eventfd is made now only if `waited_for` (a connect
    /// is: its outcome shows there); otherwise when somebody first waits
    /// for room, which most accepted streams never do (one descriptor
    /// less each).
    fn mirrors(&mut self, ready: bool, waited_for: bool) -> Result<(Mirror, Mirror), Error> {
        let readable = Mirror::new(&mut self.spares, ready, &mut self.pending)?;
        let writable = match waited_for {
            true => Mirror::new(&mut self.spares, ready, &mut self.pending),
            false => Ok(Mirror::lazy(ready, &mut self.pending)),
        };
        match writable {
            Ok(writable) => Ok((readable, writable)),
            Err(error) => {
                self.spares.give(readable.into_signal());
                Err(error)
            }
        }
    }

    fn insert_flow(
        &mut self,
        id: FlowId,
        opening: Opening,
        (readable, writable): (Mirror, Mirror),
    ) -> (Key, StreamSignals) {
        let ends = Arc::new(EndsCell::default());
        let signals = StreamSignals {
            readable: readable.signal(),
            writable: writable.signal(),
            ends: Arc::clone(&ends),
        };
        let key = Key(self.next_key);
        self.next_key += 1;
        self.by_flow.insert(id, key);
        self.streams.insert(
            key,
            FlowEntry {
                flow: Some(id),
                opening,
                write_shut: false,
                read_shut: false,
                readable,
                writable,
                ends,
                ends_signals: [None, None],
            },
        );
        (key, signals)
    }

    /// A flow's entry.
    pub(crate) fn stream(&mut self, key: Key) -> Option<&mut FlowEntry> {
        self.streams.get_mut(&key)
    }

    /// Takes an established stream's flow out of the host for another
    /// host to go on with ([`sal::proto::Host::export_flow`]: the host
    /// forgets it without a word to the peer), if its buffers hold `most`
    /// bytes at most and the application did not shut its reading down. The stream stays, with no
    /// flow: it reads as reset from then on.
    pub(crate) fn export_stream(
        &mut self,
        key: Key,
        id: FlowId,
        most: usize,
    ) -> Result<FlowExport, Error> {
        if self.streams.get(&key).is_some_and(|entry| entry.read_shut) {
            // Shut for reading here, which the export does not carry.
            return Err(NotExportable::Closing.into());
        }
        let export = self.host.export_flow_within(id, most)?;
        self.by_flow.remove(&id);
        if let Some(entry) = self.streams.get_mut(&key) {
            entry.flow = None;
        }
        self.refresh(key);
        Ok(export)
    }

    /// Takes back a flow [`Core::export_stream`] exported from the stream
    /// at `key`, which nobody else took (sald refused it): the host
    /// imports it again and tells the peer with an RSYN, and the stream
    /// has its flow again.
    pub(crate) fn restore_stream(&mut self, key: Key, export: FlowExport) -> Result<(), Error> {
        if self
            .streams
            .get(&key)
            .is_none_or(|entry| entry.flow.is_some())
        {
            return Err(Error::NotConnected);
        }
        let id = self.host.import_flow(export, INTERFACE)?;
        self.by_flow.insert(id, key);
        if let Some(entry) = self.streams.get_mut(&key) {
            entry.flow = Some(id);
        }
        self.refresh(key);
        Ok(())
    }

    /// Unfinished stream flows (see `Host::unfinished_streams`) that no
    /// [`Stream`](crate::Stream) of the application holds any more.
    pub(crate) fn unfinished_closed_streams(&self) -> usize {
        (self.host.unfinished_stream_flows())
            .filter(|id| !self.by_flow.contains_key(id))
            .count()
    }

    /// The application is done with a flow: the host closes it (and
    /// forgets it once the teardown is over); the engine forgets it now.
    pub(crate) fn close_stream(&mut self, key: Key) {
        let Some(entry) = self.streams.remove(&key) else {
            return;
        };
        self.spares.give(entry.readable.into_signal());
        self.spares.give(entry.writable.into_signal());
        for mirror in entry.ends_signals.into_iter().flatten() {
            self.spares.give(mirror.into_signal());
        }
        let Some(id) = entry.flow else {
            return;
        };
        self.by_flow.remove(&id);
        let _ = self.host.close(id);
    }

    /// Whether the application stopped the listener (`shutdown`); an
    /// unknown one counts as stopped.
    pub(crate) fn listener_stopped(&self, id: ListenerId) -> bool {
        self.listeners.get(&id).is_none_or(|entry| entry.stopped)
    }

    /// Binds a listener.
    pub(crate) fn listen(
        &mut self,
        prefix: ServicePrefix,
        backlog: usize,
    ) -> Result<(ListenerId, Arc<Signal>), Error> {
        let readable = Mirror::new(&mut self.spares, false, &mut self.pending)?;
        let signal = readable.signal();
        let id = (self.host).listen(prefix, sal::wire::TransportProtocol::Stream, backlog)?;
        self.listeners.insert(
            id,
            ListenerEntry {
                queued: 0,
                stopped: false,
                readable,
            },
        );
        Ok((id, signal))
    }

    /// Stops a listener without forgetting it (`shutdown` of a listening
    /// socket, as Linux's): the host unbinds it (its queued flows are
    /// reset), and it stays readable so that every accept, waiting or
    /// to come, fails at once ([`Error::NotListening`]).
    pub(crate) fn stop_listener(&mut self, id: ListenerId) {
        if let Some(entry) = self.listeners.get_mut(&id) {
            if !entry.stopped {
                entry.stopped = true;
                entry.queued = 0;
                entry.readable.set(true, &mut self.pending);
                let _ = self.host.close_listener(id);
            }
        }
    }

    /// Unbinds a listener (its queued flows are reset).
    pub(crate) fn close_listener(&mut self, id: ListenerId) {
        if let Some(entry) = self.listeners.remove(&id) {
            if !entry.stopped {
                let _ = self.host.close_listener(id);
            }
        }
    }
}
