//! The shim's error type: what went wrong, as a daemon error class, a local
//! I/O failure, or a broken conversation with sald; each maps to one errno.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use sal_control::ErrorKind;

/// Result type of the shim.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when talking to sald or using a service socket.
///
/// Variants that carry a `String` hold sald's own explanation (for example
/// `no rule resolves beef`), which is also what they display.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no control socket at `path`, or nobody listens on it.
    #[error("sald is not running (no control socket at {})", path.display())]
    DaemonNotRunning {
        /// The control socket path that was tried.
        path: PathBuf,
    },
    /// No rule resolves the service (`EHOSTUNREACH`).
    #[error("{}", or_default(.0, "no route to the service"))]
    NoRoute(String),
    /// The service refused the connection (`ECONNREFUSED`).
    #[error("{}", or_default(.0, "connection refused by the service"))]
    Refused(String),
    /// No answer in time (`ETIMEDOUT`).
    #[error("{}", or_default(.0, "timed out"))]
    TimedOut(String),
    /// The caller may not do this (`EACCES`).
    #[error("{}", or_default(.0, "permission denied"))]
    PermissionDenied(String),
    /// The prefix is already bound on this host (`EADDRINUSE`).
    #[error("{}", or_default(.0, "service prefix already bound"))]
    AddressInUse(String),
    /// No such listener, flow or rule (`ENOENT`).
    #[error("{}", or_default(.0, "not found"))]
    NotFound(String),
    /// Nothing ready and the caller asked not to wait (`EAGAIN`).
    #[error("{}", or_default(.0, "operation would block"))]
    WouldBlock(String),
    /// sald found the request malformed or out of range (`EINVAL`).
    #[error("{}", or_default(.0, "invalid request"))]
    InvalidRequest(String),
    /// sald speaks another control protocol version (`EPROTO`).
    #[error("{}", or_default(.0, "control protocol version mismatch"))]
    VersionMismatch(String),
    /// sald has too many flows or sockets (`ENOBUFS`).
    #[error("{}", or_default(.0, "out of flows or sockets"))]
    Exhausted(String),
    /// sald failed internally (`EIO`).
    #[error("{}", or_default(.0, "internal error in sald"))]
    Internal(String),
    /// sald closed the control connection or the socket it handed over (`ECONNRESET`).
    #[error("sald closed the connection")]
    Closed,
    /// sald said something this client does not understand (`EPROTO`).
    #[error("control protocol error: {0}")]
    Protocol(String),
    /// A local system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn or_default<'a>(message: &'a str, default: &'a str) -> &'a str {
    if message.is_empty() {
        default
    } else {
        message
    }
}

impl Error {
    /// The typed error for an error response of sald.
    pub fn from_daemon(kind: ErrorKind, message: impl Into<String>) -> Error {
        let message = message.into();
        match kind {
            ErrorKind::NoRoute => Error::NoRoute(message),
            ErrorKind::Refused => Error::Refused(message),
            ErrorKind::TimedOut => Error::TimedOut(message),
            ErrorKind::AddressInUse => Error::AddressInUse(message),
            ErrorKind::PermissionDenied => Error::PermissionDenied(message),
            ErrorKind::NotFound => Error::NotFound(message),
            ErrorKind::WouldBlock => Error::WouldBlock(message),
            ErrorKind::InvalidRequest => Error::InvalidRequest(message),
            ErrorKind::VersionMismatch => Error::VersionMismatch(message),
            ErrorKind::Exhausted => Error::Exhausted(message),
            ErrorKind::Internal => Error::Internal(message),
        }
    }

