//! `ListFlows`, `ListInterfaces`, `Stats`: what operators look at. An
//! ordinary user sees only its own flows, found through the per-user index
//! of [`crate::owners::Owners`]: its listing costs what it owns, not what
//! the host holds (see [`crate::daemon::Core::visible_flow_ids`]).

use sal::FlowId;
use sal_control::Response;

use super::{parts, Reply};
use crate::control::client::Client;

/// The flows the client may see, sorted by ID (in parts when there are
/// many, see `parts`).
pub(super) async fn flows(client: &mut Client) -> Reply {
    let (uid, privileged) = (client.uid, client.privileged);
    let turn = client.context.listings.wait(uid, privileged).await;
    let shared = client.context.shared.clone();
    let ids = {
        let mut core = shared.lock();
        // Bring the host's clock (and the flows' ages) up to now.
        core.run();
        core.visible_flow_ids(uid, privileged)
    };
    let ids = parts::sorted(client, ids).await;
    let build = |ids: &[FlowId]| shared.lock().visible_flows(ids, uid, privileged);
    let part = |flows| Response::FlowsPart { flows };
    let whole = |flows| Response::Flows { flows };
    parts::answer_list(client, &turn, &ids, build, part, whole).await
}

/// The host's SAL interfaces, and whether sald relays for programs.
pub(super) fn interfaces(client: &mut Client) -> Reply {
    let shared = client.context.shared.lock();
    let interfaces = shared.host.interfaces().to_vec();
    let relays = shared.host.config().relay_local;
    (Response::Interfaces { interfaces, relays }, None)
}

/// The daemon's counters.
pub(super) fn stats(client: &mut Client) -> Reply {
    let uptime = client.context.started.elapsed();
    let mut stats = client.context.shared.lock().stats(uptime);
    crate::daemon::count_descriptors(&mut stats);
    stats.ration_waits = client.context.rations.waits();
    stats.relays_ended =
        (client.context.shared.relays_ended).load(std::sync::atomic::Ordering::Relaxed);
    (
        Response::Stats {
            stats: Box::new(stats),
        },
        None,
    )
}
