//! The controller itself, sans-IO: messages, sald events and time go in;
//! datagrams to peers and rule changes for the local sald come out.
//!
//! A driver (the `servd` binary, or a test with a virtual clock) feeds it
//! with [`Controller::handle_message`], [`Controller::handle_local_event`]
//! and [`Controller::handle_timeout`], then drains
//! [`Controller::poll_transmit`] (UDP datagrams) and
//! [`Controller::poll_action`] (requests for its sald), and sleeps until
//! [`Controller::poll_timeout`]. Nothing here blocks, reads a clock or
//! touches a socket, which is what lets the in-process tests run whole
//! hierarchies of controllers deterministically.
//!
//! Roles (one controller may play all of them):
//! - **host**: announces the prefixes bound on its sald to its upstreams,
//!   refreshes them every `refresh`, withdraws them on unbind, installs a
//!   default route toward its service router, and turns DELAY notifications
//!   into queries (small first, at a bounded rate: see
//!   [`FIRST_QUERY_PAD_LEN`] and [`Config::query_rate`]).
//! - **router** (`router: true`, its sald runs with `--forward`): turns
//!   announcements into FORWARD rules, expires them when refreshes stop,
//!   answers queries and solicitations, and re-announces what it can reach
//!   (aggregated under the configured covering prefixes) to its own
//!   upstreams.
//!
//! What a router accepts is bounded by its [`Policy`]: which senders may
//! announce which prefixes (never `/0`), toward which locators (by default
//! only the datagram's source address), how many, and with what priority.
//! Whatever a message says, a rule this controller installs never replaces
//! or outranks one the operator put in sald ([`Controller::adopt_rules`]
//! learns them): [`Controller`] lowers its priority to the lowest static
//! priority of the same prefix and leaves the operator's targets alone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::deadlines::Deadlines;

use sal::proto::LocalInterface;
use sal::table::{Rule, RuleOrigin, Target, TargetKey};
use sal::{FlowId, Locator, ServiceId, ServicePrefix};
use sal_control::ControlEvent;

use super::keys::Keyring;
use super::log_limit::{
    LogLimiter, SourceLimiter, TokenBucket, UserBuckets, DOWNSTREAM_BURST,
    DOWNSTREAM_RATE_PER_SECOND, REPLY_BURST, REPLY_RATE_PER_SECOND,
};
use super::policy::{Grant, Policy, Sender};
use super::replay::{ReplayError, ReplayGuard};
use super::wire::{
    self, announce_batches, pad_untagged, withdraw_batches, Announcement, Message, Node, Route,
    RouteTarget, Sealer, WireError, MAX_LOCATORS,
};

/// Priority of the DROP rule a negative answer installs: above anything an
/// operator is likely to have put at the same exact (/256) prefix.
pub const NEGATIVE_PRIORITY: u32 = 1_000_000;
/// Most targets accepted in one answer.
const MAX_ANSWER_TARGETS: usize = 64;
/// Shortest lease accepted from a peer (guards against refresh storms).
const MIN_LEASE: Duration = Duration::from_millis(100);
/// How many times a query is sent before giving up.
const QUERY_TRIES: u8 = 3;
/// Bounds on state a peer can make us keep: queries in flight, askers
/// waiting on one query, downstream senders remembered.
const MAX_PENDING_QUERIES: usize = 10_000;
/// Of [`MAX_PENDING_QUERIES`], what queries relayed for downstream askers
/// may not take, so that forged queries from many sources cannot crowd
/// our own sald's out. At the default rate one budget ([`Config::query_rate`]:
/// a burst of 200, then 100 a second, each pending for at most
/// `QUERY_TRIES` timeouts, 1.5 s) holds about 350 at once: the packets'
/// budget and a few users' connect budgets fit; many users connecting to
/// unknown services at full rate at once can still fill it.
const LOCAL_QUERY_RESERVE: usize = 2_000;
const MAX_WAITERS: usize = 64;
const MAX_DOWNSTREAMS: usize = 100_000;
/// Resyncs an upstream may ask of us, untagged, per refresh interval.
const RESYNC_BURST: u32 = 3;
/// Without a key, an answer is at most this many times the bytes of the
/// query it answers (targets are left out to fit): its source address may
/// be forged, and the answer must not amplify what the forger sent.
pub const ANSWER_FACTOR: usize = 3;
/// Without a key, servd asks again with its query padded to this many
/// bytes (JSON whitespace) when the answer to its first, small query
/// ([`FIRST_QUERY_PAD_LEN`]) came back `partial`: that leaves room under
/// [`ANSWER_FACTOR`] for the largest answer servd sends, 64 UDP targets
/// with the largest weights and priorities, a 64-character name and a /256
/// prefix, 5,573 bytes (the test
/// `the_largest_answer_fits_the_budget_of_a_padded_query` measures it).
/// Over a 1,500-byte MTU the query is fragmented, as announcement batches
/// of up to 8 KB already are.
pub const QUERY_PAD_LEN: usize = 1860;
/// Without a key, servd's first query for a service is padded to this many
/// bytes only (most are about that long unpadded: a 64-digit service ID
/// and a 16-character name make 200 bytes). Every query servd sends for
/// its own sald follows a DELAY notification, which any remote sender
/// triggers with a SYN of some 100 bytes to a random service ID: padding
/// it to [`QUERY_PAD_LEN`] turned each such SYN into 1,860 bytes toward
/// the host's routers. Three times 192 bytes holds the largest answer with
/// one target (479 bytes: a UDP locator, the largest numbers, a
/// 64-character name, a /256 prefix; a router withholds an answer none of
/// whose targets fit, so less would lose answers), the largest with two
/// (559 bytes), and a typical one with up to six targets (a /16 with IPv4
/// targets, a 16-character name and a 64-digit service ID: 306 bytes for
/// one target, 47 more for each other); the test
/// `the_largest_single_target_answer_fits_a_first_query` measures them. A
/// larger answer comes back cut and `partial`: servd installs it for the
/// short time partial answers get, and asks once more, padded to
/// [`QUERY_PAD_LEN`].
pub const FIRST_QUERY_PAD_LEN: usize = 192;
/// The user of a held connect sald did not name (a sald that does not
/// say): such connects share one budget.
pub const UNKNOWN_USER: u32 = u32::MAX;
/// Queries a second servd starts for its own sald by default
/// ([`Config::query_rate`]).
pub const QUERY_RATE_PER_SECOND: u32 = 100;
/// Without a key, servd's solicits are padded to this many bytes, and a
/// router's advert is at most [`ANSWER_FACTOR`] times the solicit it
/// answers (locators are left out to fit): the largest advert servd sends
/// (16 UDP locators, a 64-character name) is well under that budget (the
/// test `the_largest_advert_fits_the_budget_of_a_padded_solicit` measures
/// it).
pub const SOLICIT_PAD_LEN: usize = 512;

/// How a router turns announcements of one prefix into FORWARD weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightPolicy {
    /// The weight each host announced.
    #[default]
    Static,
    /// Load-aware: instances ranked by their reported load get the share
    /// that "power of two choices" would give them (the r-th least loaded
    /// of n is picked with probability (2(n-r)-1)/n^2), scaled by their
    /// announced weight. The least loaded gets the most new connections,
    /// but not all of them, so a burst does not pile onto one instance
    /// between two load reports (the herd effect).
    LeastLoaded,
}

/// What the default route of a host points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultRoute {
    /// `/0 FORWARD` toward the service router(s), once one answered.
    #[default]
    Forward,
    /// `/0 DELAY`: every unknown service is resolved by a query upstream.
    Delay,
    /// No default rule.
    None,
}

/// Everything a controller is told at start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name in messages and rule origins (default: the host name).
    pub name: String,
    /// Upstream controllers (`--upstream`), all announced to (redundancy).
    pub upstreams: Vec<SocketAddr>,
    /// When no upstream is configured: solicit a router by broadcast on
    /// each interface's subnet, to this port. `None`: do not.
    pub discover_port: Option<u16>,
    /// Act as a service router (install FORWARD rules from announcements).
    pub router: bool,
    /// Lease put on our announcements.
    pub lease: Duration,
    /// How often announcements are refreshed (well under `lease`).
    pub refresh: Duration,
    /// Longest lease accepted from a downstream.
    pub max_lease: Duration,
    /// Weight and priority announced for our prefixes.
    pub weight: u32,
    /// Priority announced for our prefixes (a router caps it by its policy);
    /// also given in answers for services bound here.
    pub priority: u32,
    /// Covering prefixes announced instead of the specific ones below them.
    pub aggregates: Vec<ServicePrefix>,
    /// How a router weighs the instances of a prefix (`--weights`).
    pub weight_policy: WeightPolicy,
    /// The default rule a host installs (`--default-route`).
    pub default_route: DefaultRoute,
    /// How long a positive answer is cached as a FORWARD rule.
    pub cache_lifetime: Duration,
    /// How long a negative answer is cached as a DROP rule.
    pub negative_lifetime: Duration,
    /// How long to wait for an answer before asking again.
    pub query_timeout: Duration,
    /// New queries a second servd starts for its own sald (bursts of twice
    /// that; a DELAY notification for a service already being asked about
    /// costs nothing, nor do the retries of a query, at most
    /// `QUERY_TRIES` - 1 each). A remote sender triggers DELAY
    /// notifications at will, with SYNs to random service IDs: past this
    /// rate they are left unanswered (counted as `refused_query_rate`; sald
    /// drops the held SYN at its delay timeout), so that a SYN flood does
    /// not become a query flood toward the routers. Notifications for
    /// connects made on this host have budgets of their own, one per user
    /// at the same rate, so that neither such a flood nor one user's
    /// connects starve another user's. Relayed queries (a
    /// router asking on behalf of a downstream host) are not counted here.
    pub query_rate: u32,
    /// Bound on learned (prefix, locator) entries.
    pub max_entries: usize,
    /// Bound on cached answers (one per FORWARD target or negative
    /// answer): when full, the one that would expire first goes early.
    /// Every connect to an unknown service adds one for a while, so
    /// without it the rate of such connects sets the table's size.
    pub max_cached: usize,
    /// Keys: the one every message is tagged with, and those whose tags
    /// are accepted. Empty: messages go untagged.
    pub keys: Keyring,
    /// What a router accepts from announcements.
    pub policy: Policy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: "servd".into(),
            upstreams: Vec::new(),
            discover_port: None,
            router: false,
            lease: Duration::from_secs(30),
            refresh: Duration::from_secs(10),
            max_lease: Duration::from_secs(300),
            weight: 1,
            priority: 0,
            aggregates: Vec::new(),
            weight_policy: WeightPolicy::Static,
            default_route: DefaultRoute::Forward,
            cache_lifetime: Duration::from_secs(30),
            negative_lifetime: Duration::from_secs(2),
            query_timeout: Duration::from_millis(500),
            query_rate: QUERY_RATE_PER_SECOND,
            max_entries: 1_000_000,
            max_cached: 100_000,
            keys: Keyring::none(),
            policy: Policy::default(),
        }
    }
}

/// A change for the local sald.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaldAction {
    /// `AddRuleWithOrigin`; `expires_in` becomes the origin's expiry.
    Add {
        /// The rule's prefix.
        prefix: ServicePrefix,
        /// The target added, or replaced if sald has one with the same key.
        target: Target,
        /// Rule priority, never above the operator's static targets of the
        /// same prefix.
        priority: u32,
        /// Who the rule is for (announced, resolved, default route), as
        /// `servalctl services` shows it.
        origin: RuleOrigin,
        /// How long it lasts unless renewed, turned into the origin's expiry
        /// for listings; `None` for the default route, which has none.
        expires_in: Option<Duration>,
    },
    /// `DelRule` of one target (a missing one is not an error).
    Remove {
        /// The rule's prefix.
        prefix: ServicePrefix,
        /// Which of its targets goes.
        key: TargetKey,
    },
}

