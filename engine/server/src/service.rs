//! The daemon's operations, behind one type that every front end calls: the HTTP API, the web
//! page (through the same routes), Slack commands and the CLI's server mode (through the API).
//! Admitting a run (its inputs checked, the caller's roles and patterns, the locks, the
//! idempotency key), following a run's events, cancelling and resuming, listing and showing
//! runs, taking and releasing locks, tokens, the audit log.
//!
//! Each operation takes the caller ([`Principal`]) and a request of `shiphat_protocol`, and
//! answers with a protocol type or an [`Error`], which each front end says in its own words:
//! HTTP as a status and a JSON body, Slack as a reply. Front ends do not reach the store or the
//! scheduler themselves, so a rule (who may force past a lock, what a reused idempotency key
//! means) is written once, and HTTP and chat cannot disagree about it.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use shiphat_protocol::{
    Accepted, ApprovalView, AuditLog, AuditView, Cancelling, Choice, CompilingPlugin,
    ConcurrencyView, CreateRun, CreateToken, DeployCheck, EnvironmentList, Event, GrantChangeView,
    GrantHistory, InputType, InputView, ListRuns, LockList, LockView, LogLine, NewToken,
    OutsideWindowMode, PlanStep, PutLock, ResumeMode, ResumeRun, Resumed, Rollback, RunDetail,
    RunList, RunNotice, RunSource, RunStatus, RunView, RunWhy, Section, StepName, StepView,
    TokenList, TokenSource, TokenView, WindowView, WorkflowList, WorkflowStatus, WorkflowView,
};
use shiphat_store::{AuditEntry, Lock, NewRun, Run, RunFilter, TokenRecord, rfc3339};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::auth::{Principal, Reach, Role, token_hash};
use crate::limits::Hold;
use crate::scheduler::{App, Refused, input_texts};

/// The most runs one page of a run list holds: enough for a screen, bounded so a list never
/// costs more than a few milliseconds.
pub const MAX_PAGE: u32 = 500;
/// A run list's page when the caller names none.
const DEFAULT_PAGE: u32 = 50;
/// The longest idempotency key taken, as Stripe's API: room for any UUID or hash, and a key
/// stored with every run cannot be used to fill the disk.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// How many stored events a follower reads per query while catching up.
const EVENT_BATCH: u32 = 512;
/// How long a follower waits for a wake-up before looking at the store anyway: a safety net
/// against a missed notification, not the normal path.
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// The most event streams (a run's events and the feed together) one principal holds open. A
/// person's page holds two (the runs list and a run), a CLI one per `runs logs`; a few tabs
/// and terminals stay well under this, and a script that opens streams without end cannot
/// hold a task, a store reader and a socket each for ever.
const MAX_STREAMS_PER_PRINCIPAL: usize = 32;
/// How long the feed gathers changes before it answers: a run's burst of log lines becomes
/// one notice per run, and a page refetches at most a few times a second.
const FEED_COALESCE: Duration = Duration::from_millis(200);

/// Why an operation was refused or failed. Each front end maps it: HTTP to a status and an
/// [`shiphat_protocol::ErrorBody`], chat to a reply.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller lacks a role, or a pattern for the workflow and environment.
    #[error("{0}")]
    Forbidden(String),
    /// A request's value is wrong; `field` names it when one is at fault.
    #[error("{message}")]
    Invalid {
        field: Option<&'static str>,
        message: String,
    },
    /// The inputs are well formed but not what the workflow takes (an unknown name, a value
    /// of the wrong type or not among its choices, a required one missing), or its
    /// `concurrency` key cannot be evaluated with them.
    #[error("{0}")]
    Inputs(String),
    #[error("no workflow named `{0}` is loaded")]
    NoWorkflow(String),
    /// The workflow's file is checked but its plugins are still loading.
    #[error("the plugins of `{0}` are still loading; try again once it is `ready`")]
    NotLoaded(String),
    #[error("no run `{0}`")]
    NoRun(String),
    #[error("`{0}` is not locked")]
    NotLocked(String),
    #[error("no token named `{0}`")]
    NoToken(String),
    /// A lock holds the run's key or workflow, and the caller did not force past it. `hint`
    /// says how to, where there is a way.
    #[error("`{}` is locked by `{}`: {}{hint}", .lock.key, .lock.owner, .lock.reason)]
    Locked { lock: Lock, hint: &'static str },
    /// A deploy window or freeze closes the run's key now, and the caller did not force it.
    /// `message` says why and when it opens, `window` the same as data, and `hint` how an
    /// admin forces it through the API.
    #[error("{message}{hint}")]
    Closed {
        message: String,
        window: Box<WindowView>,
        hint: &'static str,
    },
    /// The workflow's `concurrency` has `queue: false` and its key is busy.
    #[error("`{key}` is busy with run `{holder}` and `{workflow}` does not queue (`queue: false`)")]
    Busy {
        key: String,
        holder: String,
        workflow: String,
    },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error(
        "`{principal}` has {max} runs queued already (`max_queued_per_principal`); wait for them or cancel some"
    )]
    TooManyQueued { principal: String, max: u64 },
    #[error("`{principal}` holds {max} event streams open already; close one first")]
    TooManyStreams { principal: String, max: usize },
    /// An idempotency key that made `run` came again with another request.
    #[error(
        "this `Idempotency-Key` was used for run `{run}` with another request (workflow, inputs or dry_run differ); use a new key for a new request"
    )]
    KeyReused { run: String },
    #[error("run `{id}` has already ended ({})", .status.as_str())]
    Ended { id: String, status: RunStatus },
    #[error("run `{id}` is {}; only interrupted runs resume", .status.as_str())]
    NotInterrupted { id: String, status: RunStatus },
    /// The run waits at no approval (or not at the one named).
    #[error("{0}")]
    NoApproval(String),
    /// The approval was decided already, or this principal has decided on it already.
    #[error("{0}")]
    Decided(String),
    /// A token's name that is taken, by the config file or the database.
    #[error("{0}")]
    NameTaken(String),
    #[error("`{0}` is declared in the config file; remove it there")]
    InConfig(String),
    #[error(transparent)]
    Store(#[from] shiphat_store::Error),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    fn invalid(field: &'static str, message: impl Into<String>) -> Error {
        Error::Invalid {
            field: Some(field),
            message: message.into(),
        }
    }
}

fn require(caller: &Principal, role: Role) -> Result<()> {
    caller.require(role).map_err(Error::Forbidden)
}

/// A request a front end reads (a body or a query) for an operation, with the least role the
/// operation needs: a front end asks [`Request::allowed`] before it reads the request, so that
/// who may never make it hears so, not what is wrong with the request.
pub trait Request: DeserializeOwned {
    const ROLE: Role;

    fn allowed(caller: &Principal) -> Result<()> {
        require(caller, Self::ROLE)
    }
}

impl Request for CreateRun {
    const ROLE: Role = Role::Deployer;
}
impl Request for ResumeRun {
    const ROLE: Role = Role::Deployer;
}
impl Request for ListRuns {
    const ROLE: Role = Role::Viewer;
}
impl Request for shiphat_protocol::Decide {
    const ROLE: Role = Role::Viewer;
}

impl Request for PutLock {
    const ROLE: Role = Role::Admin;
}
impl Request for CreateToken {
    const ROLE: Role = Role::Admin;
}

/// A run admitted by [`Service::admit`].
#[derive(Debug)]
pub struct Admitted {
    pub accepted: Accepted,
    /// The lock an admin's `force` passed.
    pub forced: Option<LockView>,
    /// The deploy window or freeze an admin's `force` passed.
    pub forced_window: Option<WindowView>,
    /// Queued until its deploy window opens (`outside_window: wait`): when, in words.
    pub waits_for_window: Option<String>,
    /// Queued behind another run of its concurrency key.
    pub waiting: bool,
}

