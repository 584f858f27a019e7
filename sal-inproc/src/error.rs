//! The engine's errors, each with the `errno` a socket call would give.

use sal::proto::{ConnectError, HostError, NotExportable};

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing to do now (non-blocking mode, or a blocking call's deadline
    /// passed): `EAGAIN`, as a socket with `O_NONBLOCK` or `SO_RCVTIMEO`.
    #[error("operation would block")]
    WouldBlock,
    /// The serving host refused the connection: `ECONNREFUSED`.
    #[error("connection refused")]
    Refused,
    /// No rule leads to the service: `ENETUNREACH`.
    #[error("no route to service")]
    NoRoute,
    /// The SYN went unanswered: `ETIMEDOUT`.
    #[error("connection timed out")]
    TimedOut,
    /// The flow was reset by the peer or given up on: `ECONNRESET`.
    #[error("connection reset")]
    Reset,
    /// The flow was reset after the peer's end of stream while this end
    /// still sent (TCP's reset in `CLOSE_WAIT`), reported once: `EPIPE`.
    #[error("broken pipe: the flow was reset after the peer's end of stream")]
    ResetAfterEnd,
    /// This end shut its sending direction down: `EPIPE`.
    #[error("broken pipe: the flow is closed for sending")]
    SendClosed,
    /// The flow is not connected yet: `ENOTCONN`.
    #[error("the flow is not connected")]
    NotConnected,
    /// The host holds all the flows it may: `ENOBUFS`.
    #[error("too many flows ({0})")]
    TooManyFlows(usize),
    /// A listener of this process already serves exactly this prefix:
    /// `EADDRINUSE`.
    #[error("service prefix already bound")]
    AddressInUse,
    /// A signal's handler ran while the call waited, inside an
    /// [`crate::Interruptible`]: `EINTR`. What the call did stands (a
    /// write returns the count written first).
    #[error("interrupted by a signal")]
    Interrupted,
    /// The listener was stopped (`shutdown` of a listening socket).
    #[error("the listener was stopped")]
    NotListening,
    /// A host error the socket calls have no better name for: `EINVAL`.
    #[error(transparent)]
    Host(HostError),
    /// The UDP socket, an eventfd, the timerfd or `ppoll` failed: that
    /// call's `errno` (`EIO` if it had none).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether this is the report of a reset (or of a failed connect),
    /// which a call gives once ([`crate::Stream::take_error`]): a caller
    /// that moved bytes before it in the same call gives it back
    /// ([`crate::Stream::report_again`]) for the next call, as TCP's.
    pub fn is_report(&self) -> bool {
        matches!(
            self,
            Error::Reset | Error::ResetAfterEnd | Error::Refused | Error::NoRoute | Error::TimedOut
        )
    }

    /// The `errno` a socket call reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::WouldBlock => libc::EAGAIN,
            Error::Refused => libc::ECONNREFUSED,
            Error::NoRoute => libc::ENETUNREACH,
            Error::TimedOut => libc::ETIMEDOUT,
            Error::Reset => libc::ECONNRESET,
            Error::ResetAfterEnd | Error::SendClosed => libc::EPIPE,
            Error::NotConnected => libc::ENOTCONN,
            Error::TooManyFlows(_) => libc::ENOBUFS,
            Error::AddressInUse => libc::EADDRINUSE,
            Error::Interrupted => libc::EINTR,
            Error::NotListening => libc::EINVAL,
            Error::Host(_) => libc::EINVAL,
            Error::Io(error) => error.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl From<ConnectError> for Error {
    fn from(error: ConnectError) -> Error {
        match error {
            ConnectError::NoRoute => Error::NoRoute,
            ConnectError::Refused => Error::Refused,
            ConnectError::TimedOut => Error::TimedOut,
        }
    }
}

impl From<HostError> for Error {
    fn from(error: HostError) -> Error {
        match error {
            HostError::Connect(error) => error.into(),
            HostError::WouldBlock => Error::WouldBlock,
            HostError::Reset | HostError::NoSuchFlow(_) => Error::Reset,
            HostError::SendClosed => Error::SendClosed,
            HostError::NotConnected => Error::NotConnected,
            HostError::TooManyFlows(limit) => Error::TooManyFlows(limit),
            HostError::AddressInUse(_) => Error::AddressInUse,
            other => Error::Host(other),
        }
    }
}

impl From<NotExportable> for Error {
    fn from(error: NotExportable) -> Error {
        Error::Host(error.into())
    }
}

impl From<nix::errno::Errno> for Error {
    fn from(errno: nix::errno::Errno) -> Error {
        Error::Io(errno.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_errno_a_socket_gives() {
        assert_eq!(Error::WouldBlock.errno(), libc::EAGAIN);
        assert_eq!(
            Error::from(ConnectError::Refused).errno(),
            libc::ECONNREFUSED
        );
        assert_eq!(
            Error::from(ConnectError::NoRoute).errno(),
            libc::ENETUNREACH
        );
        assert_eq!(Error::from(ConnectError::TimedOut).errno(), libc::ETIMEDOUT);
        assert_eq!(Error::from(HostError::Reset).errno(), libc::ECONNRESET);
        assert_eq!(Error::from(HostError::SendClosed).errno(), libc::EPIPE);
        assert_eq!(
            Error::from(HostError::TooManyFlows(3)).errno(),
            libc::ENOBUFS
        );
        assert_eq!(Error::from(HostError::WouldBlock).errno(), libc::EAGAIN);
        let io = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(Error::from(io).errno(), libc::EMFILE);
    }
}
