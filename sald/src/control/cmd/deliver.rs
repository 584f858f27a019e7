//! `Deliver`: a listener's flows go straight into the application's
//! accept queue, one message and one descriptor each.
//!
//! With `Accept`, every flow costs a round trip on the control connection
//! (the request, sald's reply with the descriptor), and an application that
//! wants kernel-like `accept`/`epoll` semantics needs a thread of its own
//! to make those round trips and pass the flows on. Here sald does the
//! passing: one `sendmsg` per flow into a `SOCK_SEQPACKET` socketpair whose
//! other end the application accepts from. That is one wake-up and one
//! hand-over per flow instead of three, and no thread in the application.
//!
//! What sald pushes ahead is bounded by a quarter of the queue's socket
//! buffer (about 70 flows at Linux's default; a fuller queue's takes make
//! no sound, see [`crate::accept_queue`]): past it the task waits for the
//! program's takes and the remaining flows stay in the listener's
//! backlog, where the SAL's own limits apply to them. (Bounded by the
//! whole buffer, a queue held 278 flows, the figures below.)
//!
//! A flow in the queue is no more the application's than one in the
//! backlog: the application may take it late, or never, while its peer
//! sends. So it leaves the backlog ([`sal::proto::Host::take`]: it no
//! longer counts against the backlog, nor among the host's pending flows)
//! but the host still counts it as not accepted, its buffers small and
//! charged to its listener, until its pump sees the application use it
//! (see [`crate::pump`]); and a drain counts it as pending until the
//! application has taken it out of the queue, which sald tells from the
//! queue's own memory (see [`crate::accept_queue`]). sald's end of its
//! socket holds little of what the peer sent meanwhile, as that is kernel
//! memory no budget counts (57 MiB for a full queue's 278 flows at
//! Linux's default socket buffer, 9 MiB now). Counted as accepted once
//! queued, a few hundred queued flows that a peer filled, each growing to
//! its 1 MiB window, held the user's whole buffer share (260 MiB at the
//! default budgets) and put its other flows under pressure. A datagram
//! flow, which has no buffers to count, is accepted as it is queued.
//!
//! A cost this has on Linux before 6.19 (net-next's "af_unix: Don't trigger
//! GC from close() if unnecessary", November 2025): a descriptor waiting in
//! the queue is a unix socket in flight, and while any unix socket is in
//! flight anywhere on the host, every close of a unix socket schedules the
//! unix garbage collector (a work item, a kworker wake-up, a walk over what
//! is in flight). A listener whose application lags behind thus makes every
//! flow's close on the host a little dearer: measured with the flows bench,
//! `queue_work_on` from `unix_release_sock` took 4.6 % of the server
//! daemon's samples while two listeners' queues were full of undelivered
//! flows (and none in a run without them). Its effect on the rate is
//! within this machine's noise, though: with the bench's 100,000 idle
//! flows fed into such queues or left in sald's backlog instead, setup
//! beside them ran at 0.77-0.99 and 0.70-1.20 of alone (five and eight
//! runs). Newer kernels only collect when a cycle is possible.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::sys::socket::SockType;
use sal::table::ListenerId;
use sal::FlowId;
use sal_control::{AcceptNotice, ErrorKind, FlowNotice, Response, ACCEPT_EXHAUSTED};

use super::flows::{hand_over_flow, pair, pair_error, HandOverError, Handing};
use super::{error_reply, not_ours, Reply};
use crate::accept_queue::AcceptQueue;
use crate::control::client::Client;
use crate::control::ControlContext;
use crate::daemon::Claim;
use crate::shutdown::Shutdown;

/// Starts feeding `listener`'s flows into a new accept queue and answers
/// with the application's end of it; each notice carries the flow's
/// whole description if `flow_info` (a [`FlowNotice`]), else only the
/// service and the peer (an [`AcceptNotice`]).
pub(super) fn deliver(client: &mut Client, listener: ListenerId, flow_info: bool) -> Reply {
    if !client.listeners.contains(&listener) {
        return not_ours(listener);
    }
    if let Some(refused) = super::relay::without_queue(client, listener) {
        return refused;
    }
    let context = client.context.clone();
    // One queue per listener: each holds a descriptor and a task in sald
    // that no limit counts, so more would let a user spend them at will.
    let Some(claim) = context.shared.lock().start_delivering(listener) else {
        return error_reply(
            ErrorKind::InvalidRequest,
            format!("listener {} already delivers its flows", listener.0),
        );
    };
    let delivering = Delivering {
        context: context.clone(),
        listener,
        claim,
    };
    let (ours, theirs) = match pair(SockType::SeqPacket) {
        Ok(pair) => pair,
        Err(error) => return pair_error(error),
    };
    let uid = client.uid;
    let tasks = context.tasks.clone();
    tasks.spawn(move |shutdown| async move {
        feed(context, uid, (listener, claim), flow_info, ours, shutdown).await;
        drop(delivering);
    });
    (Response::Delivering { listener }, Some(theirs))
}

