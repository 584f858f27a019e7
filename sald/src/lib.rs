//! sald, the SAL daemon, as a library: [`run`] is the whole daemon (`main.rs`
//! only parses flags, sets up logging and waits for SIGTERM/SIGINT), so that
//! tests and bench programs can run daemons in-process and stop them.
//!
//! | module | what |
//! | --- | --- |
//! | [`server`] | [`run`]: set-up, the packet path, graceful shutdown; the [`runtime`] it runs on |
//! | [`config`] | flags and the TOML file |
//! | [`daemon`] | the shared state: the host behind a lock, dispatching its events |
//! | [`control`] | the control socket: accept loop, clients, one function per request |
//! | [`drains`] | the listeners waiting drains watch, woken when nothing is pending on them |
//! | [`pump`] | bytes between applications' sockets and flows |
//! | [`app_socket`] | our end of an application's socketpair, woken only for what it waits for |
//! | [`accept_queue`] | our end of a listener's accept queue: what the program has not taken from it |
//! | [`memory`] | giving memory back to the system after flows close |
//! | [`events`] | the bounded event queue for subscribers |
//! | [`owners`], [`origins`] | who owns which binding and flow; who installed which rule |
//! | [`shutdown`] | the shutdown signal and the tracked tasks |
//! | [`link`] | packet I/O: the TUN device |
//! | [`raw`] | native mode's raw sockets: relayed packets and broadcasts |
//! | [`udp`] | packet I/O: the UDP socket, batched (sendmmsg/recvmmsg, GSO/GRO) |
//! | [`udp_ports`] | who else receives on a UDP port (a relay's socket's port) |
//! | [`plumbing`] | host-address mode kernel plumbing, on a thread of its own |
//! | [`privileges`] | what needs root, checked and said at start |
//! | [`watch`] | the kernel's link, address and route events |

#![warn(missing_docs)]

pub mod accept_queue;
pub mod activation;
pub mod app_socket;
pub mod config;
pub mod control;
pub mod daemon;
pub mod drains;
pub mod events;
pub mod link;
pub mod memory;
pub mod origins;
pub mod owners;
pub mod plumbing;
pub mod privileges;
pub mod pump;
pub mod raw;
pub mod refusals;
pub mod server;
pub mod shutdown;
pub mod udp;
pub mod udp_ports;
pub mod watch;

pub use server::{run, runtime};
