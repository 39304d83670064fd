//! [`AsyncStore`] on an embedded SQLite database: one thread writes, with group commit; a
//! few threads read, each on its own connection. Callers only queue work and await it.

use std::path::Path;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use crate::claim::{Claimed, Fence, Held, Queued, Scope};
use crate::threads::{Committer, Transactional, Workers};
use crate::{
    Applied, Approval, AsyncStore, AuditEntry, Change, Commit, Decide, Error, HoldCheck,
    Interrupted, Lock, NewRun, Notice, Pending, Result, Run, RunFilter, RunSource, RunStatus,
    Section, SessionRecord, StepRecord, StepState, TokenRecord, apply, now_ms,
};

/// How long a connection waits for another (e.g. `shiphat token create` beside a running
/// daemon) to finish writing before giving up. Writes are single short transactions, so
/// seconds are plenty; an error after that points at a stuck process.
const BUSY_TIMEOUT_MS: u32 = 10_000;

/// How many threads read, each with its own connection. Reads never wait for a write (WAL),
/// only for each other: two let a long read (a run's whole history) leave another thread for
/// the short ones, and more would only compete for the two cores a small daemon has.
const READERS: usize = 2;

/// The schema this build writes: the number of [`MIGRATIONS`]. A database's `user_version`
/// says which it has; 0 is a new file or one written before versions were kept, whose schema
/// is the first migration's.
const VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration `i` takes a database from version `i` to `i + 1`, inside the transaction that
/// sets the new version. Never edit one that has shipped: add the next.
const MIGRATIONS: [fn(&Connection) -> Result<()>; 7] = [
    create_v1,
    json_token_lists,
    claims,
    sessions,
    not_before,
    approvals,
    source,
];

/// Version 1: the schema as it was before it had a version. Idempotent, since a version-0
/// database may already have it.
fn create_v1(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "
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
",
    )?;
    Ok(())
}

/// Version 2: a token's roles and patterns as JSON arrays of strings. They were joined with
/// commas, which split a pattern that has one (`web/{a,b}`) into two.
fn json_token_lists(conn: &Connection) -> Result<()> {
    let rows = {
        let mut stmt = conn.prepare("SELECT sha256, roles, patterns FROM tokens")?;
        stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
    };
    for (sha256, roles, patterns) in rows {
        let split = |text: &str| {
            Value::from(
                text.split(',')
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>(),
            )
            .to_string()
        };
        conn.execute(
            "UPDATE tokens SET roles = ?2, patterns = ?3 WHERE sha256 = ?1",
            params![sha256, split(&roles), split(&patterns)],
        )?;
    }
    Ok(())
}

/// Version 3: what claims and leases keep (see `claim.rs`). An embedded store has one daemon,
/// but the scheduler is the same over both backends: its runs are claimed, leased and fenced
/// here as in PostgreSQL.
fn claims(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_ms INTEGER;
ALTER TABLE runs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN forced INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cancels INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cancelled_by TEXT;
CREATE INDEX runs_key ON runs (concurrency_key) WHERE concurrency_key IS NOT NULL;
",
    )?;
    Ok(())
}

/// Version 5: a run that waits for its deploy window starts no earlier than `not_before_ms`
/// (see `claim.rs`).
fn not_before(conn: &Connection) -> Result<()> {
    conn.execute_batch("ALTER TABLE runs ADD COLUMN not_before_ms INTEGER;")?;
    Ok(())
}

/// Version 6: the approvals runs wait for, one JSON document each (see `approval.rs`); `open`
/// says it is not decided yet, for the daemon's "waiting" views.
fn approvals(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "
CREATE TABLE approvals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    open INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (run_id, step)
);
CREATE INDEX approvals_open ON approvals (open) WHERE open;
",
    )?;
    Ok(())
}

/// Version 7: where each run was started from (`api`, `web`, `slack`, `cli`); NULL for the
/// runs written before, which read as unknown rather than as a guess. The index serves a
/// workflow's grant history, the audit entries with that workflow as target.
fn source(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "
ALTER TABLE runs ADD COLUMN source TEXT;
CREATE INDEX audit_target ON audit (target, id);
",
    )?;
    Ok(())
}

/// Version 4: the web page's sessions, so that they outlive a restart. `seq` orders a
/// token's sessions by when they were opened, even two opened within one millisecond.
fn sessions(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "
CREATE TABLE sessions (
    seq INTEGER PRIMARY KEY,
    id_sha256 TEXT NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX sessions_token ON sessions (token_sha256, created_ms);
CREATE INDEX sessions_expires ON sessions (expires_ms);
",
    )?;
    Ok(())
}

