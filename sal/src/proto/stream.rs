//! Stream flows: the application's byte streams, and the seam between the
//! SAL and the flow's own TCP socket ([`sal_tcp::Socket`]).
//!
//! Every stream flow owns its socket, and every call into a socket is in
//! this file. A socket moves only when its flow is touched: a segment
//! arrives for it, the application sends, reads or closes, or its deadline
//! ([`Socket::poll_at`], kept in the host's timer queue) comes. Each such
//! touch puts the flow in the host's output queue, which
//! [`Host::poll_transmit`] drains; so a packet or a timer costs the same
//! whether the host has ten flows or a million, and an idle flow costs
//! nothing at all.
//!
//! The socket's segments become SAL packets according to the flow's state
//! ([`Host::stream_transmit`]): its SYN is the SAL SYN, its SYN-ACK the SAL
//! SYN-ACK, its answer to the SYN-ACK the SAL ACK (those are control
//! messages, kept for retransmission), and the rest rides under a bare base
//! header that is written in front of the segment in the caller's buffer:
//! the segment's payload is copied once, from the socket's send buffer into
//! the packet. While a move is unconfirmed, segments that carry data are
//! held back (see `migration.rs`).
//!
//! # Buffer memory
//!
//! Every change in a socket's buffer memory passes through
//! `Host::account_buffers` (`budget.rs`), which keeps the host-wide total
//! ([`HostStats::buffer_bytes`](super::HostStats::buffer_bytes)) and, with a
//! budget ([`HostConfig::buffer_memory_limit`](super::HostConfig::buffer_memory_limit)),
//! the pressure state: on once the total reaches the budget, off again
//! once it falls below 7/8 of it, so that a host at its budget does not
//! flip at every segment. The same holds for each group of flows and its
//! own budget, and for each listener's flows nobody has accepted yet and
//! theirs (see `budget.rs`): a socket is under pressure when its host is,
//! or whoever its memory counts against. The state is handed to a socket each time it is
//! driven ([`Socket::set_memory_pressure`], a store), never by walking the
//! flows when it changes: a flow that is not driven does not grow anyway.
//! Under pressure no buffer grows beyond what it holds (one holding
//! nothing may take its first allocation), so the total stays within the
//! budget plus what one drive of one socket can add (one buffer's growth
//! step, at most its maximum) plus a first allocation (`min_buffer`) per
//! direction per flow that held none.

use sal_tcp::{LossCounters, RecvError, Socket, State, TcpSeqNumber};
use smoltcp::time::{Duration, Instant};

use super::control::ControlKind;
use super::flow::{Endpoint, Flow, FlowTransport};
use super::output::{Transmit, TransmitKind};
use super::rider::Riders;
use super::timer::Timer;
use super::{FlowState, Host, HostError, Role};
use crate::id::FlowId;
use crate::wire::{ControlFlags, SalRepr, TransportProtocol, BASE_HEADER_LEN};

/// TCP header flag bits, as seen in byte 13 of a segment.
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Bytes of TCP header in a segment (its data offset).
pub(super) fn tcp_header_len(segment: &[u8]) -> usize {
    usize::from(segment[12] >> 4) * 4
}

/// The shortest wait before a socket that has just been drained is looked
/// at again, whatever its deadline says (a guard against a busy loop).
const MIN_REARM: Duration = Duration::from_millis(1);

/// Handshake ACKs held for a first write at most (see
/// [`Host::release_held_acks`]): more release them all.
const HELD_ACKS_MAX: usize = 64;

/// How a stream flow's ends stand beyond its bytes ([`Host::stream_ends`]):
/// what a socket layer needs to report a hang-up and an error as TCP's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamEnds {
    /// The peer's end of stream (its FIN) arrived: reads end once what
    /// came before it is read, even after a reset.
    pub peer_finished: bool,
    /// The flow was reset, or given up on: nothing more goes either way.
    pub reset: bool,
}

/// A stream flow's queued bytes ([`Host::stream_queues`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StreamQueues {
    /// Received, not read by the application yet.
    pub unread: usize,
    /// Written by the application, not acknowledged by the peer yet
    /// (sent or not).
    pub unacknowledged: usize,
    /// Of those, not sent yet.
    pub unsent: usize,
}

/// Why a flow's stream resends its flight at once
/// ([`Host::rewind_stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rewind {
    /// The flow moved to another path: this end's locator changed, or the
    /// peer's address did (beyond its UDP port, as RFC 9000 9.4 tells a
    /// new path from a NAT rebinding). What TCP measured of the old path
    /// goes ([`Socket::new_path`]).
    NewPath,
    /// The path went silent and answered a probe: the same path, whose
    /// measurements stand ([`Socket::rewind`]).
    SamePath,
}

/// TCP header flags and whether the segment occupies sequence space (carries
/// data, SYN or FIN): such a segment asks the peer for an answer.
fn segment_kind(segment: &[u8]) -> (u8, bool) {
    let (Some(&offset), Some(&flags)) = (segment.get(12), segment.get(13)) else {
        return (0, false);
    };
    let header = usize::from(offset >> 4) * 4;
    let asks = segment.len() > header || flags & (TCP_SYN | TCP_FIN) != 0;
    (flags, asks)
}

