//! A UDP socket handed over by a service manager (systemd's socket
//! activation, `sd_listen_fds(3)`), for `--udp`.
//!
//! Why: a socket that a service manager holds stays bound while sald
//! starts, stops or restarts. Datagrams sent meanwhile wait in it, and
//! nobody at that address answers with a port unreachable, which peers
//! take for a refusal (a connect to sald's locator would fail at once
//! rather than wait for sald to come back). With a DELAY rule in the
//! config file, SYNs that waited are held until the services they ask for
//! are bound.
//!
//! The protocol: `LISTEN_PID` is this process's id and `LISTEN_FDS` the
//! number of descriptors passed, from 3 on. sald takes the one that is a
//! UDP socket bound to exactly the `--udp` address, and marks every passed
//! descriptor close-on-exec (as `sd_listen_fds` does), so that the tools
//! sald runs inherit none. The variables are left in the environment
//! (changing it with other threads running is not safe): `LISTEN_PID`
//! names this process only, so a child never takes them, and a second
//! look in this process finds nothing.

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The passed descriptors were looked at: they are taken or left, once.
static LOOKED: AtomicBool = AtomicBool::new(false);

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST: RawFd = 3;

/// At most this many passed descriptors are looked at: more is surely a
/// mistake (and a loop over a bogus count would be long).
const MOST: usize = 1024;

/// Why the passed descriptors cannot serve `--udp`.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS` is not a number, or an absurd one.
    #[error("LISTEN_FDS={0:?} is not a count of passed descriptors (1 to {MOST})")]
    Count(String),
    /// Descriptors were passed, but none is the socket `--udp` names.
    #[error(
        "none of the {count} descriptors passed (LISTEN_FDS) is a UDP socket bound to {wanted} \
         (found: {found}); bind the service manager's socket to exactly the --udp address"
    )]
    NotFound {
        /// `--udp`.
        wanted: SocketAddrV4,
        /// How many were passed.
        count: usize,
        /// What each one is, for the message.
        found: String,
    },
}

/// The UDP socket bound to `wanted` among the descriptors a service
/// manager passed to this process: `Ok(None)` when it passed none (no
/// `LISTEN_PID`, or another process's), an error when it passed some but
/// not that one. Only the first call looks: the socket returned owns its
/// descriptor.
pub fn udp_socket(wanted: SocketAddrV4) -> Result<Option<UdpSocket>, ActivationError> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    if !ours || LOOKED.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let count = match count.trim() {
        // As `sd_listen_fds`: none said, none passed.
        "" => return Ok(None),
        text => match text.parse::<usize>() {
            Ok(0) => return Ok(None),
            Ok(n) if n <= MOST => n,
            _ => return Err(ActivationError::Count(count)),
        },
    };
    let mut found = Vec::new();
    let mut taken = None;
    for fd in (FIRST..).take(count) {
        // None of them is inherited by what sald runs (the plumbing's
        // tools); fails for a number that is not open, described below.
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        match describe(fd) {
            Some((socket2::Type::DGRAM, Some(SocketAddr::V4(local))))
                if local == wanted && taken.is_none() =>
            {
                // SAFETY: the service manager passed `fd` to this process
                // (`LISTEN_PID` is ours), it is an open socket (just
                // asked), and nothing else in sald owns it: only the first
                // call looks (`LOOKED`), and it takes one descriptor once.
                taken = Some(unsafe { UdpSocket::from_raw_fd(fd) });
            }
            Some((kind, local)) => found.push(format!(
                "{fd}: {} {}",
                kind_name(kind),
                local.map_or("without an IP address".into(), |a| a.to_string())
            )),
            None => found.push(format!("{fd}: not a socket")),
        }
    }
    if taken.is_some() {
        return Ok(taken);
    }
    Err(ActivationError::NotFound {
        wanted,
        count,
        found: found.join(", "),
    })
}

/// A passed descriptor's socket type and bound address; `None` if it is
/// not an open socket.
fn describe(fd: RawFd) -> Option<(socket2::Type, Option<SocketAddr>)> {
    // Open at all? (A bogus count must not make us borrow a closed number.)
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: `fd` is open (checked just above) and stays open for this
    // borrow: nothing closes passed descriptors.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&borrowed);
    let kind = socket.r#type().ok()?;
    let local = socket.local_addr().ok().and_then(|a| a.as_socket());
    Some((kind, local))
}

fn kind_name(kind: socket2::Type) -> &'static str {
    match kind {
        socket2::Type::DGRAM => "datagram socket",
        socket2::Type::STREAM => "stream socket",
        _ => "socket",
    }
}
