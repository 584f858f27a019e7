//! `Adopt`: sald takes over an established stream flow that a program
//! drove in its own SAL host over UDP (`docs/in-process-sal.md`: the
//! hand-over before a program's `fork` or `exec`), and serves it from then
//! on as if the program had connected it through sald: the program gets
//! the application's end of a socketpair, as for `Connect`, and the flow
//! moves to sald's locator with an RSYN (`sal::proto::Host::import_flow`).
//!
//! An export is hostile input from an unprivileged program, so before
//! anything is imported:
//!
//! - the caller must hold the flow's locator: its UDP socket rides on the
//!   request (`SCM_RIGHTS`) and must be bound where the export's `local`
//!   says, in sald's network namespace (`program_socket`, shared with
//!   `Relay`). Another user's flow lived on another user's socket, which
//!   cannot be passed. (The flow's nonces, which the peer checks on the
//!   RSYN, are what really keep a forged export from taking a flow over:
//!   this check keeps a program to its own flows even so.)
//! - the flow counts as one of the caller's, held to `flows_per_uid` and
//!   the descriptor reserve as a `Connect` is (`flows::over_share`);
//! - its buffers are charged to the caller's buffer budget group, as a
//!   connected flow's are, and must fit that group's budget and the
//!   host's, neither under pressure, reckoned from the export's lengths
//!   before anything is allocated (`Host::import_flow_in_group`).
//!
//! Then the flow is handed over exactly as a connected flow is
//! (`flows::hand_over`): same pump, same socketpair handling. The bytes
//! the export held unread are the first the pump writes to the
//! application's end; the unsent ones are the first the flow sends, in
//! order, once the peer answered the RSYN.

use sal::proto::{FlowExport, HostError};
use sal::Locator;
use sal_control::{ErrorKind, Response};

use super::flows::{budget_group, hand_over, over_share};
use super::program_socket::{checked_program_socket, receives_at, SocketRefusal};
use super::{error_reply, host_error, Reply};
use crate::control::client::Client;

/// Why an adoption was refused before the export was looked at further;
/// each maps to one error class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdoptRefusal {
    /// The request came without a descriptor.
    #[error("adopt: attach the UDP socket the flow lived on (SCM_RIGHTS on its first byte)")]
    NoSocket,
    /// The descriptor is not a program's socket here.
    #[error("adopt: {0}")]
    Socket(#[from] SocketRefusal),
    /// The socket passed is not bound where the flow lived.
    #[error("adopt: the flow lived at {local}, not where the socket passed receives ({bound})")]
    NotTheSocket {
        /// The export's local locator.
        local: Locator,
        /// The socket's own address.
        bound: std::net::SocketAddrV4,
    },
    /// sald was not started with `--relays`.
    #[error("adopt: programs' own hosts are off in this sald (--no-relays, relays = false, or native mode)")]
    Off,
    /// sald has no UDP interface that is up to take the flow to (relays,
    /// and so adopting, need UDP mode: `--relays` without `--udp` does
    /// not start).
    #[error("adopt: this sald has no UDP interface up to take the flow to")]
    NoUdpInterface,
}

impl AdoptRefusal {
    /// The control protocol's error class: no proof that the flow is the
    /// caller's is `PermissionDenied`; a sald that adopts nothing,
    /// `InvalidRequest`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AdoptRefusal::Off => ErrorKind::InvalidRequest,
            AdoptRefusal::NoUdpInterface => ErrorKind::NoRoute,
            AdoptRefusal::Socket(SocketRefusal::Unchecked) => ErrorKind::Internal,
            _ => ErrorKind::PermissionDenied,
        }
    }

    fn reply(&self) -> Reply {
        error_reply(self.kind(), self.to_string())
    }
}

/// Takes over the flow `export` describes for the caller, whose UDP socket
/// came with the request (see the module docs).
pub(super) async fn adopt(client: &mut Client, export: FlowExport) -> Reply {
    let Some(socket) = client.attached.take() else {
        return AdoptRefusal::NoSocket.reply();
    };
    if !client.context.shared.lock().host.config().relay_local {
        return AdoptRefusal::Off.reply();
    }
    let (socket, bound) = match checked_program_socket(socket).await {
        Ok(checked) => checked,
        Err(refusal) => return AdoptRefusal::from(refusal).reply(),
    };
    let owned = matches!(export.local, Locator::Udp(local) if receives_at(bound, local));
    if !owned {
        let local = export.local;
        return AdoptRefusal::NotTheSocket { local, bound }.reply();
    }
    // The socket proved what it had to; the program keeps its own copy.
    drop(socket);
    let context = client.context.clone();
    let uid = client.uid;
    let flow = {
        let mut core = context.shared.lock();
        let Some(interface) = udp_interface(&core.host, &export.local) else {
            return AdoptRefusal::NoUdpInterface.reply();
        };
        if let Some(refusal) = over_share(&context, &core, uid) {
            return refusal;
        }
        let flow = match core
            .host
            .import_flow_in_group(export, &interface, budget_group(uid))
        {
            Ok(flow) => flow,
            Err(error) => return import_error(error),
        };
        // Counted from now on, as a connect is from its start.
        core.owners.adopt(flow, uid);
        core.run();
        flow
    };
    tracing::debug!(flow = flow.get(), uid, "adopted a program's flow");
    hand_over(&context, uid, flow, |flow| Response::Adopted { flow })
}

/// The name of the interface an adopted flow moves to: an up UDP one,
/// on the address the flow lived on if sald has one there (sald and its
/// programs share the host's addresses), else the first.
fn udp_interface(host: &sal::proto::Host, lived: &Locator) -> Option<String> {
    let udp =
        || (host.interfaces().iter()).filter(|i| i.up && matches!(i.locator, Locator::Udp(_)));
    udp()
        .find(|i| i.locator.ip() == lived.ip())
        .or_else(|| udp().next())
        .map(|i| i.name.clone())
}

/// The response for a refused import: for want of room (flows or memory)
/// `Exhausted`, a flow ID sald has `AddressInUse`, anything else wrong
/// with the export `InvalidRequest`.
fn import_error(error: HostError) -> Reply {
    let kind = match &error {
        HostError::BadImport(bad) if bad.is_exhaustion() => ErrorKind::Exhausted,
        HostError::BadImport(_) => ErrorKind::InvalidRequest,
        HostError::FlowIdInUse(_) => ErrorKind::AddressInUse,
        _ => return host_error(error),
    };
    error_reply(kind, format!("adopt: {error}"))
}
