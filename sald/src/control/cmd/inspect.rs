//! `ListFlows`, `ListInterfaces`, `Stats`: what operators look at. An
//! ordinary user sees only its own flows.

use sal_control::Response;

use super::Reply;
use crate::control::client::Client;

/// The flows the client may see, sorted by ID.
pub(super) fn flows(client: &mut Client) -> Reply {
    let mut core = client.context.shared.lock();
    // Bring the host's clock (and the flows' ages) up to now.
    core.run();
    let mut flows = core.visible_flows(client.uid, client.privileged);
    drop(core);
    flows.sort_by_key(|f| f.flow);
    (Response::Flows { flows }, None)
}

/// The host's SAL interfaces.
pub(super) fn interfaces(client: &mut Client) -> Reply {
    let interfaces = client.context.shared.lock().host.interfaces().to_vec();
    (Response::Interfaces { interfaces }, None)
}

/// The daemon's counters.
pub(super) fn stats(client: &mut Client) -> Reply {
    let uptime = client.context.started.elapsed();
    let stats = client.context.shared.lock().stats(uptime);
    (
        Response::Stats {
            stats: Box::new(stats),
        },
        None,
    )
}
