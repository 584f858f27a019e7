//! The `servd` program: command line, and the tokio loop that drives a
//! [`Controller`] with a UDP socket, the local sald and the clock.
//!
//! The loop only reads datagrams, timers and signals; everything said to
//! sald goes through the [`sald_link`] task, so a slow sald (or a flood of
//! rule changes) never stops servd from reading its socket. The UDP socket
//! is bound on the host network (`--listen`), never through the SAL.
//!
//! [`serve`] runs until its `shutdown` future completes (tests use that to
//! stop it in-process); [`run`] is `serve` until SIGTERM or SIGINT. Either
//! way servd withdraws what it announced and removes the rules only it
//! maintains ([`Controller::shutdown`]) before it returns.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use sal::ServicePrefix;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::controller::{
    Config, Controller, DefaultRoute, SaldAction, Stats, WeightPolicy, QUERY_RATE_PER_SECOND,
};
use super::keys::{Key, Keyring, OWN_KEY_NAME};
use super::policy::Policy;
use super::sald_link::{self, Command, LinkEvent, LinkOptions};
use super::wire::MAX_DATAGRAM;

/// Port servd listens on unless told otherwise (and solicits routers on).
pub const DEFAULT_PORT: u16 = 54326;

/// servd: the service controller. Announces the services bound on this
/// host to its upstream controllers; as a router (its sald runs with
/// --forward), turns announcements into FORWARD rules within its policy;
/// resolves DELAY rules by asking upstream; installs a default route toward
/// its service router. Follows sald across restarts. On SIGTERM or SIGINT
/// it withdraws what it announced, removes its default route and cached
/// routes, and exits 0.
#[derive(Debug, Parser)]
#[command(name = "servd", version)]
pub struct Args {
    /// Upstream controller (repeat for redundancy; all are announced to).
    #[arg(long = "upstream", value_name = "ADDR:PORT")]
    pub upstreams: Vec<SocketAddr>,
    /// UDP address to receive controller messages on (host network).
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// sald's control socket (default /run/serval/sald.sock).
    #[arg(long, value_name = "PATH", env = "SERVAL_CONTROL")]
    pub control: Option<PathBuf>,
    /// Act as a service router: install FORWARD rules from announcements
    /// (run sald with --forward on this host).
    #[arg(long)]
    pub router: bool,
    /// Name in messages and rule origins (default: the host name; cut to
    /// 64 bytes).
    #[arg(long)]
    pub name: Option<String>,
    /// Lease of our announcements (e.g. 30s, 2s, 500ms).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// How often announcements are refreshed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub refresh: Duration,
    /// Longest lease accepted from downstream hosts.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub max_lease: Duration,
    /// Weight announced for this host's services.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,
    /// Priority announced for this host's services (larger wins).
    #[arg(long, default_value_t = 0)]
    pub priority: u32,
    /// Covering prefix to announce upstream instead of the prefixes below
    /// it (repeatable).
    #[arg(long = "aggregate", value_name = "PREFIX")]
    pub aggregates: Vec<ServicePrefix>,
    /// Router weight policy: `static` (announced weights) or `least-loaded`
    /// (power-of-two-choices shares by reported load).
    #[arg(long, default_value = "static", value_parser = parse_policy)]
    pub weights: WeightPolicy,
    /// Default rule: `forward` (/0 toward the service router), `delay` (/0
    /// DELAY: resolve every unknown service upstream) or `none`.
    #[arg(long, default_value = "forward", value_parser = parse_default_route)]
    pub default_route: DefaultRoute,
    /// How long a resolved route is cached.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub cache_lifetime: Duration,
    /// How long "no such service" is cached.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub negative_lifetime: Duration,
    /// How many answers are cached at most; past that, the one due to
    /// expire first goes early.
    #[arg(long, default_value_t = 100_000, value_parser = parse_positive)]
    pub max_cached: usize,
    /// How long to wait for an answer before asking again (3 tries).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// New queries a second for this host's own DELAY rules (bursts of
    /// twice that), for packets that arrived and, separately, for each
    /// local user's connects; past it a held connection waits for sald's
    /// delay timeout. Bounds what a SYN flood to unknown services sends
    /// upstream.
    #[arg(long, default_value_t = QUERY_RATE_PER_SECOND, value_parser = parse_rate)]
    pub query_rate: u32,
    /// Shared key: every message is tagged with HMAC-SHA256 under it (with
    /// a timestamp and a sequence number, so that captured messages cannot
    /// be replayed), and untagged, wrongly tagged, stale (> 30 s off) or
    /// replayed ones are dropped. At least 16 bytes. Named "domain" in the
    /// policy.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Router policy (TOML): which sources and keys may announce which
    /// prefixes, per-sender limits, priorities, more accepted keys.
    /// Without it: anyone may announce prefixes of /16 or longer (never
    /// /0) toward its own address, 10,000 at most, at priority 0.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Without --upstream: do not look for a router on the local links.
    #[arg(long)]
    pub no_discover: bool,
    /// Port routers are solicited on when discovering.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub discover_port: u16,
}

