//! What a [`Runtime`](crate::Runtime) is made from.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use sal::proto::{default_stream_config, HostConfig};
use sal::Locator;

use crate::resolve::{Resolve, SaldResolver};
use crate::spin::DEFAULT_SPIN;

/// Bytes of UDP header: full-size segments must still fit the MTU (sald
/// makes the same cut in UDP mode).
const UDP_HEADER_LEN: u16 = 8;

/// A runtime's socket, route and buffers.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the UDP socket binds (port 0: the kernel picks one); the host's
    /// one interface and locator is `udp:ADDR:PORT`.
    pub addr: SocketAddrV4,
    /// Where every SYN goes (the host's one rule, FORWARD `0/0`): the local
    /// sald's `udp:` locator in production, or a peer engine's locator.
    pub route: Locator,
    /// First allocation of a flow's buffers, bytes.
    pub min_buffer: usize,
    /// Most bytes a flow's send buffer holds (queued plus unacknowledged).
    pub max_send_buffer: usize,
    /// Most bytes a flow's receive buffer holds: the window it offers.
    pub max_recv_buffer: usize,
    /// Run the driver thread, which drives the host while no application
    /// thread waits inside the engine. Off only for tests that show what
    /// it covers, and for callers that drive through
    /// [`Runtime::wait_fds`](crate::Runtime::wait_fds) themselves.
    pub driver_thread: bool,
    /// Where to ask how to route a service's SYNs without sald's hop
    /// (cached resolution, see [`crate::resolve`]): sald
    /// ([`Config::with_sald_resolver`]) or any [`Resolve`], asked by a
    /// thread of the runtime (`sal-inproc-resolver`), never on a
    /// connect's path. `None` (the default): every SYN follows
    /// [`Config::route`].
    pub resolver: Option<Arc<dyn Resolve>>,
    /// The longest a thread busy-polls before it sleeps in the engine,
    /// while the engine's spins pay (`spin.rs`); zero: never. Not used on
    /// a machine with one CPU.
    pub spin: Duration,
}

impl Config {
    /// A socket at `addr` routing every SYN to `route`, with the SAL's
    /// default buffers, the driver thread on, and spins of
    /// [`DEFAULT_SPIN`] at most.
    pub fn new(addr: SocketAddrV4, route: Locator) -> Config {
        let stream = default_stream_config();
        Config {
            addr,
            route,
            min_buffer: stream.min_buffer,
            max_send_buffer: stream.max_send_buffer,
            max_recv_buffer: stream.max_recv_buffer,
            driver_thread: true,
            resolver: None,
            spin: DEFAULT_SPIN,
        }
    }

    /// This config with its connects resolved by the sald whose control
    /// socket is at `control` (`Request::Resolve`), cached for the
    /// lifetime sald gives: the SYNs to a service follow
    /// [`Config::route`] (sald) until the answer is in, the next ones go
    /// straight to where sald would forward them while it lasts.
    pub fn with_sald_resolver(mut self, control: impl Into<std::path::PathBuf>) -> Config {
        self.resolver = Some(Arc::new(SaldResolver::new(control)));
        self
    }

    /// The host's configuration: fresh randomness from the operating
    /// system (flow IDs, nonces, ISNs, cookies), segments cut for UDP
    /// carriage as sald's are, and this config's buffers.
    pub(crate) fn host_config(&self) -> HostConfig {
        let mut config = HostConfig {
            seed: rand::random(),
            entropy: Some(rand::random()),
            ..HostConfig::default()
        };
        config.stream.mss -= UDP_HEADER_LEN;
        config.stream.min_buffer = self.min_buffer;
        config.stream.max_send_buffer = self.max_send_buffer;
        config.stream.max_recv_buffer = self.max_recv_buffer;
        // A connect returns to its caller, which usually writes next: the
        // handshake's ACK waits for that write, and the first bytes reach
        // the server with it (one packet, and one wake-up of the server,
        // less). A thread about to wait instead sends it first
        // (`Core::release_held_acks`).
        config.stream.hold_handshake_ack = true;
        config
    }
}
