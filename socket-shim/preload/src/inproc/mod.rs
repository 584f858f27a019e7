//! The in-process mode (`serval-run --in-process`, `SERVAL_SHIM_INPROC=1`;
//! `docs/in-process-sal.md`, stage 3b, first slice): the program's stream
//! sockets run on a SAL host inside the program ([`sal_inproc::Runtime`],
//! on its own UDP socket), so that `connect`, `accept`, `read` and `write`
//! cost no wake-up of sald or of a thread in another process. Off unless
//! the environment asks for it when the library is loaded: without it,
//! nothing here runs and every socket takes the daemon path.
//!
//! # What goes in-process
//!
//! A stream socket (`AF_SERVAL` `SOCK_STREAM`, or an inet-mode TCP socket
//! to or on a mapped port) keeps the daemon design's placeholder until it
//! connects or listens:
//!
//! - `connect` opens the flow with [`sal_inproc::Runtime::connect`]
//!   (blocking, non-blocking with `EINPROGRESS`, or until `SO_SNDTIMEO`);
//! - `bind` registers the prefix with sald as a relay (`Request::Relay`,
//!   the engine's UDP socket as proof), so that `EADDRINUSE` still comes
//!   from `bind`, and keeps that control connection open for as long as
//!   the socket lives (its end ends the relay); `listen` then makes the
//!   engine's listener. A refusal other than `EADDRINUSE` gets a daemon
//!   listener instead, as without this mode.
//!
//! The engine is made at the first such call ([`runtime`]): it asks sald
//! for its UDP locator (`ListInterfaces`), binds its socket on that
//! address (port 0), routes every SYN there and resolves through sald
//! (cached resolution), if sald says it relays (the `relays` field of
//! its `Interfaces` answer): without relays (native carriage, or
//! `--no-relays`), sald neither routes a program's SYNs nor relays its
//! listeners. If there is no such locator,
//! no relaying, or anything fails, the process remembers it and every
//! socket takes the daemon path.
//!
//! # Descriptors
//!
//! The program's number becomes a duplicate of the object's readable
//! eventfd (never the engine's own, which it reuses after a close), so
//! `poll`, `select` and `epoll` see `POLLIN` natively. Which numbers are
//! in-process, and what each means, is the [`registry`]'s: copies made
//! with `dup`, `dup2`, `dup3` and `fcntl(F_DUPFD)` share one [`Socket`],
//! whose flow closes when the last number closes. The socket's
//! `O_NONBLOCK` is the shim's (the eventfd's file status flags are the
//! engine's and must stay non-blocking): `fcntl(F_GETFL/F_SETFL)` and
//! `ioctl(FIONBIO)` answer from it; `ioctl(FIONREAD)` (`SIOCINQ`),
//! `ioctl(SIOCOUTQ)` and `ioctl(SIOCOUTQNSD)` count the stream's queues
//! in the engine (`EINVAL` on a listener), and `SIOCATMARK` answers 0,
//! as TCP's; `fstat`, `fstatat` and `statx` answer as for a TCP socket
//! (`S_ISSOCK`, an inode of the socket's own: the crate's `stat`). Numbers are close-on-exec in the
//! kernel, copies made by `dup`, `dup2` and `F_DUPFD` included (the shim
//! sets it where the kernel would not): an eventfd never crosses `exec`,
//! a socket does only through the hand-over to sald (see "exec" below).
//! What the program asked for is kept beside
//! ([`registry`]): `fcntl(F_GETFD)` answers it, `F_SETFD`, `FIOCLEX` and
//! `FIONCLEX` set it, and a number handed over to sald at `fork` or
//! `exec` gets it.
//!
//! Each number is checked against the eventfd it was made a copy of
//! (`kcmp`, one system call per call on an in-process number; `fstat`,
//! weaker, where `kcmp` is refused: see [`registry`]), so that a number
//! closed behind the shim's back (`syscall(SYS_close)`, `close_range`,
//! `fclose` of an `fdopen`ed socket) and reused by another file is that
//! file's. `dup2`/`dup3` onto an in-process number let go of it (its
//! epoll registrations included) before the kernel replaces its file.
//! `connect` and `listen` put the object at the number only if it still
//! holds the file the call began with (`EBADF` if the program closed it
//! meanwhile); `accept` takes a number before it takes the flow, so that
//! `EMFILE` leaves the flow queued.
//!
//! An inet-mode socket is the kernel's TCP socket until its `connect`;
//! one that nothing else can hold is kept when the connect puts the
//! stream at its number, and is the next `socket()`'s, made new
//! ([`recycle`]): making and destroying it was 5 % of both CPUs at high
//! connection rates.
//!
//! # Waiting
//!
//! Calls that block wait inside the engine, which drives the host.
//! `poll` and `ppoll` ([`poll`]) watch the object's writable eventfd for
//! `POLLOUT` and drive the host themselves while they wait (the engine's
//! UDP socket and timerfd join the set). epoll registrations of
//! in-process numbers are recorded and removed when the number closes
//! (the eventfd's file outlives it); both parts of one (the number for
//! input, a private copy of the writable eventfd for `EPOLLOUT`) go under
//! tags of the shim's that `epoll_wait` turns back into the program's
//! `data`, merging the two parts' events into one, holding
//! `EPOLLONESHOT` for both, and dropping events of tags retired
//! meanwhile ([`epoll`]); `epoll_wait` does not drive the host (the
//! engine's driver thread does, after its 2 ms grace period).
//! `shutdown(SHUT_RD)` gives the queued bytes, then end of file, and
//! wakes a blocked reader; a listener's `shutdown` stops it (blocked
//! and later `accept`s fail with `EINVAL`). `select` and `pselect`
//! go through the same `poll` when their sets hold an in-process number
//! ([`select`]).
//!
//! # exit
//!
//! At `exit` (a destructor of the shim's, `.fini_array`, which runs after
//! the program's `atexit` handlers and static destructors: see `engine`),
//! every in-process socket is closed and the host driven until every
//! stream is finished both ways (its bytes and end of stream
//! acknowledged, the peer's end received; 2 s at most), as the kernel
//! goes on sending a dying process's last bytes; a
//! killed process's flows are simply gone (their peers time out).
//!
//! # fork
//!
//! Before a `fork`, every in-process socket is handed to sald
//! ([`handover`]): established streams are exported and adopted,
//! listeners listen through sald, and the numbers become the daemon
//! path's sockets, which parent and child share as they would TCP's.
//! What is left in-process (a stream still connecting or already
//! closing, one sald refused) stays the parent's: a forked child never
//! touches its parent's engine (its lock may be held by a thread that
//! does not exist in the child). The runtime is forgotten there (leaked,
//! never dropped; its UDP socket, timerfd and their copies closed in the
//! child), such an inherited stream fails with `ECONNRESET` (`ENOTCONN`
//! if it was connecting; `close` works), an inherited listener is one
//! that stopped listening (`accept`: `EINVAL`; `poll` and `select` never
//! report it ready; closing it closes the child's copy of sald's relay
//! connection), and the child makes a fresh runtime for the sockets it
//! makes.
//!
//! # exec
//!
//! Before an `exec` (the exec family is interposed: `crate::exec`), the
//! sockets go to sald as before a `fork`, so that a listener, or a stream
//! the program leaves open, crosses into the new image as a daemon-path
//! socket (a listener in the record of what crosses `exec`, `inherit`;
//! close-on-exec numbers are closed by the kernel at the `exec` and sald
//! ends their flows as TCP's close would), and the streams the program
//! closed get what is left of 2 s after the hand-over to deliver their
//! bytes, as at exit. A failed
//! `exec` leaves the sockets with sald. Not handed over, hence not
//! crossing: streams still connecting or closing, as at `fork`; they are
//! reset before the `exec`, so that their peers hear of it at once (and
//! read as reset after a failed one). A stream whose buffers hold more
//! than an `Adopt` frame carries is given the linger's time to drain
//! first. A child that shares its parent's memory (`vfork`) hands
//! nothing over: its `exec` would move the parent's sockets. An `exec`
//! from a signal handler that interrupted a hand-over hands nothing over
//! (its sockets are lost), rather than deadlock.
//!
//! # connect to AF_UNSPEC
//!
//! A `connect` to `AF_UNSPEC` on an in-process stream resets its flow
//! (RST, as TCP's `tcp_disconnect`), whatever its state, and leaves its
//! numbers an unconnected daemon-path socket that reports the reset once
//! and may connect again (`handover::disconnect_at`); a call that waited
//! on the stream fails with `EPIPE`. A listener goes to sald, whose daemon
//! path stops it, bound still.
//!
//! # connect after a failed connect
//!
//! As Linux's TCP (measured, 6.18): a failed connect's error is reported
//! once, by whichever call comes first; reads then give end of file. A
//! `connect` reports the failure (its error, or `ECONNABORTED` if another
//! call reported that), and the socket is unconnected from then on: the
//! next `connect` starts anew, on the daemon path (the numbers become an
//! unconnected daemon-path socket, `handover::unconnect_at`); reads give
//! `ENOTCONN` from the failure a connect saw on. A blocking connect's
//! failure is its own error, after which the socket is unconnected; a
//! thread that waited for another's connect gets `EPIPE` when that one
//! reported the failure. The daemon path's own sockets answer `ENOTCONN`
//! to reads after the error and connect again at once. Not done: copies
//! of the number (`dup`) that connect anew each get their own socket on
//! the daemon path, where Linux's would share one.
//!
//! # Not done
//!
//! - glibc's stdio and `sendfile`/`splice` reach a descriptor through
//!   libc's internal calls: `fdopen`, `sendfile` and `splice` of an
//!   in-process number hand its socket to sald first ([`handover`]),
//!   where it is a kernel socket. A `FILE` made otherwise on one (a
//!   number opened as a stream before it became a socket) would read the
//!   eventfd's counter.
//! - An inherited listener registered in epoll in a forked child can
//!   still be reported ready (the eventfd is the parent's file).
//! - The threads' wake-up eventfds and the resolver's connection of a
//!   forgotten parent's engine stay open (leaked) in a forked child.
//! - Where `kcmp` is refused, a number reused by another eventfd (the
//!   engine's own among them) is not noticed.
//! - `dup2`/`dup3` onto an in-process number that fails after the number
//!   was let go of (`EINTR`, `EBUSY`) leaves a bare eventfd there.
//! - Signals: while some handler without `SA_RESTART` is installed, any
//!   signal interrupts a blocking call without a timeout (`EINTR`), one
//!   with `SA_RESTART` too (the engine cannot tell which came; see
//!   `socket::interruptible`); a stop and continue (`SIGSTOP`,
//!   `SIGCONT`) ends a wait with a timeout with `EINTR`, as TCP's (the
//!   wait sleeps in `epoll_pwait2`: `sal_inproc::interrupt`), but a stop
//!   while the waiting thread runs the engine between its sleeps is seen
//!   only if `SIGCONT` stays pending (the process's main thread blocks
//!   it then), and an ignored signal that comes in the microsecond before
//!   such a sleep ends it early; a signal handler that calls into a
//!   socket while its thread holds the engine's lock gets `EAGAIN` at
//!   once (its `close` is made as the lock is let go:
//!   `sal_inproc`'s `EngineLock::held_here`), where TCP's call would go
//!   on, and its `poll` of in-process numbers sees nothing new until its
//!   timeout; one that does so while its thread holds the shim's
//!   registry (a `connect`, `accept`, `dup` or `close` of an in-process
//!   number under way) still waits for good.
//! - `MSG_OOB` (`SIOCATMARK` answers 0); `MSG_PEEK` with
//!   `MSG_WAITALL` returns what is there (a peek over several iovecs, 1
//!   MiB at most);
//!   `listen` again after a listener's `shutdown`; epoll reports a
//!   stream's `EPOLLHUP`, `EPOLLERR` and `EPOLLRDHUP` only with an input
//!   or output event (a registration for neither never fires).
//! - Two threads' first blocking `connect`s on one socket within the
//!   moment before the stream takes the number race (each starts a flow;
//!   one gets `EBADF`); a later one waits for the first's outcome, as
//!   TCP's. (`close` of a socket does not end another thread's wait in
//!   it, as TCP's, measured on Linux 6.18; the daemon path's does.)
//! - `getsockopt` answers options the program did not set with 0
//!   (`SO_SNDBUF` and `SO_RCVBUF` answer Linux's defaults, and twice what
//!   was set, not the engine's own sizes, which follow use; `TCP_MAXSEG`
//!   the flow's segment size); `select` refuses `nfds` above
//!   `FD_SETSIZE` (Linux clamps it); `MSG_WAITALL` is ignored with
//!   `SO_RCVTIMEO`.
//! - `fstat` and its kin answer for a number as for a socket (the
//!   crate's `stat`), but `/proc/self/fd/N` names an eventfd, and so does
//!   `fstat` made through `syscall(2)`.
//! - Handing to sald, at `fork` or `exec`, a stream whose own end
//!   finished sending (the export does not carry that teardown), one
//!   still connecting, or a listener's queued flows (reset). `F_GETFD`
//!   answers the program's close-on-exec, but an `exec` the shim does not
//!   see (`system`, `popen`, which reach the system call inside glibc;
//!   any `exec` of a `vfork` child; `execl`, `execlp` and `execle` on
//!   other machines than x86-64) closes an in-process number whatever it
//!   says. A flow with both ends in the process keeps one in the engine
//!   (see `handover`).
//! - A number found closed behind the shim's back lets go of its socket
//!   (closing the flow) only at the next `close` of an in-process
//!   number, `connect`, `listen`, `accept`, `poll` or the exit: the
//!   look-up that found it may run inside the engine.
//! - A program that closes the engine's own descriptors and reuses the
//!   numbers: the engine writes into what the program opened there (the
//!   daemon path checks its kept connection's identity, the engine does
//!   not). The engine's descriptors live high in the table
//!   (`socket_shim::fd::out_of_the_way`: half the soft limit, 512 at
//!   most), so a program that closes every number up to some bound below
//!   that (the C suite's `connects_reuse_control_connections_safely`)
//!   leaves them alone; one that closes every number there is
//!   (`close_range(3, ~0)`, `closefrom(3)`), or has more descriptors open
//!   than the mark, does not.

