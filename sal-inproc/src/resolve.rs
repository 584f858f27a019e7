//! Cached resolution: routes sald resolved for this program's host, used
//! for a while without sald's hop (`docs/in-process-sal.md`,
//! stage 2, "cached resolution").
//!
//! A program's host has one rule of its own, FORWARD `0/0` to its sald,
//! which resolves each SYN by its table and forwards it. With a
//! [`Resolve`]r, a connect to a service the host sends by that default
//! route (and by no rule of its own, such as a listener's) still goes
//! that way, and the runtime asks the resolver (sald's `Resolve` request,
//! [`SaldResolver`]) how sald routes the service. The question is asked
//! off the caller's path, by a resolver thread of the runtime fed by a
//! bounded queue (a connect never waits for sald, whatever its mode; a
//! full queue leaves the question unasked). A route is installed in the
//! host as a FORWARD rule of the service's whole ID (a longer prefix
//! than `0/0`, so it wins) with its next hops and weights, and the next
//! connects to the service go straight there. The rule stays until the
//! next connect to the service, or a purge, finds its lifetime run out
//! (hosts' rules do not expire on their own): that connect goes through
//! sald and asks again. A connect by a cached route that fails to be
//! established (refused, reset, timed out, its deadline passed, given up
//! before the answer) forgets the route. A SYN to a program gone comes
//! back at once as port unreachable (`udp.rs`): every route to that hop
//! is forgotten ([`ResolutionCache::forget_hop`]) and the host sends the
//! SYN again by the default route, through sald, which knows where the
//! service went, so the connect goes on instead of waiting out its SYN
//! retransmissions. An answer without a
//! route ("ask me each time": sald serves the service itself, holds it
//! for the controller, drops it, or answers no routes), a resolver that fails,
//! and a sald without the request all leave the service on the default
//! route, without asking again for the answer's lifetime (or
//! [`UNANSWERED_LIFETIME`]).
//!
//! When the route's one next hop is a sald that relayed the SYN to a
//! program beside it (the SYN-ACK comes from the hop's address, another
//! port), the next connects go to that program itself, for at most
//! [`LEARNED_LIFETIME`] ([`ResolutionCache::established`]): neither the
//! client's sald nor the server's sees them. A service router's answer
//! (from another address) is never learned: it picks a server per SYN.
//!
//! A route is never installed where it would hide one of the host's own
//! rules (the exact ID beats any shorter prefix): only for a service whose
//! longest match in the host is the default route when the answer comes,
//! never with a next hop that is the host itself, and a listener bound
//! later takes out the routes it covers.
//!
//! [`ResolutionCache`] is the bookkeeping, over any `sal::proto::Host`:
//! [`Runtime`](crate::Runtime) keeps one when its
//! [`Config::resolver`](crate::Config::resolver) is set, and a program
//! with its own event loop around a host can keep one too.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    connect, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::time::TimeVal;
use sal::proto::Host;
use sal::table::{Target, TargetKey};
use sal::{Locator, ServiceId, ServicePrefix};
use sal_control::{
    decode_body, encode_frame, frame_len, ErrorKind, Request, ResolvedRoute, Response,
    PROTOCOL_VERSION,
};

/// How long a service stays on the default route after its resolver
/// failed (sald unreachable, or too old to know the request) before the
/// runtime asks again.
pub const UNANSWERED_LIFETIME: Duration = Duration::from_secs(10);
/// The longest an answer is used, whatever its lifetime says.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest a route learned from the program that answered a connect
/// is used ([`ResolutionCache::established`]): as long as sald's answer
/// naming one of its relays' programs lasts, for the same reason (the
/// program's port may change hands once it stopped serving).
pub const LEARNED_LIFETIME: Duration = Duration::from_secs(1);
/// How long one question keeps the other connects from asking the same:
/// longer than [`SaldResolver`] may take (its connect, hello and
/// question, [`SALD_TIMEOUT`] each).
const PENDING_LIFETIME: Duration = Duration::from_secs(5);
/// Services a cache holds at most unless told otherwise: one host rule
/// each while their answers last.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The most next hops a route may have: an answer with more is not used
/// (its SYNs go through sald).
pub use sal_control::MAX_RESOLVED_HOPS as MAX_HOPS;
/// How long [`SaldResolver`] waits for each step with sald: connecting
/// (a full accept backlog), writing a question, reading its answer.
pub const SALD_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the resolver thread keeps its resolver's connection after
/// the last question ([`Resolve::idle`]): sald counts every control
/// connection against the user's `clients_per_uid`, which the program's
/// relays need too, so none is held while the program is not resolving.
pub const RESOLVER_IDLE: Duration = Duration::from_secs(1);
/// Questions waiting for the resolver thread at most; past it, a connect
/// does not ask (a later one will).
const QUEUE_LEN: usize = 64;

