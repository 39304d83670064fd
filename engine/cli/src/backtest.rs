//! `shiphat verify backtest`: would a verification step's conditions, as the workflow has them
//! now, have caught the bad deploys and let the good ones through?
//!
//! Each past deploy in a daemon's history (or each time given with `--at`) is replayed: the
//! step runs again, once, as a dry run, with its plugin's `replay_at` set to when the step
//! started then, so the metrics verifier judges what Prometheus recorded over the step's
//! measurement window instead of waiting for new samples (`Runner::replay_step`). Its verdict
//! is printed beside what happened to that deploy. Nothing is deployed or rolled back: no
//! other step runs.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};
use shiphat_protocol::{ErrorKind, Rollback, RunDetail, RunStatus, Section, StepState};
use shiphat_runner::{PriorStep, Replay, StepStatus};

use crate::{EngineArgs, Invalid, client, exit, prepare, resolve_inputs};

/// The most past deploys one backtest replays. Each replay is a plugin call that asks
/// Prometheus a few questions, so a thousand take a minute or so; a longer history is better
/// cut with `--since` than read whole without saying.
const MAX_DEPLOYS: usize = 1000;

/// The config key a plugin takes to replay the past; see the metrics verifier's schema.
const REPLAY_KEY: &str = "replay_at";

#[derive(clap::Args)]
pub struct BacktestArgs {
    /// The workflow file (YAML). Its step is replayed as the file has it now, so edit a
    /// threshold and backtest before you ship it.
    file: PathBuf,
    /// The step to replay. May be left out when only one step's plugin can replay the past
    /// (takes `replay_at` in its `with:`, as `metrics-verifier` does).
    #[arg(long)]
    step: Option<String>,
    /// How far back to read the daemon's history, e.g. `30d` or `12h`.
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    since: String,
    /// Replay from this time instead of the daemon's history: RFC 3339, e.g.
    /// `2026-11-30T10:00:00Z`, optionally with what that deploy turned out to be,
    /// `TIME=good` or `TIME=bad`. Repeat for several.
    #[arg(long = "at", value_name = "TIME[=good|bad]")]
    at: Vec<String>,
    /// A workflow input for the `--at` replays, `NAME=VALUE` (past deploys use their own).
    #[arg(short, long = "input", value_name = "NAME=VALUE")]
    inputs: Vec<String>,
    /// The name the daemon serves the workflow under, when it is not the file's `name`.
    #[arg(long, value_name = "NAME")]
    workflow: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: client::ServerArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// One deploy to replay: when its step started and what it was started with.
struct Window {
    /// The run, for a past deploy.
    run: Option<String>,
    at: SystemTime,
    inputs: Map<String, Value>,
    prior: Vec<PriorStep>,
    happened: Happened,
}

/// What became of a deploy, as far as shiphat knows.
#[derive(Serialize)]
struct Happened {
    /// In words: `succeeded`, `failed at \`verify\`, rolled back`, `not known`.
    text: String,
    /// Whether it was a bad deploy: it failed or was rolled back. `None` when that is not
    /// known (cancelled, or an `--at` time given without `=good` or `=bad`).
    bad: Option<bool>,
}

/// The replayed step's verdict.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    /// The step succeeded: it would have let the deploy through.
    Pass,
    /// The step failed on its conditions: it would have stopped the deploy.
    Fail,
    /// The step could not judge (a bad config, a fault): no verdict.
    Error,
}

#[derive(Serialize)]
struct Row {
    run: Option<String>,
    step_started_at: String,
    inputs: Map<String, Value>,
    happened: Happened,
    verdict: Verdict,
    /// The step's summary or error message.
    reason: String,
    outputs: Map<String, Value>,
}

#[derive(Serialize)]
struct Report {
    workflow: String,
    step: String,
    rows: Vec<Row>,
    /// Past deploys that never reached the step (they ended before it).
    not_reached: usize,
    /// More deploys than a backtest replays matched; the oldest were left out.
    truncated: bool,
}

