//! Client library through which applications reach sald, the SAL daemon.
//!
//! Applications name services, not hosts: [`ServiceStream::connect`] opens a
//! stream flow to a [`ServiceId`], [`ServiceListener::bind`] registers a
//! [`ServicePrefix`] and accepts flows on it, [`ServiceDatagram`] sends and
//! receives datagrams. Under the hood a listener or bound socket holds its
//! own control connection to sald ([`ControlClient`], speaking
//! [`sal_control`]), while the connects of a process all share one
//! (`connector`): a connect costs one request frame, however many are in
//! flight. A flow itself is one end of a Unix socketpair handed over by
//! sald, so reading and writing cost what they cost on any local socket.
//!
//! ```no_run
//! use std::io::{Read, Write};
//! use socket_shim::{ServiceListener, ServiceStream};
//!
//! # fn main() -> Result<(), socket_shim::Error> {
//! let listener = ServiceListener::bind("beef".parse::<socket_shim::ServiceId>().unwrap(), 16)?;
//! let mut client = ServiceStream::connect("beef".parse().unwrap())?;
//! client.write_all(b"hello")?;
//! client.shutdown_write()?;
//! let (mut server, _info) = listener.accept()?;
//! let mut got = Vec::new();
//! server.read_to_end(&mut got)?;
//! # Ok(())
//! # }
//! ```
//!
//! Modules, one concept each:
//! - [`client`]: the control connection (framing, `Hello`, descriptor passing).
//! - `accept_queue`: where sald puts a listener's flows for it to take
//!   (private).
//! - `connector`: the process's shared connection for connects (private).
//! - [`stream`]: stream flows, [`ServiceStream`] and [`ServiceListener`].
//! - [`datagram`]: unconnected datagram sockets, [`ServiceDatagram`].
//! - [`datagram_flow`]: connected datagram flows, [`ServiceDatagramFlow`].
//! - [`error`]: the typed [`Error`] and its errno mapping.
//! - [`fd`]: keeping the library's own descriptors off the standard streams
//!   and, for those it keeps while the program runs, out of its numbers.
//! - [`reset`]: telling a reset flow from a finished one at end of file.
//! - [`tokio`](mod@crate::tokio) (feature `tokio`): async equivalents.

#![warn(missing_docs)]

mod accept_queue;
pub mod client;
pub mod connector;
pub mod datagram;
pub mod datagram_flow;
pub mod error;
pub mod fd;
pub mod reset;
pub mod stream;
#[cfg(feature = "tokio")]
pub mod tokio;

#[cfg(feature = "tokio")]
pub use crate::tokio::{
    AsyncControlClient, AsyncServiceDatagram, AsyncServiceListener, AsyncServiceStream,
};
pub use client::{control_path, pin_control_path, ControlClient, Events, Reply, RequestSender};
pub use datagram::{ServiceDatagram, MAX_DATAGRAM};
pub use datagram_flow::ServiceDatagramFlow;
pub use error::{Error, Result};
pub use sal::proto::{DatagramPeer, FlowInfo};
pub use sal::{FlowId, Locator, ServiceId, ServicePrefix};
pub use sal_control::ErrorKind;
pub use stream::{Incoming, ServiceListener, ServiceStream};

#[cfg(test)]
mod tests;
