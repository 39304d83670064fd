//! `GET /api/v1/environments`: what is deployed where, by whom and when, read off the run
//! history and the locks. An environment is a lock key: the concurrency key a run takes, or
//! its workflow's name when it has none, which is what `PUT /locks/{key}` and a refused
//! run name too.

use std::collections::BTreeMap;

use serde_json::Value;
use shiphat_protocol::{Deploy, EnvironmentList, EnvironmentView, Release, Rollback};
use shiphat_store::{Run, RunFilter, RunStatus};

use crate::scheduler::App;
use crate::service::{lock_view, run_view, window_view};

/// How many of the latest runs are read to find the environments. A deploy older than the
/// last 500 runs of the whole daemon is history, not "what is deployed now", for any team
/// this serves; the bound keeps the page's query in the milliseconds.
const RECENT_RUNS: u32 = 500;
/// How many deploys each environment lists.
const DEPLOYS_SHOWN: usize = 10;

/// Each environment, by key: its latest deploy that succeeded (what runs there now), the run
/// in progress, how many wait, its lock, and its last deploys with rollbacks marked. Dry runs
/// change nothing and are left out.
pub async fn list(app: &App) -> Result<EnvironmentList, shiphat_store::Error> {
    let runs = app
        .store
        .list_runs(&RunFilter {
            workflow: None,
            status: None,
            before: None,
            limit: RECENT_RUNS,
        })
        .await?;
    // Newest first, as the store lists them.
    // Each key's workflow (a lock can name a key no workflow takes) and runs.
    let mut by_key: BTreeMap<String, (Option<String>, Vec<&Run>)> = BTreeMap::new();
    for run in runs.iter().filter(|r| !r.dry_run) {
        let key = run
            .concurrency_key
            .clone()
            .unwrap_or_else(|| run.workflow.clone());
        let entry = by_key.entry(key).or_default();
        entry.0.get_or_insert_with(|| run.workflow.clone());
        entry.1.push(run);
    }
    // Workflows that never ran still have an environment when their key does not depend on
    // the inputs: it can be locked before the first deploy.
    for (w, _) in app.workflows.all().iter() {
        let key = match &w.concurrency {
            None => Some(w.name.clone()),
            Some(c) if !c.key.source().contains("${{") => Some(c.key.source().to_owned()),
            Some(_) => None,
        };
        if let Some(key) = key {
            by_key
                .entry(key)
                .or_default()
                .0
                .get_or_insert_with(|| w.name.clone());
        }
    }
    let locks = app.store.locks().await?;
    for lock in &locks {
        by_key.entry(lock.key.clone()).or_default();
    }

    let now = jiff::Timestamp::now();
    let mut environments = Vec::new();
    for (key, (workflow, runs)) in by_key {
        let newest = runs.first();
        let current = runs.iter().find(|r| r.status == RunStatus::Succeeded);
        let active = runs.iter().find(|r| r.status == RunStatus::Running);
        let queued = runs
            .iter()
            .filter(|r| r.status == RunStatus::Queued)
            .count();
        let mut deploys = Vec::new();
        for run in runs.iter().take(DEPLOYS_SHOWN) {
            deploys.push(Deploy {
                release: release(app, run),
                rolled_back: rolled_back(app, run).await?,
            });
        }
        environments.push(EnvironmentView {
            environment: newest
                .and_then(|r| r.inputs.get("environment"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            current: current.map(|r| release(app, r)),
            active: active.map(|r| release(app, r)),
            queued: queued as u64,
            lock: locks.iter().find(|l| l.key == key).map(lock_view),
            // A key only a lock names has no workflow; rules naming the key still apply.
            window: app
                .config
                .windows
                .verdict(workflow.as_deref().unwrap_or_default(), &key, now)
                .map(|v| window_view(&v)),
            key,
            workflow,
            deploys,
        });
    }
    Ok(EnvironmentList { environments })
}

/// The run with what it deploys ([`shiphat_protocol::release_of`]).
fn release(app: &App, run: &Run) -> Release {
    Release {
        run: run_view(app, run),
        release: run
            .inputs
            .as_object()
            .and_then(shiphat_protocol::release_of),
    }
}

/// Whether the run failed and its `on_failure` steps undid it ([`Rollback::of`]).
async fn rolled_back(app: &App, run: &Run) -> Result<bool, shiphat_store::Error> {
    if run.status != RunStatus::Failed {
        return Ok(false);
    }
    let steps = app.store.steps(&run.id).await?;
    Ok(Rollback::of(steps.iter().map(|s| (s.section, s.status))) == Some(Rollback::RolledBack))
}
