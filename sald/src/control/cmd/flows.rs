//! `Connect`, `OpenDatagram`, and handing a flow over to the client: a
//! socketpair whose other end a pump task serves.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use sal::proto::{ConnectError, FlowInfo};
use sal::wire::TransportProtocol;
use sal::{FlowId, ServiceId};
use sal_control::{ErrorKind, Response};

use super::{connect_error, error_reply, host_error, Reply};
use crate::accept_queue::AcceptQueue;
use crate::app_socket::AppSocket;
use crate::control::client::Client;
use crate::control::ControlContext;
use crate::daemon::Core;
use crate::pump;

/// Opens a flow to `service` for user `uid` and hands it over once
/// established. Needs no client of its own, so that a connector connection
/// ([`crate::control`]'s `Connector`) can run many at once.
pub(in crate::control) async fn connect(
    context: &Arc<ControlContext>,
    uid: u32,
    service: ServiceId,
    protocol: TransportProtocol,
    timeout_ms: Option<u64>,
) -> Reply {
    let shared = &context.shared;
    let (flow, waiter) = {
        let mut core = shared.lock();
        if let Some(refusal) = over_share(context, &core, uid) {
            return refusal;
        }
        let flow = match core.host.connect(service, protocol) {
            Ok(flow) => flow,
            Err(error) => return host_error(error),
        };
        core.owners.adopt(flow, uid);
        let _ = core.host.set_flow_group(flow, budget_group(uid));
        let waiter = core.wait_connect(flow);
        core.run();
        (flow, waiter)
    };
    let outcome = match timeout_ms {
        Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), waiter).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let mut core = shared.lock();
                let _ = core.host.abort(flow);
                let _ = core.host.close(flow);
                core.run();
                return connect_error(ConnectError::TimedOut);
            }
        },
        None => waiter.await,
    };
    match outcome {
        Ok(Ok(_)) => hand_over(context, uid, flow, |flow| Response::Connected { flow }),
        Ok(Err(error)) => connect_error(error),
        Err(_) => connect_error(ConnectError::Refused),
    }
}

/// Opens an unbound datagram socket, served by a pump.
pub(super) fn open_datagram(client: &mut Client) -> Reply {
    let context = client.context.clone();
    let mut core = context.shared.lock();
    if let Some(refusal) = over_share(&context, &core, client.uid) {
        return refusal;
    }
    let socket = match core.host.open_datagram() {
        Ok(socket) => socket,
        Err(error) => return host_error(error),
    };
    match pair(SockType::SeqPacket) {
        Ok((ours, theirs)) => {
            core.owners.adopt(socket, client.uid);
            let signal = core.adopt(socket);
            let shared = context.shared.clone();
            let ration = context.rations.ration(client.uid, client.privileged);
            context.tasks.spawn(move |shutdown| {
                pump::datagram_socket(shared, socket, signal, ours, true, ration, shutdown)
            });
            (Response::DatagramOpened { socket }, Some(theirs))
        }
        Err(error) => {
            let _ = core.host.close_datagram(socket);
            pair_error(error)
        }
    }
}

/// The refusal of a new flow or datagram socket to an ordinary user
/// (`ENOBUFS`, as when sald is out of flows; logged at a bounded rate, like
/// refused clients): see [`share_refusal`].
pub(super) fn over_share(context: &ControlContext, core: &Core, uid: u32) -> Option<Reply> {
    let message = share_refusal(context, core, uid)?;
    context.log_share_refusal(&message);
    Some(error_reply(ErrorKind::Exhausted, message))
}