pub async fn backtest(args: BacktestArgs) -> anyhow::Result<u8> {
    let runner = args.engine.runner()?;
    let prepared = prepare(&runner, &args.file).await?;
    let step = choose_step(&prepared, args.step.as_deref())?;
    let name = args
        .workflow
        .clone()
        .unwrap_or_else(|| prepared.workflow.name.clone());

    let (mut windows, not_reached, truncated) = if args.at.is_empty() {
        let since = humantime::parse_duration(&args.since).map_err(|e| {
            Invalid(format!(
                "--since `{}` is not a duration ({e}); write e.g. `30d` or `12h`",
                args.since
            ))
        })?;
        let since_ms = millis(SystemTime::now().checked_sub(since).unwrap_or(UNIX_EPOCH));
        let server = args.server.clone();
        let workflow = name.clone();
        let (runs, truncated) = tokio::task::spawn_blocking(move || {
            client::past_runs(&server, &workflow, since_ms, MAX_DEPLOYS)
        })
        .await??;
        let total = runs.len();
        let later = rolled_back_later(&runs);
        let windows: Vec<Window> = runs
            .iter()
            .filter_map(|run| window(run, &step, later.get(run.run.id.as_str())))
            .collect();
        let reached = windows.len();
        (windows, total - reached, truncated)
    } else {
        let inputs = resolve_inputs(&prepared.workflow, &args.inputs)?;
        let windows = args
            .at
            .iter()
            .map(|at| given_window(at, &inputs))
            .collect::<anyhow::Result<Vec<_>>>()?;
        (windows, 0, false)
    };
    windows.sort_by_key(|w| w.at);

    let mut rows = Vec::with_capacity(windows.len());
    for w in windows {
        let mut config = Map::new();
        config.insert(
            REPLAY_KEY.into(),
            humantime::format_rfc3339_millis(w.at).to_string().into(),
        );
        let replay = Replay {
            step: step.clone(),
            inputs: w.inputs.clone(),
            prior: w.prior,
            config,
        };
        let report = runner
            .replay_step(&prepared, replay, std::sync::Arc::new(|_| {}))
            .await
            .map_err(Invalid)?;
        // A `with:` the plugin refuses (a `scrape` metric, which keeps no past) is the file's
        // to fix, and the same for every deploy: said once, as an error, not as a row each.
        if let Some(e) = report
            .error
            .as_ref()
            .filter(|e| e.kind == ErrorKind::InvalidConfig)
        {
            return Err(Invalid(format!("step `{step}` cannot be replayed: {}", e.message)).into());
        }
        // A step that failed because it had nothing to judge (the metrics verifier's
        // `verdict: Error`: no samples then, or a query Prometheus refused) says nothing
        // about the deploy, only about the history kept.
        let no_data = report.outputs.get("verdict") == Some(&Value::from("Error"));
        let (verdict, reason) = match (report.status, &report.error) {
            (StepStatus::Succeeded, _) => (Verdict::Pass, report.summary),
            (_, Some(e)) if e.kind == ErrorKind::Failed && !no_data => {
                (Verdict::Fail, e.message.clone())
            }
            (_, Some(e)) if e.kind == ErrorKind::Failed => (Verdict::Error, e.message.clone()),
            (_, Some(e)) => (Verdict::Error, format!("{}: {}", e.kind, e.message)),
            (_, None) => (Verdict::Error, report.summary),
        };
        rows.push(Row {
            run: w.run,
            step_started_at: humantime::format_rfc3339_seconds(w.at).to_string(),
            inputs: w.inputs,
            happened: w.happened,
            verdict,
            reason,
            outputs: report.outputs,
        });
    }
    let report = Report {
        workflow: name,
        step,
        rows,
        not_reached,
        truncated,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let source = if args.at.is_empty() {
            format!("its deploys of the last {}", args.since)
        } else {
            "the times given".to_owned()
        };
        outln!("{}", text(&report, &source).trim_end());
    }
    Ok(exit::OK)
}

