//! Moving bytes between applications' socketpairs and the host's flows.
//!
//! Each flow handed to an application gets one task. For a stream it moves
//! bytes both ways in turns, each turn under the daemon's lock: *up* reads
//! what the application wrote straight into the flow's TCP send buffer, as
//! much as the buffer takes (so a slow network slows the writer), and
//! *down* writes what the flow received straight from its receive buffer
//! into the socketpair (so a slow reader closes the TCP window). No buffer
//! of the task's own: the bytes are copied once in each direction, by the
//! kernel, between the socketpair and the flow's buffers. Then the task
//! waits for whatever can let it go on: the socket readable (up waits for
//! the application), writable (down waits for it), hung up (the
//! application, done sending, may close it while down goes on), or the
//! flow's signal (data arrived, send room opened, the flow ended). An idle
//! flow's task is a few hundred bytes waiting on three wakers.
//!
//! End of file on the socketpair is a half-close of the flow and vice
//! versa; the flow is closed when both directions are done, or when the
//! application closed its end. An application that closes its end with
//! bytes of ours unread in it resets the flow at once, as Linux resets a
//! TCP socket closed with data unread, also after it shut its sending
//! down: up reads no more then, so the close is heard as the hang-up it
//! makes, which comes once, at the close. So does an application that
//! marked its end to abort the flow before it shut it down both ways (a
//! socket shim's `connect(AF_UNSPEC)`, as TCP's `tcp_disconnect`: see
//! [`AppSocket::aborted`]). A flow that is
//! reset (or whose peer is given up on) delivers what had arrived, then its
//! socket is shut down both ways: the application's end hangs up, which the
//! shims report as `ECONNRESET`. When the daemon stops, every pump drops
//! its end of the socketpair (a hang-up too) and closes its flow, which
//! tells the peer. A hang-up after the peer's end of stream was delivered
//! is no reset to the application's reads, as a TCP socket's give 0 once
//! its FIN came: the pump marks the socket as it delivers the end of
//! stream (see [`StreamPump::pump_down`]), and as it hangs it up for a
//! reset with none before, which the hang-up alone cannot tell from a
//! finished flow once the application shut its own writing down
//! (`sal_control::RESET_MARK`).
//!
//! A write of down into the socket that fails is not always the
//! application gone ([`WriteFailure`]): want of kernel memory is retried
//! after a pause (backing off while it lasts), and an application that
//! shut its reading down (`SHUT_RD`) but keeps its end has what comes
//! thrown away, so that the peer's end of stream or reset still reaches it
//! (and the flow's window does not shut for good); its close then resets
//! the flow, as a TCP socket's close with bytes unread does.
//!
//! A stream flow delivered into an application's accept queue (`Deliver`)
//! may wait there, while the peer sends, for as long as the application
//! does not take it; the host counts it as nobody's meanwhile (its
//! buffers stay small and count against its listener: see `sal::proto`'s
//! `budget.rs`), or a remote peer that opened flows to a program slow to
//! accept could put the program's user under pressure. The pump watches
//! for what only a program that took it can do: write into its end (up
//! reads data or an end of file), or read from it, which gives back the
//! memory of what down wrote ([`AppSocket::unread_memory`], looked at
//! around down's writes only while the flow is unconfirmed). Until then
//! the socket's send buffer is made small too ([`UNCONFIRMED_SEND_BUFFER`])
//! once down has written more than a first request ([`SHRINK_PAST`]):
//! what down writes into it is kernel memory that no budget counts, in as
//! many flows as the peer opened. On the first sign the pump tells the
//! host the flow is accepted ([`Host::accepted`]), gives the socket its
//! send buffer back, and looks no more.
//!
//! A program may take a flow and then only look at what came, without
//! reading it (`MSG_PEEK`, waiting for a whole request), which gives no
//! such sign: down would fill the small buffer, and the program wait for
//! good for a request larger than it (Linux's TCP shows it 64 KiB or more).
//! So once down finds the small socket full, the pump also waits for the
//! program to take the flow's notice out of the accept queue, which sald
//! tells from the queue's memory ([`AcceptQueue::took`], one system call
//! a look: when the socket is found full, and at each take from the
//! queue while it waits). A program that takes a flow and then neither
//! reads, writes, nor lets down fill its socket leaves it counted as
//! nobody's: its window and its socket stay small, which matters only
//! once it reads, and then it is seen.
//!
//! A datagram socket or flow gets one task too, which turns each message
//! the application writes into a packet, and each datagram received into
//! a message. What the application writes is its user's work on sald's
//! one thread: the task takes it in steps of [`MESSAGES_PER_STEP`], each
//! charged to the socket's owner, and waits for the owner's ration before
//! the next (see `control::ration`). A user that floods its sockets gets
//! its share of the thread while others want it, and the thread when no
//! one does; on Linux a UDP flood costs the sender's own CPU, and it must
//! not cost everyone's daemon here.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::socket::{recv, send, MsgFlags, Shutdown as ShutdownHow};
use sal::proto::{ConnectError, Host, HostError};
use sal::FlowId;
use sal_control::DatagramFrame;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::accept_queue::AcceptQueue;
use crate::app_socket::{AppSocket, PeerEnd};
use crate::control::ration::Ration;
use crate::daemon::{FlowSignal, Shared};
use crate::shutdown::Shutdown;

