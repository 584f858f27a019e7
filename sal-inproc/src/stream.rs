//! A stream flow the application holds: a socket's calls, and the two
//! eventfds that mirror its readiness.

use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sal::proto::{FlowExport, HostError, NotExportable};
use sal::FlowId;

use crate::core::{Core, Key, Opening, StreamSignals};
use crate::ends::{Ends, EndsCell, EndsSignal};
use crate::lock::Closing;
use crate::mirror::Signal;
use crate::resolve::CachedRoute;
use crate::{Error, Mode, Runtime};

/// One stream flow (a connected TCP socket's counterpart). Reads and writes
/// may come from different threads at once. Dropping it closes the flow.
pub struct Stream {
    runtime: Runtime,
    key: Key,
    id: FlowId,
    readable: Arc<Signal>,
    writable: Arc<Signal>,
    /// The ends beyond the bytes, kept by the core.
    ends: Arc<EndsCell>,
    /// The eventfds of [`Stream::ends_fd`], once asked for.
    ends_signals: [OnceLock<Arc<Signal>>; 2],
    /// [`Stream::close`] closed the flow: dropping does nothing more.
    closed: bool,
    /// The cached route the connect went by (see [`crate::resolve`]),
    /// until the flow's opening is seen settled.
    route: Option<CachedRoute>,
    /// The opening was seen done or failed (a failure told the cache).
    settled: AtomicBool,
}

/// How long one wait of [`Stream::export`] for a busy flow lasts before
/// it tries again (a wake-up for the stream's own readiness, which says
/// nothing of the flow's control exchange, retries sooner).
const EXPORT_RETRY: Duration = Duration::from_millis(5);

/// How long [`Stream::export`] pauses when a wait for a busy flow ended
/// early.
const EXPORT_PAUSE: Duration = Duration::from_micros(500);

/// Which kind of read a [`Stream::receive`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receive {
    /// A read that takes the bytes.
    Read,
    /// `MSG_PEEK`: the bytes stay.
    Peek,
    /// A read within a call that read bytes already.
    More,
}

/// The host's flow of a stream whose opening is done, or why there is none.
fn opened(core: &mut Core, key: Key) -> Result<FlowId, Error> {
    match core.stream(key).map(|entry| (entry.opening, entry.flow)) {
        Some((Opening::Failed(error), _)) => Err(error.into()),
        Some((Opening::Aborted, _)) => Err(Error::Reset),
        Some((Opening::Pending, Some(_))) => Err(Error::WouldBlock),
        Some((Opening::Done, Some(id))) => Ok(id),
        // Forgotten by the host (Closed while held): only a reset does that.
        Some((_, None)) | None => Err(Error::Reset),
    }
}

impl Stream {
    pub(crate) fn new(runtime: Runtime, key: Key, id: FlowId, signals: StreamSignals) -> Stream {
        Stream {
            runtime,
            key,
            id,
            readable: signals.readable,
            writable: signals.writable,
            ends: signals.ends,
            ends_signals: [OnceLock::new(), OnceLock::new()],
            closed: false,
            route: None,
            settled: AtomicBool::new(false),
        }
    }

    /// The connect went by `route`: if the flow is never established,
    /// the resolution cache forgets it.
    pub(crate) fn set_route(&mut self, route: Option<CachedRoute>) {
        self.route = route;
    }

    /// [`opened`], telling the resolution cache when a connect by a cached
    /// route failed (under the engine's lock).
    fn opened(&self, core: &mut Core) -> Result<FlowId, Error> {
        let result = opened(core, self.key);
        if let Some(route) = self.route {
            match &result {
                Err(Error::WouldBlock) => {}
                Ok(id) => {
                    if !self.settled.swap(true, Ordering::Relaxed) {
                        self.runtime.route_established(core, route, *id);
                    }
                }
                Err(_) => {
                    if !self.settled.swap(true, Ordering::Relaxed) {
                        self.runtime.route_failed(core, route);
                    }
                }
            }
        }
        result
    }

    /// The flow's local ID (after a failed connect, the host may have given
    /// it to another flow).
    pub fn id(&self) -> FlowId {
        self.id
    }

