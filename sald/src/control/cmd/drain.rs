//! `Drain`: an instance stops attracting new connections while it finishes
//! the ones it has (a graceful leave that costs no request).
//!
//! Closing a listener withdraws its service but also resets the flows
//! queued on it that the application has not accepted yet. Draining first
//! removes only the DEMUX rule (servd sees `Unregistered` and withdraws the
//! route from the routers, so new connections resolve to other instances);
//! the listener stays, the flows it admitted complete and are accepted as
//! usual, and the caller closes it once nothing is pending.
//!
//! Pending are the flows the listener admitted that the application has
//! not taken yet (`Core::pending`): half-open or established in the
//! host's backlog, on their way to the application, or in its accept
//! queue (`Deliver`) and not taken out of it, which sald tells from the
//! memory the queue holds (see [`crate::accept_queue`]). So an answer of
//! 0 means that the application has taken every flow the listener
//! admitted, and may close it at once without resetting anyone.
//!
//! A drain asked to wait (`wait_ms`) does not poll: it looks at its
//! listeners in turn and sleeps on the first one with flows pending until
//! that one has none left (see [`crate::drains`]): the host says when a
//! drained listener's last admitted flow was taken or died
//! (`Event::Settled`), and sald when the last one on its way to the
//! application got there or the listener closed. Once sald holds none of
//! a listener's flows, the rest wait in its accept queue, where nothing
//! new comes any more: the drain sleeps until the program has taken them
//! all out (each take wakes it for one system call, without the core's
//! lock), the listener closes, or the queue goes. Then it looks on from
//! there, and answers 0 once one pass over all of them finds nothing
//! pending: at once after the event, and with work that grows with its
//! listeners and their events, not with the time it waits. Each look after
//! the first waits for the user's ration, as any request of its does. A
//! drain that stops waiting (its time ran out, its client went away, the
//! daemon stops) gives its watch back.

use std::sync::Arc;
use std::time::Duration;

use sal::table::ListenerId;
use sal::ServicePrefix;
use sal_control::{ErrorKind, Response};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{denied, error_reply, host_error, Reply};
use crate::accept_queue::AcceptQueue;
use crate::app_socket::AppSocket;
use crate::control::client::Client;
use crate::control::ration::Rations;
use crate::daemon::Shared;

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
    let listeners = match drain_bound(client, &shared, &prefix) {
        Ok(listeners) => listeners,
        Err(refused) => return *refused,
    };
    let Some(wait_ms) = wait_ms else {
        return drained(pending(&shared, &listeners));
    };
    let deadline = Instant::now() + Duration::from_millis(wait_ms).min(MAX_WAIT);
    let waiting = Waiting {
        shared: &shared,
        listeners: &listeners,
        uid: client.uid,
        privileged: client.privileged,
        rations: &client.context.rations,
    };
    let settled = tokio::select! {
        settled = tokio::time::timeout_at(deadline, waiting.settle()) => settled.is_ok(),
        () = gone(&client.stream) => false,
    };
    drained(if settled {
        0
    } else {
        pending(&shared, &listeners)
    })
}

/// Drains every listener bound to exactly `prefix`, if `client` may;
/// the listeners, or the refusal (boxed: an answer is large beside them).
fn drain_bound(
    client: &Client,
    shared: &Shared,
    prefix: &ServicePrefix,
) -> Result<Vec<ListenerId>, Box<Reply>> {
    let mut core = shared.lock();
    let core = &mut *core;
    let bound = core.owners.bound_to(prefix);
    if bound.is_empty() {
        let message = format!("no listener is bound to {prefix}");
        return Err(Box::new(error_reply(ErrorKind::NotFound, message)));
    }
    if !client.privileged && bound.iter().any(|&(_, uid)| uid != client.uid) {
        let what = format!("drain another user's binding of {prefix}");
        return Err(Box::new(denied(&what)));
    }
    for &(listener, _) in &bound {
        if let Err(error) = core.host.drain_listener(listener) {
            return Err(Box::new(host_error(error)));
        }
    }
    // The `Unregistered` event goes out now, while the owner is known.
    core.run();
    tracing::info!(%prefix, uid = client.uid, "service drained");
    Ok(bound.into_iter().map(|(listener, _)| listener).collect())
}

