//! `Migrate`, `MigrateAll`: operators moving flows between interfaces.

use sal::proto::HostError;
use sal::FlowId;
use sal_control::{ErrorKind, Response};

use super::{denied, error_reply, host_error, Reply};
use crate::control::client::Client;

/// Moves one flow to interface `iface`.
pub(super) fn one(client: &mut Client, flow: FlowId, iface: &str) -> Reply {
    if !client.privileged {
        return denied("migrate flows");
    }
    let mut core = client.context.shared.lock();
    let result = core.host.migrate(flow, iface);
    core.run();
    match result {
        Ok(()) => (Response::Ok, None),
        Err(error) => host_error(error),
    }
}

/// Moves every flow on interface `from` to interface `to`.
pub(super) fn all(client: &mut Client, from: &str, to: &str) -> Reply {
    if !client.privileged {
        return denied("migrate flows");
    }
    let mut core = client.context.shared.lock();
    for name in [from, to] {
        if !core.host.interfaces().iter().any(|i| i.name == name) {
            return error_reply(ErrorKind::NotFound, format!("no interface {name}"));
        }
    }
    let on_from: Vec<_> = core
        .host
        .flows()
        .into_iter()
        .filter(|f| f.interface.as_deref() == Some(from))
        .map(|f| f.flow)
        .collect();
    let mut moved = 0;
    let mut failure = None;
    for flow in on_from {
        match core.host.migrate(flow, to) {
            Ok(()) => moved += 1,
            Err(HostError::NotConnected) => {}
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    core.run();
    match failure {
        Some(error) => host_error(error),
        None => {
            tracing::info!(%from, %to, moved, "flows migrated");
            (Response::Ok, None)
        }
    }
}