/// Brings the database to [`VERSION`], or refuses one from a newer shiphat.
fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    // Immediate: two processes opening one old file at once migrate it once.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found > VERSION {
        return Err(Error::TooNew {
            path: path.to_path_buf(),
            found,
            supported: VERSION,
        });
    }
    for migration in &MIGRATIONS[found.max(0) as usize..] {
        migration(&tx)?;
    }
    if found != VERSION {
        tx.pragma_update(None, "user_version", VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// A status or a section as a column: the name the API uses, mapped here and nowhere else.
/// The types are the wire contract's (`shiphat_protocol`), so the store wraps them to give
/// them a column type.
#[derive(Clone, Copy)]
struct Text<T>(T);

/// A type stored as its name.
trait Named: Copy + 'static {
    fn name(self) -> &'static str;
    fn from_name(text: &str) -> Option<Self>;
}

macro_rules! named {
    ($($ty:ty),*) => {$(
        impl Named for $ty {
            fn name(self) -> &'static str {
                self.as_str()
            }
            fn from_name(text: &str) -> Option<Self> {
                <$ty>::parse(text)
            }
        }
    )*};
}

named!(RunStatus, StepState, Section);

impl<T: Named> ToSql for Text<T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(
            self.0.name().as_bytes(),
        )))
    }
}

impl<T: Named> FromSql for Text<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        T::from_name(text)
            .map(Text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown status `{text}`").into()))
    }
}

/// A set of statuses as one parameter, for `status IN (SELECT value FROM json_each(?))`.
fn status_set(statuses: &[RunStatus]) -> String {
    Value::from(statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>()).to_string()
}

/// The store in one SQLite file. Writes go through a [`Committer`] (one transaction and one
/// fsync for all the writes queued at once), reads through its readers; neither runs on the
/// caller's thread.
pub struct SqliteStore {
    /// Group commit: see [`Committer`].
    committer: Committer<Connection>,
    /// [`READERS`] threads, each with its own connection. In WAL mode a reader sees the last
    /// commit and never waits for the one under way.
    readers: Workers<Connection>,
}

/// SQLite's side of group commit.
impl Transactional for Connection {
    /// Bounds the latency of the writers at the back of a very long queue; far above what
    /// concurrent runs produce between two fsyncs.
    const MAX_GROUP: usize = 4096;

    /// Every commit is durable (`synchronous=FULL`); `IMMEDIATE` takes the write lock at
    /// once, so another process (`shiphat token create`) waits rather than fails midway.
    fn begin(&mut self, _durable: bool) -> Result<()> {
        Ok(exec(self, "BEGIN IMMEDIATE")?)
    }

    fn savepoint(&mut self, sql: &'static str) -> Result<()> {
        Ok(exec(self, sql)?)
    }

    fn commit(&mut self) -> Result<()> {
        exec(self, "COMMIT").map_err(|e| {
            let _ = self.execute_batch("ROLLBACK");
            e.into()
        })
    }

    fn rollback(&mut self) {
        let _ = self.execute_batch("ROLLBACK");
    }
}

/// Runs `sql` through the connection's statement cache: the savepoints are run for every
/// write, and parsing them each time shows in a profile.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrating an older schema; refuses
    /// ([`Error::TooNew`]) a database written by a newer shiphat.
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
        let mut writer = Connection::open(path)?;
        configure(&writer)?;
        migrate(&mut writer, path)?;
        let readers = (0..READERS)
            .map(|_| {
                let conn = Connection::open(path)?;
                configure(&conn)?;
                Ok(conn)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SqliteStore {
            readers: Workers::start("shiphat-store-read", readers)?,
            committer: Committer::start(writer)?,
        })
    }

    fn read<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        self.readers.submit(move |conn| work(conn))
    }

    fn write<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        self.committer.submit(Commit::Now, move |conn| work(conn))
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

/// A run's columns; `lease_owner` only while it runs (a lease outlives its run's end).
const RUN_COLUMNS: &str = "id, workflow, inputs, principal, dry_run, concurrency_key, \
    idempotency_key, status, detail, created_ms, started_ms, finished_ms, \
    CASE WHEN status = 'running' THEN lease_owner END, source";

fn run_from_row(row: &Row) -> rusqlite::Result<(Run, String)> {
    Ok((
        Run {
            id: row.get(0)?,
            workflow: row.get(1)?,
            inputs: Value::Null,
            principal: row.get(3)?,
            dry_run: row.get(4)?,
            concurrency_key: row.get(5)?,
            idempotency_key: row.get(6)?,
            status: row.get::<_, Text<_>>(7)?.0,
            detail: row.get(8)?,
            created_ms: row.get(9)?,
            started_ms: row.get(10)?,
            finished_ms: row.get(11)?,
            daemon: row.get(12)?,
            source: row
                .get::<_, Option<String>>(13)?
                .as_deref()
                .and_then(RunSource::parse),
        },
        row.get(2)?,
    ))
}

fn audit_from_row(row: &Row) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        at_ms: row.get(0)?,
        principal: row.get(1)?,
        action: row.get(2)?,
        target: row.get(3)?,
        remote: row.get(4)?,
        status: row.get(5)?,
        outcome: row.get(6)?,
    })
}

fn query_runs(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Run>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, run_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(mut run, inputs)| {
            run.inputs = crate::json(&inputs, "runs")?;
            Ok(run)
        })
        .collect()
}