/// A datagram for a peer controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The peer's UDP address: an upstream, the sender of a message being
    /// answered, or a subnet broadcast address when discovering.
    pub to: SocketAddr,
    /// One encoded datagram (tagged when the controller has a key).
    pub bytes: Vec<u8>,
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams received from peers, valid or not (our own looped-back
    /// broadcasts included).
    pub rx: u64,
    /// Datagrams queued for peers.
    pub tx: u64,
    /// Datagrams over `MAX_DATAGRAM` bytes, dropped unread.
    pub dropped_oversized: u64,
    /// Datagrams that were not servd's, or whose message did not parse or
    /// broke the name and locator limits.
    pub dropped_malformed: u64,
    /// Datagrams of another protocol version.
    pub dropped_version: u64,
    /// Datagrams without a valid tag under one of our keys, or tagged while
    /// we have none.
    pub dropped_unauthenticated: u64,
    /// Valid messages this controller had no use for (an announcement to a
    /// non-router, an answer nobody asked for, a full table).
    pub dropped_unexpected: u64,
    /// Announce messages handled as a router (datagrams, not entries;
    /// counted before the policy checks).
    pub announcements: u64,
    /// Withdraw messages handled as a router.
    pub withdrawals: u64,
    /// Learned (prefix, locator) entries dropped because their lease ran
    /// out without a refresh.
    pub expired: u64,
    /// Queries received from downstream controllers.
    pub queries: u64,
    /// Answers accepted to our own pending queries, positive or negative.
    pub answers: u64,
    /// Of `answers`, those without a usable route (no such service, or a
    /// route not covering the service asked about).
    pub negative_answers: u64,
    /// Rule additions (and re-installs) queued for sald.
    pub rules_added: u64,
    /// Rule removals queued for sald.
    pub rules_removed: u64,
    /// Tagged datagrams whose sequence number was already seen (replays),
    /// or from a new sender while the replay table was full.
    pub dropped_replayed: u64,
    /// Tagged datagrams whose timestamp was more than 30 s off.
    pub dropped_stale: u64,
    /// Announced or withdrawn prefixes the policy refused (`/0`, too
    /// short, not allowed for this sender).
    pub refused_prefix: u64,
    /// Announced locators that were not the sender's own address, and
    /// untagged adverts that answer none of our solicits (wrong nonce).
    pub refused_locator: u64,
    /// Announced entries over the sender's limit.
    pub refused_over_limit: u64,
    /// Unauthenticated queries and solicits left unanswered because their
    /// source address had used up its rate (`log_limit::SourceLimiter`).
    pub refused_answer_rate: u64,
    /// Unauthenticated answers and adverts cut short (targets or locators
    /// left out) or withheld because the full reply would have been more
    /// than `ANSWER_FACTOR` times the query's or solicit's bytes.
    pub refused_answer_size: u64,
    /// Rule changes left out because they would have replaced or outranked
    /// an operator's static rule (priorities lowered count too).
    pub static_protected: u64,
    /// Cached answers removed before they expired, to make room for newer
    /// ones (`max_cached`).
    pub cache_evicted: u64,
    /// Queries for our own sald not sent because servd had started
    /// `query_rate` of them already (a DELAY notification left to sald's
    /// delay timeout, or a partial answer not asked about again).
    pub refused_query_rate: u64,
    /// Queries asked again padded to `QUERY_PAD_LEN` because the answer to
    /// the first, small one was partial (cut to three times its size).
    pub requeries: u64,
}

impl Stats {
    /// Everything refused for security reasons (replay, policy, limits).
    pub fn refused(&self) -> u64 {
        self.dropped_replayed
            + self.dropped_stale
            + self.refused_prefix
            + self.refused_locator
            + self.refused_over_limit
            + self.refused_answer_rate
            + self.refused_answer_size
            + self.refused_query_rate
    }
}

/// Whether a service router is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Still looking (within the first refresh interval).
    Starting,
    /// At least one upstream answered.
    Connected,
    /// Nobody answered: only local services are reachable by default.
    HostOnly,
    /// A router without upstream: the top of its hierarchy.
    Root,
}

/// The instances learned for one prefix, by locator. A small sorted vector
/// rather than a map: most prefixes have a handful of instances, and a map
/// node per prefix would cost more than the entries themselves.
#[derive(Debug, Default)]
struct Targets(Vec<(Locator, Learned)>);

impl Targets {
    fn position(&self, locator: &Locator) -> Result<usize, usize> {
        self.0.binary_search_by(|(l, _)| l.cmp(locator))
    }

    fn contains_key(&self, locator: &Locator) -> bool {
        self.position(locator).is_ok()
    }

    fn get(&self, locator: &Locator) -> Option<&Learned> {
        let index = self.position(locator).ok()?;
        Some(&self.0[index].1)
    }

    fn get_mut(&mut self, locator: &Locator) -> Option<&mut Learned> {
        let index = self.position(locator).ok()?;
        Some(&mut self.0[index].1)
    }

    fn insert(&mut self, locator: Locator, learned: Learned) {
        match self.position(&locator) {
            Ok(index) => self.0[index].1 = learned,
            Err(index) => self.0.insert(index, (locator, learned)),
        }
    }

    fn remove(&mut self, locator: &Locator) -> Option<Learned> {
        let index = self.position(locator).ok()?;
        Some(self.0.remove(index).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&Locator, &Learned)> {
        self.0.iter().map(|(l, e)| (l, e))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&Locator, &mut Learned)> {
        self.0.iter_mut().map(|(l, e)| (&*l, e))
    }

    fn values(&self) -> impl Iterator<Item = &Learned> {
        self.0.iter().map(|(_, e)| e)
    }
}

/// One (prefix, locator) learned from an announcement.
#[derive(Debug, Clone)]
struct Learned {
    /// Shared by every entry of one announcing host.
    by: Arc<str>,
    /// Source address of the announcement (per-sender limits).
    sender: Ipv4Addr,
    announced_weight: u32,
    priority: u32,
    load: u32,
    expires: Instant,
    lease: Duration,
    /// (weight, priority) last installed, and the expiry last reported.
    installed: Option<(u32, u32)>,
    reported_expiry: Instant,
}

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    /// The router behind it, from its last advert.
    router: Option<Node>,
    next_solicit: Instant,
    /// Nonce of the latest solicit sent to it: an untagged advert is taken
    /// only with it ([`Controller::on_advert`]).
    nonce: Option<u64>,
    /// Resyncs sent to it on its say-so (a new epoch in its advert, or its
    /// resync request) in the refresh interval that started at the given
    /// instant: untagged, those may be forged, and each costs a full
    /// refresh, so at most [`RESYNC_BURST`] are sent per refresh interval
    /// (the periodic refresh covers one left out).
    resyncs: (Instant, u32),
}

/// Who a message came from: its source address and the key that
/// authenticated it, if any.
#[derive(Debug, Clone, Copy)]
struct Peer<'a> {
    src: SocketAddr,
    key: Option<&'a str>,
}

/// The locators a message claims, split by whether they are the address
/// it came from.
#[derive(Debug)]
struct Claimed {
    own: Vec<Locator>,
    foreign: Vec<Locator>,
}

impl Claimed {
    /// Without claims, the source address itself.
    fn new(from: &Node, src: Ipv4Addr) -> Claimed {
        if from.locators.is_empty() {
            return Claimed {
                own: vec![Locator::Ipv4(src)],
                foreign: Vec::new(),
            };
        }
        let (own, foreign) = from
            .locators
            .iter()
            .take(MAX_LOCATORS)
            .partition(|l| l.ip() == src);
        Claimed { own, foreign }
    }
}

/// One announcement message, as every entry it carries is recorded.
#[derive(Debug)]
struct Announcer {
    by: Arc<str>,
    sender: Ipv4Addr,
    expires: Instant,
    lease: Duration,
}

/// What the operator put at one prefix (non-DEMUX static targets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct StaticRule {
    /// Lowest priority among them: a controller's rule never goes above.
    floor: u32,
    keys: Vec<TargetKey>,
}

/// A downstream asker waiting on a query we relayed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    addr: SocketAddr,
    /// Their query ID.
    id: u64,
    /// Bytes of its query, when unauthenticated: the answer may take at
    /// most [`ANSWER_FACTOR`] times that, and a query relayed for it is
    /// padded to no more than that (see [`Pending::pad`]).
    query_len: Option<usize>,
    /// Its answer was paid for against the source's reply rate when its
    /// query was relayed (see [`Controller::answer_query`]).
    prepaid: bool,
}

impl Waiter {
    /// Most bytes the answer may take (unauthenticated queries only).
    fn budget(&self) -> Option<usize> {
        self.query_len.map(|len| len.saturating_mul(ANSWER_FACTOR))
    }
}

/// Who a query is for.
#[derive(Debug, Clone, Copy)]
enum Asker {
    /// Our own sald, whose DELAY rule holds a connect made on this host by
    /// a user (`connect`: its uid, [`UNKNOWN_USER`] if sald did not say)
    /// or a packet that arrived (`None`; anyone may send those). Packets
    /// and each user's connects have budgets of their own
    /// ([`Config::query_rate`]).
    Sald { connect: Option<u32> },
    /// A downstream host or router.
    Downstream(Waiter),
}

#[derive(Debug)]
struct Pending {
    id: u64,
    deadline: Instant,
    tries: u8,
    /// A DELAY on our own sald is waiting for this answer.
    local: bool,
    /// ... for a connect made on this host by this user (see
    /// [`Asker::Sald`]).
    connect: Option<u32>,
    /// Downstream askers.
    waiters: Vec<Waiter>,
    /// Bytes the (untagged) query upstream is padded to: for our own
    /// sald's, [`FIRST_QUERY_PAD_LEN`] and [`QUERY_PAD_LEN`] when asked
    /// again after a partial answer; for relayed ones only the largest
    /// asker's query bytes (at least [`FIRST_QUERY_PAD_LEN`] once our own
    /// sald waits on it too). Padding a forged small query to the full
    /// length would make a relaying router an amplifier toward its
    /// upstream, and padding our own first query so would make every SYN
    /// to an unknown service one.
    pad: usize,
    /// What the query was first sent padded to: an answer (which may be
    /// to that first send) has room for at most three times that, so
    /// askers who joined with larger queries may be owed more than a cut
    /// answer to it (see [`Controller::on_answer`]).
    first_pad: usize,
}

/// One downstream sender (by source address) that holds entries here.
#[derive(Debug, Clone, Copy)]
struct Downstream {
    /// Epoch of its latest announcement: a new one makes the router ask
    /// for a resync.
    latest: u64,
    /// When it last announced something it holds (forgotten a maximum
    /// lease later: all its entries are gone by then).
    seen: Instant,
}