/// `30s`, `500ms`, `2m`, or a bare number of seconds (`1.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?} (try 30s, 500ms, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {text:?} (ms, s or m)")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(format!("duration {text:?} out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_rate(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_policy(text: &str) -> Result<WeightPolicy, String> {
    match text {
        "static" => Ok(WeightPolicy::Static),
        "least-loaded" => Ok(WeightPolicy::LeastLoaded),
        _ => Err(format!(
            "unknown weight policy {text:?} (static, least-loaded)"
        )),
    }
}

fn parse_default_route(text: &str) -> Result<DefaultRoute, String> {
    match text {
        "forward" => Ok(DefaultRoute::Forward),
        "delay" => Ok(DefaultRoute::Delay),
        "none" => Ok(DefaultRoute::None),
        _ => Err(format!(
            "unknown default route {text:?} (forward, delay, none)"
        )),
    }
}

/// Reads a shared key named `name`: the file's bytes, surrounding
/// whitespace removed.
pub fn read_key(name: &str, path: &std::path::Path) -> anyhow::Result<Key> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    Key::new(name, &bytes).with_context(|| format!("in {}", path.display()))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "servd".into())
}

impl Args {
    /// The controller configuration these arguments describe.
    pub fn config(&self) -> anyhow::Result<Config> {
        if self.refresh >= self.lease {
            bail!(
                "--refresh ({:?}) must be shorter than --lease ({:?})",
                self.refresh,
                self.lease
            );
        }
        let policy = match &self.policy {
            Some(path) => Policy::load(path)?,
            None => Policy::default(),
        };
        let mut keys = match &self.key_file {
            Some(path) => Keyring::with_signing(read_key(OWN_KEY_NAME, path)?),
            None => Keyring::none(),
        };
        for named in &policy.keys {
            keys.accept(read_key(&named.name, &named.file)?)
                .with_context(|| format!("in {}", named.file.display()))?;
        }
        let mut name = self.name.clone().unwrap_or_else(host_name);
        // At a character boundary: `truncate` in the middle of one panics.
        let cut = (0..=super::wire::MAX_NAME.min(name.len()))
            .rev()
            .find(|&at| name.is_char_boundary(at))
            .unwrap_or(0);
        name.truncate(cut);
        Ok(Config {
            name,
            upstreams: self.upstreams.clone(),
            discover_port: (!self.no_discover).then_some(self.discover_port),
            router: self.router,
            lease: self.lease,
            refresh: self.refresh,
            max_lease: self.max_lease,
            weight: self.weight,
            priority: self.priority,
            aggregates: self.aggregates.clone(),
            weight_policy: self.weights,
            default_route: self.default_route,
            cache_lifetime: self.cache_lifetime,
            negative_lifetime: self.negative_lifetime,
            max_cached: self.max_cached,
            query_timeout: self.query_timeout,
            query_rate: self.query_rate,
            keys,
            policy,
            ..Config::default()
        })
    }
}

