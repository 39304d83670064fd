//! shiphat's durable state: run history (runs, their steps and their events), deploy locks,
//! API tokens and the audit log, behind one narrow interface, [`Store`].
//!
//! [`SqliteStore`] keeps it in one embedded SQLite file in WAL mode with `synchronous=FULL`:
//! every write is on disk when the call returns, so a caller that writes a step's start before
//! starting it and its end before starting the next gets that order across a crash or power
//! loss. Concurrent writes share a transaction and its fsync (group commit, see
//! `sqlite.rs`), which is what lets many runs go at once without queueing for the disk. A PostgreSQL store for several daemons sharing work is
//! meant to implement the same trait; nothing above this crate names SQLite.
//!
//! The store knows nothing of workflows, plugins or HTTP: events are opaque JSON text, inputs
//! and outputs are JSON values, and times are milliseconds since the Unix epoch.

mod sqlite;

use serde_json::Value;

pub use crate::sqlite::SqliteStore;

/// Why the store could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed an operation.
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
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
    /// A stored value is not what this version of shiphat writes.
    #[error("corrupt record in `{table}`: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a run is. `Queued` and `Interrupted` wait; `Running` is in progress; the others are
/// terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Accepted, waiting for its concurrency key or for the daemon to start it.
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon stopped (crash or shutdown) while it ran; waits for `resume` or `cancel`,
    /// or resumes by itself when its workflow allows it.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// A run to record, as accepted by the daemon.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub id: String,
    pub workflow: String,
    pub inputs: Value,
    pub principal: String,
    pub dry_run: bool,
    pub concurrency_key: Option<String>,
    /// With the principal, makes a retried request return the run it created first.
    pub idempotency_key: Option<String>,
}

/// A recorded run.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: String,
    pub workflow: String,
    pub inputs: Value,
    pub principal: String,
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
}

/// A step as recorded. `status` is a step status of the events (`succeeded`, `failed`,
/// `skipped`, `cancelled`), or `running` while it runs, or `interrupted`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    pub step: String,
    pub section: String,
    pub status: String,
    pub attempts: u32,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub duration_ms: Option<f64>,
    pub summary: String,
    pub outputs: Value,
    pub error: Value,
    pub continued: bool,
}

/// What an event changes in a run's step records.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per event, made and written at once; boxing `Finished` would allocate for nothing"
)]
pub enum StepChange {
    Started {
        step: String,
        section: String,
        attempt: u32,
    },
    Finished {
        step: String,
        section: String,
        status: String,
        attempts: u32,
        duration_ms: f64,
        summary: String,
        outputs: Value,
        error: Value,
        continued: bool,
    },
}

/// A run found running by [`Store::interrupt_running`], now `interrupted`.
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

/// The one interface the daemon sees of its durable state. Every method is atomic; a write is
/// durable when it returns (except [`Store::append_log`], which says when it is).
pub trait Store: Send + Sync + 'static {
    /// Records a new run as `queued`. When the principal already created a run with the same
    /// idempotency key, returns that run instead and `false`.
    fn create_run(&self, run: &NewRun) -> Result<(Run, bool)>;
    fn run(&self, id: &str) -> Result<Option<Run>>;
    fn steps(&self, run: &str) -> Result<Vec<StepRecord>>;
    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;
    /// Moves a run to `to` if it is in one of `from`; returns whether it moved. Entering
    /// `running` sets its start time, entering a terminal status its end time. `detail` is
    /// added to what the run's detail says (after `; `); nothing a detail says is ever removed.
    fn transition(
        &self,
        run: &str,
        from: &[RunStatus],
        to: RunStatus,
        detail: Option<&str>,
    ) -> Result<bool>;
    /// Appends an event to a running run, with what it changes in its steps, and returns the
    /// event's sequence number. Returns `None` and writes nothing when the run is not
    /// `running` (e.g. it was marked interrupted by a shutdown).
    fn append_event(
        &self,
        run: &str,
        event: &str,
        change: Option<&StepChange>,
    ) -> Result<Option<i64>>;
    /// Appends a log event to a running run without waiting for it to be on disk. It is
    /// committed in order with the run's other writes: no later than the next write that is
    /// waited for. Logs are not part of the durability contract (a crash may lose the logs
    /// written since the last step start or end), so they need not cost an fsync of their own.
    fn append_log(&self, run: &str, event: &str) -> Result<()> {
        self.append_event(run, event, None).map(drop)
    }
    /// The events of a run after sequence number `after`, in order, at most `limit`.
    fn events(&self, run: &str, after: i64, limit: u32) -> Result<Vec<(i64, String)>>;
    /// Marks every `running` run `interrupted`, and its steps in flight too.
    fn interrupt_running(&self) -> Result<Vec<Interrupted>>;
    /// Runs in a status, oldest first.
    fn runs_with_status(&self, status: RunStatus) -> Result<Vec<Run>>;
    /// How many runs of `principal` are `queued`.
    fn queued_of(&self, principal: &str) -> Result<u64>;

    fn lock(&self, key: &str) -> Result<Option<Lock>>;
    fn locks(&self) -> Result<Vec<Lock>>;
    /// Creates or replaces a lock.
    fn put_lock(&self, lock: &Lock) -> Result<()>;
    /// Returns whether there was a lock to delete.
    fn delete_lock(&self, key: &str) -> Result<bool>;

    /// Stores a token by the SHA-256 of its secret (hex); the secret itself is never stored.
    /// Refuses ([`Error::NameTaken`]) a name another token has: a principal is its name.
    fn add_token(&self, sha256_hex: &str, token: &TokenRecord) -> Result<()>;
    fn token(&self, sha256_hex: &str) -> Result<Option<TokenRecord>>;
    /// Every stored token (never their secrets), by name.
    fn tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Deletes the tokens named `name`; returns whether there was one.
    fn delete_token(&self, name: &str) -> Result<bool>;

    /// Appends an entry, each text field cut to [`MAX_AUDIT_FIELD`] bytes.
    fn audit(&self, entry: &AuditEntry) -> Result<()>;
    /// The newest entries first.
    fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>>;
    /// Deletes the audit entries written before `before_ms`; returns how many went.
    fn prune_audit(&self, before_ms: i64) -> Result<usize>;

    /// Deletes terminal runs that finished before `before_ms`, with their steps and events.
    /// Returns how many runs went.
    fn prune(&self, before_ms: i64) -> Result<usize>;
    /// The store's own consistency check; `ok` when all is well.
    fn integrity_check(&self) -> Result<String>;
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
