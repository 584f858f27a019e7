//! What a sender's rate controls, bounded.
//!
//! - Log lines: a flood of refused messages must not turn into a flood of
//!   log lines. Each kind of line is written at most once per
//!   [`INTERVAL`]; the ones held back meanwhile are counted and reported
//!   with the next line of the same kind. Counters in [`super::Stats`] keep
//!   the exact totals.
//! - Replies to unauthenticated datagrams ([`SourceLimiter`]): a forged
//!   source address must not make servd spray a victim.
//! - Queries servd starts for its own sald ([`TokenBucket`]): each SYN a
//!   remote sender aims at an unknown service under a DELAY rule becomes a
//!   query to every upstream, so a SYN flood to random service IDs must not
//!   become a query flood toward the host's own routers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Shortest time between two lines of one kind.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// When each kind of line may next be written, and how many were held back.
#[derive(Debug, Default)]
pub struct LogLimiter {
    kinds: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    /// Whether a line of `kind` may be written at `now`: `Some(n)` with the
    /// number of lines held back since the last one, or `None` (counted).
    pub fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(kind) {
            Some((next, held)) if now < *next => {
                *held += 1;
                None
            }
            Some((next, held)) => {
                *next = now + INTERVAL;
                Some(std::mem::take(held))
            }
            None => {
                self.kinds.insert(kind, (now + INTERVAL, 0));
                Some(0)
            }
        }
    }
}

/// Replies per second one source address gets, sustained.
pub const REPLY_RATE_PER_SECOND: f64 = 100.0;
/// Replies one source address may get in a burst.
pub const REPLY_BURST: f64 = 200.0;
/// Replies per second to a source that holds announced entries (a
/// downstream host or site router, which relays its own hosts' queries).
pub const DOWNSTREAM_RATE_PER_SECOND: f64 = 2000.0;
/// Replies in a burst to a source that holds announced entries.
pub const DOWNSTREAM_BURST: f64 = 4000.0;
/// Buckets of a [`SourceLimiter`] (a fixed array).
pub const REPLY_BUCKETS: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = self.at.max(now);
    }
}

/// One token bucket: `rate` tokens a second, at most `burst` saved up
/// (full at the start). For a rate that one budget bounds as a whole, such
/// as the queries servd starts for its own sald.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    bucket: Bucket,
}

