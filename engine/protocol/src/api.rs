//! The HTTP API's answers and requests (docs/daemon.md). Answers are what `shiphat serve`
//! sends and the CLI, the web page and the tests read; requests are what it takes, each with
//! `deny_unknown_fields` so that a typo is a 400 naming the field, not a silent default.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{LogLevel, LogSource, Section, StepError};
use crate::status::{Rollback, RunStatus, StepState};

/// What a principal may do. Each role includes the ones before it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads runs, workflows, locks and metrics.
    Viewer,
    /// Also runs the workflows (and environments) its patterns allow, and cancels or resumes
    /// its own runs.
    Deployer,
    /// Also holds and releases locks, forces runs past them, and cancels anyone's runs.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Deployer, Role::Admin];

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

crate::event::display_as_str!(Role);

/// Every error: a message a person acts on, and the request field it is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: String,
    /// The body or query field at fault, when one is.
    pub field: Option<String>,
    /// On a 409 because of a lock: the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockView>,
    /// On a 422 for a reused `Idempotency-Key`: the run the key made first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// On a 409 because a deploy window or freeze closes the run's key: why, and when it opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowView>,
}

/// Whether an environment may deploy now, by the deploy windows and freezes of the daemon's
/// config (`[[windows]]`, `[[freezes]]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WindowView {
    pub open: bool,
    /// Why it is closed: a freeze's reason and end, or the windows it is outside of.
    pub reason: Option<String>,
    /// When a freeze closes it: the freeze's reason.
    pub freeze: Option<String>,
    /// When it next opens (closed) or closes (open), RFC 3339 in UTC; none when no change was
    /// found ahead.
    pub next_change_at: Option<String>,
    /// The same time in the zone of the window or freeze that decides it (RFC 9557, e.g.
    /// `2026-12-07T09:00:00+01:00[Europe/Paris]`).
    pub next_change_local: Option<String>,
    /// The weekly windows that apply, in words, e.g. `mon, tue 09:00–16:00 Europe/Paris`; empty
    /// when only freezes do.
    pub windows: Vec<String>,
}

/// A run, as lists and pages show it. Times are RFC 3339 (`*_at`) and milliseconds since the
/// Unix epoch (`*_ms`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunView {
    pub id: String,
    pub workflow: String,
    pub status: RunStatus,
    /// Why the run is where it is, when that needs saying: each change adds to it after `; `.
    pub detail: Option<String>,
    pub inputs: Map<String, Value>,
    pub principal: String,
    /// Where it was started from; `null` for a run recorded before the daemon kept it.
    #[serde(default)]
    pub source: Option<RunSource>,
    pub dry_run: bool,
    pub concurrency_key: Option<String>,
    /// For a queued run waiting for its key: its place in the queue (1 = next).
    pub queue_position: Option<u64>,
    /// For a queued run waiting for its key: the run holding it.
    pub waiting_on: Option<String>,
    /// For a running run: the daemon that runs it (`HOST:PID:RANDOM`, new at each start of a
    /// daemon), when several share a database.
    pub daemon: Option<String>,
    /// The run's `environment` input, when it has one.
    pub environment: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub duration_ms: Option<i64>,
}

/// Where a run was started from: the front end that asked the daemon for it. The daemon
/// decides it, never the client's request body: a session cookie is the web page, a client
/// that says `User-Agent: shiphat/…` is shiphat's own CLI, a Slack command is Slack, and any
/// other caller of the HTTP API is `api`. The user agent is what the client says it is, so
/// `cli` and `api` tell tools apart for a reader, not for a security decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunSource {
    Api,
    Web,
    Slack,
    Cli,
}

impl RunSource {
    pub const ALL: [RunSource; 4] = [
        RunSource::Api,
        RunSource::Web,
        RunSource::Slack,
        RunSource::Cli,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunSource::Api => "api",
            RunSource::Web => "web",
            RunSource::Slack => "slack",
            RunSource::Cli => "cli",
        }
    }

    pub fn parse(text: &str) -> Option<RunSource> {
        RunSource::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The source in a sentence: "from the API", "from the web page", "from Slack", "from
    /// the CLI".
    pub fn in_words(self) -> &'static str {
        match self {
            RunSource::Api => "the API",
            RunSource::Web => "the web page",
            RunSource::Slack => "Slack",
            RunSource::Cli => "the CLI",
        }
    }
}

crate::event::display_as_str!(RunSource);

