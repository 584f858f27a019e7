//! `Resolve`: how sald would route a first packet to a service, for a
//! program that drives its own SAL host (`docs/in-process-sal.md`,
//! stage 2, "cached resolution"). Such a program's one rule sends every SYN to
//! sald, which resolves it by its table and forwards it (a relay, see
//! `relay`): a hop that costs about a sixth of the connection rate. With
//! the answer, the program's host sends its next SYNs to that service
//! straight to the next hops, until the answer's lifetime (the config
//! file's `resolution_lifetime_ms`) runs out, as a resolver caches a DNS
//! answer.
//!
//! What is answered, from the rule of the longest matching prefix:
//!
//! - a DEMUX of a listener that relays to a program beside sald: that
//!   program's locator (where sald would forward the SYN), for at most
//!   [`RELAY_LIFETIME_MS`];
//! - FORWARD targets in the active group: those next hops with their
//!   weights, if every one is a UDP locator other than sald's own (a
//!   program's host reaches nothing else) and there are at most
//!   [`MAX_HOPS`];
//! - a DEMUX of a listener sald serves itself, DELAY, DROP, no match, or
//!   relays off (sald routes no program's SYN then): no route, "ask me
//!   each time" (the program sends the service's SYNs to sald for the
//!   lifetime, then asks again).
//!
//! The answer holds for the service ID asked, not for the matched prefix:
//! a longer rule inside that prefix (a local listener under a default
//! route) would be hidden by a rule of the whole prefix in the program's
//! host, and finding such rules costs what the table holds under the
//! prefix (the whole table, under `0/0`). So the request costs one
//! longest-prefix match and a look at one rule.
//!
//! Why it is no boundary: a program with its own UDP socket may send any
//! packet to anyone already; sald's hop only resolves. The answer tells
//! the program the matched rule's prefix and its active group (every next
//! hop, standbys included, with its weight), where the SYN-ACK of one
//! flow would tell it one server's locator; an ordinary user may list
//! sald's rules (`ListRules`) anyway. Its cost to sald is bounded as
//! any request's: an ordinary user's requests are metered (a quarter of
//! sald's thread at most, `control::ration`), connections per user are
//! bounded (`clients_per_uid`), and an idle one is closed (`idle_secs`).
//! A program asks once per service per lifetime.
//!
//! A relay's answer lasts at most [`RELAY_LIFETIME_MS`]: sald drops a
//! relay as soon as its program's control connection closes, and whoever
//! takes the program's UDP port next (another local user) would receive
//! the SYNs that programs holding the answer still send there, around
//! the checks sald makes of who may bind a prefix. A second bounds that
//! window (and the client forgets a route whose connect fails), while
//! connects in a burst still skip sald's hop. Answering relays with no
//! route would close it entirely, at the cost of every SYN to a program
//! beside sald going through sald.
//!
//! The asker's own relay: sald cannot tell that the program asking is
//! the one a relay forwards to (the question comes on any control
//! connection of the user, and the relay's UDP socket is not the
//! asker's to name), so it answers the relay's locator; the client never
//! installs a route with a hop of its own locator (`sal_inproc::resolve`),
//! nor for a service it routes by a rule of its own.
//!
//! Staleness is the lifetime's: a rule changed at sald (a relay unbound, a
//! target removed) reaches programs that hold an answer once it runs out,
//! as a DNS change reaches resolvers after the TTL. An operator who wants
//! every SYN through sald sets the lifetime to 0: sald then answers no
//! route, for [`OFF_LIFETIME_MS`].

use sal::table::Target;
use sal::{Locator, ServiceId, ServicePrefix};
use sal_control::{NextHop, ResolvedRoute, Response};

use super::Reply;
use crate::control::client::Client;

/// How long a program goes through sald before asking again, when sald
/// answers no resolutions (`resolution_lifetime_ms = 0`): a program that
/// asks finds out at most this late that an operator turned them on.
pub const OFF_LIFETIME_MS: u64 = 60_000;

/// The longest a relay's answer lasts, whatever `resolution_lifetime_ms`
/// says (see the module docs: the relay's port may change hands once it
/// is dropped).
pub const RELAY_LIFETIME_MS: u64 = 1000;

/// The most next hops answered; a group of more is answered no route
/// (the client takes no more either).
pub use sal_control::MAX_RESOLVED_HOPS as MAX_HOPS;

/// Answers how sald would route a first packet to `service` (see the
/// module docs).
pub(super) fn resolve(client: &mut Client, service: ServiceId) -> Reply {
    let lifetime_ms = client.context.resolution_lifetime_ms;
    if lifetime_ms == 0 {
        return answer(None, OFF_LIFETIME_MS);
    }
    let core = client.context.shared.lock();
    let host = &core.host;
    if !host.config().relay_local {
        return answer(None, lifetime_ms);
    }
    let Some(rule) = host.table().longest_match(&service) else {
        return answer(None, lifetime_ms);
    };
    let targets = rule.targets();
    let mut lifetime_ms = lifetime_ms;
    let next_hops: Vec<NextHop> = match targets.first().map(|entry| entry.target) {
        // A DEMUX target wins outright (the table's rule): a relayed one
        // goes on to its program, any other is sald's to serve.
        Some(Target::Demux { listener }) => match host.listener_relay(listener) {
            Some(locator) => {
                lifetime_ms = lifetime_ms.min(RELAY_LIFETIME_MS);
                vec![NextHop { locator, weight: 1 }]
            }
            None => Vec::new(),
        },
        Some(_) => {
            let top = targets[0].priority;
            (targets.iter().take_while(|entry| entry.priority == top))
                .filter_map(|entry| match entry.target {
                    Target::Forward { locator, weight } => Some(NextHop { locator, weight }),
                    _ => None,
                })
                // Past MAX_HOPS the answer is no route: no need to see more.
                .take(MAX_HOPS + 1)
                .collect()
        }
        None => Vec::new(),
    };
    let own = |locator: Locator| host.interfaces().iter().any(|i| i.locator == locator);
    let usable = |hop: &NextHop| matches!(hop.locator, Locator::Udp(_)) && !own(hop.locator);
    if next_hops.is_empty() || next_hops.len() > MAX_HOPS || !next_hops.iter().all(usable) {
        return answer(None, lifetime_ms);
    }
    let route = ResolvedRoute {
        matched: rule.prefix,
        prefix: ServicePrefix::exact(service),
        next_hops,
    };
    answer(Some(route), lifetime_ms)
}

fn answer(route: Option<ResolvedRoute>, lifetime_ms: u64) -> Reply {
    (Response::Resolved { route, lifetime_ms }, None)
}
