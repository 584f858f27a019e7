//! Frames on the control socket, read and written with bounds.
//!
//! A request frame's buffer grows with the bytes actually received (never
//! from the length a client announces), in steps charged to one
//! [`FrameBudget`] shared by every connection: the memory all clients'
//! frames take together is bounded, and a frame that would exceed the budget
//! costs its connection. Within it, an ordinary user's frames together may
//! take an eighth, and ordinary users all together three quarters: the rest
//! is kept for root and sald's own user (servd, `servalctl`), so that one
//! user's half-sent frames cannot lock everybody else out. The first byte of a frame may be waited for as long
//! as the caller allows (`idle`); once a frame has started, the rest must
//! arrive within the frame timeout.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sal_control::{decode_body, encode_frame, frame_len, FrameError, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app_socket::AppSocket;

/// Bytes read from the socket per step of a frame.
const STEP: usize = 16 * 1024;

/// Why no request could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No frame started within the idle time allowed.
    #[error("idle for {0:?}: closing")]
    Idle(Duration),
    /// A frame started but did not finish in time.
    #[error("frame not completed within {0:?}")]
    Partial(Duration),
    /// Taking the frame would exceed the control socket's memory budget.
    #[error("control socket memory exhausted ({limit} bytes for all clients' frames)")]
    NoMemory {
        /// The budget.
        limit: usize,
    },
    /// Taking the frame would exceed what ordinary users' frames may take:
    /// this user's share, or all ordinary users' together.
    #[error("control socket memory exhausted for ordinary users ({limit} bytes)")]
    OverShare {
        /// The share or pool that would be exceeded.
        limit: usize,
    },
    /// Too large, or not a request.
    #[error(transparent)]
    Malformed(#[from] FrameError),
    /// A whole frame whose body is no request this sald knows: a newer
    /// client's (the protocol grows without a version change), or not
    /// one at all. The stream is still in step.
    #[error("unknown request ({0}); is this sald older than its client?")]
    Unknown(FrameError),
    /// The socket failed (or the client left mid-frame).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The bytes all connections' request frames may take at once, with the
/// shares of ordinary users (see the module docs).
#[derive(Debug)]
pub struct FrameBudget {
    limit: usize,
    usage: Mutex<Usage>,
}

/// What is charged now.
#[derive(Debug, Default)]
struct Usage {
    total: usize,
    /// All ordinary users' frames.
    ordinary: usize,
    /// Each ordinary user's frames (users with none have no entry).
    per_uid: HashMap<u32, usize>,
}

/// Who a frame's memory is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payer {
    /// The connection's user.
    pub uid: u32,
    /// Root or sald's own user: bounded by the whole budget only.
    pub privileged: bool,
}

impl FrameBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<FrameBudget> {
        Arc::new(FrameBudget {
            limit,
            usage: Mutex::new(Usage::default()),
        })
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.usage().total
    }

    /// What one ordinary user's frames may take together.
    fn share(&self) -> usize {
        self.limit / 8
    }

    /// What all ordinary users' frames may take together.
    fn ordinary_pool(&self) -> usize {
        self.limit - self.limit / 4
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        // The counts stay consistent whatever a panicking holder did.
        self.usage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn charge(&self, payer: Payer, bytes: usize) -> Result<(), ReadError> {
        let mut usage = self.usage();
        let total = usage.total.saturating_add(bytes);
        if total > self.limit {
            return Err(ReadError::NoMemory { limit: self.limit });
        }
        if !payer.privileged {
            let mine = usage.per_uid.get(&payer.uid).copied().unwrap_or(0) + bytes;
            if mine > self.share() {
                return Err(ReadError::OverShare {
                    limit: self.share(),
                });
            }
            let ordinary = usage.ordinary + bytes;
            if ordinary > self.ordinary_pool() {
                return Err(ReadError::OverShare {
                    limit: self.ordinary_pool(),
                });
            }
            usage.ordinary = ordinary;
            usage.per_uid.insert(payer.uid, mine);
        }
        usage.total = total;
        Ok(())
    }

    fn release(&self, payer: Payer, bytes: usize) {
        let mut usage = self.usage();
        usage.total = usage.total.saturating_sub(bytes);
        if !payer.privileged {
            usage.ordinary = usage.ordinary.saturating_sub(bytes);
            if let Some(mine) = usage.per_uid.get_mut(&payer.uid) {
                *mine = mine.saturating_sub(bytes);
                if *mine == 0 {
                    usage.per_uid.remove(&payer.uid);
                }
            }
        }
    }
}