/// A JSON array of strings, as roles and patterns are stored.
fn string_list(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt {
        table: "tokens",
        message: format!("`{text}` is not a list of strings: {e}"),
    })
}

fn create_run(tx: &Connection, run: &NewRun, max_queued: u64) -> Result<(Run, bool)> {
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
    if queued_of(tx, &run.principal)? >= max_queued {
        return Err(Error::TooManyQueued {
            principal: run.principal.clone(),
            max: max_queued,
        });
    }
    if let Some(key) = run.concurrency_key.as_ref().filter(|_| run.exclusive) {
        // The one writer is the lock on the key.
        let holder: Option<String> = tx
            .prepare_cached(
                "SELECT id FROM runs WHERE concurrency_key = ?1 AND status IN (?2, ?3) \
                 ORDER BY status = ?3 DESC, id LIMIT 1",
            )?
            .query_row(
                params![key, Text(RunStatus::Queued), Text(RunStatus::Running)],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(holder) = holder {
            return Err(Error::KeyBusy {
                key: key.clone(),
                holder,
            });
        }
    }
    let created_ms = now_ms();
    tx.prepare_cached(
        "INSERT INTO runs (id, workflow, inputs, principal, dry_run, concurrency_key, \
         idempotency_key, status, created_ms, forced, not_before_ms, source) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        run.id,
        run.workflow,
        run.inputs.to_string(),
        run.principal,
        run.dry_run,
        run.concurrency_key,
        run.idempotency_key,
        Text(RunStatus::Queued),
        created_ms,
        run.forced,
        run.not_before_ms,
        run.source.as_str()
    ])?;
    Ok((run.queued(created_ms), true))
}

fn queued_of(conn: &Connection, principal: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM runs WHERE status = ?1 AND principal = ?2")?
        .query_row(params![Text(RunStatus::Queued), principal], |row| {
            row.get(0)
        })?)
}

/// [`AsyncStore::transition`], also for the store's own moves into and out of `running`.
fn transition(
    conn: &Connection,
    run: &str,
    from: &[RunStatus],
    to: RunStatus,
    detail: Option<&str>,
) -> Result<bool> {
    let changed = conn
        .prepare_cached(&format!(
            "UPDATE runs SET status = ?2, detail = {APPEND_DETAIL}, \
               started_ms = CASE WHEN ?5 THEN ?4 ELSE started_ms END, \
               finished_ms = CASE WHEN ?6 THEN ?4 ELSE finished_ms END \
             WHERE id = ?1 AND status IN (SELECT value FROM json_each(?7))"
        ))?
        .execute(params![
            run,
            Text(to),
            detail,
            now_ms(),
            to == RunStatus::Running,
            to.is_terminal(),
            status_set(from)
        ])?;
    Ok(changed == 1)
}