/// The most bytes of one datagram message from an application.
const CHUNK: usize = 64 * 1024;

thread_local! {
    /// Where datagram pumps receive an application's message, one at a
    /// time, on the thread that runs them: a buffer per socket was 64 KiB
    /// of sald's memory for each datagram socket or flow, idle or not
    /// (10,000 idle sockets took sald from 33 to 693 MiB).
    static MESSAGE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Messages a datagram pump takes from its application per step: the
/// step is charged to the socket's owner, who waits for its ration before
/// the next, and other tasks get their turn in between. A step is one
/// look at the ration and one charge, not one per message; and what
/// others' work waits for when an indebted owner's step runs on an idle
/// turn of the thread (`control::ration`).
const MESSAGES_PER_STEP: usize = 16;

/// The send buffer of sald's end of a flow delivered into an accept queue
/// ([`AppSocket::send_buffer`]: the kernel memory what down writes into it
/// may hold unread) while the application has not been seen to take it;
/// the socket gets back the one it had once it is (see the module docs).
///
/// The kernel memory of a socketpair counts against no budget of ours, and
/// a remote peer chooses what flows it opens and fills: at Linux's default
/// (`net.core.wmem_default`, 208 KiB), the 278 flows one listener's queue
/// held, filled by their peer, took 57 MiB of kernel memory (36 MB of
/// data), besides the flow buffers the host counts (4 MiB); 9 MiB (5 MB)
/// now (`flows_parked_in_an_accept_queue_at_the_default_budgets`). 32 KiB
/// (asked for as 16 KiB, which the kernel doubles) still takes a first
/// request of up to 32 KiB written at once, or 20 KiB written segment by
/// segment (a write of 1,400 bytes holds 2.25 KiB, its bookkeeping
/// included); the rest of a larger one waits in the flow's receive buffer,
/// which the host counts, until the application reads (and is then seen).
const UNCONFIRMED_SEND_BUFFER: usize = 32 << 10;

/// What down writes into an unconfirmed flow's socket before it makes the
/// socket's send buffer small ([`UNCONFIRMED_SEND_BUFFER`]): most flows'
/// first requests are smaller, and their pumps never make the two system
/// calls. Made small at once (`getsockopt` and `setsockopt` as each pump
/// started), sequential connects through the preload bench took 50 µs
/// more each (p50 360 against 309 µs, three runs); what a peer can make a
/// queued flow hold stays about the same.
const SHRINK_PAST: usize = 16 << 10;

/// System calls one direction makes per turn at most, so that one busy
/// flow does not keep the others (and the packet path) waiting.
const CALLS_PER_TURN: usize = 16;

/// How long down first waits before it writes again after a write into
/// the socket failed for want of kernel memory (`ENOBUFS`, `ENOMEM`): the
/// application is still there, and memory comes back as others free it;
/// the socket's own readiness says nothing of it (it may have room), so
/// waiting for that would spin.
const TRANSIENT_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// The longest down waits after writes that keep failing for want of
/// memory ([`Pause`]): each failure in a row doubles the pause, from
/// [`TRANSIENT_PAUSE`] up to this. Memory that stays short (a host whose
/// kernel memory is taken for good) then costs each flow a failing write
/// a second, not a hundred; and what comes back is noticed within a
/// second.
const LONGEST_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Doublings of [`TRANSIENT_PAUSE`] past which the pause is
/// [`LONGEST_PAUSE`] (10 ms times 2^7 is over a second).
const MOST_DOUBLINGS: u8 = 7;

/// Down's wait after a write into the socket failed for want of kernel
/// memory: the moment it writes again. A deadline, not a wait started
/// afresh at each turn of the pump: whatever else wakes the pump (the
/// application writing, the peer's acknowledgements) would put it off
/// each time, and down would stay stopped for as long as up is busy.
/// Failures in a row back off, doubling the pause up to
/// [`LONGEST_PAUSE`]; a write that goes through starts it over (every
/// flow retried each 10 ms, for as long as memory stayed short, with no
/// backoff).
#[derive(Debug, Default, Clone, Copy)]
struct Pause {
    until: Option<Instant>,
    /// Writes that failed in a row since the last that went through,
    /// counted up to [`MOST_DOUBLINGS`].
    failed: u8,
}

impl Pause {
    /// A write failed for want of memory at `now`: down waits
    /// [`TRANSIENT_PAUSE`], doubled for each failure in a row before this
    /// one, [`LONGEST_PAUSE`] at most.
    fn start(&mut self, now: Instant) {
        let wait = TRANSIENT_PAUSE.saturating_mul(1 << self.failed);
        self.until = Some(now + wait.min(LONGEST_PAUSE));
        self.failed = (self.failed + 1).min(MOST_DOUBLINGS);
    }

    /// A write went through: the next failure pauses for
    /// [`TRANSIENT_PAUSE`] again.
    fn wrote(&mut self) {
        self.failed = 0;
    }

    /// When down may write again, if it is paused still (a pause that is
    /// over is forgotten). `now` is called only while paused: the clock is
    /// not read on every turn of every flow.
    fn until(&mut self, now: impl FnOnce() -> Instant) -> Option<Instant> {
        let until = self.until?;
        if until <= now() {
            self.until = None;
        }
        self.until
    }
}

/// What a turn of [`StreamPump::turn`] found.
#[derive(Debug, Default, Clone, Copy)]
struct Turn {
    /// Bytes moved or a direction ended: the host has work to send.
    moved: bool,
    /// Up waits for the application to write (the socket to be readable).
    read: bool,
    /// Down waits for the application to read (the socket to be writable).
    write: bool,
    /// Down goes on after the application shut its sending down: its
    /// close (the socket hung up) is awaited.
    hang_up: bool,
    /// A direction stopped at its call limit, not for want of bytes.
    again: bool,
    /// Down's write failed for want of kernel memory: it tries again at
    /// this moment ([`Pause`]).
    pause: Option<Instant>,
}

/// The two directions of a stream flow's pump.
#[derive(Debug)]
struct StreamPump {
    flow: FlowId,
    /// Application to flow: still open.
    up: bool,
    /// Flow to application: still open.
    down: bool,
    /// The application shut its sending down (up read its end of file):
    /// while down goes on, its close is awaited
    /// ([`StreamPump::application_closed`]).
    shut: bool,
    /// The socket was seen hung up: the application closed its end.
    hung_up: bool,
    /// The application shut its reading down (`SHUT_RD`) while open: the
    /// socket takes no more, so down throws away what arrives, until the
    /// peer's end of stream or a reset, which it still tells the
    /// application as it would have (see [`StreamPump::pump_down`]).
    discard: bool,
    /// Down threw bytes away (`discard`): the application never read
    /// them, so its close resets the flow, as Linux resets a TCP socket
    /// closed with data unread, which after `SHUT_RD` is whatever arrived
    /// since and was not read (see [`StreamPump::application_closed`]).
    discarded: bool,
    /// A write into the socket failed for want of kernel memory: down
    /// writes again once the pause is over (see [`Pause`]).
    pause: Pause,
    /// The socket was seen readable and not read dry since: only then does
    /// up read, because reading into the send buffer makes the buffer
    /// allocate its memory, and an idle flow should hold none.
    readable: bool,
    /// The socket has not been found full since it was last seen to have
    /// room: only then does down write (a flow's signal comes with every
    /// segment, and a reader that lags would otherwise cost a failing
    /// write per segment).
    writable: bool,
    /// A flow delivered into an accept queue that the application has not
    /// been seen to take from there yet: the host counts it as nobody's
    /// until then (see the module docs and [`StreamPump::taken`]).
    unconfirmed: bool,
    /// While `unconfirmed`: what the socket held unread
    /// ([`AppSocket::unread_memory`]) after down last wrote into it.
    unread_after_write: u32,
    /// While `unconfirmed`: the send buffer the socket had before it was
    /// made [`UNCONFIRMED_SEND_BUFFER`], given back once the application
    /// is seen (none if it was no larger, or could not be made smaller).
    send_buffer: Option<usize>,
    /// While `unconfirmed`, until the socket's send buffer is made small:
    /// the bytes down wrote into it (see [`SHRINK_PAST`]).
    down_unconfirmed: Option<usize>,
    /// While `unconfirmed`: the accept queue the flow's notice went into,
    /// and its place there.
    queued: Option<Queued>,
    /// While `unconfirmed`: the program was seen to take the flow's notice
    /// out of its accept queue ([`AcceptQueue::took`]).
    taken_from_queue: bool,
}

/// Where the notice of a flow delivered into an accept queue went: the
/// queue, and the notice's place in it ([`AcceptQueue::next_place`]).
#[derive(Debug, Clone)]
pub struct Queued {
    /// The listener's accept queue.
    pub queue: Arc<AcceptQueue>,
    /// The place of the flow's notice in it.
    pub place: u64,
}

impl StreamPump {
    fn finished(&self) -> bool {
        !self.up && !self.down
    }

    /// Moves what can be moved now, both ways.
    fn turn(&mut self, host: &mut Host, socket: &AppSocket) -> Turn {
        let mut turn = Turn::default();
        if self.up && self.readable {
            self.pump_up(host, socket, &mut turn);
        } else if self.up
            && matches!(host.send_room(self.flow), Err(e) if e != HostError::WouldBlock)
        {
            // Reset or gone while the application is silent: nothing more
            // goes up, and the pump must not wait for the application.
            self.up = false;
            turn.moved = true;
        } else if self.hung_up && self.down {
            // A hang-up is a close (or both ways shut) for good.
            self.application_closed(socket.peer_end(), socket, host, &mut turn);
        }
        if self.unconfirmed && self.taken_from_queue {
            self.taken(host, socket, &mut turn);
        }
        let paused = self.pause.until(Instant::now).is_some();
        if self.down && !paused {
            if self.unconfirmed {
                self.unconfirmed_down(host, socket, &mut turn);
            } else {
                self.pump_down(host, socket, &mut turn);
            }
        }
        turn.read = self.up && !self.readable;
        turn.pause = self.down.then(|| self.pause.until(Instant::now)).flatten();
        turn.write = self.down && !self.writable && turn.pause.is_none() && !self.discard;
        turn.hang_up = self.shut && self.down;
        turn
    }

    /// Application to flow: socket reads into the send buffer.
    fn pump_up(&mut self, host: &mut Host, socket: &AppSocket, turn: &mut Turn) {
        for _ in 0..CALLS_PER_TURN {
            let read = host.send_with(self.flow, |free| {
                moved(recv(socket.raw(), free, MsgFlags::empty()).map_err(io::Error::from))
            });
            match read {
                Ok(Ok(n)) if n > 0 => {
                    turn.moved = true;
                    // Only a program that took the flow writes into it,
                    // whether or not it has closed its end since (an
                    // answer written and closed before we looked).
                    if self.unconfirmed {
                        self.confirmed(host, socket, turn);
                    }
                }
                Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return;
                }
                // The application closed its socket with bytes of ours
                // unread in it.
                Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionReset => {
                    self.reset(host, turn);
                    return;
                }
                // End of file: half-close. The application may have
                // closed its socket (or shut it down both ways) rather
                // than only shut its sending down; if not, its close is
                // awaited.
                Ok(Ok(_)) | Ok(Err(_)) => {
                    let end = socket.peer_end();
                    if matches!(end, PeerEnd::Closed | PeerEnd::ClosedUnread) {
                        self.application_closed(end, socket, host, turn);
                        return;
                    }
                    let _ = host.shutdown(self.flow);
                    self.up = false;
                    self.shut = true;
                    turn.moved = true;
                    if self.unconfirmed {
                        // Shut for sending by a program that took it
                        // (closing every copy of an end nobody took, with
                        // its queue, makes no end of file alone).
                        self.confirmed(host, socket, turn);
                    }
                    return;
                }
                // No room: the flow's signal comes when its peer acknowledges.
                Err(HostError::WouldBlock) => return,
                // Reset, or closed for sending: nothing more goes up.
                Err(_) => {
                    self.up = false;
                    return;
                }
            }
        }
        turn.again = true;
    }

    /// The application closed its socket (or shut it down both ways), as
    /// `end` found it: nobody will read what comes down. If bytes of ours
    /// were left unread in it ([`PeerEnd::ClosedUnread`]), or thrown away
    /// after it shut its reading down (`discarded`: the peer would
    /// otherwise take them for read, where TCP's close resets), or it
    /// marked its end to abort the flow ([`AppSocket::aborted`]: a socket
    /// shim's `connect(AF_UNSPEC)`, as TCP's `tcp_disconnect`), the flow
    /// is reset at once ([`StreamPump::reset`]), with no FIN before.
    /// Otherwise up sends its end of stream if it had not, down is over,
    /// and the flow is closed as the pump ends, not left waiting for a
    /// peer that may never send a byte, which only a write could have
    /// noticed: that close resets the flow too if received bytes wait in
    /// its buffer or more come later ([`Host::close`]), and bounds the wait
    /// for the peer's end by the orphan timeout, as a closed TCP socket's
    /// FIN-WAIT-2.
    fn application_closed(
        &mut self,
        end: PeerEnd,
        socket: &AppSocket,
        host: &mut Host,
        turn: &mut Turn,
    ) {
        if end == PeerEnd::ClosedUnread || self.discarded || socket.aborted() {
            self.reset(host, turn);
            return;
        }
        if self.up {
            let _ = host.shutdown(self.flow);
            self.up = false;
            self.shut = true;
        }
        self.down = false;
        turn.moved = true;
    }

    /// The application closed its socket with bytes of ours unread in it:
    /// as a TCP socket closed with data unread, the flow is reset, so that
    /// the peer learns nobody read what it sent (RFC 1122, 4.2.2.13).
    fn reset(&mut self, host: &mut Host, turn: &mut Turn) {
        let _ = host.abort(self.flow);
        self.up = false;
        self.down = false;
        turn.moved = true;
    }

    /// Down for a flow the application has not been seen to take yet
    /// ([`StreamPump::pump_down`] between two looks at what the socket
    /// holds unread): what down wrote before falling since is the
    /// application reading, and so is nothing left unread of what it
    /// writes now. While the socket is known full no look is taken: its
    /// room opening, which the application's reading alone brings, comes
    /// first. One system call per turn that writes, and another before
    /// the next write, until the application is seen; none for a flow
    /// nobody reads, nor for one handed over otherwise.
    fn unconfirmed_down(&mut self, host: &mut Host, socket: &AppSocket, turn: &mut Turn) {
        let before = self.unread_after_write;
        if self.writable && before > 0 && socket.unread_memory() < before {
            self.taken(host, socket, turn);
        }
        let wrote = self.pump_down(host, socket, turn);
        if self.unconfirmed && wrote {
            self.unread_after_write = socket.unread_memory();
            if self.unread_after_write == 0 {
                self.taken(host, socket, turn);
            }
        }
    }

    /// The application was seen to use the flow delivered into its accept
    /// queue, so it took it from there: the host counts the flow as
    /// accepted from now on (its buffers may grow, and count against its
    /// user), unless the application's end is gone, which is what threw
    /// away what it held unread.
    fn taken(&mut self, host: &mut Host, socket: &AppSocket, turn: &mut Turn) {
        self.unread_after_write = 0;
        self.taken_from_queue = false;
        // Taken or thrown away with the queue: it has no more to say (a
        // notice thrown away stays taken, and the wait would end at once
        // for as long as the socket stays full).
        self.queued = None;
        if matches!(socket.peer_end(), PeerEnd::Open | PeerEnd::Shut) {
            self.confirmed(host, socket, turn);
        }
    }

    /// The application has the flow: the host counts it as accepted, and
    /// the socket gets its send buffer back, whose room down may fill at
    /// once.
    fn confirmed(&mut self, host: &mut Host, socket: &AppSocket, turn: &mut Turn) {
        self.unconfirmed = false;
        self.queued = None;
        self.taken_from_queue = false;
        self.unread_after_write = 0;
        self.down_unconfirmed = None;
        if let Some(bytes) = self.send_buffer.take() {
            if socket.set_send_buffer(bytes).is_ok() {
                self.writable = true;
            }
        }
        let _ = host.accepted(self.flow);
        turn.moved = true;
    }

    /// Flow to application: the receive buffer written to the socket;
    /// whether anything was.
    fn pump_down(&mut self, host: &mut Host, socket: &AppSocket, turn: &mut Turn) -> bool {
        let mut wrote = false;
        for _ in 0..CALLS_PER_TURN {
            let (writable, discard) = (self.writable, self.discard);
            let (down_unconfirmed, send_buffer) =
                (&mut self.down_unconfirmed, &mut self.send_buffer);
            let written = host.recv_with(self.flow, |data| {
                if discard {
                    return (data.len(), Ok(data.len()));
                }
                if !writable {
                    // Known full: no failing write; the flow's end or reset
                    // still comes through.
                    return moved(Err(io::ErrorKind::WouldBlock.into()));
                }
                if let Some(so_far) = down_unconfirmed {
                    *so_far += data.len();
                    if *so_far > SHRINK_PAST {
                        *send_buffer = small_send_buffer(socket);
                        *down_unconfirmed = None;
                    }
                }
                moved(send(socket.raw(), data, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from))
            });
            match written {
                Ok(Some(Ok(n))) => {
                    turn.moved = true;
                    wrote = true;
                    self.pause.wrote();
                    self.discarded |= discard && n > 0;
                }
                Ok(Some(Err(error))) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return wrote;
                }
                // Nothing yet: the flow's signal comes when data arrives.
                Err(HostError::WouldBlock) => return wrote,
                // End of stream: the application reads end of file.
                Ok(None) => {
                    // Whatever hangs the socket up after this (the flow's
                    // close, a reset, a peer given up on, the daemon
                    // stopping) comes after the peer's end of stream, which
                    // a TCP socket's reads never report as a reset: they
                    // give what had arrived and then 0 once the FIN came,
                    // and only a write learns (`EPIPE`, which the hang-up
                    // gives). So the socket is marked for the application's
                    // shim to read a hang-up as end of file
                    // (`socket_shim::reset`), and before the shutdown: once
                    // the application has shut its sending down (in any
                    // process that shares the socket; its shim knows only
                    // in its own), the shutdown alone hangs it up.
                    socket.mark_ended();
                    self.end_down(socket, ShutdownHow::Write, turn);
                    return wrote;
                }
                Ok(Some(Err(error))) => match write_failure(&error, || socket.peer_end()) {
                    WriteFailure::Transient => {
                        self.pause.start(Instant::now());
                        return wrote;
                    }
                    WriteFailure::ReadingShut => {
                        self.discard = true;
                        turn.moved = true;
                    }
                    // An application that went away: end of file too.
                    WriteFailure::Gone => {
                        self.end_down(socket, ShutdownHow::Write, turn);
                        return wrote;
                    }
                },
                // A reset, or a peer given up on, once what had arrived
                // is through: a socketpair carries no error, so the socket
                // is shut down both ways, which the application's end sees
                // as a hang-up with its end of file (the shims turn that
                // into `ECONNRESET`, see `socket_shim::reset`).
                Err(_) => {
                    // Marked first, for a hang-up that tells nothing alone
                    // (the application shut its own writing down).
                    socket.mark_reset();
                    self.end_down(socket, ShutdownHow::Both, turn);
                    return wrote;
                }
            }
        }
        turn.again = true;
        wrote
    }

    /// Down is over: the socket is shut down `how`.
    fn end_down(&mut self, socket: &AppSocket, how: ShutdownHow, turn: &mut Turn) {
        let _ = nix::sys::socket::shutdown(socket.raw(), how);
        self.down = false;
        turn.moved = true;
    }
}

