//! One function per request, grouped by what they act on (as mini-redis's
//! `cmd/`): [`bind`] (listeners), [`drain`] (graceful leaves), [`flows`] (connects, datagram sockets and
//! handing flows over), [`relay`] (binds served by a program's own SAL
//! host), [`adopt`] (flows a program's own host hands over, checked with
//! [`program_socket`] as relays are), [`resolve`] (routes such programs
//! cache), [`rules`], [`inspect`] (listings, stats, with
//! [`parts`] for long lists) and [`migrate`]. `Hello`, `Subscribe` and `Connector` change what the
//! connection is and are handled by the client loop.

mod adopt;
mod bind;
mod deliver;
mod drain;
mod flows;
mod inspect;
mod migrate;
mod parts;
mod program_socket;
mod relay;
mod resolve;
mod rules;

use std::os::fd::OwnedFd;

use sal::proto::{ConnectError, HostError};
use sal_control::{ErrorKind, Request, Response};

use super::client::Client;

use bind::not_ours;
pub(super) use bind::unbind_all;
pub(super) use flows::connect;
pub use relay::{watch_sockets as watch_relay_sockets, WATCH_INTERVAL as RELAY_WATCH_INTERVAL};

/// What a request produced: a response and maybe a socket to hand over.
pub(super) type Reply = (Response, Option<OwnedFd>);

/// Answers one request.
pub(super) async fn handle(client: &mut Client, request: Request) -> Reply {
    match request {
        Request::Hello { .. } | Request::Subscribe | Request::Connector => {
            error_reply(ErrorKind::InvalidRequest, "unexpected request")
        }
        Request::Listen {
            prefix,
            protocol,
            backlog,
        } => bind::listen(client, prefix, protocol, backlog),
        Request::Relay { prefix, locator } => relay::relay(client, prefix, locator).await,
        Request::Adopt { export } => adopt::adopt(client, *export).await,
        Request::Resolve { service } => resolve::resolve(client, service),
        Request::Accept {
            listener,
            nonblocking,
        } => bind::accept(client, listener, nonblocking).await,
        Request::Deliver {
            listener,
            flow_info,
        } => deliver::deliver(client, listener, flow_info),
        Request::SetBacklog { listener, backlog } => bind::set_backlog(client, listener, backlog),
        Request::CloseListener { listener } => bind::close_listener(client, listener),
        Request::StopListening { listener } => bind::stop_listening(client, listener),
        Request::Drain { prefix, wait_ms } => drain::drain(client, prefix, wait_ms).await,
        Request::Connect {
            service,
            protocol,
            timeout_ms,
        } => flows::connect(&client.context, client.uid, service, protocol, timeout_ms).await,
        Request::OpenDatagram => flows::open_datagram(client),
        Request::AddRule {
            prefix,
            target,
            priority,
        } => rules::add(client, prefix, target, priority, Default::default()),
        Request::AddRuleWithOrigin {
            prefix,
            target,
            priority,
            origin,
        } => rules::add(client, prefix, target, priority, origin),
        Request::DelRule { prefix, target } => rules::delete(client, prefix, target),
        Request::ApplyRules { changes } => rules::apply(client, changes),
        Request::ListRules => rules::list(client).await,
        Request::ListFlows => inspect::flows(client).await,
        Request::ListInterfaces => inspect::interfaces(client),
        Request::Stats => inspect::stats(client),
        Request::Migrate { flow, iface } => migrate::one(client, flow, &iface),
        Request::MigrateAll { from, to } => migrate::all(client, &from, &to),
    }
}

/// An error response.
pub(super) fn error_reply(kind: ErrorKind, message: impl Into<String>) -> Reply {
    (Response::error(kind, message), None)
}

/// The response for an operation only root and sald's own user may do.
fn denied(what: &str) -> Reply {
    error_reply(ErrorKind::PermissionDenied, format!("only root may {what}"))
}

/// The response for a failed host call.
fn host_error(error: HostError) -> Reply {
    let kind = match &error {
        HostError::Connect(ConnectError::NoRoute) => ErrorKind::NoRoute,
        HostError::Connect(ConnectError::Refused) => ErrorKind::Refused,
        HostError::Connect(ConnectError::TimedOut) => ErrorKind::TimedOut,
        HostError::AddressInUse(_) => ErrorKind::AddressInUse,
        HostError::NoSuchFlow(_) | HostError::NoSuchListener(_) | HostError::NoSuchInterface(_) => {
            ErrorKind::NotFound
        }
        HostError::WouldBlock => ErrorKind::WouldBlock,
        HostError::TooManyFlows(_) => ErrorKind::Exhausted,
        _ => ErrorKind::InvalidRequest,
    };
    error_reply(kind, error.to_string())
}

fn connect_error(error: ConnectError) -> Reply {
    host_error(HostError::Connect(error))
}
