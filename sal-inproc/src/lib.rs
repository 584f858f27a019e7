//! The in-process SAL engine: one [`sal::proto::Host`] per process over one
//! UDP socket, driven by whichever application thread is inside the engine,
//! with each object's readiness mirrored on eventfds. It is what the socket
//! shim's in-process mode (`docs/in-process-sal.md`, stage 3: "Who drives
//! the host", "Descriptors: an eventfd that mirrors readiness") will put
//! behind a C program's socket calls; this crate is its stage 3a, usable
//! from Rust on its own.
//!
//! # Design
//!
//! - **One host, one socket, one mutex.** [`Runtime::bind`] binds a UDP
//!   socket (its locator `udp:ADDR:PORT` is the host's one interface) and
//!   installs one rule, FORWARD `0/0` to [`Config::route`]: the local
//!   sald, which relays the SYN (stage 2), or a peer engine directly. After
//!   the SYN the two hosts talk to each other straight.
//! - **The caller drives.** Every call takes the lock, does its work, polls
//!   the host and sends its output (`sendmmsg`) before returning: a connect,
//!   a write, a read that opens the window or a close costs no wake-up of
//!   another thread or process. Only a non-blocking call on an object (which
//!   must see what arrived) first hands the datagrams waiting on the socket
//!   to the host (`recvmmsg`), unless a poller watches it; a call that may
//!   wait does so only when its wait saw the socket readable.
//! - **A connect's last handshake packet carries the first write.** The
//!   host holds the ACK of a SYN-ACK (`hold_handshake_ack`) until the
//!   connect's caller writes, so that the request reaches the server with
//!   the connection; a call about to wait, or a turn of a poll
//!   interposer or the driver thread, sends what is held first
//!   (`Host::release_held_acks`), and the delayed-ACK timer (1 ms) ends
//!   the hold otherwise.
//! - **Blocking calls wait in `ppoll`, one of them on the socket**
//!   (leader/follower, `gate.rs`). The first waiting thread takes the
//!   poller role: it watches the UDP socket and its own object's eventfd
//!   until the host's next deadline, and drives on input or at the
//!   deadline if `try_lock` succeeds
//!   (otherwise the holder drives, and it waits on its own eventfd and its
//!   thread's wake-up eventfd, which the holder raises when it lets go;
//!   it never blocks on the mutex from a wait). The other waiting threads
//!   wait on their object's eventfd and their wake-up eventfd only, and of
//!   several threads waiting for one object (a listener) only one watches
//!   it, so that a datagram or a new connection wakes one thread, not all.
//!   A poller whose call ends hands the role to a waiting thread (raising
//!   its wake-up eventfd), or, if none waits, leaves it to the next thread
//!   to wait and, meanwhile, to the driver thread. A blocking call counts
//!   as inside from its first wait to its return. [`Mode`] gives blocking,
//!   non-blocking and deadline (`SO_RCVTIMEO`) behaviour; errors carry the
//!   `errno` a socket would give ([`Error::errno`]).
//! - **A thread spins briefly before it sleeps** (`spin.rs`): up to
//!   [`Config::spin`] it looks at what it would wait for, yielding the
//!   CPU between looks, while the engine's spins catch often enough to
//!   pay; an answer that comes within the window costs no sleep and no
//!   wake-up.
//! - **The host's deadline is `ppoll`'s timeout** (`deadline.rs`), as in a
//!   single-threaded event loop, not a timerfd re-armed after every call.
//!   Every release of the lock (one place, `lock.rs`: whatever the locked
//!   section did, error paths included) publishes the host's
//!   `poll_timeout`; a thread that sleeps until it (the poller, the driver
//!   thread) records the deadline it read, reads it again, and sleeps for
//!   the time left. The timerfd (absolute, on `CLOCK_MONOTONIC`), which
//!   they also watch, is armed only by a release that moves the deadline
//!   before one a sleeper recorded (a call on another thread that starts
//!   the first timer while the poller sleeps without one), and disarmed
//!   by a later release that finds no sleeper needing it. So a connection
//!   whose timers only move later costs no `timerfd_settime`; one whose
//!   call on another thread moves the deadline earlier than a sleeper's
//!   costs an arm (and a disarm later). Once [`Runtime::wait_fds`] lent it
//!   to a caller that waits on it itself, every deadline is armed there;
//!   [`Runtime::udp_fd`] (the socket for sald's `Relay` proof) lends
//!   nothing. A release while a panic unwinds does not run the host: it
//!   tells every sleeper the deadline is now.
//! - **Readiness on eventfds** (`EFD_NONBLOCK | EFD_CLOEXEC`): a stream's
//!   readable descriptor is readable exactly while a read would not block
//!   (bytes, end of stream, error), its writable one while a write would
//!   not (room, error); a listener's while a flow waits to be accepted.
//!   They change only on the host's events for that object (`Activity`,
//!   `Connected`, `ConnectFailed`, `Closed`, `PeerConnected`, `Incoming`)
//!   and on the object's own calls: never by scanning flows, so a turn costs
//!   the same with any number of flows held. A locked section only notes
//!   the changes; they reach the eventfds as the lock is let go (lowerings
//!   before, raisings after), so that a readiness raised and consumed in
//!   one section costs nothing and a thread woken finds the lock free.
//!   Each eventfd is published by one thread at a time, reading the level
//!   wanted as it applies it (a raise published late after a later
//!   section's lowering does nothing), with no lock across eventfds: two
//!   holders letting go one after the other never wait for each other's
//!   system calls. A closed stream's eventfds are reused for the next one
//!   at the level they have (a new stream takes spares at the level it
//!   starts at first: an accepted stream's raised ones, a connect's
//!   lowered ones), and given back untouched by an accept that found the
//!   queue empty: neither costs a system call.
//! - **The driver thread** covers the gaps when no application thread is
//!   inside a wait (all busy elsewhere), so that peers still get their ACKs
//!   and timers still run. It watches the socket and the timer only once
//!   no thread has been inside for a grace period (2 ms), wakes at the end
//!   of each such period while threads come and go, and sleeps for good
//!   (parked) while a thread stays inside, until the last one leaves (who
//!   signals it only then): a request/response loop that leaves the engine
//!   between its calls costs it at most one wake-up per grace period, not
//!   one per call, and a thread waiting inside costs it nothing.
//!   [`Runtime::enter`], [`Runtime::wait_fds`] and [`Runtime::drive`] let a
//!   future `poll`/`epoll` interposer wait on the engine's descriptors
//!   itself. [`Runtime::driver_stats`] and [`Runtime::wait_stats`] count
//!   the wake-ups.
//! - **Cached resolution** (optional, [`Config::resolver`], see
//!   [`resolve`]): a connect to a service the host sends by its default
//!   route goes that way (sald relays its SYN), and a resolver thread
//!   asks sald (`Request::Resolve`) how it routes the service, off the
//!   connect's path; the answer goes into the host as a FORWARD rule of
//!   the service's ID, used by the next connects until its lifetime runs
//!   out (the next connect then takes it out and asks again) or a connect
//!   by it fails. No answer, or none to be had, leaves the default route.
//! - **Hostile input** is the host's to judge (`sal::proto`, nonces, SYN
//!   cookies, half-open limits): the engine hands it every datagram and
//!   keeps nothing per packet. [`Runtime::host_stats`],
//!   [`Runtime::half_open_count`] and [`Runtime::flow_count`] show what it
//!   dropped and what it kept (`tests/hostile.rs`).
//! - **Out of descriptors**: each stream takes an eventfd for input, and
//!   one for output: a connect's at once (its outcome shows there), an
//!   accepted stream's only when something first waits for room (most
//!   never do: a server's flows then cost one eventfd each). Those a
//!   call needs are made before the flow is taken, so a connect or accept
//!   at `RLIMIT_NOFILE` fails with `EMFILE` and changes nothing (a wait
//!   for room that cannot make its eventfd fails with `ENOMEM`, which
//!   `poll`, `epoll_ctl` and `write` may give): an
//!   accept leaves its flow queued
//!   and the listener readable, as Linux's does (a level-triggered poller
//!   retries until descriptors are free). Eventfds made for an accept
//!   that found the queue empty wait among the spares for the next stream
//!   (`tests/fd_limit.rs`).
//!
//! # Not done here
//!
//! No interposition of a C program's calls (stage 3b, in the preload); no
//! hand-over of flows to sald at `fork` or `exec` (flow export exists in
//! `sal`, and sald takes flows with `Adopt`, but nothing here calls it);
//! no datagram sockets; no registration of a listener's prefix with sald
//! (`Relay`): the caller's. The writable eventfd has a low-water mark (a
//! quarter of the largest send buffer, at most half the smallest), as
//! Linux's `POLLOUT` has. A closed stream's eventfds are kept for the next
//! stream (up to 64): a caller that registered one with `epoll` must
//! remove it before the stream goes, or it would report the next stream's
//! readiness; stage 3b, which hands the descriptors to programs as their
//! sockets, must give out duplicates or turn the reuse off.
//! While every thread is outside the engine, a peer's packet waits for the
//! driver thread up to the grace period (2 ms) plus its wake-up.

mod clock;
mod config;
mod core;
mod deadline;
mod descriptors;
mod ends;
mod error;
mod gate;
mod interrupt;
mod listener;
mod lock;
mod mirror;
pub mod resolve;
mod runtime;
mod spin;
mod stream;
pub mod udp;
mod waker;

pub use config::Config;
pub use ends::{Ends, EndsSignal};
pub use error::Error;
pub use interrupt::Interruptible;
pub use listener::Listener;
pub use runtime::{DriverStats, EnterGuard, Mode, Runtime, WaitStats};
pub use spin::DEFAULT_SPIN;
pub use stream::Stream;