fn append_event(
    tx: &Connection,
    run: &str,
    fence: &Fence,
    event: &str,
    change: Option<&Change>,
) -> Result<Option<i64>> {
    let owned = tx
        .prepare_cached(
            "SELECT 1 FROM runs WHERE id = ?1 AND status = ?2 AND lease_owner = ?3 \
             AND lease_epoch = ?4 AND lease_expires_ms > ?5",
        )?
        .exists(params![
            run,
            Text(RunStatus::Running),
            fence.owner,
            fence.epoch,
            now_ms()
        ])?;
    if !owned {
        return Ok(None);
    }
    tx.prepare_cached("INSERT INTO events (run_id, body) VALUES (?1, ?2)")?
        .execute(params![run, event])?;
    let seq = tx.last_insert_rowid();
    let now = now_ms();
    match change {
        None => {}
        Some(Change::StepStarted {
            step,
            section,
            attempt,
        }) => {
            tx.prepare_cached(
                "INSERT INTO steps (run_id, step, section, status, attempts, started_ms, seq) \
                 VALUES (?1, ?2, ?3, ?7, ?4, ?5, ?6) \
                 ON CONFLICT (run_id, step) DO UPDATE SET status = ?7, \
                   attempts = excluded.attempts, \
                   started_ms = CASE WHEN steps.status = ?8 \
                     THEN excluded.started_ms ELSE steps.started_ms END",
            )?
            .execute(params![
                run,
                step,
                Text(*section),
                attempt,
                now,
                seq,
                Text(StepState::Running),
                Text(StepState::Interrupted)
            ])?;
        }
        Some(Change::StepFinished {
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
            let changed = tx
                .prepare_cached(
                    "INSERT INTO steps (run_id, step, section, status, attempts, finished_ms, \
                   duration_ms, summary, outputs, error, continued, seq) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (run_id, step) DO UPDATE SET status = excluded.status, \
                   attempts = excluded.attempts, finished_ms = excluded.finished_ms, \
                   duration_ms = excluded.duration_ms, summary = excluded.summary, \
                   outputs = excluded.outputs, error = excluded.error, \
                   continued = excluded.continued \
                 WHERE steps.finished_ms IS NULL",
                )?
                .execute(params![
                    run,
                    step,
                    Text(*section),
                    Text(*status),
                    attempts,
                    now,
                    duration_ms,
                    summary,
                    outputs.to_string(),
                    serde_json::to_string(error).expect("a step error always serialises"),
                    continued,
                    seq
                ])?;
            if changed != 1 {
                return Err(Error::StepAlreadyFinished {
                    run: run.to_owned(),
                    step: step.clone(),
                });
            }
        }
        Some(Change::RunEnded { status, detail }) => {
            transition(tx, run, &[RunStatus::Running], *status, detail.as_deref())?;
        }
    }
    Ok(Some(seq))
}

fn interrupt_running(tx: &Connection, scope: &Scope) -> Result<Vec<Interrupted>> {
    let (owner, expired) = match scope {
        Scope::All => (None, false),
        Scope::Owner(owner) => (Some(owner.as_str()), false),
        Scope::Expired => (None, true),
    };
    let running = query_runs(
        tx,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status = ?1 \
             AND (?2 IS NULL OR lease_owner = ?2) \
             AND (NOT ?3 OR lease_expires_ms IS NULL OR lease_expires_ms <= ?4) ORDER BY id"
        ),
        params![Text(RunStatus::Running), owner, expired, now_ms()],
    )?;
    let mut out = Vec::new();
    for run in running {
        let in_flight = tx
            .prepare_cached(
                "SELECT step FROM steps WHERE run_id = ?1 AND status = ?2 ORDER BY seq",
            )?
            .query_map(params![run.id, Text(StepState::Running)], |row| {
                row.get::<_, String>(0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tx.prepare_cached("UPDATE steps SET status = ?3 WHERE run_id = ?1 AND status = ?2")?
            .execute(params![
                run.id,
                Text(StepState::Running),
                Text(StepState::Interrupted)
            ])?;
        transition(
            tx,
            &run.id,
            &[RunStatus::Running],
            RunStatus::Interrupted,
            Some(&crate::interrupted_detail(&in_flight)),
        )?;
        out.push(Interrupted {
            run: run.id,
            workflow: run.workflow,
            in_flight,
        });
    }
    Ok(out)
}

fn claim(
    tx: &Connection,
    owner: &str,
    ttl_ms: i64,
    max: u32,
    windows: &HoldCheck,
) -> Result<Claimed> {
    let now = now_ms();
    let queued = tx
        .prepare_cached(
            "SELECT id, workflow, concurrency_key, forced, detail, not_before_ms, dry_run, \
             created_ms FROM runs WHERE status = ?1 ORDER BY id",
        )?
        .query_map(params![Text(RunStatus::Queued)], |row| {
            Ok(Queued {
                id: row.get(0)?,
                workflow: row.get(1)?,
                key: row.get(2)?,
                forced: row.get(3)?,
                detail: row.get(4)?,
                not_before_ms: row.get(5)?,
                created_ms: row.get(7)?,
                dry_run: row.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let running = tx
        .prepare_cached(
            "SELECT concurrency_key, id FROM runs WHERE status = ?1 \
             AND concurrency_key IS NOT NULL",
        )?
        .query_map(params![Text(RunStatus::Running)], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let plan = crate::claim::plan(&queued, running, &locks(tx)?, max as usize, now, windows);
    for (id, detail) in &plan.hold {
        transition(
            tx,
            id,
            &[RunStatus::Queued],
            RunStatus::Queued,
            Some(detail),
        )?;
    }
    let mut started = Vec::new();
    for id in &plan.start {
        let epoch: Option<i64> = tx
            .prepare_cached(
                "UPDATE runs SET status = ?2, started_ms = ?3, lease_owner = ?4, \
                   lease_expires_ms = ?3 + ?5, lease_epoch = lease_epoch + 1, forced = 0, \
                   cancels = 0, cancelled_by = NULL \
                 WHERE id = ?1 AND status = ?6 RETURNING lease_epoch",
            )?
            .query_row(
                params![
                    id,
                    Text(RunStatus::Running),
                    now,
                    owner,
                    ttl_ms,
                    Text(RunStatus::Queued)
                ],
                |row| row.get(0),
            )
            .optional()?;
        let Some(epoch) = epoch else { continue };
        let run = query_runs(
            tx,
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
            params![id],
        )?;
        started.extend(run.into_iter().map(|run| {
            let fence = Fence {
                owner: owner.to_owned(),
                epoch,
            };
            (run, fence)
        }));
    }
    Ok(Claimed {
        started,
        held: plan.hold.into_iter().map(|(id, _)| id).collect(),
        keys: plan.keys,
    })
}

fn renew(tx: &Connection, owner: &str, ttl_ms: i64) -> Result<Vec<Held>> {
    let now = now_ms();
    Ok(tx
        .prepare_cached(
            "UPDATE runs SET lease_expires_ms = ?3 + ?4 \
             WHERE status = ?1 AND lease_owner = ?2 AND lease_expires_ms > ?3 \
             RETURNING id, lease_epoch, cancels, cancelled_by",
        )?
        .query_map(
            params![Text(RunStatus::Running), owner, now, ttl_ms],
            |row| {
                Ok(Held {
                    run: row.get(0)?,
                    epoch: row.get(1)?,
                    cancels: row.get(2)?,
                    cancelled_by: row.get(3)?,
                })
            },
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// See [`AsyncStore::open_session`].
fn open_session(
    tx: &Connection,
    session: &SessionRecord,
    max_total: u64,
    max_per_token: u64,
) -> Result<bool> {
    let now = session.created_ms;
    let keep = max_per_token.saturating_sub(1);
    tx.prepare_cached(
        "DELETE FROM sessions WHERE token_sha256 = ?1 AND (expires_ms <= ?2 OR seq IN \
           (SELECT seq FROM sessions WHERE token_sha256 = ?1 AND expires_ms > ?2 \
            ORDER BY created_ms DESC, seq DESC LIMIT -1 OFFSET ?3))",
    )?
    .execute(params![session.token_sha256, now, keep as i64])?;
    let count = || -> Result<u64> {
        Ok(tx
            .prepare_cached("SELECT count(*) FROM sessions")?
            .query_row([], |row| row.get::<_, i64>(0))? as u64)
    };
    if count()? >= max_total {
        tx.prepare_cached("DELETE FROM sessions WHERE expires_ms <= ?1")?
            .execute(params![now])?;
        if count()? >= max_total {
            return Ok(false);
        }
    }
    tx.prepare_cached(
        "INSERT INTO sessions (id_sha256, token_sha256, created_ms, expires_ms) \
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        session.id_sha256,
        session.token_sha256,
        session.created_ms,
        session.expires_ms
    ])?;
    Ok(true)
}

fn token_from_row(row: &Row) -> rusqlite::Result<(TokenRecord, String, String)> {
    Ok((
        TokenRecord {
            name: row.get(0)?,
            roles: Vec::new(),
            patterns: Vec::new(),
            created_ms: row.get(3)?,
        },
        row.get(1)?,
        row.get(2)?,
    ))
}

fn finish_token(
    (mut token, roles, patterns): (TokenRecord, String, String),
) -> Result<TokenRecord> {
    token.roles = string_list(&roles)?;
    token.patterns = string_list(&patterns)?;
    Ok(token)
}

impl AsyncStore for SqliteStore {
    fn create_run(&self, run: &NewRun, max_queued: u64) -> Pending<(Run, bool)> {
        let run = run.clone();
        self.write(move |tx| create_run(tx, &run, max_queued))
    }

    fn run(&self, id: &str) -> Pending<Option<Run>> {
        let id = id.to_owned();
        self.read(move |conn| {
            Ok(query_runs(
                conn,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                params![id],
            )?
            .into_iter()
            .next())
        })
    }

    fn steps(&self, run: &str) -> Pending<Vec<StepRecord>> {
        let run = run.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT step, section, status, attempts, started_ms, finished_ms, duration_ms, \
                 summary, outputs, error, continued FROM steps WHERE run_id = ?1 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map(params![run], |row| {
                    Ok((
                        StepRecord {
                            step: row.get(0)?,
                            section: row.get::<_, Text<_>>(1)?.0,
                            status: row.get::<_, Text<_>>(2)?.0,
                            attempts: row.get(3)?,
                            started_ms: row.get(4)?,
                            finished_ms: row.get(5)?,
                            duration_ms: row.get(6)?,
                            summary: row.get(7)?,
                            outputs: Value::Null,
                            error: None,
                            continued: row.get(10)?,
                        },
                        row.get::<_, String>(8)?,
                        row.get::<_, String>(9)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(mut step, outputs, error)| {
                    step.outputs = crate::json(&outputs, "steps")?;
                    step.error = serde_json::from_str(&error).map_err(|e| Error::Corrupt {
                        table: "steps",
                        message: e.to_string(),
                    })?;
                    Ok(step)
                })
                .collect()
        })
    }

    fn list_runs(&self, filter: &RunFilter) -> Pending<Vec<Run>> {
        let filter = filter.clone();
        self.read(move |conn| {
            query_runs(
                conn,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR workflow = ?1) \
                     AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3) \
                     ORDER BY id DESC LIMIT ?4"
                ),
                params![
                    filter.workflow,
                    filter.status.map(Text),
                    filter.before,
                    filter.limit
                ],
            )
        })
    }

    fn transition(
        &self,
        run: &str,
        from: &[RunStatus],
        to: RunStatus,
        detail: Option<&str>,
    ) -> Pending<bool> {
        let run = run.to_owned();
        let from = crate::not_running(from, to);
        let detail = detail.map(str::to_owned);
        self.write(move |conn| transition(conn, &run, &from, to, detail.as_deref()))
    }

    fn append_event(
        &self,
        run: &str,
        fence: &Fence,
        event: &str,
        change: Option<&Change>,
        commit: Commit,
    ) -> Pending<Option<i64>> {
        let run = run.to_owned();
        let fence = fence.clone();
        let event = event.to_owned();
        let change = change.cloned();
        self.committer.submit(commit, move |tx| {
            append_event(tx, &run, &fence, &event, change.as_ref())
        })
    }

    fn events(&self, run: &str, after: i64, limit: u32) -> Pending<Vec<(i64, String)>> {
        let run = run.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, body FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![run, after, limit], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn interrupt_running(&self, scope: &Scope) -> Pending<Vec<Interrupted>> {
        let scope = scope.clone();
        self.write(move |tx| interrupt_running(tx, &scope))
    }

    fn claim(&self, owner: &str, ttl_ms: i64, max: u32, windows: &HoldCheck) -> Pending<Claimed> {
        let owner = owner.to_owned();
        let windows = windows.clone();
        self.write(move |tx| claim(tx, &owner, ttl_ms, max, &windows))
    }

    fn renew(&self, owner: &str, ttl_ms: i64) -> Pending<Vec<Held>> {
        let owner = owner.to_owned();
        self.write(move |tx| renew(tx, &owner, ttl_ms))
    }

    fn release(&self, owner: &str) -> Pending<usize> {
        let owner = owner.to_owned();
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE runs SET lease_expires_ms = 0 WHERE status = ?1 AND lease_owner = ?2",
                )?
                .execute(params![Text(RunStatus::Running), owner])?)
        })
    }

    fn request_cancel(&self, run: &str, by: &str) -> Pending<bool> {
        let run = run.to_owned();
        let by = by.to_owned();
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(
                    "UPDATE runs SET cancels = cancels + 1, \
                       cancelled_by = coalesce(cancelled_by, ?3) \
                     WHERE id = ?1 AND status = ?2",
                )?
                .execute(params![run, Text(RunStatus::Running), by])?
                == 1)
        })
    }

    fn requeue(&self, run: &str, detail: &str, forced: bool) -> Pending<bool> {
        let run = run.to_owned();
        let detail = detail.to_owned();
        self.write(move |tx| {
            Ok(tx
                .prepare_cached(&format!(
                    "UPDATE runs SET status = ?2, detail = {APPEND_DETAIL}, forced = ?4 \
                     WHERE id = ?1 AND status = ?5"
                ))?
                .execute(params![
                    run,
                    Text(RunStatus::Queued),
                    detail,
                    forced,
                    Text(RunStatus::Interrupted)
                ])?
                == 1)
        })
    }

    fn open_approval(&self, approval: &Approval) -> Pending<Approval> {
        let approval = approval.clone();
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO approvals (run_id, step, open, body) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (run_id, step) DO NOTHING",
            )?
            .execute(params![
                approval.run,
                approval.step,
                approval.outcome.is_none(),
                approval.to_json()
            ])?;
            approval_of(tx, &approval.run, &approval.step)?.ok_or_else(|| Error::Corrupt {
                table: "approvals",
                message: "an approval just written is gone".into(),
            })
        })
    }

    fn decide(
        &self,
        run: &str,
        step: &str,
        change: &Decide,
    ) -> Pending<Option<(Applied, Approval)>> {
        let (run, step, change) = (run.to_owned(), step.to_owned(), change.clone());
        // Writes take turns on the one writer connection: nothing changes the row between
        // the read and the write.
        self.write(move |tx| {
            let Some(mut approval) = approval_of(tx, &run, &step)? else {
                return Ok(None);
            };
            let applied = apply(&mut approval, &change);
            if matches!(
                applied,
                Applied::Counted | Applied::Expired | Applied::Withdrawn
            ) {
                tx.prepare_cached(
                    "UPDATE approvals SET open = ?3, body = ?4 WHERE run_id = ?1 AND step = ?2",
                )?
                .execute(params![
                    run,
                    step,
                    approval.outcome.is_none(),
                    approval.to_json()
                ])?;
            }
            Ok(Some((applied, approval)))
        })
    }

    fn approvals(&self, run: &str) -> Pending<Vec<Approval>> {
        let run = run.to_owned();
        self.read(move |conn| approvals_where(conn, "run_id = ?1", params![run]))
    }

    fn open_approvals(&self) -> Pending<Vec<Approval>> {
        // A run that stopped running (interrupted and left for a person to resume, say) waits
        // for no one.
        self.read(move |conn| {
            approvals_where(
                conn,
                "open AND run_id IN (SELECT id FROM runs WHERE status = ?1)",
                params![Text(RunStatus::Running)],
            )
        })
    }

    fn runs_with_status(&self, status: RunStatus) -> Pending<Vec<Run>> {
        self.read(move |conn| {
            query_runs(
                conn,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = ?1 ORDER BY id"),
                params![Text(status)],
            )
        })
    }

    fn queued_of(&self, principal: &str) -> Pending<u64> {
        let principal = principal.to_owned();
        self.read(move |conn| queued_of(conn, &principal))
    }

    fn lock(&self, key: &str) -> Pending<Option<Lock>> {
        let key = key.to_owned();
        self.read(move |conn| Ok(locks(conn)?.into_iter().find(|l| l.key == key)))
    }

    fn locks(&self) -> Pending<Vec<Lock>> {
        self.read(locks)
    }

    fn put_lock(&self, lock: &Lock) -> Pending<()> {
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

    fn delete_lock(&self, key: &str) -> Pending<bool> {
        let key = key.to_owned();
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM locks WHERE key = ?1", params![key])? == 1)
        })
    }

    fn add_token(&self, sha256_hex: &str, token: &TokenRecord) -> Pending<()> {
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
                "INSERT INTO tokens (sha256, name, roles, patterns, created_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    sha256_hex,
                    token.name,
                    Value::from(token.roles.clone()).to_string(),
                    Value::from(token.patterns.clone()).to_string(),
                    token.created_ms
                ],
            )?;
            Ok(())
        })
    }

    fn token(&self, sha256_hex: &str) -> Pending<Option<TokenRecord>> {
        let sha256_hex = sha256_hex.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT name, roles, patterns, created_ms FROM tokens WHERE sha256 = ?1",
            )?
            .query_row(params![sha256_hex], token_from_row)
            .optional()?
            .map(finish_token)
            .transpose()
        })
    }

    fn tokens(&self) -> Pending<Vec<TokenRecord>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT name, roles, patterns, created_ms FROM tokens ORDER BY name, created_ms",
            )?
            .query_map([], token_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .map(finish_token)
            .collect()
        })
    }

    fn delete_token(&self, name: &str) -> Pending<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM sessions WHERE token_sha256 IN \
                 (SELECT sha256 FROM tokens WHERE name = ?1)",
                params![name],
            )?;
            Ok(conn.execute("DELETE FROM tokens WHERE name = ?1", params![name])? > 0)
        })
    }

    fn open_session(
        &self,
        session: &SessionRecord,
        max_total: u64,
        max_per_token: u64,
    ) -> Pending<bool> {
        let session = session.clone();
        self.write(move |tx| open_session(tx, &session, max_total, max_per_token))
    }

    fn session(&self, id_sha256: &str, now_ms: i64) -> Pending<Option<SessionRecord>> {
        let id_sha256 = id_sha256.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT token_sha256, created_ms, expires_ms FROM sessions \
                     WHERE id_sha256 = ?1 AND expires_ms > ?2",
                )?
                .query_row(params![id_sha256, now_ms], |row| {
                    Ok(SessionRecord {
                        id_sha256: id_sha256.clone(),
                        token_sha256: row.get(0)?,
                        created_ms: row.get(1)?,
                        expires_ms: row.get(2)?,
                    })
                })
                .optional()?)
        })
    }

    fn close_session(&self, id_sha256: &str) -> Pending<bool> {
        let id_sha256 = id_sha256.to_owned();
        self.write(move |conn| {
            Ok(conn.execute(
                "DELETE FROM sessions WHERE id_sha256 = ?1",
                params![id_sha256],
            )? == 1)
        })
    }

    fn prune_sessions(&self, now_ms: i64) -> Pending<usize> {
        self.write(move |conn| {
            Ok(conn.execute(
                "DELETE FROM sessions WHERE expires_ms <= ?1",
                params![now_ms],
            )?)
        })
    }

    fn audit(&self, entry: &AuditEntry) -> Pending<()> {
        let entry = crate::capped(entry);
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

    fn audit_log(&self, limit: u32) -> Pending<Vec<AuditEntry>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT at_ms, principal, action, target, remote, status, outcome FROM audit \
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt
                .query_map(params![limit], audit_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn audit_of(&self, action: &str, target: &str, limit: u32) -> Pending<Vec<AuditEntry>> {
        let (action, target) = (action.to_owned(), target.to_owned());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT at_ms, principal, action, target, remote, status, outcome FROM audit \
                 WHERE target = ?1 AND action = ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![target, action, limit], audit_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    fn prune_audit(&self, before_ms: i64) -> Pending<usize> {
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM audit WHERE at_ms < ?1", params![before_ms])?)
        })
    }

    fn prune(&self, before_ms: i64) -> Pending<usize> {
        self.write(move |conn| {
            Ok(conn.execute(
                "DELETE FROM runs WHERE status IN (SELECT value FROM json_each(?2)) \
                 AND finished_ms < ?1",
                params![before_ms, status_set(&RunStatus::TERMINAL)],
            )?)
        })
    }

    fn shared(&self) -> bool {
        false
    }

    fn watch(&self, _notice: Box<dyn Fn(Notice) + Send + Sync>) -> Result<()> {
        // One daemon writes an embedded file: nothing to hear of.
        Ok(())
    }

    fn integrity_check(&self) -> Pending<String> {
        self.read(|conn| Ok(conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?))
    }
}