/// Runs servd until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch SIGINT")?;
    let signalled = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    serve(args, LinkOptions::default(), signalled).await
}

/// How long stopping may wait for sald to take the last rule changes.
const STOP_GRACE: Duration = Duration::from_secs(2);

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Runs servd until `shutdown` completes, then withdraws and cleans up.
/// sald may come and go meanwhile: servd reconnects (see [`sald_link`]).
pub async fn serve(
    args: Args,
    link: LinkOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let config = args.config()?;
    let path = args
        .control
        .clone()
        .unwrap_or_else(sal_control::control_path);
    let socket = UdpSocket::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    socket
        .set_broadcast(true)
        .context("cannot enable broadcast on the controller socket")?;
    let now = Instant::now();
    let epoch: u64 = rand::random();
    tracing::info!(
        name = %config.name,
        listen = %args.listen,
        upstreams = ?config.upstreams,
        router = config.router,
        lease = ?config.lease,
        refresh = ?config.refresh,
        authenticated = !config.keys.is_empty(),
        "servd starting"
    );
    // Without a key, anyone who can send a datagram with a forged source
    // address takes part in the routing, within the policy: say so once,
    // where operators look, rather than only in the README.
    if config.keys.is_empty() && (config.router || !config.upstreams.is_empty()) {
        tracing::warn!("announcements are not authenticated; see README Shared-key authentication");
    }
    let mut controller = Controller::new(config, now, epoch);
    controller.set_query_secret(rand::random());
    controller.set_secret(rand::random());
    controller.set_unix_time(now, unix_now_ms());
    let (commands, mut link_events) = sald_link::spawn(path, link);
    let mut connected = false;

    let mut clock_check = tokio::time::interval(Duration::from_secs(5));
    clock_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_tick = tokio::time::interval(Duration::from_secs(30));
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = controller.stats();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    tokio::pin!(shutdown);
    loop {
        flush(&mut controller, &socket, &commands, connected).await;
        let deadline = tokio::time::Instant::from_std(controller.poll_timeout());
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, src)) => controller.handle_message(Instant::now(), src, &buf[..len]),
                Err(error) => tracing::debug!(%error, "receive failed"),
            },
            event = link_events.recv() => {
                let Some(event) = event else {
                    bail!("the sald link stopped");
                };
                let now = Instant::now();
                match event {
                    LinkEvent::Connected { interfaces, rules } => {
                        connected = true;
                        controller.sald_connected(now, interfaces, &rules);
                    }
                    LinkEvent::Lost => {
                        connected = false;
                        controller.sald_lost(now);
                    }
                    LinkEvent::Event(event) => controller.handle_local_event(now, event),
                    LinkEvent::Interfaces(interfaces) => controller.set_interfaces(now, interfaces),
                    LinkEvent::Rules(rules) => controller.update_statics(now, &rules),
                }
            }
            _ = tokio::time::sleep_until(deadline) => controller.handle_timeout(Instant::now()),
            _ = clock_check.tick() => controller.set_unix_time(Instant::now(), unix_now_ms()),
            _ = stats_tick.tick() => {
                let stats = controller.stats();
                report_stats(&reported, &stats);
                reported = stats;
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("stopping: withdrawing announcements and removing our rules");
    controller.shutdown(Instant::now());
    flush(&mut controller, &socket, &commands, connected).await;
    let (done, flushed) = oneshot::channel();
    if connected
        && commands.send(Command::Flush(done)).is_ok()
        && tokio::time::timeout(STOP_GRACE, flushed).await.is_err()
    {
        tracing::warn!("sald did not take the last rule changes in time");
    }
    tracing::info!(stats = ?controller.stats(), "servd stopped");
    Ok(())
}

