//! One control connection: `Hello` first, then one request at a time (or,
//! after `Subscribe`, events; after `Connector`, many connects at once),
//! until the client leaves, breaks the protocol, idles out, or the daemon
//! stops.
//! Whatever a client does costs only that client its connection and the
//! listeners it created.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{recv, MsgFlags};
use sal::table::ListenerId;
use sal_control::{ErrorKind, Request, Response, PROTOCOL_VERSION};
use tokio::sync::OwnedSemaphorePermit;

use super::frame::{write_response, FrameCharge, Payer, ReadError};
use super::limits::Admitted;
use super::ration::Timed;
use super::{cmd, connector, subscribe, ControlContext};
use crate::app_socket::{AppSocket, PeerEnd};
use crate::shutdown::Shutdown;

/// A connected client and what it holds.
pub(super) struct Client {
    pub(super) context: Arc<ControlContext>,
    pub(super) stream: AppSocket,
    /// Its user (peer credentials at connect time).
    pub(super) uid: u32,
    /// Root or sald's own user.
    pub(super) privileged: bool,
    /// The listeners it bound; unbound when it goes.
    pub(super) listeners: Vec<ListenerId>,
    /// `Shared::relays_ended` when `listeners` was last pruned of relays
    /// sald ended itself.
    relays_ended: u64,
    /// The descriptor that came with the request being handled, if any
    /// (`SCM_RIGHTS` on its frame's first byte): a request that expects
    /// one takes it; any other is closed when the next request is read.
    pub(super) attached: Option<OwnedFd>,
    /// The memory of the request being handled, charged to the control
    /// socket's frame budget until its answer is written
    /// ([`FrameCharge`]).
    charge: Option<FrameCharge>,
}

/// What a client holds from the accept loop: a place among the connections
/// and among its user's.
pub(super) struct Slot {
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) _admitted: Admitted,
}

impl Client {
    pub(super) fn new(context: Arc<ControlContext>, stream: AppSocket, uid: u32) -> Client {
        let privileged = context.policy.privileged(uid);
        Client {
            context,
            stream,
            uid,
            privileged,
            listeners: Vec::new(),
            relays_ended: 0,
            attached: None,
            charge: None,
        }
    }

    /// Serves the client until it is done or the daemon stops, then
    /// releases what it held.
    pub(super) async fn run(mut self, mut shutdown: Shutdown, slot: Slot) {
        self.context.shared.lock().control_clients += 1;
        tokio::select! {
            result = self.serve() => {
                if let Err(error) = result {
                    tracing::debug!(uid = self.uid, %error, "control client ended");
                }
            }
            () = shutdown.recv() => {}
        }
        cmd::unbind_all(&mut self);
        self.context.shared.lock().control_clients -= 1;
        drop(slot);
    }

    /// How long the client may stay silent between requests: ordinary
    /// users' connections that hold no listener are closed when idle.
    fn idle_limit(&mut self) -> Option<Duration> {
        self.forget_ended_relays();
        (!self.privileged && self.listeners.is_empty())
            .then(|| Duration::from_secs(self.context.limits.idle_secs))
    }

    /// Forgets the listeners of this connection that sald ended itself
    /// (relays whose port became shareable), if it ended any since the
    /// last look: one atomic load otherwise.
    fn forget_ended_relays(&mut self) {
        let ended = self.context.shared.relays_ended.load(Ordering::Relaxed);
        if ended == self.relays_ended || self.listeners.is_empty() {
            return;
        }
        self.relays_ended = ended;
        let core = self.context.shared.lock();
        self.listeners
            .retain(|&listener| core.owners.binding(listener).is_some());
    }

    /// Reads the next request; a failure is answered (best effort) before
    /// it is returned.
    pub(super) async fn read_request(
        &mut self,
        idle: Option<Duration>,
    ) -> anyhow::Result<Option<Request>> {
        let context = self.context.clone();
        let payer = Payer {
            uid: self.uid,
            privileged: self.privileged,
        };
        self.attached = None;
        self.charge = None;
        match context
            .reader
            .read_attached(&mut self.stream, payer, idle)
            .await
        {
            Ok(Some(received)) => {
                self.attached = received.attached;
                self.charge = Some(received.charge);
                Ok(Some(received.request))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                let kind = match &error {
                    ReadError::Idle(_) | ReadError::Partial(_) => ErrorKind::TimedOut,
                    ReadError::NoMemory { .. } | ReadError::OverShare { .. } => {
                        ErrorKind::Exhausted
                    }
                    ReadError::Malformed(_) | ReadError::Unknown(_) | ReadError::Io(_) => {
                        ErrorKind::InvalidRequest
                    }
                };
                let _ = self
                    .respond(&Response::error(kind, error.to_string()), None)
                    .await;
                Err(error.into())
            }
        }
    }

    /// Writes an encoded response frame, which the client must take
    /// within the frame timeout.
    pub(super) async fn respond_frame(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let timeout = self.context.reader.timeout();
        tokio::time::timeout(timeout, self.stream.write_all(frame))
            .await
            .map_err(|_| anyhow::anyhow!("response not taken within {timeout:?}"))??;
        Ok(())
    }

