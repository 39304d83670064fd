//! [`Store`] on an embedded SQLite database.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use crate::{
    AuditEntry, Error, Interrupted, Lock, NewRun, Result, Run, RunFilter, RunStatus, StepChange,
    StepRecord, Store, TokenRecord, now_ms,
};

/// How long a connection waits for another (e.g. `shiphat token create` beside a running
/// daemon) to finish writing before giving up. Writes are single short transactions, so
/// seconds are plenty; an error after that points at a stuck process.
const BUSY_TIMEOUT_MS: u32 = 10_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    inputs TEXT NOT NULL,
    principal TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    concurrency_key TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    detail TEXT,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_idempotency ON runs (principal, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_workflow ON runs (workflow);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    section TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    duration_ms REAL,
    summary TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT 'null',
    continued INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, seq);
CREATE TABLE IF NOT EXISTS locks (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    roles TEXT NOT NULL,
    patterns TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    principal TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    remote TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
";

/// The store in one SQLite file. Reads go through their own connection, so a reader (an event
/// stream catching up) never waits for a write's fsync. Writes go through a [`Committer`].
pub struct SqliteStore {
    committer: Committer,
    reader: Mutex<Connection>,
}

/// One write, run by the committer thread inside its transaction (given `None` when the
/// transaction could not begin: then it does nothing). It returns what to do once that
/// transaction has committed (or failed to): wake the writer with its result.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Wake + Send>;
type Wake = Box<dyn FnOnce(Result<(), String>) + Send>;

/// The most writes one transaction takes. Bounds the latency of the writers at the back of a
/// very long queue; far above what concurrent runs produce between two fsyncs.
const MAX_GROUP: usize = 4096;

/// Group commit. Writers enqueue their write and wait; one thread takes everything queued,
/// runs it in ONE transaction (each write in its own savepoint, so a write that fails is
/// undone alone), commits with one fsync (`synchronous=FULL`), then wakes every writer of the
/// group. A write is still durable when its call returns, and writes commit in the order they
/// were queued; what changes is that concurrent writers share an fsync instead of queueing
/// for one each.
struct Committer {
    queue: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(conn: Connection) -> Result<Committer> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
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

    /// Queues `work` for the next group and, when `wait`, returns its result once the group
    /// is on disk. Without `wait` the write commits with the next group, in queue order,
    /// before any write queued after it.
    fn submit<R: Send + 'static>(
        &self,
        wait: bool,
        work: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<Option<R>> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<R>>(1);
        let job: Job = Box::new(move |conn| {
            let result = conn.map(|conn| run_in_savepoint(conn, work));
            Box::new(move |commit: Result<(), String>| {
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
            })
        });
        let queue = self
            .queue
            .as_ref()
            .expect("the queue lives as long as the store");
        if queue.send(job).is_err() {
            return Err(Error::Commit {
                message: "the committer thread has stopped".into(),
            });
        }
        if !wait {
            return Ok(None);
        }
        match rx.recv() {
            Ok(result) => result.map(Some),
            Err(_) => Err(Error::Commit {
                message: "the committer thread has stopped".into(),
            }),
        }
    }

    fn write<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        Ok(self
            .submit(true, work)?
            .expect("a waited-for write has a result"))
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the queue lets the thread commit what is queued and stop; joining it closes
        // the connection before the store is gone, so the file can be reopened at once.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_in_savepoint<R>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<R>,
) -> Result<R> {
    conn.execute_batch("SAVEPOINT write")?;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
        .unwrap_or_else(|_| {
            Err(Error::Commit {
                message: "a write panicked".into(),
            })
        });
    if result.is_err() {
        conn.execute_batch("ROLLBACK TO write")?;
    }
    conn.execute_batch("RELEASE write")?;
    result
}