/// A listener's place in `Core::delivering`, given up when its feeder
/// ends (or never starts): the application may then ask again.
struct Delivering {
    context: Arc<ControlContext>,
    listener: ListenerId,
    claim: Claim,
}

impl Drop for Delivering {
    fn drop(&mut self) {
        self.context
            .shared
            .lock()
            .stop_delivering(self.listener, self.claim);
    }
}

/// Hands each established flow of `listener` to `uid` through `queue`
/// until the listener closes or stops listening ([`AcceptQueue::stop`]),
/// the application closes every copy of its end (or writes into it, which
/// only a misbehaving program does: see [`AcceptQueue::closed`]), or the
/// daemon stops. The flows not handed over stay in the listener's
/// backlog, for an `Accept` or a new queue.
async fn feed(
    context: Arc<ControlContext>,
    uid: u32,
    (listener, claim): (ListenerId, Claim),
    flow_info: bool,
    queue: OwnedFd,
    mut shutdown: Shutdown,
) {
    let notice_len = if flow_info {
        FlowNotice::LEN
    } else {
        AcceptNotice::LEN
    };
    let Ok(queue) = AcceptQueue::new(queue, notice_len).map(Arc::new) else {
        return;
    };
    // Drains count what the program has not taken from it.
    if !context
        .shared
        .lock()
        .delivering_into(listener, claim, queue.clone())
    {
        // The listener stopped listening before this feeder ran.
        return;
    }
    // One watch for the whole life of the queue: a new one per flow would
    // start with a read, a wasted system call per flow.
    let closed = queue.closed();
    tokio::pin!(closed);
    loop {
        let mut waiter = {
            let mut core = context.shared.lock();
            if !core.still_delivering(listener, claim) {
                // The listener stopped listening while a flow was handed
                // over.
                return;
            }
            core.wait_accept(listener)
        };
        let flow = tokio::select! {
            flow = &mut waiter => match flow {
                Ok(flow) => Some(flow),
                // The listener closed, or stopped listening.
                Err(_) => return,
            },
            () = &mut closed => None,
            () = shutdown.recv() => None,
        };
        let Some(flow) = flow else {
            context.shared.lock().give_up_accept(listener, waiter);
            return;
        };
        let fed = feed_one(&context, uid, flow, flow_info, &queue, &mut shutdown).await;
        context.shared.lock().released(listener);
        if !fed {
            return;
        }
    }
}

/// Hands one flow of the listener to the application through `queue`;
/// whether to go on with the next. A flow held while the listener stops
/// listening ([`AcceptQueue::stop`], while the queue had no room for it)
/// is reset rather than sent, as the flows of a TCP listener's accept
/// queue are when it stops, and the feeder ends.
async fn feed_one(
    context: &Arc<ControlContext>,
    uid: u32,
    flow: FlowId,
    flow_info: bool,
    queue: &Arc<AcceptQueue>,
    shutdown: &mut Shutdown,
) -> bool {
    let (info, fd) = match hand_over_flow(context, uid, flow, Handing::AcceptQueue(queue)) {
        Ok(handed) => handed,
        Err(HandOverError::Gone) => return true,
        Err(refused @ (HandOverError::OverShare(_) | HandOverError::Pair(_))) => {
            // The user holds its share, or sald is out of descriptors or
            // memory: the flow was reset. The application's next accept
            // says so; the next flow may find room.
            if let HandOverError::Pair(error) = refused {
                tracing::warn!(%error, "no socket for an accepted flow");
            }
            return tokio::select! {
                sent = queue.send(&ACCEPT_EXHAUSTED) => sent.is_ok(),
                () = shutdown.recv() => false,
            };
        }
    };
    let long;
    let short;
    let notice: &[u8] = if flow_info {
        long = FlowNotice { info }.encode();
        &long
    } else {
        short = AcceptNotice {
            service: info.service,
            remote: info.remote,
        }
        .encode();
        &short
    };
    tokio::select! {
        biased;
        () = queue.stopped() => {
            let mut core = context.shared.lock();
            let _ = core.host.abort(flow);
            core.run();
            false
        }
        // An error: the application closed its end, and the flow's socket
        // goes with `fd` (its pump ends the flow).
        sent = queue.send_with_fd(notice, &fd) => sent.is_ok(),
        () = shutdown.recv() => false,
    }
}