/// How shiphat's own CLI names itself in `User-Agent`, before its version
/// (`shiphat/0.1.0`): a run it starts is [`RunSource::Cli`].
pub const CLI_AGENT: &str = "shiphat/";

/// `GET /api/v1/runs`: one page, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunList {
    pub runs: Vec<RunView>,
    /// The `before` of the next page; `null` on the last.
    pub next: Option<String>,
}

/// `GET /api/v1/runs/{id}/why`: the run's account (the lines of `shiphat runs why`), each a
/// sentence in Markdown whose only markup is backticks around names and values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunWhy {
    pub run: String,
    pub status: RunStatus,
    pub lines: Vec<String>,
}

/// `GET /api/v1/workflows/{name}/grants`: the reloads of a workflow's file that changed what
/// its steps may reach, newest first (what the daemon wrote to its audit log for each).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GrantHistory {
    pub workflow: String,
    pub changes: Vec<GrantChangeView>,
}

/// One reload that changed grants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GrantChangeView {
    pub at: String,
    pub at_ms: i64,
    /// The workflow file reloaded.
    pub file: String,
    /// Whether a step may now reach something it could not before: a second review is due.
    pub widened: bool,
    /// The change, one line per step, e.g. ``step `deploy`: + http `hooks.example.com` ``.
    pub steps: Vec<String>,
}

/// A log line of a run page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    pub level: LogLevel,
    pub source: LogSource,
    pub message: String,
    pub time: String,
}

/// A step of a run, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepView {
    pub id: String,
    pub section: Section,
    pub status: StepState,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub duration_ms: Option<f64>,
    pub summary: String,
    pub outputs: Value,
    pub error: Option<StepError>,
    pub continued: bool,
    pub logs: Vec<LogLine>,
}

/// A step of a workflow, as a run page shows it before it starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PlanStep {
    pub id: String,
    pub name: String,
    pub section: Section,
    /// The plugin's name (or file stem).
    pub uses: String,
}

/// `GET /api/v1/runs/{id}`: a run with its plan, its steps and their logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunView,
    /// Every step of the workflow in order; empty when the workflow is no longer loaded.
    pub plan: Vec<PlanStep>,
    /// The steps that started, in the order they started.
    pub steps: Vec<StepView>,
    /// The run's own log lines (not a step's).
    pub logs: Vec<LogLine>,
    /// What the `on_failure` steps did; `null` when none ran (see [`Rollback::of`]).
    pub rollback: Option<Rollback>,
    /// The approvals the run asked for, in order: the one it waits at has no `outcome`.
    pub approvals: Vec<ApprovalView>,
}

/// An approval step of a run: what it asks, who may decide, since and until when, and the
/// votes so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalView {
    pub run: String,
    pub step: String,
    pub step_name: String,
    pub message: String,
    /// Principals holding any of these roles may decide.
    pub roles: Vec<String>,
    /// These principals may decide. With `roles` also empty, anyone who may start the
    /// workflow may.
    pub principals: Vec<String>,
    /// Approvals needed; one rejection rejects.
    pub required: u32,
    /// Whether the principal who started the run may approve it (`false`: four eyes).
    pub allow_self: bool,
    /// Who started the run.
    pub started_by: String,
    pub since: String,
    /// When no decision counts as a rejection.
    pub deadline: String,
    pub since_ms: i64,
    pub deadline_ms: i64,
    /// `null` while the run waits.
    pub outcome: Option<ApprovalOutcome>,
    /// In the order given.
    pub votes: Vec<VoteView>,
    /// Whether the caller may approve it now (reject may still be open to them when this is
    /// false: the four-eyes rule bars only approving one's own run).
    pub you_may_approve: bool,
    /// Whether the caller may reject it now.
    pub you_may_reject: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    Approved,
    Rejected,
    /// Nobody decided in time: it counts as a rejection.
    TimedOut,
    /// The run was cancelled while it waited.
    Cancelled,
}

/// Who may decide an approval, in words: "role `deployer` or `alice`", or "anyone who may
/// run the workflow" when both lists are empty.
pub fn approvers_in_words(roles: &[String], principals: &[String]) -> String {
    let mut who: Vec<String> = roles.iter().map(|r| format!("role `{r}`")).collect();
    who.extend(principals.iter().map(|p| format!("`{p}`")));
    if who.is_empty() {
        "anyone who may run the workflow".to_owned()
    } else {
        who.join(" or ")
    }
}

