//! The `servd` program: command line, and the tokio loop that drives a
//! [`Controller`] with a UDP socket, the local sald and the clock.
//!
//! Two control connections to sald: one subscribed to events (read on a
//! thread of its own with the blocking client, and passed on through a
//! channel), one for requests (rule changes, interface and rule listings).
//! The UDP socket is bound on the host network (`--listen`), never through
//! the SAL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use sal::table::RuleOrigin;
use sal::ServicePrefix;
use sal_control::{ControlEvent, Request, Response};
use socket_shim::{AsyncControlClient, ControlClient};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::controller::{Config, Controller, DefaultRoute, SaldAction, WeightPolicy};
use super::wire::MAX_DATAGRAM;

/// Port servd listens on unless told otherwise (and solicits routers on).
pub const DEFAULT_PORT: u16 = 54326;

/// servd: the service controller. Announces the services bound on this
/// host to its upstream controllers; as a router (its sald runs with
/// --forward), turns announcements into FORWARD rules; resolves DELAY rules
/// by asking upstream; installs a default route toward its service router.
#[derive(Debug, Parser)]
#[command(name = "servd", version)]
pub struct Args {
    /// Upstream controller (repeat for redundancy; all are announced to).
    #[arg(long = "upstream", value_name = "ADDR:PORT")]
    pub upstreams: Vec<SocketAddr>,
    /// UDP address to receive controller messages on (host network).
    #[arg(long, value_name = "ADDR:PORT", default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// sald's control socket.
    #[arg(long, value_name = "PATH", env = "SERVAL_CONTROL")]
    pub control: Option<PathBuf>,
    /// Act as a service router: install FORWARD rules from announcements
    /// (run sald with --forward on this host).
    #[arg(long)]
    pub router: bool,
    /// Name in messages and rule origins (default: the host name).
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
    /// How long to wait for an answer before asking again (3 tries).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// Shared key: every message is tagged with HMAC-SHA256 under it, and
    /// untagged or wrongly tagged ones are dropped. At least 16 bytes.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
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

/// Reads the shared key: the file's bytes, surrounding whitespace removed.
pub fn read_key(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the key file {}", path.display()))?;
    let key = bytes.trim_ascii().to_vec();
    if key.len() < 16 {
        bail!(
            "the key in {} is {} bytes; use at least 16 (e.g. `head -c 32 /dev/urandom | base64`)",
            path.display(),
            key.len()
        );
    }
    Ok(key)
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
        let key = self.key_file.as_deref().map(read_key).transpose()?;
        let mut name = self.name.clone().unwrap_or_else(host_name);
        name.truncate(super::wire::MAX_NAME);
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
            query_timeout: self.query_timeout,
            key,
            ..Config::default()
        })
    }
}

/// Runs servd until SIGTERM or SIGINT, or until sald goes away.
pub async fn run(args: Args) -> anyhow::Result<()> {
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

    // Subscribe first, then list: a registration in between is then seen
    // twice (harmless) rather than not at all.
    let events = subscribe(&path)?;
    let mut control = AsyncControlClient::connect_as(&path, "servd")
        .await
        .with_context(|| format!("cannot reach sald at {}", path.display()))?;
    let now = Instant::now();
    let epoch: u64 = rand::random();
    tracing::info!(
        name = %config.name,
        listen = %args.listen,
        upstreams = ?config.upstreams,
        router = config.router,
        lease = ?config.lease,
        refresh = ?config.refresh,
        authenticated = config.key.is_some(),
        "servd starting"
    );
    let mut controller = Controller::new(config, now, epoch);
    let interfaces = list_interfaces(&mut control).await?;
    controller.set_interfaces(now, interfaces);
    match control.request(&Request::ListRules).await?.response {
        Response::Rules { rules } => controller.adopt_rules(now, &rules),
        other => bail!("sald answered ListRules with {other:?}"),
    }
    let mut events = events;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch SIGINT")?;
    let mut interface_check = tokio::time::interval(Duration::from_secs(5));
    interface_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats_tick = tokio::time::interval(Duration::from_secs(30));
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = controller.stats();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        flush(&mut controller, &socket, &mut control).await?;
        let deadline = tokio::time::Instant::from_std(controller.poll_timeout());
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, src)) => controller.handle_message(Instant::now(), src, &buf[..len]),
                Err(error) => tracing::debug!(%error, "receive failed"),
            },
            event = events.recv() => match event {
                Some(event) => controller.handle_local_event(Instant::now(), event),
                None => bail!("sald closed the event subscription (did it stop?)"),
            },
            _ = tokio::time::sleep_until(deadline) => controller.handle_timeout(Instant::now()),
            _ = interface_check.tick() => {
                let interfaces = list_interfaces(&mut control).await?;
                controller.set_interfaces(Instant::now(), interfaces);
            }
            _ = stats_tick.tick() => {
                let stats = controller.stats();
                let dropped = |s: &super::controller::Stats| {
                    s.dropped_malformed + s.dropped_oversized + s.dropped_version
                };
                if stats.dropped_unauthenticated > reported.dropped_unauthenticated {
                    tracing::warn!(
                        count = stats.dropped_unauthenticated - reported.dropped_unauthenticated,
                        "dropped messages without a valid authentication tag (check --key-file on every controller)"
                    );
                }
                if dropped(&stats) > dropped(&reported) {
                    tracing::info!(?stats, "dropped malformed, oversized or wrong-version messages");
                }
                tracing::debug!(?stats, "counters");
                reported = stats;
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    // Announcements and rules are soft state: leaving them to their leases
    // keeps services reachable across a controller restart.
    tracing::info!(stats = ?controller.stats(), "servd stopping");
    Ok(())
}

