//! Long answers in parts: `ListFlows` and `ListRules` on a host with more
//! flows or rules than one frame holds.
//!
//! A frame is at most `MAX_FRAME` bytes (about 2,000 flows or 5,000
//! rules), and a host may hold millions. So a list longer than one part is
//! sent as parts ([`Response::FlowsPart`], [`Response::RulesPart`]), then
//! the answer itself with an empty list; the client puts them together
//! ([`sal_control::Parts`]). Each part is built from a piece of a snapshot
//! of the list's keys (flow IDs, prefixes) under the daemon's lock and
//! written without it: a listing holds the lock a part at a time, never for
//! the whole list, and holds in memory one part of the answer, not all of
//! it. Between parts it waits for its user's ration (see
//! `control::ration`): the packet path runs, and an ordinary user's
//! listings take a bounded share of the thread.

use sal_control::{encode_frame, FrameError, Response};

use super::Reply;
use crate::control::client::Client;
use crate::control::listing::ListingTurn;

/// Items per part: a thousand flows are about 500 KiB of JSON. A part that
/// still comes out larger than a frame (rules with many targets) is split.
const PART_ITEMS: usize = 1024;

/// Listings of more keys than this are sorted off sald's thread.
const SORT_OFF_THREAD: usize = 4096;

/// `keys` sorted, the client's listing's order. A long list is sorted on
/// the runtime's blocking pool, not on sald's thread: sorting 100,000
/// prefixes held that thread for milliseconds at once, which the ration
/// (an average) does not bound, and every packet and connect waited (a
/// connect's p99 went from 4-8 to 16-27 ms beside a looping `ListRules`,
/// `benches/control_isolation.rs`). The time is charged to the user's
/// ration all the same.
pub(super) async fn sorted<K: Ord + Send + 'static>(client: &Client, mut keys: Vec<K>) -> Vec<K> {
    if keys.len() <= SORT_OFF_THREAD {
        keys.sort_unstable();
        return keys;
    }
    let started = std::time::Instant::now();
    let sorted = tokio::task::spawn_blocking(move || {
        keys.sort_unstable();
        keys
    })
    .await;
    let context = &client.context;
    (context.rations).charge_for(client.uid, client.privileged, started.elapsed());
    // Only a panic in the sort fails it: list nothing rather than fall over.
    sorted.unwrap_or_default()
}

/// Answers with the list `keys` stand for: `build` makes the items of some
/// keys (those gone meanwhile are left out), `part` wraps a piece as a part
/// and `whole` as the answer. `_turn` is the listing's (taken before the
/// keys were).
pub(super) async fn answer_list<K, T>(
    client: &mut Client,
    _turn: &ListingTurn,
    keys: &[K],
    mut build: impl FnMut(&[K]) -> Vec<T>,
    part: impl Fn(Vec<T>) -> Response,
    whole: impl Fn(Vec<T>) -> Response,
) -> Reply {
    if keys.len() <= PART_ITEMS {
        let response = whole(build(keys));
        if encode_frame(&response).is_ok() {
            return (response, None);
        }
    }
    for chunk in keys.chunks(PART_ITEMS) {
        let mut pieces = vec![chunk];
        while let Some(piece) = pieces.pop() {
            let frame = match encode_frame(&part(build(piece))) {
                Ok(frame) => frame,
                Err(FrameError::TooLarge(_)) if piece.len() > 1 => {
                    let (first, second) = piece.split_at(piece.len() / 2);
                    pieces.extend([second, first]);
                    continue;
                }
                Err(error) => {
                    // One item larger than a frame: nothing can carry it.
                    tracing::warn!(%error, "an item left out of a listing");
                    continue;
                }
            };
            if let Err(error) = client.respond_frame(&frame).await {
                // The answer below fails the same way and ends the client.
                tracing::debug!(%error, "listing not taken");
                return (whole(Vec::new()), None);
            }
            // The packet path runs between parts, whoever lists.
            let rations = client.context.rations.clone();
            rations.wait(client.uid, client.privileged).await;
            tokio::task::yield_now().await;
        }
    }
    (whole(Vec::new()), None)
}
