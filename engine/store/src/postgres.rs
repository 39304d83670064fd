//! [`AsyncStore`] on a PostgreSQL server, which several daemons can share. One thread writes,
//! in the order of the calls, with group commit as for SQLite; a few threads read. Each
//! thread owns one connection of the blocking `postgres` client and opens it again when it was
//! lost (the server restarted), so a store outlives a database restart. Callers only queue
//! work and await it, as with [`crate::SqliteStore`].
//!
//! The client is rust-postgres's blocking `postgres` crate: it keeps a small runtime of its own
//! inside each connection, so it runs on the store's threads whatever runtime the caller has,
//! which is what [`crate::Pending`] promises, and it is the most used PostgreSQL client in Rust.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ::postgres::types::ToSql;
use ::postgres::{Client, GenericClient, NoTls, Row, Statement};

use crate::claim::{Claimed, Fence, Held, Queued, Scope};
use crate::threads::{Committer, Transactional, Workers};
use crate::{
    Applied, Approval, AsyncStore, AuditEntry, Change, Commit, Decide, Error, HoldCheck,
    Interrupted, Lock, NewRun, Notice, Pending, Result, Run, RunFilter, RunSource, RunStatus,
    Section, SessionRecord, StepRecord, StepState, TokenRecord, apply, now_ms,
};

/// How many threads read, each on its own connection. As for SQLite: two let a long read (a
/// run's whole history) leave another for the short ones, and each connection is a process
/// on the server.
const READERS: usize = 2;

/// How long opening a connection may take. A server on the same network answers in
/// milliseconds; past this the address is wrong or the server down, and saying so beats
/// hanging a daemon's start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection that just failed may take to answer an empty query before it is
/// taken for lost. A live server answers in milliseconds.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Migration `i` takes a database from version `i` to `i + 1`, inside the transaction that
/// records the new version. Never edit one that has shipped: add the next. The version is the
/// place in this list, not the number in a file's name.
const MIGRATIONS: [&str; 10] = [
    include_str!("postgres/migrations/001_create.sql"),
    include_str!("postgres/migrations/002_claims.sql"),
    include_str!("postgres/migrations/003_sessions.sql"),
    include_str!("postgres/migrations/004_not_before.sql"),
    include_str!("postgres/migrations/005_approvals.sql"),
    include_str!("postgres/migrations/006_append.sql"),
    include_str!("postgres/migrations/007_source.sql"),
    include_str!("postgres/migrations/008_append_set.sql"),
    include_str!("postgres/migrations/009_append_by_key.sql"),
    include_str!("postgres/migrations/010_claimers.sql"),
];

/// The schema this build writes.
const VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock held while the schema is checked and migrated: two daemons starting at
/// once on one database migrate it once. Any number would do; this one spells `shiphat`.
const MIGRATION_LOCK: i64 = 0x0073_6869_7068_6174;

/// The class of the advisory locks, one per principal, under which a run is admitted: its
/// queue is counted and its idempotency key looked up by one transaction at a time, whichever
/// daemon admits it. It spells `ship`.
const ADMISSION_LOCK: i32 = 0x7368_6970;

/// The class of the advisory locks, one per concurrency key, under which a run that does not
/// queue is admitted: two daemons cannot both find its key free. It spells `keys`.
const KEY_LOCK: i32 = 0x6b65_7973;

/// The advisory lock a claim holds: claims take turns, whichever daemon makes them, so that
/// each sees the runs the one before it started. What may start depends on other rows than
/// the run's own (one running run per key, the oldest waiting first), which row locks alone
/// cannot order. A claim only tries it: a daemon that finds another claiming starts nothing
/// this time (the other's claim, or the next one, which every change announced on
/// [`CHANNEL`] asks for, covers its runs), and never waits with its group's locks held, which
/// could deadlock with another daemon's group. It spells `claim`.
const CLAIM_LOCK: i64 = 0x0063_6c61_696d;

/// The channel on which every write that another daemon should hear of is announced, at its
/// commit (`NOTIFY` is transactional): `E:` and a JSON array of run ids when those runs'
/// events grew (`shiphat_append` announces all the runs of its call at once), `r:RUN` when a
/// run changed state, `r:` when a lock did.
const CHANNEL: &str = "shiphat";

/// How long a group of writes smaller than the one before it waits for more (see
/// [`Transactional::linger`]): a step's commit waits at most this much longer, against the
/// tens of milliseconds each of 50 concurrent runs waits for its turn at the cores anyway.
const LINGER: Duration = Duration::from_millis(2);

/// How long the listener waits for a notification before it looks whether its store is gone.
const LISTEN_POLL: Duration = Duration::from_millis(500);

/// Now by the database's clock, in milliseconds since the Unix epoch: what leases are
/// compared with, so that daemons whose clocks disagree still agree on which lease expired.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The store in a PostgreSQL database.
///
/// Writes share transactions as in SQLite ([`Committer`]): everything queued at once commits
/// together and waits once for the server's WAL flush (`synchronous_commit = on`, the
/// server's default). A group of [`Commit::Soon`] writes alone commits without waiting for the
/// flush (`synchronous_commit = off` for that transaction): the server writes its WAL in
/// order, so the next group that waits carries it to disk too, which is that write's contract.
///
/// Events, the bulk of the writes, take no savepoint: a group's events are written by one
/// call of the function `shiphat_append` (migrations 006 and 008), which answers a stale fence or a
/// step's second end as a value rather than as an error. A group of events thus costs three
/// round trips (`BEGIN`, the call, `COMMIT`) instead of five per event.
pub struct PgStore {
    /// Group commit, as in SQLite: see [`Committer`].
    writer: Committer<Conn>,
    readers: Workers<Conn>,
    /// How to connect, for the listener [`AsyncStore::watch`] starts.
    config: Arc<::postgres::Config>,
    /// Tells the listener, if one was started, that the store is gone.
    gone: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.gone.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One thread's connection, opened again when it was lost.
struct Conn {
    config: Arc<::postgres::Config>,
    /// The URL, for messages (it holds no password).
    database: Arc<str>,
    client: Option<Client>,
    /// The statements prepared on `client`, by their SQL.
    statements: HashMap<String, Statement>,
    /// A savepoint statement failed in the group under way: its transaction may be aborted,
    /// and a `COMMIT` would roll it back without an error, so it is rolled back and said so.
    poisoned: bool,
    /// The events of the group under way not yet written (the writer's connection only):
    /// they are written together, by one call of `shiphat_append`, before the group's next
    /// write in a savepoint and before its commit.
    appends: Vec<Append>,
}

/// An event waiting in [`Conn::appends`], and where its answer goes: its `seq`, `None` when
/// its fence refused it, or [`Error::StepAlreadyFinished`].
struct Append {
    run: String,
    fence: Fence,
    event: String,
    /// Never [`Change::RunEnded`]: a run's end is a write of its own (see
    /// [`PgStore::append_event`]).
    change: Option<Change>,
    answer: tokio::sync::oneshot::Sender<Result<Option<i64>>>,
}

impl Conn {
    fn open(config: &Arc<::postgres::Config>, database: &Arc<str>) -> Result<Conn> {
        let mut conn = Conn {
            config: config.clone(),
            database: database.clone(),
            client: None,
            statements: HashMap::new(),
            poisoned: false,
            appends: Vec::new(),
        };
        conn.client()?;
        Ok(conn)
    }

    /// Runs `work` on the connection. When it fails because the connection is gone (the
    /// server restarted since the last call), opens a new one and runs `work` once more: a
    /// `work` must be safe to repeat after such a failure (a read, or a `BEGIN`).
    fn with<R>(&mut self, mut work: impl FnMut(&mut Conn) -> Result<R>) -> Result<R> {
        self.client()?;
        let first = work(self);
        match first {
            Err(_) if self.lost() => {
                self.client = None;
                self.client()?;
                work(self)
            }
            other => other,
        }
    }

    /// Whether the connection is gone. The client notices a closed socket only when it next
    /// uses it, so after an error this asks the server, briefly.
    fn lost(&mut self) -> bool {
        match &mut self.client {
            None => true,
            Some(client) => client.is_closed() || client.is_valid(PING_TIMEOUT).is_err(),
        }
    }

    /// The connection, opened by `with` (a read) or by the group's `BEGIN` (a write).
    fn live(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("connected before any statement")
    }

    fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            // Prepared on the connection that is gone.
            self.statements.clear();
            let client = self
                .config
                .connect(NoTls)
                .map_err(|source| Error::Connect {
                    database: self.database.to_string(),
                    source,
                })?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs `sql` with `run`, prepared on this connection once: a prepared statement runs in
    /// one round trip where a text one takes two (parse, then run), and a write is a few
    /// statements in a row.
    fn prepared<T>(
        &mut self,
        sql: &str,
        run: impl FnOnce(&mut Client, &Statement) -> Result<T, ::postgres::Error>,
    ) -> Result<T> {
        let statement = match self.statements.get(sql) {
            Some(statement) => statement.clone(),
            None => {
                let statement = self.live().prepare(sql)?;
                self.statements.insert(sql.to_owned(), statement.clone());
                statement
            }
        };
        Ok(run(self.live(), &statement)?)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
        self.prepared(sql, |client, statement| client.query(statement, params))
    }

    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row> {
        self.prepared(sql, |client, statement| client.query_one(statement, params))
    }

    fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
        self.prepared(sql, |client, statement| client.query_opt(statement, params))
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64> {
        self.prepared(sql, |client, statement| client.execute(statement, params))
    }

