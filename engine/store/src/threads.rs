//! The threads a store does its IO on, whatever the database: [`Workers`], a queue of work
//! served by a few threads that each own one connection (the readers); [`Committer`], one
//! thread that writes with group commit; and the [`Pending`] future a caller awaits.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{Commit, Error, Pending, Result, SOON};

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

type Task<C> = Box<dyn FnOnce(&mut C) + Send>;

/// Threads, one per connection given, taking work from one queue. With one thread the work is
/// done in the order it was queued.
pub(crate) struct Workers<C> {
    queue: Option<Sender<Task<C>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl<C: Send + 'static> Workers<C> {
    /// Starts a thread named `name-N` for each of `connections`.
    pub(crate) fn start(name: &str, connections: Vec<C>) -> Result<Workers<C>> {
        let (tx, rx) = std::sync::mpsc::channel::<Task<C>>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(connections.len());
        for (i, mut conn) in connections.into_iter().enumerate() {
            let rx = rx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held while this thread waits for the next task: the
                        // others wait their turn at the queue, not on a task in progress.
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match next {
                            Ok(task) => task(&mut conn),
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
        let task: Task<C> = Box::new(move |conn| {
            let _ = tx.send(guarded(|| work(conn)));
        });
        let queue = self
            .queue
            .as_ref()
            .expect("the queue lives as long as the workers");
        // When the threads are gone the task is dropped, and with it `tx`: the future says so.
        let _ = queue.send(task);
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

/// A connection that runs a group of writes in one transaction, each write in a savepoint
/// (but for those submitted with [`Committer::submit_whole`]). A connection may hold back
/// what such writes ask, to do it all at once, as long as it does it before the next
/// savepoint and before the commit.
pub(crate) trait Transactional: Send + 'static {
    /// The most writes one transaction takes.
    const MAX_GROUP: usize;
    /// How long a durable group smaller than the one before it waits for more writes, until
    /// it is as big: a commit has a cost of its own besides its writes' (round trips, the
    /// server's work), which a bigger group shares among more writers. Concurrent runs write
    /// about as often as they did a moment ago, so the last group says how many to expect.
    /// `None` (the default): a group is what is queued.
    fn linger() -> Option<std::time::Duration> {
        None
    }
    /// Begins a group's transaction. `durable` is false when every write of the group is a
    /// [`Commit::Soon`] one: the backend may then commit without waiting for the disk, as long
    /// as the next durable commit carries the group there.
    fn begin(&mut self, durable: bool) -> Result<()>;
    /// Runs one of the statements around each write: `SAVEPOINT write`, `ROLLBACK TO write`
    /// or `RELEASE write`.
    fn savepoint(&mut self, sql: &'static str) -> Result<()>;
    /// Commits the group's transaction, or rolls it back and says why.
    fn commit(&mut self) -> Result<()>;
    /// Rolls the group's transaction back: a write run without a savepoint failed (see
    /// [`Committer::submit_whole`]), and what it did may be half there.
    fn rollback(&mut self);
}

/// One write, run by the committer thread inside its group's transaction (given `None` when the
/// transaction could not begin, or a write before it broke the group: then it does nothing).
/// It returns what to do once that transaction has committed (or failed to): wake the writer
/// with its result; and, when it broke the group, why.
type Work<C> = Box<dyn FnOnce(Option<&mut C>) -> (Wake, Option<String>) + Send>;
type Wake = Box<dyn FnOnce(Result<(), String>) + Send>;

struct Job<C> {
    work: Work<C>,
    commit: Commit,
}

/// Group commit. Writers queue their write; one thread takes everything queued (up to
/// [`Transactional::MAX_GROUP`]), runs it in ONE transaction (each write in its own savepoint,
/// so a write that fails is undone alone, unless it cannot fail half-way: see
/// [`Committer::submit_whole`]), commits once, then wakes every writer of the group.
/// Writes commit in the order they were queued; concurrent writers share a commit, and its
/// wait for the disk, instead of queueing for one each. A group holding only [`Commit::Soon`]
/// writes waits up to [`SOON`] for more, and commits at once when a [`Commit::Now`] write
/// joins it.
pub(crate) struct Committer<C> {
    queue: Option<Sender<Job<C>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<C: Transactional> Committer<C> {
    pub(crate) fn start(conn: C) -> Result<Committer<C>> {
        let (tx, rx) = std::sync::mpsc::channel::<Job<C>>();
        let thread = std::thread::Builder::new()
            .name("shiphat-store-commit".into())
            .spawn(move || commit_loop(conn, rx))
            .map_err(|source| Error::Open {
                path: "committer thread".into(),
                source,
            })?;
        Ok(Committer {
            queue: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `work` for a group; its future resolves once the group has committed. It runs
    /// in a savepoint of its own: when it fails (or panics), it is undone alone and the
    /// group's other writes commit.
    pub(crate) fn submit<R: Send + 'static>(
        &self,
        commit: Commit,
        work: impl FnOnce(&mut C) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        self.queue_work(commit, move |conn| (run_in_savepoint(conn, work), None))
    }

    /// Queues `work`, a write that cannot fail half-way (one statement, which says what it
    /// refused as a value rather than as an error), for a group. It runs without a savepoint,
    /// which saves a subtransaction and two statements. Should it fail all the same (a lost
    /// connection, a bug), the group is rolled back and every writer of the group gets
    /// [`Error::Commit`], as when the commit itself fails.
    pub(crate) fn submit_whole<R: Send + 'static>(
        &self,
        commit: Commit,
        work: impl FnOnce(&mut C) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        self.queue_work(commit, move |conn| {
            let result = guarded(|| work(conn));
            let broke = result.as_ref().err().map(Error::to_string);
            (result, broke)
        })
    }

    /// Queues `run` for a group: it does the write on the connection and says whether it
    /// broke the group.
    fn queue_work<R: Send + 'static>(
        &self,
        commit: Commit,
        run: impl FnOnce(&mut C) -> (Result<R>, Option<String>) + Send + 'static,
    ) -> Pending<R> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<R>>();
        let work: Work<C> = Box::new(move |conn| {
            let (result, broke) = match conn.map(run) {
                Some((result, broke)) => (Some(result), broke),
                None => (None, None),
            };
            let wake: Wake = Box::new(move |commit: Result<(), String>| {
                let result = match (commit, result) {
                    (Ok(()), Some(result)) => result,
                    // The group did not commit: nothing of this write is on disk, whatever
                    // it returned.
                    (Err(message), _) => Err(Error::Commit { message }),
                    (Ok(()), None) => Err(Error::Commit {
                        message: "the write was not run".into(),
                    }),
                };
                let _ = tx.send(result);
            });
            (wake, broke)
        });
        let queue = self
            .queue
            .as_ref()
            .expect("the queue lives as long as the store");
        // When the thread is gone the job is dropped, and with it `tx`: the future says so.
        let _ = queue.send(Job { work, commit });
        pending(rx)
    }
}

impl<C> Drop for Committer<C> {
    fn drop(&mut self) {
        // Closing the queue lets the thread commit what is queued and stop; joining it closes
        // the connection before the store is gone, so the database can be reopened at once.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_in_savepoint<C: Transactional, R>(
    conn: &mut C,
    work: impl FnOnce(&mut C) -> Result<R>,
) -> Result<R> {
    conn.savepoint("SAVEPOINT write")?;
    let result = guarded(|| work(conn));
    if result.is_err() {
        conn.savepoint("ROLLBACK TO write")?;
    }
    conn.savepoint("RELEASE write")?;
    result
}

/// Takes the next group: everything queued, and, while it holds only [`Commit::Soon`] writes,
/// what arrives until [`SOON`] after its first write. With `linger` (how long, and the size of
/// the group before), a durable group smaller than that waits up to so long after its first
/// write for more. `None` once the queue is closed and empty.
fn next_group<C>(
    rx: &Receiver<Job<C>>,
    max: usize,
    linger: Option<(std::time::Duration, usize)>,
) -> Option<Vec<Job<C>>> {
    let first = rx.recv().ok()?;
    let start = Instant::now();
    let deadline = start + SOON;
    let mut now = first.commit == Commit::Now;
    let mut group = vec![first];
    while group.len() < max {
        let next = match rx.try_recv() {
            Ok(job) => Some(job),
            Err(_) if now => match linger {
                Some((wait, last)) if group.len() < last => {
                    match (start + wait).checked_duration_since(Instant::now()) {
                        None => None,
                        Some(left) => rx.recv_timeout(left).ok(),
                    }
                }
                _ => None,
            },
            Err(_) => match deadline.checked_duration_since(Instant::now()) {
                None => None,
                // Timed out, or the queue closed: the group is what it is.
                Some(left) => rx.recv_timeout(left).ok(),
            },
        };
        let Some(job) = next else { break };
        now |= job.commit == Commit::Now;
        group.push(job);
    }
    Some(group)
}

fn commit_loop<C: Transactional>(mut conn: C, rx: Receiver<Job<C>>) {
    let mut last = 0;
    while let Some(group) = next_group(&rx, C::MAX_GROUP, C::linger().map(|wait| (wait, last))) {
        last = group.len();
        let durable = group.iter().any(|job| job.commit == Commit::Now);
        let mut wakes = Vec::with_capacity(group.len());
        let commit = match conn.begin(durable) {
            Err(e) => {
                // Nothing runs; every writer of the group gets the error.
                for job in group {
                    wakes.push((job.work)(None).0);
                }
                Err(e.to_string())
            }
            Ok(()) => {
                let mut broken = None;
                for job in group {
                    // Once a write broke the group, the others are not run: their statements
                    // would fail in the aborted transaction.
                    let on = if broken.is_none() {
                        Some(&mut conn)
                    } else {
                        None
                    };
                    let (wake, broke) = (job.work)(on);
                    broken = broken.or(broke);
                    wakes.push(wake);
                }
                match broken {
                    Some(why) => {
                        conn.rollback();
                        Err(format!(
                            "a write failed, so its group's transaction was rolled back: {why}"
                        ))
                    }
                    None => conn.commit().map_err(|e| e.to_string()),
                }
            }
        };
        for wake in wakes {
            wake(commit.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Committer, Job, next_group};
    use crate::{Commit, Error, Result, wait};

    fn rows(conn: &rusqlite::Connection) -> Result<Vec<i64>> {
        let mut select = conn.prepare("SELECT n FROM t ORDER BY n")?;
        let rows = select.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn insert(conn: &rusqlite::Connection, n: i64) -> Result<()> {
        conn.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
        Ok(())
    }

    /// A job that does nothing, of the given kind.
    fn job(commit: Commit) -> Job<()> {
        Job {
            work: Box::new(|_| (Box::new(|_| ()), None)),
            commit,
        }
    }

    #[test]
    fn a_group_smaller_than_the_last_waits_until_it_is_as_big_and_no_longer() {
        let (tx, rx) = std::sync::mpsc::channel();
        tx.send(job(Commit::Now)).unwrap();
        // A wait far longer than the test: the group ends when its third write comes.
        let taking = std::thread::spawn(move || {
            let group = next_group(&rx, 64, Some((Duration::from_secs(600), 3)));
            (group.map(|g| g.len()), rx)
        });
        tx.send(job(Commit::Soon)).unwrap();
        tx.send(job(Commit::Now)).unwrap();
        let (taken, rx) = taking.join().unwrap();
        assert_eq!(taken, Some(3));
        // Alone, it waits out the linger and goes as it is.
        tx.send(job(Commit::Now)).unwrap();
        let started = Instant::now();
        let linger = Duration::from_millis(20);
        assert_eq!(next_group(&rx, 64, Some((linger, 3))).unwrap().len(), 1);
        assert!(started.elapsed() >= linger);
        // As big as the last, or without a linger, it goes at once with what is queued.
        for linger in [Some((Duration::from_secs(600), 1)), None] {
            tx.send(job(Commit::Now)).unwrap();
            assert_eq!(next_group(&rx, 64, linger).unwrap().len(), 1);
        }
    }

    #[test]
    fn a_whole_write_that_fails_rolls_back_its_group_and_every_writer_hears_it() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER)").unwrap();
        let committer = Committer::start(conn).unwrap();
        // The first group, once under way, waits for the word, so that the writes below
        // queue behind it and make the next group together.
        let (go, wait_for_go) = std::sync::mpsc::channel::<()>();
        let (running, wait_for_running) = std::sync::mpsc::channel::<()>();
        let first = committer.submit(Commit::Now, move |conn| {
            running.send(()).unwrap();
            wait_for_go.recv().unwrap();
            insert(conn, 1)
        });
        wait_for_running.recv().unwrap();
        let in_savepoint = committer.submit(Commit::Now, |conn| insert(conn, 2));
        let broken = committer.submit_whole(Commit::Now, |conn| {
            insert(conn, 3)?;
            Err::<(), _>(Error::Commit {
                message: "broke half-way".into(),
            })
        });
        let after = committer.submit_whole(Commit::Now, |conn| insert(conn, 4));
        go.send(()).unwrap();
        wait(first).unwrap();
        for result in [wait(in_savepoint), wait(broken), wait(after)] {
            let Err(Error::Commit { message }) = result else {
                panic!("{result:?}");
            };
            assert!(message.contains("rolled back: "), "{message}");
            assert!(message.contains("broke half-way"), "{message}");
        }
        // The next group commits; nothing of the broken one is there.
        let seen = committer.submit_whole(Commit::Now, |conn| {
            insert(conn, 5)?;
            rows(conn)
        });
        assert_eq!(wait(seen).unwrap(), [1, 5]);
    }
}