/// A socket's counters the host adds up: data it dropped for memory
/// (out-of-order data beyond what received data justifies, data refused
/// under pressure), and what its loss recovery did.
#[derive(Debug, Clone, Copy)]
struct SocketCounters {
    ooo_dropped: u64,
    pressure_dropped: u64,
    loss: LossCounters,
}

impl SocketCounters {
    fn of(socket: &Socket) -> SocketCounters {
        SocketCounters {
            ooo_dropped: socket.out_of_order_dropped(),
            pressure_dropped: socket.pressure_dropped(),
            loss: socket.loss_counters(),
        }
    }
}

/// The most buffer storage a host keeps from sockets gone for the next
/// ones ([`Host::recycle_buffers`]): 32 blocks at the default first
/// allocation of 4 KiB. Kept outside the buffer accounting (it belongs to
/// no flow); [`Host::compact`] lets it go.
pub(super) const SPARE_BUFFER_BYTES: usize = 128 * 1024;

/// The stream-specific part of a flow.
#[derive(Debug, Default)]
pub(super) struct StreamPart {
    /// The flow's TCP socket: none before the client's connect is
    /// resolved, and none once the flow is dead.
    pub socket: Option<Socket>,
    /// The client owes the third packet of the handshake (SAL ACK): the
    /// socket's answer to the SYN-ACK carries it.
    pub ack_owed: bool,
    /// In one of the host's output queues (see [`Host::queue_output`]).
    pub queued: bool,
    /// SAL control messages that ride in the SAL header of the socket's
    /// segments (see `rider.rs`).
    pub riders: Riders,
    /// The highest acknowledgement number of a segment from the peer that
    /// moved the socket on (see [`Host::stream_input`]).
    peer_ack: Option<u32>,
}

impl StreamPart {
    /// Notes the acknowledgement number of a segment the socket took as
    /// `progress` (or not); returns whether the segment is evidence of the
    /// peer (see [`Host::stream_input`]).
    fn peer_ack(&mut self, segment: &[u8], progress: bool) -> bool {
        let ack = match (segment.get(8..12), segment.get(13)) {
            (Some(ack), Some(&flags)) if flags & TCP_ACK != 0 => {
                Some(u32::from_be_bytes([ack[0], ack[1], ack[2], ack[3]]))
            }
            _ => None,
        };
        if !progress {
            return ack.is_some() && ack == self.peer_ack;
        }
        if let Some(ack) = ack {
            // Serial-number comparison: never back to an older one.
            let newer = self
                .peer_ack
                .is_none_or(|last| (ack.wrapping_sub(last) as i32) > 0);
            if newer {
                self.peer_ack = Some(ack);
            }
        }
        true
    }
}

/// Whether a TCP segment carries data (past its header, whose length its
/// data offset gives).
fn carries_payload(segment: &[u8]) -> bool {
    let header = segment
        .get(12)
        .map_or(20, |offset| usize::from(offset >> 4) * 4);
    segment.len() > header
}

/// What [`Host::stream_transmit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamOutput {
    /// A packet is in the caller's buffer.
    Packet(Transmit),
    /// Something happened (a control message was queued, or a segment held
    /// back during a move): call again.
    Again,
    /// The socket has nothing to send now.
    Idle,
}

impl Host {
    /// Adds to the host's counters what a socket's moved by since
    /// `before` (its [`SocketCounters`] then).
    fn account_counters(&mut self, before: SocketCounters, after: SocketCounters) {
        let stats = &mut self.stats;
        stats.ooo_dropped += after.ooo_dropped.saturating_sub(before.ooo_dropped);
        stats.pressure_dropped += after
            .pressure_dropped
            .saturating_sub(before.pressure_dropped);
        let loss = after.loss.since(before.loss);
        stats.tcp_timeouts += u64::from(loss.timeouts);
        stats.tcp_fast_retransmits += u64::from(loss.fast_retransmits);
        stats.tcp_loss_probes += u64::from(loss.loss_probes);
        stats.tcp_undos += u64::from(loss.undos);
    }

    /// Stream flows not finished yet: bytes queued, or sent and not
    /// acknowledged yet, or either direction still open (any state but
    /// `TIME-WAIT` and `CLOSED`: our end of stream unacknowledged, or the
    /// peer's not received). What a process that exits with closing flows
    /// waits for, as the kernel keeps a dead process's closing sockets
    /// (sending their bytes, and taking the peer's last segments without
    /// a reset). Looks at every flow.
    pub fn unfinished_streams(&self) -> usize {
        self.unfinished(true).count()
    }