/// Logs what moved in the counters since the last report.
fn report_stats(before: &Stats, now: &Stats) {
    if now.dropped_unauthenticated > before.dropped_unauthenticated {
        tracing::warn!(
            count = now.dropped_unauthenticated - before.dropped_unauthenticated,
            "dropped messages without a valid authentication tag (check --key-file on every controller)"
        );
    }
    if now.refused() > before.refused() {
        tracing::warn!(
            replayed = now.dropped_replayed - before.dropped_replayed,
            stale = now.dropped_stale - before.dropped_stale,
            refused_prefixes = now.refused_prefix - before.refused_prefix,
            refused_locators = now.refused_locator - before.refused_locator,
            over_limit = now.refused_over_limit - before.refused_over_limit,
            refused_answer_rate = now.refused_answer_rate - before.refused_answer_rate,
            refused_answer_size = now.refused_answer_size - before.refused_answer_size,
            refused_query_rate = now.refused_query_rate - before.refused_query_rate,
            "refused messages or announcements since the last report (totals in the next line)"
        );
        tracing::info!(stats = ?now, "counters");
    }
    if now.cache_evicted > before.cache_evicted {
        tracing::warn!(
            count = now.cache_evicted - before.cache_evicted,
            "cached answers removed before they expired, to make room (more connects to unknown services than the cache holds)"
        );
    }
    let dropped = |s: &Stats| s.dropped_malformed + s.dropped_oversized + s.dropped_version;
    if dropped(now) > dropped(before) {
        tracing::info!(stats = ?now, "dropped malformed, oversized or wrong-version messages");
    }
    tracing::debug!(stats = ?now, "counters");
}

/// Sends the datagrams the controller queued and hands its rule changes to
/// the link (dropped while sald is unreachable: the next `Connected`
/// installs everything again).
async fn flush(
    controller: &mut Controller,
    socket: &UdpSocket,
    commands: &mpsc::UnboundedSender<Command>,
    connected: bool,
) {
    while let Some(transmit) = controller.poll_transmit() {
        if let Err(error) = socket.send_to(&transmit.bytes, transmit.to).await {
            tracing::debug!(to = %transmit.to, %error, "send failed");
        }
    }
    let mut changes: Vec<SaldAction> = Vec::new();
    while let Some(action) = controller.poll_action() {
        changes.push(action);
    }
    if connected && !changes.is_empty() {
        let _ = commands.send(Command::Apply(changes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_bound_is_a_positive_count() {
        let parse = |value: &str| Args::try_parse_from(["servd", "--max-cached", value]);
        assert_eq!(parse("5").expect("5 parses").max_cached, 5);
        let error = parse("0").expect_err("0 refused").to_string();
        assert!(error.contains("must be at least 1"), "{error}");
        assert!(parse("many").is_err());
        let default = Args::try_parse_from(["servd"]).expect("no arguments");
        assert_eq!(default.max_cached, Config::default().max_cached);
    }

    #[test]
    fn a_long_name_is_cut_at_a_character_boundary() {
        let long = "€".repeat(30);
        let args = Args::try_parse_from(["servd", "--name", &long]).expect("parses");
        let name = args.config().expect("a config, not a panic").name;
        assert_eq!(name, "€".repeat(21));
    }

    #[test]
    fn the_query_rate_is_a_positive_count_that_reaches_the_config() {
        let parse = |value: &str| Args::try_parse_from(["servd", "--query-rate", value]);
        let args = parse("250").expect("250 parses");
        assert_eq!(args.config().expect("a config").query_rate, 250);
        let error = parse("0").expect_err("0 refused").to_string();
        assert!(error.contains("must be at least 1"), "{error}");
        assert!(parse("-1").is_err());
        let default = Args::try_parse_from(["servd"]).expect("no arguments");
        assert_eq!(default.query_rate, Config::default().query_rate);
    }
}