/// What a failed write of down into an application's stream socket means
/// (other than `EAGAIN`, for which down waits for room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFailure {
    /// No kernel memory for it (`ENOBUFS`, `ENOMEM`): the application is
    /// still there, and the write is tried again in a moment (a
    /// [`Pause`], longer for each failure in a row).
    Transient,
    /// The application shut its reading down (`SHUT_RD`) and keeps its
    /// end: the socket takes no more, so what comes is thrown away, but
    /// down goes on to the peer's end of stream or a reset. Told to the
    /// application by how the socket is left, as ever, they decide what its
    /// reads give after what it had received, as TCP's after `SHUT_RD`: end
    /// of file once the peer's FIN came (the socket is then marked,
    /// whatever follows), `ECONNRESET` for a reset without one. Ending down
    /// here instead left the end of stream undelivered, so that a FIN and a
    /// reset after it read as a reset, and the flow's window shut for good.
    ReadingShut,
    /// The application closed its end: nobody reads any more.
    Gone,
}

/// Classifies a failed write of down into the application's socket;
/// `peer` tells what became of the application's end (one system call,
/// made only for an error that may be a `SHUT_RD`).
fn write_failure(error: &io::Error, peer: impl FnOnce() -> PeerEnd) -> WriteFailure {
    use nix::libc::{ENOBUFS, ENOMEM, EPIPE};
    match error.raw_os_error() {
        Some(ENOBUFS | ENOMEM) => WriteFailure::Transient,
        Some(EPIPE) if matches!(peer(), PeerEnd::Open | PeerEnd::Shut) => WriteFailure::ReadingShut,
        _ => WriteFailure::Gone,
    }
}