/// One person's decision on an approval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VoteView {
    pub principal: String,
    pub decision: Choice,
    pub comment: String,
    pub time: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Choice {
    Approve,
    Reject,
}

/// The most a decision's comment may hold: a few sentences of why, kept with the run.
pub const MAX_COMMENT: usize = 2000;

/// `POST /api/v1/runs/{id}/approvals`: a decision on an approval the run waits at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    /// The approval step; may be left out while the run waits at one only.
    #[serde(default)]
    pub step: Option<String>,
    pub decision: Choice,
    /// Why; up to 2000 bytes.
    #[serde(default)]
    pub comment: String,
}

/// `POST /api/v1/runs`: the run accepted (or replayed by its `Idempotency-Key`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Accepted {
    pub id: String,
    pub status: RunStatus,
    /// False when the `Idempotency-Key` returned the run it made before.
    pub created: bool,
}

/// `POST /api/v1/runs/{id}/cancel`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cancelling {
    pub id: String,
    pub cancelling: bool,
}

/// `POST /api/v1/runs/{id}/resume`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Resumed {
    pub id: String,
    pub status: RunStatus,
}

/// A deploy lock on a key (a concurrency key or a workflow's name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LockView {
    pub key: String,
    pub owner: String,
    pub reason: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

/// `GET /api/v1/locks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LockList {
    pub locks: Vec<LockView>,
}

/// Where a token is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// Made by `shiphat token create` or `POST /api/v1/tokens`.
    Database,
    /// Declared in the config file, which alone can change it.
    Config,
}

/// A token, never its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenView {
    pub name: String,
    pub roles: Vec<Role>,
    pub patterns: Vec<String>,
    /// `null` for a token of the config file.
    pub created_at: Option<String>,
    pub source: TokenSource,
}

/// `POST /api/v1/tokens`: the token, with its secret, shown this once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NewToken {
    #[serde(flatten)]
    pub view: TokenView,
    pub token: String,
}

/// `GET /api/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// An entry of the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditView {
    pub at: String,
    /// `null` when the caller could not be identified.
    pub principal: Option<String>,
    /// E.g. `POST /api/v1/runs`.
    pub action: String,
    pub target: String,
    pub remote: String,
    /// The HTTP status answered.
    pub status: u16,
    pub outcome: String,
}

/// `GET /api/v1/audit`: the newest entries first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditLog {
    pub entries: Vec<AuditView>,
}

/// A workflow input's type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    String,
    Number,
    Bool,
    /// One of these strings.
    Choice(Vec<String>),
}

/// An input a workflow takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputView {
    pub name: String,
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub kind: InputType,
    pub required: bool,
    pub default: Option<Value>,
}

/// A workflow's `concurrency`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConcurrencyView {
    /// The key as written, e.g. `web-${{ inputs.environment }}`.
    pub key: String,
    pub queue: bool,
}

/// What a workflow's interrupted runs do when the daemon starts again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResumeMode {
    Auto,
    Manual,
}

/// What the daemon does with a workflow's run requested while a deploy window or freeze
/// closes it: refuse it (409), or queue it until the window opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutsideWindowMode {
    #[default]
    Refuse,
    Wait,
}

/// A step of a workflow, by id and name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepName {
    pub id: String,
    pub name: String,
}

/// A loaded workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowView {
    pub name: String,
    pub description: Option<String>,
    pub file: String,
    pub concurrency: Option<ConcurrencyView>,
    pub resume: ResumeMode,
    /// `refuse` when a daemon older than deploy windows answers.
    #[serde(default)]
    pub outside_window: OutsideWindowMode,
    pub inputs: Vec<InputView>,
    pub steps: Vec<StepName>,
    /// Whether its runs start now. `ready` when a daemon older than background loading answers.
    #[serde(default)]
    pub status: WorkflowStatus,
    /// The plugins compiling now, for this workflow or a newer version of its file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compiling: Vec<CompilingPlugin>,
    /// A newer version of its file is loading; runs start on this one until it is ready.
    #[serde(default)]
    pub reloading: bool,
    /// Why the newest version of its file did not load; this one, the last good, stays in
    /// service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
}