/// The service controller; see the module documentation.
#[derive(Debug)]
pub struct Controller {
    config: Config,
    epoch: u64,
    started: Instant,
    interfaces: Vec<LocalInterface>,
    // --- host role ---
    /// Prefixes bound on our sald, with their active flows.
    local: BTreeMap<ServicePrefix, u32>,
    flows: HashMap<FlowId, ServicePrefix>,
    /// What we announce upstream: prefix -> how many sources (local
    /// registrations, learned prefixes) it stands for.
    exported: BTreeMap<ServicePrefix, usize>,
    pending_announce: BTreeSet<ServicePrefix>,
    pending_withdraw: BTreeSet<ServicePrefix>,
    next_refresh: Instant,
    upstreams: Vec<Upstream>,
    next_discover: Option<Instant>,
    /// Nonce of the latest broadcast solicit (while discovering).
    discover_nonce: Option<u64>,
    /// Keys solicit nonces and the reply limiters' hashes
    /// ([`Controller::set_secret`]).
    secret: (u64, u64),
    nonce_counter: u64,
    mode: Mode,
    default_targets: HashSet<TargetKey>,
    // --- router role ---
    rib: BTreeMap<ServicePrefix, Targets>,
    /// How many RIB prefixes have each length (longest match walks these).
    prefix_lens: Vec<u32>,
    rib_entries: usize,
    next_expiry: Option<Instant>,
    /// Downstream senders holding entries, and the epoch they last
    /// announced with (to ask new runs for a resync).
    downstreams: HashMap<SocketAddr, Downstream>,
    /// When forgotten downstreams are next swept out.
    next_sweep: Instant,
    /// Replies to unauthenticated queries and solicits, per source address;
    /// `downstream_limiter` for sources that hold entries here.
    reply_limiter: SourceLimiter,
    downstream_limiter: SourceLimiter,
    /// Turns the targets of answers cut short (each asker gets another
    /// share of them).
    answer_turn: usize,
    // --- resolution ---
    queries: HashMap<ServiceId, Pending>,
    /// New queries for our own sald about packets that arrived
    /// ([`Config::query_rate`]): anyone may send those.
    query_budget: TokenBucket,
    /// New queries for our own sald's local connects, the same rate on a
    /// budget of their own for each user: neither a packet flood nor one
    /// user's connects to random services must leave this host's other
    /// users unable to reach a service.
    connect_query_budgets: UserBuckets,
    /// The next query's ID: an answer is taken only from an upstream's
    /// address and with the ID of a pending query, so an off-path sender
    /// who can forge that address must guess it (see `set_query_secret`).
    next_query_id: u64,
    /// Rules installed from answers, with their expiry.
    cache: Deadlines<(ServicePrefix, TargetKey)>,
    /// Rules a previous run installed; removed unless re-learned in time.
    /// `true` for FORWARD rules from announcements (soft state of others).
    adopted: Deadlines<(ServicePrefix, TargetKey), bool>,
    /// The operator's rules in sald: never replaced, removed or outranked.
    statics: HashMap<ServicePrefix, StaticRule>,
    /// Learned entries per announcing source address.
    per_sender: HashMap<Ipv4Addr, usize>,
    // --- authentication ---
    replay: ReplayGuard,
    next_sequence: u64,
    /// (instant, Unix ms) pairs mapping the monotonic clock to wall time.
    unix_reference: (Instant, u64),
    /// The latest `now` any input brought.
    clock: Instant,
    log_limiter: LogLimiter,
    // --- output ---
    transmits: VecDeque<Transmit>,
    actions: VecDeque<SaldAction>,
    stats: Stats,
}