/// What a socket read or write into (out of) a flow's buffer moved, for
/// [`Host::send_with`] and [`Host::recv_with`]: the byte count, and the
/// result itself.
fn moved(result: io::Result<usize>) -> (usize, io::Result<usize>) {
    (*result.as_ref().unwrap_or(&0), result)
}

/// Serves one stream flow until both directions are finished (or the daemon
/// stops), then closes it. `queued`: the flow was delivered into an
/// accept queue, and the host counts it as accepted only once the
/// application is seen to have taken it (see the module docs).
pub async fn stream(
    shared: Arc<Shared>,
    flow: FlowId,
    signal: Arc<FlowSignal>,
    socket: AppSocket,
    queued: Option<Queued>,
    mut shutdown: Shutdown,
) {
    let unconfirmed = queued.is_some();
    let mut pump = StreamPump {
        flow,
        up: true,
        down: true,
        shut: false,
        hung_up: false,
        discard: false,
        discarded: false,
        pause: Pause::default(),
        readable: false,
        writable: true,
        unconfirmed,
        unread_after_write: 0,
        send_buffer: None,
        down_unconfirmed: unconfirmed.then_some(0),
        queued,
        taken_from_queue: false,
    };
    loop {
        let turn = {
            let mut core = shared.lock();
            let turn = pump.turn(&mut core.host, &socket);
            if turn.moved {
                core.run();
            }
            turn
        };
        if pump.finished() {
            break;
        }
        if turn.again {
            tokio::task::yield_now().await;
            continue;
        }
        // An unconfirmed flow's socket found full: the program may be
        // looking at what came without reading (see the module docs).
        // Boxed: inline, the wait's state would be in every flow's task,
        // idle or not.
        let mut taken = match (&pump.queued, turn.write) {
            (Some(queued), true) => Some(Box::pin(taken_from(queued.clone()))),
            _ => None,
        };
        // Boxed for the same reason: only a flow whose write failed for
        // want of memory waits for it.
        let mut pause = turn
            .pause
            .map(|until| Box::pin(tokio::time::sleep_until(until)));
        tokio::select! {
            biased;
            () = shutdown.recv() => break,
            () = signal.notified() => {}
            _ = socket.readable(), if turn.read => pump.readable = true,
            _ = socket.writable(), if turn.write => pump.writable = true,
            _ = socket.hung_up(), if turn.hang_up => pump.hung_up = true,
            () = async {
                match taken.as_mut() {
                    Some(taken) => taken.await,
                    None => std::future::pending().await,
                }
            }, if taken.is_some() => {
                pump.taken_from_queue = true;
            }
            () = async {
                match pause.as_mut() {
                    Some(pause) => pause.await,
                    None => std::future::pending().await,
                }
            }, if pause.is_some() => {}
        }
    }
    let mut core = shared.lock();
    let _ = core.host.close(flow);
    core.run();
}