    /// Writes the events in [`Conn::appends`], in one statement, and answers each.
    fn flush(&mut self) -> Result<()> {
        if self.appends.is_empty() {
            return Ok(());
        }
        let appends = std::mem::take(&mut self.appends);
        let events: Vec<_> = appends
            .iter()
            .map(|a| {
                (
                    a.run.as_str(),
                    &a.fence,
                    a.event.as_str(),
                    a.change.as_ref(),
                )
            })
            .collect();
        let answers = append_events(self, &events)?;
        for (append, answer) in appends.into_iter().zip(answers) {
            let _ = append
                .answer
                .send(answered(&append.run, append.change.as_ref(), answer));
        }
        Ok(())
    }
}

/// PostgreSQL's side of group commit.
impl Transactional for Conn {
    /// Each savepoint that writes is a subtransaction, and past 64 of them a transaction
    /// overflows the cache its backend keeps of them: while it is open, every other session's
    /// snapshots then look its subtransactions up on disk. 64 writes share a commit already.
    const MAX_GROUP: usize = 64;
    /// A commit here costs the server and the daemon more than SQLite's (three round trips,
    /// the fence, the set-based statements' fixed part, a notification to every daemon), and
    /// several daemons split the runs and so the writes: two milliseconds took the server's
    /// CPU a step, three daemons at 50 runs, from 338–398 µs to 280–286 (docs/BENCHMARKS.md).
    /// A lone run's groups do not shrink, so it never waits.
    fn linger() -> Option<Duration> {
        Some(LINGER)
    }

    fn begin(&mut self, durable: bool) -> Result<()> {
        self.poisoned = false;
        self.appends.clear();
        let begin = if durable {
            "BEGIN"
        } else {
            "BEGIN; SET LOCAL synchronous_commit = off"
        };
        // Safe to repeat on a new connection when the old one was lost: nothing ran yet.
        self.with(|conn| Ok(conn.live().batch_execute(begin)?))
    }

    /// The events queued before a write in a savepoint are written before it, in the order
    /// of the calls.
    fn savepoint(&mut self, sql: &'static str) -> Result<()> {
        let done = match self.flush() {
            Ok(()) => self.live().batch_execute(sql).map_err(Error::from),
            Err(e) => Err(e),
        };
        self.poisoned |= done.is_err();
        done
    }

    fn commit(&mut self) -> Result<()> {
        if self.poisoned {
            self.rollback();
            return Err(Error::Commit {
                message: "a savepoint failed, so the group's transaction was rolled back".into(),
            });
        }
        if let Err(e) = self.flush() {
            self.rollback();
            return Err(Error::Commit {
                message: format!(
                    "the group's events could not be written, so its transaction was rolled \
                     back: {e}"
                ),
            });
        }
        self.live().batch_execute("COMMIT").map_err(|e| {
            // A broken connection rolls back by itself.
            let _ = self.live().batch_execute("ROLLBACK");
            e.into()
        })
    }

    fn rollback(&mut self) {
        // Their writers hear that the group did not commit.
        self.appends.clear();
        let _ = self.live().batch_execute("ROLLBACK");
    }
}

/// Checks a store URL: a `postgres://` URL the client understands, with no password in it.
pub(crate) fn parse_url(url: &str) -> Result<::postgres::Config> {
    let refuse = |message: String| Error::Url {
        url: redact(url),
        message,
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(refuse(
            "not a PostgreSQL URL; write it as `postgres://USER@HOST/DATABASE`".into(),
        ));
    }
    let config = ::postgres::Config::from_str(url).map_err(|e| refuse(e.to_string()))?;
    if config.get_password().is_some() {
        return Err(refuse(
            "it holds a password, which would show in the process list, the shell's history \
             and logs; give the password in `SHIPHAT_STORE_PASSWORD` or in a file \
             (`store_password_file` in shiphat.toml, or `--store-password-file`)"
                .into(),
        ));
    }
    Ok(config)
}

/// `url` with any password in it replaced by `…`, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:…@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some(("password", _)) => "password=…".to_owned(),
                    _ => pair.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&");
            format!("{path}?{query}")
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Brings the database to [`VERSION`], or refuses one from a newer shiphat.
fn migrate(client: &mut Client, database: &str) -> Result<()> {
    let mut tx = client.transaction()?;
    // Held until the commit: a second daemon starting now waits here, then finds the work
    // done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS shiphat_schema (version INTEGER NOT NULL)")?;
    let found = schema_version(&mut tx)?;
    if found > VERSION {
        return Err(Error::SchemaTooNew {
            database: database.to_owned(),
            found,
            supported: VERSION,
        });
    }
    for migration in &MIGRATIONS[found.max(0) as usize..] {
        tx.batch_execute(migration)?;
    }
    if found != VERSION {
        tx.execute("DELETE FROM shiphat_schema", &[])?;
        tx.execute(
            "INSERT INTO shiphat_schema (version) VALUES ($1)",
            &[&(VERSION as i32)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn schema_version(db: &mut impl GenericClient) -> Result<i64> {
    Ok(db
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM shiphat_schema",
            &[],
        )?
        .try_get(0)?)
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://USER@HOST[:PORT]/DATABASE`, no password
    /// in it) with `password`, migrating an older schema; refuses ([`Error::SchemaTooNew`]) a
    /// database written by a newer shiphat. Connections are not encrypted: use a unix socket
    /// (`postgres://USER@%2Frun%2Fpostgresql/DATABASE`) or a network you trust.
    pub fn open(url: &str, password: Option<&str>) -> Result<PgStore> {
        // The client runs each call on a runtime of its own, which tokio refuses to start on
        // a thread that drives one (the daemon opens its store from async code): the
        // connecting, like all the store's IO, is done on a thread of its own.
        std::thread::scope(|scope| {
            let opening = std::thread::Builder::new()
                .name("shiphat-store-open".into())
                .spawn_scoped(scope, || PgStore::connect(url, password))
                .map_err(|source| Error::Open {
                    path: "shiphat-store-open thread".into(),
                    source,
                })?;
            opening.join().unwrap_or_else(|_| {
                Err(Error::Commit {
                    message: "opening the store panicked".into(),
                })
            })
        })
    }

    fn connect(url: &str, password: Option<&str>) -> Result<PgStore> {
        let mut config = parse_url(url)?;
        if let Some(password) = password {
            config.password(password);
        }
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("shiphat");
        let config = Arc::new(config);
        let database: Arc<str> = url.into();
        let mut writer = Conn::open(&config, &database)?;
        migrate(writer.client()?, url)?;
        let readers = (0..READERS)
            .map(|_| Conn::open(&config, &database))
            .collect::<Result<Vec<_>>>()?;
        Ok(PgStore {
            writer: Committer::start(writer)?,
            readers: Workers::start("shiphat-store-read", readers)?,
            config,
            gone: Arc::default(),
        })
    }

    fn read<R: Send + 'static>(
        &self,
        work: impl Fn(&mut Conn) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        self.readers.submit(move |conn| conn.with(&work))
    }

    /// Queues `work` for the writer thread, which runs it in a savepoint of its group's
    /// transaction; an error (or a panic) undoes it alone.
    fn write<R: Send + 'static>(
        &self,
        commit: Commit,
        work: impl FnOnce(&mut Conn) -> Result<R> + Send + 'static,
    ) -> Pending<R> {
        self.writer.submit(commit, work)
    }
}

/// The SQL of a run's new `detail` given `$3`, as in `sqlite.rs`: what it said, then `; ` and
/// `$3`; `NULL` adds nothing, and the same words twice in a row are kept once.
const APPEND_DETAIL: &str = "CASE WHEN $3::text IS NULL THEN detail \
    WHEN detail IS NULL OR detail = '' THEN $3::text \
    WHEN detail = $3::text OR right(detail, length($3::text) + 2) = '; ' || $3::text \
    THEN detail \
    ELSE detail || '; ' || $3::text END";

/// A run's columns; `lease_owner` only while it runs (a lease outlives its run's end).
const RUN_COLUMNS: &str = "id, workflow, inputs, principal, dry_run, concurrency_key, \
    idempotency_key, status, detail, created_ms, started_ms, finished_ms, \
    CASE WHEN status = 'running' THEN lease_owner END, source";

/// A status or section from its stored name.
fn named<T>(text: &str, parse: fn(&str) -> Option<T>, table: &'static str) -> Result<T> {
    parse(text).ok_or_else(|| Error::Corrupt {
        table,
        message: format!("unknown status `{text}`"),
    })
}

fn run_from_row(row: &Row) -> Result<Run> {
    Ok(Run {
        id: row.try_get(0)?,
        workflow: row.try_get(1)?,
        inputs: crate::json(row.try_get(2)?, "runs")?,
        principal: row.try_get(3)?,
        dry_run: row.try_get(4)?,
        concurrency_key: row.try_get(5)?,
        idempotency_key: row.try_get(6)?,
        status: named(row.try_get(7)?, RunStatus::parse, "runs")?,
        detail: row.try_get(8)?,
        created_ms: row.try_get(9)?,
        started_ms: row.try_get(10)?,
        finished_ms: row.try_get(11)?,
        daemon: row.try_get(12)?,
        source: row
            .try_get::<_, Option<&str>>(13)?
            .and_then(RunSource::parse),
    })
}

fn audit_from_row(row: &Row) -> Result<AuditEntry> {
    Ok(AuditEntry {
        at_ms: row.try_get(0)?,
        principal: row.try_get(1)?,
        action: row.try_get(2)?,
        target: row.try_get(3)?,
        remote: row.try_get(4)?,
        status: u16::try_from(row.try_get::<_, i32>(5)?).unwrap_or(0),
        outcome: row.try_get(6)?,
    })
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

fn query_runs(db: &mut Conn, sql: &str, params: Params<'_>) -> Result<Vec<Run>> {
    db.query(sql, params)?.iter().map(run_from_row).collect()
}

fn names(statuses: &[RunStatus]) -> Vec<&'static str> {
    statuses.iter().map(|s| s.as_str()).collect()
}

fn create_run(tx: &mut Conn, run: &NewRun, max_queued: u64) -> Result<(Run, bool)> {
    // Concurrent admissions for one principal, from this daemon or another, take turns here:
    // each looks up the key and counts the queue after the one before it has committed.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&ADMISSION_LOCK, &run.principal],
    )?;
    if let Some(key) = &run.idempotency_key {
        let existing = query_runs(
            tx,
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE principal = $1 AND idempotency_key = $2"
            ),
            &[&run.principal, key],
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
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&KEY_LOCK, key],
        )?;
        let holder = tx.query_opt(
            "SELECT id FROM runs WHERE concurrency_key = $1 AND status = ANY($2) \
             ORDER BY status = 'running' DESC, id LIMIT 1",
            &[key, &names(&[RunStatus::Queued, RunStatus::Running])],
        )?;
        if let Some(holder) = holder {
            return Err(Error::KeyBusy {
                key: key.clone(),
                holder: holder.try_get(0)?,
            });
        }
    }
    let created_ms = now_ms();
    notify(tx, &format!("r:{}", run.id))?;
    tx.execute(
        "INSERT INTO runs (id, workflow, inputs, principal, dry_run, concurrency_key, \
         idempotency_key, status, created_ms, forced, not_before_ms, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        &[
            &run.id,
            &run.workflow,
            &run.inputs.to_string(),
            &run.principal,
            &run.dry_run,
            &run.concurrency_key,
            &run.idempotency_key,
            &RunStatus::Queued.as_str(),
            &created_ms,
            &run.forced,
            &run.not_before_ms,
            &run.source.as_str(),
        ],
    )?;
    Ok((run.queued(created_ms), true))
}