/// A resolver's answer for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Where the host may send the service's SYNs itself; `None`: through
    /// the default route (sald).
    pub route: Option<ResolvedRoute>,
    /// How long the answer holds (the route, or going through sald).
    pub lifetime: Duration,
}

/// Why a resolver gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Reaching the resolver failed (or timed out).
    #[error("resolver unreachable: {0}")]
    Io(#[from] std::io::Error),
    /// sald's answer could not be read.
    #[error("resolver's answer unreadable: {0}")]
    Frame(#[from] sal_control::FrameError),
    /// sald answered with an error (`InvalidRequest` from a sald older
    /// than the request).
    #[error("resolver refused: {kind:?}: {message}")]
    Refused {
        /// The error's class.
        kind: ErrorKind,
        /// sald's words.
        message: String,
    },
    /// sald answered something else than a resolution.
    #[error("resolver answered out of turn: {0}")]
    Unexpected(String),
}

/// Something that resolves a service for a program's host: sald
/// ([`SaldResolver`]), or a function in tests.
pub trait Resolve: Send + Sync + Debug {
    /// How the host may route its SYNs to `service`, and for how long.
    /// Called by the runtime's resolver thread (never on a connect's
    /// path, never with the engine's lock), once per service per
    /// lifetime; it may take its time, delaying only later answers.
    fn resolve(&self, service: ServiceId) -> Result<Answer, ResolveError>;

    /// No question came for [`RESOLVER_IDLE`]: let go of what is kept
    /// for the next one (a connection). Does nothing unless overridden.
    fn idle(&self) {}
}

/// Asks the sald of a control socket (`Request::Resolve`), over a control
/// connection kept between questions until [`Resolve::idle`] (made again
/// when sald closed it, as it closes an ordinary user's idle ones). Each
/// step is bounded by [`SALD_TIMEOUT`], and writes never raise `SIGPIPE`.
#[derive(Debug)]
pub struct SaldResolver {
    path: PathBuf,
    connection: Mutex<Option<UnixStream>>,
}

impl SaldResolver {
    /// A resolver asking the sald whose control socket is at `path`
    /// (connected at the first question).
    pub fn new(path: impl Into<PathBuf>) -> SaldResolver {
        SaldResolver {
            path: path.into(),
            connection: Mutex::new(None),
        }
    }

    fn connect(&self) -> Result<UnixStream, ResolveError> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io_error)?;
        // Made from the resolver's thread, whenever a question comes: out
        // of the numbers the program reuses (`socket_shim::fd`).
        let fd = socket_shim::fd::out_of_the_way(fd);
        let timeout = TimeVal::new(
            SALD_TIMEOUT.as_secs() as _,
            SALD_TIMEOUT.subsec_micros() as _,
        );
        // The send timeout bounds the connect too: Linux waits for room in
        // a full accept backlog that long.
        setsockopt(&fd, sockopt::SendTimeout, &timeout).map_err(io_error)?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(io_error)?;
        let addr = UnixAddr::new(&self.path).map_err(io_error)?;
        loop {
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => break,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(io_error(errno)),
            }
        }
        let mut stream = UnixStream::from(fd);
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client: "sal-inproc".into(),
        };
        match exchange(&mut stream, &hello)? {
            Response::Hello { .. } => Ok(stream),
            other => Err(refusal(other)),
        }
    }

    fn held(&self) -> MutexGuard<'_, Option<UnixStream>> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Resolve for SaldResolver {
    fn resolve(&self, service: ServiceId) -> Result<Answer, ResolveError> {
        let mut held = self.held();
        let request = Request::Resolve { service };
        // A connection kept from before may have been closed by sald
        // (idle): one more try on a fresh one.
        let reused = held.is_some();
        let mut stream = match held.take() {
            Some(stream) => stream,
            None => self.connect()?,
        };
        let response = match exchange(&mut stream, &request) {
            Ok(response) => response,
            Err(ResolveError::Io(_) | ResolveError::Frame(_)) if reused => {
                stream = self.connect()?;
                exchange(&mut stream, &request)?
            }
            Err(error) => return Err(error),
        };
        *held = Some(stream);
        match response {
            Response::Resolved { route, lifetime_ms } => Ok(Answer {
                route,
                lifetime: Duration::from_millis(lifetime_ms),
            }),
            other => Err(refusal(other)),
        }
    }

    fn idle(&self) {
        self.held().take();
    }
}

fn io_error(errno: Errno) -> ResolveError {
    ResolveError::Io(std::io::Error::from(errno))
}

/// One request and its answer on a control connection. Written with
/// `MSG_NOSIGNAL`: a connection sald closed gives `EPIPE`, not a signal
/// that would end a host program that does not ignore it.
fn exchange(stream: &mut UnixStream, request: &Request) -> Result<Response, ResolveError> {
    let frame = encode_frame(request)?;
    let mut sent = 0;
    while sent < frame.len() {
        match send(stream.as_raw_fd(), &frame[sent..], MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(io_error(errno)),
        }
    }
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let mut body = vec![0u8; frame_len(prefix)?];
    stream.read_exact(&mut body)?;
    Ok(decode_body(&body)?)
}