impl Controller {
    /// A controller starting at `now`; `epoch` must differ between runs
    /// (random), it tells peers that this controller's state is new. Its
    /// query IDs follow from `epoch` until [`Controller::set_query_secret`]
    /// says otherwise: repeatable, for simulations, but predictable by
    /// anyone who heard the epoch (every message carries it in clear).
    pub fn new(config: Config, now: Instant, epoch: u64) -> Controller {
        let upstreams = config
            .upstreams
            .iter()
            .map(|&addr| Upstream {
                addr,
                router: None,
                next_solicit: now,
                nonce: None,
                resyncs: (now, 0),
            })
            .collect();
        // Routers do not go looking for routers: a router without upstream
        // is the top of its hierarchy.
        let next_discover =
            (config.upstreams.is_empty() && config.discover_port.is_some() && !config.router)
                .then_some(now);
        let mode = if config.router && config.upstreams.is_empty() {
            Mode::Root
        } else {
            Mode::Starting
        };
        let mut controller = Controller {
            epoch,
            started: now,
            interfaces: Vec::new(),
            local: BTreeMap::new(),
            flows: HashMap::new(),
            exported: BTreeMap::new(),
            pending_announce: BTreeSet::new(),
            pending_withdraw: BTreeSet::new(),
            next_refresh: now + config.refresh,
            upstreams,
            next_discover,
            discover_nonce: None,
            secret: (epoch, !epoch),
            nonce_counter: 0,
            mode,
            default_targets: HashSet::new(),
            rib: BTreeMap::new(),
            prefix_lens: vec![0; 257],
            rib_entries: 0,
            next_expiry: None,
            downstreams: HashMap::new(),
            next_sweep: now,
            reply_limiter: SourceLimiter::new(REPLY_RATE_PER_SECOND, REPLY_BURST, (epoch, 1)),
            downstream_limiter: SourceLimiter::new(
                DOWNSTREAM_RATE_PER_SECOND,
                DOWNSTREAM_BURST,
                (epoch, 2),
            ),
            answer_turn: 0,
            queries: HashMap::new(),
            query_budget: TokenBucket::new(
                f64::from(config.query_rate),
                2.0 * f64::from(config.query_rate),
                now,
            ),
            connect_query_budgets: UserBuckets::new(
                f64::from(config.query_rate),
                2.0 * f64::from(config.query_rate),
            ),
            next_query_id: epoch.rotate_left(32) | 1,
            cache: Deadlines::default(),
            adopted: Deadlines::default(),
            statics: HashMap::new(),
            per_sender: HashMap::new(),
            replay: ReplayGuard::default(),
            next_sequence: 1,
            unix_reference: (now, 0),
            clock: now,
            log_limiter: LogLimiter::default(),
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            stats: Stats::default(),
            config,
        };
        if controller.config.default_route == DefaultRoute::Delay {
            controller.install_default_delay();
        }
        controller
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether a service router is known (or this is the top router).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Learned (prefix, locator) entries.
    pub fn learned_entries(&self) -> usize {
        self.rib_entries
    }

    /// Prefixes bound on the local sald.
    pub fn local_prefixes(&self) -> impl Iterator<Item = &ServicePrefix> {
        self.local.keys()
    }

    /// Prefixes announced upstream.
    pub fn exported_prefixes(&self) -> impl Iterator<Item = &ServicePrefix> {
        self.exported.keys()
    }

    /// This controller as peers see it.
    pub fn node(&self) -> Node {
        Node {
            name: self.config.name.clone(),
            epoch: self.epoch,
            locators: self
                .interfaces
                .iter()
                .map(|i| i.locator)
                .take(MAX_LOCATORS)
                .collect(),
        }
    }

    /// Draws this controller's query IDs from `secret` from now on rather
    /// than from its epoch. servd passes random bits: an off-path sender
    /// who forges an upstream's address must then guess a 64-bit ID to
    /// have a forged answer taken.
    pub fn set_query_secret(&mut self, secret: u64) {
        self.next_query_id = secret | 1;
    }

    /// Keys what off-path senders must not predict besides query IDs: the
    /// nonces of solicits (an untagged advert is taken only with one) and
    /// the hash that spreads sources over the reply limiters' buckets.
    /// servd passes random bits; until then they follow from the epoch
    /// (repeatable, for simulations).
    pub fn set_secret(&mut self, secret: [u64; 2]) {
        self.secret = (secret[0], secret[1]);
        self.reply_limiter.rekey((secret[0], secret[1] ^ 1));
        self.downstream_limiter.rekey((secret[0], secret[1] ^ 2));
    }

    /// Statistics of the replay guard: senders remembered.
    pub fn replay_senders(&self) -> usize {
        self.replay.len()
    }

    // ----- clocks ---------------------------------------------------------

    /// Tells the controller the wall-clock time (Unix milliseconds) at
    /// `now`. Tagged messages carry it and are checked against it, so the
    /// driver sets it at start and now and then after (clock adjustments).
    pub fn set_unix_time(&mut self, now: Instant, unix_ms: u64) {
        self.touch(now);
        self.unix_reference = (now, unix_ms);
    }

    /// Wall-clock time at `at`, from the last [`Controller::set_unix_time`].
    fn unix_ms(&self, at: Instant) -> u64 {
        let (reference, unix_ms) = self.unix_reference;
        let ahead = at.saturating_duration_since(reference).as_millis();
        let behind = reference.saturating_duration_since(at).as_millis();
        let ahead = u64::try_from(ahead).unwrap_or(u64::MAX);
        let behind = u64::try_from(behind).unwrap_or(u64::MAX);
        unix_ms.saturating_add(ahead).saturating_sub(behind)
    }

    fn touch(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    /// Tags outgoing datagrams with our key, clock and sequence numbers.
    fn sealer(&mut self) -> Sealer<'_> {
        let timestamp_ms = self.unix_ms(self.clock);
        Sealer::new(
            self.config.keys.signing(),
            timestamp_ms,
            &mut self.next_sequence,
        )
    }

    // ----- inputs ---------------------------------------------------------

    /// The local sald's interfaces (at start, and whenever they change).
    pub fn set_interfaces(&mut self, now: Instant, interfaces: Vec<LocalInterface>) {
        self.touch(now);
        if interfaces == self.interfaces {
            return;
        }
        self.interfaces = interfaces;
        // Our locators changed: tell upstream at once, with everything.
        if !self.exported.is_empty() {
            self.send_full_refresh(now, None);
        }
    }

    /// The local sald's rules at start: DEMUX targets are services bound
    /// before we came up; static targets are the operator's (remembered, so
    /// that nothing we install replaces or outranks them); targets a
    /// controller installed earlier (a previous run of ours) are kept for
    /// one lease, and removed unless re-learned.
    pub fn adopt_rules(&mut self, now: Instant, rules: &[Rule]) {
        self.touch(now);
        self.statics = operator_rules(rules);
        for rule in rules {
            for entry in rule.targets() {
                match (&entry.target, &entry.origin) {
                    // An unbound datagram socket's own ID is no service.
                    (Target::Demux { .. }, RuleOrigin::Ephemeral) => {}
                    (Target::Demux { .. }, _) => {
                        self.handle_local_event(
                            now,
                            ControlEvent::Registered {
                                prefix: rule.prefix,
                            },
                        );
                    }
                    (_, RuleOrigin::Static) => {}
                    (target, origin) => {
                        let key = target.key();
                        if !self.owns(&rule.prefix, &key) {
                            let announced = matches!(origin, RuleOrigin::Announced { .. });
                            let until = now + self.config.lease;
                            self.adopted.insert((rule.prefix, key), until, announced);
                        }
                    }
                }
            }
        }
    }

    /// The local sald's rules, listed again: the operator may have added or
    /// removed static rules since. Learned rules of prefixes whose static
    /// rules changed are installed again under the new bounds.
    pub fn update_statics(&mut self, now: Instant, rules: &[Rule]) {
        self.touch(now);
        let statics = operator_rules(rules);
        if statics == self.statics {
            return;
        }
        let changed: BTreeSet<ServicePrefix> = statics
            .iter()
            .filter(|(p, s)| self.statics.get(p) != Some(s))
            .map(|(p, _)| *p)
            .chain(
                self.statics
                    .keys()
                    .filter(|p| !statics.contains_key(p))
                    .copied(),
            )
            .collect();
        tracing::info!(prefixes = changed.len(), "the operator's rules changed");
        self.statics = statics;
        for prefix in changed {
            if let Some(targets) = self.rib.get_mut(&prefix) {
                for (_, learned) in targets.iter_mut() {
                    learned.installed = None;
                }
                self.reconcile(now, prefix);
            }
        }
    }

    /// The local sald is gone (it stopped, or the connection to it broke).
    /// Its registrations went with it: they are withdrawn upstream now.
    /// Nothing installed there can be assumed to be there any more; rule
    /// changes queued for it are dropped ([`Controller::sald_connected`]
    /// installs everything again).
    pub fn sald_lost(&mut self, now: Instant) {
        self.touch(now);
        let registered: Vec<ServicePrefix> = self.local.keys().copied().collect();
        for prefix in registered {
            self.handle_local_event(now, ControlEvent::Unregistered { prefix });
        }
        self.flows.clear();
        for targets in self.rib.values_mut() {
            for (_, learned) in targets.iter_mut() {
                learned.installed = None;
            }
        }
        self.cache.clear();
        self.adopted.clear();
        self.actions.clear();
    }

    /// Connected (or reconnected) to the local sald, which has these
    /// interfaces and rules: registrations are taken from its DEMUX targets
    /// (those gone meanwhile are withdrawn), the operator's rules are
    /// remembered, leftovers are adopted, and every rule this controller
    /// maintains is installed again.
    pub fn sald_connected(
        &mut self,
        now: Instant,
        interfaces: Vec<LocalInterface>,
        rules: &[Rule],
    ) {
        self.touch(now);
        self.set_interfaces(now, interfaces);
        let bound: BTreeSet<ServicePrefix> = rules
            .iter()
            .filter(|r| {
                r.targets().iter().any(|e| {
                    matches!(e.target, Target::Demux { .. }) && e.origin != RuleOrigin::Ephemeral
                })
            })
            .map(|r| r.prefix)
            .collect();
        let gone: Vec<ServicePrefix> = self
            .local
            .keys()
            .filter(|p| !bound.contains(p))
            .copied()
            .collect();
        for prefix in gone {
            self.handle_local_event(now, ControlEvent::Unregistered { prefix });
        }
        self.adopt_rules(now, rules);
        let prefixes: Vec<ServicePrefix> = self.rib.keys().copied().collect();
        for prefix in prefixes {
            if let Some(targets) = self.rib.get_mut(&prefix) {
                for (_, learned) in targets.iter_mut() {
                    learned.installed = None;
                }
            }
            self.reconcile(now, prefix);
        }
        self.default_targets.clear();
        match self.config.default_route {
            DefaultRoute::Forward => self.update_default_route(),
            DefaultRoute::Delay => self.install_default_delay(),
            DefaultRoute::None => {}
        }
    }

    /// Stopping (SIGTERM): withdraws everything announced, from every
    /// upstream, and removes the rules only this controller maintains (the
    /// default route, resolved and negative cache entries, leftovers of a
    /// previous run other than announced ones). FORWARD rules learned from
    /// other hosts' announcements stay: they are those hosts' soft state,
    /// keep the services reachable while the controller restarts, and the
    /// next run adopts them (and removes, one lease later, those nobody
    /// announces any more). Drain [`Controller::poll_transmit`] and
    /// [`Controller::poll_action`] afterwards.
    pub fn shutdown(&mut self, now: Instant) {
        self.touch(now);
        self.flush_exports();
        let exported: Vec<ServicePrefix> = std::mem::take(&mut self.exported).into_keys().collect();
        self.pending_announce.clear();
        if !exported.is_empty() && !self.upstreams.is_empty() {
            tracing::info!(
                prefixes = exported.len(),
                "withdrawing everything announced"
            );
            let node = self.node();
            let datagrams = withdraw_batches(&node, &exported, &mut self.sealer());
            for upstream in self.upstreams.iter().map(|u| u.addr).collect::<Vec<_>>() {
                for bytes in &datagrams {
                    self.push_transmit(upstream, bytes.clone());
                }
            }
        }
        for key in std::mem::take(&mut self.default_targets) {
            self.remove_rule(ServicePrefix::DEFAULT, key);
        }
        for ((prefix, key), ()) in self.cache.take_all() {
            if !self.owns(&prefix, &key) {
                self.remove_rule(prefix, key);
            }
        }
        for ((prefix, key), announced) in self.adopted.take_all() {
            if !announced {
                self.remove_rule(prefix, key);
            }
        }
    }

    /// An event from the local sald's subscription.
    pub fn handle_local_event(&mut self, now: Instant, event: ControlEvent) {
        self.touch(now);
        match event {
            ControlEvent::Registered { prefix } if !self.local.contains_key(&prefix) => {
                self.local.insert(prefix, 0);
                tracing::info!(%prefix, "service registered locally; announcing");
                self.export(prefix);
            }
            ControlEvent::Unregistered { prefix } if self.local.contains_key(&prefix) => {
                self.local.remove(&prefix);
                tracing::info!(%prefix, "service unregistered locally; withdrawing");
                self.flows.retain(|_, p| *p != prefix);
                self.unexport(prefix);
            }
            ControlEvent::DelayNotify {
                service,
                connect,
                uid,
            } => {
                let connect = connect.then(|| uid.unwrap_or(UNKNOWN_USER));
                self.start_query(now, service, Asker::Sald { connect })
            }
            // A prefix's load is the flows its listeners serve: those peers
            // opened to it, not this host's own connects out.
            ControlEvent::FlowOpened {
                accepted: false, ..
            } => {}
            ControlEvent::FlowOpened { flow, service, .. } => {
                let prefix = self
                    .local
                    .keys()
                    .filter(|p| p.contains(&service))
                    .max_by_key(|p| p.len())
                    .copied();
                if let Some(prefix) = prefix {
                    if let Some(load) = self.local.get_mut(&prefix) {
                        *load = load.saturating_add(1);
                    }
                    self.flows.insert(flow, prefix);
                }
            }
            ControlEvent::FlowClosed { flow } => {
                if let Some(prefix) = self.flows.remove(&flow) {
                    if let Some(load) = self.local.get_mut(&prefix) {
                        *load = load.saturating_sub(1);
                    }
                }
            }
            // Events appended to the protocol later are not ours to handle.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    /// A datagram from a peer controller. Anything malformed, oversized,
    /// of another version or without a valid tag is dropped and counted.
    pub fn handle_message(&mut self, now: Instant, src: SocketAddr, bytes: &[u8]) {
        self.touch(now);
        self.stats.rx += 1;
        let decoded = wire::decode(bytes, &self.config.keys).map(|(message, auth)| {
            (
                message,
                auth.map(|a| (a.key.id(), a.key.name().to_string(), a.stamp)),
            )
        });
        let (message, key) = match decoded {
            Ok(decoded) => decoded,
            Err(error) => {
                match error {
                    WireError::Oversized(_) | WireError::TooLarge(_) => {
                        self.stats.dropped_oversized += 1
                    }
                    WireError::Version(_) => self.stats.dropped_version += 1,
                    WireError::Unauthenticated => self.stats.dropped_unauthenticated += 1,
                    WireError::BadMagic | WireError::Malformed(_) => {
                        self.stats.dropped_malformed += 1
                    }
                }
                tracing::debug!(%src, %error, "dropped a datagram");
                return;
            }
        };
        if message.from().epoch == self.epoch {
            // Our own broadcast solicit, looped back by the kernel.
            return;
        }
        let key = match key {
            Some((id, name, stamp)) => {
                let unix_now = self.unix_ms(now);
                match self.replay.check(id, message.from().epoch, stamp, unix_now) {
                    Ok(()) => Some(name),
                    Err(error) => {
                        match error {
                            ReplayError::Stale => self.stats.dropped_stale += 1,
                            ReplayError::Replayed | ReplayError::Full => {
                                self.stats.dropped_replayed += 1
                            }
                        }
                        if let Some(held) = self.log_limiter.allow("replay", now) {
                            tracing::warn!(
                                %src,
                                %error,
                                skew_ms = i128::from(stamp.timestamp_ms) - i128::from(unix_now),
                                similar_not_logged = held,
                                "dropped a tagged datagram"
                            );
                        }
                        return;
                    }
                }
            }
            None => None,
        };
        match message {
            Message::Announce {
                from,
                lease_ms,
                entries,
                full,
            } => {
                let peer = Peer {
                    src,
                    key: key.as_deref(),
                };
                self.on_announce(now, peer, from, lease_ms, entries, full)
            }
            Message::Withdraw { from, prefixes } => {
                let peer = Peer {
                    src,
                    key: key.as_deref(),
                };
                self.on_withdraw(now, peer, from, prefixes)
            }
            Message::ResyncRequest { from } => {
                match self.upstreams.iter().position(|u| same_addr(u.addr, src)) {
                    Some(index) => {
                        tracing::info!(%src, upstream = %from.name, "upstream asked for a resync");
                        self.resync(now, index, key.is_some());
                    }
                    None => self.stats.dropped_unexpected += 1,
                }
            }
            Message::Solicit { from, nonce } => {
                if !self.config.router {
                    self.stats.dropped_unexpected += 1;
                } else if key.is_some() || self.reply_allowed(now, src) {
                    tracing::debug!(%src, host = %from.name, "answering a solicit");
                    // Unauthenticated: the source may be a victim's address.
                    let budget = key
                        .is_none()
                        .then(|| bytes.len().saturating_mul(ANSWER_FACTOR));
                    self.send_advert(now, src, nonce, budget);
                }
            }
            Message::Advert { from, nonce } => self.on_advert(now, src, key.is_some(), from, nonce),
            Message::Query { from, id, service } => {
                self.stats.queries += 1;
                tracing::debug!(%src, asker = %from.name, %service, "query");
                // Unauthenticated: the source may be a victim's address.
                // Answer at most a few times what came in, at a bounded rate
                // (checked when an answer is sent, `send_answer`).
                let waiter = Waiter {
                    addr: src,
                    id,
                    query_len: key.is_none().then_some(bytes.len()),
                    prepaid: false,
                };
                self.answer_query(now, waiter, service);
            }
            Message::Answer {
                from,
                id,
                service,
                route,
            } => self.on_answer(now, src, from, id, service, route),
        }
    }

    /// Runs whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.touch(now);
        if now >= self.next_refresh {
            self.next_refresh = now + self.config.refresh;
            if !self.exported.is_empty() {
                self.send_full_refresh(now, None);
            }
        }
        self.solicit(now);
        self.sweep_downstreams(now);
        if self.next_expiry.is_some_and(|t| t <= now) {
            self.expire(now);
        }
        self.expire_cache(now);
        self.retry_queries(now);
        if self.mode == Mode::Starting && now >= self.started + self.discovery_wait() {
            self.mode = Mode::HostOnly;
            tracing::warn!(
                "no service router answered: host-only mode (local services only, no default route)"
            );
        }
    }

    // ----- outputs --------------------------------------------------------

    /// When [`Controller::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_refresh;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        consider(self.next_expiry);
        consider(self.next_discover);
        consider(self.upstreams.iter().map(|u| u.next_solicit).min());
        consider(self.cache.next());
        consider(self.adopted.next());
        consider(self.queries.values().map(|q| q.deadline).min());
        if self.mode == Mode::Starting {
            consider(Some(self.started + self.discovery_wait()));
        }
        next
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.flush_exports();
        self.transmits.pop_front()
    }

    /// The next change for the local sald.
    pub fn poll_action(&mut self) -> Option<SaldAction> {
        self.actions.pop_front()
    }

    // ----- host role ------------------------------------------------------

    fn discovery_wait(&self) -> Duration {
        (self.config.refresh * 2).max(Duration::from_secs(1))
    }

    /// The prefix `prefix` is announced as: its covering aggregate, if any.
    fn export_key(&self, prefix: ServicePrefix) -> ServicePrefix {
        self.config
            .aggregates
            .iter()
            .filter(|a| a.covers(&prefix))
            .min_by_key(|a| a.len())
            .copied()
            .unwrap_or(prefix)
    }

    fn export(&mut self, prefix: ServicePrefix) {
        let key = self.export_key(prefix);
        let count = self.exported.entry(key).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.pending_withdraw.remove(&key);
            self.pending_announce.insert(key);
        }
    }

