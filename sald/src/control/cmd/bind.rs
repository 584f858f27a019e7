//! `Listen`, `Accept`, `SetBacklog`, `StopListening`, `CloseListener`: a
//! connection's listeners, which live as long as the connection.

use nix::sys::socket::SockType;
use sal::table::ListenerId;
use sal::wire::TransportProtocol;
use sal::ServicePrefix;
use sal_control::{ErrorKind, Response};

use super::flows::{budget_group, hand_over, pair, pair_error};
use super::{error_reply, host_error, Reply};
use crate::control::client::{request_or_hang_up, Client};
use crate::daemon::Core;
use crate::owners::{Binding, Owners};
use crate::pump;

/// Binds `prefix` for this connection, if the policy lets its user.
pub(super) fn listen(
    client: &mut Client,
    prefix: ServicePrefix,
    protocol: TransportProtocol,
    backlog: u32,
) -> Reply {
    let context = client.context.clone();
    let shared = &context.shared;
    let mut core = shared.lock();
    let core = &mut *core;
    if let Some(refused) = bind_refusal(client, core, &prefix) {
        return refused;
    }
    let backlog = granted_backlog(client, &core.owners, backlog, 0);
    let listener = match core.host.listen(prefix, protocol, backlog) {
        Ok(listener) => listener,
        Err(error) => return host_error(error),
    };
    let binding = Binding {
        prefix,
        uid: client.uid,
        backlog,
    };
    core.owners.bind(listener, binding);
    let _ = core
        .host
        .set_listener_group(listener, budget_group(client.uid));
    client.listeners.push(listener);
    let socket = core.host.listener_socket(listener);
    let fd = match socket {
        Some(socket) => match pair(SockType::SeqPacket) {
            Ok((ours, theirs)) => {
                let signal = core.adopt(socket);
                let shared = shared.clone();
                let ration = context.rations.ration(client.uid, client.privileged);
                context.tasks.spawn(move |shutdown| {
                    pump::datagram_socket(shared, socket, signal, ours, false, ration, shutdown)
                });
                Some(theirs)
            }
            Err(error) => {
                client.listeners.retain(|&l| l != listener);
                core.owners.unbind(listener);
                let _ = core.close_listener(listener);
                core.run();
                return pair_error(error);
            }
        },
        None => None,
    };
    core.run();
    tracing::info!(%prefix, ?protocol, uid = client.uid, "service registered");
    (Response::Listening { listener, socket }, fd)
}

/// The refusal to answer if `client` may not bind `prefix` now (the bind
/// policy, and its user's `bindings_per_uid`); `None` if it may.
pub(super) fn bind_refusal(client: &Client, core: &Core, prefix: &ServicePrefix) -> Option<Reply> {
    let context = &client.context;
    let verdict = context.policy.check_bind(
        client.uid,
        prefix,
        &core.owners,
        core.host.table(),
        &core.origins,
    );
    if let Err(refusal) = verdict {
        // Per request of an admitted client: not worth more than a debug line.
        tracing::debug!(uid = client.uid, %prefix, %refusal, "bind refused");
        return Some(error_reply(refusal.kind(), refusal.to_string()));
    }
    let held = core.owners.bindings_of(client.uid);
    if held >= context.limits.bindings_per_uid && !client.privileged {
        let message = format!(
            "uid {} holds {held} bindings, the most one user may (bindings_per_uid)",
            client.uid
        );
        context.log_share_refusal(&message);
        return Some(error_reply(ErrorKind::Exhausted, message));
    }
    None
}

/// The most flows one listener may queue (half-open or waiting to be
/// accepted), whatever its binder asks for.
const MAX_BACKLOG: usize = 65_535;

/// The backlog a new listener gets when its binder asked for `asked` and
/// its user's listeners may queue `room` more flows: what was asked, at
/// most [`MAX_BACKLOG`] and `room`, at least one (a listener that can
/// queue nothing is no listener), as Linux cuts a backlog to `somaxconn`
/// without saying so.
///
/// Queued flows are not the user's to count as held (remote peers queue
/// them, and must not use up the user's share: see `owners`), but they
/// are flows of the host's: were each listener's backlog its own, one
/// user binding `bindings_per_uid` listeners at the largest backlog could
/// have peers fill every flow the host has, and lock everyone else out.
/// So an ordinary user's listeners together queue at most
/// `flows_per_uid` flows (plus one per listener beyond it).
fn backlog_within(asked: u32, room: usize) -> usize {
    usize::try_from(asked)
        .unwrap_or(MAX_BACKLOG)
        .min(MAX_BACKLOG)
        .min(room)
        .max(1)
}

/// The backlog `client` gets for a listener when it asked for `asked`
/// and the listener held `held` of its user's room already (0 for a new
/// one): see [`backlog_within`].
fn granted_backlog(client: &Client, owners: &Owners, asked: u32, held: usize) -> usize {
    if client.privileged {
        return backlog_within(asked, usize::MAX);
    }
    let queued = owners.backlog_of(client.uid).saturating_sub(held);
    let room = client.context.limits.flows_per_uid.saturating_sub(queued);
    backlog_within(asked, room)
}

