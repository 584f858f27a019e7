//! Graceful shutdown, as in tokio's mini-redis: one signal every task
//! listens for, and a count of the tasks still running that the daemon
//! waits on.
//!
//! [`Tasks::spawn`] starts a task that gets a [`Shutdown`] to watch, and
//! counts it until it ends. [`Tasks::shut_down`] raises the signal
//! and [`Tasks::wait`] returns once none is left (or the bound passes). The control server, each control client and each pump are such
//! tasks; the packet path (link reader, timers) is not: it must keep running
//! while flows are ended, and is stopped after them.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// What a task watches to learn that the daemon is stopping.
#[derive(Debug, Clone)]
pub struct Shutdown {
    signal: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether the daemon is stopping.
    pub fn is_shutdown(&self) -> bool {
        *self.signal.borrow()
    }

    /// Waits until the daemon is stopping (at once if it already is).
    pub async fn recv(&mut self) {
        // An error means the sender is gone, which is a shutdown too.
        let _ = self.signal.wait_for(|stopping| *stopping).await;
    }
}

/// The daemon's tracked tasks. Cheap to clone: every clone spawns into the
/// same set.
#[derive(Debug, Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    signal: watch::Sender<bool>,
    running: AtomicUsize,
    /// Notified whenever a task ends.
    ended: Notify,
}

/// Held by a running task; counts it out when dropped (also when the task
/// is cancelled or panics).
struct Running(Arc<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Tasks {
    /// A new, empty set.
    pub fn new() -> Tasks {
        let (signal, _) = watch::channel(false);
        Tasks {
            inner: Arc::new(Inner {
                signal,
                running: AtomicUsize::new(0),
                ended: Notify::new(),
            }),
        }
    }

    /// The shutdown signal, for code that is not a tracked task.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            signal: self.inner.signal.subscribe(),
        }
    }

    /// Spawns `task(shutdown)` as a tracked task.
    pub fn spawn<F, T>(&self, task: T)
    where
        T: FnOnce(Shutdown) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.inner.clone());
        let future = task(self.shutdown());
        tokio::spawn(async move {
            let _running = running;
            future.await;
        });
    }

    /// How many tracked tasks are running.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Tells every task that the daemon is stopping.
    pub fn shut_down(&self) {
        self.inner.signal.send_replace(true);
    }

    /// Waits until every tracked task has ended, or `bound` passes. Returns
    /// whether they all ended.
    pub async fn wait(&self, bound: Duration) -> bool {
        let all_ended = async {
            loop {
                let ended = self.inner.ended.notified();
                if self.running() == 0 {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(bound, all_ended).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_hear_the_signal_and_are_waited_for() {
        let tasks = Tasks::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let tx = tx.clone();
            tasks.spawn(move |mut shutdown| async move {
                shutdown.recv().await;
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                let _ = tx.send(i);
            });
        }
        assert!(!tasks.shutdown().is_shutdown());
        tasks.shut_down();
        assert!(tasks.shutdown().is_shutdown());
        assert!(tasks.wait(Duration::from_secs(5)).await);
        assert_eq!(tasks.running(), 0);
        drop(tx);
        let mut ended = Vec::new();
        while let Some(i) = rx.recv().await {
            ended.push(i);
        }
        assert_eq!(ended, [0, 1, 2]);
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_waited_for_only_so_long() {
        let tasks = Tasks::new();
        tasks.spawn(|_| std::future::pending::<()>());
        tasks.shut_down();
        assert!(!tasks.wait(Duration::from_millis(50)).await);
        assert_eq!(tasks.running(), 1);
    }
}
