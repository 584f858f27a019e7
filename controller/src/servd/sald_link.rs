//! Everything servd says to its local sald, in a task of its own, so that
//! the loop reading controller datagrams never waits for sald.
//!
//! The link connects (a request connection and an event subscription, read
//! on a thread with the blocking client), reports [`LinkEvent::Connected`]
//! with sald's interfaces and rules, then applies the rule changes it is
//! sent ([`Command::Apply`]) and passes sald's events on. Rule changes go in
//! batches ([`Request::ApplyRules`], up to [`BATCH`] per request); changes
//! queued behind a slow sald are merged, the last change of each target
//! winning, so a backlog never grows beyond one change per rule. A sald
//! that answers a batch with `InvalidRequest` (one that predates batches)
//! gets one request per rule from then on.
//!
//! When sald goes away (the subscription or the request connection ends),
//! the link reports [`LinkEvent::Lost`] and reconnects with exponential
//! backoff ([`Backoff`]), logging once per change of state; rule changes
//! sent meanwhile are dropped, because the controller installs everything
//! again on the next `Connected`.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sal::proto::LocalInterface;
use sal::table::{Rule, RuleOrigin};
use sal_control::{ControlEvent, ErrorKind, Request, Response, RuleChange, RuleFailure};
use socket_shim::{AsyncControlClient, ControlClient};
use tokio::sync::{mpsc, oneshot};

use super::controller::SaldAction;
use super::log_limit::LogLimiter;

/// Most rule changes in one `ApplyRules` request (well under the control
/// protocol's frame limit).
pub const BATCH: usize = 512;

/// What the driver asks of the link.
#[derive(Debug)]
pub enum Command {
    /// Apply these changes, in order (dropped while sald is unreachable).
    Apply(Vec<SaldAction>),
    /// Answered once every change sent before it was applied or dropped.
    Flush(oneshot::Sender<()>),
}

/// What the link tells the driver.
#[derive(Debug)]
pub enum LinkEvent {
    /// (Re)connected; sald's interfaces and rules as of now.
    Connected {
        /// sald's interfaces: their locators are where peers reach this host.
        interfaces: Vec<LocalInterface>,
        /// sald's whole rule table (registrations, the operator's rules,
        /// leftovers to adopt); empty when it is too large to list.
        rules: Vec<Rule>,
    },
    /// sald went away; reconnecting.
    Lost,
    /// An event of sald's subscription.
    Event(ControlEvent),
    /// sald's interfaces (listed every [`LinkOptions::interfaces_every`]).
    Interfaces(Vec<LocalInterface>),
    /// sald's rules (listed every [`LinkOptions::rules_every`]).
    Rules(Vec<Rule>),
}

/// Timings of the link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// How often sald's interfaces are listed again, to follow address
    /// changes (5 s by default).
    pub interfaces_every: Duration,
    /// How often sald's rules are listed again, to notice the operator's
    /// changes (60 s by default).
    pub rules_every: Duration,
    /// Waits between attempts to reach sald.
    pub backoff: Backoff,
}