/// Changes the backlog of one of this connection's listeners, within its
/// user's room as at `listen`. A listener keeps counting its largest
/// backlog yet against that room: flows it queued under a larger one stay
/// when it shrinks, and a user who got the room back at once could bind
/// again, fill, shrink, and queue far past its share (a review found 33
/// flows queued at a share of 8 that way).
pub(super) fn set_backlog(client: &mut Client, listener: ListenerId, asked: u32) -> Reply {
    if !client.listeners.contains(&listener) {
        return not_ours(listener);
    }
    if let Some(refused) = super::relay::without_queue(client, listener) {
        return refused;
    }
    let mut core = client.context.shared.lock();
    let core = &mut *core;
    let held = core.owners.binding(listener).map_or(0, |b| b.backlog);
    let backlog = granted_backlog(client, &core.owners, asked, held);
    if let Err(error) = core.host.set_backlog(listener, backlog) {
        return host_error(error);
    }
    core.owners.set_backlog(listener, backlog.max(held));
    (Response::Ok, None)
}

/// Hands over the next flow of one of this connection's listeners; waits
/// for one unless `nonblocking`. The client hanging up, or sending its next
/// request, meanwhile withdraws the accept; that request stays unread, to
/// be read and answered after the accept's refusal.
pub(super) async fn accept(client: &mut Client, listener: ListenerId, nonblocking: bool) -> Reply {
    if !client.listeners.contains(&listener) {
        return not_ours(listener);
    }
    if let Some(refused) = super::relay::without_queue(client, listener) {
        return refused;
    }
    let shared = client.context.shared.clone();
    let flow = if nonblocking {
        let accepted = {
            let mut core = shared.lock();
            let accepted = core.host.accept(listener);
            // What the host says of it goes out now: a drained listener's
            // last flow wakes the drains waiting on it (`Event::Settled`).
            core.run();
            accepted
        };
        match accepted {
            Ok(flow) => flow,
            Err(error) => return host_error(error),
        }
    } else {
        let mut waiter = shared.lock().wait_accept(listener);
        tokio::select! {
            flow = &mut waiter => match flow {
                Ok(flow) => flow,
                Err(_) => return error_reply(ErrorKind::NotFound, "listener closed"),
            },
            arrived = request_or_hang_up(&client.stream) => {
                shared.lock().give_up_accept(listener, waiter);
                return withdrawn(arrived);
            }
        }
    };
    let reply = hand_over(&client.context, client.uid, flow, |flow| {
        Response::Accepted { flow }
    });
    if !nonblocking {
        shared.lock().released(listener);
    }
    reply
}

/// The answer to a blocking accept withdrawn by what came on its
/// connection while it waited.
fn withdrawn(arrived: std::io::Result<bool>) -> Reply {
    match arrived {
        // Unread: the client loop reads it next.
        Ok(true) => error_reply(
            ErrorKind::InvalidRequest,
            "accept withdrawn: a request came while it waited",
        ),
        // Nobody is left to read this.
        Ok(false) | Err(_) => error_reply(ErrorKind::InvalidRequest, "client went away"),
    }
}

/// Unbinds one of this connection's listeners.
pub(super) fn close_listener(client: &mut Client, listener: ListenerId) -> Reply {
    if !client.listeners.contains(&listener) {
        return not_ours(listener);
    }
    client.listeners.retain(|l| *l != listener);
    let (result, _) = client.context.shared.lock().unbind_listener(listener);
    match result {
        Ok(()) => (Response::Ok, None),
        Err(error) => host_error(error),
    }
}

/// Stops one of this connection's stream listeners listening, bound
/// still (see [`sal_control::Request::StopListening`]).
pub(super) fn stop_listening(client: &mut Client, listener: ListenerId) -> Reply {
    if !client.listeners.contains(&listener) {
        return not_ours(listener);
    }
    if let Some(refused) = super::relay::without_queue(client, listener) {
        return refused;
    }
    let mut core = client.context.shared.lock();
    let result = core.stop_listening(listener);
    core.run();
    match result {
        Ok(()) => (Response::Ok, None),
        Err(error) => host_error(error),
    }
}

/// Unbinds everything this connection bound (it is closing).
pub(in crate::control) fn unbind_all(client: &mut Client) {
    if client.listeners.is_empty() {
        return;
    }
    let mut core = client.context.shared.lock();
    for listener in &client.listeners {
        let _ = core.close_listener(*listener);
    }
    core.run();
    for listener in client.listeners.drain(..) {
        core.owners.unbind(listener);
    }
}

pub(super) fn not_ours(listener: ListenerId) -> Reply {
    error_reply(
        ErrorKind::NotFound,
        format!("no listener {listener:?} on this connection"),
    )
}
