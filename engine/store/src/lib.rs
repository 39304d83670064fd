//! shiphat's durable state: run history (runs, their steps and their events), deploy locks,
//! API tokens, the web page's sessions and the audit log, behind one narrow interface,
//! [`AsyncStore`].
//!
//! Every method of [`AsyncStore`] returns at once with a [`Pending`] future: the work is queued
//! when the method is called (so writes apply in the order of the calls) and done on threads of
//! the store's own, never on the caller's. A caller on an async runtime therefore never blocks
//! on the disk, and holds no lock while it waits. [`Store`] is the same interface, blocking, for
//! tools and tests that run outside a runtime (`shiphat token create`, a test reading the
//! database after a crash).
//!
//! [`SqliteStore`] keeps it in one embedded SQLite file in WAL mode with `synchronous=FULL`:
//! a write's future resolves once the write is on disk, so a caller that awaits a step's start
//! before starting it gets that order across a crash or power loss. Concurrent writes share a
//! transaction and its fsync (group commit, see `sqlite.rs`), and a write that need not be on
//! disk yet ([`Commit::Soon`]: a log line, a step's end that the next step's start will carry)
//! waits a moment for company. [`PgStore`] keeps it in a PostgreSQL database, which several
//! daemons can share (`postgres.rs`). Either way the schema has a version: an older database is
//! migrated when it is opened, a newer one refused. [`open`] opens the store a [`Location`]
//! names; nothing above this crate names SQLite or PostgreSQL.
//!
//! The store knows nothing of workflows, plugins or HTTP: events are opaque JSON text, inputs
//! and outputs are JSON values, and times are milliseconds since the Unix epoch. Statuses,
//! sections and step errors are the wire contract's types (`shiphat_protocol`), stored as the
//! names the API uses.

mod approval;
mod claim;
mod postgres;
mod sqlite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
mod threads;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde_json::Value;

pub use crate::approval::{Applied, Approval, Decide, Outcome, VoteRecord, apply};
pub use crate::claim::{Claimed, Fence, Held, KeyQueue, Scope};
pub use crate::postgres::PgStore;
pub use crate::sqlite::SqliteStore;
/// The statuses the store keeps are the wire contract's; they are named here too because the
/// store's interface speaks of them.
pub use shiphat_protocol::{RunSource, RunStatus, Section, StepError, StepState};

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed an operation.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The PostgreSQL server refused or failed an operation, or the connection broke.
    #[error("postgresql: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The PostgreSQL server could not be reached, or refused to let shiphat in.
    #[error("cannot connect to the store at `{database}`: {source}")]
    Connect {
        database: String,
        source: ::postgres::Error,
    },
    /// A store URL that is not one, or that holds a password.
    #[error("store URL `{url}`: {message}")]
    Url { url: String, message: String },
    /// The data directory or database file could not be created.
    #[error("cannot open the store at `{path}`: {source}")]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A step's end was recorded when it was already recorded as ended: a bug in the caller,
    /// refused so that no step is ever recorded complete twice.
    #[error("step `{step}` of run `{run}` is already recorded as finished")]
    StepAlreadyFinished { run: String, step: String },
    /// The transaction holding a write did not commit (or the thread committing writes is
    /// gone); nothing of the write is on disk.
    #[error("cannot commit to the store: {message}")]
    Commit { message: String },
    /// A token was added under a name another token already has. Runs and locks belong to a
    /// principal by name, so two principals of one name could act on each other's runs.
    #[error(
        "a token named `{name}` exists; delete it first (`shiphat token delete {name}`) or pick another name"
    )]
    NameTaken { name: String },
    /// The database was written by a newer shiphat, whose schema this one does not know.
    #[error(
        "the database `{path}` has schema version {found}, newer than this shiphat knows ({supported}); run the shiphat that wrote it, or point `--data-dir` at another directory"
    )]
    TooNew {
        path: std::path::PathBuf,
        found: i64,
        supported: i64,
    },
    /// The PostgreSQL database was written by a newer shiphat, whose schema this one does not
    /// know.
    #[error(
        "the database `{database}` has schema version {found}, newer than this shiphat knows ({supported}); run the shiphat that wrote it, or point `store` at another database"
    )]
    SchemaTooNew {
        database: String,
        found: i64,
        supported: i64,
    },
    /// A run that does not queue (`queue: false`) was asked for while another run of its
    /// concurrency key is queued or running.
    #[error("concurrency key `{key}` is busy with run `{holder}`")]
    KeyBusy { key: String, holder: String },
    /// A principal asked for another run while it has `max` runs queued already.
    #[error("`{principal}` has {max} runs queued already")]
    TooManyQueued { principal: String, max: u64 },
    /// A stored value is not what this version of shiphat writes.
    #[error("corrupt record in `{table}`: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a store keeps its data.
