//! smoltcp 0.14.0's TCP socket, forked to be driven one flow at a time (sans-IO).

#![forbid(unsafe_code)]

/// smoltcp's `net_trace!` for this crate: a `tracing` event at TRACE.
macro_rules! tcp_trace {
    ($($arg:expr),*) => (tracing::trace!($($arg),*));
}
/// smoltcp's `net_debug!` for this crate: a `tracing` event at DEBUG.
macro_rules! net_debug {
    ($($arg:expr),*) => (tracing::debug!($($arg),*));
}

mod assembler;
pub mod buffer;
mod config;
mod congestion;
mod cookie;
mod rtt;
mod segment;
mod socket;
mod timer;

pub use config::{Config, ConfigError, MAX_BUFFER, MIN_MSS};
pub use congestion::CongestionControl;
pub use cookie::{write_syn_ack, CookieError, CookieParams};
pub use segment::{parse, SegmentError, MAX_HEADER_LEN};
pub use socket::{ConnectError, ListenError, RecvError, SendError, Socket, State};

pub use smoltcp::time::{Duration, Instant};
pub use smoltcp::wire::{Ipv4Address, TcpSeqNumber};