    /// The daemon error class this error came from, if it came from sald.
    pub fn kind(&self) -> Option<ErrorKind> {
        Some(match self {
            Error::NoRoute(_) => ErrorKind::NoRoute,
            Error::Refused(_) => ErrorKind::Refused,
            Error::TimedOut(_) => ErrorKind::TimedOut,
            Error::AddressInUse(_) => ErrorKind::AddressInUse,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::WouldBlock(_) => ErrorKind::WouldBlock,
            Error::InvalidRequest(_) => ErrorKind::InvalidRequest,
            Error::VersionMismatch(_) => ErrorKind::VersionMismatch,
            Error::Exhausted(_) => ErrorKind::Exhausted,
            Error::Internal(_) => ErrorKind::Internal,
            Error::DaemonNotRunning { .. } | Error::Closed | Error::Protocol(_) | Error::Io(_) => {
                return None
            }
        })
    }

    /// The errno a socket call failing with this error should set.
    ///
    /// `DaemonNotRunning` maps to `ENETDOWN`: the service layer itself is down,
    /// which keeps it apart from a service that refused (`ECONNREFUSED`).
    pub fn errno(&self) -> i32 {
        let errno = match self {
            Error::DaemonNotRunning { .. } => Errno::ENETDOWN,
            Error::NoRoute(_) => Errno::EHOSTUNREACH,
            Error::Refused(_) => Errno::ECONNREFUSED,
            Error::TimedOut(_) => Errno::ETIMEDOUT,
            Error::PermissionDenied(_) => Errno::EACCES,
            Error::AddressInUse(_) => Errno::EADDRINUSE,
            Error::NotFound(_) => Errno::ENOENT,
            Error::WouldBlock(_) => Errno::EAGAIN,
            Error::InvalidRequest(_) => Errno::EINVAL,
            Error::VersionMismatch(_) | Error::Protocol(_) => Errno::EPROTO,
            Error::Exhausted(_) => Errno::ENOBUFS,
            Error::Internal(_) => Errno::EIO,
            Error::Closed => Errno::ECONNRESET,
            Error::Io(error) => return error.raw_os_error().unwrap_or(Errno::EIO as i32),
        };
        errno as i32
    }

    /// Maps a failure to reach the control socket at `path`: a missing socket
    /// or a refused connection means sald is not running.
    pub(crate) fn from_connect(error: io::Error, path: PathBuf) -> Error {
        match error.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::DaemonNotRunning { path }
            }
            io::ErrorKind::PermissionDenied => Error::PermissionDenied(format!(
                "permission denied on the control socket {}",
                path.display()
            )),
            _ => Error::Io(io::Error::new(
                error.kind(),
                format!("control socket {}: {error}", path.display()),
            )),
        }
    }

    /// A copy of this error, for telling one failure to several waiters
    /// (an `io::Error` keeps its errno, or else its kind and message).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::DaemonNotRunning { path } => Error::DaemonNotRunning { path: path.clone() },
            Error::NoRoute(m) => Error::NoRoute(m.clone()),
            Error::Refused(m) => Error::Refused(m.clone()),
            Error::TimedOut(m) => Error::TimedOut(m.clone()),
            Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
            Error::AddressInUse(m) => Error::AddressInUse(m.clone()),
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::WouldBlock(m) => Error::WouldBlock(m.clone()),
            Error::InvalidRequest(m) => Error::InvalidRequest(m.clone()),
            Error::VersionMismatch(m) => Error::VersionMismatch(m.clone()),
            Error::Exhausted(m) => Error::Exhausted(m.clone()),
            Error::Internal(m) => Error::Internal(m.clone()),
            Error::Closed => Error::Closed,
            Error::Protocol(m) => Error::Protocol(m.clone()),
            Error::Io(error) => Error::Io(match error.raw_os_error() {
                Some(errno) => io::Error::from_raw_os_error(errno),
                None => io::Error::new(error.kind(), error.to_string()),
            }),
        }
    }

    /// An unexpected answer to a request.
    pub(crate) fn unexpected(what: &str, response: &sal_control::Response) -> Error {
        Error::Protocol(format!("unexpected answer to {what}: {response:?}"))
    }
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Error {
        Error::Io(errno.into())
    }
}