/// Opens the event subscription and reads it on a thread of its own.
fn subscribe(path: &std::path::Path) -> anyhow::Result<mpsc::UnboundedReceiver<ControlEvent>> {
    let mut client = ControlClient::connect_as(path, "servd-events")
        .with_context(|| format!("cannot reach sald at {}", path.display()))?;
    client.send(&Request::Subscribe)?;
    match client.recv()?.response {
        Response::Ok => {}
        other => bail!("sald refused the event subscription: {other:?}"),
    }
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("servd-events".into())
        .spawn(move || loop {
            match client.recv() {
                Ok(reply) => {
                    if let Response::Event { event } = reply.response {
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "event subscription ended");
                    return;
                }
            }
        })
        .context("cannot start the event thread")?;
    Ok(rx)
}

async fn list_interfaces(
    control: &mut AsyncControlClient,
) -> anyhow::Result<Vec<sal::proto::LocalInterface>> {
    match control.request(&Request::ListInterfaces).await?.response {
        Response::Interfaces { interfaces } => Ok(interfaces),
        other => bail!("sald answered ListInterfaces with {other:?}"),
    }
}

/// Sends what the controller queued and applies its rule changes.
async fn flush(
    controller: &mut Controller,
    socket: &UdpSocket,
    control: &mut AsyncControlClient,
) -> anyhow::Result<()> {
    loop {
        let mut progressed = false;
        while let Some(transmit) = controller.poll_transmit() {
            progressed = true;
            if let Err(error) = socket.send_to(&transmit.bytes, transmit.to).await {
                tracing::debug!(to = %transmit.to, %error, "send failed");
            }
        }
        while let Some(action) = controller.poll_action() {
            progressed = true;
            apply(control, action).await?;
        }
        if !progressed {
            return Ok(());
        }
    }
}

fn unix_ms_in(duration: Duration) -> Option<u64> {
    let at = SystemTime::now().checked_add(duration)?;
    let ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok()
}

/// Applies one rule change; sald refusing one is logged, losing sald is fatal.
async fn apply(control: &mut AsyncControlClient, action: SaldAction) -> anyhow::Result<()> {
    let (request, what) = match action {
        SaldAction::Add {
            prefix,
            target,
            priority,
            mut origin,
            expires_in,
        } => {
            if let (
                RuleOrigin::Announced {
                    expires_unix_ms, ..
                }
                | RuleOrigin::Resolved {
                    expires_unix_ms, ..
                },
                Some(expires_in),
            ) = (&mut origin, expires_in)
            {
                *expires_unix_ms = unix_ms_in(expires_in);
            }
            (
                Request::AddRuleWithOrigin {
                    prefix,
                    target,
                    priority,
                    origin,
                },
                "add",
            )
        }
        SaldAction::Remove { prefix, key } => (
            Request::DelRule {
                prefix,
                target: Some(key),
            },
            "remove",
        ),
    };
    match control.request(&request).await {
        Ok(_) => Ok(()),
        Err(socket_shim::Error::Closed) => bail!("sald closed the control connection"),
        Err(error) if what == "remove" => {
            tracing::debug!(%error, "rule already gone");
            Ok(())
        }
        Err(error) => {
            tracing::warn!(%error, ?request, "sald refused a rule change");
            Ok(())
        }
    }
}