/// Where a workflow stands on the daemon that answers. The daemon loads a workflow file's
/// plugins in the background, compiling those its compile cache does not have yet (seconds
/// for a large plugin, once); a run requested meanwhile is accepted and waits, its detail
/// saying so, and starts once the workflow is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Its plugins are loaded: runs start now.
    #[default]
    Ready,
    /// Its plugins are being read from the compile cache.
    Loading,
    /// A plugin of it is compiling (`compiling` says which).
    Compiling,
}

/// A plugin compiling into the compile cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CompilingPlugin {
    /// The plugin's file name, e.g. `notify.wasm`.
    pub file: String,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A size as a person reads it in a progress line: `19 MB`, `406 KB`.
pub fn fmt_size(bytes: u64) -> String {
    const KB: u64 = 1000;
    const MB: u64 = 1000 * KB;
    if bytes >= 10 * MB {
        format!("{} MB", bytes / MB)
    } else if bytes >= MB {
        format!("{:.1} MB", bytes as f64 / MB as f64)
    } else if bytes >= KB {
        format!("{} KB", bytes / KB)
    } else {
        format!("{bytes} B")
    }
}

/// `GET /api/v1/workflows`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowView>,
}

/// `POST` and `GET /api/v1/session`: who the browser is signed in as.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionView {
    pub principal: String,
    pub roles: Vec<Role>,
    pub patterns: Vec<String>,
    /// What mutating calls send as `X-CSRF-Token`.
    pub csrf: String,
}

/// A run of an environment, with what it deploys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Release {
    #[serde(flatten)]
    pub run: RunView,
    /// The first of the run's `release`, `version`, `ref` or `tag` inputs, as text.
    pub release: Option<String>,
}

/// One of an environment's last deploys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Deploy {
    #[serde(flatten)]
    pub release: Release,
    /// Its `on_failure` steps ran and all succeeded ([`Rollback::RolledBack`]).
    pub rolled_back: bool,
}

/// What is deployed where: an environment is a lock key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvironmentView {
    pub key: String,
    pub workflow: Option<String>,
    /// The newest run's `environment` input.
    pub environment: Option<String>,
    /// The latest deploy that succeeded: what runs there now.
    pub current: Option<Release>,
    /// The deploy in progress.
    pub active: Option<Release>,
    pub queued: u64,
    pub lock: Option<LockView>,
    /// Whether it may deploy now, when a deploy window or freeze applies to it.
    pub window: Option<WindowView>,
    pub deploys: Vec<Deploy>,
}

/// `GET /api/v1/environments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvironmentList {
    pub environments: Vec<EnvironmentView>,
}

/// The data of `GET /api/v1/events`' `run` events: the run that changed, or `null` when
/// notices were lost and everything should be read again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunNotice {
    pub run: Option<String>,
}

/// `POST /api/v1/runs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    #[schemars(length(min = 1))]
    pub workflow: String,
    /// By input name. A `string` input takes a string, a `number` a number or a string of
    /// one, a `bool` a boolean or `"true"`/`"false"`, a `choice` one of its strings.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    #[serde(default)]
    pub dry_run: bool,
    /// Start it although a lock holds its key or a deploy window or freeze closes it (admins
    /// only; audited).
    #[serde(default)]
    pub force: bool,
}

/// `POST /api/v1/check-deploy`: whether the caller could start this run now, without starting
/// it, and if not, the first reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeployCheck {
    /// Whether a `POST /api/v1/runs` with the same body would be accepted now.
    pub allowed: bool,
    /// What stands in the way, or would make the run wait: `role`, `pattern`, `workflow`,
    /// `inputs`, `lock`, `window`, `busy` (a run holds the key and the workflow does not
    /// queue), `queue` (it would wait behind a run), `compiling`; `null` when nothing does.
    pub blocker: Option<String>,
    /// One sentence a person acts on.
    pub reason: String,
}

/// `POST /api/v1/runs/{id}/resume` (the body may be empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeRun {
    /// Resume it although a lock holds its key or a deploy window or freeze closes it (admins
    /// only; audited).
    #[serde(default)]
    pub force: bool,
}

/// `PUT /api/v1/locks/{key}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutLock {
    pub reason: String,
    /// Who holds it; the caller when left out.
    #[serde(default)]
    pub owner: Option<String>,
    /// How long it holds, e.g. `2h` or `1h 30m` (see [`lock_ttl`]); for ever when left out.
    #[serde(default)]
    #[schemars(regex(pattern = LOCK_TTL_PATTERN))]
    pub expires_in: Option<String>,
}