/// A run whose cancel is under way ([`Service::cancel`]).
#[derive(Debug)]
pub struct Cancelled {
    pub answer: Cancelling,
    /// Whose run it is.
    pub owner: String,
}

/// A decision taken ([`Service::decide`]).
#[derive(Debug)]
pub struct Decided {
    pub answer: ApprovalView,
    /// What the audit log says: ``approved `decide` with "why": approved`` and the like.
    pub outcome: String,
}

/// A run queued again ([`Service::resume`]).
#[derive(Debug)]
pub struct Resumption {
    pub answer: Resumed,
    /// The lock an admin's `force` passed.
    pub forced: Option<LockView>,
    /// The deploy window or freeze an admin's `force` passed.
    pub forced_window: Option<WindowView>,
}

/// How a run passes the deploy windows ([`Service::pass_window`]).
enum Passage {
    /// Open now, or no window or freeze applies.
    Open,
    /// Closed, and an admin's `force` passed it.
    Forced(WindowView),
    /// Closed; the run waits until this time (`outside_window: wait`).
    Waits(crate::windows::Local),
}

/// A run as it would be admitted ([`Service::plan`]).
struct Planned {
    workflow: Arc<shiphat_workflow::Workflow>,
    inputs: Map<String, Value>,
    key: Option<String>,
}

/// The daemon's operations over its [`App`]. Cheap to clone: every front end holds one.
#[derive(Clone)]
pub struct Service {
    app: Arc<App>,
}

impl Service {
    pub fn new(app: Arc<App>) -> Service {
        Service { app }
    }

    /// Who a token's SHA-256 speaks for: a principal of the config file, or a token made by
    /// `shiphat token create`.
    pub async fn principal(&self, hash: &str) -> Result<Option<Principal>> {
        let app = &self.app;
        if let Some((_, p)) = app.config.principals.iter().find(|(h, _)| h == hash) {
            return Ok(Some(p.clone()));
        }
        let Some(t) = app.store.token(hash).await? else {
            return Ok(None);
        };
        // A token created beside a running daemon without its config file may carry the name
        // of a config principal; it speaks for no one rather than for that principal's runs.
        if app.config.principal_names().any(|n| n == t.name) {
            tracing::error!(
                "a database token is named `{}` like a principal of the config file; it is refused until one of them is renamed",
                t.name
            );
            return Ok(None);
        }
        Ok(Some(principal_of(t)))
    }

    /// Writes an entry to the audit log (see [`App::audit`]).
    pub async fn audit(&self, entry: AuditEntry) {
        self.app.audit(entry).await;
    }

    /// The web page's signed-in browsers.
    pub fn sessions(&self) -> &crate::web::Sessions {
        &self.app.sessions
    }

    /// Sign-in attempts per remote address.
    pub fn sign_ins(&self) -> &crate::limits::Rate {
        &self.app.sign_ins
    }

    /// The largest request body taken, from the config.
    pub fn max_body_bytes(&self) -> usize {
        self.app.config.max_body_bytes
    }

    /// The Slack section of the config, if there is one.
    pub fn slack(&self) -> Option<&crate::chat::SlackConfig> {
        self.app.config.slack.as_ref()
    }

