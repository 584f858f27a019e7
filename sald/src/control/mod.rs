//! The control socket: applications, servd and operators talk to sald over
//! it (the protocol is [`sal_control`]'s).
//!
//! The accept loop ([`serve`]) bounds who gets in ([`limits`]: a total, a
//! share per ordinary user, a reserve for root) and backs off when `accept`
//! fails; each connection is a task (`client`) that reads frames within
//! the daemon's time and memory bounds ([`frame`]), answers each request
//! with one function of `cmd`, checks what its user may do
//! ([`policy`]), or streams events (`subscribe`). All of them stop when
//! the daemon does.

mod client;
mod cmd;
mod connector;
pub mod frame;
pub mod limits;
pub mod listing;
pub mod policy;
pub mod ration;
mod subscribe;

pub use cmd::{watch_relay_sockets, RELAY_WATCH_INTERVAL};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sal_control::{encode_frame, ErrorKind, Response};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::app_socket::AppSocket;
use crate::config::{Config, Limits};
use crate::daemon::Shared;
use crate::shutdown::{Shutdown, Tasks};
use client::{Client, Slot};
use frame::{FrameBudget, FrameReader};
use limits::{Admission, Backoff, LogLimiter, Refusal};
use listing::ListingTurns;
use policy::Policy;
use ration::Rations;

/// Refused connections being told why at once; beyond that they are just
/// closed.
const MAX_REFUSING: usize = 32;
/// How long a refused client gets to send its hello and read the refusal.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// At most one log line per this long about refusals, and one about accept
/// failures.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the control server and its clients share.
pub struct ControlContext {
    /// The daemon state.
    pub shared: Arc<Shared>,
    /// Where pumps and clients are spawned (they stop with the daemon).
    pub tasks: Tasks,
    /// Who may do what.
    pub policy: Policy,
    /// Bounds on clients.
    pub limits: Limits,
    /// When the daemon started (for `Stats`).
    pub started: Instant,
    /// Whose listings may go on (see [`listing`]).
    pub listings: Arc<ListingTurns>,
    /// What ordinary users' requests may take from the thread (see
    /// [`ration`]).
    pub rations: Arc<Rations>,
    /// How long a program may use a `Resolve` answer, milliseconds (the
    /// config file's `resolution_lifetime_ms`; 0: sald answers none).
    pub resolution_lifetime_ms: u64,
    reader: FrameReader,
    admission: Arc<Admission>,
    refusing: Arc<Semaphore>,
    refusal_log: LogLimiter,
    share_log: LogLimiter,
}

impl ControlContext {
    /// Logs a flow refused to a user over its share, at most once per
    /// interval (a user hitting it in a loop must not flood the log).
    pub(crate) fn log_share_refusal(&self, message: &str) {
        if let Some(held_back) = self.share_log.allow() {
            tracing::warn!(held_back, "{message}");
        }
    }

    /// The context of a daemon with `config`, running as user `owner_uid`.
    pub fn new(
        shared: Arc<Shared>,
        tasks: Tasks,
        config: &Config,
        owner_uid: u32,
    ) -> Arc<ControlContext> {
        let limits = config.limits;
        Arc::new(ControlContext {
            shared,
            tasks,
            policy: Policy {
                owner_uid,
                allow: config.allow.clone(),
                min_bind_prefix: config.min_bind_prefix,
            },
            limits,
            started: Instant::now(),
            listings: Arc::default(),
            rations: Arc::new(Rations::new(limits.idle_turns)),
            resolution_lifetime_ms: config.resolution_lifetime_ms,
            reader: FrameReader::new(
                FrameBudget::new(limits.frame_memory),
                Duration::from_millis(limits.frame_timeout_ms),
            ),
            admission: Admission::new(&limits),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            refusal_log: LogLimiter::new(LOG_INTERVAL),
            share_log: LogLimiter::new(LOG_INTERVAL),
        })
    }
}

/// Accepts control clients until `shutdown`: at most `limits.clients` at
/// once (the accept loop waits for one to leave), each admitted by its
/// user's share.
pub async fn serve(listener: UnixListener, context: Arc<ControlContext>, mut shutdown: Shutdown) {
    let places = Arc::new(Semaphore::new(context.limits.clients));
    let mut backoff = Backoff::default();
    let accept_log = LogLimiter::new(LOG_INTERVAL);
    loop {
        let permit = tokio::select! {
            permit = places.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = shutdown.recv() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.recv() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.reset();
                stream
            }
            Err(error) => {
                // Typically out of file descriptors: wait longer each time
                // rather than spin, and say so now and then.
                drop(permit);
                let delay = backoff.next_delay();
                if let Some(held_back) = accept_log.allow() {
                    tracing::warn!(%error, ?delay, held_back, "control socket accept failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => continue,
                    () = shutdown.recv() => return,
                }
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        let privileged = context.policy.privileged(uid);
        match context.admission.admit(uid, privileged) {
            Ok(admitted) => {
                // Ours from now on, watched for requests only: see
                // `app_socket` for why not a tokio `UnixStream`.
                let stream = match stream.into_std().and_then(|s| AppSocket::new(s.into())) {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "control connection dropped");
                        continue;
                    }
                };
                let client = Client::new(context.clone(), stream, uid);
                let slot = Slot {
                    _permit: permit,
                    _admitted: admitted,
                };
                context
                    .tasks
                    .spawn(move |shutdown| client.run(shutdown, slot));
            }
            Err(refusal) => {
                drop(permit);
                refuse(&context, stream, refusal);
            }
        }
    }
}

/// Tells a refused client why (it reads the answer to its hello), within
/// bounds: few at once, each briefly.
fn refuse(context: &ControlContext, mut stream: UnixStream, refusal: Refusal) {
    if let Some(held_back) = context.refusal_log.allow() {
        tracing::warn!(%refusal, held_back, "control connection refused");
    }
    let Ok(telling) = context.refusing.clone().try_acquire_owned() else {
        return;
    };
    let response = Response::error(ErrorKind::Exhausted, refusal.to_string());
    let Ok(frame) = encode_frame(&response) else {
        return;
    };
    tokio::spawn(async move {
        let _telling = telling;
        let _ = tokio::time::timeout(REFUSAL_GRACE, async {
            use tokio::io::AsyncWriteExt;
            stream.write_all(&frame).await?;
            // Take the hello, so that closing does not reset the connection
            // before the client has read the refusal.
            let mut hello = [0u8; 512];
            let _ = stream.read(&mut hello).await?;
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Binds the control socket, replacing a stale socket file but refusing to
/// steal one that a running daemon answers on.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another sald is already serving the control socket {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("cannot remove stale {}: {e}", path.display()))?;
    }
    // Anyone may connect: what a client may do is decided per request from
    // its peer credentials (see `policy`), how many connections it gets by
    // `limits`. The socket is bound and opened up under a staging name,
    // then renamed into place, so that it never appears at `path` with the
    // mode `bind` gave it: an ordinary user connecting as sald starts would
    // have been refused.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let staging = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)
        .map_err(|e| anyhow::anyhow!("cannot bind control socket {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let opened = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o666))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(error) = opened {
        let _ = std::fs::remove_file(&staging);
        anyhow::bail!("cannot open up {}: {error}", path.display());
    }
    Ok(listener)
}