pub enum Location {
    /// An embedded database in this file, created with its directory when missing.
    File(PathBuf),
    /// A database server: its URL, which holds no password (see [`Location::server`]), and
    /// the password.
    Server {
        url: String,
        password: Option<String>,
    },
}

impl Location {
    /// The database server at `url` (`postgres://USER@HOST[:PORT]/DATABASE`). Refused
    /// ([`Error::Url`]) when it is not such a URL, or when it holds a password: a password
    /// in a URL shows in the process list, in shell history and in logs, so it comes apart.
    pub fn server(url: &str, password: Option<String>) -> Result<Location> {
        crate::postgres::parse_url(url)?;
        Ok(Location::Server {
            url: url.to_owned(),
            password,
        })
    }
}

impl std::fmt::Display for Location {
    /// The file's path or the server's URL (which holds no password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::Server { url, .. } => f.write_str(url),
        }
    }
}

/// Opens the store at `location`: [`SqliteStore`] for a file, [`PgStore`] for a server.
pub fn open(location: &Location) -> Result<Box<dyn AsyncStore>> {
    Ok(match location {
        Location::File(path) => Box::new(SqliteStore::open(path)?),
        Location::Server { url, password } => Box::new(PgStore::open(url, password.as_deref())?),
    })
}

/// Whether the daemon holds a queued run now, asked by a claim of each run it would start:
/// given the run's workflow, its concurrency key and whether deploy windows pass it (`exempt`:
/// a forced run or a dry run), the detail to give the run while it waits ("waits for the
/// deploy window: …", "waits for its plugins to compile"), or `None` when it may start. The
/// windows and the plugins are the daemon's, not the store's: a run accepted inside its window
/// may reach the front of its queue after the window closed, and must not start then; and a
/// daemon still compiling a workflow's plugins leaves its runs to a daemon that has them, or
/// to itself once it does.
pub type HoldCheck =
    std::sync::Arc<dyn Fn(&str, Option<&str>, bool) -> Option<String> + Send + Sync>;

/// A [`HoldCheck`] that holds nothing: a daemon without windows, and the tests.
pub fn no_holds() -> HoldCheck {
    std::sync::Arc::new(|_, _, _| None)
}

/// A run to record, as accepted by the daemon.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub id: String,
    pub workflow: String,
    pub inputs: Value,
    pub principal: String,
    /// The front end it was started from.
    pub source: RunSource,
    pub dry_run: bool,
    pub concurrency_key: Option<String>,
    /// With the principal, makes a retried request return the run it created first.
    pub idempotency_key: Option<String>,
    /// Refused ([`Error::KeyBusy`]) rather than queued when another run of its concurrency
    /// key is queued or running (the workflow's `queue: false`).
    pub exclusive: bool,
    /// An admin forced it past the locks: no lock holds its first start.
    pub forced: bool,
    /// Not started before this time (milliseconds since the Unix epoch): a run that waits
    /// for its deploy window. It holds no place in its key's queue until then.
    pub not_before_ms: Option<i64>,
}

impl NewRun {
    /// The run as recorded when created at `created_ms`: `queued`.
    fn queued(&self, created_ms: i64) -> Run {
        Run {
            id: self.id.clone(),
            workflow: self.workflow.clone(),
            inputs: self.inputs.clone(),
            principal: self.principal.clone(),
            source: Some(self.source),
            dry_run: self.dry_run,
            concurrency_key: self.concurrency_key.clone(),
            idempotency_key: self.idempotency_key.clone(),
            status: RunStatus::Queued,
            detail: None,
            created_ms,
            started_ms: None,
            finished_ms: None,
            daemon: None,
        }
    }
}