fn refusal(response: Response) -> ResolveError {
    match response {
        Response::Error { kind, message } => ResolveError::Refused { kind, message },
        other => ResolveError::Unexpected(format!("{other:?}")),
    }
}

/// A connect that went by a cached route (see
/// [`ResolutionCache::before_connect`]): handed back to
/// [`ResolutionCache::failed`] if the flow is never established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedRoute {
    service: ServiceId,
    /// Which answer's route: a failure forgets that one only, not a fresh
    /// answer installed since.
    generation: u64,
}

/// What [`ResolutionCache::before_connect`] tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// Ask the resolver now (then hand [`ResolutionCache::answer`] what
    /// it said, or [`ResolutionCache::withdraw`] if it cannot be asked).
    pub ask: bool,
    /// The connect goes by this cached route.
    pub route: Option<CachedRoute>,
}

/// What the cache knows of one service.
#[derive(Debug)]
enum Entry {
    /// A question is out; the connects use the default route meanwhile.
    Pending { until: Instant },
    /// Use the default route until then.
    Default { until: Instant },
    /// The host holds a rule of the service's ID toward these hops until
    /// then.
    Routed {
        until: Instant,
        prefix: ServicePrefix,
        hops: Vec<Locator>,
        generation: u64,
        /// The hop is a program learned from its answer, not the
        /// resolver's ([`ResolutionCache::established`]).
        learned: bool,
    },
}

impl Entry {
    fn until(&self) -> Instant {
        match *self {
            Entry::Pending { until } | Entry::Default { until } | Entry::Routed { until, .. } => {
                until
            }
        }
    }

    /// Takes the entry's rule (if any) out of `host`.
    fn remove_rule(self, host: &mut Host) {
        if let Entry::Routed { prefix, hops, .. } = self {
            for locator in hops {
                let _ = host.remove_rule_target(&prefix, &TargetKey::Forward { locator });
            }
        }
    }
}

/// The services whose routes a host holds from a resolver, and until when
/// (see the module docs). Every method takes the host the rules are in:
/// always the same one.
#[derive(Debug)]
pub struct ResolutionCache {
    entries: HashMap<ServiceId, Entry>,
    capacity: usize,
    generation: u64,
    /// No entry runs out before then (as of the last purge): a full cache
    /// of live entries is not scanned again until something can go.
    next_expiry: Option<Instant>,
}

impl Default for ResolutionCache {
    fn default() -> ResolutionCache {
        ResolutionCache::new(DEFAULT_CAPACITY)
    }
}

/// Whether `host` sends `service` by its default route (a `0/0` rule),
/// that is, by none of its own more specific rules (a listener's).
fn by_default_route(host: &Host, service: &ServiceId) -> bool {
    (host.table().longest_match(service)).is_some_and(|rule| rule.prefix.len() == 0)
}

impl ResolutionCache {
    /// A cache of at most `capacity` services (beyond it, services are
    /// not cached: their SYNs go through sald).
    pub fn new(capacity: usize) -> ResolutionCache {
        ResolutionCache {
            entries: HashMap::new(),
            capacity,
            generation: 0,
            next_expiry: None,
        }
    }

    /// Before a connect to `service`: takes a route out of `host` whose
    /// answer ran out, and says whether the caller should ask the
    /// resolver now and whether the connect goes by a cached route. The
    /// connect itself goes ahead at once either way, routed by what the
    /// host holds. A service the host routes by a rule of its own (longer
    /// than the default route) is never asked for.
    pub fn before_connect(&mut self, host: &mut Host, service: ServiceId, now: Instant) -> Plan {
        match self.entries.get(&service) {
            Some(Entry::Routed {
                until, generation, ..
            }) if *until > now => {
                let route = CachedRoute {
                    service,
                    generation: *generation,
                };
                return Plan {
                    ask: false,
                    route: Some(route),
                };
            }
            Some(entry) if entry.until() > now => return Plan::default(),
            Some(_) => self.forget(host, service),
            None => {}
        }
        if !by_default_route(host, &service) {
            return Plan::default();
        }
        if self.entries.len() >= self.capacity {
            self.purge(host, now);
            if self.entries.len() >= self.capacity {
                return Plan::default();
            }
        }
        let until = now + PENDING_LIFETIME;
        self.entries.insert(service, Entry::Pending { until });
        self.next_expiry = Some(self.next_expiry.map_or(until, |next| next.min(until)));
        Plan {
            ask: true,
            route: None,
        }
    }

    /// The question [`ResolutionCache::before_connect`] said to ask was
    /// not asked (the resolver's queue was full): a later connect asks.
    pub fn withdraw(&mut self, service: ServiceId) {
        if let Some(Entry::Pending { .. }) = self.entries.get(&service) {
            self.entries.remove(&service);
        }
    }