/// See [`AsyncStore::open_session`].
fn open_session(
    tx: &mut Conn,
    session: &SessionRecord,
    max_total: u64,
    max_per_token: u64,
) -> Result<bool> {
    let now = session.created_ms;
    let keep = i64::try_from(max_per_token.saturating_sub(1)).unwrap_or(i64::MAX);
    tx.execute(
        "DELETE FROM sessions WHERE token_sha256 = $1 AND (expires_ms <= $2 OR seq IN \
           (SELECT seq FROM sessions WHERE token_sha256 = $1 AND expires_ms > $2 \
            ORDER BY created_ms DESC, seq DESC OFFSET $3))",
        &[&session.token_sha256, &now, &keep],
    )?;
    let max_total = i64::try_from(max_total).unwrap_or(i64::MAX);
    let full = |tx: &mut Conn| -> Result<bool> {
        Ok(count(tx, "SELECT count(*) FROM sessions", &[])? >= max_total)
    };
    if full(tx)? {
        tx.execute("DELETE FROM sessions WHERE expires_ms <= $1", &[&now])?;
        if full(tx)? {
            return Ok(false);
        }
    }
    tx.execute(
        "INSERT INTO sessions (id_sha256, token_sha256, created_ms, expires_ms) \
         VALUES ($1, $2, $3, $4)",
        &[
            &session.id_sha256,
            &session.token_sha256,
            &session.created_ms,
            &session.expires_ms,
        ],
    )?;
    Ok(true)
}

fn queued_of(db: &mut Conn, principal: &str) -> Result<u64> {
    let count: i64 = db
        .query_one(
            "SELECT count(*) FROM runs WHERE status = $1 AND principal = $2",
            &[&RunStatus::Queued.as_str(), &principal],
        )?
        .try_get(0)?;
    Ok(count as u64)
}

/// Announces `payload` on [`CHANNEL`] when the transaction commits.
fn notify(tx: &mut Conn, payload: &str) -> Result<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
    Ok(())
}

/// [`AsyncStore::transition`], also for the store's own moves into and out of `running`.
fn transition(
    db: &mut Conn,
    run: &str,
    from: &[RunStatus],
    to: RunStatus,
    detail: Option<&str>,
) -> Result<bool> {
    notify(db, &format!("r:{run}"))?;
    let changed = db.execute(
        &format!(
            "UPDATE runs SET status = $2, detail = {APPEND_DETAIL}, \
               started_ms = CASE WHEN $5::boolean THEN $4::bigint ELSE started_ms END, \
               finished_ms = CASE WHEN $6::boolean THEN $4::bigint ELSE finished_ms END \
             WHERE id = $1 AND status = ANY($7)"
        ),
        &[
            &run,
            &to.as_str(),
            &detail,
            &now_ms(),
            &(to == RunStatus::Running),
            &to.is_terminal(),
            &names(from),
        ],
    )?;
    Ok(changed == 1)
}

/// `i32` for an `INTEGER` column.
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// One event for [`append_events`]: its run, the fence its daemon holds, its body, and what it
/// changes.
type Event<'a> = (&'a str, &'a Fence, &'a str, Option<&'a Change>);

/// Appends `events`, in order, with one call of `shiphat_append` (migration 008), which checks
/// each fence, refuses a step's second end, inserts and announces each event and changes its
/// step's record. A [`Change::RunEnded`] is left to the caller. The answer holds, per event,
/// its `seq`, 0 when its fence refused it, or -1 when its step had ended already (see
/// [`answered`]).
fn append_events(tx: &mut Conn, events: &[Event<'_>]) -> Result<Vec<i64>> {
    let runs: Vec<&str> = events.iter().map(|e| e.0).collect();
    let owners: Vec<&str> = events.iter().map(|e| e.1.owner.as_str()).collect();
    let epochs: Vec<i64> = events.iter().map(|e| e.1.epoch).collect();
    let bodies: Vec<&str> = events.iter().map(|e| e.2).collect();
    let steps: Vec<StepColumns<'_>> = events.iter().map(|e| StepColumns::of(e.3)).collect();
    fn column<'a, T>(
        steps: &'a [StepColumns<'_>],
        field: impl Fn(&'a StepColumns<'_>) -> T,
    ) -> Vec<T> {
        steps.iter().map(field).collect()
    }
    let answers: Vec<i64> = tx
        .query_one(
            "SELECT shiphat_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
             $14, $15)",
            &[
                &runs,
                &owners,
                &epochs,
                &bodies,
                &column(&steps, |s| s.kind),
                &column(&steps, |s| s.step),
                &column(&steps, |s| s.section),
                &column(&steps, |s| s.status),
                &column(&steps, |s| s.attempts),
                &column(&steps, |s| s.duration_ms),
                &column(&steps, |s| s.summary),
                &column(&steps, |s| s.outputs.as_deref()),
                &column(&steps, |s| s.error.as_deref()),
                &column(&steps, |s| s.continued),
                &now_ms(),
            ],
        )?
        .try_get(0)?;
    if answers.len() != events.len() {
        return Err(Error::Corrupt {
            table: "events",
            message: format!(
                "`shiphat_append` answered {} times for {} events",
                answers.len(),
                events.len()
            ),
        });
    }
    Ok(answers)
}

/// What an event changes of its step, as `shiphat_append` takes it: one value for each of its
/// step arrays, `None` (SQL `NULL`) where the change has nothing to say.
#[derive(Default)]
struct StepColumns<'a> {
    kind: Option<&'static str>,
    step: Option<&'a str>,
    section: Option<&'static str>,
    status: Option<&'static str>,
    attempts: Option<i32>,
    duration_ms: Option<f64>,
    summary: Option<&'a str>,
    outputs: Option<String>,
    error: Option<String>,
    continued: Option<bool>,
}

impl<'a> StepColumns<'a> {
    fn of(change: Option<&'a Change>) -> StepColumns<'a> {
        match change {
            None | Some(Change::RunEnded { .. }) => StepColumns::default(),
            Some(Change::StepStarted {
                step,
                section,
                attempt,
            }) => StepColumns {
                kind: Some("started"),
                step: Some(step),
                section: Some(section.as_str()),
                attempts: Some(int(*attempt)),
                ..StepColumns::default()
            },
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
            }) => StepColumns {
                kind: Some("finished"),
                step: Some(step),
                section: Some(section.as_str()),
                status: Some(status.as_str()),
                attempts: Some(int(*attempts)),
                duration_ms: Some(*duration_ms),
                summary: Some(summary),
                outputs: Some(outputs.to_string()),
                error: Some(serde_json::to_string(error).expect("a step error always serialises")),
                continued: Some(*continued),
            },
        }
    }
}

/// What [`AsyncStore::append_event`] says of an event `shiphat_append` answered `answer` for.
fn answered(run: &str, change: Option<&Change>, answer: i64) -> Result<Option<i64>> {
    match (answer, change) {
        (0, _) => Ok(None),
        (-1, Some(Change::StepFinished { step, .. })) => Err(Error::StepAlreadyFinished {
            run: run.to_owned(),
            step: step.clone(),
        }),
        (seq, _) if seq > 0 => Ok(Some(seq)),
        (other, _) => Err(Error::Corrupt {
            table: "events",
            message: format!("`shiphat_append` answered `{other}` for an event of run `{run}`"),
        }),
    }
}