/// A recorded run.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: String,
    pub workflow: String,
    pub inputs: Value,
    pub principal: String,
    /// The front end it was started from; `None` for a run written before the store kept it
    /// (schema 7), or by a newer shiphat with a source this one does not know.
    pub source: Option<RunSource>,
    pub dry_run: bool,
    pub concurrency_key: Option<String>,
    pub idempotency_key: Option<String>,
    pub status: RunStatus,
    /// Why the run is where it is, when that needs saying (e.g. the step in flight when it
    /// was interrupted, who resumed it, the lock that holds it, who cancelled it): each change
    /// of state adds to it, in order, after `; `.
    pub detail: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// While the run is `running`: the daemon whose lease holds it (`HOST:PID:RANDOM`).
    pub daemon: Option<String>,
}

/// A step as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    pub step: String,
    pub section: Section,
    pub status: StepState,
    pub attempts: u32,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub duration_ms: Option<f64>,
    pub summary: String,
    pub outputs: Value,
    pub error: Option<StepError>,
    pub continued: bool,
}

/// What an event changes besides the event log: a step's record, or the run's status.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per event, made and written at once; boxing `StepFinished` would allocate for nothing"
)]
pub enum Change {
    StepStarted {
        step: String,
        section: Section,
        attempt: u32,
    },
    /// Refused ([`Error::StepAlreadyFinished`]) when the step is already recorded as ended.
    StepFinished {
        step: String,
        section: Section,
        status: StepState,
        attempts: u32,
        duration_ms: f64,
        summary: String,
        outputs: Value,
        error: Option<StepError>,
        continued: bool,
    },
    /// The run's last event: the run moves from `running` to `status` (a terminal one) in the
    /// same transaction, `detail` added to what its detail says.
    RunEnded {
        status: RunStatus,
        detail: Option<String>,
    },
}

/// When a write must be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// As soon as possible: its future resolves once it is durable, with every write queued
    /// before it.
    Now,
    /// Soon: it waits up to [`SOON`] for other writes to share its commit, and commits with
    /// the first [`Commit::Now`] write queued after it. For what must be on disk before
    /// something that follows it, not before the caller goes on: a log line, a step's end
    /// (the next step's start carries it).
    Soon,
}

/// How long a [`Commit::Soon`] write may wait for company. Writes that are waited for cut it
/// short, so what it costs is only the delay before readers see a lone log line or the end of
/// a step that nothing follows at once: a hundredth of a second is below what a person or a
/// stream notices, and spans the fsync of most disks, whose commits it saves.
pub const SOON: std::time::Duration = std::time::Duration::from_millis(10);

/// A change another daemon committed (see [`AsyncStore::watch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A run's events grew.
    Events(String),
    /// A run was queued, started, ended, interrupted or asked to cancel, or a lock changed
    /// (`None`): what may let a queued run start, or stop a running one.
    Run(Option<String>),
}

/// A run found running by [`AsyncStore::interrupt_running`], now `interrupted`.
#[derive(Clone, Debug, PartialEq)]
pub struct Interrupted {
    pub run: String,
    pub workflow: String,
    /// The steps that had started and not ended.
    pub in_flight: Vec<String>,
}

/// Which runs to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    /// Only runs older than this run id (ids sort by creation time): the paging cursor.
    pub before: Option<String>,
    pub limit: u32,
}

/// A deploy lock on a concurrency key.
#[derive(Clone, Debug, PartialEq)]
pub struct Lock {
    pub key: String,
    pub owner: String,
    pub reason: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
}

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRecord {
    pub name: String,
    pub roles: Vec<String>,
    pub patterns: Vec<String>,
    pub created_ms: i64,
}

/// A browser signed in to the web page. Only hashes are kept: whoever reads the database
/// learns neither a session id nor the token it stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    /// The SHA-256 of the session id (hex); the id itself is only in the browser's cookie.
    pub id_sha256: String,
    /// The SHA-256 of the token it signed in with (hex). It is a token of the database or of
    /// the daemon's config file, so nothing ties it to [`AsyncStore::token`]: the daemon looks
    /// the principal up from it on every request.
    pub token_sha256: String,
    pub created_ms: i64,
    pub expires_ms: i64,
}

/// The most bytes the audit log keeps of any one field of an entry. A path, a lock key, an
/// error naming a value: 1 KiB holds any real one whole, and an entry a client makes up (a
/// 60 KB path, sent by anyone, authenticated or not) cannot cost more than a few KiB.
pub const MAX_AUDIT_FIELD: usize = 1024;

/// `text` cut to at most `max` bytes on a character boundary, with `…` and how many bytes
/// were left out.
pub fn cap(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end).into()
}

