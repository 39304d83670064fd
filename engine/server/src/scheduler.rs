//! Accepting, queueing, starting, cancelling and resuming runs, on one daemon or on several
//! that share a database. The store decides what starts: a run is claimed (oldest first, one
//! running run per concurrency key, FIFO per key, locks checked in the same transaction) under
//! this daemon's lease, and every write to it is fenced by that lease, so a daemon that lost
//! a run (paused past its lease, or cut off from the database) can no longer record anything
//! of it. This module asks for claims when something may let a run start, runs what it
//! claimed, renews its leases, takes over the runs of daemons whose leases expired, and hands
//! its own over when it stops.
//!
//! Every step start is committed before its plugin runs and every step end before a later
//! step runs (see `App::sink`). The in-memory state (`Sched`: the runs this daemon runs, and
//! where each key's queue stood at the last claim) is behind a `std::sync::Mutex` held only
//! for a few map operations: never across a store call or an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use serde_json::{Map, Value};
use shiphat_runner::{Durable, DurableSink, Event, PriorStep, RunOptions, Stop};
use shiphat_store::{
    AsyncStore, Change, Commit, Fence, Interrupted, KeyQueue, Lock, NewRun, Notice, Run, RunStatus,
    Scope,
};
use shiphat_workflow::Resume;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::auth::Principal;
use crate::metrics::Metrics;
use crate::workflows::Workflows;

/// How many live-event notifications may pile up for a slow stream before it falls back to
/// reading the store. Streams read the store anyway; the notification only wakes them.
const LIVE_CAPACITY: usize = 1024;

/// The most runs one claim starts. A claim that starts this many is followed at once by
/// another; between them, other daemons get their turn. On a shared store a claim takes at
/// most this daemon's even share of the work besides (see `fair_share` in the store).
const CLAIM_BATCH: u32 = 16;

/// How often the daemon claims without being told to: for locks that expire (a lock removed
/// through any daemon says so at once) and as a safety net under lost notifications. A
/// second late is nothing next to a lock's minutes.
const CLAIM_POLL: Duration = Duration::from_secs(1);

/// How often a daemon looks for runs whose lease expired (their daemon died), at most: a
/// quarter of `lease.renew`, so that a run is taken over within half a second of its lease's
/// end with the default lease, and never more often than ten times a second. Each look is one
/// indexed query over running runs.
fn takeover_poll(renew: Duration) -> Duration {
    (renew / 4).clamp(Duration::from_millis(100), Duration::from_millis(500))
}

/// How often a daemon looks for interrupted runs that may resume by themselves and were not
/// queued again (their daemon died between the two writes): rare, and a run so left waits at
/// most this long besides its lease.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How long a request waits for the claim that follows its change (a run queued, resumed)
/// before answering anyway: the run is recorded either way, and a client reads where it
/// stands next.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

pub struct App {
    pub config: Config,
    pub runner: shiphat_runner::Runner,
    pub store: Arc<dyn AsyncStore>,
    pub workflows: Arc<Workflows>,
    pub metrics: Metrics,
    /// Run ids that just changed (recorded, or events committed, here or on another daemon):
    /// wakes the event streams.
    pub live: broadcast::Sender<Arc<str>>,
    /// False once shutdown began: no new runs, no claims.
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
    /// How many lease renewals were asked for (see `Running::renewals`).
    renewals: AtomicU64,
    /// This daemon's name in the leases it holds: unique to this process, so that a daemon
    /// restarted under the same name never mistakes its previous life's runs for its own.
    pub owner: String,
    sched: Mutex<Sched>,
    /// Notified whenever a run ends, so shutdown can wait for the running ones.
    ended: tokio::sync::Notify,
    /// Wakes the claimer: a run was queued or resumed, a run ended, a lock went.
    claim_asked: tokio::sync::Notify,
    /// How many claims were asked for, and (the watched value) how many of them are done:
    /// a request waits for the claim that began after its change.
    claims_asked: AtomicU64,
    claims_done: tokio::sync::watch::Sender<u64>,
    /// Whether the claimer task runs; until it does, whoever asks for a claim makes it.
    claiming: AtomicBool,
    /// Wakes the lease keeper before its time: another daemon asked to cancel one of ours.
    leases_asked: tokio::sync::Notify,
    /// What holds a queued run on this daemon, as a claim asks it (see
    /// [`shiphat_store::HoldCheck`]): its workflow's plugins still loading here, or its deploy
    /// window.
    hold_check: shiphat_store::HoldCheck,
}

