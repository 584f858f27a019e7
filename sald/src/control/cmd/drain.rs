//! `Drain`: an instance stops attracting new connections while it finishes
//! the ones it has (a graceful leave that costs no request).
//!
//! Closing a listener withdraws its service but also resets the flows
//! queued on it that the application has not accepted yet. Draining first
//! removes only the DEMUX rule (servd sees `Unregistered` and withdraws the
//! route from the routers, so new connections resolve to other instances);
//! the listener stays, the flows it admitted complete and are accepted as
//! usual, and the caller closes it once nothing is pending.

use std::time::Duration;

use sal::table::ListenerId;
use sal::ServicePrefix;
use sal_control::{ErrorKind, Response};

use super::{denied, error_reply, host_error, Reply};
use crate::control::client::Client;
use crate::daemon::Shared;

/// How often a waiting drain looks at the listener again.
const POLL: Duration = Duration::from_millis(20);
/// The longest wait a drain request may ask for.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Drains every listener bound to exactly `prefix` (serving, or already
/// drained), if the caller owns them or is privileged; answers with the
/// flows still pending, after waiting up to `wait_ms` for none.
pub(super) async fn drain(
    client: &mut Client,
    prefix: ServicePrefix,
    wait_ms: Option<u64>,
) -> Reply {
    let shared = client.context.shared.clone();
    let listeners = {
        let mut core = shared.lock();
        let core = &mut *core;
        let bound = core.owners.bound_to(&prefix);
        if bound.is_empty() {
            return error_reply(
                ErrorKind::NotFound,
                format!("no listener is bound to {prefix}"),
            );
        }
        if !client.privileged && bound.iter().any(|&(_, uid)| uid != client.uid) {
            return denied(&format!("drain another user's binding of {prefix}"));
        }
        for &(listener, _) in &bound {
            if let Err(error) = core.host.drain_listener(listener) {
                return host_error(error);
            }
        }
        // The `Unregistered` event goes out now, while the owner is known.
        core.run();
        tracing::info!(%prefix, uid = client.uid, "service drained");
        bound
            .into_iter()
            .map(|(listener, _)| listener)
            .collect::<Vec<_>>()
    };
    let deadline =
        wait_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms).min(MAX_WAIT));
    let rations = client.context.rations.clone();
    loop {
        let left = pending(&shared, &listeners);
        match deadline {
            Some(deadline) if left > 0 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
                // Each look costs what the user bound to the prefix (up to
                // its `bindings_per_uid` listeners): many waiting drains
                // take their user's ration, not everyone's thread.
                rations.wait(client.uid, client.privileged).await;
            }
            _ => {
                let pending = u32::try_from(left).unwrap_or(u32::MAX);
                return (Response::Drained { pending }, None);
            }
        }
    }
}

/// Flows the drained listeners admitted that are not accepted yet: those
/// the host still queues and those on their way to the application (a
/// listener closed meanwhile has none).
fn pending(shared: &Shared, listeners: &[ListenerId]) -> usize {
    let core = shared.lock();
    listeners
        .iter()
        .filter_map(|&listener| {
            let queued = core.host.listener_pending(listener)?;
            Some(queued + core.in_hand(listener))
        })
        .sum()
}