/// `entry` with each text field cut to [`MAX_AUDIT_FIELD`] bytes, as every store keeps it.
fn capped(entry: &AuditEntry) -> AuditEntry {
    let capped = |text: &str| cap(text, MAX_AUDIT_FIELD).into_owned();
    AuditEntry {
        principal: entry.principal.as_deref().map(capped),
        action: capped(&entry.action),
        target: capped(&entry.target),
        remote: capped(&entry.remote),
        outcome: capped(&entry.outcome),
        ..entry.clone()
    }
}

/// `from` without `running`, or nothing when `to` is `running`: [`AsyncStore::transition`]
/// never moves a run into or out of `running`, which only claims, last events and
/// interruptions do, each checked against the run's lease.
fn not_running(from: &[RunStatus], to: RunStatus) -> Vec<RunStatus> {
    if to == RunStatus::Running {
        return Vec::new();
    }
    from.iter()
        .copied()
        .filter(|s| *s != RunStatus::Running)
        .collect()
}

/// An interrupted run's detail, naming the steps that were in flight.
fn interrupted_detail(in_flight: &[String]) -> String {
    if in_flight.is_empty() {
        "interrupted between steps".to_owned()
    } else {
        format!("interrupted during step `{}`", in_flight.join("`, `"))
    }
}

/// A JSON value as a store keeps it, in `table`.
fn json(text: &str, table: &'static str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt {
        table,
        message: e.to_string(),
    })
}

/// One mutating call, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// `None` when the caller could not be identified.
    pub principal: Option<String>,
    /// E.g. `POST /api/v1/runs`.
    pub action: String,
    /// What the call was about: a run id, a lock key, a workflow.
    pub target: String,
    pub remote: String,
    /// The HTTP status answered.
    pub status: u16,
    /// A word or sentence on the outcome, e.g. `accepted`, `forced past lock`, an error.
    pub outcome: String,
}

/// Work queued in the store: resolves with its result once done (for a write, once durable).
/// The work is queued when the method returns it, whether or not the future is ever polled;
/// dropping the future only drops the result. A store's futures need no particular runtime:
/// the store does its IO on threads of its own.
pub type Pending<T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'static>>;