/// Returns once the program took the notice of `queued` out of its accept
/// queue.
async fn taken_from(queued: Queued) {
    queued.queue.taken(queued.place).await
}

/// Makes `socket`'s send buffer [`UNCONFIRMED_SEND_BUFFER`], if it was
/// larger: the one it had, to give back.
fn small_send_buffer(socket: &AppSocket) -> Option<usize> {
    let normal = socket.send_buffer().ok()?;
    let smaller =
        normal > UNCONFIRMED_SEND_BUFFER && socket.set_send_buffer(UNCONFIRMED_SEND_BUFFER).is_ok();
    smaller.then_some(normal)
}

/// A datagram pump's SOCK_SEQPACKET socket, registered with the runtime.
struct Packets(AppSocket);

impl Packets {
    /// Registers `fd` (made non-blocking) with the runtime.
    fn new(fd: OwnedFd) -> io::Result<Packets> {
        Ok(Packets(AppSocket::new(fd)?))
    }

    /// Receives one message and hands it to `handle` (in a buffer the
    /// thread's datagram pumps share, see [`MESSAGE`]); `Ok(None)` is end
    /// of file. A socket pair of messages reads 0 bytes both for an empty
    /// message (a UDP program may send one) and at its end: it is a message
    /// while the other end is still open for sending. (An empty message
    /// the program sent right before it shut its sending down reads as the
    /// end.)
    async fn recv_with<R>(&self, mut handle: impl FnMut(&[u8]) -> R) -> io::Result<Option<R>> {
        self.0
            .read_with(|fd| {
                MESSAGE.with_borrow_mut(|buf| {
                    buf.resize(CHUNK, 0);
                    let n = recv(fd, buf, MsgFlags::empty())?;
                    let message = n > 0 || self.0.peer_end() == PeerEnd::Open;
                    Ok(message.then(|| handle(&buf[..n])))
                })
            })
            .await
    }

