//! Idle control connections, kept for the program's next connect.
//!
//! Opening a control connection costs a `connect` (sald accepts it, checks
//! the peer's credentials and starts a task for it), a `Hello` round trip
//! and, at the end, a `close` on both sides: more than the `Connect` itself
//! once the flow's handshake is done. A connect therefore takes an idle
//! connection from here when there is one and puts it back afterwards; a
//! fresh one sends its `Hello` and the `Connect` in one write
//! ([`ControlClient::connect_with`]).
//!
//! A kept connection is a descriptor in the program's table, which the
//! program may close or reuse behind the shim's back (`closefrom`, `dup2`
//! over it), and which a forked child inherits. So a connection is only
//! reused by the process that kept it, only while its descriptor still
//! refers to the same socket (device and inode, as the descriptor
//! [`table`](crate::table) checks its entries), only for the control socket
//! the environment names now, and only for [`MAX_IDLE`] (well below sald's
//! idle limit for ordinary users, 60 s by default); anything else is
//! forgotten without closing a descriptor that may no longer be ours. The
//! pool's lock is only ever tried: a thread that finds it taken (or a
//! forked child whose parent held it) just opens a fresh connection.

use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sal_control::Request;
use socket_shim::client::default_client_name;
use socket_shim::control_path;
use socket_shim::{ControlClient, Error as ShimError, Reply};

use crate::table::ident;

/// How many idle connections are kept at most.
const MAX_KEPT: usize = 16;
/// How long an idle connection is kept.
const MAX_IDLE: Duration = Duration::from_secs(10);

/// One idle connection and what it must still match to be reused.
struct Kept {
    control: ControlClient,
    ident: (u64, u64),
    pid: u32,
    since: Instant,
}

static POOL: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

/// Sends `request` to sald and returns its answer (an error response as
/// the matching error), on a kept connection if there is a usable one,
/// else on a fresh one, which is kept afterwards. A kept connection that
/// turns out to be closed (sald restarted) is replaced by a fresh one,
/// once, before sald could have acted on the request.
pub(crate) fn request(request: &Request) -> Result<Reply, ShimError> {
    if let Some(mut control) = take() {
        match control.request(request) {
            Ok(reply) => {
                give(control);
                return Ok(reply);
            }
            Err(ShimError::Closed) => drop(control),
            // Whatever else went wrong, the connection is not kept (sald
            // closes some after an error response).
            Err(error) => return Err(error),
        }
    }
    let (control, reply) =
        ControlClient::connect_with(control_path(), &default_client_name(), request)?;
    give(control);
    Ok(reply)
}

/// How [`request_interruptible`] ended.
pub(crate) enum Sent {
    /// sald's answer (an error response as the matching error), or why
    /// the request could not be made.
    Answered(Result<Reply, ShimError>),
    /// A signal interrupted the wait: the request went out and its answer
    /// is still to come on this connection ([`ControlClient::answer`]);
    /// [`give`] it back once it is read.
    Interrupted(ControlClient),
}

/// [`request`], waiting for the answer in one plain blocking `recvmsg`
/// that a signal interrupts as the system call the caller stands in for
/// (see [`ControlClient::answer_interruptible`]): restarted by the kernel
/// after a handler with `SA_RESTART`, else handed back with the request
/// in flight. It makes no more system calls than [`request`] (fewer: no
/// `poll` and no look at the receive timeout).
pub(crate) fn request_interruptible(request: &Request) -> Sent {
    if let Some(mut control) = take() {
        let sent = match control.send(request) {
            Ok(()) => answered(control),
            Err(error) => Sent::Answered(Err(error)),
        };
        // A kept connection sald closed (it restarted) is replaced once,
        // as in [`request`].
        if !matches!(sent, Sent::Answered(Err(ShimError::Closed))) {
            return sent;
        }
    }
    match ControlClient::open_with(control_path(), &default_client_name(), request) {
        Ok(control) => answered(control),
        Err(error) => Sent::Answered(Err(error)),
    }
}

/// Reads the answer to the request just sent on `control`, keeping the
/// connection if it is still usable.
fn answered(mut control: ControlClient) -> Sent {
    // No handler can interrupt the wait: the wait that filters futile
    // wake-ups (see `signals`).
    let answer = match crate::signals::may_interrupt() {
        true => control.answer_interruptible(),
        false => control.answer(),
    };
    match answer {
        Err(ShimError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
            Sent::Interrupted(control)
        }
        Ok(reply) => {
            give(control);
            Sent::Answered(Ok(reply))
        }
        Err(error) => Sent::Answered(Err(error)),
    }
}

/// A kept connection still valid for this process and the current
/// control socket path.
fn take() -> Option<ControlClient> {
    let mut pool = POOL.try_lock().ok()?;
    let pid = std::process::id();
    let path = control_path();
    while let Some(kept) = pool.pop() {
        let valid = kept.pid == pid
            && kept.since.elapsed() < MAX_IDLE
            && kept.control.path() == path
            && ident(kept.control.as_fd().as_raw_fd()) == kept.ident;
        if valid {
            return Some(kept.control);
        }
        let same_socket = kept.pid == pid && ident(kept.control.as_fd().as_raw_fd()) == kept.ident;
        if same_socket {
            drop(kept.control);
        } else {
            forget(kept.control);
        }
    }
    None
}

/// Keeps `control` for the next request, if there is room.
pub(crate) fn give(control: ControlClient) {
    let kept = Kept {
        ident: ident(control.as_fd().as_raw_fd()),
        control,
        pid: std::process::id(),
        since: Instant::now(),
    };
    match POOL.try_lock() {
        Ok(mut pool) if pool.len() < MAX_KEPT => pool.push(kept),
        _ => drop(kept),
    }
}

/// Lets go of a connection whose descriptor number may belong to someone
/// else now (or that is broken): nothing is closed.
fn forget(control: ControlClient) {
    let _ = control.into_raw_fd();
}
