//! What a long listing (`ListRules`, `ListFlows`) may take from everyone
//! else.
//!
//! sald serves its control clients and moves packets on one thread, and a
//! listing of a large table is long: at 100,000 rules, a snapshot of the
//! keys, a hundred parts of a megabyte each to build, encode and write,
//! about 70 ms of CPU. A listing that never had to wait (its reader keeps
//! up) held the thread for all of it, and any user could ask for one in a
//! loop: one looping connection took a bulk flow of another user from 722
//! to 2 MB/s, and held a snapshot per connection besides (128 slow readers
//! held 434 MB).
//!
//! So a listing lets the packet path run after each part, and an ordinary
//! user's listings are rationed: one at a time per user (its other
//! connections wait their turn, so it holds at most one snapshot), each
//! part followed by a pause of [`PACE`] times the time the part took, so a
//! user who lists in a loop gets at most a quarter of the thread. Root and
//! sald's own user (servd, operators) list at full speed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

/// An ordinary user's listing rests this many times as long as it worked.
pub const PACE: u32 = 3;

/// The turns of ordinary users' listings: one at a time per user.
#[derive(Debug, Default)]
pub struct ListingTurns {
    /// One lock per user with a listing in progress or waiting; removed
    /// with the last of them.
    users: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
}

/// A listing's turn: the right to list, and how to pace itself.
#[derive(Debug)]
pub struct ListingTurn {
    /// Held by an ordinary user's listing (none for privileged users).
    held: Option<(Arc<ListingTurns>, u32, OwnedMutexGuard<()>)>,
}

impl ListingTurns {
    /// Waits for `uid`'s turn to list (at once when `privileged`).
    pub async fn wait(self: &Arc<Self>, uid: u32, privileged: bool) -> ListingTurn {
        if privileged {
            return ListingTurn { held: None };
        }
        let lock = self.lock().entry(uid).or_default().clone();
        let guard = lock.lock_owned().await;
        ListingTurn {
            held: Some((self.clone(), uid, guard)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<tokio::sync::Mutex<()>>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ListingTurn {
    /// A part that took `worked` is out: lets the packet path and other
    /// clients run, and, for an ordinary user, rests [`PACE`] times as long.
    pub async fn rest(&self, worked: Duration) {
        match self.held {
            Some(_) => tokio::time::sleep(worked * PACE).await,
            None => tokio::task::yield_now().await,
        }
    }
}

impl Drop for ListingTurn {
    fn drop(&mut self) {
        let Some((turns, uid, guard)) = self.held.take() else {
            return;
        };
        let mut users = turns.lock();
        drop(guard);
        // Nobody else holds or waits for this user's lock: forget it.
        if users
            .get(&uid)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            users.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ordinary_user_lists_once_at_a_time_and_root_at_will() {
        let turns = Arc::new(ListingTurns::default());
        let first = turns.wait(1000, false).await;
        let second = tokio::time::timeout(Duration::from_millis(50), turns.wait(1000, false)).await;
        assert!(second.is_err(), "the same user's second listing waits");
        let other = tokio::time::timeout(Duration::from_millis(50), turns.wait(1001, false)).await;
        assert!(other.is_ok(), "another user's does not");
        let root = tokio::time::timeout(Duration::from_millis(50), turns.wait(0, true)).await;
        assert!(root.is_ok());
        drop(other);
        drop(first);
        let again = tokio::time::timeout(Duration::from_millis(50), turns.wait(1000, false)).await;
        assert!(again.is_ok(), "its turn comes once the first is done");
        drop(again);
        assert!(
            turns.lock().is_empty(),
            "nothing kept for users not listing"
        );
    }
}
