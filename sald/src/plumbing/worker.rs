//! The plumbing's own thread.
//!
//! Netlink requests block until the kernel answers and `nft` is a child
//! process to wait for: neither may run on the thread that carries packets.
//! The worker is a plain thread that owns the [`Plumbing`] (once installed)
//! and runs the jobs sent to it one at a time, answering each on a oneshot
//! channel, the way [`crate::watch`] reads kernel events on a thread of its
//! own. It is started from the daemon's thread, so it lives in the daemon's
//! network namespace.
//!
//! Dropping the worker ends the thread after its queued jobs, dropping the
//! plumbing, which undoes it (best effort); [`PlumbingWorker::remove`] does
//! the same and reports what failed.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{Plumbing, PlumbingConfig, PlumbingError};

type Job = Box<dyn FnOnce(&mut Option<Plumbing>) + Send>;

/// Handle on the plumbing thread.
#[derive(Debug)]
pub struct PlumbingWorker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl PlumbingWorker {
    /// Starts the thread (in the calling thread's network namespace).
    pub fn spawn() -> io::Result<PlumbingWorker> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("sald-plumbing".into())
            .spawn(move || {
                let mut plumbing = None;
                for job in queue {
                    job(&mut plumbing);
                }
            })?;
        Ok(PlumbingWorker {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues `job` for the plumbing thread without waiting for it (it
    /// reports its own failures); jobs run in the order they are queued.
    pub fn submit<J>(&self, job: J) -> Result<(), PlumbingError>
    where
        J: FnOnce(&mut Option<Plumbing>) + Send + 'static,
    {
        self.jobs
            .as_ref()
            .ok_or(PlumbingError::WorkerGone)?
            .send(Box::new(job))
            .map_err(|_| PlumbingError::WorkerGone)
    }

    /// Runs `job` on the plumbing thread and waits (asynchronously) for its
    /// result. The job gets the installed plumbing, if any.
    pub async fn run<R, J>(&self, job: J) -> Result<R, PlumbingError>
    where
        R: Send + 'static,
        J: FnOnce(&mut Option<Plumbing>) -> R + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        self.submit(move |plumbing| {
            let _ = reply.send(job(plumbing));
        })?;
        result.await.map_err(|_| PlumbingError::WorkerGone)
    }

    /// Installs the plumbing for `config` (see [`Plumbing::install`]).
    pub async fn install(&self, config: PlumbingConfig) -> Result<(), PlumbingError> {
        self.run(move |plumbing| {
            *plumbing = Some(Plumbing::install(&config)?);
            Ok(())
        })
        .await?
    }

    /// Removes the plumbing (if installed) and ends the thread.
    pub async fn remove(mut self) -> Result<(), PlumbingError> {
        let result = self
            .run(|plumbing| plumbing.take().map_or(Ok(()), Plumbing::try_remove))
            .await;
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // The queue is closed and empty: the thread is ending.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result?
    }
}

impl Drop for PlumbingWorker {
    fn drop(&mut self) {
        // Closing the queue ends the thread, which drops (undoes) the
        // plumbing; wait for that so that it is done before the process
        // exits.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_the_worker_thread_in_order() {
        let worker = PlumbingWorker::spawn().unwrap();
        let here = std::thread::current().id();
        let (first, second) = tokio::join!(
            worker.run(|p| (p.is_none(), std::thread::current().id())),
            worker.run(|_| std::thread::current().name().map(str::to_owned))
        );
        let (empty, there) = first.unwrap();
        assert!(empty);
        assert_ne!(there, here);
        assert_eq!(second.unwrap().as_deref(), Some("sald-plumbing"));
        // A submitted job runs before a later one.
        let (tx, rx) = std::sync::mpsc::channel();
        worker.submit(move |_| tx.send(1).unwrap()).unwrap();
        assert_eq!(
            worker.run(move |_| rx.try_recv().ok()).await.unwrap(),
            Some(1)
        );
        worker.remove().await.unwrap();
    }
}