    fn unexport(&mut self, prefix: ServicePrefix) {
        let key = self.export_key(prefix);
        let Some(count) = self.exported.get_mut(&key) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.exported.remove(&key);
            self.pending_announce.remove(&key);
            self.pending_withdraw.insert(key);
        }
    }

    fn announcement(&self, prefix: ServicePrefix) -> Announcement {
        Announcement {
            prefix,
            weight: self.config.weight,
            priority: self.config.priority,
            load: self.local.get(&prefix).copied().unwrap_or(0),
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.config.lease.as_millis()).unwrap_or(u64::MAX)
    }

    /// Sends the incremental announcements and withdrawals queued so far.
    fn flush_exports(&mut self) {
        if self.pending_announce.is_empty() && self.pending_withdraw.is_empty() {
            return;
        }
        let announce: Vec<Announcement> = std::mem::take(&mut self.pending_announce)
            .into_iter()
            .map(|p| self.announcement(p))
            .collect();
        let withdraw: Vec<ServicePrefix> = std::mem::take(&mut self.pending_withdraw)
            .into_iter()
            .collect();
        let node = self.node();
        let lease_ms = self.lease_ms();
        let mut sealer = self.sealer();
        let mut datagrams = Vec::new();
        if !announce.is_empty() {
            datagrams.extend(announce_batches(
                &node,
                lease_ms,
                &announce,
                false,
                &mut sealer,
            ));
        }
        if !withdraw.is_empty() {
            datagrams.extend(withdraw_batches(&node, &withdraw, &mut sealer));
        }
        for upstream in self.upstreams.iter().map(|u| u.addr).collect::<Vec<_>>() {
            for bytes in &datagrams {
                self.push_transmit(upstream, bytes.clone());
            }
        }
    }

    /// Announces everything we export, to one upstream or to all.
    fn send_full_refresh(&mut self, _now: Instant, to: Option<SocketAddr>) {
        self.flush_exports();
        let entries: Vec<Announcement> = self
            .exported
            .keys()
            .map(|&p| self.announcement(p))
            .collect();
        let node = self.node();
        let lease_ms = self.lease_ms();
        let datagrams = announce_batches(&node, lease_ms, &entries, true, &mut self.sealer());
        let targets: Vec<SocketAddr> = match to {
            Some(addr) => vec![addr],
            None => self.upstreams.iter().map(|u| u.addr).collect(),
        };
        for addr in targets {
            for bytes in &datagrams {
                self.push_transmit(addr, bytes.clone());
            }
        }
    }

    /// Solicits configured upstreams (keep-alive and epoch check, every
    /// lease) and, without any, the local links (until a router answers).
    fn solicit(&mut self, now: Instant) {
        let node = self.node();
        let mut due = Vec::new();
        for index in 0..self.upstreams.len() {
            if self.upstreams[index].next_solicit <= now {
                let nonce = self.next_nonce();
                let upstream = &mut self.upstreams[index];
                let interval = if upstream.router.is_some() {
                    self.config.lease
                } else {
                    self.config.refresh
                };
                upstream.next_solicit = now + interval;
                upstream.nonce = Some(nonce);
                due.push((upstream.addr, nonce));
            }
        }
        for (addr, nonce) in due {
            let from = node.clone();
            self.send_padded(addr, &Message::Solicit { from, nonce }, SOLICIT_PAD_LEN);
        }
        if let (Some(at), Some(port)) = (self.next_discover, self.config.discover_port) {
            if at <= now {
                if self.upstreams.is_empty() {
                    self.next_discover = Some(now + self.config.refresh);
                    let nonce = self.next_nonce();
                    self.discover_nonce = Some(nonce);
                    for broadcast in self.broadcast_addrs(port) {
                        let from = node.clone();
                        let solicit = Message::Solicit { from, nonce };
                        self.send_padded(broadcast, &solicit, SOLICIT_PAD_LEN);
                    }
                } else {
                    self.next_discover = None;
                }
            }
        }
    }

    fn broadcast_addrs(&self, port: u16) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .interfaces
            .iter()
            .filter(|i| i.prefix_len < 31)
            .map(|i| {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(i.prefix_len))
                    .unwrap_or(0);
                let ip = Ipv4Addr::from(u32::from(i.locator.ip()) | !mask);
                SocketAddr::new(ip.into(), port)
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// A router's advert: it is (still) there, at these locators, in this
    /// run. Without a key anyone may forge its source address, so an
    /// untagged advert is taken only when it carries the nonce of our
    /// latest solicit to that address (or of our latest broadcast, while
    /// discovering), which an off-path forger does not see; others are
    /// counted as `refused_locator`. Its locators are then those it claims
    /// at the address it came from ([`advert_locators`]).
    fn on_advert(
        &mut self,
        now: Instant,
        src: SocketAddr,
        authenticated: bool,
        mut from: Node,
        nonce: u64,
    ) {
        let known = self.upstreams.iter().position(|u| same_addr(u.addr, src));
        let solicited = match known {
            Some(index) => self.upstreams[index].nonce == Some(nonce),
            None => self.next_discover.is_some() && self.discover_nonce == Some(nonce),
        };
        if known.is_none() && self.next_discover.is_none() {
            self.stats.dropped_unexpected += 1;
            return;
        }
        if !authenticated && !solicited {
            self.stats.refused_locator += 1;
            if let Some(held) = self.log_limiter.allow("advert", now) {
                tracing::warn!(
                    %src,
                    router = %from.name,
                    similar_not_logged = held,
                    "ignored an unauthenticated advert that answers none of our solicits"
                );
            }
            return;
        }
        let index = match known {
            Some(index) => index,
            None => {
                tracing::info!(%src, router = %from.name, "discovered a service router");
                self.upstreams.push(Upstream {
                    addr: src,
                    router: None,
                    next_solicit: now + self.config.lease,
                    nonce: None,
                    resyncs: (now, 0),
                });
                self.next_discover = None;
                self.discover_nonce = None;
                self.upstreams.len() - 1
            }
        };
        if !authenticated {
            from.locators = advert_locators(src, &from);
        }
        let previous = self.upstreams[index].router.replace(from.clone());
        match previous {
            None => {
                tracing::info!(%src, router = %from.name, "service router answered");
                // A (re)connected upstream gets everything at once.
                self.send_full_refresh(now, Some(src));
            }
            Some(old) if old.epoch != from.epoch => {
                tracing::info!(%src, router = %from.name, "service router restarted; resyncing");
                self.resync(now, index, authenticated);
            }
            Some(_) => {}
        }
        if self.mode != Mode::Connected {
            if self.mode == Mode::HostOnly {
                tracing::info!("service router found: leaving host-only mode");
            }
            self.mode = Mode::Connected;
        }
        self.update_default_route();
    }

    /// Sends upstream `index` everything we export, because it asked or
    /// restarted. Untagged, that may be a forger's doing: at most
    /// [`RESYNC_BURST`] a refresh interval ([`Upstream::resyncs`]).
    fn resync(&mut self, now: Instant, index: usize, authenticated: bool) {
        let upstream = &mut self.upstreams[index];
        let (since, count) = &mut upstream.resyncs;
        if now >= *since + self.config.refresh {
            (*since, *count) = (now, 0);
        }
        if !authenticated && *count >= RESYNC_BURST {
            tracing::debug!(addr = %upstream.addr, "resync left to the next refresh");
            return;
        }
        *count += 1;
        let addr = upstream.addr;
        self.send_full_refresh(now, Some(addr));
    }

    /// A fresh solicit nonce: SipHash of a counter under the secret
    /// ([`Controller::set_secret`]), unpredictable without it.
    fn next_nonce(&mut self) -> u64 {
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.secret.0, self.secret.1);
        std::hash::Hasher::write_u64(&mut hasher, self.nonce_counter);
        // Never 0: that is what an advert without a nonce carries.
        std::hash::Hasher::finish(&hasher) | 1
    }

    /// Our locator kind (native IPv4 or UDP encapsulation) decides which of
    /// a router's locators we can reach; an on-link one is preferred.
    fn pick_router_locator(&self, router: &Node) -> Option<Locator> {
        let udp = matches!(
            self.interfaces.first().map(|i| i.locator),
            Some(Locator::Udp(_))
        );
        let usable: Vec<Locator> = router
            .locators
            .iter()
            .copied()
            .filter(|l| matches!(l, Locator::Udp(_)) == udp)
            .collect();
        usable
            .iter()
            .copied()
            .find(|l| self.interfaces.iter().any(|i| on_link(i, l.ip())))
            .or_else(|| usable.first().copied())
    }

    fn update_default_route(&mut self) {
        if self.config.default_route != DefaultRoute::Forward {
            return;
        }
        let mut wanted = HashMap::new();
        for upstream in &self.upstreams {
            if let Some(router) = &upstream.router {
                if let Some(locator) = self.pick_router_locator(router) {
                    wanted.insert(TargetKey::Forward { locator }, router.name.clone());
                }
            }
        }
        let stale: Vec<TargetKey> = self
            .default_targets
            .iter()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            self.default_targets.remove(&key);
            self.remove_rule(ServicePrefix::DEFAULT, key);
        }
        for (key, by) in wanted {
            let TargetKey::Forward { locator } = key else {
                continue;
            };
            if self.default_targets.insert(key) {
                tracing::info!(%locator, router = %by, "default route toward the service router");
                self.add_rule(
                    ServicePrefix::DEFAULT,
                    Target::Forward { locator, weight: 1 },
                    0,
                    RuleOrigin::DefaultRoute { by },
                    None,
                );
            }
        }
    }

    fn install_default_delay(&mut self) {
        self.default_targets.insert(TargetKey::Delay);
        self.add_rule(
            ServicePrefix::DEFAULT,
            Target::Delay,
            0,
            RuleOrigin::DefaultRoute {
                by: self.config.name.clone(),
            },
            None,
        );
    }

    // ----- router role ----------------------------------------------------

    fn on_announce(
        &mut self,
        now: Instant,
        peer: Peer<'_>,
        from: Node,
        lease_ms: u64,
        entries: Vec<Announcement>,
        full: bool,
    ) {
        let src = peer.src;
        let Some(sender) = ipv4_of(src) else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        if !self.config.router {
            self.stats.dropped_unexpected += 1;
            return;
        }
        self.stats.announcements += 1;
        let lease = Duration::from_millis(lease_ms).clamp(MIN_LEASE, self.config.max_lease);
        let announcer = Announcer {
            by: format!("{} ({})", from.name, src.ip()).into(),
            sender,
            expires: now + lease,
            lease,
        };
        let claimed = Claimed::new(&from, sender);
        let mut touched = BTreeSet::new();
        for mut entry in entries {
            let Some(grant) = self.grant(now, peer, &from, &entry.prefix) else {
                continue;
            };
            entry.priority = entry.priority.min(grant.max_priority);
            for locator in self.speakable(now, peer, &from, &entry.prefix, grant, &claimed) {
                if self.upsert(now, &entry, locator, &announcer) {
                    touched.insert(entry.prefix);
                }
            }
        }
        if !touched.is_empty() {
            let known = self.downstreams.get(&src).map(|d| d.latest);
            // No resync is asked of senders the table cannot hold.
            let room = known.is_some() || self.downstreams.len() < MAX_DOWNSTREAMS;
            if known != Some(from.epoch) && !full && room {
                // New to us (we restarted, or it did): get everything now
                // rather than at its next refresh. Only once something of
                // it was accepted: an announcement of nothing (or of nothing
                // the policy allows) gets no reply to a maybe forged source.
                self.send(src, &Message::ResyncRequest { from: self.node() });
            }
            self.note_downstream(now, src, from.epoch);
        }
        for prefix in touched {
            self.reconcile(now, prefix);
        }
        let expires = announcer.expires;
        self.next_expiry = Some(self.next_expiry.map_or(expires, |t| t.min(expires)));
    }

    /// Records that `src`, in run `epoch`, holds entries here. Only
    /// senders that hold entries are recorded: announcements of nothing
    /// (or of nothing the policy accepts) cannot fill the table.
    fn note_downstream(&mut self, now: Instant, src: SocketAddr, epoch: u64) {
        if let Some(known) = self.downstreams.get_mut(&src) {
            known.latest = epoch;
            known.seen = now;
        } else if self.downstreams.len() < MAX_DOWNSTREAMS {
            let known = Downstream {
                latest: epoch,
                seen: now,
            };
            self.downstreams.insert(src, known);
        }
    }

    /// Forgets downstreams that have not announced for a maximum lease:
    /// their entries have all expired, and the table has room again for
    /// senders that come later.
    fn sweep_downstreams(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + self.config.refresh;
        let max_lease = self.config.max_lease;
        self.downstreams.retain(|_, d| now < d.seen + max_lease);
    }

    /// Whether the policy lets `peer` speak for `prefix`, and with what
    /// rights; refusals are counted and logged (at a bounded rate).
    fn grant(
        &mut self,
        now: Instant,
        peer: Peer<'_>,
        from: &Node,
        prefix: &ServicePrefix,
    ) -> Option<Grant> {
        let addr = ipv4_of(peer.src)?;
        let sender = Sender {
            addr,
            key: peer.key,
        };
        match self.config.policy.check(sender, prefix) {
            Ok(grant) => Some(grant),
            Err(refusal) => {
                self.stats.refused_prefix += 1;
                if let Some(held) = self.log_limiter.allow("policy", now) {
                    tracing::warn!(
                        src = %peer.src,
                        host = %from.name,
                        %prefix,
                        reason = %refusal,
                        similar_not_logged = held,
                        "refused an announced prefix"
                    );
                }
                None
            }
        }
    }

    /// The locators `from` may be speaking for with `grant`: its own source
    /// address always, the others it claims only when a key vouches for it
    /// and the policy says so (refused ones are counted and logged).
    fn speakable<'c>(
        &mut self,
        now: Instant,
        peer: Peer<'_>,
        from: &Node,
        prefix: &ServicePrefix,
        grant: Grant,
        claimed: &'c Claimed,
    ) -> impl Iterator<Item = Locator> + 'c {
        let foreign: &[Locator] = if grant.foreign_locators {
            &claimed.foreign
        } else {
            if !claimed.foreign.is_empty() {
                self.stats.refused_locator += claimed.foreign.len() as u64;
                if let Some(held) = self.log_limiter.allow("locator", now) {
                    tracing::warn!(
                        src = %peer.src,
                        host = %from.name,
                        %prefix,
                        refused = claimed.foreign.len(),
                        similar_not_logged = held,
                        "refused announced locators that are not the sender's own address"
                    );
                }
            }
            &[]
        };
        claimed.own.iter().chain(foreign).copied()
    }

    /// Inserts or refreshes one entry; false when the table or the
    /// sender's share of it is full.
    fn upsert(
        &mut self,
        now: Instant,
        entry: &Announcement,
        locator: Locator,
        announcer: &Announcer,
    ) -> bool {
        let prefix = entry.prefix;
        let holder = self
            .rib
            .get(&prefix)
            .and_then(|m| m.get(&locator))
            .map(|l| l.sender);
        let sender = announcer.sender;
        if holder != Some(sender) {
            let held = self.per_sender.get(&sender).copied().unwrap_or(0);
            if held >= self.config.policy.max_prefixes_per_sender {
                self.stats.refused_over_limit += 1;
                if let Some(not_logged) = self.log_limiter.allow("limit", now) {
                    tracing::warn!(
                        %sender,
                        limit = self.config.policy.max_prefixes_per_sender,
                        similar_not_logged = not_logged,
                        "refused an announced prefix over the sender's limit"
                    );
                }
                return false;
            }
        }
        if holder.is_none() && self.rib_entries >= self.config.max_entries {
            self.stats.dropped_unexpected += 1;
            return false;
        }
        if holder != Some(sender) {
            *self.per_sender.entry(sender).or_insert(0) += 1;
            if let Some(previous) = holder {
                self.release_sender(previous);
            }
        }
        let by = &announcer.by;
        let (expires, lease) = (announcer.expires, announcer.lease);
        let new_prefix = !self.rib.contains_key(&prefix);
        let targets = self.rib.entry(prefix).or_default();
        match targets.get_mut(&locator) {
            Some(learned) => {
                learned.announced_weight = entry.weight;
                learned.priority = entry.priority;
                learned.load = entry.load;
                learned.expires = learned.expires.max(expires);
                learned.lease = lease;
                learned.sender = sender;
                if learned.by != *by {
                    learned.by = by.clone();
                    learned.installed = None;
                }
            }
            None => {
                targets.insert(
                    locator,
                    Learned {
                        by: by.clone(),
                        sender,
                        announced_weight: entry.weight,
                        priority: entry.priority,
                        load: entry.load,
                        expires,
                        lease,
                        installed: None,
                        reported_expiry: expires,
                    },
                );
                self.rib_entries += 1;
                tracing::debug!(%prefix, %locator, by = &**by, "learned");
            }
        }
        if new_prefix {
            self.prefix_lens[usize::from(prefix.len())] += 1;
            if !self.upstreams.is_empty() {
                self.export(prefix);
            }
        }
        true
    }

    /// One entry fewer for `sender`.
    fn release_sender(&mut self, sender: Ipv4Addr) {
        if let Some(count) = self.per_sender.get_mut(&sender) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_sender.remove(&sender);
            }
        }
    }

    /// Brings the sald rules of `prefix` in line with the RIB: weights by
    /// policy, origin expiries refreshed every half lease.
    fn reconcile(&mut self, now: Instant, prefix: ServicePrefix) {
        let Some(targets) = self.rib.get(&prefix) else {
            return;
        };
        let weights = effective_weights(self.config.weight_policy, targets);
        let mut adds = Vec::new();
        if let Some(targets) = self.rib.get_mut(&prefix) {
            for ((locator, learned), weight) in targets.iter_mut().zip(weights) {
                let wanted = (weight, learned.priority);
                let lease_left = learned.expires.saturating_duration_since(now);
                // The expiry shown by `servalctl services` is re-sent when
                // it has moved by half a lease, not on every refresh.
                let moved = learned
                    .expires
                    .saturating_duration_since(learned.reported_expiry);
                let stale_expiry = moved * 2 >= learned.lease;
                if learned.installed != Some(wanted) || stale_expiry {
                    learned.installed = Some(wanted);
                    learned.reported_expiry = learned.expires;
                    adds.push((
                        *locator,
                        weight,
                        learned.priority,
                        learned.by.clone(),
                        lease_left,
                    ));
                }
            }
        }
        for (locator, weight, priority, by, lease_left) in adds {
            self.add_rule(
                prefix,
                Target::Forward { locator, weight },
                priority,
                RuleOrigin::Announced {
                    by: by.to_string(),
                    expires_unix_ms: None,
                },
                Some(lease_left),
            );
        }
    }

    /// A withdrawal removes only what its sender could have announced:
    /// prefixes the policy lets it speak for, at locators it may name.
    /// Without a key that is its source address, from any port and in any
    /// run (a restarted servd withdraws what its previous run announced),
    /// so anyone who can send from an address can withdraw its routes:
    /// only a key prevents that.
    fn on_withdraw(
        &mut self,
        now: Instant,
        peer: Peer<'_>,
        from: Node,
        prefixes: Vec<ServicePrefix>,
    ) {
        if !self.config.router {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let Some(sender) = ipv4_of(peer.src) else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        self.stats.withdrawals += 1;
        let claimed = Claimed::new(&from, sender);
        for prefix in prefixes {
            let Some(grant) = self.grant(now, peer, &from, &prefix) else {
                continue;
            };
            let mut removed = false;
            for locator in self.speakable(now, peer, &from, &prefix, grant, &claimed) {
                removed |= self.forget(prefix, locator);
            }
            if removed {
                tracing::info!(%prefix, host = %from.name, "withdrawn");
                self.reconcile(now, prefix);
            }
        }
    }

    /// Removes one learned entry and its rule; true if there was one.
    fn forget(&mut self, prefix: ServicePrefix, locator: Locator) -> bool {
        let Some(targets) = self.rib.get_mut(&prefix) else {
            return false;
        };
        let Some(learned) = targets.remove(&locator) else {
            return false;
        };
        self.rib_entries -= 1;
        let emptied = targets.is_empty();
        self.release_sender(learned.sender);
        if emptied {
            self.rib.remove(&prefix);
            self.prefix_lens[usize::from(prefix.len())] -= 1;
            if !self.upstreams.is_empty() {
                self.unexport(prefix);
            }
        }
        self.remove_rule(prefix, TargetKey::Forward { locator });
        true
    }

    /// Drops every entry whose lease ran out.
    fn expire(&mut self, now: Instant) {
        let mut gone = Vec::new();
        let mut next: Option<Instant> = None;
        for (prefix, targets) in &self.rib {
            for (locator, learned) in targets.iter() {
                if learned.expires <= now {
                    gone.push((*prefix, *locator, learned.by.clone()));
                } else {
                    next = Some(next.map_or(learned.expires, |t| t.min(learned.expires)));
                }
            }
        }
        self.next_expiry = next;
        let mut touched = BTreeSet::new();
        for (prefix, locator, by) in gone {
            tracing::info!(%prefix, %locator, by = &*by, "lease expired");
            self.stats.expired += 1;
            self.forget(prefix, locator);
            touched.insert(prefix);
        }
        for prefix in touched {
            self.reconcile(now, prefix);
        }
    }

    // ----- resolution -----------------------------------------------------

    /// What we know about `service`: a local binding or the longest learned
    /// prefix covering it.
    fn lookup(&self, service: &ServiceId) -> Option<Route> {
        let ttl_ms = u64::try_from(self.config.cache_lifetime.as_millis()).unwrap_or(u64::MAX);
        let local = self
            .local
            .keys()
            .filter(|p| p.contains(service))
            .max_by_key(|p| p.len());
        let learned = (0..=256u16)
            .rev()
            .filter(|&len| self.prefix_lens[usize::from(len)] > 0)
            .find_map(|len| {
                let prefix = ServicePrefix::new(*service, len);
                self.rib.get(&prefix).map(|targets| (prefix, targets))
            });
        match (local, learned) {
            (Some(local), learned) if learned.is_none_or(|(p, _)| p.len() <= local.len()) => {
                let node = self.node();
                let targets = node
                    .locators
                    .iter()
                    .map(|&locator| RouteTarget {
                        locator,
                        weight: self.config.weight,
                        priority: self.config.priority,
                    })
                    .collect::<Vec<_>>();
                (!targets.is_empty()).then_some(Route {
                    prefix: *local,
                    targets,
                    ttl_ms,
                    partial: false,
                })
            }
            (_, Some((prefix, targets))) => {
                let weights = effective_weights(self.config.weight_policy, targets);
                Some(Route {
                    prefix,
                    targets: targets
                        .iter()
                        .zip(weights)
                        .take(MAX_ANSWER_TARGETS)
                        .map(|((&locator, learned), weight)| RouteTarget {
                            locator,
                            weight,
                            priority: learned.priority,
                        })
                        .collect(),
                    ttl_ms,
                    partial: false,
                })
            }
            _ => None,
        }
    }

    /// Answers `asker`'s query from what we know, or relays it upstream
    /// and answers when the answer comes back. An unauthenticated query is
    /// relayed only within its source's reply rate (charged now, not again
    /// for the answer): its source may be forged, and each relayed query
    /// is up to `QUERY_TRIES` datagrams to every upstream and a pending
    /// entry here.
    fn answer_query(&mut self, now: Instant, asker: Waiter, service: ServiceId) {
        if let Some(route) = self.lookup(&service) {
            self.send_answer(now, asker, service, Some(route));
        } else if !self.upstreams.is_empty() {
            // Not ours to know: ask further up, answer when it comes back.
            if asker.query_len.is_some() && !self.reply_allowed(now, asker.addr) {
                return;
            }
            let asker = Waiter {
                prepaid: true,
                ..asker
            };
            self.start_query(now, service, Asker::Downstream(asker));
        } else {
            self.send_answer(now, asker, service, None);
        }
    }

    /// Whether an unauthenticated reply (answer, advert) may be sent to
    /// `src` now (per-source rate, [`SourceLimiter`]); refusals are counted
    /// and logged at a bounded rate. Sources that hold entries here (our
    /// downstream hosts and site routers, the latter relaying their own
    /// hosts' queries) get a much higher rate than others: forging one of
    /// their addresses buys a forger that rate toward that one address.
    fn reply_allowed(&mut self, now: Instant, src: SocketAddr) -> bool {
        let downstream = ipv4_of(src).is_some_and(|ip| self.per_sender.contains_key(&ip));
        let limiter = if downstream {
            &mut self.downstream_limiter
        } else {
            &mut self.reply_limiter
        };
        if limiter.allow(src.ip(), now) {
            return true;
        }
        self.stats.refused_answer_rate += 1;
        if let Some(held) = self.log_limiter.allow("reply rate", now) {
            tracing::warn!(
                %src,
                similar_not_logged = held,
                "left an unauthenticated query or solicit unanswered: its source is over its rate"
            );
        }
        false
    }

    /// Answers `asker`. The answer's sender carries no locators (the asker
    /// only uses the name). With a budget (an unauthenticated query, whose
    /// source may be forged), targets are left out until the datagram fits
    /// in it: the highest-priority ones first, turned by one for each such
    /// answer so that askers share the instances; the route is then marked
    /// `partial` (the asker keeps it only briefly). A positive answer with
    /// no target that fits is not sent at all (the asker asks again or
    /// gives up, rather than cache a wrong "no such service"). Only answers
    /// actually sent count against the source's rate.
    fn send_answer(
        &mut self,
        now: Instant,
        asker: Waiter,
        service: ServiceId,
        route: Option<Route>,
    ) {
        let answer = |route: Option<Route>, node: Node| Message::Answer {
            from: node,
            id: asker.id,
            service,
            route,
        };
        let node = Node {
            locators: Vec::new(),
            ..self.node()
        };
        let Some(budget) = asker.budget() else {
            self.send(asker.addr, &answer(route, node));
            return;
        };
        let size = |route: &Option<Route>| {
            wire::encode(&answer(route.clone(), node.clone()), None).map_or(usize::MAX, |b| b.len())
        };
        let mut route = route;
        if size(&route) > budget {
            let fitted = route.as_mut().and_then(|route| {
                route.partial = true;
                let n = route.targets.len();
                route.targets.sort_by_key(|t| std::cmp::Reverse(t.priority));
                let top = route
                    .targets
                    .iter()
                    .take_while(|t| t.priority == route.targets[0].priority)
                    .count();
                self.answer_turn = self.answer_turn.wrapping_add(1);
                route.targets[..top].rotate_left(self.answer_turn % top.max(1));
                // The most targets that fit (sizes grow with the count).
                let all = std::mem::take(&mut route.targets);
                let (mut fits, mut over) = (0, n);
                while fits + 1 < over {
                    let mid = (fits + over) / 2;
                    route.targets = all[..mid].to_vec();
                    if size(&Some(route.clone())) <= budget {
                        fits = mid;
                    } else {
                        over = mid;
                    }
                }
                route.targets = all[..fits].to_vec();
                (fits > 0).then_some(())
            });
            self.stats.refused_answer_size += 1;
            let withheld = fitted.is_none();
            if let Some(held) = self.log_limiter.allow("answer size", now) {
                tracing::warn!(
                    to = %asker.addr,
                    %service,
                    budget,
                    withheld,
                    similar_not_logged = held,
                    "cut an unauthenticated answer to a few times the query's size"
                );
            }
            if withheld {
                return;
            }
        }
        if asker.prepaid || self.reply_allowed(now, asker.addr) {
            self.send(asker.addr, &answer(route, node));
        }
    }

    /// Answers a solicit from `to` with our advert. With a budget (an
    /// unauthenticated solicit, whose source may be forged), locators are
    /// left out from the end until the advert fits in it, as answers are
    /// cut ([`Controller::send_answer`]); if even none fit, nothing is sent.
    /// A host solicits with [`SOLICIT_PAD_LEN`] bytes and gets them all.
    fn send_advert(&mut self, now: Instant, to: SocketAddr, nonce: u64, budget: Option<usize>) {
        let mut from = self.node();
        if let Some(budget) = budget {
            let size = |from: &Node| {
                let advert = Message::Advert {
                    from: from.clone(),
                    nonce,
                };
                wire::encode(&advert, None).map_or(usize::MAX, |b| b.len())
            };
            let mut fits = size(&from) <= budget;
            if !fits {
                while !fits && from.locators.pop().is_some() {
                    fits = size(&from) <= budget;
                }
                self.stats.refused_answer_size += 1;
                if let Some(held) = self.log_limiter.allow("advert size", now) {
                    tracing::warn!(
                        %to,
                        budget,
                        withheld = !fits,
                        similar_not_logged = held,
                        "cut an unauthenticated advert to a few times the solicit's size"
                    );
                }
                if !fits {
                    return;
                }
            }
        }
        self.send(to, &Message::Advert { from, nonce });
    }

    /// Asks the upstreams about `service`, for our own sald (`waiter` None:
    /// a small query first, [`FIRST_QUERY_PAD_LEN`], within
    /// [`Config::query_rate`]) or on behalf of a downstream asker (padded
    /// to its own query's size). A query already pending for the service
    /// is joined rather than sent again.
    fn start_query(&mut self, now: Instant, service: ServiceId, asker: Asker) {
        if let Some(pending) = self.queries.get_mut(&service) {
            match asker {
                Asker::Downstream(waiter) => {
                    let known = pending
                        .waiters
                        .iter()
                        .any(|w| (w.addr, w.id) == (waiter.addr, waiter.id));
                    if !known && pending.waiters.len() < MAX_WAITERS {
                        pending.pad = pending.pad.max(waiter.query_len.unwrap_or(0));
                        pending.waiters.push(waiter);
                    }
                }
                Asker::Sald { connect } => {
                    pending.local = true;
                    pending.connect = pending.connect.or(connect);
                    pending.pad = pending.pad.max(FIRST_QUERY_PAD_LEN);
                }
            }
            return;
        }
        if self.upstreams.is_empty() {
            if let Asker::Sald { .. } = asker {
                // Nobody to ask: what we know (a router's own table) or no.
                let route = self.lookup(&service);
                self.install_answer(now, &self.config.name.clone(), service, route);
            }
            return;
        }
        let pad = match asker {
            Asker::Downstream(waiter) => waiter.query_len.unwrap_or(0),
            Asker::Sald { .. } => FIRST_QUERY_PAD_LEN,
        };
        self.open_query(now, service, asker, pad);
    }

    /// Sends a new query about `service` (none is pending for it), padded
    /// to `pad` bytes when untagged. One for our own sald takes a token
    /// first, of [`Controller::connect_query_budgets`] for a local connect
    /// and of [`Controller::query_budget`] for a packet that arrived;
    /// without one it is not sent (counted as `refused_query_rate`).
    /// Returns whether it was sent.
    fn open_query(&mut self, now: Instant, service: ServiceId, asker: Asker, pad: usize) -> bool {
        let limit = match asker {
            Asker::Sald { .. } => MAX_PENDING_QUERIES,
            Asker::Downstream(_) => MAX_PENDING_QUERIES - LOCAL_QUERY_RESERVE,
        };
        if self.queries.len() >= limit {
            self.stats.dropped_unexpected += 1;
            return false;
        }
        let within_budget = match asker {
            Asker::Sald { connect: Some(uid) } => self.connect_query_budgets.allow(uid, now),
            Asker::Sald { connect: None } => self.query_budget.allow(now),
            Asker::Downstream(_) => true,
        };
        if !within_budget {
            self.stats.refused_query_rate += 1;
            if let Some(held) = self.log_limiter.allow("query rate", now) {
                tracing::warn!(
                    %service,
                    rate = self.config.query_rate,
                    similar_not_logged = held,
                    "did not query upstream: over the query rate (a SYN flood to unknown services?)"
                );
            }
            return false;
        }
        let id = self.next_query_id;
        self.next_query_id = self.next_query_id.wrapping_add(1);
        self.queries.insert(
            service,
            Pending {
                id,
                deadline: now + self.config.query_timeout,
                tries: 1,
                local: matches!(asker, Asker::Sald { .. }),
                connect: match asker {
                    Asker::Sald { connect } => connect,
                    Asker::Downstream(_) => None,
                },
                waiters: match asker {
                    Asker::Downstream(waiter) => vec![waiter],
                    Asker::Sald { .. } => Vec::new(),
                },
                pad,
                first_pad: pad,
            },
        );
        tracing::debug!(%service, id, pad, "querying upstream");
        self.send_query(id, service, pad);
        true
    }

    /// Sends query `id` to every upstream; without a key, padded to `pad`
    /// bytes ([`Pending::pad`]), which lets the answer take up to
    /// [`ANSWER_FACTOR`] times that. The sender goes without locators (the answer
    /// goes to the datagram's source): a relayed query is then about as
    /// small as the asker's.
    fn send_query(&mut self, id: u64, service: ServiceId, pad: usize) {
        let message = Message::Query {
            from: Node {
                locators: Vec::new(),
                ..self.node()
            },
            id,
            service,
        };
        let mut bytes = match self.sealer().seal(&message) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(%error, "could not encode a query");
                return;
            }
        };
        pad_untagged(&mut bytes, pad);
        for addr in self.upstreams.iter().map(|u| u.addr).collect::<Vec<_>>() {
            self.push_transmit(addr, bytes.clone());
        }
    }

    fn retry_queries(&mut self, now: Instant) {
        let due: Vec<ServiceId> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(s, _)| *s)
            .collect();
        for service in due {
            let Some(pending) = self.queries.get_mut(&service) else {
                continue;
            };
            if pending.tries >= QUERY_TRIES {
                // Unknown is not "no such service": install nothing and let
                // the held packets time out in sald.
                tracing::warn!(%service, "no answer from any upstream");
                self.queries.remove(&service);
                continue;
            }
            pending.tries += 1;
            pending.deadline = now + self.config.query_timeout;
            let (id, pad) = (pending.id, pending.pad);
            self.send_query(id, service, pad);
        }
    }

    /// An answer to one of our pending queries (from an upstream's address
    /// and with the query's ID; others are dropped): passed on to the
    /// downstream askers and, if our sald waits on it, installed. An
    /// untagged partial answer to our own small first query is asked about
    /// once more, padded to [`QUERY_PAD_LEN`], under a new ID (so that a
    /// second upstream's answer to the small query is not taken for it).
    fn on_answer(
        &mut self,
        now: Instant,
        src: SocketAddr,
        from: Node,
        id: u64,
        service: ServiceId,
        route: Option<Route>,
    ) {
        // Only the upstreams we asked may answer.
        let from_upstream = self.upstreams.iter().any(|u| same_addr(u.addr, src));
        if !from_upstream || self.queries.get(&service).is_none_or(|q| q.id != id) {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let Some(pending) = self.queries.remove(&service) else {
            return;
        };
        // An answer may only speak for a prefix covering what was asked,
        // and never for everything (/0).
        let route = route
            .filter(|r| r.prefix.contains(&service) && r.prefix.len() > 0 && !r.targets.is_empty());
        self.stats.answers += 1;
        if route.is_none() {
            self.stats.negative_answers += 1;
        }
        tracing::debug!(%service, by = %from.name, positive = route.is_some(), "answer");
        // Cut to fit a small query (untagged answers only): our own sald's
        // first one is worth one more query, padded in full, and so is a
        // downstream asker's that joined with a larger query than the one
        // the answer came to (it asked for more room than that answer had).
        // What came is installed meanwhile (briefly, as every partial
        // answer), so the held SYN goes on at once.
        let cut = self.config.keys.is_empty() && route.as_ref().is_some_and(|r| r.partial);
        let ask_again = cut && pending.local && pending.first_pad < QUERY_PAD_LEN;
        let (owed_more, answered): (Vec<Waiter>, Vec<Waiter>) = (pending.waiters.iter())
            .partition(|w| cut && w.query_len.unwrap_or(0) > pending.first_pad);
        for waiter in answered {
            self.send_answer(now, waiter, service, route.clone());
        }
        let asked = (ask_again || !owed_more.is_empty())
            && self.ask_again(
                now,
                service,
                ask_again.then_some(pending.connect),
                &owed_more,
            );
        if !asked {
            // Over the query budget (or out of room): what came, cut.
            for &waiter in &owed_more {
                self.send_answer(now, waiter, service, route.clone());
            }
        }
        if pending.local {
            self.install_answer(now, &from.name, service, route);
        }
    }

    /// Asks about `service` once more after a cut answer, under a new ID
    /// (so that another upstream's answer to the small query is not taken
    /// for it): for our own sald (`sald`: whose connect, as
    /// [`Asker::Sald`]), padded to [`QUERY_PAD_LEN`], and for `waiters`,
    /// padded to the largest of their queries. Returns whether it did
    /// (not over the query budget, nor out of pending queries).
    fn ask_again(
        &mut self,
        now: Instant,
        service: ServiceId,
        sald: Option<Option<u32>>,
        waiters: &[Waiter],
    ) -> bool {
        let largest = waiters
            .iter()
            .filter_map(|w| w.query_len)
            .max()
            .unwrap_or(0);
        let mut rest = waiters.iter().copied();
        let (asker, pad) = match sald {
            Some(connect) => (Asker::Sald { connect }, QUERY_PAD_LEN.max(largest)),
            None => match rest.next() {
                Some(waiter) => (Asker::Downstream(waiter), largest),
                None => return false,
            },
        };
        tracing::debug!(%service, pad, "cut answer; asking again with a larger query");
        if !self.open_query(now, service, asker, pad) {
            return false;
        }
        self.stats.requeries += 1;
        if let Some(pending) = self.queries.get_mut(&service) {
            pending.waiters.extend(rest);
        }
        true
    }

    /// Installs an answer as cache rules: FORWARD targets, or a DROP for the
    /// exact ID so that the held connect fails with "no route".
    fn install_answer(&mut self, now: Instant, by: &str, service: ServiceId, route: Option<Route>) {
        let origin = RuleOrigin::Resolved {
            by: by.to_string(),
            expires_unix_ms: None,
        };
        match route {
            Some(route) => {
                let mut ttl = Duration::from_millis(route.ttl_ms).min(self.config.cache_lifetime);
                if route.partial {
                    // Some instances were left out to fit the answer: keep
                    // it no longer than a negative answer, then ask again.
                    ttl = ttl.min(self.config.negative_lifetime);
                }
                for target in route.targets.iter().take(MAX_ANSWER_TARGETS) {
                    let key = TargetKey::Forward {
                        locator: target.locator,
                    };
                    self.cache_answer((route.prefix, key), now + ttl);
                    self.add_rule(
                        route.prefix,
                        Target::Forward {
                            locator: target.locator,
                            weight: target.weight,
                        },
                        target.priority,
                        origin.clone(),
                        Some(ttl),
                    );
                }
            }
            None => {
                let prefix = ServicePrefix::exact(service);
                let ttl = self.config.negative_lifetime;
                self.cache_answer((prefix, TargetKey::Drop), now + ttl);
                self.add_rule(prefix, Target::Drop, NEGATIVE_PRIORITY, origin, Some(ttl));
            }
        }
    }

    /// Remembers when a cached answer's rule target expires, making room
    /// first if the cache is full: the entry due first leaves early. A
    /// flood of connects to unknown services therefore pushes out its own
    /// short-lived negative answers before the positive ones.
    fn cache_answer(&mut self, entry: (ServicePrefix, TargetKey), expires: Instant) {
        if !self.cache.contains(&entry) && self.cache.len() >= self.config.max_cached {
            if let Some(((prefix, key), ())) = self.cache.pop_first() {
                self.stats.cache_evicted += 1;
                if !self.owns(&prefix, &key) {
                    self.remove_rule(prefix, key);
                }
            }
        }
        self.cache.insert(entry, expires, ());
    }

    fn expire_cache(&mut self, now: Instant) {
        while let Some(((prefix, key), ())) = self.cache.pop_due(now) {
            if !self.owns(&prefix, &key) {
                self.remove_rule(prefix, key);
            }
        }
        while let Some(((prefix, key), _)) = self.adopted.pop_due(now) {
            tracing::info!(%prefix, %key, "removing a rule left by a previous run");
            self.remove_rule(prefix, key);
        }
    }

    /// Whether a rule target is currently ours for another reason than the
    /// cache (learned, or the default route).
    fn owns(&self, prefix: &ServicePrefix, key: &TargetKey) -> bool {
        if *prefix == ServicePrefix::DEFAULT && self.default_targets.contains(key) {
            return true;
        }
        match key {
            TargetKey::Forward { locator } => self
                .rib
                .get(prefix)
                .is_some_and(|t| t.contains_key(locator)),
            _ => false,
        }
    }

    // ----- plumbing -------------------------------------------------------

    /// Queues a rule for sald. Whatever asked for it, an operator's static
    /// target of the same prefix is never replaced (a target with the same
    /// key is left alone) nor outranked (the priority is lowered to the
    /// lowest static one there).
    fn add_rule(
        &mut self,
        prefix: ServicePrefix,
        target: Target,
        mut priority: u32,
        origin: RuleOrigin,
        expires_in: Option<Duration>,
    ) {
        if let Some(operator) = self.statics.get(&prefix) {
            if operator.keys.contains(&target.key()) {
                self.stats.static_protected += 1;
                tracing::debug!(%prefix, key = %target.key(), "left the operator's static target alone");
                return;
            }
            if priority > operator.floor {
                self.stats.static_protected += 1;
                priority = operator.floor;
            }
        }
        self.adopted.remove(&(prefix, target.key()));
        self.stats.rules_added += 1;
        self.actions.push_back(SaldAction::Add {
            prefix,
            target,
            priority,
            origin,
            expires_in,
        });
    }

    fn remove_rule(&mut self, prefix: ServicePrefix, key: TargetKey) {
        if self
            .statics
            .get(&prefix)
            .is_some_and(|operator| operator.keys.contains(&key))
        {
            self.stats.static_protected += 1;
            return;
        }
        self.stats.rules_removed += 1;
        self.actions.push_back(SaldAction::Remove { prefix, key });
    }

    fn send(&mut self, to: SocketAddr, message: &Message) {
        match self.sealer().seal(message) {
            Ok(bytes) => self.push_transmit(to, bytes),
            Err(error) => tracing::warn!(%error, "could not encode a message"),
        }
    }

    /// Sends `message`, padded to `len` bytes when untagged
    /// ([`pad_untagged`]).
    fn send_padded(&mut self, to: SocketAddr, message: &Message, len: usize) {
        match self.sealer().seal(message) {
            Ok(mut bytes) => {
                pad_untagged(&mut bytes, len);
                self.push_transmit(to, bytes);
            }
            Err(error) => tracing::warn!(%error, "could not encode a message"),
        }
    }

    fn push_transmit(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        self.stats.tx += 1;
        self.transmits.push_back(Transmit { to, bytes });
    }
}