    /// Writes a response, which the client must take within the frame
    /// timeout.
    pub(super) async fn respond(
        &mut self,
        response: &Response,
        fd: Option<std::os::fd::OwnedFd>,
    ) -> anyhow::Result<()> {
        let timeout = self.context.reader.timeout();
        tokio::time::timeout(timeout, write_response(&mut self.stream, response, fd))
            .await
            .map_err(|_| anyhow::anyhow!("response not taken within {timeout:?}"))??;
        Ok(())
    }

    async fn serve(&mut self) -> anyhow::Result<()> {
        let hello_within = self.context.reader.timeout();
        let reply = match self.read_request(Some(hello_within)).await? {
            Some(Request::Hello { version, .. }) if version == PROTOCOL_VERSION => {
                Response::Hello {
                    version: PROTOCOL_VERSION,
                    server: format!("sald {}", env!("CARGO_PKG_VERSION")),
                }
            }
            Some(Request::Hello { version, .. }) => {
                let reply = Response::error(
                    ErrorKind::VersionMismatch,
                    format!(
                        "protocol version {version} not supported; sald speaks {PROTOCOL_VERSION}"
                    ),
                );
                return self.respond(&reply, None).await;
            }
            Some(_) => {
                let reply =
                    Response::error(ErrorKind::InvalidRequest, "the first request must be hello");
                return self.respond(&reply, None).await;
            }
            None => return Ok(()),
        };
        self.respond(&reply, None).await?;
        let rations = self.context.rations.clone();
        let (uid, privileged) = (self.uid, self.privileged);
        loop {
            // Reading and decoding a request, and encoding and writing its
            // answer, are work on the thread like handling it: for a cheap
            // request most of it. Unmetered, 8 connections looping `Stats`
            // took about 70% of the thread (`benches/control_isolation.rs`).
            // Timed, and charged once the request shows whether it is exempt.
            let idle = self.idle_limit();
            let (read, reading) = Timed::new(self.read_request(idle)).await;
            let request = match read {
                Ok(Some(request)) => request,
                Ok(None) => return Ok(()),
                // A request this sald does not know, answered as refused:
                // the connection goes on, so that a newer client can tell
                // (and a newer request fail alone). Charged as any.
                Err(error) if is_unknown(&error) => {
                    rations.charge_for(uid, privileged, reading);
                    rations.wait(uid, privileged).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if request == Request::Subscribe {
                self.charge = None;
                return subscribe::stream_events(self).await;
            }
            if request == Request::Connector {
                self.charge = None;
                return connector::serve(self).await;
            }
            // Metered (see `control::ration`), except connects: each is a
            // flow within the user's share, and a client's connection rate
            // must be sald's, not a quarter of it.
            let exempt = privileged || matches!(request, Request::Connect { .. });
            rations.charge_for(uid, exempt, reading);
            rations.wait(uid, exempt).await;
            let (response, fd) = rations.meter(uid, exempt, cmd::handle(self, request)).await;
            rations
                .meter(uid, exempt, self.respond(&response, fd))
                .await?;
            self.charge = None;
        }
    }
}

/// Whether `error` is a request this sald does not know (see
/// [`ReadError::Unknown`]).
fn is_unknown(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ReadError>(),
        Some(ReadError::Unknown(_))
    )
}

/// Waits until the next request (or the end of the connection) is there
/// to read: true once a byte of it is, false at the end of the connection.
/// Peeks rather than trusting readiness alone: readiness left over from
/// the last frame (read exactly, never to `EAGAIN`) would have a caller
/// block in the middle of reading while answers wait. Reads nothing, so
/// dropping it, or reading the request after it, loses nothing.
pub(super) async fn request_arrives(stream: &AppSocket) -> io::Result<bool> {
    let mut byte = [0u8; 1];
    stream
        .read_with(|fd| Ok(recv(fd, &mut byte, MsgFlags::MSG_PEEK)?))
        .await
        .map(|peeked| peeked > 0)
}

/// Like [`request_arrives`], for a wait on the client's behalf that
/// stops when the client leaves: true once a request is there, false
/// once the client hung up. A client that only shut its end for sending
/// (its last request written) is still there to read the answer, so its
/// end of file alone ends nothing.
pub(super) async fn request_or_hang_up(stream: &AppSocket) -> io::Result<bool> {
    if request_arrives(stream).await? {
        return Ok(true);
    }
    if stream.peer_end() == PeerEnd::Shut {
        stream.hung_up().await?;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    use super::*;

    #[tokio::test]
    async fn waiting_for_a_request_reads_none_of_it() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let mut ours = AppSocket::new(OwnedFd::from(ours)).unwrap();
        let mut theirs = UnixStream::from_std(theirs).unwrap();
        let waiting = tokio::spawn(async move {
            let arrived = request_arrives(&ours).await.unwrap();
            (ours, arrived)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        theirs.write_all(b"frame").await.unwrap();
        let (socket, arrived) = waiting.await.unwrap();
        ours = socket;
        assert!(arrived);
        // Seen twice, read once, whole.
        assert!(request_arrives(&ours).await.unwrap());
        let mut read = [0u8; 5];
        ours.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"frame");
        drop(theirs);
        assert!(!request_arrives(&ours).await.unwrap(), "end of connection");
    }
}