/// A frame body being received; its memory is charged to the budget until
/// it is dropped.
struct Body {
    bytes: Vec<u8>,
    /// What is charged to the budget: the capacity of `bytes`.
    charged: usize,
    budget: Arc<FrameBudget>,
    payer: Payer,
}

impl Body {
    /// Once the buffer is full: room for at least the next step, growing
    /// geometrically but never past the frame's length `len`; charges what
    /// was added.
    fn grow(&mut self, len: usize) -> Result<(), ReadError> {
        let step = (len - self.bytes.len()).min(STEP);
        let target = (self.bytes.len() + step).max((self.bytes.capacity() * 2).min(len));
        self.budget.charge(self.payer, target - self.charged)?;
        self.charged = target;
        self.bytes.reserve_exact(target - self.bytes.len());
        // `reserve_exact` may round up: charge what is really held.
        let extra = self.bytes.capacity().saturating_sub(self.charged);
        if extra > 0 {
            self.budget.charge(self.payer, extra)?;
            self.charged += extra;
        }
        Ok(())
    }
}

impl Body {
    /// The frame read: its bytes go, its charge stays (see [`FrameCharge`]).
    fn into_charge(mut self) -> FrameCharge {
        FrameCharge {
            charged: std::mem::take(&mut self.charged),
            budget: Arc::clone(&self.budget),
            payer: self.payer,
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.budget.release(self.payer, self.charged);
    }
}

/// A whole frame's memory, still charged to the budget after its bytes
/// were decoded, until its request has been handled: what the request
/// decoded into (an `Adopt`'s buffers, up to a quarter of a frame) is
/// then bounded by the budget too, however many connections hand sald
/// large requests at once. Released when dropped.
#[derive(Debug)]
pub struct FrameCharge {
    charged: usize,
    budget: Arc<FrameBudget>,
    payer: Payer,
}

impl Drop for FrameCharge {
    fn drop(&mut self) {
        self.budget.release(self.payer, self.charged);
    }
}

/// A request as read: the request, the descriptor that rode on its
/// frame's first byte (`SCM_RIGHTS`) if one did, and its frame's charge.
#[derive(Debug)]
pub struct Received {
    /// The request.
    pub request: Request,
    /// The descriptor attached to the frame, if any.
    pub attached: Option<OwnedFd>,
    /// The frame's memory, charged until this is dropped.
    pub charge: FrameCharge,
}

/// Reads requests with the daemon's bounds.
#[derive(Debug, Clone)]
pub struct FrameReader {
    budget: Arc<FrameBudget>,
    timeout: Duration,
}

impl FrameReader {
    /// A reader charging `budget` and allowing `timeout` per started frame.
    pub fn new(budget: Arc<FrameBudget>, timeout: Duration) -> FrameReader {
        FrameReader { budget, timeout }
    }

    /// How long a started frame may take (also used for hello and for a
    /// client to take its response).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reads the next request, its memory charged to `payer`; `Ok(None)`
    /// on a clean end of connection between frames. `idle` bounds the wait
    /// for the frame's first byte.
    pub async fn read(
        &self,
        stream: &mut AppSocket,
        payer: Payer,
        idle: Option<Duration>,
    ) -> Result<Option<Request>, ReadError> {
        Ok(self
            .read_attached(stream, payer, idle)
            .await?
            .map(|received| received.request))
    }

