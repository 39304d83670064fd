//! Accepting, queueing, starting, cancelling and resuming runs. One run per concurrency key
//! runs at a time; the others wait in FIFO order. Every change of a run's state is written to
//! the store before it takes effect, and every step start is committed before its plugin runs
//! and every step end before a later step runs (see `App::sink`).
//!
//! The scheduler's state (`Sched`) is in memory behind a `std::sync::Mutex` that is only ever
//! held for a few map operations: never across a store call or an `.await`. What must be
//! decided with the store and the memory agreeing is decided in memory first (a key is taken
//! for a run before its row is written, a started run is registered before its status moves),
//! or by the store in one transaction (the cap on queued runs).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};
use shiphat_runner::{Durable, DurableSink, Event, PriorStep, RunOptions, Runner, Stop};
use shiphat_store::{AsyncStore, Change, Commit, Lock, NewRun, Run, RunStatus};
use shiphat_workflow::Resume;
use tokio::sync::broadcast;

use crate::Config;
use crate::auth::Principal;
use crate::metrics::Metrics;
use crate::workflows::Workflows;

/// How many live-event notifications may pile up for a slow stream before it falls back to
/// reading the store. Streams read the store anyway; the notification only wakes them.
const LIVE_CAPACITY: usize = 1024;

pub struct App {
    pub config: Config,
    pub runner: Runner,
    pub store: Arc<dyn AsyncStore>,
    pub workflows: Workflows,
    pub metrics: Metrics,
    /// Run ids that just changed (recorded, or events committed): wakes the event streams.
    pub live: broadcast::Sender<Arc<str>>,
    /// False once shutdown began: no new runs.
    pub accepting: AtomicBool,
    /// The web page's signed-in browsers, kept by the store.
    pub sessions: crate::web::Sessions,
    /// The event streams each principal holds open.
    pub streams: Arc<crate::limits::Held>,
    /// Sign-in attempts per remote address.
    pub sign_ins: crate::limits::Rate,
    /// Refused calls written to the audit log per remote address, and how many were not.
    pub refusals: crate::limits::Rate,
    pub unlogged_refusals: Mutex<HashMap<String, u64>>,
    sched: Mutex<Sched>,
    /// Notified whenever a run ends, so shutdown can wait for the running ones.
    ended: tokio::sync::Notify,
}

#[derive(Default)]
struct Sched {
    /// Per concurrency key: the run holding it and the runs waiting, oldest first.
    keys: HashMap<String, Key>,
    /// Runs given the go (starting or in progress), with the token that cancels each.
    running: HashMap<String, Stop>,
    /// Who cancelled a run in progress, for the run's `detail` when it ends cancelled.
    cancelled_by: HashMap<String, String>,
    /// Queued runs that would have started but a lock holds their key (or workflow), oldest
    /// first. They keep no concurrency key; they are queued again when a lock goes.
    held: Vec<Run>,
    /// Runs an admin forced past the locks (a new run with `force`, a forced resume): no lock
    /// holds them. Kept in memory: after a restart a forced run that had not started yet waits
    /// for the lock like any other, the safe side.
    forced: HashSet<String>,
}

/// Resolves (with an error: its sender is dropped) once a run given the go is running, held
/// by a lock, or not started after all.
type Admission = tokio::sync::oneshot::Receiver<()>;

#[derive(Default)]
struct Key {
    /// The run holding the key: starting, running, or (for a run that does not queue) being
    /// recorded.
    holder: Option<String>,
    waiting: VecDeque<String>,
}

/// Why a run was not accepted.
pub enum Refused {
    /// The workflow's `concurrency` has `queue: false` and its key is busy.
    Busy {
        key: String,
        holder: String,
    },
    Store(shiphat_store::Error),
    ShuttingDown,
    /// The principal has `max` runs queued already (`max_queued_per_principal`).
    TooManyQueued {
        principal: String,
        max: u64,
    },
}

impl From<shiphat_store::Error> for Refused {
    fn from(e: shiphat_store::Error) -> Self {
        match e {
            shiphat_store::Error::TooManyQueued { principal, max } => {
                Refused::TooManyQueued { principal, max }
            }
            e => Refused::Store(e),
        }
    }
}