    /// Takes the resolver's answer for `service` (after
    /// [`ResolutionCache::before_connect`] said to ask): installs its
    /// route in `host` until its lifetime runs out, or keeps the service
    /// on the default route that long (for [`UNANSWERED_LIFETIME`] after
    /// a failure). A route is used only if it holds for exactly the
    /// service's ID (what sald answers), leads over UDP to at most
    /// [`MAX_HOPS`] hops none of which is the host itself, and the host
    /// still sends the service by its default route (no rule of its own,
    /// a listener bound meanwhile, would be hidden).
    ///
    /// Racing answers (a question asked again after the first ran past
    /// its pending time): the last one wins, which is as good as any.
    pub fn answer(
        &mut self,
        host: &mut Host,
        service: ServiceId,
        answer: Result<Answer, ResolveError>,
        now: Instant,
    ) {
        // A route installed meanwhile (by a question that raced this
        // one) goes first: one rule per service.
        self.forget(host, service);
        let (route, lifetime) = match answer {
            Ok(Answer { route, lifetime }) => (route, lifetime.min(MAX_LIFETIME)),
            Err(error) => {
                tracing::debug!(%service, %error, "no resolution: SYNs go through sald");
                (None, UNANSWERED_LIFETIME)
            }
        };
        let until = now + lifetime;
        let own = |locator: &Locator| host.interfaces().iter().any(|i| i.locator == *locator);
        let usable = route.filter(|route| {
            route.prefix == ServicePrefix::exact(service)
                && !route.next_hops.is_empty()
                && route.next_hops.len() <= MAX_HOPS
                && (route.next_hops.iter()).all(|hop| matches!(hop.locator, Locator::Udp(_)))
                && !(route.next_hops.iter()).any(|hop| own(&hop.locator))
        });
        let entry = match usable {
            Some(route) if !lifetime.is_zero() && by_default_route(host, &service) => {
                let mut hops: Vec<Locator> = Vec::with_capacity(route.next_hops.len());
                for hop in &route.next_hops {
                    // A locator named twice is one target: the first wins.
                    if hops.contains(&hop.locator) {
                        continue;
                    }
                    let target = Target::Forward {
                        locator: hop.locator,
                        weight: hop.weight,
                    };
                    host.add_rule(route.prefix, target, 0);
                    hops.push(hop.locator);
                }
                self.generation += 1;
                Entry::Routed {
                    until,
                    prefix: route.prefix,
                    hops,
                    generation: self.generation,
                    learned: false,
                }
            }
            _ => Entry::Default { until },
        };
        self.entries.insert(service, entry);
        self.next_expiry = Some(self.next_expiry.map_or(until, |next| next.min(until)));
    }

    /// Drops what the cache holds for `service` (its rule too): the next
    /// connect asks again.
    pub fn forget(&mut self, host: &mut Host, service: ServiceId) {
        if let Some(entry) = self.entries.remove(&service) {
            entry.remove_rule(host);
        }
    }

    /// Connects found nobody at `hop` (a program gone): forgets every
    /// route leading there, so that the next connects (and the one that
    /// found out, see `Host::handle_unreachable`) take the default route.
    pub fn forget_hop(&mut self, host: &mut Host, hop: Locator) {
        self.entries.retain(|service, entry| {
            let Entry::Routed { hops, .. } = entry else {
                return true;
            };
            if !hops.contains(&hop) {
                return true;
            }
            tracing::debug!(%service, %hop, "cached route to a hop gone: forgotten");
            let until = entry.until();
            std::mem::replace(entry, Entry::Default { until }).remove_rule(host);
            false
        });
    }

    /// A connect by `route` failed to be established (its next hop gone,
    /// say): forgets that route, unless another answer replaced it since.
    pub fn failed(&mut self, host: &mut Host, route: CachedRoute) {
        if let Some(Entry::Routed { generation, .. }) = self.entries.get(&route.service) {
            if *generation == route.generation {
                tracing::debug!(service = %route.service, "cached route failed: forgotten");
                self.forget(host, route.service);
            }
        }
    }

