//! A stream listener's accept queue: where sald puts its established
//! flows, one message each, for the listener to take.
//!
//! A listener asks for it right after binding ([`Request::Deliver`] with
//! `flow_info`). sald answers with one end of a `SOCK_SEQPACKET`
//! socketpair and from then on sends each established flow into it as a
//! [`FlowNotice`] (the flow's [`FlowInfo`]) with the flow's socket
//! attached. Taking a flow is then one `recvmsg`, no request on the
//! control connection: that connection stays free for `drain` and `close`
//! while threads wait here, any number of threads (or tasks) may wait at
//! once and each message goes to exactly one of them, and a wait given up
//! (a dropped future) takes nothing, since only the `recvmsg` takes a
//! flow.
//!
//! The queue ends (end of file) when sald closes its end: the listener was
//! closed, or sald is gone. Flows sent before that are still taken first.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;
use sal::proto::FlowInfo;
use sal::table::ListenerId;
use sal::ServicePrefix;
use sal_control::{FlowNotice, Request, Response, ACCEPT_EXHAUSTED};

use crate::client::{recv_with_fds, Reply};
use crate::error::{Error, Result};

/// The request that opens a listener's accept queue.
pub(crate) fn deliver_request(listener: ListenerId) -> Request {
    Request::Deliver {
        listener,
        flow_info: true,
    }
}

/// The queue's descriptor out of the `Delivering` answer.
pub(crate) fn queue_from_reply(reply: Reply) -> Result<OwnedFd> {
    match (reply.response, reply.fd) {
        (Response::Delivering { .. }, Some(queue)) => Ok(queue),
        (Response::Error { kind, message }, _) => Err(Error::from_daemon(kind, message)),
        (other, _) => Err(Error::unexpected("deliver", &other)),
    }
}

/// The request that drains a listener: its prefix is unregistered while
/// the flows it admitted can still be accepted.
pub(crate) fn drain_request(prefix: ServicePrefix) -> Request {
    Request::Drain {
        prefix,
        wait_ms: None,
    }
}

/// How many flows a drained listener has not accepted yet, out of sald's
/// `Drained` answer: those it still holds and those waiting in the
/// listener's accept queue, which sald counts too (from the memory they
/// hold in its end of the queue).
pub(crate) fn not_accepted(reply: Reply) -> Result<u32> {
    match reply.response {
        Response::Drained { pending } => Ok(pending),
        Response::Error { kind, message } => Err(Error::from_daemon(kind, message)),
        other => Err(Error::unexpected("drain", &other)),
    }
}

/// Takes the next flow off `queue` if one waits, without waiting.
pub(crate) fn try_take(queue: BorrowedFd<'_>) -> Result<Option<(FlowInfo, OwnedFd)>> {
    match take(queue, MsgFlags::MSG_DONTWAIT) {
        Ok(taken) => taken.map(Some),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Takes one message off `queue` (`flags` besides close-on-exec, say
/// `MSG_DONTWAIT`): a flow and its socket, or why not.
///
/// The outer error is the `recvmsg` failing as it is (`WouldBlock` when
/// nothing is queued and the call may not wait, for readiness loops to
/// retry); the inner one is a message taken that yields no flow: the end
/// of the queue ([`Error::Closed`]), sald out of descriptors for a flow it
/// then reset ([`Error::Exhausted`], `ENOBUFS`, as the kernel's `accept`
/// says it), this process's descriptor table full so that the kernel
/// dropped the flow's socket (`EMFILE`, again as `accept`), or a message
/// that is not a notice.
pub(crate) fn take(
    queue: BorrowedFd<'_>,
    flags: MsgFlags,
) -> io::Result<Result<(FlowInfo, OwnedFd)>> {
    let mut message = [0u8; FlowNotice::LEN];
    let mut received = recv_with_fds(queue, &mut message, flags)?;
    let bytes = &message[..received.bytes];
    Ok(if received.truncated {
        Err(Error::Protocol(
            "a message on the accept queue is longer than a notice".into(),
        ))
    } else if bytes.is_empty() && received.fds.is_empty() {
        Err(Error::Closed)
    } else if received.fds_lost && received.fds.is_empty() {
        Err(Error::Io(io::Error::from_raw_os_error(
            Errno::EMFILE as i32,
        )))
    } else if bytes == ACCEPT_EXHAUSTED {
        Err(Error::Exhausted(
            "sald had no socket for an established flow and reset it".into(),
        ))
    } else {
        match (FlowNotice::decode(bytes), received.fds.len()) {
            (Ok(notice), 1) => Ok((notice.info, received.fds.remove(0))),
            (Ok(_), n) => Err(Error::Protocol(format!(
                "an accept notice came with {n} descriptors"
            ))),
            (Err(error), _) => Err(Error::Protocol(error.to_string())),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::os::fd::{AsFd, AsRawFd};

    use nix::sys::socket::{sendmsg, ControlMessage};

    use super::*;
    use crate::tests::seqpacket_pair as pair;

    fn send(sald: &OwnedFd, message: &[u8], fd: Option<&OwnedFd>) {
        let fds = fd.map(|fd| [fd.as_raw_fd()]);
        let rights: Vec<_> = fds
            .iter()
            .map(|fds| ControlMessage::ScmRights(fds))
            .collect();
        sendmsg::<()>(
            sald.as_raw_fd(),
            &[IoSlice::new(message)],
            &rights,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    #[test]
    fn markers_end_of_queue_and_emptiness_are_told_apart() {
        let (sald, app) = pair();
        assert_eq!(
            take(app.as_fd(), MsgFlags::MSG_DONTWAIT)
                .unwrap_err()
                .kind(),
            io::ErrorKind::WouldBlock
        );
        send(&sald, &ACCEPT_EXHAUSTED, None);
        let exhausted = take(app.as_fd(), MsgFlags::empty()).unwrap().unwrap_err();
        assert_eq!(exhausted.errno(), Errno::ENOBUFS as i32);
        // A notice too long for a notice is refused, not half-read.
        send(&sald, &[0u8; FlowNotice::LEN + 1], None);
        assert!(matches!(
            take(app.as_fd(), MsgFlags::empty()).unwrap(),
            Err(Error::Protocol(_))
        ));
        drop(sald);
        assert!(matches!(
            take(app.as_fd(), MsgFlags::empty()).unwrap(),
            Err(Error::Closed)
        ));
    }
}
