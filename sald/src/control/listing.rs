//! One long listing (`ListRules`, `ListFlows`) at a time per ordinary user.
//!
//! A listing of a large table holds a snapshot of its keys (at 100,000
//! rules, 3.3 MB) and a part of its answer while the client reads it: 128
//! slow readers of one user held 434 MB. So an ordinary user's listings go
//! one at a time (its other connections wait their turn), and it holds at
//! most one snapshot. What a listing may take from sald's thread is the
//! user's ration ([`super::ration`]): it waits for it between parts. Root
//! and sald's own user list at will.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// The turns of ordinary users' listings: one at a time per user.
#[derive(Debug, Default)]
pub struct ListingTurns {
    /// One lock per user with a listing in progress or waiting; removed
    /// with the last of them.
    users: Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>,
}

/// A listing's turn: the right to list.
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
    use std::time::Duration;

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
