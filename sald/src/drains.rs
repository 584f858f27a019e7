//! The drained listeners that waiting `Drain` requests watch, and how
//! they are woken (see `control::cmd::drain`).
//!
//! A waiting drain watches one listener at a time: having found flows
//! pending on it, it subscribes to the listener's entry here under the
//! core's lock, and sleeps until [`DrainWatches::settled`] says that sald
//! may hold none of its flows any more (which the core says under the same
//! lock, so nothing said after the look is missed), or, once it holds
//! none, until the program has taken the rest out of its accept queue
//! (which the queue's memory says, see [`crate::accept_queue`]). An entry exists only
//! while some drain watches its listener: the last watcher to leave
//! removes it ([`DrainWatches::unwatch`]), whether it was woken, ran out of
//! time or lost its client. So there are never more entries than waiting
//! drains, and a listener nobody waits on costs one failed lookup when its
//! count falls.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use sal::table::ListenerId;
use tokio::sync::watch;

/// The watched listeners. See the module docs.
#[derive(Debug, Default)]
pub struct DrainWatches {
    by_listener: HashMap<ListenerId, watch::Sender<()>>,
}

impl DrainWatches {
    /// Watches `listener`: the receiver sees every [`DrainWatches::settled`]
    /// from now on. Give it back with [`DrainWatches::unwatch`].
    pub fn watch(&mut self, listener: ListenerId) -> watch::Receiver<()> {
        self.by_listener
            .entry(listener)
            .or_insert_with(|| watch::Sender::new(()))
            .subscribe()
    }

    /// Stops one watch of `listener`; the last one removes its entry.
    pub fn unwatch(&mut self, listener: ListenerId, receiver: watch::Receiver<()>) {
        drop(receiver);
        if let Entry::Occupied(entry) = self.by_listener.entry(listener) {
            if entry.get().receiver_count() == 0 {
                entry.remove();
            }
        }
    }

    /// Whether a drain watches `listener`.
    pub fn is_watched(&self, listener: ListenerId) -> bool {
        self.by_listener.contains_key(&listener)
    }

    /// Wakes every drain watching `listener` (none: nothing happens).
    pub fn settled(&self, listener: ListenerId) {
        if let Some(sender) = self.by_listener.get(&listener) {
            sender.send_replace(());
        }
    }

    /// How many listeners are watched.
    pub fn len(&self) -> usize {
        self.by_listener.len()
    }

    /// Whether no listener is watched.
    pub fn is_empty(&self) -> bool {
        self.by_listener.is_empty()
    }

    /// Gives back the memory of entries gone.
    pub fn shrink_to_fit(&mut self) {
        self.by_listener.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_sees_what_is_said_after_it_began_and_leaves_nothing() {
        let mut watches = DrainWatches::default();
        let listener = ListenerId(7);
        watches.settled(listener);
        assert!(watches.is_empty(), "saying it to nobody keeps nothing");
        let mut first = watches.watch(listener);
        let second = watches.watch(listener);
        assert!(!first.has_changed().unwrap(), "nothing said since");
        assert_eq!(watches.len(), 1, "one entry per listener");
        // Said before the watcher sleeps: not lost.
        watches.settled(listener);
        first.changed().await.unwrap();
        watches.unwatch(listener, first);
        assert!(watches.is_watched(listener), "the second still watches");
        watches.unwatch(listener, second);
        assert!(watches.is_empty());
    }
}