fn interrupt_running(tx: &mut Conn, scope: &Scope) -> Result<Vec<Interrupted>> {
    let (owner, expired) = match scope {
        Scope::All => (None, false),
        Scope::Owner(owner) => (Some(owner.as_str()), false),
        Scope::Expired => (None, true),
    };
    // `SKIP LOCKED`: a run whose row another transaction holds (its owner writing an event,
    // another daemon taking it over) is not this call's to decide now.
    let running = query_runs(
        tx,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' \
             AND ($1::text IS NULL OR lease_owner = $1) \
             AND (NOT $2 OR lease_expires_ms IS NULL OR lease_expires_ms <= {DB_NOW}) \
             ORDER BY id FOR UPDATE SKIP LOCKED"
        ),
        &[&owner, &expired],
    )?;
    // Their daemons no longer count among the claimers that share the queue: each is gone,
    // paused or cut off past its lease. One that comes back counts again at its next claim.
    // A row that a claim in progress holds is left: its daemon is alive, and waiting for it
    // could deadlock with that claim's group, whose next write may wait for a run locked here.
    let owners: Vec<&str> = running.iter().filter_map(|r| r.daemon.as_deref()).collect();
    if !owners.is_empty() {
        tx.execute(
            "DELETE FROM daemons WHERE owner IN (SELECT owner FROM daemons \
             WHERE owner = ANY($1) FOR UPDATE SKIP LOCKED)",
            &[&owners],
        )?;
    }
    let mut out = Vec::new();
    for run in running {
        let in_flight = tx
            .query(
                "SELECT step FROM steps WHERE run_id = $1 AND status = $2 ORDER BY seq",
                &[&run.id, &StepState::Running.as_str()],
            )?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<Vec<String>, _>>()?;
        tx.execute(
            "UPDATE steps SET status = $3 WHERE run_id = $1 AND status = $2",
            &[
                &run.id,
                &StepState::Running.as_str(),
                &StepState::Interrupted.as_str(),
            ],
        )?;
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
    tx: &mut Conn,
    owner: &str,
    ttl_ms: i64,
    max: u32,
    windows: &HoldCheck,
) -> Result<Claimed> {
    let turn: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&CLAIM_LOCK])?
        .try_get(0)?;
    let now: i64 = tx.query_one(&format!("SELECT {DB_NOW}"), &[])?.try_get(0)?;
    // This daemon claims, so it counts among the claimers; and who else does, and what runs.
    // The row of a daemon gone for an hour goes, so that restarts do not pile rows up (unless
    // another transaction holds it: nothing here waits for another daemon's row).
    let count = |row: &Row, i| Ok::<_, Error>(row.try_get::<_, i64>(i)?.max(0) as usize);
    let row = tx.query_one(
        "WITH seen AS (INSERT INTO daemons (owner, seen_ms) VALUES ($1, $2) \
           ON CONFLICT (owner) DO UPDATE SET seen_ms = excluded.seen_ms), \
         gone AS (DELETE FROM daemons WHERE owner IN (SELECT owner FROM daemons \
           WHERE seen_ms < $2 - 3600000 AND owner <> $1 FOR UPDATE SKIP LOCKED)) \
         SELECT 1 + (SELECT count(*) FROM daemons WHERE seen_ms > $2 - $3 AND owner <> $1), \
           count(*), count(*) FILTER (WHERE lease_owner = $1) \
         FROM runs WHERE status = 'running'",
        &[&owner, &now, &crate::claim::CLAIMER_LIVE_MS],
    )?;
    let claimers = crate::claim::Claimers {
        daemons: count(&row, 0)?,
        running: count(&row, 1)?,
        mine: count(&row, 2)?,
    };
    let queued = tx
        .query(
            "SELECT id, workflow, concurrency_key, forced, detail, not_before_ms, dry_run, \
             created_ms FROM runs WHERE status = 'queued' ORDER BY id",
            &[],
        )?
        .iter()
        .map(|row| {
            Ok(Queued {
                id: row.try_get(0)?,
                workflow: row.try_get(1)?,
                key: row.try_get(2)?,
                forced: row.try_get(3)?,
                detail: row.try_get(4)?,
                not_before_ms: row.try_get(5)?,
                dry_run: row.try_get(6)?,
                created_ms: row.try_get(7)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let running = tx
        .query(
            "SELECT concurrency_key, id FROM runs WHERE status = 'running' \
             AND concurrency_key IS NOT NULL",
            &[],
        )?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_>>()?;
    let locks = locks(tx, "", &[&now])?;
    let mut plan = crate::claim::plan(&queued, running, &locks, usize::MAX, now, windows);
    let created: HashMap<&str, i64> = queued
        .iter()
        .map(|run| (run.id.as_str(), run.created_ms))
        .collect();
    let startable: Vec<i64> = plan.start.iter().map(|id| created[id.as_str()]).collect();
    let share = crate::claim::fair_share(claimers, &startable, now, max as usize);
    plan.start_first(if turn { share } else { 0 }, &queued);
    if !turn {
        // Where the queues stand, as far as this daemon can tell; the claimer decides.
        return Ok(Claimed {
            keys: plan.keys,
            ..Claimed::default()
        });
    }
    for (id, detail) in &plan.hold {
        transition(
            tx,
            id,
            &[RunStatus::Queued],
            RunStatus::Queued,
            Some(detail),
        )?;
    }
    // `SKIP LOCKED`: a run whose row another transaction holds (a cancel under way) is not
    // waited for; it stays queued, and the runs of its key behind it wait for the next claim.
    let starting: Vec<&str> = plan.start.iter().map(String::as_str).collect();
    let lockable: std::collections::HashSet<String> = tx
        .query(
            "SELECT id FROM runs WHERE id = ANY($1) AND status = 'queued' \
             FOR UPDATE SKIP LOCKED",
            &[&starting],
        )?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut started = Vec::new();
    for id in plan.start.iter().filter(|id| lockable.contains(*id)) {
        notify(tx, &format!("r:{id}"))?;
        let row = tx.query_opt(
            &format!(
                "UPDATE runs SET status = 'running', started_ms = $2, lease_owner = $3, \
                   lease_expires_ms = $2::bigint + $4::bigint, lease_epoch = lease_epoch + 1, \
                   forced = false, cancels = 0, cancelled_by = NULL \
                 WHERE id = $1 AND status = 'queued' RETURNING {RUN_COLUMNS}, lease_epoch"
            ),
            &[id, &now, &owner, &ttl_ms],
        )?;
        if let Some(row) = row {
            let fence = Fence {
                owner: owner.to_owned(),
                epoch: row.try_get(14)?,
            };
            started.push((run_from_row(&row)?, fence));
        }
    }
    Ok(Claimed {
        started,
        held: plan.hold.into_iter().map(|(id, _)| id).collect(),
        keys: plan.keys,
    })
}

fn renew(tx: &mut Conn, owner: &str, ttl_ms: i64) -> Result<Vec<Held>> {
    tx.query(
        &format!(
            "UPDATE runs SET lease_expires_ms = {DB_NOW} + $2::bigint \
             WHERE status = 'running' AND lease_owner = $1 AND lease_expires_ms > {DB_NOW} \
             RETURNING id, lease_epoch, cancels, cancelled_by"
        ),
        &[&owner, &ttl_ms],
    )?
    .iter()
    .map(|row| {
        Ok(Held {
            run: row.try_get(0)?,
            epoch: row.try_get(1)?,
            cancels: row.try_get::<_, i32>(2)?.max(0) as u32,
            cancelled_by: row.try_get(3)?,
        })
    })
    .collect()
}

/// Hears [`CHANNEL`] on a connection of its own and hands each notification to `notice`,
/// until `gone`. A connection lost (the server restarted) is opened again, and since what was
/// said meanwhile is lost, `notice` hears that anything may have changed.
fn listen(
    config: &::postgres::Config,
    gone: &std::sync::atomic::AtomicBool,
    notice: &(dyn Fn(Notice) + Send + Sync),
) {
    use ::postgres::fallible_iterator::FallibleIterator;
    use std::sync::atomic::Ordering;
    let mut first = true;
    while !gone.load(Ordering::SeqCst) {
        let mut client = match config.connect(NoTls) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!("cannot listen for other daemons' changes: {e}; trying again");
                std::thread::sleep(LISTEN_POLL);
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!("cannot listen for other daemons' changes: {e}; trying again");
            std::thread::sleep(LISTEN_POLL);
            continue;
        }
        if !first {
            notice(Notice::Run(None));
        }
        first = false;
        while !gone.load(Ordering::SeqCst) {
            let next = client.notifications().timeout_iter(LISTEN_POLL).next();
            match next {
                Ok(Some(n)) => match n.payload().split_once(':') {
                    Some(("E", runs)) => match serde_json::from_str::<Vec<String>>(runs) {
                        Ok(runs) => runs.into_iter().map(Notice::Events).for_each(notice),
                        Err(e) => tracing::warn!("unreadable notification `{runs}`: {e}"),
                    },
                    Some(("r", "")) | None => notice(Notice::Run(None)),
                    Some((_, run)) => notice(Notice::Run(Some(run.to_owned()))),
                },
                Ok(None) => {
                    if client.is_closed() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    }
}

fn step_from_row(row: &Row) -> Result<StepRecord> {
    Ok(StepRecord {
        step: row.try_get(0)?,
        section: named(row.try_get(1)?, Section::parse, "steps")?,
        status: named(row.try_get(2)?, StepState::parse, "steps")?,
        attempts: row.try_get::<_, i32>(3)?.max(0) as u32,
        started_ms: row.try_get(4)?,
        finished_ms: row.try_get(5)?,
        duration_ms: row.try_get(6)?,
        summary: row.try_get(7)?,
        outputs: crate::json(row.try_get(8)?, "steps")?,
        error: serde_json::from_str(row.try_get(9)?).map_err(|e| Error::Corrupt {
            table: "steps",
            message: e.to_string(),
        })?,
        continued: row.try_get(10)?,
    })
}

fn token_from_row(row: &Row) -> Result<TokenRecord> {
    Ok(TokenRecord {
        name: row.try_get(0)?,
        roles: row.try_get(1)?,
        patterns: row.try_get(2)?,
        created_ms: row.try_get(3)?,
    })
}

fn lock_from_row(row: &Row) -> Result<Lock> {
    Ok(Lock {
        key: row.try_get(0)?,
        owner: row.try_get(1)?,
        reason: row.try_get(2)?,
        created_ms: row.try_get(3)?,
        expires_ms: row.try_get(4)?,
    })
}

/// Locks that have not expired, `AND` what `filter` adds.
fn locks(client: &mut Conn, filter: &str, params: Params<'_>) -> Result<Vec<Lock>> {
    client
        .query(
            &format!(
                "SELECT key, owner, reason, created_ms, expires_ms FROM locks \
                 WHERE (expires_ms IS NULL OR expires_ms > $1) {filter} ORDER BY key"
            ),
            params,
        )?
        .iter()
        .map(lock_from_row)
        .collect()
}

/// How many rows a `count(*)` query finds.
fn count(client: &mut Conn, sql: &str, params: Params<'_>) -> Result<i64> {
    Ok(client.query_one(sql, params)?.try_get(0)?)
}

impl AsyncStore for PgStore {
    fn create_run(&self, run: &NewRun, max_queued: u64) -> Pending<(Run, bool)> {
        let run = run.clone();
        self.write(Commit::Now, move |tx| create_run(tx, &run, max_queued))
    }

    fn run(&self, id: &str) -> Pending<Option<Run>> {
        let id = id.to_owned();
        self.read(move |client| {
            Ok(query_runs(
                client,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"),
                &[&id],
            )?
            .into_iter()
            .next())
        })
    }

    fn steps(&self, run: &str) -> Pending<Vec<StepRecord>> {
        let run = run.to_owned();
        self.read(move |client| {
            client
                .query(
                    "SELECT step, section, status, attempts, started_ms, finished_ms, \
                     duration_ms, summary, outputs, error, continued FROM steps \
                     WHERE run_id = $1 ORDER BY seq",
                    &[&run],
                )?
                .iter()
                .map(step_from_row)
                .collect()
        })
    }

    fn list_runs(&self, filter: &RunFilter) -> Pending<Vec<Run>> {
        let filter = filter.clone();
        self.read(move |client| {
            query_runs(
                client,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::text IS NULL OR workflow = $1) \
                     AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR id < $3) \
                     ORDER BY id DESC LIMIT $4"
                ),
                &[
                    &filter.workflow,
                    &filter.status.map(RunStatus::as_str),
                    &filter.before,
                    &i64::from(filter.limit),
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
        self.write(Commit::Now, move |tx| {
            transition(tx, &run, &from, to, detail.as_deref())
        })
    }

    /// Events are written without a savepoint, all those of a group in one statement (see
    /// [`Conn::appends`]): nothing they refuse is an error of the database's. A run's end
    /// also moves the run's row, so it is a write of its own, in a savepoint.
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
        if let Some(Change::RunEnded { status, detail }) = change {
            let (status, detail) = (*status, detail.clone());
            return self.write(commit, move |tx| {
                let [answer] = append_events(tx, &[(&run, &fence, &event, None)])?[..] else {
                    unreachable!("`append_events` answers once per event")
                };
                let Some(seq) = answered(&run, None, answer)? else {
                    return Ok(None);
                };
                transition(tx, &run, &[RunStatus::Running], status, detail.as_deref())?;
                Ok(Some(seq))
            });
        }
        let change = change.cloned();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let queued = self.writer.submit_whole(commit, move |tx| {
            tx.appends.push(Append {
                run,
                fence,
                event,
                change,
                answer,
            });
            Ok(())
        });
        Box::pin(async move {
            // Answered when the group's events were written, before its commit.
            queued.await?;
            answered.await.unwrap_or_else(|_| {
                Err(Error::Commit {
                    message: "the event was not written".into(),
                })
            })
        })
    }

    fn events(&self, run: &str, after: i64, limit: u32) -> Pending<Vec<(i64, String)>> {
        let run = run.to_owned();
        self.read(move |client| {
            client
                .query(
                    "SELECT seq, body FROM events WHERE run_id = $1 AND seq > $2 \
                     ORDER BY seq LIMIT $3",
                    &[&run, &after, &i64::from(limit)],
                )?
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect()
        })
    }

    fn interrupt_running(&self, scope: &Scope) -> Pending<Vec<Interrupted>> {
        let scope = scope.clone();
        self.write(Commit::Now, move |tx| interrupt_running(tx, &scope))
    }

    fn claim(&self, owner: &str, ttl_ms: i64, max: u32, windows: &HoldCheck) -> Pending<Claimed> {
        let owner = owner.to_owned();
        let windows = windows.clone();
        self.write(Commit::Now, move |tx| {
            claim(tx, &owner, ttl_ms, max, &windows)
        })
    }

    fn renew(&self, owner: &str, ttl_ms: i64) -> Pending<Vec<Held>> {
        let owner = owner.to_owned();
        self.write(Commit::Now, move |tx| renew(tx, &owner, ttl_ms))
    }

    fn release(&self, owner: &str) -> Pending<usize> {
        let owner = owner.to_owned();
        self.write(Commit::Now, move |tx| {
            notify(tx, "r:")?;
            // No longer one of the claimers that share the queue.
            tx.execute("DELETE FROM daemons WHERE owner = $1", &[&owner])?;
            Ok(tx.execute(
                "UPDATE runs SET lease_expires_ms = 0 WHERE status = 'running' \
                 AND lease_owner = $1",
                &[&owner],
            )? as usize)
        })
    }

    fn request_cancel(&self, run: &str, by: &str) -> Pending<bool> {
        let run = run.to_owned();
        let by = by.to_owned();
        self.write(Commit::Now, move |tx| {
            notify(tx, &format!("r:{run}"))?;
            Ok(tx.execute(
                "UPDATE runs SET cancels = cancels + 1, \
                   cancelled_by = coalesce(cancelled_by, $2) \
                 WHERE id = $1 AND status = 'running'",
                &[&run, &by],
            )? == 1)
        })
    }

    fn open_approval(&self, approval: &Approval) -> Pending<Approval> {
        let approval = approval.clone();
        self.write(Commit::Now, move |tx| {
            tx.execute(
                "INSERT INTO approvals (run_id, step, open, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (run_id, step) DO NOTHING",
                &[
                    &approval.run,
                    &approval.step,
                    &approval.outcome.is_none(),
                    &approval.to_json(),
                ],
            )?;
            notify(tx, &format!("r:{}", approval.run))?;
            let row = tx.query_one(
                "SELECT body FROM approvals WHERE run_id = $1 AND step = $2",
                &[&approval.run, &approval.step],
            )?;
            Approval::from_json(row.try_get(0)?)
        })
    }

    fn decide(
        &self,
        run: &str,
        step: &str,
        change: &Decide,
    ) -> Pending<Option<(Applied, Approval)>> {
        let (run, step, change) = (run.to_owned(), step.to_owned(), change.clone());
        self.write(Commit::Now, move |tx| {
            // Locked to the commit: two daemons' votes on one approval take turns.
            let Some(row) = tx.query_opt(
                "SELECT body FROM approvals WHERE run_id = $1 AND step = $2 FOR UPDATE",
                &[&run, &step],
            )?
            else {
                return Ok(None);
            };
            let mut approval = Approval::from_json(row.try_get(0)?)?;
            let applied = apply(&mut approval, &change);
            if matches!(
                applied,
                Applied::Counted | Applied::Expired | Applied::Withdrawn
            ) {
                tx.execute(
                    "UPDATE approvals SET open = $3, body = $4 WHERE run_id = $1 AND step = $2",
                    &[
                        &run,
                        &step,
                        &approval.outcome.is_none(),
                        &approval.to_json(),
                    ],
                )?;
                // The daemon running the run hears it and looks at once.
                notify(tx, &format!("r:{run}"))?;
            }
            Ok(Some((applied, approval)))
        })
    }

    fn approvals(&self, run: &str) -> Pending<Vec<Approval>> {
        let run = run.to_owned();
        self.read(move |conn| {
            conn.query(
                "SELECT body FROM approvals WHERE run_id = $1 ORDER BY seq",
                &[&run],
            )?
            .iter()
            .map(|row| Approval::from_json(row.try_get(0)?))
            .collect()
        })
    }

    fn open_approvals(&self) -> Pending<Vec<Approval>> {
        self.read(move |conn| {
            // A run that stopped running (interrupted and left for a person to resume, say)
            // waits for no one.
            conn.query(
                "SELECT a.body FROM approvals a JOIN runs r ON r.id = a.run_id \
                 WHERE a.open AND r.status = 'running' ORDER BY a.seq",
                &[],
            )?
            .iter()
            .map(|row| Approval::from_json(row.try_get(0)?))
            .collect()
        })
    }

    fn requeue(&self, run: &str, detail: &str, forced: bool) -> Pending<bool> {
        let run = run.to_owned();
        let detail = detail.to_owned();
        self.write(Commit::Now, move |tx| {
            notify(tx, &format!("r:{run}"))?;
            Ok(tx.execute(
                &format!(
                    "UPDATE runs SET status = $2, detail = {APPEND_DETAIL}, forced = $4 \
                     WHERE id = $1 AND status = 'interrupted'"
                ),
                &[&run, &RunStatus::Queued.as_str(), &detail, &forced],
            )? == 1)
        })
    }

    fn runs_with_status(&self, status: RunStatus) -> Pending<Vec<Run>> {
        self.read(move |client| {
            query_runs(
                client,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = $1 ORDER BY id"),
                &[&status.as_str()],
            )
        })
    }

    fn queued_of(&self, principal: &str) -> Pending<u64> {
        let principal = principal.to_owned();
        self.read(move |client| queued_of(client, &principal))
    }

    fn lock(&self, key: &str) -> Pending<Option<Lock>> {
        let key = key.to_owned();
        self.read(move |client| {
            Ok(locks(client, "AND key = $2", &[&now_ms(), &key])?
                .into_iter()
                .next())
        })
    }

    fn locks(&self) -> Pending<Vec<Lock>> {
        self.read(|client| locks(client, "", &[&now_ms()]))
    }

    fn put_lock(&self, lock: &Lock) -> Pending<()> {
        let lock = lock.clone();
        self.write(Commit::Now, move |tx| {
            notify(tx, "r:")?;
            tx.execute(
                "INSERT INTO locks (key, owner, reason, created_ms, expires_ms) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, \
                   reason = excluded.reason, created_ms = excluded.created_ms, \
                   expires_ms = excluded.expires_ms",
                &[
                    &lock.key,
                    &lock.owner,
                    &lock.reason,
                    &lock.created_ms,
                    &lock.expires_ms,
                ],
            )?;
            Ok(())
        })
    }

    fn delete_lock(&self, key: &str) -> Pending<bool> {
        let key = key.to_owned();
        self.write(Commit::Now, move |tx| {
            notify(tx, "r:")?;
            Ok(tx.execute("DELETE FROM locks WHERE key = $1", &[&key])? == 1)
        })
    }

    fn add_token(&self, sha256_hex: &str, token: &TokenRecord) -> Pending<()> {
        let sha256_hex = sha256_hex.to_owned();
        let token = token.clone();
        self.write(Commit::Now, move |tx| {
            // The name is unique in the table, so two concurrent creations (two daemons, or
            // `shiphat token create` beside one) cannot both take it.
            let added = tx.execute(
                "INSERT INTO tokens (sha256, name, roles, patterns, created_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                &[
                    &sha256_hex,
                    &token.name,
                    &token.roles,
                    &token.patterns,
                    &token.created_ms,
                ],
            )?;
            if added == 0 {
                return Err(Error::NameTaken { name: token.name });
            }
            Ok(())
        })
    }

    fn token(&self, sha256_hex: &str) -> Pending<Option<TokenRecord>> {
        let sha256_hex = sha256_hex.to_owned();
        self.read(move |client| {
            client
                .query_opt(
                    "SELECT name, roles, patterns, created_ms FROM tokens WHERE sha256 = $1",
                    &[&sha256_hex],
                )?
                .as_ref()
                .map(token_from_row)
                .transpose()
        })
    }

    fn tokens(&self) -> Pending<Vec<TokenRecord>> {
        self.read(|client| {
            client
                .query(
                    "SELECT name, roles, patterns, created_ms FROM tokens \
                     ORDER BY name, created_ms",
                    &[],
                )?
                .iter()
                .map(token_from_row)
                .collect()
        })
    }

    fn delete_token(&self, name: &str) -> Pending<bool> {
        let name = name.to_owned();
        self.write(Commit::Now, move |tx| {
            tx.execute(
                "DELETE FROM sessions WHERE token_sha256 IN \
                 (SELECT sha256 FROM tokens WHERE name = $1)",
                &[&name],
            )?;
            Ok(tx.execute("DELETE FROM tokens WHERE name = $1", &[&name])? > 0)
        })
    }

    fn open_session(
        &self,
        session: &SessionRecord,
        max_total: u64,
        max_per_token: u64,
    ) -> Pending<bool> {
        let session = session.clone();
        self.write(Commit::Now, move |tx| {
            open_session(tx, &session, max_total, max_per_token)
        })
    }

    fn session(&self, id_sha256: &str, now_ms: i64) -> Pending<Option<SessionRecord>> {
        let id_sha256 = id_sha256.to_owned();
        self.read(move |client| {
            client
                .query_opt(
                    "SELECT token_sha256, created_ms, expires_ms FROM sessions \
                     WHERE id_sha256 = $1 AND expires_ms > $2",
                    &[&id_sha256, &now_ms],
                )?
                .map(|row| {
                    Ok(SessionRecord {
                        id_sha256: id_sha256.clone(),
                        token_sha256: row.try_get(0)?,
                        created_ms: row.try_get(1)?,
                        expires_ms: row.try_get(2)?,
                    })
                })
                .transpose()
        })
    }

    fn close_session(&self, id_sha256: &str) -> Pending<bool> {
        let id_sha256 = id_sha256.to_owned();
        self.write(Commit::Now, move |tx| {
            Ok(tx.execute("DELETE FROM sessions WHERE id_sha256 = $1", &[&id_sha256])? == 1)
        })
    }

    fn prune_sessions(&self, now_ms: i64) -> Pending<usize> {
        self.write(Commit::Now, move |tx| {
            Ok(tx.execute("DELETE FROM sessions WHERE expires_ms <= $1", &[&now_ms])? as usize)
        })
    }

    fn audit(&self, entry: &AuditEntry) -> Pending<()> {
        let entry = crate::capped(entry);
        self.write(Commit::Now, move |tx| {
            tx.execute(
                "INSERT INTO audit (at_ms, principal, action, target, remote, status, outcome) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &entry.at_ms,
                    &entry.principal,
                    &entry.action,
                    &entry.target,
                    &entry.remote,
                    &i32::from(entry.status),
                    &entry.outcome,
                ],
            )?;
            Ok(())
        })
    }

    fn audit_log(&self, limit: u32) -> Pending<Vec<AuditEntry>> {
        self.read(move |client| {
            client
                .query(
                    "SELECT at_ms, principal, action, target, remote, status, outcome \
                     FROM audit ORDER BY id DESC LIMIT $1",
                    &[&i64::from(limit)],
                )?
                .iter()
                .map(audit_from_row)
                .collect()
        })
    }

    fn audit_of(&self, action: &str, target: &str, limit: u32) -> Pending<Vec<AuditEntry>> {
        let (action, target) = (action.to_owned(), target.to_owned());
        self.read(move |client| {
            client
                .query(
                    "SELECT at_ms, principal, action, target, remote, status, outcome \
                     FROM audit WHERE target = $1 AND action = $2 ORDER BY id DESC LIMIT $3",
                    &[&target, &action, &i64::from(limit)],
                )?
                .iter()
                .map(audit_from_row)
                .collect()
        })
    }

    fn prune_audit(&self, before_ms: i64) -> Pending<usize> {
        self.write(Commit::Now, move |tx| {
            Ok(tx.execute("DELETE FROM audit WHERE at_ms < $1", &[&before_ms])? as usize)
        })
    }

    fn prune(&self, before_ms: i64) -> Pending<usize> {
        self.write(Commit::Now, move |tx| {
            Ok(tx.execute(
                "DELETE FROM runs WHERE status = ANY($2) AND finished_ms < $1",
                &[&before_ms, &names(&RunStatus::TERMINAL)],
            )? as usize)
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn watch(&self, notice: Box<dyn Fn(Notice) + Send + Sync>) -> Result<()> {
        let config = self.config.clone();
        let gone = self.gone.clone();
        std::thread::Builder::new()
            .name("shiphat-store-listen".into())
            .spawn(move || listen(&config, &gone, notice.as_ref()))
            .map(drop)
            .map_err(|source| Error::Open {
                path: "shiphat-store-listen thread".into(),
                source,
            })
    }

    /// What the schema's constraints cannot say: the schema's version is this build's, every
    /// ended run has an end time and every running one a start time, and every step's first
    /// event is there. `ok`, or what is wrong.
    fn integrity_check(&self) -> Pending<String> {
        self.read(|client| {
            let mut problems = Vec::new();
            let version = schema_version(client.live())?;
            if version != VERSION {
                problems.push(format!(
                    "schema version {version}, where this shiphat writes {VERSION}"
                ));
            }
            let checks: [(&str, Params<'_>, &str); 3] = [
                (
                    "SELECT count(*) FROM runs WHERE status = ANY($1) AND finished_ms IS NULL",
                    &[&names(&RunStatus::TERMINAL)],
                    "ended runs have no end time",
                ),
                (
                    "SELECT count(*) FROM runs WHERE status = $1 AND started_ms IS NULL",
                    &[&RunStatus::Running.as_str()],
                    "running runs have no start time",
                ),
                (
                    "SELECT count(*) FROM steps s WHERE NOT EXISTS \
                     (SELECT 1 FROM events e WHERE e.seq = s.seq AND e.run_id = s.run_id)",
                    &[],
                    "steps have lost the event that recorded them",
                ),
            ];
            for (sql, params, problem) in checks {
                let n = count(client, sql, params)?;
                if n > 0 {
                    problems.push(format!("{n} {problem}"));
                }
            }
            Ok(if problems.is_empty() {
                "ok".to_owned()
            } else {
                problems.join("; ")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    //! What only the PostgreSQL store has; the cases every store passes are in `tests.rs`.

    use super::{PgStore, VERSION};
    use crate::testing::Postgres;
    use crate::tests::{ANY, new_run};
    use ::postgres::fallible_iterator::FallibleIterator;
    use std::time::Duration;

    use crate::{Commit, Error, Location, Notice, RunStatus, Store};

    fn schema_versions(url: &str) -> Vec<i32> {
        let mut client = ::postgres::Client::connect(url, ::postgres::NoTls).unwrap();
        let rows = client
            .query("SELECT version FROM shiphat_schema", &[])
            .unwrap();
        rows.iter().map(|row| row.get(0)).collect()
    }

    #[test]
    fn daemons_starting_at_once_migrate_once() {
        let server = Postgres::shared();
        let url = server.database();
        let opened = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| PgStore::open(&url, None).map(drop)))
                .collect();
            starts
                .into_iter()
                .map(|start| start.join().unwrap())
                .collect::<Vec<_>>()
        });
        for result in opened {
            result.unwrap();
        }
        assert_eq!(schema_versions(&url), [VERSION as i32]);
    }

    #[test]
    fn daemons_sharing_a_queue_each_claim_an_even_part_of_a_burst() {
        let server = Postgres::shared();
        let store = PgStore::open(&server.database(), None).unwrap();
        let holds = crate::no_holds();
        let claim = |owner: &str| {
            let claimed = store.claim(owner, 60_000, 16, &holds).unwrap();
            claimed.started.len()
        };
        // Three daemons that claim (each does, every second), with nothing queued yet.
        for owner in ["a", "b", "c"] {
            assert_eq!(claim(owner), 0);
        }
        for i in 0..30 {
            store
                .create_run(&new_run(&format!("01{i:02}"), None), ANY)
                .unwrap();
        }
        // Whichever hears of the burst first takes its third, not the 16 a claim may take.
        assert_eq!(
            [claim("b"), claim("a"), claim("c"), claim("b")],
            [10, 10, 10, 0]
        );
        // A daemon that stops is no longer counted: of 36 runs, two daemons' share is 18
        // each (three daemons' would be 12, and `a` would take 2).
        store.release("c").unwrap();
        for i in 30..36 {
            store
                .create_run(&new_run(&format!("01{i:02}"), None), ANY)
                .unwrap();
        }
        assert_eq!([claim("a"), claim("b")], [6, 0]);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_as_it_is() {
        let server = Postgres::shared();
        let url = server.database();
        let store = PgStore::open(&url, None).unwrap();
        store.create_run(&new_run("01a", None), ANY).unwrap();
        drop(store);
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        client
            .execute(
                "UPDATE shiphat_schema SET version = $1",
                &[&(VERSION as i32 + 1)],
            )
            .unwrap();
        let refused = PgStore::open(&url, None)
            .err()
            .expect("a newer schema is refused");
        assert!(matches!(refused, Error::SchemaTooNew { .. }), "{refused:?}");
        let message = refused.to_string();
        assert!(
            message.contains("newer than this shiphat knows")
                && message.contains("point `store` at another database"),
            "{message}"
        );
        assert_eq!(schema_versions(&url), [VERSION as i32 + 1]);
        let runs: i64 = client
            .query_one("SELECT count(*) FROM runs", &[])
            .unwrap()
            .get(0);
        assert_eq!(runs, 1);
    }

    #[test]
    fn a_run_without_a_known_source_reads_as_unknown() {
        let server = Postgres::shared();
        let url = server.database();
        let store = PgStore::open(&url, None).unwrap();
        store.create_run(&new_run("01a", None), ANY).unwrap();
        store.create_run(&new_run("01b", None), ANY).unwrap();
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        // A run from before migration 007, and one with a source a newer shiphat added.
        client
            .execute("UPDATE runs SET source = NULL WHERE id = '01a'", &[])
            .unwrap();
        client
            .execute("UPDATE runs SET source = 'pager' WHERE id = '01b'", &[])
            .unwrap();
        assert_eq!(store.run("01a").unwrap().unwrap().source, None);
        assert_eq!(store.run("01b").unwrap().unwrap().source, None);
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_showing_it() {
        for url in [
            "postgres://shiphat:hunter2@db.example/shiphat",
            "postgresql://shiphat@db.example/shiphat?password=hunter2&sslmode=disable",
        ] {
            let Err(refused) = Location::server(url, None) else {
                panic!("`{url}` was taken");
            };
            let message = refused.to_string();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.contains("SHIPHAT_STORE_PASSWORD"), "{message}");
        }
        let Err(refused) = Location::server("mysql://shiphat@db.example/shiphat", None) else {
            panic!("a MySQL URL was taken");
        };
        assert!(refused.to_string().contains("not a PostgreSQL URL"));
        let location = Location::server("postgres://shiphat@db.example/shiphat", None).unwrap();
        assert_eq!(
            location.to_string(),
            "postgres://shiphat@db.example/shiphat"
        );
    }

    #[test]
    fn an_unreachable_server_is_named_in_the_error() {
        // A port nothing listens on; the password goes nowhere, and shows nowhere.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://shiphat@127.0.0.1:{port}/nothing");
        let refused = PgStore::open(&url, Some("secret")).err().unwrap();
        let message = refused.to_string();
        assert!(
            message.starts_with(&format!("cannot connect to the store at `{url}`")),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn a_store_is_opened_used_and_dropped_from_async_code() {
        // `shiphat serve` opens its store from its async main, and the client's own runtime
        // refused to start there: "cannot start a runtime from within a runtime".
        let server = Postgres::shared();
        let url = server.database();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = PgStore::open(&url, None).unwrap();
            let (run, created) = crate::AsyncStore::create_run(&store, &new_run("01a", None), ANY)
                .await
                .unwrap();
            assert!(created && run.status == RunStatus::Queued);
            drop(store);
        });
    }

    #[test]
    fn a_group_whose_events_cannot_be_written_commits_nothing_and_says_so() {
        // Events are written without savepoints, so a failure among them (here the function
        // that writes them is gone; in life a lost connection or a bug) fails their group.
        let server = Postgres::shared();
        let url = server.database();
        let store = PgStore::open(&url, None).unwrap();
        store.create_run(&new_run("01a", None), ANY).unwrap();
        let fence = crate::tests::start(&store, "01a");
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        client
            .batch_execute("DROP FUNCTION shiphat_append")
            .unwrap();
        let queue: &dyn crate::AsyncStore = &store;
        let before = queue.create_run(&new_run("01b", None), ANY);
        let events: Vec<_> = (0..4)
            .map(|_| queue.append_event("01a", &fence, "{}", None, Commit::Now))
            .collect();
        let after = queue.create_run(&new_run("01c", None), ANY);
        for event in events {
            let result = crate::wait(event);
            assert!(matches!(result, Err(Error::Commit { .. })), "{result:?}");
        }
        // A write that shared a group with them failed with them and left nothing; one that
        // did not committed. None is lost without a word.
        for (id, result) in [("01b", crate::wait(before)), ("01c", crate::wait(after))] {
            let there = store.run(id).unwrap().is_some();
            assert_eq!(there, result.is_ok(), "{id}: {result:?}");
            if let Err(e) = result {
                assert!(matches!(e, Error::Commit { .. }), "{e:?}");
            }
        }
        assert!(store.events("01a", 0, 10).unwrap().is_empty());
    }

    #[test]
    fn another_store_hears_of_every_run_whose_events_grew() {
        // The runs of a group's events are announced together, split where the list would
        // pass the server's limit on a notification: ids this long pass it at about 40 runs.
        let server = Postgres::shared();
        let url = server.database();
        let writer = PgStore::open(&url, None).unwrap();
        let listener = PgStore::open(&url, None).unwrap();
        let (heard, hear) = std::sync::mpsc::channel();
        crate::AsyncStore::watch(
            &listener,
            Box::new(move |notice| {
                if let Notice::Events(run) = notice {
                    let _ = heard.send(run);
                }
            }),
        )
        .unwrap();
        let ids: Vec<String> = (0..64).map(|i| format!("{i:0200}")).collect();
        for id in &ids {
            writer.create_run(&new_run(id, None), ANY).unwrap();
        }
        let fences = crate::tests::claim_all(&writer);
        // The listener listens once its connection is open; an event appended before that
        // is not heard, so the first is appended until it is.
        let first = &ids[0];
        for tries in 0.. {
            assert!(tries < 100, "the listener heard nothing in 10 s");
            writer
                .append_event(first, &fences[first], "{}", None, Commit::Now)
                .unwrap()
                .unwrap();
            if hear.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
        }
        while hear.try_recv().is_ok() {}
        // Queued at once, so that they share groups.
        let queue: &dyn crate::AsyncStore = &writer;
        let appended: Vec<_> = ids
            .iter()
            .map(|id| queue.append_event(id, &fences[id], "{}", None, Commit::Now))
            .collect();
        for append in appended {
            crate::wait(append).unwrap().unwrap();
        }
        let mut unheard: std::collections::HashSet<&String> = ids.iter().collect();
        while !unheard.is_empty() {
            let run = hear
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("{} runs unheard", unheard.len()));
            unheard.remove(&run);
        }
    }

    /// One event of a call of `shiphat_append` or `shiphat_append_each`, as the SQL takes it.
    struct RawEvent {
        run: String,
        owner: &'static str,
        epoch: i64,
        body: String,
        kind: Option<&'static str>,
        step: Option<&'static str>,
        status: Option<&'static str>,
        attempts: Option<i32>,
    }

    /// Calls `function` with `events` on `client`: its answer, and the notifications the call
    /// sent (the client listens, and a session hears its own notifications at the commit).
    fn call_append(
        client: &mut ::postgres::Client,
        function: &str,
        events: &[RawEvent],
        at_ms: i64,
    ) -> (Vec<i64>, Vec<String>) {
        let column = |f: &dyn Fn(&RawEvent) -> Option<String>| -> Vec<Option<String>> {
            events.iter().map(f).collect()
        };
        let finished = |e: &RawEvent| e.kind == Some("finished");
        let answer: Vec<i64> = client
            .query_one(
                &format!(
                    "SELECT {function}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                     $14, $15)"
                ),
                &[
                    &column(&|e| Some(e.run.clone())),
                    &column(&|e| Some(e.owner.to_owned())),
                    &events.iter().map(|e| e.epoch).collect::<Vec<_>>(),
                    &column(&|e| Some(e.body.clone())),
                    &column(&|e| e.kind.map(str::to_owned)),
                    &column(&|e| e.step.map(str::to_owned)),
                    &column(&|e| e.kind.map(|_| "steps".to_owned())),
                    &column(&|e| e.status.map(str::to_owned)),
                    &events.iter().map(|e| e.attempts).collect::<Vec<_>>(),
                    &events
                        .iter()
                        .map(|e| finished(e).then_some(1.5))
                        .collect::<Vec<_>>(),
                    &column(&|e| finished(e).then(|| format!("summary of {}", e.body))),
                    &column(&|e| finished(e).then(|| format!("{{\"at\":\"{}\"}}", e.body))),
                    &column(&|e| finished(e).then(|| "null".to_owned())),
                    &events
                        .iter()
                        .map(|e| finished(e).then_some(e.body.len() % 2 == 0))
                        .collect::<Vec<_>>(),
                    &at_ms,
                ],
            )
            .unwrap()
            .get(0);
        let heard = client
            .notifications()
            .iter()
            .map(|n| Ok(n.payload().to_owned()))
            .collect()
            .unwrap();
        (answer, heard)
    }

    /// What a database holds of runs' events and steps, as text to compare.
    fn appended(client: &mut ::postgres::Client) -> Vec<String> {
        client
            .query(
                "SELECT row_to_json(e)::text FROM (SELECT * FROM events ORDER BY seq) e \
                 UNION ALL SELECT * FROM (SELECT row_to_json(s)::text FROM \
                 (SELECT * FROM steps ORDER BY run_id, step) s) s",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    #[test]
    fn the_set_based_append_answers_and_writes_what_the_loop_does() {
        // Migration 008 writes a call's events with set-based statements where 006 looped
        // over them (that loop is kept as `shiphat_append_each`). The same calls, made on two
        // databases in the same state, one through each, must answer, write and announce the
        // same: fences that hold, are stale, have expired or whose run is not running, steps
        // started, started again after an interruption, ended, ended twice, or ended without
        // a start (skipped), several runs per call, and run ids long enough that one call's
        // announcement is split.
        let server = Postgres::shared();
        let mut clients: Vec<::postgres::Client> = (0..2)
            .map(|_| {
                let url = server.database();
                drop(PgStore::open(&url, None).unwrap());
                let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
                // Counted, so that the test knows which calls the set-based statements answered.
                client
                    .batch_execute("LISTEN shiphat; SET track_functions = 'pl'")
                    .unwrap();
                client
            })
            .collect();
        let runs: Vec<String> = (0..6)
            .map(|r| format!("run{r}-{}", "x".repeat(if r < 3 { 3000 } else { 10 })))
            .collect();
        // Runs 0 to 2 are `me`'s at epoch 1, run 3 another daemon's, run 4's lease has run
        // out, run 5 is still queued.
        let setup = |client: &mut ::postgres::Client| {
            for (r, run) in runs.iter().enumerate() {
                let (status, owner, expires) = match r {
                    0..=2 => ("running", "me", i64::MAX),
                    3 => ("running", "other", i64::MAX),
                    4 => ("running", "me", 1),
                    _ => ("queued", "me", i64::MAX),
                };
                client
                    .execute(
                        "INSERT INTO runs (id, workflow, inputs, principal, dry_run, status, \
                         created_ms, started_ms, lease_owner, lease_expires_ms, lease_epoch) \
                         VALUES ($1, 'w', '{}', 'p', false, $2, 0, 0, $3, $4, $5)",
                        &[
                            &run,
                            &status,
                            &owner,
                            &expires,
                            &(if r == 3 { 2i64 } else { 1 }),
                        ],
                    )
                    .unwrap();
            }
            client
                .execute(
                    "INSERT INTO events (run_id, body) VALUES ($1, 'before')",
                    &[&runs[0]],
                )
                .unwrap();
            for (step, status, finished) in [
                ("a", "running", None),
                ("b", "succeeded", Some(5i64)),
                ("c", "interrupted", None),
            ] {
                client
                    .execute(
                        "INSERT INTO steps (run_id, step, section, status, attempts, \
                         started_ms, finished_ms, seq) VALUES ($1, $2, 'steps', $3, 1, 2, $4, 1)",
                        &[&runs[0], &step, &status, &finished],
                    )
                    .unwrap();
            }
        };
        for client in &mut clients {
            setup(client);
        }
        // A small linear congruential generator: the same calls on every run of the test.
        let mut state: u64 = 17;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let steps = ["a", "b", "c", "d", "e", "f"];
        let (mut looped_calls, mut large_with_a_step_twice, mut split) = (0i64, 0, 0);
        let mut answers = std::collections::HashSet::new();
        for call in 0..300 {
            let events: Vec<RawEvent> = (0..1 + next(14))
                .map(|e| {
                    let run = runs[match next(10) {
                        r @ 0..=5 => r as usize,
                        _ => next(3) as usize,
                    }]
                    .clone();
                    let (owner, epoch) = match next(12) {
                        0 => ("me", 2),
                        1 => ("other", 2),
                        _ => ("me", 1),
                    };
                    let kind = [None, Some("started"), Some("finished")][next(3) as usize];
                    RawEvent {
                        run,
                        owner,
                        epoch,
                        body: format!("{{\"call\":{call},\"event\":{e}}}"),
                        kind,
                        step: kind.map(|_| steps[next(6) as usize]),
                        status: (kind == Some("finished"))
                            .then(|| ["succeeded", "failed", "skipped"][next(3) as usize]),
                        attempts: kind.map(|_| 1 + next(3) as i32),
                    }
                })
                .collect();
            let keys: std::collections::HashSet<_> = events
                .iter()
                .filter(|e| e.kind.is_some())
                .map(|e| (&e.run, e.step))
                .collect();
            // The set-based statements leave to the loop a call of a step written twice, and
            // one of fewer than four events.
            let twice = keys.len() < events.iter().filter(|e| e.kind.is_some()).count();
            if events.len() < 4 || twice {
                looped_calls += 1;
            }
            large_with_a_step_twice += usize::from(events.len() >= 4 && twice);
            // Halfway, another daemon takes run 1 over: `me`'s fence on it goes stale.
            if call == 150 {
                for client in &mut clients {
                    client
                        .execute(
                            "UPDATE runs SET lease_owner = 'other', lease_epoch = 2 \
                             WHERE id = $1",
                            &[&runs[1]],
                        )
                        .unwrap();
                }
            }
            let at_ms = 1000 + call;
            let looped = call_append(&mut clients[0], "shiphat_append_each", &events, at_ms);
            let set = call_append(&mut clients[1], "shiphat_append", &events, at_ms);
            assert_eq!(looped, set, "call {call}");
            split += usize::from(set.1.len() > 1);
            answers.extend(set.0.iter().map(|&answer| answer.clamp(-1, 1)));
        }
        let [looped, set] = &mut clients[..] else {
            unreachable!("two clients")
        };
        assert_eq!(appended(looped), appended(set));
        // The calls reached every path: the set-based statements, the loop for the calls
        // it is left (and only for those), every answer, a split announcement.
        set.batch_execute("SELECT pg_stat_force_next_flush()")
            .unwrap();
        let handed_to_the_loop: i64 = set
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions \
                 WHERE funcname = 'shiphat_append_each'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(handed_to_the_loop, looped_calls);
        assert!(
            (30..270).contains(&looped_calls) && large_with_a_step_twice > 0 && split > 0,
            "{looped_calls} calls were left to the loop ({large_with_a_step_twice} of four \
             events or more for a step written twice), {split} announcements were split"
        );
        assert_eq!(answers, [-1, 0, 1].into());
    }

    #[test]
    fn the_store_outlives_a_database_restart() {
        // Its own server: the restart would break the connections of every other test.
        let server = Postgres::start();
        let store = PgStore::open(&server.database(), None).unwrap();
        store.create_run(&new_run("01a", None), ANY).unwrap();
        server.restart();
        // Every thread finds its connection gone and opens another, once.
        for _ in 0..4 {
            assert_eq!(store.run("01a").unwrap().unwrap().status, RunStatus::Queued);
        }
        crate::tests::start(&store, "01a");
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }
}