/// The form of a lock's `expires_in`: one to four parts, each a number of one to four digits
/// and a unit (`s`, `m`, `h`, `d` or `w`), with at most one space between parts. Bounded so
/// that a lock's end is a date every client can print (RFC 3339 stops at the year 9999): the
/// longest, four times `9999w`, is some 770 years.
pub const LOCK_TTL_PATTERN: &str = "^[0-9]{1,4}[smhdw]( ?[0-9]{1,4}[smhdw]){0,3}$";

/// How long a lock's `expires_in` holds, or why it is not of the form of
/// [`LOCK_TTL_PATTERN`].
pub fn lock_ttl(text: &str) -> Result<std::time::Duration, String> {
    let bad = || {
        format!(
            "`expires_in` must be like `2h` or `1h 30m`: one to four parts, each a number of 1 to 4 digits and a unit (`s`, `m`, `h`, `d`, `w`), not {}",
            Value::from(text)
        )
    };
    let mut seconds = 0;
    let mut rest = text;
    for part in 1..=4 {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if !(1..=4).contains(&digits) {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = match rest.as_bytes().get(digits) {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3600,
            Some(b'd') => 24 * 3600,
            Some(b'w') => 7 * 24 * 3600,
            _ => return Err(bad()),
        };
        seconds += number * unit;
        rest = &rest[digits + 1..];
        if rest.is_empty() {
            return Ok(std::time::Duration::from_secs(seconds));
        }
        if part < 4 {
            rest = rest.strip_prefix(' ').unwrap_or(rest);
        }
    }
    Err(bad())
}

/// `POST /api/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Printable, not blank, without `/` ([`principal_name_problem`]).
    #[schemars(length(min = 1), regex(pattern = PRINCIPAL_NAME_PATTERN))]
    pub name: String,
    /// One or more.
    #[schemars(length(min = 1))]
    pub roles: Vec<Role>,
    /// `WORKFLOW` or `WORKFLOW/ENVIRONMENT`, each part a glob; never empty, and without `,`.
    #[serde(default)]
    #[schemars(inner(length(min = 1), regex(pattern = "^[^,]+$")))]
    pub patterns: Vec<String>,
}

/// What [`principal_name_problem`] takes, as a regular expression: no `/` and no control
/// character (Unicode's `Cc`: U+0000 to U+001F, U+007F to U+009F), and one character at least
/// that is not white space (Rust's `char::is_whitespace`, spelt out, since `\s` differs between
/// regular expression dialects).
pub const PRINCIPAL_NAME_PATTERN: &str = r"^[^/\x00-\x1f\x7f-\x9f]*[^/\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^/\x00-\x1f\x7f-\x9f]*$";

/// Why `name` cannot name a principal (a token), if it cannot. A principal's name is printed
/// in the audit log, in run records and on terminals, so it is printable text, not blank, and
/// without `/`, which patterns use. `shiphat token create` and `POST /api/v1/tokens` both ask.
pub fn principal_name_problem(name: &str) -> Option<String> {
    let bad = name.trim().is_empty() || name.contains('/') || name.chars().any(char::is_control);
    bad.then(|| {
        format!(
            "a principal's name must be non-empty, printable and without `/`, not {}",
            Value::from(name)
        )
    })
}

/// `POST /api/v1/session`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub token: String,
}

/// The query of `GET /api/v1/runs`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRuns {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    /// A run id: only runs older than it (the `next` of the page before).
    pub before: Option<String>,
    /// How many runs, 1 to 500; 50 when left out.
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
    /// `true`: only runs waiting at an approval the caller may decide ("waiting for you").
    pub for_me: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_ttl_is_a_few_bounded_parts() {
        let secs = |text: &str| lock_ttl(text).map(|d| d.as_secs());
        assert_eq!(secs("2h"), Ok(7200));
        assert_eq!(secs("1h 30m"), Ok(5400));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("0s"), Ok(0));
        assert_eq!(secs("9999w 9999w 9999w 9999w"), Ok(4 * 9999 * 604_800));
        // `100000y` was taken, and the lock's end, past the year 9999, panicked the answer.
        for bad in [
            "",
            "h",
            "2",
            "2x",
            "10000h",
            "2h ",
            " 2h",
            "2h  3m",
            "1s 1s 1s 1s 1s",
            "100000y",
            "2 hours",
            "-1h",
            "1.5h",
        ] {
            assert!(lock_ttl(bad).is_err(), "{bad:?}");
        }
    }
}