    /// Whether the daemon should get traffic, for a load balancer (`GET /readyz`): every
    /// workflow file found at start has loaded (or failed to), and it is not shutting down.
    /// What it waits for otherwise, without workflow names: anyone may ask.
    pub fn ready(&self) -> std::result::Result<(), String> {
        if !self.app.accepting.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("shutting down".to_owned());
        }
        if !self.app.workflows.settled() {
            let loading = self.app.workflows.loading();
            return Err(format!(
                "loading workflows: {loading} still loading their plugins"
            ));
        }
        Ok(())
    }

    /// The Prometheus exposition of the daemon's metrics.
    pub fn metrics(&self) -> String {
        self.app.metrics.encode()
    }

    /// Admits a run: the caller must be a deployer whose patterns allow the workflow in the
    /// run's `environment` input; the inputs must be what the workflow declares; a lock on the
    /// run's key or workflow refuses it unless an admin passes `force`. An `idempotency_key`
    /// seen before answers with the run it made, if the request is the same, and refuses it if
    /// not. Answered once the run has started, or is queued or held. `source` is the front
    /// end that asks, which the run keeps (`shiphat runs why` says it).
    pub async fn admit(
        &self,
        caller: &Principal,
        request: CreateRun,
        idempotency_key: Option<&str>,
        source: RunSource,
    ) -> Result<Admitted> {
        let app = &self.app;
        CreateRun::allowed(caller)?;
        let CreateRun {
            workflow: name,
            inputs: given,
            dry_run,
            force,
        } = request;
        let idempotency_key = match idempotency_key.map(str::trim) {
            None => None,
            Some(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => {
                Some(key.to_owned())
            }
            Some(_) => {
                return Err(Error::Invalid {
                    field: None,
                    message: format!(
                        "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters, e.g. a UUID"
                    ),
                });
            }
        };
        let id = shiphat_runner::new_run_id();
        let Planned {
            workflow,
            inputs,
            key,
        } = self.plan(&name, &given, &id)?;
        // The patterns are matched against the input the run will have, not against what a
        // front end calls the environment: a workflow without an `environment` input is
        // allowed only by a pattern without `/`.
        let environment = inputs.get("environment").and_then(Value::as_str);
        caller
            .may_run(&name, environment)
            .map_err(Error::Forbidden)?;
        let forced = match app.lock_on(key.as_deref(), &name).await? {
            None => None,
            Some(lock) => Some(pass_lock(caller, lock, force, "")?),
        };
        // A dry run changes nothing, so no window holds it: rehearsing tonight's deploy
        // during the day is what a window should leave possible.
        let waits = workflow.outside_window == shiphat_workflow::OutsideWindow::Wait;
        let passage = if dry_run {
            Passage::Open
        } else {
            self.pass_window(
                caller,
                &name,
                key.as_deref(),
                force,
                waits,
                "; an admin may start it now with `{\"force\": true}`",
            )?
        };
        let (forced_window, not_before) = match passage {
            Passage::Open => (None, None),
            Passage::Forced(window) => (Some(window), None),
            Passage::Waits(opens) => (None, Some(opens)),
        };
        let inputs = Value::Object(inputs);
        let new = NewRun {
            id,
            workflow: name.clone(),
            inputs: inputs.clone(),
            principal: caller.name.clone(),
            source,
            dry_run,
            concurrency_key: key,
            idempotency_key,
            exclusive: false,
            forced: false,
            not_before_ms: not_before.as_ref().map(|at| at.at.as_millisecond()),
        };
        let queue = workflow.concurrency.as_ref().is_none_or(|c| c.queue);
        let (run, created) = app
            // Forced past a lock or a window: neither holds its start either.
            .submit(new, queue, forced.is_some() || forced_window.is_some())
            .await
            .map_err(|refused| match refused {
                Refused::Busy { key, holder } => Error::Busy {
                    key,
                    holder,
                    workflow: name.clone(),
                },
                Refused::ShuttingDown => Error::ShuttingDown,
                Refused::TooManyQueued { principal, max } => {
                    Error::TooManyQueued { principal, max }
                }
                Refused::Store(e) => Error::Store(e),
            })?;
        // The same key with another request is a client bug (a key reused for a different
        // deploy); answering with the first run would say this one was started.
        if !created && (run.workflow != name || run.inputs != inputs || run.dry_run != dry_run) {
            return Err(Error::KeyReused { run: run.id });
        }
        Ok(Admitted {
            waiting: app.waiting_on(&run.id).is_some(),
            accepted: Accepted {
                id: run.id,
                status: run.status,
                created,
            },
            forced: forced.as_ref().map(lock_view),
            forced_window,
            waits_for_window: not_before
                .map(|at| format!("opens at {} ({})", at.local(), at.rfc3339())),
        })
    }

    /// Whether `caller` could start `request` now, without starting it: the checks of
    /// [`Service::admit`] in its order (role, workflow and inputs, pattern, lock, window), then
    /// whether a run holds the key. The first that stands in the way is the answer.
    pub async fn check_deploy(
        &self,
        caller: &Principal,
        request: CreateRun,
    ) -> Result<DeployCheck> {
        require(caller, Role::Viewer)?;
        let refused = |blocker: &str, reason: String| DeployCheck {
            allowed: false,
            blocker: Some(blocker.to_owned()),
            reason,
        };
        if let Err(e) = CreateRun::allowed(caller) {
            return Ok(refused("role", e.to_string()));
        }
        let planned = match self.plan(&request.workflow, &request.inputs, "check") {
            Ok(planned) => planned,
            Err(e @ Error::NoWorkflow(_)) => return Ok(refused("workflow", e.to_string())),
            Err(e) => return Ok(refused("inputs", e.to_string())),
        };
        let name = &request.workflow;
        let environment = planned.inputs.get("environment").and_then(Value::as_str);
        if let Err(why) = caller.may_run(name, environment) {
            return Ok(refused("pattern", why));
        }
        if let Some(lock) = self.app.lock_on(planned.key.as_deref(), name).await?
            && let Err(e) = pass_lock(caller, lock, request.force, "")
        {
            return Ok(refused("lock", e.to_string()));
        }
        let waits = planned.workflow.outside_window == shiphat_workflow::OutsideWindow::Wait;
        if !request.dry_run {
            match self.pass_window(
                caller,
                name,
                planned.key.as_deref(),
                request.force,
                waits,
                "",
            ) {
                Err(e) => return Ok(refused("window", e.to_string())),
                Ok(Passage::Waits(opens)) => {
                    return Ok(DeployCheck {
                        allowed: true,
                        blocker: Some("window".to_owned()),
                        reason: format!(
                            "it would be accepted and wait for the deploy window: it opens at {} ({})",
                            opens.local(),
                            opens.rfc3339()
                        ),
                    });
                }
                Ok(_) => {}
            }
        }
        if let Some(key) = &planned.key {
            let running = self.app.store.runs_with_status(RunStatus::Running).await?;
            if let Some(holder) = running
                .iter()
                .find(|r| r.concurrency_key.as_deref() == Some(key))
            {
                let queue = planned
                    .workflow
                    .concurrency
                    .as_ref()
                    .is_none_or(|c| c.queue);
                return Ok(if queue {
                    DeployCheck {
                        allowed: true,
                        blocker: Some("queue".to_owned()),
                        reason: format!(
                            "it would be accepted and wait its turn: run `{}` of `{}` by `{}` holds `{key}`",
                            holder.id, holder.workflow, holder.principal
                        ),
                    }
                } else {
                    refused(
                        "busy",
                        format!(
                            "run `{}` of `{}` by `{}` holds `{key}`, and `{name}` does not queue (`concurrency.queue: false`)",
                            holder.id, holder.workflow, holder.principal
                        ),
                    )
                });
            }
        }
        if let Some(hold) = self.app.workflows.hold(name) {
            return Ok(DeployCheck {
                allowed: true,
                blocker: Some("compiling".to_owned()),
                reason: format!("it would be accepted and {hold}"),
            });
        }
        let place = environment
            .map(|e| format!(" to `{e}`"))
            .unwrap_or_default();
        Ok(DeployCheck {
            allowed: true,
            blocker: None,
            reason: format!("`{}` may deploy `{name}`{place} now", caller.name),
        })
    }

    /// How a run of `workflow` on `key` (its workflow's name when `None`) passes the deploy
    /// windows and freezes now: open, forced through by an admin's `force`, or (when `wait`,
    /// the workflow's `outside_window: wait`, and an open time is ahead) waiting for it; else
    /// [`Error::Closed`], with `hint` on how to force.
    fn pass_window(
        &self,
        caller: &Principal,
        workflow: &str,
        key: Option<&str>,
        force: bool,
        wait: bool,
        hint: &'static str,
    ) -> Result<Passage> {
        let key = key.unwrap_or(workflow);
        let Some(verdict) = self
            .app
            .config
            .windows
            .verdict(workflow, key, jiff::Timestamp::now())
        else {
            return Ok(Passage::Open);
        };
        if verdict.is_open() {
            return Ok(Passage::Open);
        }
        let window = window_view(&verdict);
        if let (false, true, Some(opens)) = (force, wait, verdict.next_change()) {
            return Ok(Passage::Waits(opens.clone()));
        }
        if !force {
            let opens = match verdict.next_change() {
                Some(at) => format!("; it opens at {} ({})", at.local(), at.rfc3339()),
                None => String::new(),
            };
            let reason = window.reason.clone().unwrap_or_default();
            return Err(Error::Closed {
                message: format!("`{key}` may not deploy now: {reason}{opens}"),
                window: Box::new(window),
                hint,
            });
        }
        caller
            .require(Role::Admin)
            .map_err(|e| Error::Forbidden(format!("forcing past a deploy window: {e}")))?;
        Ok(Passage::Forced(window))
    }

    /// The key a run of this request would lock on: its concurrency key, or the workflow's
    /// name when it has none. What `PUT /locks/{key}` must name to hold such runs.
    pub fn lock_key(&self, caller: &Principal, request: &CreateRun) -> Result<String> {
        require(caller, Role::Viewer)?;
        let planned = self.plan(
            &request.workflow,
            &request.inputs,
            &shiphat_runner::new_run_id(),
        )?;
        Ok(planned.key.unwrap_or_else(|| request.workflow.clone()))
    }

    /// A run of workflow `name` with the `given` inputs, as it would be admitted with id `id`:
    /// its inputs checked and resolved, and its concurrency key evaluated.
    fn plan(&self, name: &str, given: &Map<String, Value>, id: &str) -> Result<Planned> {
        // A workflow whose plugins still load is admitted against its checked file: the run
        // waits for them (see `workflows.rs`).
        let Some(workflow) = self.app.workflows.get(name) else {
            return Err(Error::NoWorkflow(name.to_owned()));
        };
        let inputs = input_texts(&workflow, given)
            .and_then(|texts| workflow.resolve_inputs(&texts))
            .map_err(|problems| Error::Inputs(problems.join("; ")))?;
        let key = workflow
            .concurrency_key(&inputs, id)
            .map_err(|e| Error::Inputs(format!("cannot evaluate `concurrency`: {e}")))?;
        Ok(Planned {
            workflow,
            inputs,
            key,
        })
    }

    /// One page of runs, newest first.
    pub async fn runs(&self, caller: &Principal, query: ListRuns) -> Result<RunList> {
        ListRuns::allowed(caller)?;
        let limit = query.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("`limit` must be 1 to {MAX_PAGE}, not {limit}"),
            ));
        }
        let open = self.app.store.open_approvals().await?;
        let waits =
            |run: &Run| run.status == RunStatus::Running && open.iter().any(|a| a.run == run.id);
        let for_me = query.for_me == Some(true);
        let runs = if for_me || query.status == Some(RunStatus::Waiting) {
            // Few runs wait: read each, newest first, as a list would give them.
            let mut ids: Vec<&str> = open.iter().map(|a| a.run.as_str()).collect();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.dedup();
            let mut runs = Vec::new();
            for id in ids {
                if query.before.as_deref().is_some_and(|before| id >= before) {
                    continue;
                }
                let Some(run) = self.app.store.run(id).await? else {
                    continue;
                };
                let mine = !for_me
                    || open.iter().any(|a| {
                        a.run == run.id
                            && !a.votes.iter().any(|v| v.principal == caller.name)
                            && crate::approvals::refusal(caller, a, &run, Choice::Approve).is_none()
                    });
                if waits(&run)
                    && mine
                    && query.workflow.as_ref().is_none_or(|w| *w == run.workflow)
                    && query.status.is_none_or(|s| s == RunStatus::Waiting)
                {
                    runs.push(run);
                }
                if runs.len() == limit as usize {
                    break;
                }
            }
            runs
        } else {
            let mut runs = self
                .app
                .store
                .list_runs(&RunFilter {
                    workflow: query.workflow,
                    status: query.status,
                    before: query.before,
                    limit,
                })
                .await?;
            // A run waiting for people is `waiting`, not `running`.
            if query.status == Some(RunStatus::Running) {
                runs.retain(|run| !waits(run));
            }
            runs
        };
        let next = (runs.len() == limit as usize)
            .then(|| runs.last().map(|r| r.id.clone()))
            .flatten();
        Ok(RunList {
            runs: runs
                .iter()
                .map(|r| {
                    let mut view = run_view(&self.app, r);
                    if waits(r) {
                        view.status = RunStatus::Waiting;
                    }
                    view
                })
                .collect(),
            next,
        })
    }

    /// Approves or rejects an approval step `id` waits at, as `caller`, who must be one of its
    /// approvers (and not the one who started the run, to approve it, unless the step allows
    /// it). One vote per person; a rejection rejects; enough approvals approve. The run's
    /// daemon, whichever it is, hears of it at once.
    pub async fn decide(
        &self,
        caller: &Principal,
        id: &str,
        request: shiphat_protocol::Decide,
    ) -> Result<Decided> {
        shiphat_protocol::Decide::allowed(caller)?;
        if request.comment.len() > shiphat_protocol::MAX_COMMENT {
            return Err(Error::invalid(
                "comment",
                format!(
                    "the comment holds {} bytes; keep it under {}",
                    request.comment.len(),
                    shiphat_protocol::MAX_COMMENT
                ),
            ));
        }
        let run = self.find_run(id).await?;
        let approvals = self.app.store.approvals(id).await?;
        let open: Vec<&shiphat_store::Approval> = approvals
            .iter()
            .filter(|a| a.outcome.is_none() && run.status == RunStatus::Running)
            .collect();
        let approval = match &request.step {
            Some(step) => approvals.iter().find(|a| a.step == *step).ok_or_else(|| {
                Error::NoApproval(format!("run `{id}` has no approval step `{step}`"))
            })?,
            None => match open.as_slice() {
                [one] => *one,
                [] => {
                    return Err(Error::NoApproval(format!(
                        "run `{id}` waits for no approval (it is {})",
                        run.status.as_str()
                    )));
                }
                several => {
                    return Err(Error::invalid(
                        "step",
                        format!(
                            "run `{id}` waits at several approvals; name one in `step`: {}",
                            several
                                .iter()
                                .map(|a| a.step.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            },
        };
        if let Some(why) = crate::approvals::refusal(caller, approval, &run, request.decision) {
            return Err(Error::Forbidden(why));
        }
        if run.status != RunStatus::Running {
            return Err(Error::NoApproval(format!(
                "run `{id}` is {}; its approvals can no longer be decided",
                run.status.as_str()
            )));
        }
        let vote = shiphat_store::VoteRecord {
            principal: caller.name.clone(),
            approve: request.decision == Choice::Approve,
            comment: request.comment.trim().to_owned(),
            time_ms: shiphat_store::now_ms(),
        };
        let step = approval.step.clone();
        let Some((applied, after)) = self
            .app
            .store
            .decide(id, &step, &shiphat_store::Decide::Vote(vote))
            .await?
        else {
            return Err(Error::NoApproval(format!(
                "run `{id}` has no approval step `{step}`"
            )));
        };
        match applied {
            shiphat_store::Applied::Counted => {}
            shiphat_store::Applied::Again => {
                return Err(Error::Decided(format!(
                    "`{}` has decided on `{step}` of run `{id}` already; a second vote does not count",
                    caller.name
                )));
            }
            _ => {
                return Err(Error::Decided(format!(
                    "`{step}` of run `{id}` is decided already: {}",
                    after.outcome.map_or("closed", |o| o.as_str())
                )));
            }
        }
        // Wakes the run if it waits on this daemon (another daemon hears the store).
        let _ = self.app.live.send(Arc::from(id));
        let word = match request.decision {
            Choice::Approve => "approved",
            Choice::Reject => "rejected",
        };
        let state = match after.outcome {
            None => format!(
                " ({} of {} approvals)",
                after.votes.iter().filter(|v| v.approve).count(),
                after.required
            ),
            Some(outcome) => format!(": {}", outcome.as_str()),
        };
        let comment = if after.votes.last().is_some_and(|v| !v.comment.is_empty()) {
            format!(
                " with \"{}\"",
                after.votes.last().map_or("", |v| v.comment.as_str())
            )
        } else {
            String::new()
        };
        Ok(Decided {
            answer: crate::approvals::view(&after, &run, caller),
            outcome: format!("{word} `{step}`{comment}{state}"),
        })
    }

    /// Waits until run `id` has asked for the approval at `step`, and answers it as `caller`
    /// sees it: for a front end that follows the run's events and sees the step start, before
    /// the question is in the store. `None` at once when `step` is no approval step of the
    /// run's workflow, and `None` when the step or the run ends without asking (a dry run
    /// asks nobody).
    pub async fn asked(
        &self,
        caller: &Principal,
        id: &str,
        step: &str,
    ) -> Result<Option<ApprovalView>> {
        require(caller, Role::Viewer)?;
        // Subscribed before the first read, so that the notice of the question is not missed.
        let mut live = self.app.live.subscribe();
        let run = self.find_run(id).await?;
        let is_approval = self.app.workflows.get(&run.workflow).is_some_and(|w| {
            w.steps
                .iter()
                .chain(&w.on_failure)
                .chain(&w.finally)
                .any(|s| s.id == step && matches!(s.kind, shiphat_workflow::StepKind::Approval(_)))
        });
        if !is_approval {
            return Ok(None);
        }
        loop {
            let run = self.find_run(id).await?;
            let approvals = self.app.store.approvals(id).await?;
            if let Some(approval) = approvals.iter().find(|a| a.step == step) {
                return Ok(Some(crate::approvals::view(approval, &run, caller)));
            }
            if run.status.is_terminal() {
                return Ok(None);
            }
            let steps = self.app.store.steps(id).await?;
            if steps
                .iter()
                .any(|s| s.step == step && s.status != shiphat_protocol::StepState::Running)
            {
                return Ok(None);
            }
            changed(&mut live, id).await;
        }
    }

    async fn find_run(&self, id: &str) -> Result<Run> {
        self.app
            .store
            .run(id)
            .await?
            .ok_or_else(|| Error::NoRun(id.to_owned()))
    }

    /// The run's account in lines (`shiphat_protocol::why`), for whoever may read the run.
    pub async fn why(&self, caller: &Principal, id: &str) -> Result<RunWhy> {
        let detail = self.run(caller, id).await?;
        Ok(RunWhy {
            lines: shiphat_protocol::why(&detail),
            run: detail.run.id,
            status: detail.run.status,
        })
    }

    /// A run with its plan, its steps and their logs.
    pub async fn run(&self, caller: &Principal, id: &str) -> Result<RunDetail> {
        require(caller, Role::Viewer)?;
        let app = &self.app;
        let run = self.find_run(id).await?;
        // Each step's log lines, by step id; the run's own under "".
        let mut logs: HashMap<String, Vec<LogLine>> = HashMap::new();
        let mut after = 0;
        loop {
            let batch = app.store.events(id, after, EVENT_BATCH).await?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            after = last;
            for (_, body) in batch {
                if let Ok(Event::Log {
                    step,
                    level,
                    source,
                    message,
                    time,
                    ..
                }) = serde_json::from_str(&body)
                {
                    logs.entry(step).or_default().push(LogLine {
                        level,
                        source,
                        message,
                        time,
                    });
                }
            }
        }
        let steps: Vec<StepView> = app
            .store
            .steps(id)
            .await?
            .into_iter()
            .map(|s| StepView {
                logs: logs.remove(&s.step).unwrap_or_default(),
                id: s.step,
                section: s.section,
                status: s.status,
                attempts: s.attempts,
                started_at: s.started_ms.map(rfc3339),
                finished_at: s.finished_ms.map(rfc3339),
                started_ms: s.started_ms,
                finished_ms: s.finished_ms,
                duration_ms: s.duration_ms,
                summary: s.summary,
                outputs: s.outputs,
                error: s.error,
                continued: s.continued,
            })
            .collect();
        let approvals: Vec<ApprovalView> = app
            .store
            .approvals(id)
            .await?
            .iter()
            .map(|a| crate::approvals::view(a, &run, caller))
            .collect();
        let mut view = run_view(app, &run);
        if run.status == RunStatus::Running && approvals.iter().any(|a| a.outcome.is_none()) {
            view.status = RunStatus::Waiting;
        }
        Ok(RunDetail {
            approvals,
            run: view,
            plan: match app.workflows.get(&run.workflow) {
                Some(workflow) => plan(&workflow),
                None => Vec::new(),
            },
            rollback: Rollback::of(steps.iter().map(|s| (s.section, s.status))),
            steps,
            logs: logs.remove("").unwrap_or_default(),
        })
    }

    /// Follows a run's stored events from after `after` (an event's sequence number; 0 for
    /// all) to the run's end. The follower counts as one of the caller's event streams.
    pub async fn follow(&self, caller: &Principal, id: &str, after: i64) -> Result<Follower> {
        require(caller, Role::Viewer)?;
        self.find_run(id).await?;
        let hold = self.take_stream(caller)?;
        let mut follower = self.follow_admitted(id);
        follower.after = after;
        follower._hold = Some(hold);
        Ok(follower)
    }

    /// Follows a run the caller has just been answered about by [`Service::admit`]: the daemon
    /// follows it on the caller's behalf (Slack's progress messages), so it is neither checked
    /// again nor counted against the caller's streams.
    pub fn follow_admitted(&self, id: &str) -> Follower {
        Follower {
            // Subscribed before the first read, so that no change after it is missed.
            live: self.app.live.subscribe(),
            app: self.app.clone(),
            id: id.to_owned(),
            after: 0,
            pending: VecDeque::new(),
            caught_up: false,
            done: false,
            ended: None,
            _hold: None,
        }
    }

    /// The changes of every run, as notices (see [`Feed::next`]). The feed counts as one of
    /// the caller's event streams.
    pub fn feed(&self, caller: &Principal) -> Result<Feed> {
        require(caller, Role::Viewer)?;
        let hold = self.take_stream(caller)?;
        Ok(Feed {
            live: self.app.live.subscribe(),
            _hold: hold,
        })
    }

    fn take_stream(&self, caller: &Principal) -> Result<Hold> {
        self.app
            .streams
            .take(&caller.name, MAX_STREAMS_PER_PRINCIPAL)
            .ok_or_else(|| Error::TooManyStreams {
                principal: caller.name.clone(),
                max: MAX_STREAMS_PER_PRINCIPAL,
            })
    }

    /// Cancels a run that is queued, interrupted or running: a deployer its own, an admin
    /// anyone's. A running run's steps end and its `on_failure` and `finally` still run;
    /// cancelling it again aborts those too.
    pub async fn cancel(&self, caller: &Principal, id: &str) -> Result<Cancelled> {
        let run = self.may_touch(caller, id).await?;
        if !self.app.cancel(&run, caller).await? {
            return Err(Error::Ended {
                id: run.id,
                status: run.status,
            });
        }
        Ok(Cancelled {
            answer: Cancelling {
                id: run.id,
                cancelling: true,
            },
            owner: run.principal,
        })
    }

    /// Queues an interrupted run again: a deployer its own, an admin anyone's. Under a lock on
    /// its key or workflow it needs an admin's `force`: a resume starts steps as a new run does.
    pub async fn resume(
        &self,
        caller: &Principal,
        id: &str,
        request: ResumeRun,
    ) -> Result<Resumption> {
        ResumeRun::allowed(caller)?;
        let app = &self.app;
        let run = self.may_touch(caller, id).await?;
        let lock = match run.status {
            RunStatus::Interrupted => {
                app.lock_on(run.concurrency_key.as_deref(), &run.workflow)
                    .await?
            }
            _ => None,
        };
        let forced = match lock {
            None => None,
            Some(lock) => Some(pass_lock(
                caller,
                lock,
                request.force,
                "; an admin may resume it past the lock with `{\"force\": true}`",
            )?),
        };
        // A resume is asked for by a person about a run that was already under way: it is
        // refused outside the window rather than left waiting, whatever the workflow says.
        let forced_window = match run.status {
            RunStatus::Interrupted => match self.pass_window(
                caller,
                &run.workflow,
                run.concurrency_key.as_deref(),
                request.force,
                false,
                "; an admin may resume it now with `{\"force\": true}`",
            )? {
                Passage::Forced(window) => Some(window),
                Passage::Open | Passage::Waits(_) => None,
            },
            _ => None,
        };
        if !app
            .resume(&run, caller, forced.as_ref(), forced_window.is_some())
            .await?
        {
            return Err(Error::NotInterrupted {
                id: run.id,
                status: run.status,
            });
        }
        Ok(Resumption {
            answer: Resumed {
                id: run.id,
                status: RunStatus::Queued,
            },
            forced: forced.as_ref().map(lock_view),
            forced_window,
        })
    }

    /// A deployer may cancel or resume its own runs; anyone else's needs an admin.
    async fn may_touch(&self, caller: &Principal, id: &str) -> Result<Run> {
        require(caller, Role::Deployer)?;
        let run = self.find_run(id).await?;
        if run.principal != caller.name {
            caller.require(Role::Admin).map_err(|e| {
                Error::Forbidden(format!("run `{id}` belongs to `{}`: {e}", run.principal))
            })?;
        }
        Ok(run)
    }

    /// The workflows loaded, by name.
    pub fn workflows(&self, caller: &Principal) -> Result<WorkflowList> {
        require(caller, Role::Viewer)?;
        let workflows = self
            .app
            .workflows
            .all()
            .iter()
            .map(|(workflow, readiness)| workflow_view(workflow, readiness))
            .collect();
        Ok(WorkflowList { workflows })
    }

    /// One workflow, and where it stands.
    pub fn workflow(&self, caller: &Principal, name: &str) -> Result<WorkflowView> {
        require(caller, Role::Viewer)?;
        match self.app.workflows.with_readiness(name) {
            Some((workflow, readiness)) => Ok(workflow_view(&workflow, &readiness)),
            None => Err(Error::NoWorkflow(name.to_owned())),
        }
    }

    /// A workflow's handbook in Markdown: what `shiphat explain` prints for its file, with
    /// who may run it by this daemon's principals and the deploy windows that name it.
    pub async fn handbook(&self, caller: &Principal, name: &str) -> Result<String> {
        require(caller, Role::Viewer)?;
        let workflows = &self.app.workflows;
        let Some(prepared) = workflows.prepared(name) else {
            return Err(match workflows.get(name) {
                Some(_) => Error::NotLoaded(name.to_owned()),
                None => Error::NoWorkflow(name.to_owned()),
            });
        };
        let mut lines = vec![self.who_may_run(name).await?];
        let verdict = self
            .app
            .config
            .windows
            .verdict(name, name, jiff::Timestamp::now());
        // The windows and freezes that name the workflow itself (or `*`); those that name a
        // concurrency key depend on a run's inputs, and the environments view has them.
        if let Some(verdict) = verdict {
            let rules = if verdict.windows.is_empty() {
                "A freeze of this daemon names it".to_owned()
            } else {
                format!(
                    "Its deploy windows on this daemon: {}",
                    verdict.windows.join("; ")
                )
            };
            let now = match verdict.reason() {
                None => "it may deploy now".to_owned(),
                Some(reason) => format!("closed now: {reason}"),
            };
            lines.push(format!("{rules}; {now}."));
        }
        Ok(shiphat_runner::handbook_for(&prepared, &lines))
    }

    /// Who may start a run of `workflow`, in a line: every principal the daemon knows (its
    /// config file's, Slack's users, the database's tokens) that is an admin, or a deployer
    /// with a pattern naming the workflow (in some environment, when the pattern names one).
    async fn who_may_run(&self, workflow: &str) -> Result<String> {
        let config = &self.app.config;
        let mut principals: Vec<Principal> = config
            .principals
            .iter()
            .map(|(_, p)| p.clone())
            .chain(
                config
                    .slack
                    .iter()
                    .flat_map(|s| s.users.iter().map(|u| u.principal.clone())),
            )
            .collect();
        for t in self.app.store.tokens().await? {
            // A database token named like a config principal speaks for no one.
            if !config.principal_names().any(|n| n == t.name) {
                principals.push(principal_of(t));
            }
        }
        principals.sort_by(|a, b| a.name.cmp(&b.name));
        principals.dedup_by(|a, b| a.name == b.name);
        let who: Vec<String> = principals
            .iter()
            .filter_map(|p| match p.reach(workflow) {
                Reach::Admin => Some(format!("`{}` (admin)", p.name)),
                Reach::Anywhere => Some(format!("`{}` (deployer)", p.name)),
                Reach::Environments(globs) => Some(format!(
                    "`{}` (deployer, in environments matching {})",
                    p.name,
                    globs
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Reach::Nowhere => None,
            })
            .collect();
        Ok(if who.is_empty() {
            "Nobody may run it: no principal of this daemon is an admin or a deployer whose patterns name it.".to_owned()
        } else {
            format!(
                "Who may run it, by this daemon's principals: {}.",
                who.join(", ")
            )
        })
    }

    /// The reloads of a workflow's file that changed what its steps may reach, newest first,
    /// from the audit log: for anyone who may read the workflow, who need not read the whole
    /// log (admins only).
    pub async fn grant_history(&self, caller: &Principal, name: &str) -> Result<GrantHistory> {
        require(caller, Role::Viewer)?;
        if self.app.workflows.get(name).is_none() {
            return Err(Error::NoWorkflow(name.to_owned()));
        }
        let entries = self
            .app
            .store
            .audit_of(crate::workflows::RELOAD_ACTION, name, MAX_PAGE)
            .await?;
        Ok(GrantHistory {
            workflow: name.to_owned(),
            changes: entries
                .into_iter()
                .map(|e| {
                    let (widened, steps) = crate::workflows::grant_steps(&e.outcome);
                    GrantChangeView {
                        at: rfc3339(e.at_ms),
                        at_ms: e.at_ms,
                        file: e.remote,
                        widened,
                        steps,
                    }
                })
                .collect(),
        })
    }

    /// Whether a run of `workflow` on `key` may deploy now by the deploy windows and freezes;
    /// `None` when none applies to it.
    pub fn window(
        &self,
        caller: &Principal,
        workflow: &str,
        key: &str,
    ) -> Result<Option<WindowView>> {
        require(caller, Role::Viewer)?;
        let verdict = self
            .app
            .config
            .windows
            .verdict(workflow, key, jiff::Timestamp::now());
        Ok(verdict.as_ref().map(window_view))
    }

    /// What is deployed where (see [`crate::environments`]).
    pub async fn environments(&self, caller: &Principal) -> Result<EnvironmentList> {
        require(caller, Role::Viewer)?;
        Ok(crate::environments::list(&self.app).await?)
    }

    pub async fn locks(&self, caller: &Principal) -> Result<LockList> {
        require(caller, Role::Viewer)?;
        let locks = self.app.store.locks().await?;
        Ok(LockList {
            locks: locks.iter().map(lock_view).collect(),
        })
    }

    pub async fn lock(&self, caller: &Principal, key: &str) -> Result<LockView> {
        require(caller, Role::Viewer)?;
        match self.app.store.lock(key).await? {
            Some(lock) => Ok(lock_view(&lock)),
            None => Err(Error::NotLocked(key.to_owned())),
        }
    }

    /// Locks `key` (an admin's): no run that takes it starts until it goes or expires.
    pub async fn put_lock(
        &self,
        caller: &Principal,
        key: &str,
        request: PutLock,
    ) -> Result<LockView> {
        PutLock::allowed(caller)?;
        let PutLock {
            reason,
            owner,
            expires_in,
        } = request;
        let owner = owner.unwrap_or_else(|| caller.name.clone());
        let now = shiphat_store::now_ms();
        let expires_ms = match expires_in {
            None => None,
            Some(text) => {
                let ttl = shiphat_protocol::lock_ttl(&text)
                    .map_err(|message| Error::invalid("expires_in", message))?;
                Some(now + ttl.as_millis() as i64)
            }
        };
        let lock = Lock {
            key: key.to_owned(),
            owner,
            reason,
            created_ms: now,
            expires_ms,
        };
        self.app.store.put_lock(&lock).await?;
        Ok(lock_view(&lock))
    }

    /// Removes the lock on `key` (an admin's) and queues again the runs it held.
    pub async fn unlock(&self, caller: &Principal, key: &str) -> Result<()> {
        require(caller, Role::Admin)?;
        if !self.app.unlock(key).await? {
            return Err(Error::NotLocked(key.to_owned()));
        }
        Ok(())
    }

    /// The newest entries of the audit log (admins only).
    pub async fn audit_log(&self, caller: &Principal) -> Result<AuditLog> {
        require(caller, Role::Admin)?;
        let entries = self.app.store.audit_log(MAX_PAGE).await?;
        Ok(AuditLog {
            entries: entries
                .into_iter()
                .map(|e| AuditView {
                    at: rfc3339(e.at_ms),
                    principal: e.principal,
                    action: e.action,
                    target: e.target,
                    remote: e.remote,
                    status: e.status,
                    outcome: e.outcome,
                })
                .collect(),
        })
    }

    /// The tokens (never their secrets): those of the database, then those declared in the
    /// config file, which only the file can change.
    pub async fn tokens(&self, caller: &Principal) -> Result<TokenList> {
        require(caller, Role::Admin)?;
        let app = &self.app;
        let mut tokens = app
            .store
            .tokens()
            .await?
            .iter()
            .map(|t| token_view(t, TokenSource::Database))
            .collect::<Vec<_>>();
        tokens.extend(app.config.principals.iter().map(|(_, p)| {
            let record = TokenRecord {
                name: p.name.clone(),
                roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
                patterns: p.patterns.clone(),
                created_ms: 0,
            };
            token_view(&record, TokenSource::Config)
        }));
        Ok(TokenList { tokens })
    }

    /// Mints a token: 32 random bytes, answered once; only its SHA-256 is stored.
    pub async fn create_token(&self, caller: &Principal, request: CreateToken) -> Result<NewToken> {
        CreateToken::allowed(caller)?;
        let CreateToken {
            name,
            roles,
            patterns,
        } = request;
        if let Some(problem) = shiphat_protocol::principal_name_problem(&name) {
            return Err(Error::invalid("name", problem));
        }
        if roles.is_empty() {
            return Err(Error::invalid(
                "roles",
                "`roles` is required: one or more of `viewer`, `deployer`, `admin`",
            ));
        }
        if let Some(bad) = patterns.iter().find(|p| p.is_empty() || p.contains(',')) {
            return Err(Error::invalid(
                "patterns",
                format!("`patterns` items must be non-empty strings without `,`, not `{bad}`"),
            ));
        }
        if self.app.config.principal_names().any(|n| n == name) {
            return Err(Error::NameTaken(format!(
                "`{name}` is a principal of the config file; pick another name"
            )));
        }
        let secret = crate::auth::new_token()
            .map_err(|e| Error::Internal(format!("cannot draw a token: {e}")))?;
        let record = TokenRecord {
            name,
            roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
            patterns,
            created_ms: shiphat_store::now_ms(),
        };
        // The store refuses a name taken in the database in the same transaction as the insert.
        match self
            .app
            .store
            .add_token(&token_hash(&secret), &record)
            .await
        {
            Err(e @ shiphat_store::Error::NameTaken { .. }) => {
                return Err(Error::NameTaken(e.to_string()));
            }
            other => other?,
        }
        Ok(NewToken {
            view: token_view(&record, TokenSource::Database),
            token: secret,
        })
    }

    /// Revokes the tokens named `name` at once: the next request with them is refused.
    pub async fn delete_token(&self, caller: &Principal, name: &str) -> Result<()> {
        require(caller, Role::Admin)?;
        if self.app.store.delete_token(name).await? {
            return Ok(());
        }
        if self
            .app
            .config
            .principals
            .iter()
            .any(|(_, p)| p.name == name)
        {
            return Err(Error::InConfig(name.to_owned()));
        }
        Err(Error::NoToken(name.to_owned()))
    }
}

/// Whether `caller` may go past `lock`: only an admin, and only with `force`.
fn pass_lock(caller: &Principal, lock: Lock, force: bool, hint: &'static str) -> Result<Lock> {
    if !force {
        return Err(Error::Locked { lock, hint });
    }
    caller
        .require(Role::Admin)
        .map_err(|e| Error::Forbidden(format!("forcing past a lock: {e}")))?;
    Ok(lock)
}

/// An event as stored: its sequence number and its JSON, exactly as `shiphat run --json`
/// writes it.
pub struct Stored {
    pub seq: i64,
    pub json: String,
}

impl Stored {
    /// The event; `None` for one this build cannot read.
    pub fn event(&self) -> Option<Event> {
        serde_json::from_str(&self.json).ok()
    }
}

/// A run's events, from the store, as they are committed ([`Service::follow`]). The store is
/// the source of truth; the live channel only says when to look again.
pub struct Follower {
    app: Arc<App>,
    id: String,
    live: broadcast::Receiver<Arc<str>>,
    /// The sequence number of the last event read.
    after: i64,
    pending: VecDeque<(i64, String)>,
    /// The last read found fewer than a batch: the next look is whether the run has ended.
    caught_up: bool,
    done: bool,
    ended: Option<Run>,
    /// One of the caller's event streams, given back when the follower is dropped.
    _hold: Option<Hold>,
}

impl Follower {
    /// The next event, once it is committed; `None` once the run has ended and every event
    /// is read (or the store cannot be read). Cancel-safe between events only: a front end
    /// that stops waiting drops the follower.
    pub async fn next(&mut self) -> Option<Stored> {
        loop {
            if let Some((seq, json)) = self.pending.pop_front() {
                return Some(Stored { seq, json });
            }
            if self.done {
                return None;
            }
            if !self.caught_up {
                self.read().await;
                continue;
            }
            match self.app.store.run(&self.id).await {
                Ok(Some(run)) if run.status.is_terminal() => {
                    // One last look: the final events are committed before the status changes.
                    self.read().await;
                    if self.pending.is_empty() {
                        self.ended = Some(run);
                        self.done = true;
                    }
                    continue;
                }
                Ok(Some(_)) => {}
                Ok(None) => self.done = true,
                Err(e) => {
                    tracing::error!("following run `{}`: {e}", self.id);
                    self.done = true;
                }
            }
            if self.done {
                continue;
            }
            changed(&mut self.live, &self.id).await;
            self.caught_up = false;
        }
    }

    /// Reads the next batch into `pending`.
    async fn read(&mut self) {
        match self
            .app
            .store
            .events(&self.id, self.after, EVENT_BATCH)
            .await
        {
            Ok(batch) => {
                self.caught_up = batch.len() < EVENT_BATCH as usize;
                if let Some(&(last, _)) = batch.last() {
                    self.after = last;
                }
                self.pending.extend(batch);
            }
            Err(e) => {
                tracing::error!("following run `{}`: {e}", self.id);
                self.done = true;
            }
        }
    }

    /// The run as it ended, once [`Follower::next`] has answered `None` because it did.
    pub fn ended(&self) -> Option<RunView> {
        self.ended.as_ref().map(|run| run_view(&self.app, run))
    }
}

/// Waits for a notice that run `id` changed (or that notices were lost), or [`FOLLOW_POLL`],
/// whichever comes first.
async fn changed(live: &mut broadcast::Receiver<Arc<str>>, id: &str) {
    let wake = async {
        loop {
            match live.recv().await {
                Ok(run) if *run == *id => return,
                Ok(_) => {}
                Err(RecvError::Lagged(_) | RecvError::Closed) => return,
            }
        }
    };
    tokio::select! {
        () = wake => {}
        () = tokio::time::sleep(FOLLOW_POLL) => {}
    }
}

/// Every run's changes ([`Service::feed`]).
pub struct Feed {
    live: broadcast::Receiver<Arc<str>>,
    _hold: Hold,
}

impl Feed {
    /// The runs that changed (created, started, a step or a log line, ended), each once,
    /// gathered for [`FEED_COALESCE`] after the first change; one notice with no run when
    /// notices were lost and everything should be read again. `None` when the daemon stops.
    pub async fn next(&mut self) -> Option<Vec<RunNotice>> {
        let mut changed: Vec<Option<Arc<str>>> = Vec::new();
        let mut note = |r: Result<Arc<str>, RecvError>| match r {
            Ok(id) => {
                if !changed.iter().any(|c| c.as_ref() == Some(&id)) {
                    changed.push(Some(id));
                }
                true
            }
            Err(RecvError::Lagged(_)) => {
                changed.push(None);
                true
            }
            Err(RecvError::Closed) => false,
        };
        if !note(self.live.recv().await) {
            return None;
        }
        let window = tokio::time::sleep(FEED_COALESCE);
        tokio::pin!(window);
        loop {
            tokio::select! {
                r = self.live.recv() => if !note(r) { return None },
                () = &mut window => break,
            }
        }
        if changed.contains(&None) {
            changed = vec![None];
        }
        Some(
            changed
                .into_iter()
                .map(|id| RunNotice {
                    run: id.as_deref().map(str::to_owned),
                })
                .collect(),
        )
    }
}

/// Who a stored token speaks for; a role this build does not know grants nothing.
fn principal_of(t: TokenRecord) -> Principal {
    Principal {
        name: t.name,
        roles: t.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        patterns: t.patterns,
    }
}

pub(crate) fn run_view(app: &App, run: &Run) -> RunView {
    let (waiting_on, queue_position) = match app.waiting_on(&run.id) {
        Some((holder, position)) => (holder, Some(position as u64)),
        None => (None, None),
    };
    RunView {
        id: run.id.clone(),
        workflow: run.workflow.clone(),
        status: run.status,
        detail: run.detail.clone(),
        inputs: run.inputs.as_object().cloned().unwrap_or_default(),
        principal: run.principal.clone(),
        source: run.source,
        dry_run: run.dry_run,
        concurrency_key: run.concurrency_key.clone(),
        queue_position,
        waiting_on,
        daemon: run.daemon.clone(),
        environment: run
            .inputs
            .get("environment")
            .and_then(Value::as_str)
            .map(str::to_owned),
        created_at: rfc3339(run.created_ms),
        started_at: run.started_ms.map(rfc3339),
        finished_at: run.finished_ms.map(rfc3339),
        created_ms: run.created_ms,
        started_ms: run.started_ms,
        finished_ms: run.finished_ms,
        duration_ms: run
            .started_ms
            .zip(run.finished_ms)
            .map(|(s, f)| (f - s).max(0)),
    }
}

/// A verdict of the deploy windows, as the API says it.
pub(crate) fn window_view(verdict: &crate::windows::Verdict) -> WindowView {
    use crate::windows::{State, Why};
    let next = verdict.next_change();
    WindowView {
        open: verdict.is_open(),
        reason: verdict.reason(),
        freeze: match &verdict.state {
            State::Closed {
                why: Why::Frozen { reason, .. },
                ..
            } => Some(reason.clone()),
            _ => None,
        },
        next_change_at: next.map(crate::windows::Local::rfc3339),
        next_change_local: next.map(crate::windows::Local::local),
        windows: verdict.windows.clone(),
    }
}

pub(crate) fn lock_view(lock: &Lock) -> LockView {
    LockView {
        key: lock.key.clone(),
        owner: lock.owner.clone(),
        reason: lock.reason.clone(),
        created_at: rfc3339(lock.created_ms),
        expires_at: lock.expires_ms.map(rfc3339),
    }
}

fn token_view(token: &TokenRecord, source: TokenSource) -> TokenView {
    TokenView {
        name: token.name.clone(),
        // A role this build does not know (from a newer one) grants nothing here either.
        roles: token.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        patterns: token.patterns.clone(),
        created_at: (token.created_ms > 0).then(|| rfc3339(token.created_ms)),
        source,
    }
}

fn workflow_view(
    w: &shiphat_workflow::Workflow,
    readiness: &crate::workflows::Readiness,
) -> WorkflowView {
    let compiling: Vec<CompilingPlugin> = readiness
        .compiling
        .iter()
        .map(|(file, bytes)| CompilingPlugin {
            file: file.clone(),
            bytes: *bytes,
        })
        .collect();
    WorkflowView {
        status: match (readiness.ready, compiling.is_empty()) {
            (true, _) => WorkflowStatus::Ready,
            (false, true) => WorkflowStatus::Loading,
            (false, false) => WorkflowStatus::Compiling,
        },
        compiling,
        reloading: readiness.reloading,
        load_error: readiness.error.clone(),
        name: w.name.clone(),
        description: w.description.clone(),
        file: w.file.display().to_string(),
        concurrency: w.concurrency.as_ref().map(|c| ConcurrencyView {
            key: c.key.source().to_owned(),
            queue: c.queue,
        }),
        resume: match w.resume {
            shiphat_workflow::Resume::Auto => ResumeMode::Auto,
            shiphat_workflow::Resume::Manual => ResumeMode::Manual,
        },
        outside_window: match w.outside_window {
            shiphat_workflow::OutsideWindow::Refuse => OutsideWindowMode::Refuse,
            shiphat_workflow::OutsideWindow::Wait => OutsideWindowMode::Wait,
        },
        inputs: w
            .inputs
            .iter()
            .map(|i| InputView {
                name: i.name.clone(),
                description: i.description.clone(),
                kind: match &i.kind {
                    shiphat_workflow::InputKind::String => InputType::String,
                    shiphat_workflow::InputKind::Number => InputType::Number,
                    shiphat_workflow::InputKind::Bool => InputType::Bool,
                    shiphat_workflow::InputKind::Choice(c) => InputType::Choice(c.clone()),
                },
                required: i.required,
                default: i.default.clone(),
            })
            .collect(),
        steps: w
            .all_steps()
            .map(|s| StepName {
                id: s.id.clone(),
                name: s.name.clone(),
            })
            .collect(),
    }
}

/// Every step of `workflow` in order, with its section and plugin: what a run page shows
/// before the steps start.
fn plan(workflow: &shiphat_workflow::Workflow) -> Vec<PlanStep> {
    let sections = [
        (Section::Steps, &workflow.steps),
        (Section::OnFailure, &workflow.on_failure),
        (Section::Finally, &workflow.finally),
    ];
    sections
        .into_iter()
        .flat_map(|(section, steps)| steps.iter().map(move |s| (section, s)))
        .map(|(section, s)| {
            let uses = match &s.kind {
                shiphat_workflow::StepKind::Plugin(shiphat_workflow::PluginRef::Name {
                    name,
                    ..
                }) => name.clone(),
                shiphat_workflow::StepKind::Plugin(shiphat_workflow::PluginRef::Path {
                    path,
                    ..
                }) => path
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                shiphat_workflow::StepKind::Plugin(shiphat_workflow::PluginRef::Oci(r)) => {
                    r.unpinned().to_string()
                }
                // What a run page shows where a plugin's name would be.
                shiphat_workflow::StepKind::Approval(_) => "approval".to_owned(),
            };
            PlanStep {
                id: s.id.clone(),
                name: s.name.clone(),
                section,
                uses,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{app, principal};

    /// How long a test waits for what must come at once.
    const PROMPTLY: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_follower_of_a_run_that_ended_without_events_ends_with_it() {
        // Slack's follower of a run cancelled while it was queued must say how it ended: the
        // run has no `run_finished` to say it.
        let test = app();
        let service = Service::new(test.app.clone());
        let id = test.queued_run("deployer").await;
        let deployer = principal(Role::Deployer);
        service.cancel(&deployer, &id).await.unwrap();
        let mut follower = service.follow(&deployer, &id, 0).await.unwrap();
        let next = tokio::time::timeout(PROMPTLY, follower.next()).await;
        assert!(next.expect("the follower ends at once").is_none());
        let ended = follower
            .ended()
            .expect("the follower knows how the run ended");
        assert_eq!(ended.status, RunStatus::Cancelled);
        assert_eq!(ended.detail.as_deref(), Some("cancelled by `deployer`"));
    }

    #[tokio::test]
    async fn a_principal_holds_a_bounded_number_of_event_streams() {
        // A client opening streams without end held a task, a store reader and a socket for
        // each; the 33rd is refused, and closing one lets the next in.
        let test = app();
        let service = Service::new(test.app.clone());
        let id = test.queued_run("viewer").await;
        let viewer = principal(Role::Viewer);
        let mut held = Vec::new();
        for _ in 0..MAX_STREAMS_PER_PRINCIPAL {
            held.push(service.follow(&viewer, &id, 0).await.unwrap());
        }
        let refused = service.follow(&viewer, &id, 0).await.err();
        assert!(
            matches!(refused, Some(Error::TooManyStreams { max: 32, .. })),
            "{refused:?}"
        );
        assert!(matches!(
            service.feed(&viewer).err(),
            Some(Error::TooManyStreams { .. })
        ));
        // Another principal's streams are its own.
        service.feed(&principal(Role::Admin)).unwrap();
        held.pop();
        service.feed(&viewer).unwrap();
    }

    #[tokio::test]
    async fn admission_refuses_a_viewer_and_a_blank_idempotency_key_before_the_workflow() {
        let test = app();
        let service = Service::new(test.app.clone());
        let request = || CreateRun {
            workflow: "web".into(),
            inputs: Map::new(),
            dry_run: false,
            force: false,
        };
        let viewer = service
            .admit(&principal(Role::Viewer), request(), None, RunSource::Api)
            .await;
        assert!(matches!(viewer, Err(Error::Forbidden(_))), "{viewer:?}");
        let deployer = principal(Role::Deployer);
        for key in ["", "  ", &"k".repeat(MAX_IDEMPOTENCY_KEY + 1)] {
            let blank = service
                .admit(&deployer, request(), Some(key), RunSource::Api)
                .await;
            assert!(matches!(blank, Err(Error::Invalid { .. })), "{blank:?}");
        }
        let unknown = service
            .admit(&deployer, request(), Some("k"), RunSource::Api)
            .await;
        assert!(
            matches!(&unknown, Err(Error::NoWorkflow(name)) if name == "web"),
            "{unknown:?}"
        );
    }
}
