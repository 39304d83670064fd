//! Runs a checked shiphat workflow on tokio.
//!
//! [`Runner::prepare`] turns a [`Workflow`] into a [`Prepared`] run: every plugin found,
//! loaded and described, and every step's `with:` block checked against its plugin's schema.
//! [`Runner::run`] then executes it: steps whose `needs` are met run in parallel, transient
//! errors are retried with backoff, a failure stops new steps from starting (fail fast) and
//! runs `on_failure`, and `finally` always runs. Everything that happens is reported as one
//! stream of [`Event`]s.
//!
//! The runner never prints and never parses YAML; it does not know wasmtime either, only the
//! plain interface of `shiphat-host`.

mod approval;
mod event;
mod handbook;
mod plugins;
mod secrets;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Map, Value};
use shiphat_host::{
    Call, Context, Fault, Grants, Host, LogLine, Outcome, Plugin, PluginInfo, Redactor,
};
use shiphat_workflow::{
    ConfigSchema, Diagnostic, PluginRef, Scope, Status, Step, StepKind, Workflow,
};
use tokio_util::sync::CancellationToken;

pub use crate::approval::{ApprovalRequest, Approver, Decision, Vote};
pub use crate::handbook::{handbook, handbook_for};
pub use crate::plugins::PluginPath;
pub use crate::secrets::Secrets;
pub use shiphat_host::CompileHook;
pub use shiphat_protocol::{
    ErrorKind, Event, LogLevel, LogSource, RunOutcome, Section, StepError, StepHeader, StepStatus,
};

/// Why a workflow cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Problems found in the workflow against its plugins, each with its position.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Receives the events of a run, in order, from the task that runs it.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// Resolves once an event is durable, with every event the sink received before it.
pub type Durable = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Receives the events of a run, in order, like an [`EventSink`], and may answer with a
/// [`Durable`] for the runner to wait on: see [`Runner::run_durable`].
pub type DurableSink = Arc<dyn Fn(Event) -> Option<Durable> + Send + Sync>;

/// How much longer than an approval step's timeout the runner waits for its approver before
/// it ends the step itself: a second covers the store round trips of an approver that keeps
/// the deadline (the daemon's), so its answer, with the votes given, is the one recorded.
const APPROVER_GRACE: Duration = Duration::from_secs(1);

/// Runs workflows. Holds the plugin host and where plugins and secrets come from.
#[derive(Clone)]
pub struct Runner {
    host: Host,
    plugin_path: PluginPath,
    secrets: Secrets,
    /// Who approval steps ask.
    approver: Arc<dyn Approver>,
    /// Where `uses: oci://…` plugins come from, and whether the lock file must pin them.
    registry: Option<(Arc<shiphat_oci::Registry>, shiphat_oci::Mode)>,
}

/// A step ready to run.
enum PreparedStep {
    Plugin(PreparedPlugin),
    /// An approval step: nothing to load.
    Approval,
}

/// A plugin step ready to run: its plugin loaded and its schema compiled.
struct PreparedPlugin {
    plugin: Arc<Plugin>,
    info: PluginInfo,
    schema: Arc<ConfigSchema>,
    /// The `with:` block as the plugin receives it (JSON text), when it holds no expression:
    /// checked against the schema once, here, instead of on every attempt.
    literal_config: Option<Arc<str>>,
}

/// A workflow whose plugins are loaded and whose steps are checked against them.
pub struct Prepared {
    pub workflow: Arc<Workflow>,
    /// One per step, in [`Workflow::all_steps`] order.
    steps: Vec<PreparedStep>,
}

impl Prepared {
    /// The plugin behind each plugin step, in [`Workflow::all_steps`] order.
    pub fn plugins(&self) -> impl Iterator<Item = (&Step, &Plugin, &PluginInfo)> {
        self.workflow
            .all_steps()
            .zip(&self.steps)
            .filter_map(|(step, prepared)| match prepared {
                PreparedStep::Plugin(p) => Some((step, p.plugin.as_ref(), &p.info)),
                PreparedStep::Approval => None,
            })
    }
}

/// What to run a prepared workflow with.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub run_id: String,
    pub inputs: Map<String, Value>,
    pub dry_run: bool,
}

/// One step of a past run to run again: see [`Runner::replay_step`].
#[derive(Clone, Debug)]
pub struct Replay {
    /// The step's id.
    pub step: String,
    /// The inputs the run was started with.
    pub inputs: Map<String, Value>,
    /// The steps that had settled when it started, whose outputs its `with:` may read.
    pub prior: Vec<PriorStep>,
    /// Keys added to its resolved `with:`.
    pub config: Map<String, Value>,
}

/// A step settled in an earlier life of the run (before a daemon restart), handed to
/// [`Runner::run_from`] so the run goes on from where it stopped instead of from the start.
#[derive(Clone, Debug, PartialEq)]
pub struct PriorStep {
    pub id: String,
    pub status: StepStatus,
    pub outputs: Map<String, Value>,
    /// The step failed but `continue_on_error` let the run go on.
    pub continued: bool,
}

/// How a run is stopped from outside, in two levels, as GitHub Actions and Argo do it.
///
/// [`Stop::cancel`] ends the running steps of the main section and starts no more of them,
/// but the safety net still runs: `on_failure` (a cancelled run did not succeed) and
/// `finally`, like GitHub Actions' `always()` steps and Argo's exit handlers. A deploy that is
/// cancelled halfway is therefore rolled back or cleaned up, not left as it stood.
/// [`Stop::abort`] ends everything at once, the safety net included: what a second Ctrl-C
/// asks for.
///
/// A plain [`CancellationToken`] converts into a `Stop` that can only cancel.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    abort: CancellationToken,
    /// A child of `abort`: aborting cancels too.
    cancel: CancellationToken,
}

impl Stop {
    pub fn new() -> Self {
        let abort = CancellationToken::new();
        let cancel = abort.child_token();
        Self { abort, cancel }
    }