impl App {
    pub fn new(config: Config, runner: Runner, store: Arc<dyn AsyncStore>) -> Arc<App> {
        Arc::new(App {
            config,
            runner,
            sessions: crate::web::Sessions::new(store.clone()),
            store,
            workflows: Workflows::default(),
            metrics: Metrics::new(),
            live: broadcast::channel(LIVE_CAPACITY).0,
            accepting: AtomicBool::new(true),
            streams: Arc::default(),
            sign_ins: crate::limits::Rate::new(
                crate::limits::SIGN_IN_BURST,
                crate::limits::SIGN_IN_EVERY,
            ),
            refusals: crate::limits::Rate::new(
                crate::limits::REFUSAL_BURST,
                crate::limits::REFUSAL_EVERY,
            ),
            unlogged_refusals: Mutex::default(),
            sched: Mutex::new(Sched::default()),
            ended: tokio::sync::Notify::new(),
        })
    }

    /// The scheduler's state, for a few map operations at most: the guard must not live across
    /// a store call or an `.await` (clippy's `await_holding_lock` checks the second).
    fn sched(&self) -> MutexGuard<'_, Sched> {
        // A panic under the lock leaves maps that are still consistent one by one.
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a previous life of the daemon left: runs still `running` are marked `interrupted`
    /// (with their step in flight); of those, the ones whose workflow says `resume: auto` and
    /// whose steps in flight are all `idempotent` are queued again. Queued runs are queued
    /// again in their order.
    pub async fn recover(self: &Arc<App>) -> Result<(), shiphat_store::Error> {
        for interrupted in self.store.interrupt_running().await? {
            let resumable = self.workflows.get(&interrupted.workflow).is_some_and(|p| {
                p.workflow.resume == Resume::Auto
                    && interrupted
                        .in_flight
                        .iter()
                        .all(|id| p.workflow.step(id).is_some_and(|s| s.idempotent))
            });
            tracing::warn!(
                "run `{}` of `{}` was interrupted{}; {}",
                interrupted.run,
                interrupted.workflow,
                if interrupted.in_flight.is_empty() {
                    String::new()
                } else {
                    format!(" during `{}`", interrupted.in_flight.join("`, `"))
                },
                if resumable {
                    "resuming it"
                } else {
                    "it waits for `resume` or `cancel`"
                }
            );
            if resumable {
                self.store
                    .transition(
                        &interrupted.run,
                        &[RunStatus::Interrupted],
                        RunStatus::Queued,
                        Some("resumed automatically after a restart"),
                    )
                    .await?;
            }
        }
        // Each started or held before the daemon listens, so that what a client reads first
        // is where each run stands.
        let mut admissions = Vec::new();
        for run in self.store.runs_with_status(RunStatus::Queued).await? {
            admissions.extend(self.enqueue(run));
        }
        for admission in admissions {
            let _ = admission.await;
        }
        Ok(())
    }

    /// The lock that holds runs of `workflow` with concurrency key `key`: one on the key, or
    /// one on the workflow's name.
    pub async fn lock_on(
        &self,
        key: Option<&str>,
        workflow: &str,
    ) -> Result<Option<Lock>, shiphat_store::Error> {
        for k in key.into_iter().chain([workflow]) {
            if let Some(lock) = self.store.lock(k).await? {
                return Ok(Some(lock));
            }
        }
        Ok(None)
    }

    /// Removes a lock and queues again the runs it held. Returns whether there was one.
    pub async fn unlock(self: &Arc<App>, key: &str) -> Result<bool, shiphat_store::Error> {
        let removed = self.store.delete_lock(key).await?;
        self.release_held().await;
        Ok(removed)
    }