#[derive(Default)]
struct Sched {
    /// The runs this daemon runs, with what stops each and the fence its writes carry.
    running: HashMap<String, Running>,
    /// Who cancelled a run in progress, for the run's `detail` when it ends cancelled.
    cancelled_by: HashMap<String, String>,
    /// Every concurrency key's queue, as the last claim found it.
    keys: HashMap<String, KeyQueue>,
}

struct Running {
    stop: Stop,
    /// How many cancels asked through the store this daemon has acted on.
    cancels: u32,
    /// The number of lease renewals asked for before the run was claimed: a renewal asked
    /// for before the claim committed cannot know of the run, and says nothing of it.
    renewals: u64,
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
            shiphat_store::Error::KeyBusy { key, holder } => Refused::Busy { key, holder },
            e => Refused::Store(e),
        }
    }
}

/// A name for this daemon's leases: the host, the process and a random part, so that it
/// says where a run is when a person reads it, and is never reused.
fn owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}:{}:{random}", std::process::id())
}

impl App {
    pub fn new(
        config: Config,
        runner: shiphat_runner::Runner,
        store: Arc<dyn AsyncStore>,
    ) -> Arc<App> {
        let windows = config.windows.clone();
        let workflows = Arc::new(Workflows::default());
        let loading = workflows.clone();
        let hold_check: shiphat_store::HoldCheck = Arc::new(move |workflow, key, exempt| {
            // A run must not compile on its own deploy path: it waits for its workflow's
            // plugins, which another daemon of the store may have already.
            if let Some(wait) = loading.hold(workflow) {
                return Some(wait);
            }
            if exempt {
                return None;
            }
            let verdict =
                windows.verdict(workflow, key.unwrap_or(workflow), jiff::Timestamp::now())?;
            if verdict.is_open() {
                return None;
            }
            let reason = verdict.reason().unwrap_or_else(|| "closed".to_owned());
            Some(match verdict.next_change() {
                Some(at) => format!(
                    "waits for the deploy window: {reason}; opens at {}",
                    at.rfc3339()
                ),
                None => format!("waits for the deploy window: {reason}"),
            })
        });
        Arc::new_cyclic(|app| App {
            hold_check,
            config,
            runner: runner.with_approver(Arc::new(crate::approvals::StoreApprover {
                app: app.clone(),
            })),
            sessions: crate::web::Sessions::new(store.clone()),
            store,
            workflows,
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
            owner: owner_name(),
            renewals: AtomicU64::new(0),
            sched: Mutex::new(Sched::default()),
            ended: tokio::sync::Notify::new(),
            claim_asked: tokio::sync::Notify::new(),
            claims_asked: AtomicU64::new(0),
            claims_done: tokio::sync::watch::channel(0).0,
            claiming: AtomicBool::new(false),
            leases_asked: tokio::sync::Notify::new(),
        })
    }