/// The operator's (static, non-DEMUX) targets of each prefix.
fn operator_rules(rules: &[Rule]) -> HashMap<ServicePrefix, StaticRule> {
    let mut statics: HashMap<ServicePrefix, StaticRule> = HashMap::new();
    for rule in rules {
        for entry in rule.targets() {
            if entry.origin != RuleOrigin::Static || matches!(entry.target, Target::Demux { .. }) {
                continue;
            }
            let known = statics.entry(rule.prefix).or_insert(StaticRule {
                floor: entry.priority,
                keys: Vec::new(),
            });
            known.floor = known.floor.min(entry.priority);
            known.keys.push(entry.target.key());
        }
    }
    statics
}

/// The locators an unauthenticated advert may give its router, as an
/// announcement's are held to its source address: those it claims at the
/// address it came from (a multi-homed router is reached at the address
/// its upstream is configured with, or it was discovered at), or that
/// address itself if it claims none there.
fn advert_locators(src: SocketAddr, from: &Node) -> Vec<Locator> {
    // Locators are IPv4: an IPv6 source vouches for none of them.
    let Some(ip) = ipv4_of(src) else {
        return Vec::new();
    };
    let mut own: Vec<Locator> = from
        .locators
        .iter()
        .take(MAX_LOCATORS)
        .filter(|l| l.ip() == ip)
        .copied()
        .collect();
    if own.is_empty() {
        own.push(Locator::Ipv4(ip));
    }
    own
}