    /// Queues again every run a lock held, in their order; those a lock still holds are held
    /// again. Called when a lock is removed, and periodically for locks that expire.
    pub async fn release_held(self: &Arc<App>) {
        let held = std::mem::take(&mut self.sched().held);
        for run in held {
            // Cancelled while held: nothing to start.
            match self.store.run(&run.id).await {
                Ok(Some(now)) if now.status == RunStatus::Queued => {
                    if let Some(admission) = self.enqueue(now) {
                        let _ = admission.await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("cannot read held run `{}`: {e}", run.id);
                    self.sched().held.push(run);
                }
            }
        }
    }

    /// Whether runs are held by a lock (so that the lock's expiry must be watched).
    pub fn holds_runs(&self) -> bool {
        !self.sched().held.is_empty()
    }

    /// Writes an entry to the audit log. A refusal (status 400 and up) from an address that
    /// has had its [`crate::limits::REFUSAL_BURST`] is counted instead, and the next one
    /// written says how many were not: a flood of bad requests costs a few rows, not one each.
    /// The store caps the length of every field.
    pub async fn audit(&self, mut entry: shiphat_store::AuditEntry) {
        if entry.status >= 400 {
            let address = entry
                .remote
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| entry.remote.clone());
            let mut unlogged = self
                .unlogged_refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !self.refusals.allow(&address) {
                // Bounded like the rate's own map: under a flood from that many addresses
                // the counts are lost, never the memory.
                if unlogged.len() >= crate::limits::MAX_KEYS && !unlogged.contains_key(&address) {
                    unlogged.clear();
                }
                *unlogged.entry(address).or_default() += 1;
                return;
            }
            if let Some(n) = unlogged.remove(&address) {
                entry.outcome = format!(
                    "{} (and {n} refused calls from this address before it, not logged one by one)",
                    entry.outcome
                );
            }
        }
        if let Err(e) = self.store.audit(&entry).await {
            // A mutation we cannot audit is still done; say so loudly.
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    /// Records and queues a new run (or returns the one its idempotency key already made).
    /// A `forced` run (an admin passed `force`) is not held by a lock.
    pub async fn submit(
        self: &Arc<App>,
        run: NewRun,
        queue: bool,
        forced: bool,
    ) -> Result<(Run, bool), Refused> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(Refused::ShuttingDown);
        }
        // A run that does not queue takes its key before it is recorded, so that two requests
        // cannot both find the key free; it gives it back if it is not recorded after all.
        let reserved = match &run.concurrency_key {
            Some(key) if !queue => {
                let mut sched = self.sched();
                let k = sched.keys.entry(key.clone()).or_default();
                if let Some(holder) = k.holder.clone().or_else(|| k.waiting.front().cloned()) {
                    return Err(Refused::Busy {
                        key: key.clone(),
                        holder,
                    });
                }
                k.holder = Some(run.id.clone());
                Some(key.clone())
            }
            _ => None,
        };
        let recorded = self
            .store
            .create_run(&run, self.config.max_queued_per_principal)
            .await;
        let created = matches!(recorded, Ok((_, true)));
        if let Some(key) = reserved
            && !created
        {
            self.release(&mut self.sched(), &key, &run.id);
        }
        let (recorded, created) = recorded?;
        if created {
            if forced {
                self.sched().forced.insert(recorded.id.clone());
            }
            self.metrics.run_status(&recorded.workflow, "queued");
            let admission = self.enqueue(recorded.clone());
            let _ = self.live.send(Arc::from(recorded.id.as_str()));
            // Answered once the run has started or is held, as a client reading it next expects.
            if let Some(admission) = admission {
                let _ = admission.await;
            }
        }
        Ok((recorded, created))
    }

    /// Starts `run` now if its key is free (or was taken for it), or puts it at the back of
    /// its key's queue. When it starts, the answer resolves once it is running or held.
    fn enqueue(self: &Arc<App>, run: Run) -> Option<Admission> {
        let mut sched = self.sched();
        if let Some(key) = &run.concurrency_key {
            let k = sched.keys.entry(key.clone()).or_default();
            let mine = k.holder.as_deref() == Some(run.id.as_str());
            if !mine {
                if k.holder.is_some() || !k.waiting.is_empty() {
                    k.waiting.push_back(run.id.clone());
                    self.metrics.queue_depth.inc();
                    return None;
                }
                k.holder = Some(run.id.clone());
            }
        }
        Some(self.go(&mut sched, run.id.clone(), Some(run)))
    }

    /// Registers the run as started (so that a cancel reaches it from now on) and starts it on
    /// a task of its own. `run` is `None` for a run known only by its id (the next one of a
    /// key's queue): the task reads it.
    fn go(self: &Arc<App>, sched: &mut Sched, id: String, run: Option<Run>) -> Admission {
        let stop = Stop::new();
        sched.running.insert(id.clone(), stop.clone());
        let (admitted, admission) = tokio::sync::oneshot::channel();
        let app = self.clone();
        tokio::spawn(async move { app.launch(id, run, stop, admitted).await });
        admission
    }