    /// Cancels the run: running steps end, `on_failure` and `finally` still run.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Aborts the run: every running step ends at once and nothing more starts.
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// Cancels a run that is not cancelled yet, and aborts one that is: what a repeated
    /// Ctrl-C or a second cancel request means. Returns whether the run is now aborted.
    pub fn escalate(&self) -> bool {
        if self.cancel.is_cancelled() {
            self.abort();
            true
        } else {
            self.cancel();
            false
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub fn is_aborted(&self) -> bool {
        self.abort.is_cancelled()
    }

    /// The token that ends the steps of `section`: the main steps end on a cancel, the
    /// safety net only on an abort.
    fn token(&self, section: Section) -> &CancellationToken {
        match section {
            Section::Steps => &self.cancel,
            Section::OnFailure | Section::Finally => &self.abort,
        }
    }
}

impl From<CancellationToken> for Stop {
    fn from(cancel: CancellationToken) -> Self {
        Self {
            abort: CancellationToken::new(),
            cancel,
        }
    }
}

/// A new run id: a ULID, so ids sort by creation time.
pub fn new_run_id() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

/// The result of one step, as the run left it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    pub id: String,
    pub name: String,
    pub section: Section,
    pub status: StepStatus,
    pub attempts: u32,
    pub duration: Duration,
    pub summary: String,
    pub outputs: Map<String, Value>,
    pub error: Option<StepError>,
    pub continued: bool,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub run_id: String,
    pub status: RunOutcome,
    pub duration: Duration,
    /// Every step that ran or was skipped, in the order they finished.
    pub steps: Vec<StepReport>,
}

impl Runner {
    pub fn new(host: Host, plugin_path: PluginPath, secrets: Secrets) -> Self {
        Runner {
            host,
            plugin_path,
            secrets,
            approver: approval::nobody(),
            registry: None,
        }
    }

    /// `uses: oci://…` plugins come from `registry` and its cache, pinned by the lock file
    /// beside each workflow as `mode` says. Without one such a step cannot load.
    pub fn with_registry(
        mut self,
        registry: Arc<shiphat_oci::Registry>,
        mode: shiphat_oci::Mode,
    ) -> Self {
        self.registry = Some((registry, mode));
        self
    }

    /// Approval steps ask `approver`. Without one they fail at once, saying nobody can be
    /// asked.
    pub fn with_approver(mut self, approver: Arc<dyn Approver>) -> Self {
        self.approver = approver;
        self
    }