fn commit_loop(conn: Connection, rx: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let begun = conn.execute_batch("BEGIN IMMEDIATE");
        let mut wakes = Vec::with_capacity(group.len());
        let commit = match begun {
            Err(e) => {
                // Nothing runs; every writer of the group gets the error.
                for job in group {
                    wakes.push(job(None));
                }
                Err(e.to_string())
            }
            Ok(()) => {
                for job in group {
                    wakes.push(job(Some(&conn)));
                }
                conn.execute_batch("COMMIT").map_err(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    e.to_string()
                })
            }
        };
        for wake in wakes {
            wake(commit.clone());
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    /// The data directory it creates is `0700` and the database file `0600` (SQLite gives its
    /// `-wal` and `-shm` files the database's mode): runs' inputs, outputs, logs and the token
    /// hashes are nobody else's to read.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let open_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Open { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(open_error(dir))?;
        }
        let mut file = std::fs::OpenOptions::new();
        file.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
        file.open(path).map_err(open_error(path))?;
        let writer = Connection::open(path)?;
        configure(&writer)?;
        writer.execute_batch(SCHEMA)?;
        let reader = Connection::open(path)?;
        configure(&reader)?;
        Ok(SqliteStore {
            committer: Committer::start(writer)?,
            reader: Mutex::new(reader),
        })
    }

    fn read(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent, so a poisoned lock is
        // still safe to use.
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.committer.write(work)
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
    // WAL lets readers go on while a write commits; FULL syncs the WAL at every commit, so a
    // committed step start or end survives power loss, not only a process crash.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// The SQL of a run's new `detail` given `?3`: what it said, then `; ` and `?3`. A change of
/// state never wipes what the detail says (who resumed a run, why it stopped); `NULL` adds
/// nothing, and the same words twice in a row (a run held again by the same lock) are kept
/// once.
const APPEND_DETAIL: &str = "CASE WHEN ?3 IS NULL THEN detail \
    WHEN detail IS NULL OR detail = '' THEN ?3 \
    WHEN detail = ?3 OR substr(detail, -length(?3) - 2) = '; ' || ?3 THEN detail \
    ELSE detail || '; ' || ?3 END";

const RUN_COLUMNS: &str = "id, workflow, inputs, principal, dry_run, concurrency_key, \
    idempotency_key, status, detail, created_ms, started_ms, finished_ms";

fn run_from_row(row: &Row) -> rusqlite::Result<(Run, String, String)> {
    let status: String = row.get(7)?;
    let inputs: String = row.get(2)?;
    Ok((
        Run {
            id: row.get(0)?,
            workflow: row.get(1)?,
            inputs: Value::Null,
            principal: row.get(3)?,
            dry_run: row.get(4)?,
            concurrency_key: row.get(5)?,
            idempotency_key: row.get(6)?,
            status: RunStatus::Queued,
            detail: row.get(8)?,
            created_ms: row.get(9)?,
            started_ms: row.get(10)?,
            finished_ms: row.get(11)?,
        },
        status,
        inputs,
    ))
}

fn finish_run((mut run, status, inputs): (Run, String, String)) -> Result<Run> {
    run.status = RunStatus::parse(&status).ok_or_else(|| Error::Corrupt {
        table: "runs",
        message: format!("unknown status `{status}` of run `{}`", run.id),
    })?;
    run.inputs = json(&inputs, "runs")?;
    Ok(run)
}

fn json(text: &str, table: &'static str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt {
        table,
        message: e.to_string(),
    })
}

fn query_runs(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Run>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, run_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(finish_run).collect()
}

