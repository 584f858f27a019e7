//! Why plumbing could not be installed or removed.

use std::io;
use std::path::PathBuf;

/// Why the plumbing could not be installed or removed. Each variant renders
/// as one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    /// The configuration is unusable (bad interface name, reserved table, ...).
    #[error("invalid plumbing configuration: {0}")]
    Config(String),
    /// An interface named in the configuration does not exist.
    #[error("unknown interface {0:?}")]
    UnknownInterface(String),
    /// Another sald holds this namespace's plumbing.
    #[error("another sald owns the plumbing: {}", .evidence.join("; "))]
    Owned {
        /// What shows it (lock held, rules present, nft table present).
        evidence: Vec<String>,
    },
    /// Routing state that is not ours is in the way.
    #[error("conflicting routing state: {0}")]
    Conflict(String),
    /// A netlink request failed.
    #[error("netlink: {op}: {source}")]
    Netlink {
        /// The operation, e.g. `add rule pref 100 ipproto 144 to 10.0.0.1`.
        op: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// Reading or writing a sysctl failed.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The lock or state file could not be used.
    #[error("{}: {source}", .path.display())]
    RunDir {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The nftables fence could not be installed.
    #[error("nftables fence: {0}")]
    Fence(String),
    /// The plumbing thread ([`super::PlumbingWorker`]) is gone.
    #[error("the plumbing thread is gone")]
    WorkerGone,
    /// Some undo steps failed (each was attempted; details in the list).
    #[error("removing plumbing: {}", .0.join("; "))]
    Teardown(Vec<String>),
}

pub(crate) fn nl_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> PlumbingError {
    let op = op.into();
    move |source| PlumbingError::Netlink { op, source }
}

impl PlumbingError {
    /// The errno behind a netlink failure, if that is what this is.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            PlumbingError::Netlink { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