    /// Where `uses: NAME` plugins are looked for.
    pub fn plugin_path(&self) -> &PluginPath {
        &self.plugin_path
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Finds, loads and describes every step's plugin, then checks each `with:` block against
    /// its plugin's schema. All problems are reported together, in step order.
    ///
    /// Each distinct plugin is loaded (read, digested, compiled or read back from the compile
    /// cache) and described on a task of its own, so a one-shot run of three plugins waits
    /// for the slowest of them rather than for their sum. Steps that share a plugin share
    /// its load, and its compiled schema.
    pub async fn prepare(&self, workflow: Workflow) -> Result<Prepared> {
        self.prepare_with(workflow, None).await
    }

    /// [`Runner::prepare`], telling `on_compile` (instead of the host's own hook) of each
    /// plugin that must be compiled first: the daemon shows it as the workflow's state.
    pub async fn prepare_with(
        &self,
        workflow: Workflow,
        on_compile: Option<CompileHook>,
    ) -> Result<Prepared> {
        type Key = (PathBuf, Option<[u8; 32]>, usize);
        let mut loads: HashMap<Key, tokio::task::JoinHandle<_>> = HashMap::new();
        let mut keys = Vec::new();
        let fetched = self.fetch_oci(&workflow).await;
        for step in workflow.all_steps() {
            let Some(uses) = step.kind.plugin() else {
                keys.push(None);
                continue;
            };
            let resolved = match uses {
                PluginRef::Oci(r) => fetched[r]
                    .as_ref()
                    .map(|f| (f.path.clone(), Some(f.component)))
                    .map_err(Clone::clone),
                other => self.plugin_path.resolve(other),
            };
            let key = resolved.map(|(path, pinned)| (path, pinned, step.limits.stack));
            if let Ok(key) = &key {
                loads.entry(key.clone()).or_insert_with(|| {
                    let host = self.host.clone();
                    let (path, pinned, stack) = key.clone();
                    let on_compile = on_compile.clone();
                    tokio::spawn(async move {
                        let loader = host.clone();
                        let plugin = tokio::task::spawn_blocking(move || match &on_compile {
                            Some(hook) => loader.load_with(&path, pinned, stack, Some(hook)),
                            None => loader.load(&path, pinned, stack),
                        })
                        .await
                        .map_err(|e| format!("loading the plugin failed: {e}"))?
                        .map_err(|e| e.to_string())?;
                        let info = host.describe(&plugin).await.map_err(|e| e.to_string())?;
                        Ok::<_, String>((plugin, info))
                    })
                });
            }
            keys.push(Some(key));
        }
        let mut loaded = HashMap::new();
        for (key, load) in loads {
            let mut result = load
                .await
                .unwrap_or_else(|e| Err(format!("loading the plugin failed: {e}")));
            // A pulled component that no longer matches its digest is damaged in the cache:
            // it is removed, so that the next run or `shiphat plugin pull` fetches it again.
            if let (Err(e), Some((registry, _))) = (&mut result, &self.registry)
                && let Some(f) = fetched.values().flatten().find(|f| f.path == key.0)
                && e.contains("does not match its pinned digest")
            {
                registry.evict(&f.component_digest());
                e.push_str("; the damaged copy was removed from the cache, so the next run fetches it again");
            }
            loaded.insert(key, result);
        }

        let mut steps = Vec::new();
        let mut problems = Vec::new();
        let mut schemas = HashMap::new();
        for (step, key) in workflow.all_steps().zip(keys) {
            let Some(key) = key else {
                steps.push(PreparedStep::Approval);
                continue;
            };
            let loaded = key.and_then(|key| loaded[&key].clone());
            match Self::check_step(&workflow, step, loaded, &mut schemas) {
                Ok(prepared) => steps.push(prepared),
                Err(mut diagnostics) => problems.append(&mut diagnostics),
            }
        }
        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        Ok(Prepared {
            workflow: Arc::new(workflow),
            steps,
        })
    }

    /// Finds every `oci://` plugin of a workflow in the cache, or pulls it: the digest the
    /// lock file beside the workflow pins (see [`shiphat_oci::choose`]). The registry is asked
    /// only what it must be: nothing for a reference pinned by digest or (in
    /// [`shiphat_oci::Mode::Normal`]) by the lock file; with `--locked`, whether a locked tag
    /// drifted, which is skipped, with a warning, when the registry cannot be reached, so
    /// that a registry that is down stops no deploy whose plugins are cached.
    async fn fetch_oci(
        &self,
        workflow: &Workflow,
    ) -> HashMap<shiphat_workflow::OciRef, std::result::Result<shiphat_oci::Fetched, String>> {
        use shiphat_oci::{Lock, Mode};
        let refs: std::collections::BTreeSet<shiphat_workflow::OciRef> = workflow
            .all_steps()
            .filter_map(|s| match s.kind.plugin() {
                Some(PluginRef::Oci(r)) => Some(r.clone()),
                _ => None,
            })
            .collect();
        let mut out = HashMap::new();
        if refs.is_empty() {
            return out;
        }
        let Some((registry, mode)) = &self.registry else {
            for r in refs {
                out.insert(
                    r,
                    Err("this runner has no registry client for `oci://` plugins".to_owned()),
                );
            }
            return out;
        };
        let lock = match Lock::read(&Lock::path_for(&workflow.file)) {
            Ok(lock) => lock,
            Err(e) => {
                for r in refs {
                    out.insert(r, Err(e.to_string()));
                }
                return out;
            }
        };
        for r in refs {
            let ask = r.digest.is_none()
                && r.tag.is_some()
                && (*mode == Mode::Locked) == lock.get(&r).is_some();
            let current = if ask {
                match registry.current_digest(&r).await {
                    Ok(digest) => Some(digest),
                    Err(e) => {
                        tracing::warn!("cannot ask the registry what `{r}` names now: {e}");
                        None
                    }
                }
            } else {
                None
            };
            let recalled = registry.recalled_digest(&r);
            let result = match shiphat_oci::choose(
                &r,
                &lock,
                *mode,
                current.as_deref(),
                recalled.as_deref(),
            ) {
                Ok(digest) => {
                    let pinned = r.pinned(&digest);
                    match registry.cached(&pinned) {
                        Ok(Some(found)) => Ok(found),
                        Ok(None) | Err(shiphat_oci::Error::Corrupt { .. }) => {
                            registry.fetch(&pinned).await
                        }
                        Err(e) => Err(e),
                    }
                    .map_err(|e| format!("plugin `{r}`: {e}"))
                }
                Err(e) => Err(e.to_string()),
            };
            out.insert(r, result);
        }
        out
    }

    /// Checks a step's `with:` against the schema of the plugin it loaded (or reports why
    /// the plugin could not be loaded).
    fn check_step(
        workflow: &Workflow,
        step: &Step,
        loaded: std::result::Result<(Arc<Plugin>, PluginInfo), String>,
        schemas: &mut HashMap<String, Arc<ConfigSchema>>,
    ) -> std::result::Result<PreparedStep, Vec<Diagnostic>> {
        let at_step = |message: String| {
            vec![Diagnostic {
                file: workflow.file.clone(),
                location: Some(step.location),
                message: format!("step `{}`: {message}", step.id),
            }]
        };
        let (plugin, info) = loaded.map_err(at_step)?;
        let schema = match schemas.get(&plugin.digest()) {
            Some(schema) => Arc::clone(schema),
            None => {
                let schema = ConfigSchema::compile(&info.config_schema).map_err(|e| {
                    at_step(format!(
                        "plugin `{}` has an invalid config-schema: {e}",
                        info.name
                    ))
                })?;
                let schema = Arc::new(schema);
                schemas.insert(plugin.digest(), Arc::clone(&schema));
                schema
            }
        };
        let diagnostics = shiphat_workflow::check_config_with(workflow, step, &schema);
        if !diagnostics.is_empty() {
            return Err(diagnostics);
        }
        // The check above passed every literal value, so a block without expressions passes
        // here too; checking it with the run-time check keeps that true by construction.
        let literal_config = step
            .with
            .literal()
            .filter(|config| schema.validate(config).is_ok())
            .map(|config| Arc::from(config.to_string()));
        Ok(PreparedStep::Plugin(PreparedPlugin {
            plugin,
            info,
            schema,
            literal_config,
        }))
    }

    /// Runs a prepared workflow to the end and reports how it went. A [`Stop`] cancels the
    /// run (the safety net still runs) or aborts it; either way the run ends `cancelled`.
    pub async fn run(
        &self,
        prepared: &Prepared,
        options: RunOptions,
        events: EventSink,
        stop: impl Into<Stop>,
    ) -> RunReport {
        self.run_from(prepared, options, Vec::new(), events, stop)
            .await
    }

    /// Runs a prepared workflow like [`Runner::run`], taking the steps in `prior` as already
    /// settled: they are not run again, later steps see their outputs, and no events are
    /// emitted for them. The daemon uses this to resume a run interrupted by a restart.
    ///
    /// The sink is called synchronously from the run's task, which runs its steps side by side
    /// as futures of its own (each attempt's plugin on a thread of its own), so a sink that
    /// blocks holds up every step of the run: `step_started` before the plugin is called and
    /// `step_finished` before any step that needs it starts, so a sink that commits each event
    /// durably gives that ordering on disk too.
    pub async fn run_from(
        &self,
        prepared: &Prepared,
        options: RunOptions,
        prior: Vec<PriorStep>,
        events: EventSink,
        stop: impl Into<Stop>,
    ) -> RunReport {
        let events: DurableSink = Arc::new(move |event: Event| -> Option<Durable> {
            events(event);
            None
        });
        self.run_durable(prepared, options, prior, events, stop)
            .await
    }

    /// [`Runner::run_from`] with a sink that writes events somewhere durable without blocking:
    /// it queues each event, in order, and may answer with a [`Durable`] that resolves once
    /// the event (and all before it) is written. The runner waits on the answer to
    /// `step_started` before it calls the plugin, and on the answer to `run_finished` before it
    /// returns; it drops the others. A step's end is followed by the next step's start or the
    /// run's end, so each step's start is durable before its plugin runs and its end before
    /// any later step runs, and a step's end shares the next step's start's commit. A sink
    /// that could not record a step's start aborts the run's [`Stop`] before its answer
    /// resolves: the step's plugin is then never called.
    pub async fn run_durable(
        &self,
        prepared: &Prepared,
        options: RunOptions,
        prior: Vec<PriorStep>,
        events: DurableSink,
        stop: impl Into<Stop>,
    ) -> RunReport {
        let started = Instant::now();
        let workflow = prepared.workflow.clone();
        let run = Arc::new(self.run_state(&workflow, options, prior, events, stop.into()));
        let headers = sections(&workflow)
            .flat_map(|(section, steps)| {
                steps.iter().map(move |s| StepHeader {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    section,
                })
            })
            .collect();
        run.emit(Event::RunStarted {
            run_id: run.run_id.clone(),
            workflow: workflow.name.clone(),
            dry_run: run.dry_run,
            steps: headers,
            time: event::now(),
        });

        let run = match workflow.resolve_env(&run.inputs, &run.run_id) {
            Ok(env) => Arc::new(RunState {
                env,
                ..Arc::into_inner(run).expect("not shared yet")
            }),
            Err(e) => {
                let error = StepError {
                    kind: ErrorKind::Setup,
                    message: format!("workflow env: {e}"),
                };
                run.emit(Event::Log {
                    run_id: run.run_id.clone(),
                    step: String::new(),
                    level: LogLevel::Error,
                    source: LogSource::Engine,
                    message: error.message.clone(),
                    time: event::now(),
                });
                return run.finish(started, RunOutcome::Failed).await;
            }
        };

        let mut offset = 0;
        let mut main_ok = true;
        for (section, steps) in sections(&workflow) {
            let prepared_steps = &prepared.steps[offset..offset + steps.len()];
            offset += steps.len();
            let should_run = match section {
                Section::Steps => true,
                Section::OnFailure => !main_ok,
                Section::Finally => true,
            };
            if !should_run || steps.is_empty() {
                continue;
            }
            if section != Section::Steps && run.stop.is_cancelled() && !run.stop.is_aborted() {
                run.log(
                    "",
                    LogLevel::Warn,
                    format!(
                        "the run was cancelled; running {} before it ends",
                        section.as_str()
                    ),
                );
            }
            let ok = self.run_section(&run, section, steps, prepared_steps).await;
            if section == Section::Steps {
                main_ok = ok;
            } else if section == Section::Finally && !ok {
                main_ok = false;
            }
        }
        let status = if run.stop.is_cancelled() {
            RunOutcome::Cancelled
        } else if main_ok {
            RunOutcome::Succeeded
        } else {
            RunOutcome::Failed
        };
        run.finish(started, status).await
    }

    /// The state a run starts with, its workflow `env` not yet resolved.
    fn run_state(
        &self,
        workflow: &Arc<Workflow>,
        options: RunOptions,
        prior: Vec<PriorStep>,
        events: DurableSink,
        stop: Stop,
    ) -> RunState {
        // Every secret any step is granted, looked up once: each step's logs, outputs and
        // errors are redacted of all of them, since a step can hand a secret on to another
        // through a file or an output.
        let mut secrets = BTreeMap::new();
        for name in workflow.all_steps().flat_map(|step| &step.allow.secrets) {
            if !secrets.contains_key(name)
                && let Some(value) = self.secrets.get(name)
            {
                secrets.insert(name.clone(), value);
            }
        }
        let redactor = Redactor::new(secrets.values().map(String::as_str));
        RunState {
            run_id: options.run_id,
            workflow: workflow.clone(),
            inputs: options.inputs,
            env: Map::new(),
            dry_run: options.dry_run,
            events,
            stop,
            steps: Mutex::new(BTreeMap::new()),
            failed: AtomicBool::new(false),
            reports: Mutex::new(Vec::new()),
            prior,
            secrets,
            redactor,
        }
    }

    /// Runs one plugin step of a workflow once, apart from the rest, as it would have run in a
    /// past run: its `with:` resolved from that run's inputs and the outputs its earlier steps
    /// left (`replay.prior`), with `replay.config`'s keys added (the metrics verifier's
    /// `replay_at`), under the step's own grants, limits and secrets. It is a dry run, no
    /// other step runs (not `on_failure` either), it is tried once whatever its `retry`, and
    /// no `step_started`/`step_finished` events are emitted: its plugin's logs go to
    /// `events`. `shiphat verify backtest` is built on it. Whatever keeps this replay from
    /// starting (its `with:` or the workflow's `env` not resolving from those inputs) is the
    /// report's `setup` error; `Err` says the step cannot be replayed at all (no such step,
    /// or an approval).
    pub async fn replay_step(
        &self,
        prepared: &Prepared,
        replay: Replay,
        events: EventSink,
    ) -> std::result::Result<StepReport, String> {
        let workflow = &prepared.workflow;
        let Some((index, step)) = workflow
            .all_steps()
            .enumerate()
            .find(|(_, s)| s.id == replay.step)
        else {
            return Err(format!(
                "the workflow has no step `{}`; its steps are {}",
                replay.step,
                workflow
                    .all_steps()
                    .map(|s| format!("`{}`", s.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let PreparedStep::Plugin(p) = &prepared.steps[index] else {
            return Err(format!(
                "step `{}` is an approval, which asks a person; only a plugin step can be replayed",
                step.id
            ));
        };
        let section = sections(workflow)
            .find(|(_, steps)| steps.iter().any(|s| s.id == step.id))
            .map_or(Section::Steps, |(section, _)| section);
        let events: DurableSink = Arc::new(move |event: Event| -> Option<Durable> {
            events(event);
            None
        });
        let options = RunOptions {
            run_id: new_run_id(),
            inputs: replay.inputs,
            dry_run: true,
        };
        let run = self.run_state(workflow, options, Vec::new(), events, Stop::new());
        let started = Instant::now();
        // A past run whose inputs the workflow's `env` cannot take now is that replay's
        // failure to start, not the caller's.
        let (run, env_error) = match workflow.resolve_env(&run.inputs, &run.run_id) {
            Ok(env) => (Arc::new(RunState { env, ..run }), None),
            Err(e) => (Arc::new(run), Some(format!("workflow env: {e}"))),
        };
        run.steps
            .lock()
            .unwrap()
            .extend(replay.prior.into_iter().map(|prior| {
                let state = shiphat_workflow::StepState {
                    status: prior.status.as_str().to_owned(),
                    outputs: prior.outputs,
                };
                (prior.id, state)
            }));
        let job = StepJob {
            runner: self.clone(),
            run: run.clone(),
            stop: run.stop.abort.clone(),
            section,
            step: step.clone(),
            work: Work::Plugin {
                plugin: p.plugin.clone(),
                schema: p.schema.clone(),
                literal_config: None,
            },
        };
        let end = match env_error {
            Some(message) => AttemptEnd::Failed {
                error: StepError {
                    kind: ErrorKind::Setup,
                    message,
                },
                outputs: Map::new(),
            },
            None => {
                job.call_plugin(1, &p.plugin, &p.schema, None, Some(&replay.config))
                    .await
            }
        };
        let (status, summary, outputs, error) = match end {
            AttemptEnd::Succeeded { outputs, summary } => {
                (StepStatus::Succeeded, summary, outputs, None)
            }
            AttemptEnd::Failed { error, outputs } => (
                StepStatus::Failed,
                error.message.clone(),
                outputs,
                Some(error),
            ),
            // Tried once: a transient error is not the plugin's verdict.
            AttemptEnd::Transient(message) => (
                StepStatus::Failed,
                message.clone(),
                Map::new(),
                Some(StepError {
                    kind: ErrorKind::Transient,
                    message,
                }),
            ),
        };
        Ok(StepReport {
            id: step.id.clone(),
            name: step.name.clone(),
            section,
            status,
            attempts: 1,
            duration: started.elapsed(),
            summary,
            outputs,
            error,
            continued: false,
        })
    }

    /// Runs one section's steps as a DAG. Returns whether every step succeeded (or failed
    /// with `continue_on_error`).
    async fn run_section(
        &self,
        run: &Arc<RunState>,
        section: Section,
        steps: &[Step],
        prepared: &[PreparedStep],
    ) -> bool {
        let mut status: Vec<Option<Verdict>> = vec![None; steps.len()];
        // The section's running steps are futures of this task, not tasks of their own: a step
        // spends its time waiting for its plugin, whose attempt runs on a thread of its own
        // (`Host::run`), and a task per step only added a hand-over to another worker and back
        // per step, two thread wake-ups where the plugin's thread already needs two.
        let mut running = FuturesUnordered::new();
        let mut failed = false;
        for (index, step) in steps.iter().enumerate() {
            let Some(prior) = run.prior.iter().find(|p| p.id == step.id) else {
                continue;
            };
            let verdict = match prior.status {
                StepStatus::Succeeded => Verdict::Ok,
                StepStatus::Failed if prior.continued => Verdict::Ok,
                StepStatus::Failed => Verdict::Failed,
                StepStatus::Skipped | StepStatus::Cancelled => Verdict::Skipped,
            };
            if verdict == Verdict::Failed {
                failed = true;
                run.failed.store(true, Ordering::Relaxed);
            }
            status[index] = Some(verdict);
            run.steps.lock().unwrap().insert(
                step.id.clone(),
                shiphat_workflow::StepState {
                    status: prior.status.as_str().to_owned(),
                    outputs: prior.outputs.clone(),
                },
            );
        }
        loop {
            // Start every step whose needs are all settled.
            for index in 0..steps.len() {
                if status[index].is_some() {
                    continue;
                }
                let step = &steps[index];
                if step
                    .needs
                    .iter()
                    .any(|&n| status[n].is_none_or(|v| v == Verdict::Running))
                {
                    continue;
                }
                let needs_ok = step.needs.iter().all(|&n| status[n] == Some(Verdict::Ok));
                let stopped = run.stop.token(section).is_cancelled();
                let facts = Status {
                    success: needs_ok && !failed && !stopped,
                    failure: run.failed.load(Ordering::Relaxed),
                    cancelled: run.stop.is_cancelled(),
                };
                // Why `success()` is false, for the log of a step skipped by it.
                let unsuccessful = if stopped {
                    "the run was cancelled"
                } else if !needs_ok {
                    "a step it needs did not succeed"
                } else {
                    "an earlier step failed"
                };
                let decision = if run.stop.is_aborted() {
                    Err("the run was aborted".to_owned())
                } else if let Some(condition) = &step.condition {
                    match run.with_scope(|scope| condition.eval_if(scope, facts)) {
                        Ok(true) => Ok(()),
                        Ok(false) if !facts.success && !condition.calls_status() => {
                            Err(unsuccessful.to_owned())
                        }
                        Ok(false) => Err(format!(
                            "its `if` condition `{}` is false",
                            condition.source()
                        )),
                        Err(e) => {
                            let error = StepError {
                                kind: ErrorKind::Setup,
                                message: format!("cannot evaluate `if`: {e}"),
                            };
                            run.report_step(
                                step,
                                section,
                                StepStatus::Failed,
                                0,
                                Duration::ZERO,
                                String::new(),
                                Map::new(),
                                Some(error),
                                false,
                            );
                            status[index] = Some(Verdict::Failed);
                            failed = true;
                            continue;
                        }
                    }
                } else if facts.success {
                    Ok(())
                } else {
                    Err(unsuccessful.to_owned())
                };
                match decision {
                    Ok(()) => {
                        status[index] = Some(Verdict::Running);
                        // A step that runs although its section was stopped (`if: always()`
                        // or `cancelled()` after a cancel) ends only on an abort.
                        let stop = if stopped {
                            run.stop.abort.clone()
                        } else {
                            run.stop.token(section).clone()
                        };
                        let work = match &prepared[index] {
                            PreparedStep::Plugin(p) => Work::Plugin {
                                plugin: p.plugin.clone(),
                                schema: p.schema.clone(),
                                literal_config: p.literal_config.clone(),
                            },
                            PreparedStep::Approval => Work::Approval,
                        };
                        let job = StepJob {
                            runner: self.clone(),
                            run: run.clone(),
                            stop,
                            section,
                            step: step.clone(),
                            work,
                        };
                        running.push(async move { (index, job.run().await) });
                    }
                    Err(reason) => {
                        run.log(&step.id, LogLevel::Info, format!("skipped: {reason}"));
                        let status_of = if stopped {
                            StepStatus::Cancelled
                        } else {
                            StepStatus::Skipped
                        };
                        run.report_step(
                            step,
                            section,
                            status_of,
                            0,
                            Duration::ZERO,
                            format!("skipped: {reason}"),
                            Map::new(),
                            None,
                            false,
                        );
                        status[index] = Some(Verdict::Skipped);
                    }
                }
            }
            let Some((index, verdict)) = running.next().await else {
                break;
            };
            if verdict == Verdict::Failed {
                failed = true;
            }
            status[index] = Some(verdict);
        }
        !failed && !run.stop.token(section).is_cancelled()
    }
}

/// How a settled step counts for the steps after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Running,
    /// Succeeded, or failed with `continue_on_error`.
    Ok,
    Failed,
    Skipped,
}

/// The state of one run, shared by its step tasks.
struct RunState {
    run_id: String,
    workflow: Arc<Workflow>,
    inputs: Map<String, Value>,
    env: Map<String, Value>,
    dry_run: bool,
    events: DurableSink,
    stop: Stop,
    /// What expressions see of finished steps.
    steps: Mutex<BTreeMap<String, shiphat_workflow::StepState>>,
    /// Whether a step has failed (not counting `continue_on_error`): what `failure()` answers.
    failed: AtomicBool,
    reports: Mutex<Vec<StepReport>>,
    /// Steps settled before a restart; see [`Runner::run_from`].
    prior: Vec<PriorStep>,
    /// The values of the secrets granted to any step of the run, by name.
    secrets: BTreeMap<String, String>,
    /// Redacts all of `secrets`, in every step.
    redactor: Redactor,
}

impl RunState {
    /// Hands an event to the sink; what it answers is not waited for.
    fn emit(&self, event: Event) {
        drop((self.events)(event));
    }

    /// Hands an event to the sink and waits until it is durable, if the sink says when.
    async fn emit_durable(&self, event: Event) {
        if let Some(durable) = (self.events)(event) {
            durable.await;
        }
    }

    fn log(&self, step: &str, level: LogLevel, message: String) {
        self.emit(Event::Log {
            run_id: self.run_id.clone(),
            step: step.to_owned(),
            level,
            source: LogSource::Engine,
            message,
            time: event::now(),
        });
    }

    fn with_scope<T>(&self, f: impl FnOnce(&Scope) -> T) -> T {
        let steps = self.steps.lock().unwrap();
        let scope = Scope {
            inputs: &self.inputs,
            env: &self.env,
            steps: &steps,
            run_id: &self.run_id,
            dry_run: self.dry_run,
        };
        f(&scope)
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per outcome; a struct would only rename the fields"
    )]
    fn report_step(
        &self,
        step: &Step,
        section: Section,
        status: StepStatus,
        attempts: u32,
        duration: Duration,
        summary: String,
        outputs: Map<String, Value>,
        error: Option<StepError>,
        continued: bool,
    ) {
        if status == StepStatus::Failed && !continued {
            self.failed.store(true, Ordering::Relaxed);
        }
        self.steps.lock().unwrap().insert(
            step.id.clone(),
            shiphat_workflow::StepState {
                status: status.as_str().to_owned(),
                outputs: outputs.clone(),
            },
        );
        let report = StepReport {
            id: step.id.clone(),
            name: step.name.clone(),
            section,
            status,
            attempts,
            duration,
            summary,
            outputs,
            error,
            continued,
        };
        self.emit(Event::StepFinished {
            run_id: self.run_id.clone(),
            step: report.id.clone(),
            name: report.name.clone(),
            section,
            status,
            attempts,
            duration_ms: millis(duration),
            summary: report.summary.clone(),
            outputs: report.outputs.clone(),
            error: report.error.clone(),
            continued,
            time: event::now(),
        });
        self.reports.lock().unwrap().push(report);
    }

    async fn finish(&self, started: Instant, status: RunOutcome) -> RunReport {
        let steps = std::mem::take(&mut *self.reports.lock().unwrap());
        let duration = started.elapsed();
        let failed_steps = steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed && !s.continued)
            .map(|s| s.id.clone())
            .collect();
        self.emit_durable(Event::RunFinished {
            run_id: self.run_id.clone(),
            workflow: self.workflow.name.clone(),
            status,
            duration_ms: millis(duration),
            failed_steps,
            time: event::now(),
        })
        .await;
        RunReport {
            run_id: self.run_id.clone(),
            status,
            duration,
            steps,
        }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn sections(workflow: &Workflow) -> impl Iterator<Item = (Section, &[Step])> {
    [
        (Section::Steps, workflow.steps.as_slice()),
        (Section::OnFailure, workflow.on_failure.as_slice()),
        (Section::Finally, workflow.finally.as_slice()),
    ]
    .into_iter()
}

/// One step, run to its end with its retries.
struct StepJob {
    runner: Runner,
    run: Arc<RunState>,
    /// What ends the step: its section's token, or the abort token when it was started after
    /// its section was stopped.
    stop: CancellationToken,
    section: Section,
    step: Step,
    work: Work,
}

/// What a step's attempt does.
enum Work {
    Plugin {
        plugin: Arc<Plugin>,
        schema: Arc<ConfigSchema>,
        /// See [`PreparedPlugin::literal_config`].
        literal_config: Option<Arc<str>>,
    },
    /// Asks the runner's approver.
    Approval,
}

/// A step's `with:` block for one attempt.
enum WithBlock {
    /// Without expressions: checked against the schema when the workflow was prepared.
    Checked(Arc<str>),
    /// Resolved for this attempt; it still has to pass the schema.
    Resolved(Value),
}

/// The end of one attempt, before retries are decided.
enum AttemptEnd {
    Succeeded {
        outputs: Map<String, Value>,
        summary: String,
    },
    Failed {
        error: StepError,
        outputs: Map<String, Value>,
    },
    Transient(String),
}

impl StepJob {
    async fn run(self) -> Verdict {
        let started = Instant::now();
        let step = &self.step;
        let mut attempt = 0;
        let end = loop {
            attempt += 1;
            self.run
                .emit_durable(Event::StepStarted {
                    run_id: self.run.run_id.clone(),
                    step: step.id.clone(),
                    name: step.name.clone(),
                    section: self.section,
                    attempt,
                    time: event::now(),
                })
                .await;
            // The sink aborts the run when it could not record the start (the run is no
            // longer this runner's to run): the plugin is not called.
            if self.run.stop.is_aborted() {
                return self.cancelled(attempt, started, "stopped before it started");
            }
            let end = tokio::select! {
                end = self.attempt(attempt) => end,
                () = self.stop.cancelled() => {
                    if matches!(self.work, Work::Approval) && !self.run.stop.is_aborted() {
                        self.runner.approver.withdraw(&self.run.run_id, &step.id);
                    }
                    return self.cancelled(attempt, started, "cancelled while running");
                }
            };
            match end {
                AttemptEnd::Transient(message) if attempt <= step.retries.count => {
                    let delay = step.retries.delay(attempt);
                    self.run.log(
                        &step.id,
                        LogLevel::Warn,
                        format!(
                            "attempt {attempt} of {} failed transiently: {message}; retrying in {}",
                            step.retries.count + 1,
                            shiphat_host::fmt_duration(delay)
                        ),
                    );
                    // A cancel during the wait ends the step here: going round the loop would
                    // call the plugin once more after the run was stopped.
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.stop.cancelled() => {
                            return self.cancelled(attempt, started, "cancelled while waiting to retry");
                        }
                    }
                }
                end => break end,
            }
        };
        let duration = started.elapsed();
        let (status, summary, outputs, error) = match end {
            AttemptEnd::Succeeded { outputs, summary } => {
                (StepStatus::Succeeded, summary, outputs, None)
            }
            AttemptEnd::Failed { error, outputs } => {
                (StepStatus::Failed, String::new(), outputs, Some(error))
            }
            AttemptEnd::Transient(message) => {
                let message = if step.retries.count > 0 {
                    format!("{message} (gave up after {attempt} attempts)")
                } else {
                    message
                };
                (
                    StepStatus::Failed,
                    String::new(),
                    Map::new(),
                    Some(StepError {
                        kind: ErrorKind::Transient,
                        message,
                    }),
                )
            }
        };
        let continued = status == StepStatus::Failed && step.continue_on_error;
        let summary = match (&error, summary.is_empty()) {
            (Some(error), _) => error.message.clone(),
            (None, true) => "done".to_owned(),
            (None, false) => summary,
        };
        self.run.report_step(
            step,
            self.section,
            status,
            attempt,
            duration,
            summary,
            outputs,
            error,
            continued,
        );
        match status {
            StepStatus::Succeeded => Verdict::Ok,
            _ if continued => Verdict::Ok,
            _ => Verdict::Failed,
        }
    }

    /// Reports the step cancelled after `attempts` attempts.
    fn cancelled(&self, attempts: u32, started: Instant, message: &str) -> Verdict {
        let error = StepError {
            kind: ErrorKind::Cancelled,
            message: message.to_owned(),
        };
        let duration = started.elapsed();
        self.run.report_step(
            &self.step,
            self.section,
            StepStatus::Cancelled,
            attempts,
            duration,
            String::new(),
            Map::new(),
            Some(error),
            false,
        );
        Verdict::Failed
    }

    /// Runs the step once: calls its plugin, or asks for its approval.
    async fn attempt(&self, attempt: u32) -> AttemptEnd {
        match &self.work {
            Work::Plugin {
                plugin,
                schema,
                literal_config,
            } => {
                self.call_plugin(attempt, plugin, schema, literal_config.as_ref(), None)
                    .await
            }
            Work::Approval => self.ask().await,
        }
    }

    /// Resolves the approval's message, asks the runner's approver and waits, at most the
    /// step's timeout, for its decision. A dry run asks nobody: it says who would be asked.
    async fn ask(&self) -> AttemptEnd {
        let step = &self.step;
        let StepKind::Approval(approval) = &step.kind else {
            unreachable!("only approval steps are asked")
        };
        let message = match self
            .run
            .with_scope(|scope| approval.message.eval_string(scope))
        {
            Ok(message) => approval::capped(self.run.redactor.redact(&message)),
            Err(e) => {
                return AttemptEnd::Failed {
                    error: StepError {
                        kind: ErrorKind::Setup,
                        message: format!("cannot resolve the approval `message`: {e}"),
                    },
                    outputs: Map::new(),
                };
            }
        };
        let request = ApprovalRequest {
            run_id: self.run.run_id.clone(),
            workflow: self.run.workflow.name.clone(),
            step: step.id.clone(),
            step_name: step.name.clone(),
            message,
            roles: approval.roles.clone(),
            principals: approval.principals.clone(),
            required: approval.required,
            allow_self: approval.allow_self,
            timeout: step.limits.timeout,
        };
        if self.run.dry_run {
            let mut outputs = Map::new();
            outputs.insert("decision".into(), "dry_run".into());
            return AttemptEnd::Succeeded {
                outputs,
                summary: format!(
                    "dry run: would ask {} ({} needed): {}",
                    request.who(),
                    request.required,
                    request.message
                ),
            };
        }
        self.run.log(
            &step.id,
            LogLevel::Info,
            format!(
                "waiting for approval by {} ({} needed, {} at most): {}",
                request.who(),
                request.required,
                shiphat_host::fmt_duration(request.timeout),
                request.message
            ),
        );
        let timeout = request.timeout;
        // The approver counts the timeout from when the step first asked, which may be before
        // a restart, and ends the wait itself; this is only a backstop for one that never
        // answers, late enough that one keeping the deadline always answers first.
        let backstop = timeout.saturating_add(APPROVER_GRACE);
        let decision = tokio::time::timeout(backstop, self.runner.approver.ask(request))
            .await
            .unwrap_or(Decision::TimedOut {
                approvals: Vec::new(),
            });
        let outputs = approval::outputs(&decision);
        let text = approval::describe(&decision, timeout);
        match decision {
            Decision::Approved(_) => AttemptEnd::Succeeded {
                outputs,
                summary: text,
            },
            Decision::Rejected { .. } => AttemptEnd::Failed {
                error: StepError {
                    kind: ErrorKind::Failed,
                    message: text,
                },
                outputs,
            },
            Decision::TimedOut { .. } => AttemptEnd::Failed {
                error: StepError {
                    kind: ErrorKind::Timeout,
                    message: text,
                },
                outputs,
            },
            Decision::Unavailable(_) => AttemptEnd::Failed {
                error: StepError {
                    kind: ErrorKind::Setup,
                    message: text,
                },
                outputs,
            },
        }
    }

    /// Resolves the step's expressions and grants, then calls the plugin once.
    async fn call_plugin(
        &self,
        attempt: u32,
        plugin: &Arc<Plugin>,
        schema: &ConfigSchema,
        literal_config: Option<&Arc<str>>,
        extra_config: Option<&Map<String, Value>>,
    ) -> AttemptEnd {
        let step = &self.step;
        let setup = |message: String| AttemptEnd::Failed {
            error: StepError {
                kind: ErrorKind::Setup,
                message,
            },
            outputs: Map::new(),
        };
        let resolved = self
            .run
            .with_scope(|scope| -> std::result::Result<_, String> {
                let config = match (literal_config, extra_config) {
                    (Some(literal), None) => WithBlock::Checked(Arc::clone(literal)),
                    _ => {
                        let mut config = step
                            .with
                            .resolve(scope)
                            .map_err(|e| format!("cannot resolve `with`: {e}"))?;
                        if let Some(extra) = extra_config {
                            if config.is_null() {
                                config = Value::Object(Map::new());
                            }
                            if let Value::Object(config) = &mut config {
                                config.extend(extra.clone());
                            }
                        }
                        WithBlock::Resolved(config)
                    }
                };
                let env = step
                    .allow
                    .env
                    .iter()
                    .map(|(name, template)| {
                        template
                            .eval_string(scope)
                            .map(|value| (name.clone(), value))
                            .map_err(|e| format!("cannot resolve `allow.env.{name}`: {e}"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok((config, env))
            });
        let (config, env) = match resolved {
            Ok(resolved) => resolved,
            Err(message) => return setup(message),
        };
        let config = match config {
            WithBlock::Checked(literal) => literal.to_string(),
            WithBlock::Resolved(config) => {
                if let Err(problems) = schema.validate(&config) {
                    return AttemptEnd::Failed {
                        error: StepError {
                            kind: ErrorKind::InvalidConfig,
                            message: format!(
                                "`with` after resolving expressions: {}",
                                problems.join("; ")
                            ),
                        },
                        outputs: Map::new(),
                    };
                }
                config.to_string()
            }
        };
        let mut secrets = Vec::new();
        for name in &step.allow.secrets {
            match self.run.secrets.get(name) {
                Some(value) => secrets.push((name.clone(), value.clone())),
                None => self.run.log(
                    &step.id,
                    LogLevel::Warn,
                    format!("secret `{name}` is granted but has no value: set the environment variable `{name}` or add it to the secrets file"),
                ),
            }
        }
        let grants = Grants {
            read: step.allow.read.clone(),
            write: step.allow.write.clone(),
            http: step.allow.http.clone(),
            env,
            secrets,
        };
        let run = self.run.clone();
        let step_id = step.id.clone();
        let logs: shiphat_host::LogSink = Arc::new(move |line: LogLine| {
            run.emit(Event::Log {
                run_id: run.run_id.clone(),
                step: step_id.clone(),
                level: event::level(line.level),
                source: event::source(line.source),
                message: line.message,
                time: event::now(),
            });
        });
        let call = Call {
            context: Context {
                run_id: self.run.run_id.clone(),
                workflow: self.run.workflow.name.clone(),
                step_id: step.id.clone(),
                attempt,
                dry_run: self.run.dry_run,
            },
            config,
            grants,
            limits: step.limits,
            logs,
            redactor: self.run.redactor.clone(),
        };
        match self.runner.host.run(plugin, call).await {
            Outcome::Succeeded { outputs, summary } => AttemptEnd::Succeeded { outputs, summary },
            Outcome::Failed { message, outputs } => AttemptEnd::Failed {
                error: StepError {
                    kind: ErrorKind::Failed,
                    message,
                },
                outputs,
            },
            Outcome::InvalidConfig(message) => AttemptEnd::Failed {
                error: StepError {
                    kind: ErrorKind::InvalidConfig,
                    message,
                },
                outputs: Map::new(),
            },
            Outcome::Transient(message) => AttemptEnd::Transient(message),
            Outcome::Fault(fault) => {
                let kind = match &fault {
                    Fault::Timeout(_) => ErrorKind::Timeout,
                    Fault::Memory(_) | Fault::TooMany { .. } => ErrorKind::Memory,
                    Fault::StackOverflow(_) => ErrorKind::StackOverflow,
                    Fault::Panic(_) => ErrorKind::Panic,
                    Fault::Trap(_) | Fault::Resources(_) => ErrorKind::Trap,
                    Fault::BadOutput(_) => ErrorKind::BadOutput,
                    Fault::Setup(_) => ErrorKind::Setup,
                };
                AttemptEnd::Failed {
                    error: StepError {
                        kind,
                        message: fault.to_string(),
                    },
                    outputs: Map::new(),
                }
            }
        }
    }
}