fn split(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn create_run(tx: &Connection, run: &NewRun) -> Result<(Run, bool)> {
    if let Some(key) = &run.idempotency_key {
        let existing = query_runs(
            tx,
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE principal = ?1 AND idempotency_key = ?2"
            ),
            params![run.principal, key],
        )?;
        if let Some(existing) = existing.into_iter().next() {
            return Ok((existing, false));
        }
    }
    let created_ms = now_ms();
    tx.execute(
        "INSERT INTO runs (id, workflow, inputs, principal, dry_run, concurrency_key, \
         idempotency_key, status, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8)",
        params![
            run.id,
            run.workflow,
            run.inputs.to_string(),
            run.principal,
            run.dry_run,
            run.concurrency_key,
            run.idempotency_key,
            created_ms
        ],
    )?;
    Ok((
        Run {
            id: run.id.clone(),
            workflow: run.workflow.clone(),
            inputs: run.inputs.clone(),
            principal: run.principal.clone(),
            dry_run: run.dry_run,
            concurrency_key: run.concurrency_key.clone(),
            idempotency_key: run.idempotency_key.clone(),
            status: RunStatus::Queued,
            detail: None,
            created_ms,
            started_ms: None,
            finished_ms: None,
        },
        true,
    ))
}

fn append_event(
    tx: &Connection,
    run: &str,
    event: &str,
    change: Option<&StepChange>,
) -> Result<Option<i64>> {
    let status: Option<String> = tx
        .query_row(
            "SELECT status FROM runs WHERE id = ?1",
            params![run],
            |row| row.get(0),
        )
        .optional()?;
    if status.as_deref() != Some("running") {
        return Ok(None);
    }
    tx.execute(
        "INSERT INTO events (run_id, body) VALUES (?1, ?2)",
        params![run, event],
    )?;
    let seq = tx.last_insert_rowid();
    let now = now_ms();
    match change {
        None => {}
        Some(StepChange::Started {
            step,
            section,
            attempt,
        }) => {
            tx.execute(
                "INSERT INTO steps (run_id, step, section, status, attempts, started_ms, seq) \
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6) \
                 ON CONFLICT (run_id, step) DO UPDATE SET status = 'running', \
                   attempts = excluded.attempts, \
                   started_ms = CASE WHEN steps.status = 'interrupted' \
                     THEN excluded.started_ms ELSE steps.started_ms END",
                params![run, step, section, attempt, now, seq],
            )?;
        }
        Some(StepChange::Finished {
            step,
            section,
            status,
            attempts,
            duration_ms,
            summary,
            outputs,
            error,
            continued,
        }) => {
            let changed = tx.execute(
                "INSERT INTO steps (run_id, step, section, status, attempts, finished_ms, \
                   duration_ms, summary, outputs, error, continued, seq) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (run_id, step) DO UPDATE SET status = excluded.status, \
                   attempts = excluded.attempts, finished_ms = excluded.finished_ms, \
                   duration_ms = excluded.duration_ms, summary = excluded.summary, \
                   outputs = excluded.outputs, error = excluded.error, \
                   continued = excluded.continued \
                 WHERE steps.finished_ms IS NULL",
                params![
                    run,
                    step,
                    section,
                    status,
                    attempts,
                    now,
                    duration_ms,
                    summary,
                    outputs.to_string(),
                    error.to_string(),
                    continued,
                    seq
                ],
            )?;
            if changed != 1 {
                return Err(Error::StepAlreadyFinished {
                    run: run.to_owned(),
                    step: step.clone(),
                });
            }
        }
    }
    Ok(Some(seq))
}

impl Store for SqliteStore {
    fn create_run(&self, run: &NewRun) -> Result<(Run, bool)> {
        let run = run.clone();
        self.write(move |tx| create_run(tx, &run))
    }

    fn run(&self, id: &str) -> Result<Option<Run>> {
        let conn = self.read();
        Ok(query_runs(
            &conn,
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
            params![id],
        )?
        .into_iter()
        .next())
    }