fn approval_of(conn: &Connection, run: &str, step: &str) -> Result<Option<Approval>> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM approvals WHERE run_id = ?1 AND step = ?2")?
        .query_row(params![run, step], |row| row.get(0))
        .optional()?;
    body.as_deref().map(Approval::from_json).transpose()
}

fn approvals_where(
    conn: &Connection,
    condition: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Approval>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT body FROM approvals WHERE {condition} ORDER BY seq"
    ))?;
    let bodies = stmt
        .query_map(params, |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    bodies
        .iter()
        .map(|body| Approval::from_json(body))
        .collect()
}

fn locks(conn: &Connection) -> Result<Vec<Lock>> {
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

#[cfg(test)]
mod tests {
    //! What only the SQLite store has; the cases every store passes are in `tests.rs`.

    // Only the blocking interface: with both traits in scope every call would be ambiguous.
    use super::SqliteStore;
    use crate::tests::{ANY, new_run};
    use crate::{Change, Commit, Error, RunStatus, Section, StepState, Store};
    use rusqlite::Connection;
    use std::path::Path;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db/shiphat.sqlite")).unwrap();
        (dir, store)
    }

    #[test]
    fn a_write_is_on_disk_when_it_returns_and_logs_before_the_next_write() {
        let (dir, store) = store();
        store.create_run(&new_run("01a", None), ANY).unwrap();
        let fence = crate::tests::start(&store, "01a");
        drop(crate::AsyncStore::append_event(
            &store,
            "01a",
            &fence,
            "{\"log\":1}",
            None,
            Commit::Soon,
        ));
        let start = Change::StepStarted {
            step: "s".into(),
            section: Section::Steps,
            attempt: 1,
        };
        store
            .append_event("01a", &fence, "{}", Some(&start), Commit::Now)
            .unwrap();
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

    /// The schema as shiphat wrote it before it had a version (`user_version` 0), with a
    /// token's roles and patterns joined with commas.
    const UNVERSIONED: &str = "
CREATE TABLE runs (id TEXT PRIMARY KEY, workflow TEXT NOT NULL, inputs TEXT NOT NULL,
    principal TEXT NOT NULL, dry_run INTEGER NOT NULL, concurrency_key TEXT,
    idempotency_key TEXT, status TEXT NOT NULL, detail TEXT, created_ms INTEGER NOT NULL,
    started_ms INTEGER, finished_ms INTEGER);
CREATE UNIQUE INDEX runs_idempotency ON runs (principal, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_status ON runs (status);
CREATE INDEX runs_workflow ON runs (workflow);
CREATE TABLE steps (run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step TEXT NOT NULL, section TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    started_ms INTEGER, finished_ms INTEGER, duration_ms REAL, summary TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT 'null',
    continued INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL, PRIMARY KEY (run_id, step));
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE, body TEXT NOT NULL);
CREATE INDEX events_run ON events (run_id, seq);
CREATE TABLE locks (key TEXT PRIMARY KEY, owner TEXT NOT NULL, reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER);
CREATE TABLE tokens (sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, roles TEXT NOT NULL,
    patterns TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL,
    principal TEXT, action TEXT NOT NULL, target TEXT NOT NULL, remote TEXT NOT NULL,
    status INTEGER NOT NULL, outcome TEXT NOT NULL);
INSERT INTO runs (id, workflow, inputs, principal, dry_run, status, created_ms, finished_ms)
    VALUES ('01a', 'wf', '{}', 'ci', 0, 'succeeded', 1, 2);
INSERT INTO steps (run_id, step, section, status, attempts, seq)
    VALUES ('01a', 's', 'steps', 'succeeded', 1, 1);
INSERT INTO tokens VALUES ('aa', 'ci', 'deployer,viewer', 'web/*,api/*', 1);
INSERT INTO tokens VALUES ('bb', 'ro', 'viewer', '', 1);
";

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn an_older_database_is_migrated_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shiphat.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(UNVERSIONED)
            .unwrap();
        let store = SqliteStore::open(&path).unwrap();
        let ci = store.token("aa").unwrap().unwrap();
        assert_eq!(ci.roles, ["deployer", "viewer"]);
        assert_eq!(ci.patterns, ["web/*", "api/*"]);
        assert!(store.token("bb").unwrap().unwrap().patterns.is_empty());
        let run = store.run("01a").unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
        // Written before runs kept their source: unknown, not a guess.
        assert_eq!(run.source, None);
        assert_eq!(store.steps("01a").unwrap()[0].status, StepState::Succeeded);
        drop(store);
        assert_eq!(user_version(&path), super::VERSION);
        // Opening it again migrates nothing twice.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.tokens().unwrap().len(), 2);
        drop(store);

        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", super::VERSION + 1)
            .unwrap();
        let refused = SqliteStore::open(&path)
            .err()
            .expect("a newer schema is refused");
        assert!(matches!(refused, Error::TooNew { .. }), "{refused:?}");
        let message = refused.to_string();
        assert!(
            message.contains("newer than this shiphat knows")
                && message.contains("run the shiphat that wrote it"),
            "{message}"
        );
        // Refused without a change: the newer shiphat still finds its database as it was.
        assert_eq!(user_version(&path), super::VERSION + 1);
    }
}
