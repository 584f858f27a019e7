//! Cached resolution: routes sald resolved for this program's host, used
//! for a while without sald's hop (`docs/in-process-sal.md`,
//! stage 2, "cached resolution").
//!
//! A program's host has one rule of its own, FORWARD `0/0` to its sald,
//! which resolves each SYN by its table and forwards it. With a
//! [`Resolve`]r, the first connect to a service still goes that way, and
//! while its SYN is out the runtime asks the resolver (sald's `Resolve`
//! request, [`SaldResolver`]) how sald routes the service. A route is
//! installed in the host as a FORWARD rule of the service's whole ID (a
//! longer prefix than `0/0`, so it wins) with its next hops and weights,
//! and the next connects to the service go straight there until the
//! answer's lifetime runs out; then the rule is taken out, and the next
//! connect goes through sald and asks again. An answer without a route
//! ("ask me each time": sald serves the service itself, holds it for the
//! controller, drops it, or answers no routes), a resolver that fails,
//! and a sald without the request all leave the service on the default
//! route, without asking again for the answer's lifetime (or
//! [`UNANSWERED_LIFETIME`]).
//!
//! [`ResolutionCache`] is the bookkeeping, over any `sal::proto::Host`:
//! [`Runtime`](crate::Runtime) keeps one when its
//! [`Config::resolver`](crate::Config::resolver) is set, and a program
//! with its own event loop around a host can keep one too.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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
/// How long one thread's question keeps the others from asking the same.
const PENDING_LIFETIME: Duration = Duration::from_secs(2);
/// Services a cache holds at most unless told otherwise: one host rule
/// each while their answers last.
pub const DEFAULT_CAPACITY: usize = 4096;
/// How long [`SaldResolver`] waits for sald's answer.
const SALD_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Reaching the resolver failed.
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
    /// Called without the engine's lock, once per service per lifetime.
    fn resolve(&self, service: ServiceId) -> Result<Answer, ResolveError>;
}

/// Asks the sald of a control socket (`Request::Resolve`), over one
/// control connection kept open (made again when sald closed it, as it
/// closes an ordinary user's idle ones).
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
        let mut stream = UnixStream::connect(&self.path)?;
        stream.set_read_timeout(Some(SALD_TIMEOUT))?;
        stream.set_write_timeout(Some(SALD_TIMEOUT))?;
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client: "sal-inproc".into(),
        };
        match exchange(&mut stream, &hello)? {
            Response::Hello { .. } => Ok(stream),
            other => Err(refusal(other)),
        }
    }
}