    /// The scheduler's state, for a few map operations at most: the guard must not live across
    /// a store call or an `.await` (clippy's `await_holding_lock` checks the second).
    fn sched(&self) -> MutexGuard<'_, Sched> {
        // A panic under the lock leaves maps that are still consistent one by one.
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease_expires.as_millis() as i64
    }

    /// What a previous life left, and the work waiting. Alone on an embedded store, every
    /// run found `running` was this daemon's: it is marked `interrupted` (with its step in
    /// flight) at once. On a shared store only runs whose lease expired are, since the others
    /// are another daemon's, alive; this daemon's own from before a crash expire within a
    /// lease and are taken over then. Of the runs interrupted, those whose workflow says
    /// `resume: auto` and whose steps in flight are all `idempotent` are queued again. Then
    /// the first claim starts what may start, before the daemon listens, so that what a
    /// client reads first is where each run stands.
    pub async fn recover(self: &Arc<App>) -> Result<(), shiphat_store::Error> {
        let scope = if self.store.shared() {
            Scope::Expired
        } else {
            Scope::All
        };
        self.take_over(&scope, "a restart").await?;
        self.sweep_interrupted("a restart").await;
        self.claim().await;
        Ok(())
    }

    /// Queues again the interrupted runs that may resume by themselves but were not: their
    /// daemon died between interrupting them and queueing them, or the queueing failed. A
    /// run already queued again is left as it is (`requeue` only moves an interrupted run).
    async fn sweep_interrupted(self: &Arc<App>, after: &str) {
        let runs = match self.store.runs_with_status(RunStatus::Interrupted).await {
            Ok(runs) => runs,
            Err(e) => {
                tracing::warn!("cannot look for interrupted runs to resume: {e}");
                return;
            }
        };
        for run in runs {
            // Only a workflow that may resume by itself is worth reading the steps of.
            let may = self.workflows.get(&run.workflow).is_some_and(|w| {
                w.resume == Resume::Auto
                    || w.all_steps()
                        .any(|s| matches!(s.kind, shiphat_workflow::StepKind::Approval(_)))
            });
            if !may {
                continue;
            }
            let Ok(steps) = self.store.steps(&run.id).await else {
                continue;
            };
            let interrupted = Interrupted {
                run: run.id.clone(),
                workflow: run.workflow.clone(),
                in_flight: steps
                    .into_iter()
                    .filter(|s| s.status == shiphat_store::StepState::Interrupted)
                    .map(|s| s.step)
                    .collect(),
            };
            if !self.resumable(&interrupted) {
                continue;
            }
            match self
                .store
                .requeue(
                    &run.id,
                    &format!("resumed automatically after {after}"),
                    false,
                )
                .await
            {
                Ok(true) => {
                    tracing::warn!(
                        "run `{}` of `{}` was left interrupted; resuming it",
                        run.id,
                        run.workflow
                    );
                    let _ = self.live.send(Arc::from(run.id.as_str()));
                    self.claim_asked.notify_one();
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot queue run `{}` again: {e}", run.id),
            }
        }
    }

    /// Interrupts the running runs in `scope`, and queues again those that may resume by
    /// themselves. Returns how many were queued again.
    async fn take_over(
        self: &Arc<App>,
        scope: &Scope,
        after: &str,
    ) -> Result<usize, shiphat_store::Error> {
        let mut queued = 0;
        for interrupted in self.store.interrupt_running(scope).await? {
            let resumable = self.resumable(&interrupted);
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
            let _ = self.live.send(Arc::from(interrupted.run.as_str()));
            if !resumable {
                continue;
            }
            // One failure must not leave the rest interrupted; the sweep tries it again.
            match self
                .store
                .requeue(
                    &interrupted.run,
                    &format!("resumed automatically after {after}"),
                    false,
                )
                .await
            {
                Ok(true) => queued += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    "cannot queue run `{}` again: {e}; it is tried again shortly",
                    interrupted.run
                ),
            }
        }
        Ok(queued)
    }

    /// Whether an interrupted run goes on by itself: its workflow says `resume: auto` and
    /// every step in flight is `idempotent` or an approval; or it was only waiting for people
    /// (every step in flight an approval), whatever `resume` says: nothing was half done, and
    /// the approval goes on waiting with its first deadline and the votes cast.
    fn resumable(&self, interrupted: &Interrupted) -> bool {
        self.workflows.get(&interrupted.workflow).is_some_and(|w| {
            let approval = |id: &String| {
                w.step(id)
                    .is_some_and(|s| matches!(s.kind, shiphat_workflow::StepKind::Approval(_)))
            };
            let only_waiting =
                !interrupted.in_flight.is_empty() && interrupted.in_flight.iter().all(approval);
            only_waiting
                || (w.resume == Resume::Auto
                    && interrupted
                        .in_flight
                        .iter()
                        .all(|id| approval(id) || w.step(id).is_some_and(|s| s.idempotent)))
        })
    }

    /// Starts the daemon's background work: the claimer, the lease keeper, the look for
    /// expired leases, and hearing other daemons' changes through the store. Each ends when
    /// `stop` is cancelled.
    pub fn spawn_background(self: &Arc<App>, stop: CancellationToken) -> Result<(), crate::Error> {
        let app = Arc::downgrade(self);
        self.store.watch(Box::new(move |notice| {
            if let Some(app) = Weak::upgrade(&app) {
                app.heard(notice);
            }
        }))?;
        let app = self.clone();
        let claims = stop.clone();
        self.claiming.store(true, Ordering::SeqCst);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = app.claim_asked.notified() => {}
                    // A workflow became ready: the runs waiting for its plugins may start.
                    () = app.workflows.changed.notified() => {}
                    () = tokio::time::sleep(CLAIM_POLL) => {}
                    () = claims.cancelled() => return,
                }
                app.claim().await;
                app.audit_grant_changes().await;
            }
        });
        let app = self.clone();
        let leases = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = app.leases_asked.notified() => {}
                    () = tokio::time::sleep(app.config.lease_renew) => {}
                    () = leases.cancelled() => return,
                }
                app.keep_leases().await;
            }
        });
        let app = self.clone();
        tokio::spawn(async move {
            let every = takeover_poll(app.config.lease_renew);
            let mut swept = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stop.cancelled() => return,
                }
                match app.take_over(&Scope::Expired, "its daemon stopped").await {
                    Ok(0) => {}
                    Ok(_) => app.claim_asked.notify_one(),
                    Err(e) => tracing::error!("cannot take over expired runs: {e}"),
                }
                if swept.elapsed() >= SWEEP_EVERY {
                    swept = tokio::time::Instant::now();
                    app.sweep_interrupted("its daemon stopped").await;
                }
            }
        });
        Ok(())
    }

    /// What another daemon committed: streams wake, and a change of a run's state may let a
    /// queued run start or be a cancel asked of one of ours. Called on a store thread.
    fn heard(&self, notice: Notice) {
        match notice {
            Notice::Events(run) => {
                let _ = self.live.send(Arc::from(run.as_str()));
            }
            Notice::Run(run) => {
                if let Some(run) = &run {
                    let _ = self.live.send(Arc::from(run.as_str()));
                }
                let ours = match &run {
                    Some(run) => self.sched().running.contains_key(run),
                    None => true,
                };
                if ours {
                    self.leases_asked.notify_one();
                }
                self.claim_asked.notify_one();
            }
        }
    }

    /// Asks for a claim, and waits (up to [`CLAIM_WAIT`]) for one that began after the ask:
    /// what a request does after a change that may let a run start, so that its answer finds
    /// the run started or waiting.
    async fn claimed(self: &Arc<App>) {
        if !self.claiming.load(Ordering::SeqCst) {
            // No claimer (an app in a test, or before `recover`): claim here.
            return self.claim().await;
        }
        let asked = self.claims_asked.fetch_add(1, Ordering::SeqCst) + 1;
        self.claim_asked.notify_one();
        let mut done = self.claims_done.subscribe();
        let _ = tokio::time::timeout(CLAIM_WAIT, done.wait_for(|done| *done >= asked)).await;
    }

    /// One claim: starts what the store says this daemon may start now, and notes where each
    /// key's queue stands. Only the claimer task and `recover` call it, one at a time.
    async fn claim(self: &Arc<App>) {
        loop {
            let asked = self.claims_asked.load(Ordering::SeqCst);
            let mut full = false;
            if self.accepting.load(Ordering::SeqCst) {
                match self
                    .store
                    .claim(&self.owner, self.lease_ms(), CLAIM_BATCH, &self.hold_check)
                    .await
                {
                    Ok(claimed) => {
                        full = claimed.started.len() == CLAIM_BATCH as usize;
                        let waiting = claimed
                            .keys
                            .values()
                            .map(|k| k.waiting.len())
                            .sum::<usize>();
                        self.metrics.queue_depth.set(waiting as i64);
                        self.sched().keys = claimed.keys;
                        for id in claimed.held {
                            let _ = self.live.send(Arc::from(id.as_str()));
                        }
                        for (run, fence) in claimed.started {
                            self.go(run, fence);
                        }
                    }
                    Err(e) => tracing::error!("cannot claim queued runs: {e}"),
                }
            }
            self.claims_done
                .send_modify(|done| *done = (*done).max(asked));
            if !full {
                return;
            }
        }
    }

    /// Renews this daemon's leases. A run whose lease is gone (the daemon was paused or cut
    /// off past it, and another daemon took the run over) is aborted here without writing
    /// anything: its fence would refuse every write anyway. Cancels asked through another
    /// daemon reach the runs they name.
    async fn keep_leases(self: &Arc<App>) {
        // Runs registered from now on were claimed after this renewal was queued.
        let renewal = self.renewals.fetch_add(1, Ordering::SeqCst) + 1;
        match self.store.renew(&self.owner, self.lease_ms()).await {
            Ok(held) => {
                let held: HashMap<String, shiphat_store::Held> =
                    held.into_iter().map(|h| (h.run.clone(), h)).collect();
                let mut sched = self.sched();
                let Sched {
                    running,
                    cancelled_by,
                    ..
                } = &mut *sched;
                for (id, run) in running.iter_mut() {
                    match held.get(id) {
                        None if run.renewals >= renewal => {}
                        None => {
                            tracing::warn!(
                                "run `{id}` is no longer this daemon's (its lease ran out); stopping it here"
                            );
                            run.stop.abort();
                        }
                        Some(h) => {
                            if h.cancels > run.cancels {
                                if let Some(by) = &h.cancelled_by {
                                    cancelled_by.entry(id.clone()).or_insert(by.clone());
                                }
                                for _ in run.cancels..h.cancels.min(2) {
                                    run.stop.escalate();
                                }
                                run.cancels = h.cancels;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::error!("cannot renew this daemon's leases: {e}"),
        }
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

    /// Removes a lock; the runs it held start (or take their turn) at once. Returns whether
    /// there was one.
    pub async fn unlock(self: &Arc<App>, key: &str) -> Result<bool, shiphat_store::Error> {
        let removed = self.store.delete_lock(key).await?;
        self.claimed().await;
        Ok(removed)
    }

    /// Writes what each reload changed in what a workflow's steps may reach to the audit log:
    /// one entry per reloaded workflow, its outcome the change in words (issue 20: a widened
    /// grant is what a reviewer looks for).
    async fn audit_grant_changes(&self) {
        for change in self.workflows.take_grant_changes() {
            self.audit(shiphat_store::AuditEntry {
                at_ms: shiphat_store::now_ms(),
                principal: None,
                action: crate::workflows::RELOAD_ACTION.to_owned(),
                outcome: change.outcome(),
                target: change.workflow,
                remote: change.file.display().to_string(),
                status: 200,
            })
            .await;
        }
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

    /// Records and queues a new run (or returns the one its idempotency key already made),
    /// and answers once a claim has started it or found it waiting. A run that does not
    /// `queue` is refused when its key is busy; a `forced` run (an admin passed `force`) is
    /// not held by a lock.
    pub async fn submit(
        self: &Arc<App>,
        mut run: NewRun,
        queue: bool,
        forced: bool,
    ) -> Result<(Run, bool), Refused> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Err(Refused::ShuttingDown);
        }
        run.exclusive = !queue;
        run.forced = forced;
        let (recorded, created) = self
            .store
            .create_run(&run, self.config.max_queued_per_principal)
            .await?;
        if created {
            self.metrics.run_status(&recorded.workflow, "queued");
            let _ = self.live.send(Arc::from(recorded.id.as_str()));
            self.claimed().await;
        }
        Ok((recorded, created))
    }

    /// Registers a claimed run as this daemon's (so that a cancel reaches it from now on) and
    /// runs it on a task of its own.
    fn go(self: &Arc<App>, run: Run, fence: Fence) {
        let stop = Stop::new();
        self.sched().running.insert(
            run.id.clone(),
            Running {
                stop: stop.clone(),
                cancels: 0,
                renewals: self.renewals.load(Ordering::SeqCst),
            },
        );
        let app = self.clone();
        tokio::spawn(async move { app.launch(run, fence, stop).await });
    }

    /// Runs a claimed run to its end, from where an earlier life left it.
    async fn launch(self: Arc<App>, run: Run, fence: Fence, stop: Stop) {
        let _ = self.live.send(Arc::from(run.id.as_str()));
        let Some(prepared) = self.workflows.prepared(&run.workflow) else {
            // Ended through its fence like any run, with the event that says why.
            let event = Event::RunFinished {
                run_id: run.id.clone(),
                workflow: run.workflow.clone(),
                status: shiphat_protocol::RunOutcome::Failed,
                duration_ms: 0.0,
                failed_steps: Vec::new(),
                time: shiphat_store::rfc3339(shiphat_store::now_ms()),
            };
            let end = Change::RunEnded {
                status: RunStatus::Failed,
                detail: Some(format!(
                    "workflow `{}` is not loaded on this daemon: its file is gone or did not load (the daemon's log says why)",
                    run.workflow
                )),
            };
            let body = serde_json::to_string(&event).expect("events always serialise");
            if let Err(e) = self
                .store
                .append_event(&run.id, &fence, &body, Some(&end), Commit::Now)
                .await
            {
                tracing::error!("cannot record the end of run `{}`: {e}", run.id);
            }
            return self.settle(&run.id, false);
        };
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
        self.metrics.running.inc();
        self.metrics.run_status(&run.workflow, "running");
        let options = RunOptions {
            run_id: run.id.clone(),
            inputs: run.inputs.as_object().cloned().unwrap_or_default(),
            dry_run: run.dry_run,
        };
        let sink = self.sink(&run, fence, stop.clone(), resumed);
        self.runner
            .run_durable(&prepared, options, prior, sink, stop)
            .await;
        self.settle(&run.id, true);
    }

    /// A run this daemon ran is over: forgets it, wakes a shutdown waiting for it, and asks
    /// for a claim, since its key is free now.
    fn settle(self: &Arc<App>, id: &str, ran: bool) {
        let mut sched = self.sched();
        sched.running.remove(id);
        sched.cancelled_by.remove(id);
        drop(sched);
        if ran {
            self.metrics.running.dec();
        }
        self.ended.notify_waiters();
        self.claim_asked.notify_one();
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
    ///
    /// Every write carries the run's `fence`. A write the store refuses means the run is no
    /// longer this daemon's (its lease ran out and another daemon took it over, or a shutdown
    /// marked it interrupted): the run is aborted before the runner goes on, so a refused
    /// step start never runs its plugin.
    fn sink(self: &Arc<App>, run: &Run, fence: Fence, stop: Stop, resumed: bool) -> DurableSink {
        struct Target {
            app: Arc<App>,
            run: Arc<str>,
            fence: Fence,
            stop: Stop,
            workflow: String,
            runtime: tokio::runtime::Handle,
        }
        let target = Arc::new(Target {
            app: self.clone(),
            run: Arc::from(run.id.as_str()),
            fence,
            stop,
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
            let written =
                app.store
                    .append_event(&target.run, &target.fence, &body, change.as_ref(), commit);
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
                    Ok(None) => {
                        if !written_to.stop.is_aborted() {
                            tracing::warn!(
                                "run `{}` is no longer this daemon's; stopping it here",
                                written_to.run
                            );
                            written_to.stop.abort();
                        }
                    }
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

    /// Cancels a run that is queued, interrupted or running, here or on another daemon. A
    /// running run's steps end and its `on_failure` and `finally` still run; cancelling it
    /// again aborts those too. Returns whether the run was still going.
    pub async fn cancel(
        self: &Arc<App>,
        run: &Run,
        by: &Principal,
    ) -> Result<bool, shiphat_store::Error> {
        let detail = format!("cancelled by `{}`", by.name);
        let stop_running = |app: &App| {
            let mut sched = app.sched();
            let stop = sched.running.get(&run.id).map(|r| r.stop.clone())?;
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
        // It started between the look above and the write: here, or on another daemon, which
        // hears of the cancel through the store.
        if stop_running(self).is_some() {
            return Ok(true);
        }
        self.store.request_cancel(&run.id, &detail).await
    }

    /// Queues an interrupted run again; it goes on from its step in flight. `forced` (an
    /// admin passed a lock, which the caller has checked) lets it start under a lock.
    pub async fn resume(
        self: &Arc<App>,
        run: &Run,
        by: &Principal,
        forced: Option<&Lock>,
        past_window: bool,
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
            .requeue(&run.id, &detail, forced.is_some() || past_window)
            .await?;
        if moved {
            let _ = self.live.send(Arc::from(run.id.as_str()));
            self.claimed().await;
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

    /// Shutdown: refuse new runs and claim no more, then wait for running ones up to the
    /// grace period.
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

    /// After the drain: what did not finish within the grace period is stopped here and
    /// left to the store. On a shared store its leases end now, so another daemon (or this
    /// one, restarted) takes the runs over at once and resumes those that may resume by
    /// themselves; alone on an embedded store, they are recorded `interrupted`, so the next
    /// start finds them waiting rather than `running`.
    pub async fn hand_over(&self) -> Result<(), shiphat_store::Error> {
        let stops: Vec<Stop> = self
            .sched()
            .running
            .values()
            .map(|r| r.stop.clone())
            .collect();
        if self.store.shared() {
            let released = self.store.release(&self.owner).await?;
            if released > 0 {
                tracing::warn!("handed {released} unfinished runs over to the other daemons");
            }
        } else {
            self.store
                .interrupt_running(&Scope::Owner(self.owner.clone()))
                .await?;
        }
        // Fenced out now: whatever they would write next is refused anyway.
        for stop in stops {
            stop.abort();
        }
        Ok(())
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