    /// [`FrameReader::read`], with the descriptor that rode on the frame's
    /// first byte (`SCM_RIGHTS`), if one did (a request that hands sald a
    /// socket, `Relay` or `Adopt`, sends it so; a descriptor anywhere else
    /// in a frame is closed by the kernel as the bytes are read), and the
    /// frame's charge, for the caller to keep until the request is handled.
    pub async fn read_attached(
        &self,
        stream: &mut AppSocket,
        payer: Payer,
        idle: Option<Duration>,
    ) -> Result<Option<Received>, ReadError> {
        let mut prefix = [0u8; 4];
        // Usually the whole prefix in one read; a frame has started once
        // any of it is here.
        let first = stream.recv_with_fd(&mut prefix);
        let (n, attached) = match idle {
            Some(idle) => tokio::time::timeout(idle, first)
                .await
                .map_err(|_| ReadError::Idle(idle))??,
            None => first.await?,
        };
        if n == 0 {
            return Ok(None);
        }
        let rest = async {
            stream.read_exact(&mut prefix[n..]).await?;
            let len = frame_len(prefix)?;
            let mut body = Body {
                bytes: Vec::new(),
                charged: 0,
                budget: self.budget.clone(),
                payer,
            };
            while body.bytes.len() < len {
                if body.bytes.len() == body.bytes.capacity() {
                    body.grow(len)?;
                }
                let room = (len - body.bytes.len()).min(body.bytes.capacity() - body.bytes.len());
                let read = (&mut *stream)
                    .take(room as u64)
                    .read_buf(&mut body.bytes)
                    .await?;
                if read == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
            }
            let request = decode_body(&body.bytes).map_err(ReadError::Unknown)?;
            Ok::<_, ReadError>((request, body.into_charge()))
        };
        let (request, charge) = tokio::time::timeout(self.timeout, rest)
            .await
            .map_err(|_| ReadError::Partial(self.timeout))??;
        Ok(Some(Received {
            request,
            attached,
            charge,
        }))
    }
}

/// Writes one response, with `fd` (if any) riding on its first byte as
/// `SCM_RIGHTS`.
pub async fn write_response(
    stream: &mut AppSocket,
    response: &Response,
    fd: Option<OwnedFd>,
) -> io::Result<()> {
    let frame = encode_frame(response).map_err(io::Error::other)?;
    let Some(fd) = fd else {
        return stream.write_all(&frame).await;
    };
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let sent = stream
        .write_with(|socket| {
            Ok(sendmsg::<()>(
                socket,
                &[IoSlice::new(&frame)],
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )?)
        })
        .await?;
    stream.write_all(&frame[sent..]).await
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixStream;

    use super::*;

    /// A connected pair: ours as sald holds it, theirs as a client.
    fn pair() -> (AppSocket, UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        (
            AppSocket::new(OwnedFd::from(ours)).unwrap(),
            UnixStream::from_std(theirs).unwrap(),
        )
    }

    const ROOT: Payer = Payer {
        uid: 0,
        privileged: true,
    };

    fn reader(budget: usize) -> (FrameReader, Arc<FrameBudget>) {
        let budget = FrameBudget::new(budget);
        (
            FrameReader::new(budget.clone(), Duration::from_millis(200)),
            budget,
        )
    }

    #[tokio::test]
    async fn a_claimed_length_costs_nothing_until_the_bytes_come() {
        let (reader, budget) = reader(1 << 20);
        let (mut ours, mut theirs) = pair();
        // Claims 1 MiB, sends 10 bytes, then stalls.
        theirs.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        theirs.write_all(&[b'x'; 10]).await.unwrap();
        let read = tokio::spawn(async move { reader.read(&mut ours, ROOT, None).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(budget.used() <= STEP, "charged {}", budget.used());
        let result = read.await.unwrap();
        assert!(matches!(result, Err(ReadError::Partial(_))), "{result:?}");
        assert_eq!(budget.used(), 0);
        drop(theirs);
    }

    #[tokio::test]
    async fn a_request_stays_charged_until_it_is_handled() {
        // One ordinary user's share is an eighth of the budget: 64 KiB.
        let (reader, budget) = reader(512 * 1024);
        let (mut ours, mut theirs) = pair();
        let user = Payer {
            uid: 1000,
            privileged: false,
        };
        let request = Request::Hello {
            version: 1,
            client: "ab".repeat(20_000),
        };
        let frame = encode_frame(&request).unwrap();
        theirs.write_all(&frame).await.unwrap();
        let received = reader.read_attached(&mut ours, user, None).await.unwrap();
        let received = received.unwrap();
        assert_eq!(received.request, request);
        // Read and decoded, not yet handled: the frame's bytes still count.
        assert!(
            budget.used() >= frame.len() - 4,
            "charged {}",
            budget.used()
        );
        // So the user's next large frame, read meanwhile on another
        // connection, is over the share.
        let (mut ours2, mut theirs2) = pair();
        theirs2.write_all(&frame).await.unwrap();
        let second = reader.read_attached(&mut ours2, user, None).await;
        assert!(
            matches!(second, Err(ReadError::OverShare { .. })),
            "{second:?}"
        );
        drop(received);
        assert_eq!(budget.used(), 0);
        drop((theirs, theirs2));
    }

    #[tokio::test]
    async fn frames_beyond_the_budget_are_refused_and_requests_still_parse() {
        let (reader, budget) = reader(64 * 1024);
        let (mut ours, mut theirs) = pair();
        let request = Request::ListRules;
        theirs
            .write_all(&encode_frame(&request).unwrap())
            .await
            .unwrap();
        assert_eq!(
            reader.read(&mut ours, ROOT, None).await.unwrap(),
            Some(request)
        );
        let big = 200 * 1024u32;
        theirs.write_all(&big.to_be_bytes()).await.unwrap();
        let writer = tokio::spawn(async move {
            let _ = theirs.write_all(&vec![b' '; big as usize]).await;
            theirs
        });
        let result = reader.read(&mut ours, ROOT, None).await;
        assert!(
            matches!(result, Err(ReadError::NoMemory { .. })),
            "{result:?}"
        );
        assert_eq!(budget.used(), 0);
        drop(ours);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_descriptor_on_a_frames_first_byte_comes_with_its_request() {
        let (reader, _) = reader(1 << 20);
        let (mut ours, theirs) = pair();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let frames = [Request::ListRules, Request::Stats].map(|r| encode_frame(&r).unwrap());
        let fds = [udp.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&fds)];
        let client = theirs.into_std().unwrap();
        client.set_nonblocking(false).unwrap();
        sendmsg::<()>(
            client.as_raw_fd(),
            &[IoSlice::new(&frames[0])],
            &rights,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let Received {
            request, attached, ..
        } = reader
            .read_attached(&mut ours, ROOT, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request, Request::ListRules);
        let attached = std::net::UdpSocket::from(attached.expect("the descriptor came"));
        assert_eq!(attached.local_addr().unwrap(), udp.local_addr().unwrap());
        // The next frame came bare: nothing rides on it.
        std::io::Write::write_all(&mut &client, &frames[1]).unwrap();
        let Received {
            request, attached, ..
        } = reader
            .read_attached(&mut ours, ROOT, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(request, Request::Stats);
        assert!(attached.is_none());
    }

    #[tokio::test]
    async fn idle_and_end_of_connection() {
        let (reader, _) = reader(1 << 20);
        let (mut ours, theirs) = pair();
        let idle = Duration::from_millis(30);
        assert!(matches!(
            reader.read(&mut ours, ROOT, Some(idle)).await,
            Err(ReadError::Idle(_))
        ));
        drop(theirs);
        assert!(reader
            .read(&mut ours, ROOT, Some(idle))
            .await
            .unwrap()
            .is_none());
    }

    #[test]
    fn ordinary_users_take_a_share_each_and_leave_the_privileged_a_reserve() {
        let budget = FrameBudget::new(8 << 20);
        let user = |uid| Payer {
            uid,
            privileged: false,
        };
        let mib = 1 << 20;
        // One user: an eighth (1 MiB), no more.
        budget.charge(user(1000), mib).unwrap();
        assert!(matches!(
            budget.charge(user(1000), 1),
            Err(ReadError::OverShare { limit }) if limit == mib
        ));
        // Ordinary users together: three quarters (6 MiB).
        for uid in 1001..1006 {
            budget.charge(user(uid), mib).unwrap();
        }
        assert!(matches!(
            budget.charge(user(1006), 1),
            Err(ReadError::OverShare { limit }) if limit == 6 * mib
        ));
        // The rest is root's (and sald's own user's): 2 MiB.
        budget.charge(ROOT, 2 * mib).unwrap();
        assert!(matches!(
            budget.charge(ROOT, 1),
            Err(ReadError::NoMemory { .. })
        ));
        // Released, a user's entry goes and its share is whole again.
        budget.release(user(1000), mib);
        budget.charge(user(1000), mib).unwrap();
        for uid in 1000..1006 {
            budget.release(user(uid), mib);
        }
        budget.release(ROOT, 2 * mib);
        assert_eq!(budget.used(), 0);
        assert!(budget.usage().per_uid.is_empty());
    }
}