/// Why ordinary user `uid` may not have one more flow or datagram socket,
/// if it may not: it holds `[limits] flows_per_uid` already, or sald's free
/// descriptors are down to the reserve kept for root and sald's own user
/// ([`descriptor_reserve`]; each flow handed over is a descriptor in sald,
/// and without a reserve one user's accepted flows could take them all,
/// root's control connections with them).
fn share_refusal(context: &ControlContext, core: &Core, uid: u32) -> Option<String> {
    if context.policy.privileged(uid) {
        return None;
    }
    let held = core.owners.held_by(uid);
    let limit = context.limits.flows_per_uid;
    if held >= limit {
        return Some(format!(
            "uid {uid} holds {held} flows, the most one user may (flows_per_uid)"
        ));
    }
    let fd_limit = crate::daemon::fd_limit();
    let usable = fd_limit.saturating_sub(descriptor_reserve(fd_limit));
    // A `stat` of /proc/self/fd (see `fds_open`): flows are not all there
    // is to count (datagram sockets, listeners, control connections hold
    // descriptors too), so no cheaper count stands in for it.
    if fd_limit > 0 && crate::daemon::fds_open() >= usable {
        return Some(format!(
            "sald keeps its last {} of {fd_limit} descriptors for root",
            fd_limit - usable
        ));
    }
    None
}

/// The buffer budget group of `uid`'s flows (see `sal::proto`'s
/// `budget.rs`, `[tcp] buffer_memory_per_uid`): the user's own, root's
/// and sald's own user's too. In no group, bounded by the host's budget
/// alone, their flows could hold all of it, and the host's pressure then
/// stops every flow's growth, everyone else's with them: a remote peer
/// needed only a service of theirs that reads slowly (or a flood of
/// flows to one) to put all other users' flows under pressure. In a
/// group, past their share only their own flows are.
pub(super) fn budget_group(uid: u32) -> u32 {
    if uid == sal::proto::NO_GROUP {
        ROOT_GROUP
    } else {
        uid
    }
}

/// Root's buffer budget group: its user ID, 0, is the host's "no group"
/// ([`sal::proto::NO_GROUP`]), and `(uid_t)-1` names no user.
const ROOT_GROUP: u32 = u32::MAX;

/// Of `fd_limit` descriptors, those ordinary users' flows may not take:
/// a sixteenth, at least 64.
pub(crate) fn descriptor_reserve(fd_limit: u64) -> u64 {
    (fd_limit / 16).max(64).min(fd_limit)
}

/// Why a socketpair for an application could not be made: sald out of
/// descriptors (its own limit, or the system's) or of kernel memory is
/// `Exhausted` (the application sees `ENOBUFS`), anything else internal.
pub(super) fn pair_error(error: io::Error) -> Reply {
    use nix::errno::Errno;
    let exhausted = match error.raw_os_error().map(Errno::from_raw) {
        // All of them are open: no need to count (a walk of /proc/self/fd,
        // perhaps under the core's lock) to say so.
        Some(Errno::EMFILE) => Some(format!(
            "sald is out of file descriptors (all {} in use)",
            crate::daemon::fd_limit()
        )),
        Some(Errno::ENFILE) => Some("the system is out of file descriptors".to_string()),
        Some(Errno::ENOMEM | Errno::ENOBUFS) => Some(format!("sald cannot make a socket: {error}")),
        _ => None,
    };
    match exhausted {
        Some(message) => {
            tracing::warn!("{message}");
            error_reply(ErrorKind::Exhausted, message)
        }
        None => error_reply(ErrorKind::Internal, error.to_string()),
    }
}

/// A connected pair of sockets of `kind`: (ours, the app's).
pub(super) fn pair(kind: SockType) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        kind,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Gives an established flow to user `uid`: a socketpair whose other end
/// is served by a pump task.
pub(super) fn hand_over(
    context: &Arc<ControlContext>,
    uid: u32,
    flow: FlowId,
    respond: impl FnOnce(FlowInfo) -> Response,
) -> Reply {
    match hand_over_flow(context, uid, flow, Handing::Reply) {
        Ok((info, theirs)) => (respond(info), Some(theirs)),
        Err(HandOverError::Gone) => error_reply(
            ErrorKind::Refused,
            "the flow closed before it could be handed over",
        ),
        Err(HandOverError::OverShare(message)) => error_reply(ErrorKind::Exhausted, message),
        Err(HandOverError::Pair(error)) => pair_error(error),
    }
}

