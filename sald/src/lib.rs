//! sald as a library: the pieces of the SAL daemon that `main.rs` wires
//! together, kept in a library so integration tests and bench programs can
//! drive them directly.
//!
//! - [`plumbing`]: host-address mode kernel plumbing (policy rules, routing
//!   table, sysctls, nftables fence), installed at start-up and undone on
//!   exit;
//! - [`link`]: packet I/O through the TUN device and the UDP socket.

pub mod config;
pub mod control_server;
pub mod daemon;
pub mod link;
pub mod plumbing;
pub mod pump;
pub mod watch;