/// Converts to an `io::Error` whose raw OS error is [`Error::errno`] for
/// errors that have no closer `io::ErrorKind`, keeping the message.
impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        let kind = match &error {
            Error::Io(inner) => inner.kind(),
            Error::DaemonNotRunning { .. } => io::ErrorKind::NetworkDown,
            Error::NoRoute(_) => io::ErrorKind::HostUnreachable,
            Error::Refused(_) => io::ErrorKind::ConnectionRefused,
            Error::TimedOut(_) => io::ErrorKind::TimedOut,
            Error::PermissionDenied(_) => io::ErrorKind::PermissionDenied,
            Error::AddressInUse(_) => io::ErrorKind::AddrInUse,
            Error::NotFound(_) => io::ErrorKind::NotFound,
            Error::WouldBlock(_) => io::ErrorKind::WouldBlock,
            Error::InvalidRequest(_) => io::ErrorKind::InvalidInput,
            Error::Closed => io::ErrorKind::ConnectionReset,
            Error::VersionMismatch(_)
            | Error::Exhausted(_)
            | Error::Internal(_)
            | Error::Protocol(_) => io::ErrorKind::Other,
        };
        match error {
            Error::Io(inner) => inner,
            other => io::Error::new(kind, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_kinds_map_to_typed_errors_and_errnos() {
        let cases = [
            (ErrorKind::NoRoute, Errno::EHOSTUNREACH),
            (ErrorKind::Refused, Errno::ECONNREFUSED),
            (ErrorKind::TimedOut, Errno::ETIMEDOUT),
            (ErrorKind::AddressInUse, Errno::EADDRINUSE),
            (ErrorKind::PermissionDenied, Errno::EACCES),
            (ErrorKind::NotFound, Errno::ENOENT),
            (ErrorKind::WouldBlock, Errno::EAGAIN),
            (ErrorKind::InvalidRequest, Errno::EINVAL),
            (ErrorKind::VersionMismatch, Errno::EPROTO),
            (ErrorKind::Exhausted, Errno::ENOBUFS),
            (ErrorKind::Internal, Errno::EIO),
        ];
        for (kind, errno) in cases {
            let error = Error::from_daemon(kind, "why");
            assert_eq!(error.kind(), Some(kind));
            assert_eq!(error.errno(), errno as i32, "{kind:?}");
            assert_eq!(error.to_string(), "why");
        }
        assert!(matches!(
            Error::from_daemon(ErrorKind::NoRoute, ""),
            Error::NoRoute(_)
        ));
        assert_eq!(
            Error::from_daemon(ErrorKind::NoRoute, "").to_string(),
            "no route to the service"
        );
    }

    #[test]
    fn local_errors_keep_their_errno() {
        let error = Error::from(io::Error::from_raw_os_error(Errno::EPIPE as i32));
        assert_eq!(error.errno(), Errno::EPIPE as i32);
        assert_eq!(error.kind(), None);
        let missing = Error::from_connect(io::ErrorKind::NotFound.into(), "/x/sald.sock".into());
        assert_eq!(
            missing.to_string(),
            "sald is not running (no control socket at /x/sald.sock)"
        );
        assert_eq!(missing.errno(), Errno::ENETDOWN as i32);
        let copy = Error::from(io::Error::from_raw_os_error(Errno::EMFILE as i32)).duplicate();
        assert_eq!(copy.errno(), Errno::EMFILE as i32);
        assert_eq!(missing.duplicate().to_string(), missing.to_string());
        assert!(matches!(
            Error::from_daemon(ErrorKind::Exhausted, "full").duplicate(),
            Error::Exhausted(m) if m == "full"
        ));
        let io_error = io::Error::from(Error::from_daemon(ErrorKind::Refused, "no"));
        assert_eq!(io_error.kind(), io::ErrorKind::ConnectionRefused);
    }
}