impl TokenBucket {
    /// `rate` a second, bursts of `burst`, full at `now`. A rate or burst
    /// that is not a positive number allows nothing.
    pub fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let (rate, burst) = if positive(rate) && positive(burst) {
            (rate, burst)
        } else {
            (0.0, 0.0)
        };
        TokenBucket {
            rate,
            burst,
            bucket: Bucket {
                tokens: burst,
                at: now,
            },
        }
    }

    /// Whether it holds all it may save up at `now`.
    fn full(&mut self, now: Instant) -> bool {
        self.bucket.refill(now, self.rate, self.burst);
        self.bucket.tokens >= self.burst
    }

    /// Whether one more is allowed at `now` (and takes its token).
    pub fn allow(&mut self, now: Instant) -> bool {
        self.bucket.refill(now, self.rate, self.burst);
        if self.bucket.tokens >= 1.0 {
            self.bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-source token buckets for the replies servd sends to unauthenticated
/// datagrams (answers to queries, adverts to solicits).
///
/// Without a key, a datagram's source address is whatever its sender wrote
/// there: every reply may go to a victim who never asked. Answers are
/// already held to a few times the query's size (see
/// [`super::controller`]); this bounds how many a source gets per second,
/// so that a router cannot be made to spray any one address, nor to spend
/// its time answering a flood.
///
/// Memory is fixed: [`REPLY_BUCKETS`] buckets, a source's chosen by a
/// hash of its address keyed with a secret (random in servd) so that a
/// sender cannot pick addresses that share a victim's bucket. Nothing is
/// ever evicted: a flood from many forged addresses spreads over the
/// buckets and cannot push a legitimate source's bucket out (a table that
/// evicts can be kept full by spoofed sources, each new one getting a
/// fresh burst). Two sources that happen to share a bucket share its rate.
#[derive(Debug)]
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    /// SipHash key of the bucket index.
    key: (u64, u64),
    /// `None`: full.
    buckets: Vec<Option<Bucket>>,
}

impl SourceLimiter {
    /// `rate` replies per second per source, bursts of `burst`; buckets
    /// indexed by a hash keyed with `key`.
    pub fn new(rate: f64, burst: f64, key: (u64, u64)) -> SourceLimiter {
        SourceLimiter {
            rate,
            burst,
            key,
            buckets: vec![None; REPLY_BUCKETS],
        }
    }

    /// Keeps the buckets' state, hashes with `key` from now on.
    pub fn rekey(&mut self, key: (u64, u64)) {
        self.key = key;
    }

    fn index(&self, source: IpAddr) -> usize {
        // SipHash is a keyed PRF made for this (hash flooding); the std one
        // is deprecated only in favour of crates outside std.
        #[allow(deprecated)]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.key.0, self.key.1);
        source.to_canonical().hash(&mut hasher);
        (hasher.finish() % REPLY_BUCKETS as u64) as usize
    }

    /// Whether `source` may get one more reply at `now` (and takes it).
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        let index = self.index(source);
        let bucket = self.buckets[index].get_or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.refill(now, rate, burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Users whose buckets [`UserBuckets`] keeps at most; past it, buckets
/// that have filled up again are let go first.
const MAX_USERS: usize = 4096;

/// One [`TokenBucket`] per local user, made when the user first needs one
/// and let go once full again (a full bucket and none are the same): each
/// user's held connects get the same rate, and one user's cannot use up
/// another's.
#[derive(Debug)]
pub struct UserBuckets {
    rate: f64,
    burst: f64,
    buckets: HashMap<u32, TokenBucket>,
}

impl UserBuckets {
    /// `rate` a second for each user, bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> UserBuckets {
        UserBuckets {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Whether `uid` may have one more at `now` (and takes its token).
    /// With [`MAX_USERS`] users' buckets all still refilling, a new user
    /// gets nothing until one has filled up.
    pub fn allow(&mut self, uid: u32, now: Instant) -> bool {
        if self.buckets.len() >= MAX_USERS && !self.buckets.contains_key(&uid) {
            self.buckets.retain(|_, bucket| !bucket.full(now));
            if self.buckets.len() >= MAX_USERS {
                return false;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(uid)
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .allow(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn limiter() -> SourceLimiter {
        SourceLimiter::new(REPLY_RATE_PER_SECOND, REPLY_BURST, (1, 2))
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut limiter = limiter();
        let start = Instant::now();
        let allowed = (0..1000).filter(|_| limiter.allow(ip(1), start)).count();
        assert_eq!(allowed, REPLY_BURST as usize);
        assert!(limiter.allow(ip(2), start), "another source has its own");
        let later = start + Duration::from_millis(100);
        let allowed = (0..1000).filter(|_| limiter.allow(ip(1), later)).count();
        assert_eq!(allowed, (REPLY_RATE_PER_SECOND / 10.0) as usize);
    }

    /// The old table (4,096 sources, evicting refilled buckets, the rest
    /// sharing one) could be kept full by spoofed sources: a legitimate
    /// source arriving then shared the overflow bucket the flood used up.
    /// Buckets are now a fixed array: a flood from many addresses leaves
    /// the buckets it does not hash to alone.
    #[test]
    fn spoofed_sources_cannot_use_up_a_legitimate_sources_bucket() {
        let mut limiter = limiter();
        let start = Instant::now();
        let legit = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let mine = limiter.index(legit);
        for n in 0..200_000 {
            if limiter.index(ip(n)) != mine {
                for _ in 0..3 {
                    limiter.allow(ip(n), start);
                }
            }
        }
        let allowed = (0..1000).filter(|_| limiter.allow(legit, start)).count();
        assert_eq!(allowed, REPLY_BURST as usize);
        // A mapped IPv6 source is its IPv4 address.
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert!(!limiter.allow(mapped, start));
    }

    #[test]
    fn a_token_bucket_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 200.0, start);
        assert_eq!((0..1000).filter(|_| bucket.allow(start)).count(), 200);
        let later = start + Duration::from_millis(100);
        assert_eq!((0..1000).filter(|_| bucket.allow(later)).count(), 10);
        // A clock that goes back refills nothing and takes nothing back.
        assert!(!bucket.allow(start));
        // Nonsense rates allow nothing rather than panic or allow all.
        for (rate, burst) in [(0.0, 0.0), (f64::NAN, 5.0), (-1.0, f64::INFINITY)] {
            let mut bucket = TokenBucket::new(rate, burst, start);
            assert!(!bucket.allow(start + Duration::from_secs(1000)));
        }
    }

    #[test]
    fn the_key_decides_the_buckets() {
        let a = limiter();
        let b = SourceLimiter::new(1.0, 1.0, (3, 4));
        let moved = (0..1000)
            .filter(|&n| a.index(ip(n)) != b.index(ip(n)))
            .count();
        assert!(moved > 900, "{moved}");
    }

    #[test]
    fn one_line_per_interval_and_kind_with_the_count_of_the_rest() {
        let mut limiter = LogLimiter::default();
        let start = Instant::now();
        assert_eq!(limiter.allow("a", start), Some(0));
        assert_eq!(limiter.allow("b", start), Some(0));
        for i in 1..100 {
            assert_eq!(limiter.allow("a", start + Duration::from_millis(i)), None);
        }
        assert_eq!(limiter.allow("a", start + INTERVAL), Some(99));
        assert_eq!(limiter.allow("a", start + INTERVAL), None);
    }

    #[test]
    fn each_user_has_a_bucket_and_full_ones_make_room() {
        let t0 = Instant::now();
        let mut users = UserBuckets::new(1.0, 2.0);
        assert!(users.allow(1, t0) && users.allow(1, t0));
        assert!(!users.allow(1, t0), "user 1 used its burst");
        assert!(users.allow(2, t0), "user 2 has its own");
        // As many users as it keeps, all refilling: a new one waits...
        for uid in 3..MAX_USERS as u32 + 1 {
            assert!(users.allow(uid, t0));
        }
        assert_eq!(users.buckets.len(), MAX_USERS);
        assert!(!users.allow(1_000_000, t0));
        // ...until buckets have filled up again and are let go.
        let later = t0 + Duration::from_secs(3);
        assert!(users.allow(1_000_000, later));
        assert!(users.buckets.len() < MAX_USERS);
    }
}