    /// Readable exactly while a read would not block: bytes, end of stream,
    /// or an error (a failed connect included). Made at the first call
    /// (`EMFILE` and the like if it cannot be), as the others.
    pub fn readable_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        self.readable.fd()
    }

    /// Readable exactly while a write would not block: room in the send
    /// buffer, or an error (a failed connect, a flow shut for sending).
    /// Not before the flow is established. Made at the first call (most
    /// streams are never waited on for room).
    pub fn writable_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        self.writable.wait_fd()
    }

    /// How the flow's directions stand beyond its bytes, as `poll` reports
    /// them (no lock taken).
    pub fn ends(&self) -> Ends {
        self.ends.ends()
    }

    /// An eventfd readable exactly while `which` of [`Stream::ends`]
    /// holds: what a `poll` that asks for neither input nor output waits
    /// on (the readable and writable eventfds are raised by more). Made
    /// at the first call, and kept until the stream closes.
    pub fn ends_fd(&self, which: EndsSignal) -> Result<BorrowedFd<'_>, Error> {
        let slot = &self.ends_signals[which.index()];
        if let Some(signal) = slot.get() {
            return signal.fd();
        }
        let key = self.key;
        let signal =
            (self.runtime).call(Mode::NonBlocking, None, |core| core.ends_signal(key, which))?;
        slot.get_or_init(|| signal).fd()
    }

    /// The error a reset left, taken, as `SO_ERROR` takes a TCP socket's:
    /// once, whichever call reports it first (see [`Stream::read`]):
    /// [`Error::Reset`], or [`Error::ResetAfterEnd`]. A failed connect's
    /// is taken so too, as [`Error::Reset`] (its own error is
    /// [`Stream::finish_connect`]'s). `None` while the flow goes on, or
    /// once taken.
    pub fn take_error(&self) -> Option<Error> {
        (self.ends.ends().error && self.ends.take_error()).then(|| self.ends.reset_error())
    }

    /// Leaves a reset's error taken by a read for the next call again: a
    /// batch of reads (`recvmmsg`, each message a call of its own) that
    /// read something before the reset returns what it read, as Linux's,
    /// which keeps the error.
    pub fn report_again(&self) {
        self.ends.untake_error();
    }

    /// Waits (as `mode` allows) for the connect's outcome: `Ok` once
    /// established, its error if it failed, [`Error::WouldBlock`] while the
    /// SYN is unanswered.
    pub fn finish_connect(&self, mode: Mode) -> Result<(), Error> {
        self.runtime.call(mode, Some(&self.writable), |core| {
            self.opened(core).map(drop)
        })
    }

    /// Reads into `buf`: how many bytes, 0 at end of stream (or for an
    /// empty `buf`). Blocking: waits for at least one byte, the end, or an
    /// error. Reading opens the window: the update goes out before this
    /// returns. As TCP's after a reset: the bytes that came before it,
    /// then [`Error::Reset`] once (unless another call took it), then end
    /// of stream; end of stream at once if the peer's end came first.
    /// After a failed connect: its error once, then end of stream.
    pub fn read(&self, buf: &mut [u8], mode: Mode) -> Result<usize, Error> {
        self.receive(buf, mode, Receive::Read)
    }

    /// As [`Stream::read`], but the bytes stay to be read again
    /// (`MSG_PEEK`); a reset's error is taken all the same, as TCP's.
    pub fn peek(&self, buf: &mut [u8], mode: Mode) -> Result<usize, Error> {
        self.receive(buf, mode, Receive::Peek)
    }

    /// Bytes received and not read, and written and not acknowledged
    /// (`ioctl`'s `FIONREAD` and `SIOCOUTQ`): none while connecting, what
    /// was left at a reset (none once the host forgot the flow), as
    /// TCP's; none either for a flow exported (the caller tells that
    /// apart).
    pub fn queues(&self) -> Result<sal::proto::StreamQueues, Error> {
        let key = self.key;
        self.runtime.call(Mode::NonBlocking, None, |core| {
            let Some(id) = core.stream(key).and_then(|entry| entry.flow) else {
                return Ok(sal::proto::StreamQueues::default());
            };
            // A flow the host forgot (after a reset) holds nothing.
            Ok(core.host.stream_queues(id).unwrap_or_default())
        })
    }

    /// The largest payload of the flow's data segments, once connected
    /// (`None` before, and after the flow is gone): `TCP_MAXSEG`.
    pub fn segment_size(&self) -> Result<Option<usize>, Error> {
        let key = self.key;
        self.runtime.call(Mode::NonBlocking, None, |core| {
            let Some(id) = core.stream(key).and_then(|entry| entry.flow) else {
                return Ok(None);
            };
            Ok(core.host.stream_segment_size(id).unwrap_or_default())
        })
    }

    /// As [`Stream::read`], within a call that read bytes already (the
    /// next iovec, the rest of a `MSG_WAITALL`): a reset's or failed
    /// connect's error is returned untaken, to stay for the program's
    /// next call, as Linux reports one only when a call copied nothing.
    pub fn read_more(&self, buf: &mut [u8], mode: Mode) -> Result<usize, Error> {
        self.receive(buf, mode, Receive::More)
    }

    fn receive(&self, buf: &mut [u8], mode: Mode, how: Receive) -> Result<usize, Error> {
        match self.read_flow(buf, mode, how == Receive::Peek) {
            Err(error) if error.is_report() && how == Receive::More => Err(error),
            Err(error) if error.is_report() => match self.ends.take_error() {
                true => Err(error),
                false => Ok(0),
            },
            read => read,
        }
    }

    fn read_flow(&self, buf: &mut [u8], mode: Mode, peek: bool) -> Result<usize, Error> {
        let key = self.key;
        self.runtime.call(mode, Some(&self.readable), |core| {
            let id = self.opened(core)?;
            let read = match peek {
                true => core.host.peek(id, buf),
                false => core.host.recv(id, buf),
            };
            let read = match read {
                Err(HostError::WouldBlock) if core.stream(key).is_some_and(|e| e.read_shut) => {
                    Ok(0)
                }
                read => read.map_err(Error::from),
            };
            core.refresh(key);
            read
        })
    }

    /// Ends the receiving direction, as `shutdown(SHUT_RD)` on Linux: reads
    /// give what is queued, then end of stream at once (a thread waiting
    /// in a read wakes with it); the peer is told nothing.
    pub fn shutdown_read(&self) -> Result<(), Error> {
        let key = self.key;
        self.runtime.call(Mode::NonBlocking, None, |core| {
            if let Some(entry) = core.stream(key) {
                entry.read_shut = true;
            }
            core.refresh(key);
            Ok(())
        })
    }

    /// Writes `buf`, and sends what the window allows before returning.
    /// Blocking: all of it. Non-blocking, or past a deadline: as much as
    /// the send buffer takes, [`Error::WouldBlock`] if none. A call that
    /// wrote something and then failed returns the count (the error stays
    /// for the next). On a reset flow (or one whose connect failed): its
    /// error if no call took it yet (see [`Stream::take_error`]), else
    /// [`Error::SendClosed`] (`EPIPE`).
    pub fn write(&self, buf: &[u8], mode: Mode) -> Result<usize, Error> {
        self.send(buf, mode, false)
    }

    /// As [`Stream::write`], within a call that wrote bytes already: as
    /// [`Stream::read_more`], an error is returned untaken.
    pub fn write_more(&self, buf: &[u8], mode: Mode) -> Result<usize, Error> {
        self.send(buf, mode, true)
    }

    fn send(&self, buf: &[u8], mode: Mode, more: bool) -> Result<usize, Error> {
        let key = self.key;
        let mut written = 0;
        let result = self.runtime.call(mode, Some(&self.writable), |core| {
            let id = self.opened(core)?;
            let result = loop {
                if written == buf.len() {
                    break Ok(());
                }
                match core.host.send(id, &buf[written..]) {
                    Ok(n) => written += n,
                    Err(error) => break Err(Error::from(error)),
                }
            };
            core.refresh(key);
            result
        });
        match result {
            Ok(()) => Ok(written),
            Err(_) if written > 0 => Ok(written),
            Err(error) if error.is_report() && more => Err(error),
            Err(error) if error.is_report() => match self.ends.take_error() {
                true if matches!(error, Error::Reset) => Err(self.ends.reset_error()),
                true => Err(error),
                false => Err(Error::SendClosed),
            },
            Err(error) => Err(error),
        }
    }

    /// Ends the sending direction: the peer reads end of stream once it
    /// has read everything before.
    pub fn shutdown_write(&self) -> Result<(), Error> {
        let key = self.key;
        self.runtime.call(Mode::NonBlocking, None, |core| {
            let id = opened(core, key)?;
            core.host.shutdown(id)?;
            if let Some(entry) = core.stream(key) {
                entry.write_shut = true;
            }
            core.refresh(key);
            Ok(())
        })
    }

    /// Takes the flow out of this engine for another host to go on with
    /// (sald's `Adopt`, the hand-over before a program forks:
    /// `docs/in-process-sal.md`): the host forgets it without a word to
    /// the peer, and this stream reads as reset from then on. Only an
    /// established flow open both ways is exported
    /// ([`sal::proto::NotExportable`], as `Error::Host`); one whose
    /// control exchange is in progress (`Busy`: the handshake's last ACK
    /// not confirmed yet, a move unanswered) is retried, the host driven
    /// meanwhile, for `patience` at most (a server that has not spoken
    /// yet is asked to: [`sal::proto::Host::hurry_export`]); one whose buffers hold more than
    /// `most` bytes (unsent and unread together) stays (`Buffered`).
    pub fn export(&self, most: usize, patience: Duration) -> Result<FlowExport, Error> {
        let key = self.key;
        let give_up = Instant::now() + patience;
        loop {
            let at = (Instant::now() + EXPORT_RETRY).min(give_up);
            let result = self
                .runtime
                .call(Mode::Until(at), Some(&self.readable), |core| {
                    let id = match opened(core, key) {
                        Err(Error::WouldBlock) => return Err(NotExportable::NotEstablished.into()),
                        opened => opened?,
                    };
                    match core.export_stream(key, id, most) {
                        Err(Error::Host(HostError::NotExportable(NotExportable::Busy))) => {
                            // A client whose server has not spoken yet
                            // asks it to (once): the answer confirms the
                            // handshake.
                            core.host.hurry_export(id);
                            Err(Error::WouldBlock)
                        }
                        exported => exported,
                    }
                });
            match result {
                Err(Error::WouldBlock) if Instant::now() < give_up => {
                    // Woken early by the stream's own readiness (bytes
                    // unread), which says nothing of the exchange: a
                    // pause, not a spin, while the driver thread drives.
                    if Instant::now() < at {
                        std::thread::sleep(EXPORT_PAUSE);
                    }
                }
                Err(Error::WouldBlock) => return Err(NotExportable::Busy.into()),
                exported => return exported,
            }
        }
    }

    /// Takes back the flow [`Stream::export`] took out, when nobody else
    /// took it (sald refused it): the host imports it again and tells the
    /// peer with an RSYN, as a move, and the stream goes on as before.
    pub fn restore(&self, export: FlowExport) -> Result<(), Error> {
        let key = self.key;
        let mut export = Some(export);
        self.runtime
            .call(Mode::NonBlocking, None, |core| match export.take() {
                Some(export) => core.restore_stream(key, export),
                None => Err(Error::NotConnected),
            })
    }

    /// Resets the flow (RST to the peer, as TCP's `tcp_disconnect` for a
    /// `connect` to `AF_UNSPEC`), whether it is open, opening or closing;
    /// the stream reads as reset from then on. Nothing for a flow the
    /// host forgot already.
    pub fn abort(&self) -> Result<(), Error> {
        let key = self.key;
        self.runtime.call(Mode::NonBlocking, None, |core| {
            let Some(id) = core.stream(key).and_then(|entry| entry.flow) else {
                return Ok(());
            };
            core.host.abort(id)?;
            // A flow killed before it was established gives no event: its
            // connect's waiters learn of it here.
            if let Some(entry) = core.stream(key) {
                if matches!(entry.opening, Opening::Pending) {
                    entry.opening = Opening::Aborted;
                }
            }
            core.refresh(key);
            Ok(())
        })
    }

    /// Closes the flow (as dropping it does), reporting an I/O error of
    /// the socket if sending the close failed.
    pub fn close(mut self) -> Result<(), Error> {
        self.closed = true;
        self.close_flow()
    }

    fn close_flow(&self) -> Result<(), Error> {
        let key = self.key;
        self.runtime.close(Closing::Stream(key), |core| {
            // Given up before it was established (a connect's deadline
            // passed): as a failure for the route it took.
            if let Some(route) = self.route {
                let pending = matches!(self.opened(core), Err(Error::WouldBlock));
                if pending && !self.settled.swap(true, Ordering::Relaxed) {
                    self.runtime.route_failed(core, route);
                }
            }
            core.close_stream(key);
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if let Err(error) = self.close_flow() {
            tracing::debug!(%error, flow = %self.id, "closing a dropped stream");
        }
    }
}