    /// Sends one message, waiting for room.
    async fn send(&self, message: &[u8]) -> io::Result<()> {
        self.0
            .write_with(|fd| Ok(send(fd, message, MsgFlags::MSG_NOSIGNAL)?))
            .await
            .map(drop)
    }
}

/// Hands each message the application writes to `send`, until end of file
/// or an error, in steps of [`MESSAGES_PER_STEP`] charged to `ration`'s
/// user, who waits for its ration before each (see the module docs).
async fn send_up(packets: &Packets, ration: &Ration, mut send: impl FnMut(&[u8])) {
    while ration.step(up_step(packets, &mut send)).await {
        // The others' turn, whoever floods (a privileged user's too).
        tokio::task::yield_now().await;
    }
}

/// Up to [`MESSAGES_PER_STEP`] of the application's messages, each handed
/// to `send`: whether more may come (false at end of file or an error).
async fn up_step(packets: &Packets, send: &mut impl FnMut(&[u8])) -> bool {
    for _ in 0..MESSAGES_PER_STEP {
        if !matches!(packets.recv_with(&mut *send).await, Ok(Some(()))) {
            return false;
        }
    }
    true
}

/// Serves an unconnected datagram socket: frames from the app are sent to
/// services or peers, datagrams from the host go to the app as frames.
/// `owned` sockets (opened with OpenDatagram) are closed when the app closes
/// its end; a listener's socket lives as long as the listener. What the app
/// sends is charged to its owner's `ration` (see [`send_up`]).
pub async fn datagram_socket(
    shared: Arc<Shared>,
    socket: FlowId,
    signal: Arc<FlowSignal>,
    fd: OwnedFd,
    owned: bool,
    ration: Ration,
    mut shutdown: Shutdown,
) {
    let Ok(packets) = Packets::new(fd) else {
        return;
    };
    let send = |message: &[u8]| {
        let mut core = shared.lock();
        let result = match DatagramFrame::decode(message) {
            Ok(DatagramFrame::SendTo {
                service,
                via: None,
                data,
            }) => core.host.send_to(socket, service, &data),
            Ok(DatagramFrame::SendTo {
                service,
                via: Some(via),
                data,
            }) => core.host.send_to_via(socket, service, via, &data),
            Ok(DatagramFrame::Reply { peer, data }) => core.host.send_reply(socket, peer, &data),
            Ok(DatagramFrame::Received { .. } | DatagramFrame::Refused) | Err(_) => {
                tracing::debug!(%socket, "bad datagram frame from application");
                return;
            }
        };
        if let Err(error) = result {
            tracing::debug!(%socket, %error, "datagram not sent");
        }
        core.run();
    };
    let up = send_up(&packets, &ration, send);
    let down = async {
        loop {
            let received = shared.lock().host.recv_from(socket);
            let frame = match received {
                Ok(datagram) => DatagramFrame::Received {
                    peer: datagram.peer,
                    service: datagram.service,
                    data: datagram.data,
                },
                Err(HostError::Connect(ConnectError::Refused)) => DatagramFrame::Refused,
                Err(HostError::WouldBlock) => {
                    signal.notified().await;
                    continue;
                }
                Err(_) => return,
            };
            if packets.send(&frame.encode()).await.is_err() {
                return;
            }
        }
    };
    // Either direction ending means the app is gone (or the socket closed).
    tokio::select! {
        () = up => {}
        () = down => {}
        () = shutdown.recv() => {}
    }
    let mut core = shared.lock();
    core.disown(socket);
    if owned {
        let _ = core.host.close_datagram(socket);
        core.owners.release(socket);
    }
}