impl Default for LinkOptions {
    fn default() -> LinkOptions {
        LinkOptions {
            interfaces_every: Duration::from_secs(5),
            rules_every: Duration::from_secs(60),
            backoff: Backoff::default(),
        }
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Wait after the first failed attempt; doubled after each further one.
    pub first: Duration,
    /// Longest wait between two attempts.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// Starts the link task (on the current tokio runtime) for the sald at
/// `path`. It ends when the command sender is dropped.
pub fn spawn(
    path: PathBuf,
    options: LinkOptions,
) -> (
    mpsc::UnboundedSender<Command>,
    mpsc::UnboundedReceiver<LinkEvent>,
) {
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (events, events_rx) = mpsc::unbounded_channel();
    let link = Link {
        path,
        options,
        commands,
        events,
        batching: true,
        listing_rules: true,
        log_limiter: LogLimiter::default(),
    };
    tokio::spawn(link.run());
    (commands_tx, events_rx)
}

struct Link {
    path: PathBuf,
    options: LinkOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<LinkEvent>,
    /// Whether sald takes `ApplyRules` (until it says otherwise).
    batching: bool,
    /// Whether periodic `ListRules` works (a table too large for one
    /// frame makes sald drop the connection instead of answering).
    listing_rules: bool,
    log_limiter: LogLimiter,
}

/// One connection to sald: requests, and the subscription's events.
struct Session {
    control: AsyncControlClient,
    subscription: Subscription,
}

/// Why a session ended.
enum End {
    /// sald is gone (or unusable): reconnect.
    Lost(String),
    /// The driver is gone: stop.
    Stopped,
}

impl Link {
    async fn run(mut self) {
        let mut was_connected = false;
        loop {
            let Some(session) = self.connect(was_connected).await else {
                return;
            };
            was_connected = true;
            match self.serve(session).await {
                End::Stopped => return,
                End::Lost(why) => {
                    tracing::warn!(path = %self.path.display(), %why, "lost sald; reconnecting");
                    if self.events.send(LinkEvent::Lost).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Connects, retrying with backoff; `None` when the driver is gone.
    async fn connect(&mut self, reconnecting: bool) -> Option<Session> {
        let mut delay = self.options.backoff.first;
        let mut warned = false;
        let since = Instant::now();
        loop {
            match open(&self.path).await {
                Ok((session, interfaces, rules)) => {
                    if reconnecting || warned {
                        tracing::info!(
                            path = %self.path.display(),
                            after = ?since.elapsed(),
                            "connected to sald again"
                        );
                    }
                    self.batching = true;
                    self.listing_rules = true;
                    let connected = LinkEvent::Connected { interfaces, rules };
                    return self.events.send(connected).is_ok().then_some(session);
                }
                Err(error) => {
                    if !warned && !reconnecting {
                        tracing::warn!(
                            path = %self.path.display(),
                            %error,
                            "cannot reach sald; retrying"
                        );
                    } else {
                        tracing::debug!(%error, ?delay, "sald still unreachable");
                    }
                    warned = true;
                }
            }
            let wake = tokio::time::sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    command = self.commands.recv() => match command {
                        // Nothing to apply to: the next Connected resyncs.
                        Some(Command::Apply(_)) => {}
                        Some(Command::Flush(done)) => {
                            let _ = done.send(());
                        }
                        None => return None,
                    },
                }
            }
            delay = (delay * 2).min(self.options.backoff.max);
        }
    }

    /// Serves one session until it breaks or the driver goes away.
    async fn serve(&mut self, mut session: Session) -> End {
        let mut interfaces = tokio::time::interval(self.options.interfaces_every);
        interfaces.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interfaces.reset();
        let mut rules = tokio::time::interval(self.options.rules_every);
        rules.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rules.reset();
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Apply(changes)) => {
                        let (changes, flush) = self.gather(changes);
                        if let Err(why) = self.apply(&mut session, changes).await {
                            return End::Lost(why);
                        }
                        if let Some(done) = flush {
                            let _ = done.send(());
                        }
                    }
                    Some(Command::Flush(done)) => {
                        let _ = done.send(());
                    }
                    None => return End::Stopped,
                },
                event = session.subscription.events.recv() => match event {
                    Some(ControlEvent::Lagged { missed }) => {
                        // Registrations may have come and gone unseen:
                        // take sald's state afresh, as after a reconnection.
                        tracing::warn!(missed, "fell behind sald's events; resynchronising");
                        match list_state(&mut session.control, &self.path).await {
                            Ok((interfaces, rules)) => {
                                let resync = LinkEvent::Connected { interfaces, rules };
                                if self.events.send(resync).is_err() {
                                    return End::Stopped;
                                }
                            }
                            Err(why) => return End::Lost(why),
                        }
                    }
                    Some(event) => {
                        if self.events.send(LinkEvent::Event(event)).is_err() {
                            return End::Stopped;
                        }
                    }
                    None => return End::Lost("the event subscription ended".into()),
                },
                _ = interfaces.tick() => {
                    match session.control.request(&Request::ListInterfaces).await {
                        Ok(reply) => match reply.response {
                            Response::Interfaces { interfaces, .. } => {
                                let _ = self.events.send(LinkEvent::Interfaces(interfaces));
                            }
                            other => return End::Lost(format!("sald answered ListInterfaces with {other:?}")),
                        },
                        Err(error) => return End::Lost(error.to_string()),
                    }
                }
                _ = rules.tick(), if self.listing_rules => {
                    match session.control.request(&Request::ListRules).await.map(|r| r.response) {
                        Ok(Response::Rules { rules, .. }) => {
                            let _ = self.events.send(LinkEvent::Rules(rules));
                        }
                        Ok(other) => tracing::debug!(?other, "unexpected answer to ListRules"),
                        Err(error) => {
                            // sald drops the connection when the listing
                            // does not fit in a frame: stop asking, and
                            // carry on over a new connection.
                            tracing::warn!(%error, "cannot list sald's rules; no longer re-reading the operator's rules");
                            self.listing_rules = false;
                            if let Err(error) = session.reopen(&self.path).await {
                                return End::Lost(error);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Takes every change queued behind `first` (up to the next flush) and
    /// keeps only the last change of each target.
    fn gather(&mut self, first: Vec<SaldAction>) -> (Vec<SaldAction>, Option<oneshot::Sender<()>>) {
        let mut changes = first;
        let mut flush = None;
        while flush.is_none() {
            match self.commands.try_recv() {
                Ok(Command::Apply(more)) => changes.extend(more),
                Ok(Command::Flush(done)) => flush = Some(done),
                Err(_) => break,
            }
        }
        (coalesce(changes), flush)
    }

    /// Applies `changes`: in batches, or one by one with a sald that does
    /// not take batches. Refused changes are logged; `Err` means sald is gone.
    async fn apply(
        &mut self,
        session: &mut Session,
        changes: Vec<SaldAction>,
    ) -> Result<(), String> {
        for chunk in changes.chunks(BATCH) {
            let changes: Vec<RuleChange> = chunk.iter().cloned().map(rule_change).collect();
            if self.batching {
                let request = Request::ApplyRules {
                    changes: changes.clone(),
                };
                match session.control.request(&request).await {
                    Ok(reply) => {
                        match reply.response {
                            Response::Applied { failures } => self.report(&changes, &failures),
                            other => tracing::warn!(?other, "unexpected answer to ApplyRules"),
                        }
                        continue;
                    }
                    Err(socket_shim::Error::InvalidRequest(message)) => {
                        tracing::info!(
                            %message,
                            "sald does not take batched rule changes; one request per rule"
                        );
                        self.batching = false;
                        // A sald that could not even decode the request has
                        // hung up: start over on a fresh connection.
                        session.reopen(&self.path).await?;
                    }
                    Err(error) if is_gone(&error) => return Err(error.to_string()),
                    Err(error) => {
                        tracing::warn!(%error, "sald refused a batch of rule changes");
                        continue;
                    }
                }
            }
            for change in changes {
                let request = match change.clone() {
                    RuleChange::Add {
                        prefix,
                        target,
                        priority,
                        origin,
                    } => Request::AddRuleWithOrigin {
                        prefix,
                        target,
                        priority,
                        origin,
                    },
                    RuleChange::Del { prefix, target } => Request::DelRule { prefix, target },
                };
                match session.control.request(&request).await {
                    Ok(_) => {}
                    Err(error) if is_gone(&error) => return Err(error.to_string()),
                    Err(error) => {
                        let failure = RuleFailure {
                            index: 0,
                            kind: error.kind().unwrap_or(ErrorKind::Internal),
                            message: error.to_string(),
                        };
                        self.report(std::slice::from_ref(&change), &[failure]);
                    }
                }
            }
        }
        Ok(())
    }

    /// Logs refused changes: a removal of something already gone is
    /// normal, anything else is worth a (rate-bounded) warning.
    fn report(&mut self, changes: &[RuleChange], failures: &[RuleFailure]) {
        for failure in failures {
            let change = changes.get(failure.index);
            let removal = matches!(change, Some(RuleChange::Del { .. }));
            if removal && failure.kind == ErrorKind::NotFound {
                tracing::debug!(?change, "rule already gone");
            } else if let Some(held) = self.log_limiter.allow("refused change", Instant::now()) {
                tracing::warn!(
                    ?change,
                    kind = ?failure.kind,
                    message = %failure.message,
                    similar_not_logged = held,
                    "sald refused a rule change"
                );
            }
        }
    }
}

impl Session {
    /// Replaces the request connection (after sald hung up on it).
    async fn reopen(&mut self, path: &Path) -> Result<(), String> {
        self.control = AsyncControlClient::connect_as(path, "servd")
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Whether a request error means the connection to sald is unusable.
fn is_gone(error: &socket_shim::Error) -> bool {
    error.kind().is_none()
}

/// Opens a session: subscribe first, then list, so that a registration in
/// between is seen twice (harmless) rather than not at all.
async fn open(path: &Path) -> Result<(Session, Vec<LocalInterface>, Vec<Rule>), String> {
    let subscription = Subscription::open(path).await?;
    let mut control = AsyncControlClient::connect_as(path, "servd")
        .await
        .map_err(|e| e.to_string())?;
    let (interfaces, rules) = list_state(&mut control, path).await?;
    Ok((
        Session {
            control,
            subscription,
        },
        interfaces,
        rules,
    ))
}

/// sald's interfaces and rules as of now, on `control` (replaced by a fresh
/// connection when the rule listing does not fit in one frame).
async fn list_state(
    control: &mut AsyncControlClient,
    path: &Path,
) -> Result<(Vec<LocalInterface>, Vec<Rule>), String> {
    let interfaces = match control.request(&Request::ListInterfaces).await {
        Ok(reply) => match reply.response {
            Response::Interfaces { interfaces, .. } => interfaces,
            other => return Err(format!("sald answered ListInterfaces with {other:?}")),
        },
        Err(error) => return Err(error.to_string()),
    };
    let rules = match control.request(&Request::ListRules).await {
        Ok(reply) => match reply.response {
            Response::Rules { rules, .. } => rules,
            other => return Err(format!("sald answered ListRules with {other:?}")),
        },
        Err(error) if is_gone(&error) => {
            // Too many rules for one frame: go on without them (nothing
            // to adopt, no operator rules known) on a fresh connection.
            tracing::warn!(%error, "cannot list sald's rules; going on without them");
            *control = AsyncControlClient::connect_as(path, "servd")
                .await
                .map_err(|e| e.to_string())?;
            Vec::new()
        }
        Err(error) => return Err(error.to_string()),
    };
    Ok((interfaces, rules))
}

/// sald's event subscription, read on a thread with the blocking client.
/// Dropping it shuts the connection down, which ends the thread.
struct Subscription {
    events: mpsc::UnboundedReceiver<ControlEvent>,
    socket: Option<std::os::unix::net::UnixStream>,
}

impl Subscription {
    async fn open(path: &Path) -> Result<Subscription, String> {
        let (ready_tx, ready) = oneshot::channel();
        let (tx, events) = mpsc::unbounded_channel();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name("servd-events".into())
            .spawn(move || {
                let mut client = match subscribe(&path) {
                    Ok(client) => client,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                let socket = client
                    .as_fd()
                    .try_clone_to_owned()
                    .map(std::os::unix::net::UnixStream::from)
                    .map_err(|e| e.to_string());
                if ready_tx.send(socket).is_err() {
                    return;
                }
                loop {
                    match client.recv() {
                        Ok(reply) => {
                            if let Response::Event { event } = reply.response {
                                if tx.send(event).is_err() {
                                    return;
                                }
                            }
                        }
                        Err(error) => {
                            tracing::debug!(%error, "event subscription ended");
                            return;
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the event thread: {e}"))?;
        let socket = ready
            .await
            .map_err(|_| "the event thread ended".to_string())??;
        Ok(Subscription {
            events,
            socket: Some(socket),
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn subscribe(path: &Path) -> Result<ControlClient, String> {
    let mut client = ControlClient::connect_as(path, "servd-events").map_err(|e| e.to_string())?;
    client
        .send(&Request::Subscribe)
        .map_err(|e| e.to_string())?;
    match client.recv().map_err(|e| e.to_string())?.response {
        Response::Ok => Ok(client),
        other => Err(format!("sald refused the event subscription: {other:?}")),
    }
}

/// Keeps the last change of each (prefix, target), in the order of those
/// last changes (changes of different targets are independent).
pub fn coalesce(changes: Vec<SaldAction>) -> Vec<SaldAction> {
    let mut seen = HashSet::with_capacity(changes.len());
    let mut kept: Vec<SaldAction> = changes
        .into_iter()
        .rev()
        .filter(|change| seen.insert(target_of(change)))
        .collect();
    kept.reverse();
    kept
}

fn target_of(change: &SaldAction) -> (sal::ServicePrefix, sal::table::TargetKey) {
    match change {
        SaldAction::Add { prefix, target, .. } => (*prefix, target.key()),
        SaldAction::Remove { prefix, key } => (*prefix, *key),
    }
}

fn unix_ms_in(duration: Duration) -> Option<u64> {
    let at = SystemTime::now().checked_add(duration)?;
    let ms = at.duration_since(UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok()
}

/// The control-protocol form of one change; expiries become wall-clock
/// times (what `servalctl services` shows) now.
pub fn rule_change(action: SaldAction) -> RuleChange {
    match action {
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
            RuleChange::Add {
                prefix,
                target,
                priority,
                origin,
            }
        }
        SaldAction::Remove { prefix, key } => RuleChange::Del {
            prefix,
            target: Some(key),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sal::table::{Target, TargetKey};

    #[test]
    fn coalescing_keeps_the_last_change_of_each_target() {
        let prefix: sal::ServicePrefix = "beef/16".parse().unwrap();
        let locator = "10.0.0.2".parse().unwrap();
        let add = |weight| SaldAction::Add {
            prefix,
            target: Target::Forward { locator, weight },
            priority: 0,
            origin: RuleOrigin::Static,
            expires_in: None,
        };
        let remove = SaldAction::Remove {
            prefix,
            key: TargetKey::Forward { locator },
        };
        let drop_rule = SaldAction::Remove {
            prefix,
            key: TargetKey::Drop,
        };
        assert_eq!(
            coalesce(vec![add(1), drop_rule.clone(), add(2), remove.clone()]),
            vec![drop_rule.clone(), remove.clone()]
        );
        assert_eq!(coalesce(vec![remove, add(3)]), vec![add(3)]);
    }
}