    /// A connect by `route` was established, its SYN-ACK from `answerer`.
    /// If the route's one next hop handed the SYN to a program beside it
    /// (the answerer is at the hop's address, on another port: a sald
    /// relaying to one of its programs), the next connects go to that
    /// program straight, for at most [`LEARNED_LIFETIME`] and never past
    /// the answer's own lifetime; the hop's sald is then asked again
    /// through the default route. This skips the hop's per-SYN decision
    /// meanwhile, as sald's own answer naming a relay's program does. A
    /// hop on another address than the answerer (a service router, which
    /// picks a server for each SYN), a route of several hops, and a route
    /// learned already change nothing.
    pub fn established(
        &mut self,
        host: &mut Host,
        route: CachedRoute,
        answerer: Locator,
        now: Instant,
    ) {
        let Some(Entry::Routed {
            until,
            prefix,
            hops,
            generation,
            learned: false,
        }) = self.entries.get(&route.service)
        else {
            return;
        };
        let (&[hop], Locator::Udp(to)) = (hops.as_slice(), answerer) else {
            return;
        };
        let beside =
            matches!(hop, Locator::Udp(hop) if hop.ip() == to.ip() && hop.port() != to.port());
        let own = host.interfaces().iter().any(|i| i.locator == answerer);
        if *generation != route.generation || !beside || own {
            return;
        }
        let (prefix, until) = (*prefix, (*until).min(now + LEARNED_LIFETIME));
        let _ = host.remove_rule_target(&prefix, &TargetKey::Forward { locator: hop });
        let target = Target::Forward {
            locator: answerer,
            weight: 1,
        };
        host.add_rule(prefix, target, 0);
        self.generation += 1;
        let entry = Entry::Routed {
            until,
            prefix,
            hops: vec![answerer],
            generation: self.generation,
            learned: true,
        };
        tracing::debug!(service = %route.service, %answerer, "route learned from the answering program");
        self.entries.insert(route.service, entry);
        self.next_expiry = Some(self.next_expiry.map_or(until, |next| next.min(until)));
    }

    /// The host now holds a rule of its own for `prefix` (a listener):
    /// forgets every route it covers, which would hide it.
    pub fn forget_within(&mut self, host: &mut Host, prefix: &ServicePrefix) {
        self.entries.retain(|service, entry| {
            if !prefix.contains(service) {
                return true;
            }
            std::mem::replace(
                entry,
                Entry::Default {
                    until: Instant::now(),
                },
            )
            .remove_rule(host);
            false
        });
    }

    /// Whether connects to `service` use a cached route now.
    pub fn is_routed(&self, service: &ServiceId, now: Instant) -> bool {
        matches!(self.entries.get(service), Some(e @ Entry::Routed { .. }) if e.until() > now)
    }

    /// Services the cache holds something for (run out or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry that ran out, with its rule. Cheap when nothing
    /// can have run out since the last purge (no scan), and never
    /// allocates.
    pub fn purge(&mut self, host: &mut Host, now: Instant) {
        if self.next_expiry.is_some_and(|next| next > now) {
            return;
        }
        let mut next: Option<Instant> = None;
        self.entries.retain(|_, entry| {
            let until = entry.until();
            if until > now {
                next = Some(next.map_or(until, |next| next.min(until)));
                return true;
            }
            std::mem::replace(entry, Entry::Default { until }).remove_rule(host);
            false
        });
        self.next_expiry = next;
    }
}

/// A runtime's cached resolution: the cache (taken under the engine's
/// lock only, which holds the host its routes are in, so never
/// contended) and the queue of questions for its resolver thread.
#[derive(Debug)]
pub(crate) struct Resolution {
    cache: Mutex<ResolutionCache>,
    questions: SyncSender<ServiceId>,
}

/// The resolver thread's end of a [`Resolution`]'s queue.
pub(crate) struct Questions {
    resolver: Arc<dyn Resolve>,
    receiver: Receiver<ServiceId>,
}

impl Resolution {
    /// A cache and its queue; [`Questions::spawn`] starts the thread that
    /// answers it.
    pub(crate) fn new(resolver: Arc<dyn Resolve>) -> (Resolution, Questions) {
        let (questions, receiver) = mpsc::sync_channel(QUEUE_LEN);
        let resolution = Resolution {
            cache: Mutex::new(ResolutionCache::default()),
            questions,
        };
        (resolution, Questions { resolver, receiver })
    }

    /// The cache (under the engine's lock).
    pub(crate) fn cache(&self) -> MutexGuard<'_, ResolutionCache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Before a connect (under the engine's lock, with the host): what
    /// the cache says, and the question queued if one is to be asked
    /// (never waiting: a full queue leaves it for a later connect).
    pub(crate) fn before_connect(
        &self,
        host: &mut Host,
        service: ServiceId,
    ) -> Option<CachedRoute> {
        let mut cache = self.cache();
        let plan = cache.before_connect(host, service, Instant::now());
        if plan.ask {
            match self.questions.try_send(service) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    cache.withdraw(service)
                }
            }
        }
        plan.route
    }
}

