//! Accepting, queueing, starting, cancelling and resuming runs. One run per concurrency key
//! runs at a time; the others wait in FIFO order. Every change of a run's state is written to
//! the store before it takes effect, and every step start or end is committed before the
//! runner goes on (the event sink writes synchronously, from the step's own task; log events
//! are queued without waiting, see `App::sink`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use shiphat_runner::{Event, EventSink, PriorStep, RunOptions, Runner, StepStatus, Stop};
use shiphat_store::{Lock, NewRun, Run, RunStatus, StepChange, Store};
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
    pub store: Arc<dyn Store>,
    pub workflows: Workflows,
    pub metrics: Metrics,
    /// Run ids that just changed (recorded, or events committed): wakes the event streams.
    pub live: broadcast::Sender<Arc<str>>,
    /// False once shutdown began: no new runs.
    pub accepting: AtomicBool,
    /// The web page's signed-in browsers.
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
    /// Runs in progress, with the token that cancels each.
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

#[derive(Default)]
struct Key {
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
        Refused::Store(e)
    }
}

impl App {
    pub fn new(config: Config, runner: Runner, store: Arc<dyn Store>) -> Arc<App> {
        Arc::new(App {
            config,
            runner,
            store,
            workflows: Workflows::default(),
            metrics: Metrics::new(),
            live: broadcast::channel(LIVE_CAPACITY).0,
            accepting: AtomicBool::new(true),
            sessions: crate::web::Sessions::default(),
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

    /// What a previous life of the daemon left: runs still `running` are marked `interrupted`
    /// (with their step in flight); of those, the ones whose workflow says `resume: auto` and
    /// whose steps in flight are all `idempotent` are queued again. Queued runs are queued
    /// again in their order.
    pub fn recover(self: &Arc<App>) -> Result<(), shiphat_store::Error> {
        for interrupted in self.store.interrupt_running()? {
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
                self.store.transition(
                    &interrupted.run,
                    &[RunStatus::Interrupted],
                    RunStatus::Queued,
                    Some("resumed automatically after a restart"),
                )?;
            }
        }
        for run in self.store.runs_with_status(RunStatus::Queued)? {
            self.enqueue(run);
        }
        Ok(())
    }

    /// The lock that holds runs of `workflow` with concurrency key `key`: one on the key, or
    /// one on the workflow's name.
    pub fn lock_on(
        &self,
        key: Option<&str>,
        workflow: &str,
    ) -> Result<Option<Lock>, shiphat_store::Error> {
        for k in key.into_iter().chain([workflow]) {
            if let Some(lock) = self.store.lock(k)? {
                return Ok(Some(lock));
            }
        }
        Ok(None)
    }

    /// Removes a lock and queues again the runs it held. Returns whether there was one.
    pub fn unlock(self: &Arc<App>, key: &str) -> Result<bool, shiphat_store::Error> {
        let removed = self.store.delete_lock(key)?;
        self.release_held();
        Ok(removed)
    }

    /// Queues again every run a lock held, in their order; those a lock still holds are held
    /// again. Called when a lock is removed, and periodically for locks that expire.
    pub fn release_held(self: &Arc<App>) {
        let held = std::mem::take(&mut self.sched.lock().unwrap().held);
        for run in held {
            // Cancelled while held: nothing to start.
            match self.store.run(&run.id) {
                Ok(Some(now)) if now.status == RunStatus::Queued => self.enqueue(now),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("cannot read held run `{}`: {e}", run.id);
                    self.sched.lock().unwrap().held.push(run);
                }
            }
        }
    }

    /// Whether runs are held by a lock (so that the lock's expiry must be watched).
    pub fn holds_runs(&self) -> bool {
        !self.sched.lock().unwrap().held.is_empty()
    }

    /// Writes an entry to the audit log. A refusal (status 400 and up) from an address that
    /// has had its [`crate::limits::REFUSAL_BURST`] is counted instead, and the next one
    /// written says how many were not: a flood of bad requests costs a few rows, not one each.
    /// The store caps the length of every field.
    pub fn audit(&self, mut entry: shiphat_store::AuditEntry) {
        if entry.status >= 400 {
            let address = entry
                .remote
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| entry.remote.clone());
            let mut unlogged = self.unlogged_refusals.lock().unwrap();
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
        if let Err(e) = self.store.audit(&entry) {
            // A mutation we cannot audit is still done; say so loudly.
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    /// Records and queues a new run (or returns the one its idempotency key already made).
    /// A `forced` run (an admin passed `force`) is not held by a lock.
    pub fn submit(
        self: &Arc<App>,
        run: NewRun,
        queue: bool,
        forced: bool,
    ) -> Result<(Run, bool), Refused> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(Refused::ShuttingDown);
        }
        // The key's state is checked and the run recorded under one lock, so two requests
        // cannot both find a `queue: false` key free.
        let mut sched = self.sched.lock().unwrap();
        if let Some(key) = &run.concurrency_key
            && !queue
            && let Some(k) = sched.keys.get(key)
            && let Some(holder) = k.holder.clone().or_else(|| k.waiting.front().cloned())
        {
            return Err(Refused::Busy {
                key: key.clone(),
                holder,
            });
        }
        // Counted under the scheduler's lock, so concurrent requests cannot all slip under.
        let max = self.config.max_queued_per_principal;
        if self.store.queued_of(&run.principal)? >= max {
            return Err(Refused::TooManyQueued {
                principal: run.principal.clone(),
                max,
            });
        }
        let (recorded, created) = self.store.create_run(&run)?;
        if created && forced {
            sched.forced.insert(recorded.id.clone());
        }
        drop(sched);
        if created {
            self.metrics.run_status(&recorded.workflow, "queued");
            self.enqueue(recorded.clone());
            let _ = self.live.send(Arc::from(recorded.id.as_str()));
        }
        Ok((recorded, created))
    }

    /// Starts `run` now if its key is free, or puts it at the back of its key's queue.
    fn enqueue(self: &Arc<App>, run: Run) {
        let mut sched = self.sched.lock().unwrap();
        if let Some(key) = &run.concurrency_key {
            let k = sched.keys.entry(key.clone()).or_default();
            if k.holder.is_some() || !k.waiting.is_empty() {
                k.waiting.push_back(run.id.clone());
                self.metrics.queue_depth.inc();
                return;
            }
            k.holder = Some(run.id.clone());
        }
        self.start(&mut sched, run);
    }

    /// Marks the run running and spawns it, unless a lock holds it: then it stays queued,
    /// with the lock named in its `detail`, and gives up its key until the lock goes. Called
    /// with the scheduler locked.
    fn start(self: &Arc<App>, sched: &mut Sched, run: Run) {
        if !sched.forced.contains(&run.id) {
            match self.lock_on(run.concurrency_key.as_deref(), &run.workflow) {
                Ok(None) => {}
                Ok(Some(lock)) => {
                    let detail = format!(
                        "held by the lock on `{}` of `{}`: {}",
                        lock.key, lock.owner, lock.reason
                    );
                    // Held again by the same lock (the expiry check): nothing new to say.
                    if !run.detail.as_deref().is_some_and(|d| d.ends_with(&detail)) {
                        if let Err(e) = self.store.transition(
                            &run.id,
                            &[RunStatus::Queued],
                            RunStatus::Queued,
                            Some(&detail),
                        ) {
                            tracing::error!("cannot record why run `{}` waits: {e}", run.id);
                        }
                        let _ = self.live.send(Arc::from(run.id.as_str()));
                    }
                    self.release(sched, &run);
                    sched.held.push(run);
                    return;
                }
                Err(e) => {
                    // A lock that cannot be read may be there: the run waits, and is tried
                    // again with the next look at the held runs.
                    tracing::error!("cannot read the locks for run `{}`: {e}", run.id);
                    self.release(sched, &run);
                    sched.held.push(run);
                    return;
                }
            }
        }
        let Some(prepared) = self.workflows.get(&run.workflow) else {
            let _ = self.store.transition(
                &run.id,
                &[RunStatus::Queued],
                RunStatus::Failed,
                Some(&format!("workflow `{}` is no longer loaded", run.workflow)),
            );
            self.release(sched, &run);
            return;
        };
        match self
            .store
            .transition(&run.id, &[RunStatus::Queued], RunStatus::Running, None)
        {
            Ok(true) => {}
            Ok(false) => {
                // Cancelled while it waited.
                self.release(sched, &run);
                return;
            }
            Err(e) => {
                tracing::error!("cannot start run `{}`: {e}", run.id);
                self.release(sched, &run);
                return;
            }
        }
        let prior = match self.store.steps(&run.id) {
            Ok(steps) => steps
                .into_iter()
                .filter_map(|s| {
                    let status = match s.status.as_str() {
                        "succeeded" => StepStatus::Succeeded,
                        "failed" => StepStatus::Failed,
                        "skipped" => StepStatus::Skipped,
                        "cancelled" => StepStatus::Cancelled,
                        _ => return None,
                    };
                    Some(PriorStep {
                        id: s.step,
                        status,
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
        let resumed = match self.store.events(&run.id, 0, 1) {
            Ok(events) => !events.is_empty(),
            Err(e) => {
                tracing::error!("cannot read the events of run `{}`: {e}", run.id);
                false
            }
        };
        let stop = Stop::new();
        sched.running.insert(run.id.clone(), stop.clone());
        self.metrics.running.inc();
        self.metrics.run_status(&run.workflow, "running");
        let app = self.clone();
        tokio::spawn(async move {
            let options = RunOptions {
                run_id: run.id.clone(),
                inputs: run.inputs.as_object().cloned().unwrap_or_default(),
                dry_run: run.dry_run,
            };
            let sink = app.sink(&run, resumed);
            app.runner
                .run_from(&prepared, options, prior, sink, stop)
                .await;
            let mut sched = app.sched.lock().unwrap();
            sched.running.remove(&run.id);
            sched.cancelled_by.remove(&run.id);
            sched.forced.remove(&run.id);
            app.metrics.running.dec();
            app.release(&mut sched, &run);
            drop(sched);
            app.ended.notify_waiters();
        });
    }

    /// Frees the run's concurrency key and starts the next run waiting for it.
    fn release(self: &Arc<App>, sched: &mut Sched, run: &Run) {
        let Some(key) = &run.concurrency_key else {
            return;
        };
        loop {
            let Some(k) = sched.keys.get_mut(key) else {
                return;
            };
            if k.holder.as_deref() == Some(run.id.as_str()) {
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
            match self.store.run(&next) {
                Ok(Some(next)) if next.status == RunStatus::Queued => {
                    sched.keys.get_mut(key).expect("present").holder = Some(next.id.clone());
                    self.start(sched, next);
                    return;
                }
                // Cancelled while waiting, or unreadable: try the one after it.
                Ok(_) => {}
                Err(e) => tracing::error!("cannot read queued run `{next}`: {e}"),
            }
        }
    }

    /// Commits each event (and the step change it carries) before the runner goes on, then
    /// wakes the streams. The last event also records the run's end, before the key is
    /// released, so runs sharing a key never overlap in the recorded timings either.
    ///
    /// Only the events that carry the durability contract wait for the disk: a step's start
    /// and end, and the run's start and end. Log events are queued without waiting
    /// ([`Store::append_log`]); they commit in order with the next waited-for write, so a crash
    /// can lose at most the logs of the step in flight, never reorder anything.
    ///
    /// A resumed run (`resumed`: it has events already) gets no second `run_started`: the
    /// runner emits one when it starts again, but the history and the event stream keep the
    /// first; the run's `detail` says who resumed it.
    fn sink(self: &Arc<App>, run: &Run, resumed: bool) -> EventSink {
        let app = self.clone();
        let run_id = run.id.clone();
        let workflow = run.workflow.clone();
        let notify: Arc<str> = Arc::from(run.id.as_str());
        Arc::new(move |event: Event| {
            if resumed && matches!(event, Event::RunStarted { .. }) {
                return;
            }
            let body = serde_json::to_string(&event).expect("events always serialise");
            if matches!(event, Event::Log { .. }) {
                if let Err(e) = app.store.append_log(&run_id, &body) {
                    tracing::error!("cannot record a log of run `{run_id}`: {e}");
                }
                let _ = app.live.send(notify.clone());
                return;
            }
            let mut end = None;
            let change = match event {
                Event::StepStarted {
                    step,
                    section,
                    attempt,
                    ..
                } => Some(StepChange::Started {
                    step,
                    section: json_str(&section),
                    attempt,
                }),
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
                    let error = serde_json::to_value(&error).unwrap_or(Value::Null);
                    app.metrics.step_finished(
                        &workflow,
                        duration_ms / 1000.0,
                        error["kind"].as_str(),
                    );
                    Some(StepChange::Finished {
                        step,
                        section: json_str(&section),
                        status: status.as_str().to_owned(),
                        attempts,
                        duration_ms,
                        summary,
                        outputs: Value::Object(outputs),
                        error,
                        continued,
                    })
                }
                Event::RunFinished { status, .. } => {
                    end = Some(match status {
                        shiphat_runner::RunStatus::Succeeded => RunStatus::Succeeded,
                        shiphat_runner::RunStatus::Failed => RunStatus::Failed,
                        shiphat_runner::RunStatus::Cancelled => RunStatus::Cancelled,
                    });
                    None
                }
                _ => None,
            };
            let write = || -> Result<(), shiphat_store::Error> {
                let committed = app.store.append_event(&run_id, &body, change.as_ref())?;
                let detail = match end {
                    Some(RunStatus::Cancelled) => {
                        app.sched.lock().unwrap().cancelled_by.get(&run_id).cloned()
                    }
                    _ => None,
                };
                if committed.is_some()
                    && let Some(end) = end
                    && app.store.transition(
                        &run_id,
                        &[RunStatus::Running],
                        end,
                        detail.as_deref(),
                    )?
                {
                    app.metrics.run_status(&workflow, end.as_str());
                }
                Ok(())
            };
            // The write must be durable before the step goes on; on the multi-threaded
            // runtime this moves the other tasks of this worker elsewhere meanwhile.
            if let Err(e) = tokio::task::block_in_place(write) {
                tracing::error!("cannot record an event of run `{run_id}`: {e}");
            }
            let _ = app.live.send(notify.clone());
        })
    }

    /// Cancels a run that is queued, interrupted or running. A running run's steps end and its
    /// `on_failure` and `finally` still run; cancelling it again aborts those too. Returns
    /// whether the run was still going.
    pub fn cancel(
        self: &Arc<App>,
        run: &Run,
        by: &Principal,
    ) -> Result<bool, shiphat_store::Error> {
        let detail = format!("cancelled by `{}`", by.name);
        let mut sched = self.sched.lock().unwrap();
        if let Some(stop) = sched.running.get(&run.id).cloned() {
            // The first to cancel is who the run's detail names.
            sched.cancelled_by.entry(run.id.clone()).or_insert(detail);
            stop.escalate();
            return Ok(true);
        }
        sched.forced.remove(&run.id);
        sched.held.retain(|r| r.id != run.id);
        drop(sched);
        let moved = self.store.transition(
            &run.id,
            &[RunStatus::Queued, RunStatus::Interrupted],
            RunStatus::Cancelled,
            Some(&detail),
        )?;
        if moved {
            self.metrics.run_status(&run.workflow, "cancelled");
            let _ = self.live.send(Arc::from(run.id.as_str()));
        }
        Ok(moved)
    }

    /// Queues an interrupted run again; it goes on from its step in flight. `forced` (an
    /// admin passed a lock, which the caller has checked) lets it start under a lock.
    pub fn resume(
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
        let moved = self.store.transition(
            &run.id,
            &[RunStatus::Interrupted],
            RunStatus::Queued,
            Some(&detail),
        )?;
        if moved && let Some(run) = self.store.run(&run.id)? {
            if forced.is_some() {
                self.sched.lock().unwrap().forced.insert(run.id.clone());
            }
            self.enqueue(run);
        }
        Ok(moved)
    }

    /// For a queued run: the run holding its concurrency key (if one does) and its place in
    /// the key's queue (1 = next).
    pub fn waiting_on(&self, run: &str) -> Option<(Option<String>, usize)> {
        let sched = self.sched.lock().unwrap();
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
            if self.sched.lock().unwrap().running.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return;
            }
        }
    }
}

/// The JSON string of a unit enum, e.g. `Section::OnFailure` → `on_failure`.
fn json_str<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The inputs of a request, as JSON, to the text `resolve_inputs` parses by kind.
pub fn input_texts(inputs: &Map<String, Value>) -> Vec<(String, String)> {
    inputs
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}