    /// Starts a run given the go: unless it was cancelled meanwhile, a lock holds it (then it
    /// stays queued, with the lock named in its `detail`, and gives up its key until the lock
    /// goes) or its workflow is gone, marks it running and runs it to its end.
    async fn launch(
        self: Arc<App>,
        id: String,
        run: Option<Run>,
        stop: Stop,
        admitted: tokio::sync::oneshot::Sender<()>,
    ) {
        let run = match run {
            Some(run) => run,
            None => match self.store.run(&id).await {
                Ok(Some(run)) if run.status == RunStatus::Queued => run,
                // Cancelled while waiting, or unreadable: the key goes to the next one.
                found => {
                    if let Err(e) = found {
                        tracing::error!("cannot read queued run `{id}`: {e}");
                    }
                    let key = self.key_held_by(&id);
                    return self.settle(&id, key.as_deref(), false);
                }
            },
        };
        let key = run.concurrency_key.as_deref();
        let forced = self.sched().forced.contains(&run.id);
        if !forced {
            let why = match self.lock_on(key, &run.workflow).await {
                Ok(None) => None,
                Ok(Some(lock)) => {
                    let detail = format!(
                        "held by the lock on `{}` of `{}`: {}",
                        lock.key, lock.owner, lock.reason
                    );
                    // Held again by the same lock (the expiry check): nothing new to say.
                    if !run.detail.as_deref().is_some_and(|d| d.ends_with(&detail)) {
                        if let Err(e) = self
                            .store
                            .transition(
                                &run.id,
                                &[RunStatus::Queued],
                                RunStatus::Queued,
                                Some(&detail),
                            )
                            .await
                        {
                            tracing::error!("cannot record why run `{}` waits: {e}", run.id);
                        }
                        let _ = self.live.send(Arc::from(run.id.as_str()));
                    }
                    Some(())
                }
                Err(e) => {
                    // A lock that cannot be read may be there: the run waits, and is tried
                    // again with the next look at the held runs.
                    tracing::error!("cannot read the locks for run `{}`: {e}", run.id);
                    Some(())
                }
            };
            if why.is_some() {
                let mut sched = self.sched();
                // Cancelled meanwhile: it ends below, as cancelled, instead of waiting.
                if !stop.is_cancelled() {
                    sched.running.remove(&run.id);
                    if let Some(key) = key {
                        self.release(&mut sched, key, &run.id);
                    }
                    sched.held.push(run);
                    return;
                }
            }
        }
        if stop.is_cancelled() {
            let detail = self.sched().cancelled_by.get(&run.id).cloned();
            match self
                .store
                .transition(
                    &run.id,
                    &[RunStatus::Queued],
                    RunStatus::Cancelled,
                    detail.as_deref(),
                )
                .await
            {
                Ok(true) => {
                    self.metrics.run_status(&run.workflow, "cancelled");
                    let _ = self.live.send(Arc::from(run.id.as_str()));
                }
                Ok(false) => {}
                Err(e) => tracing::error!("cannot record that run `{}` was cancelled: {e}", run.id),
            }
            return self.settle(&run.id, key, false);
        }
        let Some(prepared) = self.workflows.get(&run.workflow) else {
            let _ = self
                .store
                .transition(
                    &run.id,
                    &[RunStatus::Queued],
                    RunStatus::Failed,
                    Some(&format!("workflow `{}` is no longer loaded", run.workflow)),
                )
                .await;
            return self.settle(&run.id, key, false);
        };
        match self
            .store
            .transition(&run.id, &[RunStatus::Queued], RunStatus::Running, None)
            .await
        {
            Ok(true) => {}
            // Cancelled while it waited.
            Ok(false) => return self.settle(&run.id, key, false),
            Err(e) => {
                tracing::error!("cannot start run `{}`: {e}", run.id);
                return self.settle(&run.id, key, false);
            }
        }
        // Both read at once: the run's steps settled in an earlier life, and whether it has
        // events already.
        let (steps, events) =
            tokio::join!(self.store.steps(&run.id), self.store.events(&run.id, 0, 1));
        let prior = match steps {
            Ok(steps) => steps
                .into_iter()
                .filter_map(|s| {
                    Some(PriorStep {
                        id: s.step,
                        status: s.status.ended()?,
                        outputs: s.outputs.as_object().cloned().unwrap_or_default(),
                        continued: s.continued,
                    })
                })
                .collect(),
            Err(e) => {
                tracing::error!("cannot read the steps of run `{}`: {e}", run.id);
                Vec::new()
            }
        };
        // A run that has events already is being resumed: the runner starts it again, but its
        // `run_started` is in the history once (see `sink`).
        let resumed = match events {
            Ok(events) => !events.is_empty(),
            Err(e) => {
                tracing::error!("cannot read the events of run `{}`: {e}", run.id);
                false
            }
        };
        drop(admitted);
        self.metrics.running.inc();
        self.metrics.run_status(&run.workflow, "running");
        let options = RunOptions {
            run_id: run.id.clone(),
            inputs: run.inputs.as_object().cloned().unwrap_or_default(),
            dry_run: run.dry_run,
        };
        let sink = self.sink(&run, resumed);
        self.runner
            .run_durable(&prepared, options, prior, sink, stop)
            .await;
        self.settle(&run.id, key, true);
    }

