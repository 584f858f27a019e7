//! Events for subscribers (servd, `servalctl events`), each with the user it
//! concerns, in one bounded queue.
//!
//! A [`tokio::sync::broadcast`] ring of fixed capacity holds the latest
//! events for every subscriber at once: publishing never waits and never
//! allocates per subscriber, and a subscriber that falls behind by more
//! than the capacity loses the oldest events and is told how many
//! ([`ControlEvent::Lagged`]). Memory is the ring, however many subscribers
//! there are and however slowly they read.

use sal_control::ControlEvent;
use tokio::sync::broadcast;

/// Who may see an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every subscriber (news about the subscription itself).
    Everyone,
    /// Root and sald's own user only (e.g. DELAY notifications, which are
    /// for the controller, or events about nobody's flow).
    Privileged,
    /// The user whose flow or binding it is about, and privileged users.
    User(u32),
}

/// An event and who may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event.
    pub event: ControlEvent,
    /// Who may see it.
    pub audience: Audience,
}

impl Published {
    /// Whether a subscriber of user `uid` (privileged or not) may see it.
    pub fn visible_to(&self, uid: u32, privileged: bool) -> bool {
        match self.audience {
            Audience::Everyone => true,
            Audience::Privileged => privileged,
            Audience::User(owner) => privileged || owner == uid,
        }
    }
}

/// The daemon's event queue.
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Published>,
}

impl EventBus {
    /// A queue that keeps the latest `capacity` events for slow subscribers.
    pub fn new(capacity: usize) -> EventBus {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventBus { sender }
    }

    /// Hands `event` to every subscriber (none is fine).
    pub fn publish(&self, event: ControlEvent, audience: Audience) {
        let _ = self.sender.send(Published { event, audience });
    }

    /// A new subscriber, seeing events published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
        }
    }
}

/// One subscriber's view of the queue.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Published>,
}

impl Subscription {
    /// The next event, or a `Lagged` event counting those this subscriber
    /// missed; `None` once the daemon is gone.
    pub async fn next(&mut self) -> Option<Published> {
        match self.receiver.recv().await {
            Ok(published) => Some(published),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Published {
                event: ControlEvent::Lagged { missed },
                audience: Audience::Everyone,
            }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_and_is_told() {
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        for flow in 1..=10u32 {
            bus.publish(
                ControlEvent::FlowClosed {
                    flow: sal::FlowId::new(flow).unwrap(),
                },
                Audience::User(1000),
            );
        }
        let first = slow.next().await.unwrap();
        assert_eq!(first.event, ControlEvent::Lagged { missed: 6 });
        assert!(first.visible_to(1001, false));
        let next = slow.next().await.unwrap();
        assert_eq!(
            next.event,
            ControlEvent::FlowClosed {
                flow: sal::FlowId::new(7).unwrap()
            }
        );
        assert!(next.visible_to(1000, false));
        assert!(!next.visible_to(1001, false));
        assert!(next.visible_to(1001, true));
    }
}
