//! The threads a store does its IO on, whatever the database: a queue of work served by a few
//! threads, each owning one connection, and the [`Pending`] future a caller awaits.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use crate::{Error, Pending, Result};

/// The error of work whose thread is gone.
pub(crate) fn stopped() -> Error {
    Error::Commit {
        message: "the store's thread has stopped".into(),
    }
}

/// The future of work sent to a store thread, which answers on `rx`.
pub(crate) fn pending<R: Send + 'static>(
    rx: tokio::sync::oneshot::Receiver<Result<R>>,
) -> Pending<R> {
    Box::pin(async move { rx.await.unwrap_or_else(|_| Err(stopped())) })
}

/// Runs `work`, turning a panic into an error: a bug in one write or read must not take the
/// store's thread (and every later caller) down with it.
pub(crate) fn guarded<R>(work: impl FnOnce() -> Result<R>) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|_| {
        Err(Error::Commit {
            message: "a store operation panicked".into(),
        })
    })
}

type Job<C> = Box<dyn FnOnce(&mut C) + Send>;

/// Threads, one per connection given, taking work from one queue. With one thread the work is
/// done in the order it was queued.
pub(crate) struct Workers<C> {
    queue: Option<Sender<Job<C>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl<C: Send + 'static> Workers<C> {
    /// Starts a thread named `name-N` for each of `connections`.
    pub(crate) fn start(name: &str, connections: Vec<C>) -> Result<Workers<C>> {
        let (tx, rx) = std::sync::mpsc::channel::<Job<C>>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(connections.len());
        for (i, mut conn) in connections.into_iter().enumerate() {
            let rx = rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held while this thread waits for the next job: the
                        // others wait their turn at the queue, not on a job in progress.
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match next {
                            Ok(job) => job(&mut conn),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|source| Error::Open {
                    path: format!("{name} thread").into(),
                    source,
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            queue: Some(tx),
            threads,
        })
    }

    /// Queues `work`; its future resolves with what it returns.
    pub(crate) fn submit<R: Send + 'static>(
        &self,
        work: impl FnOnce(&mut C) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<R>>();
        let job: Job<C> = Box::new(move |conn| {
            let _ = tx.send(guarded(|| work(conn)));
        });
        let queue = self
            .queue
            .as_ref()
            .expect("the queue lives as long as the workers");
        // When the threads are gone the job is dropped, and with it `tx`: the future says so.
        let _ = queue.send(job);
        pending(rx)
    }
}

impl<C> Drop for Workers<C> {
    fn drop(&mut self) {
        // Closing the queue lets the threads finish what is queued and stop; joining them
        // closes their connections before the store is gone.
        self.queue.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