    /// The key a run holds, if it holds one.
    fn key_held_by(&self, id: &str) -> Option<String> {
        self.sched()
            .keys
            .iter()
            .find(|(_, k)| k.holder.as_deref() == Some(id))
            .map(|(key, _)| key.clone())
    }

    /// A run given the go is over (ended, or not started after all): forgets it, frees its key
    /// for the next run waiting, and wakes a shutdown waiting for it.
    fn settle(self: &Arc<App>, id: &str, key: Option<&str>, ran: bool) {
        let mut sched = self.sched();
        sched.running.remove(id);
        sched.cancelled_by.remove(id);
        sched.forced.remove(id);
        if let Some(key) = key {
            self.release(&mut sched, key, id);
        }
        drop(sched);
        if ran {
            self.metrics.running.dec();
        }
        self.ended.notify_waiters();
    }

    /// Frees `key` if `id` holds it and gives it to the next run waiting for it.
    fn release(self: &Arc<App>, sched: &mut Sched, key: &str, id: &str) {
        let Some(k) = sched.keys.get_mut(key) else {
            return;
        };
        if k.holder.as_deref() == Some(id) {
            k.holder = None;
        }
        if k.holder.is_some() {
            return;
        }
        let Some(next) = k.waiting.pop_front() else {
            sched.keys.remove(key);
            return;
        };
        self.metrics.queue_depth.dec();
        k.holder = Some(next.clone());
        // Nobody waits for it: the run it follows has ended.
        drop(self.go(sched, next, None));
    }