/// Why a flow could not be handed over (it is gone either way).
pub(super) enum HandOverError {
    /// It closed before.
    Gone,
    /// Its user may hold no more (see [`share_refusal`]); it was reset.
    OverShare(String),
    /// No socketpair for it (see [`pair_error`]).
    Pair(io::Error),
}

/// How a flow reaches its application, which says when the application
/// has it: when the host may count a server flow as accepted (see
/// `sal::proto`'s `budget.rs`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Handing<'a> {
    /// In the reply to a request (`Connect`, `Accept`): the application
    /// has it at once.
    Reply,
    /// Into the application's accept queue (`Deliver`), from which it
    /// takes the flow when it will, if ever: a stream flow counts as
    /// accepted once its pump sees the application use it or take it
    /// from this queue (see [`pump`]); a datagram flow, which has no
    /// buffers to count, at once.
    AcceptQueue(&'a Arc<AcceptQueue>),
}

/// Makes an established flow `uid`'s: a socketpair whose other end a pump
/// task serves, reaching the application as `handing` says. The
/// application's end and the flow's description.
pub(super) fn hand_over_flow(
    context: &Arc<ControlContext>,
    uid: u32,
    flow: FlowId,
    handing: Handing<'_>,
) -> Result<(FlowInfo, OwnedFd), HandOverError> {
    let shared = &context.shared;
    let mut core = shared.lock();
    let Some(info) = core.host.flow(flow) else {
        return Err(HandOverError::Gone);
    };
    // A connected flow was counted (and checked) when its connect began;
    // an accepted one counts from now on, as a connected one does.
    let counted = core.owners.holds(flow, uid);
    if let Some(message) = (!counted)
        .then(|| share_refusal(context, &core, uid))
        .flatten()
    {
        context.log_share_refusal(&message);
        let _ = core.host.abort(flow);
        let _ = core.host.close(flow);
        core.run();
        return Err(HandOverError::OverShare(message));
    }
    let kind = match info.protocol {
        TransportProtocol::Stream => SockType::Stream,
        TransportProtocol::Datagram => SockType::SeqPacket,
    };
    let (ours, theirs) = match pair(kind) {
        Ok(pair) => pair,
        Err(error) => {
            let _ = core.host.abort(flow);
            let _ = core.host.close(flow);
            core.run();
            return Err(HandOverError::Pair(error));
        }
    };
    core.owners.adopt(flow, uid);
    // Its listener's group already, unless that was someone else's.
    let _ = core.host.set_flow_group(flow, budget_group(uid));
    // Its notice goes into the queue next (the feeder sends one at a time).
    let queued = match (handing, info.protocol) {
        (Handing::AcceptQueue(queue), TransportProtocol::Stream) => Some(pump::Queued {
            queue: queue.clone(),
            place: queue.next_place(),
        }),
        (Handing::Reply, _) | (Handing::AcceptQueue(_), TransportProtocol::Datagram) => None,
    };
    if queued.is_none() {
        // The application has it now (nothing changes for a connected
        // flow, which no listener opened).
        let _ = core.host.accepted(flow);
    }
    let signal = core.adopt(flow);
    let shared = shared.clone();
    match info.protocol {
        TransportProtocol::Stream => match AppSocket::new(ours) {
            Ok(socket) => context.tasks.spawn(move |shutdown| {
                pump::stream(shared, flow, signal, socket, queued, shutdown)
            }),
            Err(error) => {
                core.disown(flow);
                let _ = core.host.abort(flow);
                let _ = core.host.close(flow);
                core.run();
                return Err(HandOverError::Pair(error));
            }
        },
        TransportProtocol::Datagram => {
            let ration = context.rations.ration(uid, context.policy.privileged(uid));
            context.tasks.spawn(move |shutdown| {
                pump::datagram_flow(shared, flow, signal, ours, ration, shutdown)
            })
        }
    }
    Ok((info, theirs))
}