    /// The flows [`unfinished_streams`](Self::unfinished_streams) counts
    /// that some application accepted or connected (not those still
    /// queued on a listener), for a caller that waits only for some of
    /// them (those its application closed, before an `exec`).
    pub fn unfinished_stream_flows(&self) -> impl Iterator<Item = FlowId> + '_ {
        self.unfinished(false)
    }

    /// The flows [`unfinished_streams`](Self::unfinished_streams) counts,
    /// `queued` ones (on a listener, not accepted) included or not.
    fn unfinished(&self, queued: bool) -> impl Iterator<Item = FlowId> + '_ {
        self.endpoints
            .iter()
            .filter(move |(_, endpoint)| match endpoint {
                Endpoint::Flow(flow) if flow.unaccepted && !queued => false,
                Endpoint::Flow(flow) => {
                    transport_waits(flow)
                        || flow
                            .stream()
                            .and_then(|s| s.socket.as_ref())
                            .is_some_and(|s| {
                                !matches!(
                                    s.state(),
                                    State::TimeWait | State::Closed | State::Listen
                                )
                            })
                }
                Endpoint::Datagram(_) => false,
            })
            .map(|(id, _)| id)
    }

    /// The socket of an established stream flow (or of a dead one, whose
    /// socket is gone), as the application calls see it.
    fn app_socket(&mut self, id: FlowId) -> Result<(FlowState, Option<&mut Socket>), HostError> {
        let flow = self.flow_mut(id)?;
        let state = flow.state;
        match &mut flow.transport {
            FlowTransport::Stream(stream) => Ok((state, stream.socket.as_mut())),
            FlowTransport::Datagram(_) => Err(HostError::WrongProtocol),
        }
    }

    /// Lets `fill` write into the flow's send buffer, straight from wherever
    /// the application's bytes are (a socket read, say): it gets the largest
    /// contiguous free region (never empty) and returns how many bytes it
    /// wrote there, and a value handed back. `WouldBlock` when there is no
    /// room now (then `fill` is not called).
    pub fn send_with<R>(
        &mut self,
        id: FlowId,
        fill: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, HostError> {
        let charge = self.flow_charge(id);
        let pressure = self.buffer_pressure(charge);
        let result = match self.app_socket(id)? {
            (FlowState::Dead, _) => return Err(HostError::Reset),
            (FlowState::Established, Some(socket)) => {
                // Under pressure, writes go only into storage held.
                socket.set_memory_pressure(pressure);
                if !socket.may_send() {
                    // Not yet open for sending (the TCP handshake is still
                    // finishing), or closed for sending.
                    return Err(match socket.state() {
                        State::SynSent | State::SynReceived => HostError::WouldBlock,
                        _ => HostError::SendClosed,
                    });
                }
                if socket.send_space() == 0 {
                    return Err(HostError::WouldBlock);
                }
                let before = socket.buffer_memory();
                let result = socket.send(fill).map_err(|_| HostError::SendClosed)?;
                let after = socket.buffer_memory();
                self.account_buffers(charge, before, after);
                result
            }
            _ => return Err(HostError::WouldBlock),
        };
        self.queue_output(id);
        Ok(result)
    }

    /// Queues bytes on a stream flow; returns how many were taken.
    pub fn send(&mut self, id: FlowId, data: &[u8]) -> Result<usize, HostError> {
        if data.is_empty() {
            return self.send_room(id).map(|_| 0);
        }
        let mut sent = 0;
        // The free space may come in two regions (the ring wraps), and the
        // buffer grows only once the region offered is full.
        while sent < data.len() {
            let rest = &data[sent..];
            match self.send_with(id, |free| {
                let n = free.len().min(rest.len());
                free[..n].copy_from_slice(&rest[..n]);
                (n, n)
            }) {
                Ok(n) => sent += n,
                Err(_) if sent > 0 => break,
                Err(error) => return Err(error),
            }
        }
        Ok(sent)
    }

    /// Lets `drain` take received bytes straight from the flow's receive
    /// buffer (to write them to a socket, say): it gets the largest
    /// contiguous region of unread bytes (never empty) and returns how many
    /// it took, and a value handed back. `Ok(None)` is the end of the
    /// stream (everything read); `WouldBlock` means nothing to read yet
    /// (then `drain` is not called).
    pub fn recv_with<R>(
        &mut self,
        id: FlowId,
        drain: impl FnOnce(&[u8]) -> (usize, R),
    ) -> Result<Option<R>, HostError> {
        let (state, socket) = self.app_socket(id)?;
        let Some(socket) = socket else {
            return Err(match state {
                FlowState::Dead => HostError::Reset,
                _ => HostError::WouldBlock,
            });
        };
        // A dead flow's socket holds what arrived before the reset.
        if !matches!(state, FlowState::Established | FlowState::Dead) {
            return Err(HostError::WouldBlock);
        }
        if socket.recv_queue() == 0 {
            return match socket.recv(|_| (0, ())) {
                Ok(()) => Err(HostError::WouldBlock),
                // Everything the peer sent was read: its end came before
                // any reset, as with TCP (whose reads return 0 after a FIN).
                Err(RecvError::Finished) => Ok(None),
                // The TCP handshake is still finishing (the SAL's was
                // confirmed without the socket's last segment).
                Err(RecvError::InvalidState)
                    if matches!(socket.state(), State::SynSent | State::SynReceived) =>
                {
                    Err(HostError::WouldBlock)
                }
                // Closed without a FIN: reset by the peer's transport or
                // the SAL, or given up on. Not an end of stream: the
                // application must not take a cut transfer for a whole one.
                Err(RecvError::InvalidState) => Err(HostError::Reset),
            };
        }
        let result = socket.recv(|data| drain(data)).ok();
        // Reading opens the receive window, which may owe the peer an update.
        self.queue_output(id);
        Ok(result)
    }

    /// Reads bytes from a stream flow: `Ok(0)` is end of stream.
    pub fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> Result<usize, HostError> {
        let mut read = 0;
        // Received bytes may lie in two regions (the ring wraps).
        while read < buf.len() {
            let rest = &mut buf[read..];
            match self.recv_with(id, |data| {
                let n = data.len().min(rest.len());
                rest[..n].copy_from_slice(&data[..n]);
                (n, n)
            }) {
                Ok(Some(n)) => read += n,
                Ok(None) => break,
                Err(_) if read > 0 => break,
                Err(error) => return Err(error),
            }
        }
        Ok(read)
    }

    /// How a stream flow's ends stand beyond its bytes: what `poll` reports
    /// as a hang-up, the peer's end of stream, or an error.
    pub fn stream_ends(&mut self, id: FlowId) -> Result<StreamEnds, HostError> {
        let (state, socket) = self.app_socket(id)?;
        Ok(StreamEnds {
            peer_finished: socket.is_some_and(|socket| socket.peer_finished()),
            reset: state == FlowState::Dead,
        })
    }

    /// Copies received bytes into `buf` without taking them (`MSG_PEEK`):
    /// otherwise as [`Host::recv`], its end of stream and errors included.
    pub fn peek(&mut self, id: FlowId, buf: &mut [u8]) -> Result<usize, HostError> {
        if buf.is_empty() {
            return Ok(0);
        }
        // A drain that takes nothing: the states and errors of a read.
        if self.recv_with(id, |_| (0, ()))?.is_none() {
            return Ok(0);
        }
        match self.app_socket(id)? {
            (_, Some(socket)) => Ok(socket.peek_slice(buf).unwrap_or(0)),
            (_, None) => Ok(0),
        }
    }

    /// The stream's queues as `ioctl` reports them: bytes received and not
    /// read yet (`FIONREAD`), bytes written and not acknowledged yet, sent
    /// or not (`SIOCOUTQ`), and of those the ones not sent yet
    /// (`SIOCOUTQNSD`). A reset flow keeps what it had received.
    pub fn stream_queues(&mut self, id: FlowId) -> Result<StreamQueues, HostError> {
        Ok(match self.app_socket(id)? {
            (_, Some(socket)) => StreamQueues {
                unread: socket.recv_queue(),
                unacknowledged: socket.send_queue(),
                unsent: socket.send_queue_unsent(),
            },
            (_, None) => StreamQueues::default(),
        })
    }

    /// The largest payload of the flow's data segments, once its
    /// handshake agreed on it (`None` before, and for a flow whose stream
    /// is gone): what `getsockopt(TCP_MAXSEG)` answers.
    pub fn stream_segment_size(&mut self, id: FlowId) -> Result<Option<usize>, HostError> {
        Ok(match self.app_socket(id)? {
            (FlowState::Established, Some(socket)) => Some(socket.effective_mss()),
            _ => None,
        })
    }

    /// Bytes a [`Host::send`] would take now.
    pub fn send_room(&mut self, id: FlowId) -> Result<usize, HostError> {
        let pressure = self.buffer_pressure(self.flow_charge(id));
        match self.app_socket(id)? {
            (FlowState::Dead, _) => Err(HostError::Reset),
            (FlowState::Established, Some(socket)) if socket.may_send() => {
                socket.set_memory_pressure(pressure);
                Ok(socket.send_space())
            }
            _ => Ok(0),
        }
    }

    /// Ends the sending direction of a flow: the peer reads end of stream
    /// (a stream) or gets our SAL FIN (a datagram flow); receiving goes on.
    pub fn shutdown(&mut self, id: FlowId) -> Result<(), HostError> {
        let flow = self.flow_mut(id)?;
        match &mut flow.transport {
            FlowTransport::Stream(stream) => {
                if let Some(socket) = stream.socket.as_mut() {
                    socket.close();
                }
            }
            FlowTransport::Datagram(_) => flow.teardown.send_shut = true,
        }
        self.queue_output(id);
        self.mark_dirty(id);
        Ok(())
    }

    /// Whether received bytes of an established stream flow wait unread.
    /// Whether `segment` brings the flow's socket data it has not had (see
    /// [`Socket::carries_new_data`]); true without a socket to ask.
    pub(super) fn carries_new_data(&mut self, id: FlowId, segment: &[u8]) -> bool {
        match self.app_socket(id) {
            Ok((_, Some(socket))) => socket.carries_new_data(segment),
            _ => true,
        }
    }

    pub(super) fn stream_has_unread(&mut self, id: FlowId) -> bool {
        match self.app_socket(id) {
            Ok((FlowState::Established, Some(socket))) => socket.recv_queue() > 0,
            _ => false,
        }
    }

    /// Gives the flow its socket: a client's starts connecting (its SYN
    /// comes out of the next [`Host::poll_transmit`]); a server's takes the
    /// client's SYN segment `syn` (checksum verified) and answers it.
    ///
    /// This is where a half-open server flow gets TCP state for a SYN;
    /// past the half-open limits, SYN cookies keep none (see `cookie.rs`:
    /// [`sal_tcp::write_syn_ack`] answers the SYN, and
    /// [`Socket::from_cookie`] builds the socket from the third packet).
    /// Returns false if the SYN segment is not a valid opening (nothing is
    /// kept then).
    pub(super) fn open_stream(&mut self, id: FlowId, role: Role, syn: &[u8]) -> bool {
        let isn = TcpSeqNumber(rand::Rng::random(&mut self.rng));
        let mut socket = Socket::new(&self.config.stream);
        let opened = match role {
            Role::Client => socket.connect(isn).is_ok(),
            Role::Server => {
                socket.listen(isn).is_ok() && socket.handle_segment(self.now, syn).is_ok()
            }
        };
        if !opened {
            return false;
        }
        // After the opening, which starts the socket afresh.
        socket.seed_buffers(&mut self.spare_buffers);
        self.account_buffers(self.flow_charge(id), 0, socket.buffer_memory());
        let Some(stream) = self.flow_mut(id).ok().and_then(|f| f.stream_mut()) else {
            return false;
        };
        stream.socket = Some(socket);
        self.queue_output(id);
        true
    }

    /// Hands a received segment (checksum verified) to the flow's socket.
    /// Returns whether the segment is evidence that the peer is there (see
    /// `input.rs`): the socket took it as progress (new data, a new
    /// acknowledgement, a change of state), or it repeats exactly the
    /// acknowledgement of the last segment that was progress (a duplicate
    /// ACK, the answer to a window probe, a retransmission the peer sent
    /// because our ACK was lost). Whoever forges either must know the
    /// connection's sequence numbers, which travel only on the flow's path.
    pub(super) fn stream_input(&mut self, id: FlowId, segment: &[u8]) -> bool {
        let now = self.now;
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return false;
        };
        let (charge, unaccepted) = (flow.charge(), flow.unaccepted);
        // Field by field: `flow` borrows the endpoints (one lookup per
        // segment, not one for the charge and another for the socket).
        let pressure = self.stats.buffer_pressure || self.budgets.pressure(charge);
        let Some(stream) = flow.stream_mut() else {
            return false;
        };
        let Some(socket) = stream.socket.as_mut() else {
            return false;
        };
        Host::bound_socket(socket, pressure, unaccepted);
        let (before, drops_before) = (socket.buffer_memory(), SocketCounters::of(socket));
        let was = (socket.send_queue(), socket.recv_queue(), socket.state());
        let handled = socket.handle_segment(now, segment);
        let (after, drops_after) = (socket.buffer_memory(), SocketCounters::of(socket));
        let sent_on = socket.send_queue() < was.0 || socket.state() != was.2;
        // While our data waits on the path (the peer's window open), only
        // what proves it got through counts: an acknowledgement that moved
        // on, a change of state, or a bare duplicate ACK. The peer's own
        // data proves the way back only: a path that drops what we send
        // and carries what the peer sends (a black hole one way) must be
        // left, not kept alive by the download beside the stalled upload.
        let waiting = was.0 > 0 && socket.remote_window() > 0;
        let evidence = handled.is_ok()
            && if waiting {
                stream.peer_ack(segment, sent_on) && (sent_on || !carries_payload(segment))
            } else {
                let progress = sent_on || socket.recv_queue() > was.1;
                stream.peer_ack(segment, progress)
            };
        self.account_buffers(charge, before, after);
        self.account_counters(drops_before, drops_after);
        if handled.is_err() {
            self.stats.malformed += 1;
            return false;
        }
        self.queue_output(id);
        evidence
    }

    /// Drops the flow's socket, if it has one, without a word to the peer.
    pub(super) fn release_stream(&mut self, id: FlowId) {
        let charge = self.flow_charge(id);
        let socket = self
            .flow_mut(id)
            .ok()
            .and_then(|f| f.stream_mut())
            .and_then(|s| s.socket.take());
        if let Some(socket) = socket {
            self.account_buffers(charge, socket.buffer_memory(), 0);
            self.recycle_buffers(socket);
        }
    }

    /// Keeps a socket's buffer storage for the next sockets, up to
    /// [`SPARE_BUFFER_BYTES`] (16 short connections' worth at the default
    /// first allocation): a host serving thousands of them a second
    /// otherwise asks the allocator for two buffers and gives them back
    /// for each, and the allocator grows and trims its heap as often (a
    /// `mprotect` or `brk` each time).
    pub(super) fn recycle_buffers(&mut self, mut socket: Socket) {
        let blocks = SPARE_BUFFER_BYTES / self.config.stream.min_buffer.max(1);
        socket.take_buffers(&mut self.spare_buffers, blocks);
    }

    /// The flow's transport ends without a word to the peer (the flow was
    /// reset or its peer given up on). What arrived and the application
    /// has not read stays readable, as a kernel socket's receive queue does
    /// after a reset; the rest of the socket goes, all of it if nothing is
    /// left to read or nobody will read it.
    pub(super) fn forget_stream_peer(&mut self, id: FlowId) {
        let Ok(flow) = self.flow_mut(id) else {
            return;
        };
        let reader = !flow.teardown.app_closed;
        let charge = flow.charge();
        let Some(socket) = flow.stream_mut().and_then(|s| s.socket.as_mut()) else {
            return;
        };
        let before = socket.buffer_memory();
        // `forget_peer` frees what it does not keep, whatever it returns.
        let kept = reader && socket.forget_peer();
        let after = socket.buffer_memory();
        self.account_buffers(charge, before, after);
        if !kept {
            self.release_stream(id);
        }
    }

    /// The flow moved, or its peer did, or its path answered a probe
    /// after a silence: resend at once what the path may have swallowed
    /// (see [`Socket::rewind`]); on a new path, after forgetting what was
    /// measured of the old one ([`Socket::new_path`]).
    pub(super) fn rewind_stream(&mut self, id: FlowId, why: Rewind) {
        let now = self.now;
        let Some(socket) = self
            .flow_mut(id)
            .ok()
            .and_then(|f| f.stream_mut())
            .and_then(|s| s.socket.as_mut())
        else {
            return;
        };
        let resent = match why {
            Rewind::NewPath => socket.new_path(now),
            Rewind::SamePath => socket.rewind(),
        };
        if resent > 0 {
            self.stats.replayed += 1;
        }
        self.queue_output(id);
    }

    /// A round trip the flow's control exchange measured on its current
    /// path: the stream's first sample of a new path
    /// ([`Socket::seed_round_trip`]).
    pub(super) fn seed_stream_round_trip(&mut self, id: FlowId, round_trip: Duration) {
        let now = self.now;
        if let Some(socket) = self
            .flow_mut(id)
            .ok()
            .and_then(|f| f.stream_mut())
            .and_then(|s| s.socket.as_mut())
        {
            socket.seed_round_trip(now, round_trip);
        }
    }

    /// Whether the flow has finished sending: for a stream, its socket's
    /// FIN is acknowledged (when the reference stack sends the SAL FIN); a
    /// datagram flow finishes when the application closes it or shuts its
    /// sending down.
    pub(super) fn done_sending(&mut self, id: FlowId) -> bool {
        let Ok(flow) = self.flow_mut(id) else {
            return false;
        };
        match &flow.transport {
            FlowTransport::Stream(stream) => stream.socket.as_ref().is_some_and(|s| {
                matches!(s.state(), State::FinWait2 | State::TimeWait | State::Closed)
            }),
            FlowTransport::Datagram(_) => flow.teardown.app_closed || flow.teardown.send_shut,
        }
    }

    /// Whether the flow waits for an answer from its peer: a control
    /// message, or stream data (or a FIN) not yet acknowledged.
    pub(super) fn awaits_peer(&mut self, id: FlowId) -> bool {
        self.flow_mut(id)
            .is_ok_and(|flow| flow.control.awaiting_answer() || transport_waits(flow))
    }

    /// Whether the flow's transport waits for the path to carry its own
    /// packets: a stream's data or FIN unacknowledged, and not only held
    /// back by a zero window (then it waits for the peer's application,
    /// and its zero-window probes back off from the RTO, past half the
    /// liveness timeout: an answered probe must count as the peer heard,
    /// or a receiver that stops reading makes the flow move).
    pub(super) fn transport_waits(&mut self, id: FlowId) -> bool {
        self.flow_mut(id).is_ok_and(|flow| {
            transport_waits(flow)
                && flow
                    .stream()
                    .and_then(|s| s.socket.as_ref())
                    .is_some_and(|s| s.remote_window() > 0 || s.send_queue() == 0)
        })
    }

    /// Notes that `id`'s socket holds its handshake ACK for the first
    /// write (see [`Host::release_held_acks`]).
    pub(super) fn hold_ack(&mut self, id: FlowId) {
        // A caller that never releases them still sees each go at its
        // timer; the list only must not grow without bound.
        if self.held_acks.len() >= HELD_ACKS_MAX {
            self.release_held_acks();
        }
        self.held_acks.push(id);
    }

    /// Sends at once the handshake ACKs that client flows hold for their
    /// application's first write (`stream.hold_handshake_ack` in the
    /// host's config): for a caller about to wait for the network, whose
    /// application will not write before a peer speaks (a server that
    /// speaks first must not wait for the delayed-ACK timer to see its
    /// client). An ACK held and not released goes with the first write, or
    /// alone when the delayed-ACK timer runs out.
    pub fn release_held_acks(&mut self) {
        let mut held = std::mem::take(&mut self.held_acks);
        for id in held.drain(..) {
            if let Some(socket) = (self.flow_mut(id).ok())
                .and_then(|flow| flow.stream_mut())
                .and_then(|stream| stream.socket.as_mut())
            {
                socket.release_ack();
                self.queue_output(id);
            }
        }
        self.held_acks = held;
    }

    /// Sends alone the SAL FIN that was to ride on the flow's next
    /// segment, if one waits (see [`Riders::fin_once`]).
    pub(super) fn send_fin_rider(&mut self, id: FlowId) {
        let Some(fin) = (self.flow_mut(id).ok())
            .and_then(|flow| flow.stream_mut())
            .and_then(|stream| stream.riders.fin_once.take())
        else {
            return;
        };
        self.send_kept(id, fin.verno);
    }

    /// Puts a stream flow whose socket may have something to send (or a
    /// deadline to act on) in the output queue: the one
    /// [`Host::poll_transmit`] drains for the link, or the one
    /// [`Host::poll`] drains for flows whose peer is this host.
    pub(super) fn queue_output(&mut self, id: FlowId) {
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        // Ours to the port in UDP carriage, as `queue_transmit` decides:
        // another host may share our address (a program's own SAL host
        // beside sald, or beside another program).
        let local = flow
            .path
            .transport_destination(flow.state)
            .is_some_and(|dst| self.interfaces.owns(&dst));
        let Some(stream) = flow.stream_mut() else {
            return;
        };
        if stream.queued || stream.socket.is_none() {
            return;
        }
        stream.queued = true;
        if local {
            self.local_output.push_back(id);
        } else {
            self.output.push_back(id);
        }
    }

    /// Whether a stream flow's packets go to this host itself.
    pub(super) fn is_loopback(&self, id: FlowId) -> bool {
        match self.endpoints.get(id) {
            Some(Endpoint::Flow(flow)) => flow
                .path
                .transport_destination(flow.state)
                .is_some_and(|dst| self.interfaces.owns(&dst)),
            _ => false,
        }
    }

    /// The flow left the output queue (its socket had nothing more to
    /// send): its deadline goes into the timer queue.
    pub(super) fn output_done(&mut self, id: FlowId) {
        let floor = self.now + MIN_REARM;
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return;
        };
        let FlowTransport::Stream(stream) = &mut flow.transport else {
            return;
        };
        stream.queued = false;
        if let Some(at) = stream.socket.as_ref().and_then(Socket::poll_at) {
            self.timers
                .arm(id, &mut flow.timers, Timer::Transport, at.max(floor));
        }
    }

    /// Writes the flow's next packet into `out` (see the module docs): the
    /// socket's next segment, under the SAL header its state calls for.
    pub(super) fn stream_transmit(
        &mut self,
        id: FlowId,
        now: Instant,
        out: &mut [u8],
    ) -> StreamOutput {
        // The first segment after the handshake goes under the SAL ACK's
        // header (SERVICE and all), in one packet, and a segment something
        // may ride on under a header of that rider's (see `rider.rs`): it
        // must leave that room.
        let (ack_owed, rider) = match self.endpoints.get(id) {
            Some(Endpoint::Flow(flow)) => (
                flow.stream().is_some_and(|s| s.ack_owed),
                super::rider::may_ride(flow),
            ),
            _ => (false, false),
        };
        let (header, rider_room) = match (ack_owed, rider) {
            (true, _) => (self.ack_repr(id, true).map(|(repr, ..)| repr), 0),
            (false, true) => (None, self.rider_room(id)),
            (false, false) => (None, 0),
        };
        let Some(Endpoint::Flow(flow)) = self.endpoints.get_mut(id) else {
            return StreamOutput::Idle;
        };
        let (charge, unaccepted) = (flow.charge(), flow.unaccepted);
        // Field by field: `flow` borrows the endpoints.
        let pressure = self.stats.buffer_pressure || self.budgets.pressure(charge);
        let state = flow.state;
        let Some(dst) = flow.path.transport_destination(state) else {
            return StreamOutput::Idle;
        };
        let src = flow.path.local;
        let moving = flow.control.in_flight(ControlKind::Rsyn);
        let kind = match state {
            FlowState::SynSent => Some(ControlKind::Syn),
            FlowState::SynReceived => Some(ControlKind::SynAck),
            _ => None,
        };
        let control_in_flight = kind.is_some_and(|kind| flow.control.in_flight(kind));
        let peer_flow = flow.peer_flow;
        let FlowTransport::Stream(stream) = &mut flow.transport else {
            return StreamOutput::Idle;
        };
        let Some(socket) = stream.socket.as_mut() else {
            return StreamOutput::Idle;
        };
        // An established flow's segments go under a bare base header,
        // written in front of the segment; handshake packets are built
        // whole (and kept) by the control path.
        let bare = state == FlowState::Established && header.is_none();
        let room = if bare { BASE_HEADER_LEN } else { 0 };
        Host::bound_socket(socket, pressure, unaccepted);
        let (state_before, memory_before) = (socket.state(), socket.buffer_memory());
        let drops_before = SocketCounters::of(socket);
        let reserved = match &header {
            Some(header) => header.header_len(),
            None => rider_room.saturating_sub(room),
        };
        let end = out.len().saturating_sub(reserved);
        let segment = out.get_mut(room..end).unwrap_or_default();
        let written = socket.poll_transmit(now, src.ip(), dst.ip(), segment);
        let changed = socket.state() != state_before;
        let (memory_after, drops_after) = (socket.buffer_memory(), SocketCounters::of(socket));
        if written.is_some() {
            stream.ack_owed = false;
        }
        let owes_ack = socket.owes_ack();
        self.stats.sockets_driven += 1;
        self.account_buffers(charge, memory_before, memory_after);
        self.account_counters(drops_before, drops_after);
        if changed {
            // A timer closed or reset the connection: the flow must see it.
            self.mark_dirty(id);
        }
        let Some(len) = written else {
            if rider_room > 0 {
                // Nothing to ride on now.
                self.send_unridden(id, owes_ack);
            }
            return StreamOutput::Idle;
        };
        let (flags, asks) = segment_kind(&out[room..room + len]);
        match state {
            FlowState::SynSent | FlowState::SynReceived => {
                // The socket's own retransmissions of its SYN or SYN-ACK go:
                // the SAL retransmits its control packet, which carries it.
                let (wanted, control) = if state == FlowState::SynSent {
                    (TCP_SYN, ControlFlags::SYN)
                } else {
                    (TCP_SYN | TCP_ACK, ControlFlags::SYN | ControlFlags::ACK)
                };
                if let Some(kind) = kind.filter(|_| flags & wanted == wanted && !control_in_flight)
                {
                    let with_service = kind == ControlKind::Syn;
                    self.send_new_control(id, kind, control, with_service, &out[..len]);
                }
                StreamOutput::Again
            }
            FlowState::Established => {
                if ack_owed {
                    // The SAL ACK carries the segment, data included (the
                    // socket kept it short enough): the server's accept
                    // finds the first bytes with the connection.
                    if asks {
                        self.note_asked(id);
                    }
                    if asks && moving {
                        // Kept for the rewind, as below.
                        self.send_ack(id, true, &[]);
                    } else {
                        self.send_ack(id, true, &out[..len]);
                    }
                    return StreamOutput::Again;
                }
                let payload = carries_payload(&out[room..room + len]);
                if asks {
                    self.note_asked(id);
                    if moving && !self.resends_riding_fin(id, flags & TCP_FIN != 0, payload) {
                        // A move is unconfirmed: the segment stays in the
                        // socket's send buffer, and the rewind once the move
                        // is confirmed sends it right behind what the old
                        // path lost. Sent now, it could not be delivered
                        // before the hole is filled, and every copy would
                        // draw a duplicate ACK that queues ahead of the
                        // RSYN-ACK. Nothing rides on it then.
                        if rider_room > 0 {
                            self.send_unridden(id, false);
                        }
                        return StreamOutput::Again;
                    }
                }
                let segment = &out[room..room + len];
                let rider = match rider_room {
                    0 => None,
                    _ => self.pick_rider(id, flags & TCP_FIN != 0, asks),
                };
                if let Some(repr) = rider {
                    self.send_packet(src, dst, super::output::build(&repr, segment));
                    // (Its packet was counted as the rider was picked.)
                    if let Ok(flow) = self.flow_mut(id) {
                        flow.counters.bytes_out += len as u64;
                    }
                    return StreamOutput::Again;
                }
                let repr = SalRepr::data(id, peer_flow, TransportProtocol::Stream.number());
                if repr.emit(out).is_err() {
                    return StreamOutput::Again;
                }
                if let Ok(flow) = self.flow_mut(id) {
                    flow.counters.packets_out += 1;
                    flow.counters.bytes_out += len as u64;
                }
                StreamOutput::Packet(Transmit {
                    src,
                    dst,
                    ttl: self.config.ttl,
                    kind: TransmitKind::Own,
                    len: BASE_HEADER_LEN + len,
                })
            }
            // A socket only exists in these states.
            FlowState::Resolving | FlowState::Dead => StreamOutput::Again,
        }
    }
}

/// Whether `flow`'s transport waits for the peer (see
/// [`Host::transport_waits`]).
fn transport_waits(flow: &Flow) -> bool {
    flow.stream()
        .and_then(|s| s.socket.as_ref())
        .is_some_and(|s| {
            s.send_queue() > 0
                || matches!(s.state(), State::FinWait1 | State::Closing | State::LastAck)
        })
}