    /// Hands each event to the store, in order, and wakes the streams once it is committed.
    /// A step's start and the run's end are committed before the runner goes on (it waits for
    /// what this answers); a step's end, a log line and the run's start are queued without
    /// waiting ([`Commit::Soon`]): the next step's start or the run's end commits them with it,
    /// or they commit by themselves a moment later. So a step's end is on disk before any
    /// later step starts, and shares that step's start's fsync. A crash can lose at most the
    /// logs of the step in flight, and never reorders anything.
    ///
    /// The last event also records the run's end, in the same transaction, before the key is
    /// released, so runs sharing a key never overlap in the recorded timings either.
    ///
    /// A resumed run (`resumed`: it has events already) gets no second `run_started`: the
    /// runner emits one when it starts again, but the history and the event stream keep the
    /// first; the run's `detail` says who resumed it.
    fn sink(self: &Arc<App>, run: &Run, resumed: bool) -> DurableSink {
        struct Target {
            app: Arc<App>,
            run: Arc<str>,
            workflow: String,
            runtime: tokio::runtime::Handle,
        }
        let target = Arc::new(Target {
            app: self.clone(),
            run: Arc::from(run.id.as_str()),
            workflow: run.workflow.clone(),
            // Log lines come from the plugin's own thread, outside the runtime.
            runtime: tokio::runtime::Handle::current(),
        });
        Arc::new(move |event: Event| -> Option<Durable> {
            if resumed && matches!(event, Event::RunStarted { .. }) {
                return None;
            }
            let app = &target.app;
            let body = serde_json::to_string(&event).expect("events always serialise");
            let (change, commit) = match event {
                Event::StepStarted {
                    step,
                    section,
                    attempt,
                    ..
                } => (
                    Some(Change::StepStarted {
                        step,
                        section,
                        attempt,
                    }),
                    Commit::Now,
                ),
                Event::StepFinished {
                    step,
                    section,
                    status,
                    attempts,
                    duration_ms,
                    summary,
                    outputs,
                    error,
                    continued,
                    ..
                } => {
                    app.metrics.step_finished(
                        &target.workflow,
                        duration_ms / 1000.0,
                        error.as_ref().map(|e| e.kind.as_str()),
                    );
                    (
                        Some(Change::StepFinished {
                            step,
                            section,
                            status: status.into(),
                            attempts,
                            duration_ms,
                            summary,
                            outputs: Value::Object(outputs),
                            error,
                            continued,
                        }),
                        Commit::Soon,
                    )
                }
                Event::RunFinished { status, .. } => {
                    let status = RunStatus::from(status);
                    let detail = match status {
                        RunStatus::Cancelled => app.sched().cancelled_by.get(&*target.run).cloned(),
                        _ => None,
                    };
                    (Some(Change::RunEnded { status, detail }), Commit::Now)
                }
                _ => (None, Commit::Soon),
            };
            let ended = match &change {
                Some(Change::RunEnded { status, .. }) => Some(*status),
                _ => None,
            };
            let written = app
                .store
                .append_event(&target.run, &body, change.as_ref(), commit);
            let written_to = target.clone();
            let settled = async move {
                match written.await {
                    // Written, so the run was running: it has ended now.
                    Ok(Some(_)) => {
                        if let Some(end) = ended {
                            written_to
                                .app
                                .metrics
                                .run_status(&written_to.workflow, end.as_str());
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!("cannot record an event of run `{}`: {e}", written_to.run)
                    }
                }
                let _ = written_to.app.live.send(written_to.run.clone());
            };
            match commit {
                Commit::Now => Some(Box::pin(settled)),
                Commit::Soon => {
                    target.runtime.spawn(settled);
                    None
                }
            }
        })
    }

    /// Cancels a run that is queued, interrupted or running. A running run's steps end and its
    /// `on_failure` and `finally` still run; cancelling it again aborts those too. Returns
    /// whether the run was still going.
    pub async fn cancel(
        self: &Arc<App>,
        run: &Run,
        by: &Principal,
    ) -> Result<bool, shiphat_store::Error> {
        let detail = format!("cancelled by `{}`", by.name);
        let stop_running = |app: &App| {
            let mut sched = app.sched();
            let stop = sched.running.get(&run.id).cloned()?;
            // The first to cancel is who the run's detail names.
            sched
                .cancelled_by
                .entry(run.id.clone())
                .or_insert(detail.clone());
            stop.escalate();
            Some(())
        };
        if stop_running(self).is_some() {
            return Ok(true);
        }
        {
            let mut sched = self.sched();
            sched.forced.remove(&run.id);
            sched.held.retain(|r| r.id != run.id);
        }
        let moved = self
            .store
            .transition(
                &run.id,
                &[RunStatus::Queued, RunStatus::Interrupted],
                RunStatus::Cancelled,
                Some(&detail),
            )
            .await?;
        if moved {
            self.metrics.run_status(&run.workflow, "cancelled");
            let _ = self.live.send(Arc::from(run.id.as_str()));
            return Ok(true);
        }
        // It started between the look above and the write: cancel it as a running run.
        Ok(stop_running(self).is_some())
    }

    /// Queues an interrupted run again; it goes on from its step in flight. `forced` (an
    /// admin passed a lock, which the caller has checked) lets it start under a lock.
    pub async fn resume(
        self: &Arc<App>,
        run: &Run,
        by: &Principal,
        forced: Option<&Lock>,
    ) -> Result<bool, shiphat_store::Error> {
        let detail = match forced {
            None => format!("resumed by `{}`", by.name),
            Some(lock) => format!(
                "resumed by `{}`, forced past the lock on `{}` of `{}`",
                by.name, lock.key, lock.owner
            ),
        };
        let moved = self
            .store
            .transition(
                &run.id,
                &[RunStatus::Interrupted],
                RunStatus::Queued,
                Some(&detail),
            )
            .await?;
        if moved && let Some(run) = self.store.run(&run.id).await? {
            if forced.is_some() {
                self.sched().forced.insert(run.id.clone());
            }
            if let Some(admission) = self.enqueue(run) {
                let _ = admission.await;
            }
        }
        Ok(moved)
    }

    /// For a queued run: the run holding its concurrency key (if one does) and its place in
    /// the key's queue (1 = next).
    pub fn waiting_on(&self, run: &str) -> Option<(Option<String>, usize)> {
        let sched = self.sched();
        sched.keys.values().find_map(|k| {
            let at = k.waiting.iter().position(|r| r == run)?;
            Some((k.holder.clone(), at + 1))
        })
    }

    /// Shutdown: refuse new runs, then wait for running ones up to the grace period.
    pub async fn drain(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.config.shutdown_grace;
        loop {
            let ended = self.ended.notified();
            if self.sched().running.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return;
            }
        }
    }
}