/// The IPv4 address a datagram came from, also when a dual-stack socket
/// reports it as an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`): locators
/// and policy are IPv4, and a mapped source is that IPv4 host.
fn ipv4_of(src: SocketAddr) -> Option<Ipv4Addr> {
    match src.ip().to_canonical() {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}

/// Whether two socket addresses name the same endpoint, IPv4-mapped IPv6
/// addresses being their IPv4 address (a configured `--upstream 10.0.0.1`
/// answers a dual-stack socket from `::ffff:10.0.0.1`).
fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

fn on_link(interface: &LocalInterface, ip: Ipv4Addr) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(interface.prefix_len.min(32)))
        .unwrap_or(0);
    u32::from(interface.locator.ip()) & mask == u32::from(ip) & mask
}

/// The FORWARD weight of each target of one prefix (in the map's order).
fn effective_weights(policy: WeightPolicy, targets: &Targets) -> Vec<u32> {
    match policy {
        WeightPolicy::Static => targets.values().map(|l| l.announced_weight).collect(),
        WeightPolicy::LeastLoaded => {
            let n = targets.len() as u64;
            let loads: Vec<u32> = targets.values().map(|l| l.load).collect();
            targets
                .values()
                .map(|learned| {
                    // Rank = how many are strictly less loaded; ties share
                    // the best rank, so equal loads mean equal weights.
                    let rank = loads.iter().filter(|&&l| l < learned.load).count() as u64;
                    let share = 2 * (n - rank) - 1;
                    let weight = u64::from(learned.announced_weight) * share;
                    u32::try_from(weight).unwrap_or(u32::MAX)
                })
                .collect()
        }
    }
}