/// The answer: `pending` flows left.
fn drained(pending: usize) -> Reply {
    let pending = u32::try_from(pending).unwrap_or(u32::MAX);
    (Response::Drained { pending }, None)
}

/// Flows the drained listeners admitted that are not accepted yet (see
/// `Core::pending`), all counted in one look.
fn pending(shared: &Shared, listeners: &[ListenerId]) -> usize {
    let mut core = shared.lock();
    listeners.iter().map(|&l| core.drain_look(l)).sum()
}

/// Resolves once the client hung up (closed its end): nobody is left to
/// answer. Reads nothing: a next request sent meanwhile is read after the
/// answer, and a client that sent one and then hung up is still seen to
/// go (watching for a request alone, such a drain waited, its watch and
/// connection held, until its time ran out). A client that only shut its
/// end for sending may still read the answer: it is waited for until it
/// closes.
async fn gone(stream: &AppSocket) {
    let _ = stream.hung_up().await;
}

/// A drain waiting for its listeners to settle, on its user's behalf.
struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    listeners: &'a [ListenerId],
    uid: u32,
    privileged: bool,
    rations: &'a Rations,
}

impl Waiting<'_> {
    /// Returns once one pass over the listeners finds none with flows
    /// pending (see the module docs): each look goes on from the listener
    /// it last slept on, and one that reaches the end having started
    /// further on is followed by a pass from the first.
    async fn settle(&self) {
        let mut from = 0;
        loop {
            match self.watch_first_pending(from) {
                None if from == 0 => return,
                None => from = 0,
                Some((at, mut watching)) => {
                    from += at;
                    watching.settled().await;
                }
            }
            // A look costs up to what the user bound to the prefix (its
            // `bindings_per_uid` listeners): many waiting drains take
            // their user's ration, not everyone's thread.
            self.rations.wait(self.uid, self.privileged).await;
        }
    }

    /// Looks at the listeners from `from` on: the first with flows
    /// pending, by its offset from `from`, and a watch on it.
    fn watch_first_pending(&self, from: usize) -> Option<(usize, Watching)> {
        let listeners = self.listeners.get(from..).unwrap_or_default();
        let watch = self.shared.lock().watch_first_pending(listeners)?;
        let watching = Watching {
            shared: self.shared.clone(),
            listener: watch.listener,
            receiver: Some(watch.receiver),
            queue: watch.queue,
        };
        Some((watch.at, watching))
    }
}

/// A drain's watch on one listener (see [`crate::drains`]), given back
/// when dropped: once woken, or when the drain stops waiting, so that no
/// watch outlives its drain.
struct Watching {
    shared: Arc<Shared>,
    listener: ListenerId,
    receiver: Option<watch::Receiver<()>>,
    /// The listener's accept queue, when sald holds none of its flows and
    /// the rest wait there for the program.
    queue: Option<Arc<AcceptQueue>>,
}

impl Watching {
    /// Waits until the listener may have nothing pending any more: sald
    /// let go of the last flow it held, or (once it held none) the
    /// program took the last one out of its accept queue.
    async fn settled(&mut self) {
        let Some(receiver) = self.receiver.as_mut() else {
            return;
        };
        // An error: the entry is gone, which only its last watcher does;
        // look again either way.
        match &self.queue {
            Some(queue) => tokio::select! {
                _ = receiver.changed() => {}
                () = queue.emptied() => {}
            },
            None => {
                let _ = receiver.changed().await;
            }
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(receiver) = self.receiver.take() {
            self.shared.lock().unwatch_drained(self.listener, receiver);
        }
    }
}
