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
//! - **The caller drives.** Every call takes the lock, hands the datagrams
//!   waiting on the socket to the host (`recvmmsg`), does its work, polls
//!   the host and sends its output (`sendmmsg`) before returning: a connect,
//!   a write, a read that opens the window or a close costs no wake-up of
//!   another thread or process. Whoever holds the lock has drained the
//!   socket, so a thread that finds the lock taken may leave the socket to
//!   the holder.
//! - **Blocking calls wait in `ppoll`** on the UDP socket, a timerfd armed
//!   (absolutely, on `CLOCK_MONOTONIC`) at the host's `poll_timeout`, and
//!   their own object's eventfd; on input they drive the host if
//!   `try_lock` succeeds; otherwise the holder drives, and they wait on
//!   their own eventfd and a per-thread eventfd the holder raises when it
//!   lets go, then watch the socket again (they never block on the mutex
//!   from a wait). A blocking call counts as inside from its first wait to
//!   its return. [`Mode`] gives blocking,
//!   non-blocking and deadline (`SO_RCVTIMEO`) behaviour; errors carry the
//!   `errno` a socket would give ([`Error::errno`]).
//! - **Readiness on eventfds** (`EFD_NONBLOCK | EFD_CLOEXEC`): a stream's
//!   readable descriptor is readable exactly while a read would not block
//!   (bytes, end of stream, error), its writable one while a write would
//!   not (room, error); a listener's while a flow waits to be accepted.
//!   They change only on the host's events for that object (`Activity`,
//!   `Connected`, `ConnectFailed`, `Closed`, `PeerConnected`, `Incoming`)
//!   and on the object's own calls: never by scanning flows, so a turn costs
//!   the same with any number of flows held.
//! - **The driver thread** covers the gaps when no application thread is
//!   inside a wait (all busy elsewhere), so that peers still get their ACKs
//!   and timers still run. It watches the socket and the timer only while an
//!   atomic count of threads inside is 0, and otherwise sleeps on a private
//!   eventfd that the last thread leaving signals: with a thread waiting
//!   inside it costs nothing. [`Runtime::enter`], [`Runtime::wait_fds`] and
//!   [`Runtime::drive`] let a future `poll`/`epoll` interposer wait on the
//!   engine's descriptors itself.
//!
//! # Not done here
//!
//! No interposition of a C program's calls (stage 3b, in the preload); no
//! hand-over of flows to sald at `fork` or `exec` (flow export exists in
//! `sal`, the `Adopt` request does not); no datagram sockets; no
//! registration of a listener's prefix with sald (`Relay`): the caller's.
//! The writable eventfd has no low-water mark (one free byte raises it).
//! A thread that is not inside a call (a single-threaded request/response
//! loop between its read and its write) leaves the socket to the driver
//! thread, which costs that thread a wake-up each time the last one leaves.

mod clock;
mod config;
mod core;
mod error;
mod gate;
mod listener;
mod lock;
mod mirror;
mod runtime;
mod stream;
pub mod udp;

pub use config::Config;
pub use error::Error;
pub use listener::Listener;
pub use runtime::{DriverStats, EnterGuard, Mode, Runtime};
pub use stream::Stream;