/// Serves a connected datagram flow: one message per datagram both ways.
/// Either side may finish first, as with the reference stack's FINs: the
/// application shutting down its sending side (or closing its end) sends
/// our FIN, and datagrams still come down until the peer's FIN, which is
/// end of file for the application (its end of the socketpair is shut down
/// for reading); it may go on sending after that. The pump ends when both
/// directions are done, or the flow is gone. What the application sends is
/// charged to its owner's `ration` (see [`send_up`]).
pub async fn datagram_flow(
    shared: Arc<Shared>,
    flow: FlowId,
    signal: Arc<FlowSignal>,
    fd: OwnedFd,
    ration: Ration,
    mut shutdown: Shutdown,
) {
    let Ok(packets) = Packets::new(fd) else {
        return;
    };
    let up_finished = AtomicBool::new(false);
    let up_done = Notify::new();
    let send = |message: &[u8]| {
        let mut core = shared.lock();
        if let Err(error) = core.host.send_datagram(flow, message) {
            tracing::debug!(%flow, %error, "datagram not sent");
        }
        core.run();
    };
    let up = async {
        send_up(&packets, &ration, send).await;
        // Nothing more to send: our FIN.
        let mut core = shared.lock();
        let _ = core.host.shutdown(flow);
        core.run();
        up_finished.store(true, Ordering::Release);
        up_done.notify_one();
    };
    let down = async {
        loop {
            let received = shared.lock().host.recv_datagram(flow);
            match received {
                Ok(Some(data)) => {
                    if packets.send(&data).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    // End of file for the application; it may still send.
                    let _ = nix::sys::socket::shutdown(
                        packets.0.raw(),
                        nix::sys::socket::Shutdown::Write,
                    );
                    if !up_finished.load(Ordering::Acquire) {
                        up_done.notified().await;
                    }
                    return;
                }
                Err(HostError::WouldBlock) => signal.notified().await,
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = shutdown.recv() => {}
    }
    let mut core = shared.lock();
    let _ = core.host.close(flow);
    core.run();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(errno: i32, peer: PeerEnd) -> WriteFailure {
        write_failure(&io::Error::from_raw_os_error(errno), || peer)
    }

    /// Want of kernel memory is no end of the application: the write is
    /// tried again (it used to end the flow's way down, as a closed
    /// application's socket does).
    #[test]
    fn a_write_without_memory_is_tried_again() {
        for errno in [nix::libc::ENOBUFS, nix::libc::ENOMEM] {
            for peer in [PeerEnd::Open, PeerEnd::Closed] {
                assert_eq!(failure(errno, peer), WriteFailure::Transient, "{errno}");
            }
        }
    }

    /// A pause after a write without memory ends at its deadline, however
    /// often the pump turns meanwhile (the application writing, the peer's
    /// acknowledgements). It used to be a wait started afresh at each
    /// turn, which each of those put off: down stayed stopped for as long
    /// as up was busy.
    #[test]
    fn a_pause_ends_at_its_deadline_however_often_the_pump_turns() {
        let start = Instant::now();
        let mut pause = Pause::default();
        assert_eq!(pause.until(|| start), None);
        pause.start(start);
        let deadline = start + TRANSIENT_PAUSE;
        for ms in 0..10 {
            let now = start + std::time::Duration::from_millis(ms);
            assert_eq!(pause.until(|| now), Some(deadline), "{ms} ms");
        }
        assert_eq!(pause.until(|| deadline), None);
        assert_eq!(pause.until(|| start), None, "forgotten once over");
    }

    /// Writes that keep failing for want of memory back off: each pause
    /// doubles the one before, from 10 ms up to a second, and a write that
    /// goes through starts over at 10 ms. Every flow used to try again
    /// each 10 ms for as long as memory stayed short.
    #[test]
    fn pauses_double_up_to_a_second_and_start_over_after_a_write() {
        let mut now = Instant::now();
        let mut pause = Pause::default();
        let mut waits = Vec::new();
        for _ in 0..10 {
            pause.start(now);
            let until = pause.until(|| now).expect("paused");
            waits.push((until - now).as_millis());
            now = until;
            assert_eq!(pause.until(|| now), None, "over at its deadline");
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        pause.wrote();
        pause.start(now);
        assert_eq!(pause.until(|| now), Some(now + TRANSIENT_PAUSE));
    }

    /// `EPIPE` into a socket whose application end is open is its
    /// `SHUT_RD`; into a closed one, the application is gone, and so is it
    /// for any other error.
    #[test]
    fn a_broken_pipe_is_a_shut_rd_while_the_application_is_there() {
        assert_eq!(
            failure(nix::libc::EPIPE, PeerEnd::Open),
            WriteFailure::ReadingShut
        );
        assert_eq!(
            failure(nix::libc::EPIPE, PeerEnd::Shut),
            WriteFailure::ReadingShut
        );
        assert_eq!(
            failure(nix::libc::EPIPE, PeerEnd::Closed),
            WriteFailure::Gone
        );
        assert_eq!(
            failure(nix::libc::EPIPE, PeerEnd::ClosedUnread),
            WriteFailure::Gone
        );
        assert_eq!(
            failure(nix::libc::ECONNRESET, PeerEnd::Open),
            WriteFailure::Gone
        );
    }
}