pub(crate) mod calls;
mod engine;
pub(crate) mod epoll;
mod handover;
mod iov;
mod poll;
pub(crate) mod recycle;
mod registry;
pub(crate) mod select;
mod setup;
mod socket;

use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) use engine::runtime;
pub(crate) use handover::{before_exec, before_spawn, exec_failed};
pub(crate) use handover::{
    disconnect_at as disconnect, socket_at as hand_over, unconnect_at as unconnect,
};
pub(crate) use poll::{concerns, poll};
pub(crate) use registry::live as is;
pub(crate) use registry::reap;
pub(crate) use setup::{connect, listen, relay, Before};
pub(crate) use socket::Moved;
pub(crate) use socket::{Socket, SIOCATMARK, SIOCOUTQ, SIOCOUTQNSD};

/// The environment variable that turns the in-process mode on (`1`).
pub(crate) const ENV: &str = "SERVAL_SHIM_INPROC";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Reads [`ENV`] (at load time, while the environment is still the one
/// `serval-run` set).
pub(crate) fn on_load() {
    let on = std::env::var_os(ENV).is_some_and(|value| value == "1");
    ENABLED.store(on, Ordering::Relaxed);
}

/// [`is`] for a call other than a read, a write, `accept` or `poll`
/// (which, should their socket leave the engine under them, are made
/// again on the plain path: [`handover`]): waits first for a hand-over of
/// the number's socket under way, so that the call reaches the socket
/// where it is once that is over, not the engine's copy on its way out.
/// Costs a look-up more than [`is`] for an in-process number, nothing for
/// others.
pub(crate) fn is_settled(fd: std::os::fd::RawFd) -> bool {
    if !registry::is(fd) {
        return false;
    }
    if registry::get(fd).is_some_and(|socket| socket.in_transit()) {
        handover::wait();
    }
    registry::live(fd)
}

/// The inode `fstat` gives in-process number `fd`, if it is one (see the
/// crate's `stat`): the socket's own, shared by the number's copies, and
/// above every kernel inode number (2^47 and up: kernel socket inodes
/// are 32-bit). From the socket's address, unique while it lives.
pub(crate) fn stat_ino(fd: std::os::fd::RawFd) -> Option<u64> {
    let address = registry::address(fd)?;
    Some((1 << 47) | (address as u64 >> 3))
}

/// Whether the in-process mode is on for this process.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}
