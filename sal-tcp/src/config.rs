//! Per-socket settings: segment size, elastic buffer bounds, behaviour.

use smoltcp::time::Duration;

use crate::congestion::CongestionControl;

/// Largest buffer maximum: the largest window a 16-bit field can express with
/// RFC 7323's largest window scale (14), just under 1 GiB.
pub const MAX_BUFFER: usize = 65535 << 14;

/// Smallest local MSS accepted, as Linux's `TCP_MIN_SND_MSS`.
pub const MIN_MSS: u16 = 48;

/// Settings of a [`Socket`](crate::Socket), copied into it at creation.
///
/// Buffers are *elastic*: they hold no memory until data arrives, grow by
/// doubling (starting at `min_buffer`) up to their maximum, and are given
/// back when the flow goes idle (see [`buffer`](crate::buffer) for the exact
/// policy). The maxima fix what the socket may promise: the receive window
/// scale is derived from `max_recv_buffer` at creation, and the advertised
/// window never exceeds what the receive buffer can grow to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Largest segment payload we send, and the MSS we advertise: the link
    /// MTU minus every header in front of the TCP payload (IPv4, SAL, TCP
    /// without options). The peer's own MSS option lowers it further for
    /// what we send; TCP options are subtracted per segment.
    pub mss: u16,
    /// First allocation of a buffer, bytes (it then doubles as needed).
    pub min_buffer: usize,
    /// Most bytes the send buffer may hold (queued plus unacknowledged).
    pub max_send_buffer: usize,
    /// Most bytes the receive buffer may hold (in-order plus out-of-order);
    /// this is the window the socket offers (at most [`MAX_BUFFER`]).
    pub max_recv_buffer: usize,
    /// How often a socket that holds buffer memory reconsiders its size:
    /// a buffer that received no new data for a whole interval and is empty
    /// is freed; one that is oversized for the interval's high-water mark is
    /// shrunk. This adds one deadline per interval to [`poll_at`] while
    /// memory is held, never while it is not.
    ///
    /// [`poll_at`]: crate::Socket::poll_at
    pub trim_interval: Duration,
    /// Congestion control algorithm.
    pub congestion_control: CongestionControl,
    /// Offer (and accept) TCP timestamps (RFC 7323).
    pub timestamps: bool,
    /// Nagle's algorithm (off = `TCP_NODELAY`).
    pub nagle: bool,
    /// Delayed-ACK timeout (`None`: acknowledge every segment at once).
    pub ack_delay: Option<Duration>,
    /// A client holds the ACK that completes its handshake for up to
    /// [`ack_delay`](Config::ack_delay), so that the application's first
    /// write carries it: one packet less, and the server's accept finds the
    /// request already there. Linux delays that ACK when data is about to
    /// go; a caller that knows when its application will wait for the
    /// server rather than write ends the hold then
    /// ([`Socket::release_ack`](crate::Socket::release_ack)). Off by default.
    pub hold_handshake_ack: bool,
    /// Abort the connection after this long without hearing from the peer
    /// while we have something outstanding (see [`Socket::set_timeout`]).
    ///
    /// [`Socket::set_timeout`]: crate::Socket::set_timeout
    pub timeout: Option<Duration>,
    /// Keep-alive interval (see [`Socket::set_keep_alive`]).
    ///
    /// [`Socket::set_keep_alive`]: crate::Socket::set_keep_alive
    pub keep_alive: Option<Duration>,
}

impl Default for Config {
    /// The SAL's defaults: MSS 1448 (1500 - 20 IPv4 - 12 SAL - 20 TCP),
    /// 4 KiB first allocation, 1 MiB maxima, 1 s trim interval, Cubic,
    /// timestamps off, Nagle on and a 10 ms delayed ACK (smoltcp's defaults).
    fn default() -> Self {
        Config {
            mss: 1448,
            min_buffer: 4096,
            max_send_buffer: 1 << 20,
            max_recv_buffer: 1 << 20,
            trim_interval: Duration::from_secs(1),
            congestion_control: CongestionControl::Cubic,
            timestamps: false,
            nagle: true,
            ack_delay: Some(crate::timer::ACK_DELAY_DEFAULT),
            hold_handshake_ack: false,
            timeout: None,
            keep_alive: None,
        }
    }
}

/// Why a [`Config`] cannot be used as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The MSS is below [`MIN_MSS`].
    #[error("mss {0} is below the minimum of {MIN_MSS}")]
    MssTooSmall(u16),
    /// A maximum is zero or above [`MAX_BUFFER`].
    #[error("buffer maximum {0} is not within 1..={MAX_BUFFER}")]
    BadMaximum(usize),
    /// `min_buffer` is zero or above a maximum.
    #[error("min_buffer {0} is zero or larger than a maximum")]
    BadMinimum(usize),
    /// `trim_interval` is zero.
    #[error("trim_interval must be positive")]
    ZeroTrimInterval,
}

impl Config {
    /// Check that the settings are usable. [`Socket::new`] does not fail:
    /// it clamps what is out of range, so check here to report errors.
    ///
    /// [`Socket::new`]: crate::Socket::new
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mss < MIN_MSS {
            return Err(ConfigError::MssTooSmall(self.mss));
        }
        for max in [self.max_send_buffer, self.max_recv_buffer] {
            if max == 0 || max > MAX_BUFFER {
                return Err(ConfigError::BadMaximum(max));
            }
        }
        if self.min_buffer == 0
            || self.min_buffer > self.max_send_buffer
            || self.min_buffer > self.max_recv_buffer
        {
            return Err(ConfigError::BadMinimum(self.min_buffer));
        }
        if self.trim_interval == Duration::ZERO {
            return Err(ConfigError::ZeroTrimInterval);
        }
        Ok(())
    }

    /// The receive window scale (RFC 7323 shift count) a socket with this
    /// configuration advertises when the peer supports scaling: the
    /// smallest shift that lets a 16-bit field express `max_recv_buffer`.
    pub fn window_shift(&self) -> u8 {
        let max = self.max_recv_buffer.clamp(1, MAX_BUFFER);
        let log2 = usize::BITS - max.leading_zeros();
        log2.saturating_sub(16) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_shift_follows_the_receive_maximum() {
        let mut config = Config::default();
        for (max, shift) in [
            (64, 0),
            (65535, 0),
            (65536, 1),
            (1 << 20, 5),
            (1 << 29, 14),
            (MAX_BUFFER, 14),
        ] {
            config.max_recv_buffer = max;
            assert_eq!(config.window_shift(), shift, "max {max}");
        }
    }

    #[test]
    fn validate_rejects_unusable_settings() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad = [
            Config {
                mss: 10,
                ..Config::default()
            },
            Config {
                max_recv_buffer: 0,
                ..Config::default()
            },
            Config {
                max_send_buffer: MAX_BUFFER + 1,
                ..Config::default()
            },
            Config {
                min_buffer: 0,
                ..Config::default()
            },
            Config {
                min_buffer: 1 << 21,
                ..Config::default()
            },
            Config {
                trim_interval: Duration::ZERO,
                ..Config::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