impl Questions {
    /// Starts the resolver thread: it asks each queued question and hands
    /// the answer to `apply` (which takes the engine's lock), until
    /// `apply` says the runtime is gone or the queue's sender is dropped
    /// with it. After [`RESOLVER_IDLE`] without a question it tells the
    /// resolver ([`Resolve::idle`]) and waits for the next one. The
    /// runtime does not wait for it when dropped: a question in progress
    /// ends within the resolver's timeouts, and the thread with it.
    pub(crate) fn spawn(
        self,
        mut apply: impl FnMut(ServiceId, Result<Answer, ResolveError>) -> bool + Send + 'static,
    ) -> std::io::Result<()> {
        let Questions { resolver, receiver } = self;
        let builder = std::thread::Builder::new().name("sal-inproc-resolver".into());
        crate::interrupt::spawn_engine_thread(builder, move || loop {
            let service = match receiver.recv_timeout(RESOLVER_IDLE) {
                Ok(service) => service,
                Err(RecvTimeoutError::Timeout) => {
                    resolver.idle();
                    match receiver.recv() {
                        Ok(service) => service,
                        Err(_) => return,
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if !apply(service, resolver.resolve(service)) {
                return;
            }
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sal::proto::HostConfig;
    use sal_control::NextHop;
    use std::net::SocketAddrV4;

    fn service() -> ServiceId {
        "c0ec7001".parse().unwrap()
    }

    fn sald() -> Locator {
        "udp:127.0.0.1:7077".parse().unwrap()
    }

    fn server() -> Locator {
        "udp:127.0.0.2:4000".parse().unwrap()
    }

    fn host() -> Host {
        let mut host = Host::new(HostConfig::default(), sal::time::Instant::ZERO);
        let target = Target::Forward {
            locator: sald(),
            weight: 1,
        };
        host.add_rule(ServicePrefix::DEFAULT, target, 0);
        host
    }

    fn routed(lifetime: Duration) -> Result<Answer, ResolveError> {
        Ok(Answer {
            route: Some(ResolvedRoute {
                matched: ServicePrefix::DEFAULT,
                prefix: ServicePrefix::exact(service()),
                next_hops: vec![NextHop {
                    locator: server(),
                    weight: 1,
                }],
            }),
            lifetime,
        })
    }

    /// Where the host's table sends a SYN for [`service`] (every test
    /// route has one hop).
    fn next_hop(host: &Host) -> Locator {
        let rule = host.table().longest_match(&service()).expect("a rule");
        match rule.targets()[0].target {
            Target::Forward { locator, .. } => locator,
            other => panic!("not a FORWARD: {other:?}"),
        }
    }

    #[test]
    fn a_route_is_used_until_its_lifetime_runs_out() {
        let (mut host, mut cache, now) = (host(), ResolutionCache::default(), Instant::now());
        assert!(cache.before_connect(&mut host, service(), now).ask);
        assert_eq!(next_hop(&host), sald());
        // Another connect while the question is out goes through sald and
        // does not ask again.
        assert!(!cache.before_connect(&mut host, service(), now).ask);
        cache.answer(&mut host, service(), routed(Duration::from_secs(5)), now);
        assert!(cache.is_routed(&service(), now));
        assert_eq!(next_hop(&host), server());
        let later = now + Duration::from_secs(4);
        assert!(!cache.before_connect(&mut host, service(), later).ask);
        assert_eq!(next_hop(&host), server());
        // Run out: the rule goes, the connect goes through sald and asks.
        let expired = now + Duration::from_secs(5);
        assert!(cache.before_connect(&mut host, service(), expired).ask);
        assert_eq!(next_hop(&host), sald());
        assert_eq!(host.table().len(), 1, "only the default rule is left");
    }

    /// A cache routing [`service`] to [`server`] for `lifetime` (as if
    /// sald answered that), and the plan of the next connect by it.
    fn routed_cache(lifetime: Duration) -> (Host, ResolutionCache, Instant, CachedRoute) {
        let (mut host, mut cache, now) = (host(), ResolutionCache::default(), Instant::now());
        cache.before_connect(&mut host, service(), now);
        cache.answer(&mut host, service(), routed(lifetime), now);
        let route = cache.before_connect(&mut host, service(), now).route;
        (host, cache, now, route.expect("by the cached route"))
    }

    #[test]
    fn a_program_answering_beside_the_hop_is_learned_for_a_second_at_most() {
        let (mut host, mut cache, now, route) = routed_cache(Duration::from_secs(60));
        let beside: Locator = "udp:127.0.0.2:39028".parse().unwrap();
        cache.established(&mut host, route, beside, now);
        assert_eq!(next_hop(&host), beside);
        assert_eq!(host.table().len(), 2, "the learned rule replaced sald's");
        // Learned once: a connect by the learned route changes nothing.
        let learned = cache
            .before_connect(&mut host, service(), now)
            .route
            .unwrap();
        let again: Locator = "udp:127.0.0.2:40000".parse().unwrap();
        cache.established(&mut host, learned, again, now);
        assert_eq!(next_hop(&host), beside);
        // Then sald is asked again, through the default route.
        let later = now + LEARNED_LIFETIME;
        assert!(cache.before_connect(&mut host, service(), later).ask);
        assert_eq!(next_hop(&host), sald());
    }

    #[test]
    fn a_learned_route_never_outlives_the_answer() {
        let (mut host, mut cache, now, route) = routed_cache(LEARNED_LIFETIME / 2);
        cache.established(
            &mut host,
            route,
            "udp:127.0.0.2:39028".parse().unwrap(),
            now,
        );
        assert!(
            cache
                .before_connect(&mut host, service(), now + LEARNED_LIFETIME / 2)
                .ask
        );
    }

    #[test]
    fn an_answer_from_elsewhere_than_beside_the_one_hop_is_not_learned() {
        let cases: [(&str, &str); 4] = [
            // The hop itself answered (sald routed straight to a program).
            ("udp:127.0.0.2:4000", "the hop"),
            // Another address: the hop routed on (a service router).
            ("udp:127.0.0.3:39028", "another address"),
            // Not over UDP.
            ("127.0.0.2", "native"),
            // This host itself (on the hop's address).
            ("udp:127.0.0.2:1234", "own"),
        ];
        for (answerer, case) in cases {
            let (mut host, mut cache, now, route) = routed_cache(Duration::from_secs(60));
            let answerer: Locator = answerer.parse().unwrap();
            if case == "own" {
                host.add_interface(sal::proto::LocalInterface {
                    name: "udp".into(),
                    locator: answerer,
                    prefix_len: 24,
                    up: true,
                });
            }
            cache.established(&mut host, route, answerer, now);
            assert_eq!(next_hop(&host), server(), "{case}");
        }
        // A route replaced since (its generation is gone).
        let (mut host, mut cache, now, stale) = routed_cache(Duration::from_secs(60));
        cache.answer(&mut host, service(), routed(Duration::from_secs(60)), now);
        cache.established(
            &mut host,
            stale,
            "udp:127.0.0.2:39028".parse().unwrap(),
            now,
        );
        assert_eq!(next_hop(&host), server(), "stale route");
    }

    #[test]
    fn no_route_and_failures_keep_the_default_route_for_a_while() {
        let (mut host, mut cache, now) = (host(), ResolutionCache::default(), Instant::now());
        assert!(cache.before_connect(&mut host, service(), now).ask);
        let each_time = Ok(Answer {
            route: None,
            lifetime: Duration::from_secs(3),
        });
        cache.answer(&mut host, service(), each_time, now);
        assert_eq!(next_hop(&host), sald());
        assert!(
            !cache
                .before_connect(&mut host, service(), now + Duration::from_secs(2))
                .ask
        );
        assert!(
            cache
                .before_connect(&mut host, service(), now + Duration::from_secs(3))
                .ask
        );
        let old_sald = Err(ResolveError::Refused {
            kind: ErrorKind::InvalidRequest,
            message: "unknown request".into(),
        });
        cache.answer(&mut host, service(), old_sald, now);
        assert!(
            !cache
                .before_connect(&mut host, service(), now + UNANSWERED_LIFETIME / 2)
                .ask
        );
        assert!(
            cache
                .before_connect(&mut host, service(), now + UNANSWERED_LIFETIME)
                .ask
        );
        assert_eq!(host.table().len(), 1);
    }

    #[test]
    fn routes_it_cannot_use_are_not_installed() {
        let (mut host, mut cache, now) = (host(), ResolutionCache::default(), Instant::now());
        let mut wider = routed(Duration::from_secs(5)).unwrap();
        wider.route.as_mut().unwrap().prefix = "c0/8".parse().unwrap();
        let mut native = routed(Duration::from_secs(5)).unwrap();
        native.route.as_mut().unwrap().next_hops[0].locator = "10.0.0.2".parse().unwrap();
        for answer in [wider, native] {
            cache.before_connect(&mut host, service(), now);
            cache.answer(&mut host, service(), Ok(answer), now);
            assert!(!cache.is_routed(&service(), now));
            assert_eq!(host.table().len(), 1);
            cache.forget(&mut host, service());
        }
    }

    #[test]
    fn a_forgotten_route_and_a_full_cache_fall_back_to_sald() {
        let (mut host, mut cache, now) = (host(), ResolutionCache::new(1), Instant::now());
        assert!(cache.before_connect(&mut host, service(), now).ask);
        cache.answer(&mut host, service(), routed(Duration::from_secs(5)), now);
        let other: ServiceId = "c0ec7002".parse().unwrap();
        assert!(!cache.before_connect(&mut host, other, now).ask, "full");
        cache.forget(&mut host, service());
        assert_eq!(next_hop(&host), sald());
        assert!(cache.before_connect(&mut host, other, now).ask);
    }

    fn own() -> Locator {
        "udp:127.0.0.3:5000".parse().unwrap()
    }

    /// [`host`] with its own interface at [`own`].
    fn host_with_interface() -> Host {
        let mut host = host();
        host.add_interface(sal::proto::LocalInterface {
            name: "udp".into(),
            locator: own(),
            prefix_len: 24,
            up: true,
        });
        host
    }

    fn with_hops(hops: &[(Locator, u32)]) -> Result<Answer, ResolveError> {
        let mut answer = routed(Duration::from_secs(5)).unwrap();
        answer.route.as_mut().unwrap().next_hops = (hops.iter())
            .map(|&(locator, weight)| NextHop { locator, weight })
            .collect();
        Ok(answer)
    }

    #[test]
    fn a_service_the_host_routes_by_a_rule_of_its_own_is_left_alone() {
        let (mut host, mut cache, now) = (host(), ResolutionCache::default(), Instant::now());
        let local = Target::Forward {
            locator: own(),
            weight: 1,
        };
        host.add_rule("c0ec70/24".parse().unwrap(), local, 0);
        assert_eq!(
            cache.before_connect(&mut host, service(), now),
            Plan::default()
        );
        assert!(cache.is_empty());
        // A rule of its own that came while the question was out: the
        // answer is not installed over it.
        let (mut host, now) = (self::host(), Instant::now());
        assert!(cache.before_connect(&mut host, service(), now).ask);
        host.add_rule("c0ec70/24".parse().unwrap(), local, 0);
        cache.answer(&mut host, service(), routed(Duration::from_secs(5)), now);
        assert!(!cache.is_routed(&service(), now));
        assert_eq!(next_hop(&host), own());
        // Or bound after it: the routes it covers go.
        let (mut host, now) = (self::host(), Instant::now());
        assert!(
            cache
                .before_connect(&mut host, service(), now + UNANSWERED_LIFETIME)
                .ask
        );
        cache.answer(&mut host, service(), routed(Duration::from_secs(5)), now);
        assert!(cache.is_routed(&service(), now));
        cache.forget_within(&mut host, &"c0/8".parse().unwrap());
        assert!(!cache.is_routed(&service(), now));
        assert_eq!(host.table().len(), 1);
    }

    #[test]
    fn a_route_through_the_host_itself_or_of_too_many_hops_is_not_installed() {
        let (mut host, mut cache, now) = (
            host_with_interface(),
            ResolutionCache::default(),
            Instant::now(),
        );
        let many: Vec<(Locator, u32)> = (0..=MAX_HOPS as u16)
            .map(|i| {
                (
                    Locator::Udp(SocketAddrV4::new([127, 0, 1, 1].into(), 1000 + i)),
                    1,
                )
            })
            .collect();
        for answer in [with_hops(&[(server(), 1), (own(), 1)]), with_hops(&many)] {
            cache.before_connect(&mut host, service(), now);
            cache.answer(&mut host, service(), answer, now);
            assert!(!cache.is_routed(&service(), now));
            assert_eq!(host.table().len(), 1);
            cache.forget(&mut host, service());
        }
        // MAX_HOPS, one named twice: installed once each.
        let mut hops = many[..MAX_HOPS - 1].to_vec();
        hops.push(many[0]);
        cache.before_connect(&mut host, service(), now);
        cache.answer(&mut host, service(), with_hops(&hops), now);
        assert!(cache.is_routed(&service(), now));
        let rule = host.table().longest_match(&service()).unwrap();
        assert_eq!(rule.targets().len(), MAX_HOPS - 1);
        cache.forget(&mut host, service());
        assert_eq!(host.table().len(), 1);
    }

    #[test]
    fn a_failure_forgets_only_the_route_it_went_by() {
        let (mut host, mut cache, now) = (host(), ResolutionCache::default(), Instant::now());
        assert!(cache.before_connect(&mut host, service(), now).ask);
        cache.answer(&mut host, service(), routed(Duration::from_secs(5)), now);
        let old = cache
            .before_connect(&mut host, service(), now)
            .route
            .unwrap();
        // A newer answer (a raced question): an old flow's failure leaves it.
        cache.answer(&mut host, service(), routed(Duration::from_secs(5)), now);
        cache.failed(&mut host, old);
        assert!(cache.is_routed(&service(), now));
        let new = cache
            .before_connect(&mut host, service(), now)
            .route
            .unwrap();
        assert_ne!(old, new);
        cache.failed(&mut host, new);
        assert!(!cache.is_routed(&service(), now));
        assert_eq!(next_hop(&host), sald());
    }

    #[test]
    fn a_full_cache_purges_what_ran_out_and_only_then() {
        let (mut host, mut cache, now) = (host(), ResolutionCache::new(2), Instant::now());
        let services: Vec<ServiceId> = ["c0ec7001", "c0ec7002", "c0ec7003"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for (i, &service) in services[..2].iter().enumerate() {
            assert!(cache.before_connect(&mut host, service, now).ask);
            let lifetime = Duration::from_secs(1 + i as u64);
            let answer = Ok(Answer {
                route: None,
                lifetime,
            });
            cache.answer(&mut host, service, answer, now);
        }
        assert!(
            !cache.before_connect(&mut host, services[2], now).ask,
            "full"
        );
        assert_eq!(cache.len(), 2);
        let later = now + Duration::from_secs(1);
        assert!(
            cache.before_connect(&mut host, services[2], later).ask,
            "one ran out"
        );
        assert_eq!(cache.len(), 2);
        // A withdrawn question leaves room for the next connect's.
        cache.withdraw(services[2]);
        assert_eq!(cache.len(), 1);
    }
}