/// Declares [`AsyncStore`] and its blocking twin [`Store`] from one list of methods, each
/// written once with what it resolves to: the two cannot drift apart.
macro_rules! interface {
    ($(
        $(#[$doc:meta])*
        fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $out:ty;
    )*) => {
        /// The one interface the daemon sees of its durable state. Every method is atomic
        /// and returns a [`Pending`] at once; writes apply in the order of the calls. A write
        /// is durable when its future resolves (for [`AsyncStore::append_event`], see
        /// [`Commit`]).
        ///
        /// Runs change state only by compare-and-set ([`AsyncStore::transition`] moves a run
        /// only from the states it names, [`AsyncStore::append_event`] writes only to a
        /// `running` run), so a store shared by several daemons can fence a run to its owner
        /// by adding the owner's lease to what is compared, without changing a caller.
        pub trait AsyncStore: Send + Sync + 'static {
            $(
                $(#[$doc])*
                fn $name(&self $(, $arg: $ty)*) -> Pending<$out>;
            )*

            /// Whether other daemons may share this store (a database server), so that a run
            /// found running may be another daemon's, alive: then only expired leases are
            /// taken over. An embedded file is one daemon's.
            fn shared(&self) -> bool;

            /// Calls `notice` with each change another process of the store committed (and
            /// maybe this one's too), from a thread of the store's own, until the store is
            /// dropped: how a daemon hears of runs that other daemons queued, ended or were
            /// asked to cancel, and of their events, without polling. An embedded store has no
            /// other writer and never calls it.
            fn watch(&self, notice: Box<dyn Fn(Notice) + Send + Sync>) -> Result<()>;
        }

        /// [`AsyncStore`], blocking: each call waits for its result on the calling thread. For
        /// tools and tests outside an async runtime; on a runtime's worker it would stall every
        /// task there.
        pub trait Store {
            $(
                $(#[$doc])*
                fn $name(&self $(, $arg: $ty)*) -> Result<$out>;
            )*
        }

        impl<S: AsyncStore + ?Sized> Store for S {
            $(
                fn $name(&self $(, $arg: $ty)*) -> Result<$out> {
                    wait(AsyncStore::$name(self $(, $arg)*))
                }
            )*
        }
    };
}

interface! {
    /// Records a new run as `queued`. When the principal already created a run with the same
    /// idempotency key, returns that run instead and `false`. Refuses
    /// ([`Error::TooManyQueued`]) a new run of a principal that has `max_queued` queued
    /// already, counted in the same transaction, so concurrent requests cannot all slip under;
    /// and ([`Error::KeyBusy`]) an `exclusive` run whose key another run holds or waits for,
    /// checked under a lock on the key, so two daemons cannot both find it free.
    fn create_run(&self, run: &NewRun, max_queued: u64) -> (Run, bool);
    fn run(&self, id: &str) -> Option<Run>;
    fn steps(&self, run: &str) -> Vec<StepRecord>;
    fn list_runs(&self, filter: &RunFilter) -> Vec<Run>;
    /// Moves a run to `to` if it is in one of `from`; resolves to whether it moved. Entering
    /// a terminal status sets its end time. `detail` is added to what the run's detail says
    /// (after `; `); nothing a detail says is ever removed. A run never enters or leaves
    /// `running` this way, which `from` and `to` must not name: a run starts only by
    /// [`AsyncStore::claim`], and ends only with its last event or by
    /// [`AsyncStore::interrupt_running`], each checked against its owner's lease.
    fn transition(
        &self,
        run: &str,
        from: &[RunStatus],
        to: RunStatus,
        detail: Option<&str>,
    ) -> bool;
    /// Appends an event to a running run, with what it changes, and resolves to the event's
    /// sequence number; `None` (and nothing written) unless the run is `running` under
    /// `fence`, its lease not expired by the database's clock: a daemon that lost the run (it
    /// was paused past its lease and another daemon took the run over, or a shutdown marked
    /// it interrupted) writes nothing more to it. Logs are not part of the durability
    /// contract: a crash may lose those written since the last write that was waited for.
    fn append_event(
        &self,
        run: &str,
        fence: &Fence,
        event: &str,
        change: Option<&Change>,
        commit: Commit,
    ) -> Option<i64>;
    /// The events of a run after sequence number `after`, in order, at most `limit`.
    fn events(&self, run: &str, after: i64, limit: u32) -> Vec<(i64, String)>;
    /// Marks the `running` runs in `scope` `interrupted`, and their steps in flight too: what
    /// a daemon does with the runs it finds when it starts alone on a store
    /// ([`Scope::All`]), with its own when it stops ([`Scope::Owner`]), and with those whose
    /// owner stopped renewing its lease ([`Scope::Expired`]).
    fn interrupt_running(&self, scope: &Scope) -> Vec<Interrupted>;
    /// Starts queued runs for `owner`, under a lease of `ttl_ms`: the oldest first, at most
    /// `max`, each only when no lock holds it (unless forced), no run of its concurrency key
    /// is running and none queued before it waits (FIFO per key, across every daemon of the
    /// store). Runs a lock holds get the lock named in their detail once. Resolves to the
    /// runs started, with their fences, and where every key's queue stands.
    ///
    /// `windows` says which runs the daemon holds now, for their deploy window or their
    /// plugins (see [`HoldCheck`]): they wait like runs a lock holds.
    fn claim(&self, owner: &str, ttl_ms: i64, max: u32, windows: &HoldCheck) -> Claimed;
    /// Extends by `ttl_ms` the leases `owner` still holds (running, not expired by the
    /// database's clock), and resolves to them, with the cancels asked of each. A run of the
    /// owner's missing from the answer is no longer its to run.
    fn renew(&self, owner: &str, ttl_ms: i64) -> Vec<Held>;
    /// Ends the leases of `owner` now, so that another daemon takes its runs over at once
    /// rather than when they would expire: a daemon that stops hands its runs over this way.
    fn release(&self, owner: &str) -> usize;
    /// Asks the owner of a running run to cancel it (a second ask aborts its safety net
    /// too); `by` is what the run's detail says when it ends cancelled. Resolves to whether
    /// the run was running.
    fn request_cancel(&self, run: &str, by: &str) -> bool;
    /// Queues an interrupted run again, with `detail`; `forced` lets its next start pass the
    /// locks. Resolves to whether it was interrupted.
    fn requeue(&self, run: &str, detail: &str, forced: bool) -> bool;
    /// Records that a run's approval step asks, unless it asked before (a run resumed after a
    /// restart): resolves to the approval as stored, whose `since_ms` and `deadline_ms` are
    /// those of the first ask, and which may be decided already.
    fn open_approval(&self, approval: &Approval) -> Approval;
    /// Applies `change` to the approval of `run`'s `step` ([`apply`], under its row's lock) and
    /// resolves to what it did and the approval after it; `None` when there is no such
    /// approval. A change that decides it is announced as a change of the run.
    fn decide(&self, run: &str, step: &str, change: &Decide) -> Option<(Applied, Approval)>;
    /// A run's approvals, in the order they were asked.
    fn approvals(&self, run: &str) -> Vec<Approval>;
    /// Every approval not decided yet of every run that is running, oldest first.
    fn open_approvals(&self) -> Vec<Approval>;
    /// Runs in a status, oldest first.
    fn runs_with_status(&self, status: RunStatus) -> Vec<Run>;
    /// How many runs of `principal` are `queued`.
    fn queued_of(&self, principal: &str) -> u64;

    fn lock(&self, key: &str) -> Option<Lock>;
    fn locks(&self) -> Vec<Lock>;
    /// Creates or replaces a lock.
    fn put_lock(&self, lock: &Lock) -> ();
    /// Resolves to whether there was a lock to delete.
    fn delete_lock(&self, key: &str) -> bool;

    /// Stores a token by the SHA-256 of its secret (hex); the secret itself is never stored.
    /// Refuses ([`Error::NameTaken`]) a name another token has: a principal is its name.
    fn add_token(&self, sha256_hex: &str, token: &TokenRecord) -> ();
    fn token(&self, sha256_hex: &str) -> Option<TokenRecord>;
    /// Every stored token (never their secrets), by name.
    fn tokens(&self) -> Vec<TokenRecord>;
    /// Deletes the tokens named `name`, and the sessions signed in with them; resolves to
    /// whether there was one.
    fn delete_token(&self, name: &str) -> bool;

    /// Records a new session, in one transaction with what makes room for it, judging expiry
    /// at `session.created_ms`: the token's expired sessions go, and its oldest live ones
    /// until it holds fewer than `max_per_token` (never another token's); then, when
    /// `max_total` sessions or more are kept, every expired one. Resolves to `false`, the
    /// session not recorded, when that still leaves `max_total` or more. Within one store the
    /// caps are exact (its writes take turns). Daemons sharing a database take no lock for it
    /// (one held to their group's commit could deadlock with the locks that admit runs), so
    /// sessions opened on several at the same moment may pass a cap by one per daemon: a
    /// bound still, and the token's next sign-in trims its own back.
    fn open_session(&self, session: &SessionRecord, max_total: u64, max_per_token: u64) -> bool;
    /// The session whose id has this SHA-256, unless it has expired by `now_ms`.
    fn session(&self, id_sha256: &str, now_ms: i64) -> Option<SessionRecord>;
    /// Ends a session; resolves to whether there was one.
    fn close_session(&self, id_sha256: &str) -> bool;
    /// Deletes the sessions expired by `now_ms`; resolves to how many went.
    fn prune_sessions(&self, now_ms: i64) -> usize;

    /// Appends an entry, each text field cut to [`MAX_AUDIT_FIELD`] bytes.
    fn audit(&self, entry: &AuditEntry) -> ();
    /// The newest entries first.
    fn audit_log(&self, limit: u32) -> Vec<AuditEntry>;
    /// The newest entries with this `action` and `target` first: one thing's history (a
    /// workflow's reloads), for readers the whole log is not for.
    fn audit_of(&self, action: &str, target: &str, limit: u32) -> Vec<AuditEntry>;
    /// Deletes the audit entries written before `before_ms`; resolves to how many went.
    fn prune_audit(&self, before_ms: i64) -> usize;

    /// Deletes terminal runs that finished before `before_ms`, with their steps and events.
    /// Resolves to how many runs went.
    fn prune(&self, before_ms: i64) -> usize;
    /// The store's own consistency check; `ok` when all is well.
    fn integrity_check(&self) -> String;
}

/// Runs a store's future to its end on this thread, parking it until the store's thread wakes
/// it. Enough for [`Pending`], which only waits for another thread.
fn wait<T>(mut pending: Pending<T>) -> Result<T> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(result) = pending.as_mut().poll(&mut context) {
            return result;
        }
        std::thread::park();
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch as RFC 3339 in UTC, the form the API and the events use.
pub fn rfc3339(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}