    fn steps(&self, run: &str) -> Result<Vec<StepRecord>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT step, section, status, attempts, started_ms, finished_ms, duration_ms, \
             summary, outputs, error, continued FROM steps WHERE run_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![run], |row| {
                Ok((
                    StepRecord {
                        step: row.get(0)?,
                        section: row.get(1)?,
                        status: row.get(2)?,
                        attempts: row.get(3)?,
                        started_ms: row.get(4)?,
                        finished_ms: row.get(5)?,
                        duration_ms: row.get(6)?,
                        summary: row.get(7)?,
                        outputs: Value::Null,
                        error: Value::Null,
                        continued: row.get(10)?,
                    },
                    row.get::<_, String>(8)?,
                    row.get::<_, String>(9)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(mut step, outputs, error)| {
                step.outputs = json(&outputs, "steps")?;
                step.error = json(&error, "steps")?;
                Ok(step)
            })
            .collect()
    }

    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let conn = self.read();
        query_runs(
            &conn,
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR workflow = ?1) \
                 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3) \
                 ORDER BY id DESC LIMIT ?4"
            ),
            params![
                filter.workflow,
                filter.status.map(RunStatus::as_str),
                filter.before,
                filter.limit
            ],
        )
    }

    fn transition(
        &self,
        run: &str,
        from: &[RunStatus],
        to: RunStatus,
        detail: Option<&str>,
    ) -> Result<bool> {
        let from = from
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let run = run.to_owned();
        let detail = detail.map(str::to_owned);
        self.write(move |conn| {
        let now = now_ms();
        let changed = conn.execute(
            &format!("UPDATE runs SET status = ?2, detail = {APPEND_DETAIL}, \
               started_ms = CASE WHEN ?2 = 'running' THEN ?4 ELSE started_ms END, \
               finished_ms = CASE WHEN ?2 IN ('succeeded', 'failed', 'cancelled') THEN ?4 ELSE finished_ms END \
             WHERE id = ?1 AND instr(',' || ?5 || ',', ',' || status || ',') > 0"),
            params![run, to.as_str(), detail, now, from],
        )?;
        Ok(changed == 1)
        })
    }

    fn append_event(
        &self,
        run: &str,
        event: &str,
        change: Option<&StepChange>,
    ) -> Result<Option<i64>> {
        let run = run.to_owned();
        let event = event.to_owned();
        let change = change.cloned();
        self.write(move |tx| append_event(tx, &run, &event, change.as_ref()))
    }

    fn append_log(&self, run: &str, event: &str) -> Result<()> {
        let run = run.to_owned();
        let event = event.to_owned();
        self.committer
            .submit(false, move |tx| append_event(tx, &run, &event, None))?;
        Ok(())
    }

    fn events(&self, run: &str, after: i64, limit: u32) -> Result<Vec<(i64, String)>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, body FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![run, after, limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn interrupt_running(&self) -> Result<Vec<Interrupted>> {
        self.write(|tx| {
            let running = query_runs(
                tx,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY id"),
                [],
            )?;
            let mut out = Vec::new();
            for run in running {
                let in_flight = {
                    let mut stmt = tx.prepare_cached(
                    "SELECT step FROM steps WHERE run_id = ?1 AND status = 'running' ORDER BY seq",
                )?;
                    stmt.query_map(params![run.id], |row| row.get::<_, String>(0))?
                        .collect::<rusqlite::Result<Vec<_>>>()?
                };
                tx.execute(
                "UPDATE steps SET status = 'interrupted' WHERE run_id = ?1 AND status = 'running'",
                params![run.id],
            )?;
                let detail = if in_flight.is_empty() {
                    "interrupted between steps".to_owned()
                } else {
                    format!("interrupted during step `{}`", in_flight.join("`, `"))
                };
                tx.execute(
                    &format!("UPDATE runs SET status = ?2, detail = {APPEND_DETAIL} WHERE id = ?1"),
                    params![run.id, RunStatus::Interrupted.as_str(), detail],
                )?;
                out.push(Interrupted {
                    run: run.id,
                    workflow: run.workflow,
                    in_flight,
                });
            }
            Ok(out)
        })
    }

    fn runs_with_status(&self, status: RunStatus) -> Result<Vec<Run>> {
        let conn = self.read();
        query_runs(
            &conn,
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = ?1 ORDER BY id"),
            params![status.as_str()],
        )
    }

    fn queued_of(&self, principal: &str) -> Result<u64> {
        let conn = self.read();
        Ok(conn.query_row(
            "SELECT count(*) FROM runs WHERE status = 'queued' AND principal = ?1",
            params![principal],
            |row| row.get(0),
        )?)
    }

    fn lock(&self, key: &str) -> Result<Option<Lock>> {
        Ok(self.locks()?.into_iter().find(|l| l.key == key))
    }

    fn locks(&self) -> Result<Vec<Lock>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT key, owner, reason, created_ms, expires_ms FROM locks ORDER BY key",
        )?;
        let rows = stmt
            .query_map([], |row| {
                Ok(Lock {
                    key: row.get(0)?,
                    owner: row.get(1)?,
                    reason: row.get(2)?,
                    created_ms: row.get(3)?,
                    expires_ms: row.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let now = now_ms();
        Ok(rows
            .into_iter()
            .filter(|l| l.expires_ms.is_none_or(|e| e > now))
            .collect())
    }

    fn put_lock(&self, lock: &Lock) -> Result<()> {
        let lock = lock.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO locks (key, owner, reason, created_ms, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    lock.key,
                    lock.owner,
                    lock.reason,
                    lock.created_ms,
                    lock.expires_ms
                ],
            )?;
            Ok(())
        })
    }

    fn delete_lock(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM locks WHERE key = ?1", params![key])? == 1)
        })
    }

    fn add_token(&self, sha256_hex: &str, token: &TokenRecord) -> Result<()> {
        let sha256_hex = sha256_hex.to_owned();
        let token = token.clone();
        self.write(move |conn| {
        // Checked in the same transaction as the insert, so two concurrent creations (the
        // API and `shiphat token create` beside it) cannot both find the name free.
        let taken: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE name = ?1)",
            params![token.name],
            |row| row.get(0),
        )?;
        if taken {
            return Err(Error::NameTaken { name: token.name });
        }
        conn.execute(
            "INSERT INTO tokens (sha256, name, roles, patterns, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                sha256_hex,
                token.name,
                token.roles.join(","),
                token.patterns.join(","),
                token.created_ms
            ],
        )?;
        Ok(())
        })
    }

    fn token(&self, sha256_hex: &str) -> Result<Option<TokenRecord>> {
        let conn = self.read();
        Ok(conn
            .query_row(
                "SELECT name, roles, patterns, created_ms FROM tokens WHERE sha256 = ?1",
                params![sha256_hex],
                |row| {
                    Ok(TokenRecord {
                        name: row.get(0)?,
                        roles: split(&row.get::<_, String>(1)?),
                        patterns: split(&row.get::<_, String>(2)?),
                        created_ms: row.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT name, roles, patterns, created_ms FROM tokens ORDER BY name, created_ms",
        )?;
        let rows = stmt
            .query_map([], |row| {
                Ok(TokenRecord {
                    name: row.get(0)?,
                    roles: split(&row.get::<_, String>(1)?),
                    patterns: split(&row.get::<_, String>(2)?),
                    created_ms: row.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn delete_token(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM tokens WHERE name = ?1", params![name])? > 0)
        })
    }

    fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let capped = |text: &str| crate::cap(text, crate::MAX_AUDIT_FIELD).into_owned();
        let entry = AuditEntry {
            principal: entry.principal.as_deref().map(capped),
            action: capped(&entry.action),
            target: capped(&entry.target),
            remote: capped(&entry.remote),
            outcome: capped(&entry.outcome),
            ..entry.clone()
        };
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO audit (at_ms, principal, action, target, remote, status, outcome) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    entry.at_ms,
                    entry.principal,
                    entry.action,
                    entry.target,
                    entry.remote,
                    entry.status,
                    entry.outcome
                ],
            )?;
            Ok(())
        })
    }

    fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT at_ms, principal, action, target, remote, status, outcome FROM audit \
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map(params![limit], |row| {
                Ok(AuditEntry {
                    at_ms: row.get(0)?,
                    principal: row.get(1)?,
                    action: row.get(2)?,
                    target: row.get(3)?,
                    remote: row.get(4)?,
                    status: row.get(5)?,
                    outcome: row.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn prune_audit(&self, before_ms: i64) -> Result<usize> {
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM audit WHERE at_ms < ?1", params![before_ms])?)
        })
    }

    fn prune(&self, before_ms: i64) -> Result<usize> {
        self.write(move |conn| {
            Ok(conn.execute(
                "DELETE FROM runs WHERE status IN ('succeeded', 'failed', 'cancelled') \
                 AND finished_ms < ?1",
                params![before_ms],
            )?)
        })
    }

    fn integrity_check(&self) -> Result<String> {
        let conn = self.read();
        Ok(conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db/shiphat.sqlite")).unwrap();
        (dir, store)
    }

    fn new_run(id: &str, key: Option<&str>) -> NewRun {
        NewRun {
            id: id.into(),
            workflow: "wf".into(),
            inputs: serde_json::json!({"a": 1}),
            principal: "ci".into(),
            dry_run: false,
            concurrency_key: None,
            idempotency_key: key.map(Into::into),
        }
    }

    fn finished(step: &str) -> StepChange {
        StepChange::Finished {
            step: step.into(),
            section: "steps".into(),
            status: "succeeded".into(),
            attempts: 1,
            duration_ms: 1.5,
            summary: "done".into(),
            outputs: serde_json::json!({"x": 1}),
            error: Value::Null,
            continued: false,
        }
    }

    #[test]
    fn idempotency_key_returns_the_first_run() {
        let (_dir, store) = store();
        let (first, created) = store.create_run(&new_run("01a", Some("k"))).unwrap();
        assert!(created);
        let (again, created) = store.create_run(&new_run("01b", Some("k"))).unwrap();
        assert!(!created);
        assert_eq!(again.id, first.id);
        assert_eq!(
            store
                .list_runs(&RunFilter {
                    limit: 10,
                    ..Default::default()
                })
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn events_are_refused_unless_running_and_steps_finish_once() {
        let (_dir, store) = store();
        store.create_run(&new_run("01a", None)).unwrap();
        assert_eq!(store.append_event("01a", "{}", None).unwrap(), None);
        assert!(
            store
                .transition("01a", &[RunStatus::Queued], RunStatus::Running, None)
                .unwrap()
        );
        let start = StepChange::Started {
            step: "s".into(),
            section: "steps".into(),
            attempt: 1,
        };
        store
            .append_event("01a", "{\"e\":1}", Some(&start))
            .unwrap()
            .unwrap();
        store
            .append_event("01a", "{\"e\":2}", Some(&finished("s")))
            .unwrap()
            .unwrap();
        let again = store.append_event("01a", "{\"e\":3}", Some(&finished("s")));
        assert!(
            matches!(again, Err(Error::StepAlreadyFinished { .. })),
            "{again:?}"
        );
        let steps = store.steps("01a").unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].status, "succeeded");
        assert_eq!(steps[0].outputs, serde_json::json!({"x": 1}));
        assert_eq!(store.events("01a", 0, 100).unwrap().len(), 2);
    }

    #[test]
    fn interrupt_running_names_the_step_in_flight() {
        let (_dir, store) = store();
        store.create_run(&new_run("01a", None)).unwrap();
        store
            .transition("01a", &[RunStatus::Queued], RunStatus::Running, None)
            .unwrap();
        let start = StepChange::Started {
            step: "deploy".into(),
            section: "steps".into(),
            attempt: 1,
        };
        store.append_event("01a", "{}", Some(&start)).unwrap();
        let interrupted = store.interrupt_running().unwrap();
        assert_eq!(interrupted[0].in_flight, vec!["deploy".to_owned()]);
        let run = store.run("01a").unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Interrupted);
        assert_eq!(store.steps("01a").unwrap()[0].status, "interrupted");
        assert!(store.interrupt_running().unwrap().is_empty());
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn concurrent_writers_share_commits_and_a_failed_write_is_undone_alone() {
        let (_dir, store) = store();
        let store = std::sync::Arc::new(store);
        let runs = 16;
        for r in 0..runs {
            let id = format!("01{r:02}");
            store.create_run(&new_run(&id, None)).unwrap();
            store
                .transition(&id, &[RunStatus::Queued], RunStatus::Running, None)
                .unwrap();
        }
        let threads = (0..runs)
            .map(|r| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let id = format!("01{r:02}");
                    for s in 0..50 {
                        let step = format!("s{s}");
                        let start = StepChange::Started {
                            step: step.clone(),
                            section: "steps".into(),
                            attempt: 1,
                        };
                        store.append_event(&id, "{}", Some(&start)).unwrap();
                        store.append_log(&id, "{\"event\":\"log\"}").unwrap();
                        store
                            .append_event(&id, "{}", Some(&finished(&step)))
                            .unwrap()
                            .unwrap();
                        // Refused, and undone alone: the writes grouped with it stay.
                        assert!(matches!(
                            store.append_event(&id, "{\"again\":1}", Some(&finished(&step))),
                            Err(Error::StepAlreadyFinished { .. })
                        ));
                    }
                })
            })
            .collect::<Vec<_>>();
        for t in threads {
            t.join().unwrap();
        }
        for r in 0..runs {
            let id = format!("01{r:02}");
            let steps = store.steps(&id).unwrap();
            assert_eq!(steps.len(), 50);
            assert!(steps.iter().all(|s| s.status == "succeeded"));
            let events = store.events(&id, 0, 1000).unwrap();
            // Start, log and end per step, in the order written; no refused write left a trace.
            assert_eq!(events.len(), 150);
            assert!(events.iter().all(|(_, body)| !body.contains("again")));
            assert!(events.windows(2).all(|w| w[0].0 < w[1].0));
            assert_eq!(events[1].1, "{\"event\":\"log\"}");
        }
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn a_write_is_on_disk_when_it_returns_and_logs_before_the_next_write() {
        let (dir, store) = store();
        store.create_run(&new_run("01a", None)).unwrap();
        store
            .transition("01a", &[RunStatus::Queued], RunStatus::Running, None)
            .unwrap();
        store.append_log("01a", "{\"log\":1}").unwrap();
        let start = StepChange::Started {
            step: "s".into(),
            section: "steps".into(),
            attempt: 1,
        };
        store.append_event("01a", "{}", Some(&start)).unwrap();
        // Another connection (as after a crash) sees both.
        let other = Connection::open(dir.path().join("db/shiphat.sqlite")).unwrap();
        let count: i64 = other
            .query_row(
                "SELECT count(*) FROM events WHERE run_id = '01a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 2);
        drop(store);
        // Dropping the store stops its committer and closes the file: it reopens at once.
        let again = SqliteStore::open(&dir.path().join("db/shiphat.sqlite")).unwrap();
        assert_eq!(again.events("01a", 0, 10).unwrap().len(), 2);
    }

    #[test]
    fn tokens_are_listed_and_deleted_by_name() {
        let (_dir, store) = store();
        let token = TokenRecord {
            name: "ci".into(),
            roles: vec!["deployer".into()],
            patterns: vec!["web/*".into()],
            created_ms: now_ms(),
        };
        store.add_token("aa", &token).unwrap();
        assert_eq!(store.tokens().unwrap(), vec![token.clone()]);
        // A second principal of the same name is refused, whatever its secret.
        assert!(matches!(
            store.add_token("bb", &token),
            Err(Error::NameTaken { .. })
        ));
        assert_eq!(store.tokens().unwrap().len(), 1);
        assert!(store.delete_token("ci").unwrap());
        assert!(!store.delete_token("ci").unwrap());
        assert_eq!(store.token("aa").unwrap(), None);
        assert!(store.tokens().unwrap().is_empty());
    }

    #[test]
    fn a_change_of_state_keeps_the_detail() {
        // Moving a resumed run to `running` wiped its `resumed by` detail.
        let (_dir, store) = store();
        store.create_run(&new_run("01a", None)).unwrap();
        let move_to = |from, to, detail| store.transition("01a", &[from], to, detail).unwrap();
        assert!(move_to(RunStatus::Queued, RunStatus::Running, None));
        store.interrupt_running().unwrap();
        assert!(move_to(
            RunStatus::Interrupted,
            RunStatus::Queued,
            Some("resumed by `root`")
        ));
        assert!(move_to(RunStatus::Queued, RunStatus::Queued, Some("held")));
        assert!(move_to(RunStatus::Queued, RunStatus::Queued, Some("held")));
        assert!(move_to(RunStatus::Queued, RunStatus::Running, None));
        assert_eq!(
            store.run("01a").unwrap().unwrap().detail.as_deref(),
            Some("interrupted between steps; resumed by `root`; held")
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_data_directory_and_database_are_private() {
        // They were created with the umask's modes: 0755 and 0644 on most systems.
        use std::os::unix::fs::PermissionsExt;
        let (dir, store) = store();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("db")), 0o700);
        for file in ["shiphat.sqlite", "shiphat.sqlite-wal"] {
            assert_eq!(mode(&dir.path().join("db").join(file)), 0o600, "{file}");
        }
        drop(store);
    }

    #[test]
    fn prune_keeps_unfinished_runs() {
        let (_dir, store) = store();
        store.create_run(&new_run("01a", None)).unwrap();
        store.create_run(&new_run("01b", None)).unwrap();
        store
            .transition("01a", &[RunStatus::Queued], RunStatus::Succeeded, None)
            .unwrap();
        assert_eq!(store.queued_of("ci").unwrap(), 1);
        assert_eq!(store.queued_of("root").unwrap(), 0);
        assert_eq!(store.prune(now_ms() + 1000).unwrap(), 1);
        assert!(store.run("01a").unwrap().is_none());
        assert!(store.run("01b").unwrap().is_some());
    }

    #[test]
    fn audit_fields_are_capped_and_old_entries_pruned() {
        // A 60 KB path was stored whole in every entry, by anyone, signed in or not.
        let (_dir, store) = store();
        let long = "é".repeat(30_000);
        let entry = |at_ms| AuditEntry {
            at_ms,
            principal: Some(long.clone()),
            action: format!("POST /{long}"),
            target: long.clone(),
            remote: long.clone(),
            status: 401,
            outcome: long.clone(),
        };
        store.audit(&entry(1)).unwrap();
        store.audit(&entry(now_ms())).unwrap();
        let kept = store.audit_log(10).unwrap();
        let fields = |e: &AuditEntry| {
            [
                e.principal.clone().unwrap(),
                e.action.clone(),
                e.target.clone(),
                e.remote.clone(),
                e.outcome.clone(),
            ]
        };
        for field in fields(&kept[0]) {
            assert!(
                field.len() <= crate::MAX_AUDIT_FIELD + 32,
                "{}",
                field.len()
            );
            assert!(field.ends_with("more bytes)"), "{field}");
        }
        assert_eq!(store.prune_audit(now_ms() - 1000).unwrap(), 1);
        assert_eq!(store.audit_log(10).unwrap().len(), 1);
    }

    #[test]
    fn expired_locks_are_not_held() {
        let (_dir, store) = store();
        let lock = Lock {
            key: "web".into(),
            owner: "ops".into(),
            reason: "freeze".into(),
            created_ms: now_ms(),
            expires_ms: Some(now_ms() - 1),
        };
        store.put_lock(&lock).unwrap();
        assert_eq!(store.lock("web").unwrap(), None);
        store
            .put_lock(&Lock {
                expires_ms: None,
                ..lock.clone()
            })
            .unwrap();
        assert_eq!(store.lock("web").unwrap().unwrap().owner, "ops");
        assert!(store.delete_lock("web").unwrap());
        assert!(!store.delete_lock("web").unwrap());
    }
}