impl Resolve for SaldResolver {
    fn resolve(&self, service: ServiceId) -> Result<Answer, ResolveError> {
        let mut held = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
}

/// One request and its answer on a control connection.
fn exchange(stream: &mut UnixStream, request: &Request) -> Result<Response, ResolveError> {
    stream.write_all(&encode_frame(request)?)?;
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

/// What the cache knows of one service.
#[derive(Debug)]
enum Entry {
    /// A thread is asking; the others use the default route meanwhile.
    Pending { until: Instant },
    /// Use the default route until then.
    Default { until: Instant },
    /// The host holds a rule of the service's ID toward these hops until
    /// then.
    Routed {
        until: Instant,
        prefix: ServicePrefix,
        hops: Vec<Locator>,
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
}

/// The services whose routes a host holds from a resolver, and until when
/// (see the module docs). Every method takes the host the rules are in:
/// always the same one.
#[derive(Debug)]
pub struct ResolutionCache {
    entries: HashMap<ServiceId, Entry>,
    capacity: usize,
}

impl Default for ResolutionCache {
    fn default() -> ResolutionCache {
        ResolutionCache::new(DEFAULT_CAPACITY)
    }
}

impl ResolutionCache {
    /// A cache of at most `capacity` services (beyond it, services are
    /// not cached: their SYNs go through sald).
    pub fn new(capacity: usize) -> ResolutionCache {
        ResolutionCache {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// Before a connect to `service`: takes a route out of `host` whose
    /// answer ran out, and says whether the caller should ask the
    /// resolver now (then call [`ResolutionCache::answer`] with what it
    /// said). The connect itself goes ahead at once either way, routed
    /// by what the host holds: the cached route, or the default one.
    pub fn before_connect(&mut self, host: &mut Host, service: ServiceId, now: Instant) -> bool {
        match self.entries.get(&service) {
            Some(entry) if entry.until() > now => return false,
            Some(_) => self.forget(host, service),
            None => {}
        }
        if self.entries.len() >= self.capacity {
            self.purge(host, now);
            if self.entries.len() >= self.capacity {
                return false;
            }
        }
        let until = now + PENDING_LIFETIME;
        self.entries.insert(service, Entry::Pending { until });
        true
    }

    /// Takes the resolver's answer for `service` (after
    /// [`ResolutionCache::before_connect`] said to ask): installs its
    /// route in `host` until its lifetime runs out, or keeps the service
    /// on the default route that long (for [`UNANSWERED_LIFETIME`] after
    /// a failure). A route is used only if it holds for exactly the
    /// service's ID (what sald answers) and leads over UDP.
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
        let usable = route.filter(|route| {
            route.prefix == ServicePrefix::exact(service)
                && !route.next_hops.is_empty()
                && (route.next_hops.iter()).all(|hop| matches!(hop.locator, Locator::Udp(_)))
        });
        let entry = match usable {
            Some(route) if !lifetime.is_zero() => {
                for hop in &route.next_hops {
                    let target = Target::Forward {
                        locator: hop.locator,
                        weight: hop.weight,
                    };
                    host.add_rule(route.prefix, target, 0);
                }
                Entry::Routed {
                    until,
                    prefix: route.prefix,
                    hops: route.next_hops.iter().map(|hop| hop.locator).collect(),
                }
            }
            _ => Entry::Default { until },
        };
        self.entries.insert(service, entry);
    }

    /// Drops what the cache holds for `service` (its rule too): the next
    /// connect asks again. For a connect through the cached route that
    /// failed (its next hop gone, say).
    pub fn forget(&mut self, host: &mut Host, service: ServiceId) {
        if let Some(Entry::Routed { prefix, hops, .. }) = self.entries.remove(&service) {
            for locator in hops {
                let _ = host.remove_rule_target(&prefix, &TargetKey::Forward { locator });
            }
        }
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

    /// Drops every entry that ran out, with its rule.
    pub fn purge(&mut self, host: &mut Host, now: Instant) {
        let expired: Vec<ServiceId> = (self.entries.iter())
            .filter(|(_, entry)| entry.until() <= now)
            .map(|(service, _)| *service)
            .collect();
        for service in expired {
            self.forget(host, service);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sal::proto::HostConfig;
    use sal_control::NextHop;

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
        assert!(cache.before_connect(&mut host, service(), now));
        assert_eq!(next_hop(&host), sald());
        // Another connect while the question is out goes through sald and
        // does not ask again.
        assert!(!cache.before_connect(&mut host, service(), now));
        cache.answer(&mut host, service(), routed(Duration::from_secs(5)), now);
        assert!(cache.is_routed(&service(), now));
        assert_eq!(next_hop(&host), server());
        let later = now + Duration::from_secs(4);
        assert!(!cache.before_connect(&mut host, service(), later));
        assert_eq!(next_hop(&host), server());
        // Run out: the rule goes, the connect goes through sald and asks.
        let expired = now + Duration::from_secs(5);
        assert!(cache.before_connect(&mut host, service(), expired));
        assert_eq!(next_hop(&host), sald());
        assert_eq!(host.table().len(), 1, "only the default rule is left");
    }

    #[test]
    fn no_route_and_failures_keep_the_default_route_for_a_while() {
        let (mut host, mut cache, now) = (host(), ResolutionCache::default(), Instant::now());
        assert!(cache.before_connect(&mut host, service(), now));
        let each_time = Ok(Answer {
            route: None,
            lifetime: Duration::from_secs(3),
        });
        cache.answer(&mut host, service(), each_time, now);
        assert_eq!(next_hop(&host), sald());
        assert!(!cache.before_connect(&mut host, service(), now + Duration::from_secs(2)));
        assert!(cache.before_connect(&mut host, service(), now + Duration::from_secs(3)));
        let old_sald = Err(ResolveError::Refused {
            kind: ErrorKind::InvalidRequest,
            message: "unknown request".into(),
        });
        cache.answer(&mut host, service(), old_sald, now);
        assert!(!cache.before_connect(&mut host, service(), now + UNANSWERED_LIFETIME / 2));
        assert!(cache.before_connect(&mut host, service(), now + UNANSWERED_LIFETIME));
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
        assert!(cache.before_connect(&mut host, service(), now));
        cache.answer(&mut host, service(), routed(Duration::from_secs(5)), now);
        let other: ServiceId = "c0ec7002".parse().unwrap();
        assert!(!cache.before_connect(&mut host, other, now), "full");
        cache.forget(&mut host, service());
        assert_eq!(next_hop(&host), sald());
        assert!(cache.before_connect(&mut host, other, now));
    }
}