/// The inputs of a request, as JSON, to the text `resolve_inputs` parses by kind. A value
/// must have its input's JSON type, or be a string: a `string` or `choice` input takes only a
/// string, a `number` a number too, a `bool` a boolean too. `null`, arrays and objects are
/// refused rather than read as the text `null` or `[1]`. Names the workflow does not declare
/// pass through, for `resolve_inputs` to refuse with a suggestion.
pub fn input_texts(
    workflow: &shiphat_workflow::Workflow,
    inputs: &Map<String, Value>,
) -> Result<Vec<(String, String)>, Vec<String>> {
    use shiphat_workflow::InputKind;
    let mut texts = Vec::new();
    let mut problems = Vec::new();
    for (name, value) in inputs {
        let kind = workflow
            .inputs
            .iter()
            .find(|i| &i.name == name)
            .map(|i| &i.kind);
        let text = match (kind, value) {
            (_, Value::String(s)) => s.clone(),
            (Some(InputKind::Number), Value::Number(n)) => n.to_string(),
            (Some(InputKind::Bool), Value::Bool(b)) => b.to_string(),
            (None, other) => other.to_string(),
            (Some(kind), other) => {
                let expected = match kind {
                    InputKind::Number => "a number",
                    InputKind::Bool => "`true` or `false`",
                    InputKind::String | InputKind::Choice(_) => "a string",
                };
                problems.push(format!("input `{name}` must be {expected}, not `{other}`"));
                continue;
            }
        };
        texts.push((name.clone(), text));
    }
    if problems.is_empty() {
        Ok(texts)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_input_takes_only_a_string() {
        // `null` satisfied a required string input, and `[1]` or `true` became the text
        // "null", "[1]" or "true".
        let workflow = shiphat_workflow::parse(
            "name: w\ninputs:\n  env: {type: string, required: true}\n  n: {type: number}\n  \
             b: {type: bool}\n  pick: {type: choice, choices: [a, b]}\n\
             steps:\n  - id: s\n    uses: noop\n",
            std::path::Path::new("w.yaml"),
        )
        .unwrap();
        let given = |value: Value| -> Map<String, Value> { serde_json::from_value(value).unwrap() };
        for bad in [
            serde_json::json!({"env": null}),
            serde_json::json!({"env": [1]}),
            serde_json::json!({"env": true}),
            serde_json::json!({"env": 3}),
            serde_json::json!({"pick": 1}),
            serde_json::json!({"n": [1]}),
            serde_json::json!({"b": null}),
        ] {
            let problems = input_texts(&workflow, &given(bad.clone())).unwrap_err();
            assert!(problems[0].contains("must be"), "{bad}: {problems:?}");
        }
        let texts = input_texts(
            &workflow,
            &given(serde_json::json!({"env": "prod", "n": 3, "b": true, "pick": "a"})),
        )
        .unwrap();
        assert_eq!(
            texts,
            [("env", "prod"), ("n", "3"), ("b", "true"), ("pick", "a")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
