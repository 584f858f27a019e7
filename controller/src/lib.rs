//! The control plane's programs: `servd`, the service controller, and
//! `servalctl`, the operator CLI over sald's control socket.
//!
//! The binaries are thin; their logic lives here so that it can be tested:
//! - [`servalctl`]: command-line grammar, requests, and human-readable output.
//! - [`servd`]: the controller's state machine, wire format and driver.

#![warn(missing_docs)]

pub mod servalctl;
pub mod servd;