/// The step to replay: the one named, which must be able to, or the only one that can.
fn choose_step(prepared: &shiphat_runner::Prepared, named: Option<&str>) -> anyhow::Result<String> {
    let replays = |info: &shiphat_host::PluginInfo| {
        serde_json::from_str::<Value>(&info.config_schema)
            .is_ok_and(|schema| schema["properties"].get(REPLAY_KEY).is_some())
    };
    let able: Vec<(&str, &str)> = prepared
        .plugins()
        .filter(|(_, _, info)| replays(info))
        .map(|(step, _, info)| (step.id.as_str(), info.name.as_str()))
        .collect();
    match named {
        Some(id) => {
            if able.iter().any(|(s, _)| *s == id) {
                return Ok(id.to_owned());
            }
            let Some((_, _, info)) = prepared.plugins().find(|(s, _, _)| s.id == id) else {
                // Not a plugin step: the runner says what it is, or that there is none.
                return Ok(id.to_owned());
            };
            Err(Invalid(format!(
                "step `{id}` uses `{}`, which cannot replay the past (its `with:` takes no `{REPLAY_KEY}`); {}",
                info.name,
                suggest(&able)
            ))
            .into())
        }
        None => match able.as_slice() {
            [(id, _)] => Ok((*id).to_owned()),
            [] => Err(Invalid(format!(
                "no step of `{}` can replay the past: none uses a plugin that takes `{REPLAY_KEY}`, such as `metrics-verifier`",
                prepared.workflow.name
            ))
            .into()),
            _ => Err(Invalid(format!(
                "several steps can replay the past; choose one with `--step`: {}",
                able.iter()
                    .map(|(s, _)| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into()),
        },
    }
}

fn suggest(able: &[(&str, &str)]) -> String {
    if able.is_empty() {
        "no step of this workflow can".to_owned()
    } else {
        format!(
            "steps that can: {}",
            able.iter()
                .map(|(s, p)| format!("`{s}` ({p})"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// A past run's deploy to replay, if it reached `step`.
fn window(run: &RunDetail, step: &str, undone_by: Option<&Undone>) -> Option<Window> {
    let ran = run.steps.iter().find(|s| s.id == step)?;
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ran.started_ms?).ok()?);
    let prior = run
        .steps
        .iter()
        .filter(|s| s.id != step)
        .filter_map(|s| {
            let status = match s.status {
                StepState::Succeeded => StepStatus::Succeeded,
                StepState::Failed => StepStatus::Failed,
                StepState::Skipped => StepStatus::Skipped,
                StepState::Cancelled => StepStatus::Cancelled,
                StepState::Running | StepState::Interrupted => return None,
            };
            Some(PriorStep {
                id: s.id.clone(),
                status,
                outputs: s.outputs.as_object().cloned().unwrap_or_default(),
                continued: s.continued,
            })
        })
        .collect();
    Some(Window {
        run: Some(run.run.id.clone()),
        at,
        inputs: run.run.inputs.clone(),
        prior,
        happened: happened(run, undone_by),
    })
}

/// A deploy undone by a later one: the run that put back the release it replaced.
struct Undone {
    by: String,
    release: String,
}

/// The succeeded deploys among `runs` that a later deploy undid: on the same environment (its
/// concurrency key, else its workflow), the next deploy that succeeded there put back the
/// release it had replaced. A deploy rolled back by hand, with the release before it deployed
/// again, was a bad one although its own run succeeded. (The oldest deploy of the history
/// read has no known predecessor, so it is never counted as undone.)
fn rolled_back_later(runs: &[RunDetail]) -> std::collections::HashMap<&str, Undone> {
    let mut by_key: std::collections::BTreeMap<&str, Vec<(&RunDetail, String)>> =
        std::collections::BTreeMap::new();
    for run in runs {
        let v = &run.run;
        if v.status != RunStatus::Succeeded {
            continue;
        }
        if let Some(release) = shiphat_protocol::release_of(&v.inputs) {
            let key = v.concurrency_key.as_deref().unwrap_or(&v.workflow);
            by_key.entry(key).or_default().push((run, release));
        }
    }
    let mut undone = std::collections::HashMap::new();
    for deploys in by_key.values_mut() {
        deploys.sort_by_key(|(run, _)| run.run.created_ms);
        for w in deploys.windows(3) {
            let [(_, before), (run, release), (next, after)] = w else {
                continue;
            };
            if after == before && release != before {
                undone.insert(
                    run.run.id.as_str(),
                    Undone {
                        by: next.run.id.clone(),
                        release: after.clone(),
                    },
                );
            }
        }
    }
    undone
}

/// What became of a past run: how it ended, where it failed, what the rollback did, and
/// whether a later deploy undid it.
fn happened(run: &RunDetail, undone_by: Option<&Undone>) -> Happened {
    let failed_at = run
        .steps
        .iter()
        .find(|s| s.section == Section::Steps && s.status == StepState::Failed && !s.continued)
        .map(|s| format!(" at `{}`", s.id))
        .unwrap_or_default();
    let rollback = match run.rollback {
        None => "",
        Some(Rollback::RolledBack) => ", rolled back",
        Some(Rollback::Failed) => ", rollback failed",
        Some(Rollback::RollingBack) => ", rolling back",
    };
    let (text, bad) = match (run.run.status, undone_by) {
        (RunStatus::Succeeded, Some(undone)) => (
            format!(
                "succeeded, rolled back later (run {} deployed {} again)",
                undone.by, undone.release
            ),
            Some(true),
        ),
        (RunStatus::Succeeded, None) => ("succeeded".to_owned(), Some(run.rollback.is_some())),
        (RunStatus::Failed, _) => (format!("failed{failed_at}"), Some(true)),
        (other, _) => (other.to_string(), None),
    };
    Happened {
        text: format!("{text}{rollback}"),
        bad,
    }
}

/// A time given with `--at`, with what it turned out to be if said.
fn given_window(given: &str, inputs: &Map<String, Value>) -> anyhow::Result<Window> {
    let (time, label) = match given.rsplit_once('=') {
        Some((time, label)) => (time, Some(label)),
        None => (given, None),
    };
    let bad = match label {
        None => None,
        Some("bad") => Some(true),
        Some("good") => Some(false),
        Some(other) => {
            return Err(Invalid(format!(
                "--at `{given}`: `{other}` is neither `good` nor `bad`"
            ))
            .into());
        }
    };
    // Any offset a person writes (`Z`, `+01:00`), as RFC 3339 allows.
    let at = time
        .parse::<jiff::Timestamp>()
        .map_err(|e| e.to_string())
        .and_then(|t| SystemTime::try_from(t).map_err(|e| e.to_string()))
        .map_err(|e| {
            Invalid(format!(
                "--at `{given}`: `{time}` is not a time ({e}); write it as RFC 3339, e.g. `2026-11-30T10:00:00Z` or `2026-11-30T11:00:00+01:00`"
            ))
        })?;
    Ok(Window {
        run: None,
        at,
        inputs: inputs.clone(),
        prior: Vec::new(),
        happened: Happened {
            text: match bad {
                Some(true) => "bad (as given)".to_owned(),
                Some(false) => "good (as given)".to_owned(),
                None => "not known".to_owned(),
            },
            bad,
        },
    })
}

/// The report in words: one block per deploy, oldest first, then the tally.
fn text(report: &Report, source: &str) -> String {
    let mut out = format!(
        "Backtest of step `{}` of `{}`, replayed against what its metrics recorded, for {source}.\n",
        report.step, report.workflow
    );
    if report.truncated {
        out.push_str(&format!(
            "Only the newest {MAX_DEPLOYS} deploys are replayed; give a shorter `--since` for the rest.\n"
        ));
    }
    for row in &report.rows {
        let inputs: Vec<String> = row
            .inputs
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        out.push_str(&format!(
            "\n{}{}{}\n",
            row.step_started_at,
            row.run
                .as_deref()
                .map(|r| format!("  run {r}"))
                .unwrap_or_default(),
            if inputs.is_empty() {
                String::new()
            } else {
                format!("  {}", inputs.join(" "))
            }
        ));
        out.push_str(&format!("  happened: {}\n", row.happened.text));
        let verdict = match row.verdict {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Error => "no verdict",
        };
        out.push_str(&format!("  backtest: {verdict}: {}\n", row.reason));
        match (row.happened.bad, row.verdict) {
            (Some(true), Verdict::Pass) => {
                out.push_str("  ⚠ missed: this bad deploy would have passed\n");
            }
            (Some(false), Verdict::Fail) => {
                out.push_str("  ⚠ would have blocked this good deploy\n");
            }
            _ => {}
        }
    }
    out.push('\n');
    if report.rows.is_empty() {
        out.push_str(&format!("No deploy to replay reached `{}`.", report.step));
    } else {
        let count = |bad: bool, verdict: Verdict| {
            report
                .rows
                .iter()
                .filter(|r| r.happened.bad == Some(bad) && r.verdict == verdict)
                .count()
        };
        let judged = |bad: bool| {
            report
                .rows
                .iter()
                .filter(|r| r.happened.bad == Some(bad) && r.verdict != Verdict::Error)
                .count()
        };
        let known = judged(true) + judged(false);
        if known > 0 {
            out.push_str(&format!(
                "Caught {} of {} bad deploys; would have blocked {} of {} good ones.",
                count(true, Verdict::Fail),
                judged(true),
                count(false, Verdict::Fail),
                judged(false)
            ));
        }
        let unknown = |verdict: Verdict| {
            report
                .rows
                .iter()
                .filter(|r| r.happened.bad.is_none() && r.verdict == verdict)
                .count()
        };
        let (pass, fail) = (unknown(Verdict::Pass), unknown(Verdict::Fail));
        if pass + fail > 0 {
            out.push_str(&format!(
                "{}Of {} whose outcome is not known, {pass} would pass and {fail} would fail.",
                if known > 0 { " " } else { "" },
                deploys(pass + fail),
            ));
        }
        let errors = report
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Error)
            .count();
        if errors > 0 {
            let gap = if out.ends_with('\n') { "" } else { " " };
            out.push_str(&format!("{gap}{} could not be judged.", deploys(errors)));
        }
    }
    if report.not_reached > 0 {
        out.push_str(&format!(
            "\n{} ended before `{}` and {} left out.",
            deploys(report.not_reached),
            report.step,
            if report.not_reached == 1 { "is" } else { "are" }
        ));
    }
    out.push('\n');
    out
}

/// `1 deploy`, `2 deploys`.
fn deploys(n: usize) -> String {
    if n == 1 {
        "1 deploy".to_owned()
    } else {
        format!("{n} deploys")
    }
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
