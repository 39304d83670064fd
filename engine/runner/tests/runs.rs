//! The runner's own tests, one case per path through a run. Every `runs/NAME.yaml` is a small
//! workflow, run by the real runner on the real test plugins (`echo`, `misbehave`), and its
//! events must match `runs/NAME.events`. Run with `BLESS=1` to rewrite the expectations after a
//! deliberate change.
//!
//! A case opens with a comment line saying what it checks. The comment lines right after it
//! may steer the run:
//!
//! - `# input: NAME=VALUE`: an input, as `--input` gives it.
//! - `# secret: NAME=VALUE`: a secret a step can be granted.
//! - `# dry_run: true`: a dry run.
//! - `# prior: ID STATUS [continued] [OUTPUTS]`: a step settled in an earlier life of the run,
//!   handed to `Runner::run_from` with its outputs (a JSON object).
//! - `# cancel at: LINE`, `# abort at: LINE`, `# escalate at: LINE`: stop the run with
//!   `Stop::cancel`, `abort` or `escalate`, from the event sink, when the first event whose line
//!   starts with `LINE` is emitted, before the runner goes on.
//! - `# decide: STEP approve|reject|never PRINCIPAL [COMMENT]`: how approval step `STEP` is
//!   decided (`never`: nobody answers, so its timeout ends it). An approval step without a
//!   `decide` line finds nobody to ask.
//! - `# hold: LINE until OTHER`: the first event whose line starts with `LINE`, a step's start
//!   or the run's end, is not durable (`Runner::run_durable`) until an event starting with
//!   `OTHER` has been emitted: a held start keeps its step from calling its plugin, as a slow
//!   step would, while the steps beside it go on. This orders steps that run side by side
//!   where it matters.
//!
//! The expected text has one line per event. Steps that run side by side interleave their
//! events by chance, so each step's events are shown together, in the order the workflow
//! declares its steps. The order between steps is checked on the real order instead, in every
//! case: a step's first event comes after the end of each step it needs, sections run one after
//! another, a step's attempts count up from 1 and it ends once. Times, durations and run ids
//! are left out.

#[path = "../../../tests/support/plugins.rs"]
#[allow(
    dead_code,
    reason = "the runner's cases name plugins with `uses:`, not by their paths"
)]
mod plugins;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use shiphat_host::{Host, HostConfig};
use shiphat_runner::{
    ApprovalRequest, Approver, Decision, Durable, Event, PluginPath, PriorStep, RunOptions,
    RunReport, Runner, Secrets, Section, StepStatus, Stop, Vote,
};
use shiphat_workflow::{Step, Workflow};

/// How long one case's run may take. The slowest cases wait out a step timeout or a backoff of
/// a fraction of a second; a minute is only ever reached by a run that hangs.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// How long a `hold` waits for the event it waits for.
const HOLD_DEADLINE: Duration = Duration::from_secs(30);

/// What a case's comment lines ask of the run.
#[derive(Default)]
struct Case {
    inputs: Vec<(String, String)>,
    secrets: Vec<(String, String)>,
    dry_run: bool,
    prior: Vec<PriorStep>,
    triggers: Vec<Trigger>,
    holds: Vec<Hold>,
    decisions: Vec<Decide>,
}

/// How the case's approver answers for one approval step.
#[derive(Clone)]
struct Decide {
    step: String,
    /// `approve`, `reject` or `never`.
    how: String,
    principal: String,
    comment: String,
}

/// Answers approval steps as the case's `decide` lines say.
struct Scripted(Vec<Decide>);

impl Approver for Scripted {
    fn ask(
        &self,
        request: ApprovalRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Decision> + Send>> {
        let Some(decide) = self.0.iter().find(|d| d.step == request.step).cloned() else {
            return Box::pin(std::future::ready(Decision::Unavailable(format!(
                "nobody to ask for `{}`: {}",
                request.step, request.message
            ))));
        };
        let vote = Vote {
            principal: decide.principal,
            approve: decide.how == "approve",
            comment: decide.comment,
            time: "2026-12-03T10:00:00.000Z".into(),
        };
        Box::pin(async move {
            match decide.how.as_str() {
                "approve" => Decision::Approved(vec![vote]),
                "reject" => Decision::Rejected {
                    by: vote,
                    approvals: Vec::new(),
                },
                _ => std::future::pending().await,
            }
        })
    }
}

/// Stops the run when an event's line starts with `at`.
struct Trigger {
    at: String,
    action: Action,
    fired: AtomicBool,
}

#[derive(Clone, Copy)]
enum Action {
    Cancel,
    Abort,
    Escalate,
}

/// Holds the event whose line starts with `line` until one starting with `until` was emitted.
struct Hold {
    line: String,
    until: String,
    fired: AtomicBool,
}

impl Case {
    fn parse(text: &str) -> Result<Case, String> {
        let mut header = text
            .lines()
            .map_while(|line| line.strip_prefix('#'))
            .map(str::trim);
        if header.next().is_none_or(str::is_empty) {
            return Err("a case opens with a comment line saying what it checks".into());
        }
        let mut case = Case::default();
        for line in header {
            let (key, value) = line
                .split_once(':')
                .map(|(key, value)| (key.trim(), value.trim()))
                .ok_or_else(|| format!("`# {line}`: expected `# KEY: VALUE`"))?;
            let pair = || {
                value
                    .split_once('=')
                    .map(|(name, value)| (name.to_owned(), value.to_owned()))
                    .ok_or_else(|| format!("`# {line}`: expected `NAME=VALUE`"))
            };
            let trigger = |action| Trigger {
                at: value.to_owned(),
                action,
                fired: AtomicBool::new(false),
            };
            match key {
                "input" => case.inputs.push(pair()?),
                "secret" => case.secrets.push(pair()?),
                "dry_run" => case.dry_run = value == "true",
                "prior" => case.prior.push(prior(value)?),
                "cancel at" => case.triggers.push(trigger(Action::Cancel)),
                "abort at" => case.triggers.push(trigger(Action::Abort)),
                "escalate at" => case.triggers.push(trigger(Action::Escalate)),
                "decide" => {
                    let mut words = value.splitn(4, ' ');
                    let (Some(step), Some(how), Some(principal)) =
                        (words.next(), words.next(), words.next())
                    else {
                        return Err(format!(
                            "`# {line}`: expected `STEP approve|reject|never PRINCIPAL [COMMENT]`"
                        ));
                    };
                    if !matches!(how, "approve" | "reject" | "never") {
                        return Err(format!(
                            "`# {line}`: `{how}` is not approve, reject or never"
                        ));
                    }
                    case.decisions.push(Decide {
                        step: step.to_owned(),
                        how: how.to_owned(),
                        principal: principal.to_owned(),
                        comment: words.next().unwrap_or_default().to_owned(),
                    });
                }
                "hold" => {
                    let (held, until) = value
                        .split_once(" until ")
                        .ok_or_else(|| format!("`# {line}`: expected `LINE until OTHER`"))?;
                    case.holds.push(Hold {
                        line: held.trim().to_owned(),
                        until: until.trim().to_owned(),
                        fired: AtomicBool::new(false),
                    });
                }
                _ => return Err(format!("`# {line}`: unknown key `{key}`")),
            }
        }
        Ok(case)
    }
}

/// `ID STATUS [continued] [OUTPUTS]`.
fn prior(text: &str) -> Result<PriorStep, String> {
    let (id, rest) = text.split_once(' ').unwrap_or((text, ""));
    let (status, rest) = rest.trim().split_once(' ').unwrap_or((rest.trim(), ""));
    let status = match status {
        "succeeded" => StepStatus::Succeeded,
        "failed" => StepStatus::Failed,
        "skipped" => StepStatus::Skipped,
        "cancelled" => StepStatus::Cancelled,
        _ => return Err(format!("prior `{text}`: unknown status `{status}`")),
    };
    let rest = rest.trim();
    let (continued, rest) = match rest.strip_prefix("continued") {
        Some(rest) => (true, rest.trim()),
        None => (false, rest),
    };
    let outputs = if rest.is_empty() {
        Map::new()
    } else {
        match serde_json::from_str(rest) {
            Ok(Value::Object(outputs)) => outputs,
            _ => return Err(format!("prior `{text}`: outputs must be a JSON object")),
        }
    };
    Ok(PriorStep {
        id: id.to_owned(),
        status,
        outputs,
        continued,
    })
}

/// The event sink of a case: records every event with its line, and stops or holds the run
/// where the case says.
struct Recorder {
    triggers: Vec<Trigger>,
    holds: Vec<Hold>,
    stop: Stop,
    seen: Mutex<Seen>,
    changed: Condvar,
}

#[derive(Default)]
struct Seen {
    events: Vec<Event>,
    lines: Vec<String>,
    /// What went wrong in the sink itself (a hold that waited in vain).
    problems: Vec<String>,
}

impl Recorder {
    /// Records an event; answers, for an event held by the case, when it is durable.
    fn record(self: &Arc<Self>, event: Event) -> Option<Durable> {
        let line = line(&event);
        let waited_for = matches!(event, Event::StepStarted { .. } | Event::RunFinished { .. });
        let held = self
            .holds
            .iter()
            .find(|hold| line.starts_with(&hold.line) && !hold.fired.swap(true, Ordering::SeqCst))
            .map(|hold| {
                if !waited_for {
                    self.seen.lock().unwrap().problems.push(format!(
                        "`{line}` is held, but the runner waits only for a step's start and the run's end"
                    ));
                }
                let (recorder, until, line) = (self.clone(), hold.until.clone(), line.clone());
                Box::pin(async move {
                    // On a thread of its own: the runtime goes on meanwhile, and emits `until`.
                    tokio::task::spawn_blocking(move || recorder.wait_for(&until, &line))
                        .await
                        .unwrap();
                }) as Durable
            });
        {
            let mut seen = self.seen.lock().unwrap();
            seen.events.push(event);
            seen.lines.push(line.clone());
        }
        self.changed.notify_all();
        for trigger in &self.triggers {
            if line.starts_with(&trigger.at) && !trigger.fired.swap(true, Ordering::SeqCst) {
                match trigger.action {
                    Action::Cancel => self.stop.cancel(),
                    Action::Abort => self.stop.abort(),
                    Action::Escalate => {
                        self.stop.escalate();
                    }
                }
            }
        }
        held
    }

    /// Waits, up to [`HOLD_DEADLINE`], until an event starting with `until` was recorded.
    fn wait_for(&self, until: &str, held: &str) {
        let deadline = Instant::now() + HOLD_DEADLINE;
        let mut seen = self.seen.lock().unwrap();
        while !seen.lines.iter().any(|line| line.starts_with(until)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                seen.problems.push(format!(
                    "`{held}` was held for {HOLD_DEADLINE:?}, and no event `{until}` came"
                ));
                return;
            }
            seen = self.changed.wait_timeout(seen, left).unwrap().0;
        }
    }
}

/// A value's name in the event JSON: `succeeded`, `on_failure`, `invalid_config`.
fn word(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(word)) => word,
        other => panic!("not a one-word value: {other:?}"),
    }
}

/// A text on one line.
fn flat(text: &str) -> String {
    text.replace('\n', "\\n")
}

/// One event on one line, without times, durations, run ids, and the step names and headers
/// the workflow itself says.
fn line(event: &Event) -> String {
    match event {
        Event::RunStarted {
            workflow, dry_run, ..
        } => {
            let dry = if *dry_run { " (dry run)" } else { "" };
            format!("run started `{workflow}`{dry}")
        }
        Event::StepStarted { step, attempt, .. } => format!("{step} started attempt {attempt}"),
        Event::Log {
            step,
            level,
            source,
            message,
            ..
        } => {
            let step = if step.is_empty() { "run" } else { step };
            format!("{step} log {level} {source}: {}", flat(message))
        }
        Event::StepFinished {
            step,
            status,
            attempts,
            summary,
            outputs,
            error,
            continued,
            ..
        } => {
            let mut line = format!("{step} finished {} attempts={attempts}", word(status));
            if *continued {
                line.push_str(" continued");
            }
            if !outputs.is_empty() {
                write!(line, " outputs={}", Value::Object(outputs.clone())).unwrap();
            }
            match error {
                Some(error) => write!(line, " | {}: {}", word(error.kind), flat(&error.message)),
                None => write!(line, " | {}", flat(summary)),
            }
            .unwrap();
            line
        }
        Event::RunFinished {
            status,
            failed_steps,
            ..
        } => format!(
            "run finished {} failed_steps=[{}]",
            word(status),
            failed_steps.join(", ")
        ),
    }
}

/// The steps of each section, in order.
fn sections(workflow: &Workflow) -> [(Section, &[Step]); 3] {
    [
        (Section::Steps, workflow.steps.as_slice()),
        (Section::OnFailure, workflow.on_failure.as_slice()),
        (Section::Finally, workflow.finally.as_slice()),
    ]
}

/// The step an event belongs to, if any.
fn step_of(event: &Event) -> Option<&str> {
    match event {
        Event::StepStarted { step, .. } | Event::StepFinished { step, .. } => Some(step),
        Event::Log { step, .. } if !step.is_empty() => Some(step),
        _ => None,
    }
}

/// The expected text: the run's own events where they came, each section's steps with their
/// events together.
fn render(workflow: &Workflow, prior: &[PriorStep], seen: &Seen) -> String {
    let mut by_step: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut run_lines = Vec::new();
    for (index, event) in seen.events.iter().enumerate() {
        match step_of(event) {
            Some(step) => by_step.entry(step).or_default().push(index),
            None => run_lines.push(index),
        }
    }
    let mut out = String::new();
    let mut run_lines = run_lines.into_iter().peekable();
    for (section, steps) in sections(workflow) {
        if steps.is_empty() {
            continue;
        }
        // The run's own lines before this section's first event come before it.
        let first = steps
            .iter()
            .filter_map(|s| by_step.get(s.id.as_str())?.first().copied())
            .min();
        while let Some(&index) = run_lines.peek() {
            if index == 0 || first.is_some_and(|first| index < first) {
                writeln!(out, "{}", seen.lines[index]).unwrap();
                run_lines.next();
            } else {
                break;
            }
        }
        writeln!(out, "{}:", word(section)).unwrap();
        for step in steps {
            match by_step.get(step.id.as_str()) {
                Some(indices) => {
                    for &index in indices {
                        writeln!(out, "  {}", seen.lines[index]).unwrap();
                    }
                }
                None if prior.iter().any(|p| p.id == step.id) => {
                    writeln!(
                        out,
                        "  {}: no events (settled before the run resumed)",
                        step.id
                    )
                    .unwrap();
                }
                None => writeln!(out, "  {}: no events", step.id).unwrap(),
            }
        }
    }
    for index in run_lines {
        writeln!(out, "{}", seen.lines[index]).unwrap();
    }
    out
}

/// What every run keeps, whatever the case: checked on the events in the order they came.
fn check(workflow: &Workflow, seen: &Seen, report: &RunReport) -> Vec<String> {
    let events = &seen.events;
    let mut problems = seen.problems.clone();
    let first_is_start = matches!(events.first(), Some(Event::RunStarted { .. }));
    let last_is_end = matches!(events.last(), Some(Event::RunFinished { .. }));
    let starts = events
        .iter()
        .filter(|e| matches!(e, Event::RunStarted { .. }))
        .count();
    let ends = events
        .iter()
        .filter(|e| matches!(e, Event::RunFinished { .. }))
        .count();
    if !first_is_start || !last_is_end || starts != 1 || ends != 1 {
        problems.push("a run emits `run_started` first and `run_finished` last, once each".into());
    }
    if let Some(Event::RunStarted { steps, .. }) = events.first() {
        let announced: Vec<(&str, Section)> =
            steps.iter().map(|h| (h.id.as_str(), h.section)).collect();
        let declared: Vec<(&str, Section)> = sections(workflow)
            .into_iter()
            .flat_map(|(section, steps)| steps.iter().map(move |s| (s.id.as_str(), section)))
            .collect();
        if announced != declared {
            problems.push(format!(
                "`run_started` announces {announced:?}, the workflow declares {declared:?}"
            ));
        }
    }
    if let Some(Event::RunFinished { status, .. }) = events.last()
        && *status != report.status
    {
        problems.push(format!(
            "`run_finished` says {status:?}, the report {:?}",
            report.status
        ));
    }
    // The same steps, not necessarily in the same order: two steps that end at the same moment
    // may enter the report in the other order than their events.
    let mut finished: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepFinished { step, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    let mut reported: Vec<&str> = report.steps.iter().map(|s| s.id.as_str()).collect();
    finished.sort_unstable();
    reported.sort_unstable();
    if finished != reported {
        problems.push(format!(
            "the steps {finished:?} finished, the report has {reported:?}"
        ));
    }

    // Each step: attempts 1, 2, … then one end that counts them, and nothing after it.
    let mut first_event = HashMap::new();
    let mut end = HashMap::new();
    let mut attempts: HashMap<&str, Vec<u32>> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        let Some(step) = step_of(event) else { continue };
        first_event.entry(step).or_insert(index);
        if let Some(&ended) = end.get(step) {
            problems.push(format!(
                "`{step}` has an event after its end (event {ended})"
            ));
        }
        match event {
            Event::StepStarted { attempt, .. } => {
                let started = attempts.entry(step).or_default();
                started.push(*attempt);
                if started.iter().zip(1..).any(|(&a, n)| a != n) {
                    problems.push(format!("`{step}` started attempts {started:?}"));
                }
            }
            Event::StepFinished {
                attempts: counted, ..
            } => {
                end.insert(step, index);
                let started = attempts.get(step).map_or(0, Vec::len);
                if *counted as usize != started {
                    problems.push(format!(
                        "`{step}` started {started} attempts and ended saying {counted}"
                    ));
                }
            }
            _ => {}
        }
    }

    // A step starts after the steps it needs end; a section after the one before it.
    let mut last_of_section: Option<(Section, usize)> = None;
    for (section, steps) in sections(workflow) {
        for step in steps {
            let Some(&first) = first_event.get(step.id.as_str()) else {
                continue;
            };
            for &need in &step.needs {
                let need = steps[need].id.as_str();
                if let Some(&need_end) = end.get(need)
                    && need_end > first
                {
                    problems.push(format!(
                        "`{}` began (event {first}) before `{need}`, which it needs, ended (event {need_end})",
                        step.id
                    ));
                }
            }
            if let Some((before, last)) = last_of_section
                && last > first
            {
                problems.push(format!(
                    "`{}` of {} began (event {first}) before {} ended (event {last})",
                    step.id,
                    word(section),
                    word(before)
                ));
            }
        }
        let last = steps
            .iter()
            .filter_map(|s| {
                events
                    .iter()
                    .rposition(|e| step_of(e) == Some(s.id.as_str()))
            })
            .max();
        if let Some(last) = last {
            last_of_section = Some((section, last));
        }
    }
    problems
}

/// Where a case's text names this machine's directories.
struct Places {
    cases: String,
    plugins: String,
}

impl Places {
    /// The text with this machine's directories, and the source lines a plugin's panic names
    /// (which move whenever the plugin is edited), replaced by placeholders.
    fn hide(&self, text: &str) -> String {
        let text = text
            .replace(&self.plugins, "<plugins>")
            .replace(&self.cases, "<cases>");
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".rs:") {
            let (before, after) = rest.split_at(at + ".rs:".len());
            out.push_str(before);
            let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let line = digits(after);
            let column = after[line..].strip_prefix(':').map_or(0, digits);
            if line > 0 && column > 0 {
                out.push_str("LINE:COL");
                rest = &after[line + 1 + column..];
            } else {
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }
}

/// A host and a runtime set up as the daemon's: the instance pool, several workers. (The
/// one-shot CLI's host, without the pool, is what tests/sandbox.rs runs every fault through.)
fn daemon_host() -> (Host, tokio::runtime::Runtime) {
    let host = Host::new(HostConfig {
        cache_dir: Some(plugins::shared_cache().to_owned()),
        on_compile: None,
        instance_pool: true,
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    (host, runtime)
}

/// Runs one case; returns its text and what it broke of the rules every run keeps.
async fn run_case(host: &Host, places: &Places, path: &Path) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let case = match Case::parse(&text) {
        Ok(case) => case,
        Err(e) => return (String::new(), vec![e]),
    };
    let workflow = match shiphat_workflow::load(path) {
        Ok(workflow) => workflow,
        Err(e) => return (String::new(), vec![format!("the workflow is invalid: {e}")]),
    };
    let secrets_dir = tempfile::tempdir().unwrap();
    let secrets = if case.secrets.is_empty() {
        Secrets::none()
    } else {
        let file = secrets_dir.path().join("secrets");
        let lines: String = case
            .secrets
            .iter()
            .map(|(name, value)| format!("{name}={value}\n"))
            .collect();
        std::fs::write(&file, lines).unwrap();
        Secrets::none().with_file(&file).unwrap()
    };
    let runner = Runner::new(
        host.clone(),
        PluginPath::new(vec![plugins::plugins_dir().to_owned()]),
        secrets,
    )
    .with_approver(Arc::new(Scripted(case.decisions.clone())));
    let prepared = match runner.prepare(workflow).await {
        Ok(prepared) => prepared,
        Err(e) => return (places.hide(&format!("prepare failed:\n{e}\n")), Vec::new()),
    };
    let inputs = match prepared.workflow.resolve_inputs(&case.inputs) {
        Ok(inputs) => inputs,
        Err(problems) => return (String::new(), problems),
    };
    let recorder = Arc::new(Recorder {
        triggers: case.triggers,
        holds: case.holds,
        stop: Stop::new(),
        seen: Mutex::default(),
        changed: Condvar::new(),
    });
    let sink = recorder.clone();
    let options = RunOptions {
        run_id: "test-run".into(),
        inputs,
        dry_run: case.dry_run,
    };
    let run = runner.run_durable(
        &prepared,
        options,
        case.prior.clone(),
        Arc::new(move |event| sink.record(event)),
        recorder.stop.clone(),
    );
    let report = tokio::time::timeout(RUN_DEADLINE, run).await;
    let seen = recorder.seen.lock().unwrap();
    let text = places.hide(&render(&prepared.workflow, &case.prior, &seen));
    match report {
        Ok(report) => {
            let problems = check(&prepared.workflow, &seen, &report);
            (text, problems)
        }
        Err(_) => (
            text,
            vec![format!("the run did not end within {RUN_DEADLINE:?}")],
        ),
    }
}

#[test]
fn runs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/runs")
        .canonicalize()
        .unwrap();
    let bless = std::env::var_os("BLESS").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    let places = Places {
        cases: dir.display().to_string(),
        plugins: plugins::plugins_dir().display().to_string(),
    };
    let (host, runtime) = daemon_host();
    let cases = files.clone();
    let results = runtime.block_on(async move {
        tokio::spawn(async move {
            let mut results = Vec::new();
            for path in &cases {
                results.push(run_case(&host, &places, path).await);
            }
            results
        })
        .await
        .unwrap()
    });
    let mut failures = Vec::new();
    for (path, (actual, problems)) in files.iter().zip(results) {
        let name = path.file_name().unwrap().to_string_lossy();
        if !problems.is_empty() {
            failures.push(format!("{name}:\n  {}\n{actual}", problems.join("\n  ")));
            continue;
        }
        let expected_path = path.with_extension("events");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!("{name}: expected\n{expected}\ngot\n{actual}")),
            Err(_) => failures.push(format!("{name}: no .events file; got\n{actual}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} runner cases differ (rerun with BLESS=1 to accept the new text):\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

/// The daemon's host keeps 128 instance slots in a pool (`engine/host/src/pool.rs`); a step that
/// finds them all busy runs outside the pool, with the same limits, rather than waiting or
/// failing.
#[test]
fn more_parallel_steps_than_the_instance_pool_has_slots_all_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("name: wide\nsteps:\n");
    for i in 0..150 {
        yaml.push_str(&format!(
            "  - id: s{i}\n    uses: echo\n    with: {{ message: hi, sleep_ms: 500 }}\n"
        ));
    }
    // The last step starts when every slot is taken, so it runs outside the pool, where its
    // memory limit holds as well.
    yaml.push_str(
        "  - id: bloat\n    uses: misbehave\n    with: { mode: alloc }\n    memory: 64MiB\n",
    );
    let file = dir.path().join("wide.yaml");
    std::fs::write(&file, yaml).unwrap();
    let workflow = shiphat_workflow::load(&file).unwrap();
    let (host, runtime) = daemon_host();
    let report = runtime.block_on(async move {
        let runner = Runner::new(
            host,
            PluginPath::new(vec![plugins::plugins_dir().to_owned()]),
            Secrets::none(),
        );
        let prepared = runner.prepare(workflow).await.unwrap();
        let options = RunOptions {
            run_id: "wide".into(),
            inputs: Map::new(),
            dry_run: false,
        };
        let run = runner.run(&prepared, options, Arc::new(|_| {}), Stop::new());
        tokio::time::timeout(RUN_DEADLINE, run)
            .await
            .expect("the run ends")
    });
    let status = |id: &str| {
        let step = report.steps.iter().find(|s| s.id == id).unwrap();
        (step.status, step.error.clone())
    };
    for i in 0..150 {
        assert_eq!(status(&format!("s{i}")), (StepStatus::Succeeded, None));
    }
    let (bloat, error) = status("bloat");
    assert_eq!(bloat, StepStatus::Failed);
    let error = error.unwrap();
    assert_eq!(
        error.kind,
        shiphat_runner::ErrorKind::Memory,
        "{}",
        error.message
    );
    // They ran side by side, not one after another (75 s).
    assert!(
        report.duration < Duration::from_secs(20),
        "took {:?}",
        report.duration
    );
}

#[test]
fn two_workflows_loading_one_plugin_at_once_compile_it_once_and_each_hears_of_it() {
    // The daemon loads its workflow files side by side: two of them with the Python example
    // compiled it twice at once, 24 s each on the same cores. And each workflow's state must
    // say what it waits for, the one waiting for the other's compile too.
    let host = Host::new(HostConfig::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runner = Runner::new(
        host,
        PluginPath::new(vec![plugins::plugins_dir().to_owned()]),
        Secrets::none(),
    );
    let workflow = |name: &str| {
        let yaml = format!(
            "name: {name}\nsteps:\n  - id: s\n    uses: deployer\n    with: {{ strategy: symlink, source: build, target: site, release: \"1\" }}\n    allow: {{ read: [build], write: [site] }}\n"
        );
        shiphat_workflow::parse(&yaml, Path::new("w.yaml")).unwrap()
    };
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook = |name: &'static str| {
        let heard = heard.clone();
        Some(shiphat_runner::CompileHook(Arc::new(
            move |path: &Path, size: usize| {
                heard.lock().unwrap().push((name, path.to_owned(), size));
            },
        )))
    };
    let (a, b) = runtime.block_on(async {
        tokio::join!(
            runner.prepare_with(workflow("a"), hook("a")),
            runner.prepare_with(workflow("b"), hook("b")),
        )
    });
    let (a, b) = (a.unwrap(), b.unwrap());
    let plugin = |p: &shiphat_runner::Prepared| p.plugins().next().unwrap().1 as *const _;
    assert!(std::ptr::eq(plugin(&a), plugin(&b)), "one compile, shared");
    let mut heard = heard.lock().unwrap().clone();
    heard.sort();
    let file = plugins::plugin("deployer");
    let size = std::fs::metadata(&file).unwrap().len() as usize;
    assert_eq!(heard, [("a", file.clone(), size), ("b", file, size)]);
}

/// `Runner::replay_step` (what `shiphat verify backtest` is built on) runs the one step it is
/// given, with the inputs and earlier outputs of a past run and its extra keys, and nothing
/// else: no other step, no `on_failure` when it fails, no step events.
#[test]
fn a_replayed_step_runs_alone_with_what_its_past_run_saw() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replay.yaml");
    std::fs::write(
        &file,
        r#"name: replay
inputs:
  who: { type: string }
steps:
  - id: build
    uses: echo
    with: { message: building, outputs: { artifact: web.tar } }
  - id: check
    uses: echo
    needs: build
    with: { message: "checking ${{ steps.build.outputs.artifact }} for ${{ inputs.who }}" }
  - id: ask
    needs: check
    approval: { message: ship it? }
on_failure:
  - id: undo
    uses: echo
    with: { message: undoing }
"#,
    )
    .unwrap();
    let workflow = shiphat_workflow::load(&file).unwrap();
    let (host, runtime) = daemon_host();
    runtime.block_on(async move {
        let runner = Runner::new(
            host,
            PluginPath::new(vec![plugins::plugins_dir().to_owned()]),
            Secrets::none(),
        );
        let prepared = runner.prepare(workflow).await.unwrap();
        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let sink = {
            let events = events.clone();
            Arc::new(move |e: Event| events.lock().unwrap().push(e))
        };
        let replay = |config: Value| shiphat_runner::Replay {
            step: "check".into(),
            inputs: serde_json::from_str(r#"{"who": "ann"}"#).unwrap(),
            prior: vec![PriorStep {
                id: "build".into(),
                status: StepStatus::Succeeded,
                outputs: serde_json::from_str(r#"{"artifact": "v2.tar"}"#).unwrap(),
                continued: false,
            }],
            config: config.as_object().unwrap().clone(),
        };

        let config = serde_json::json!({"outputs": {"replayed": true}});
        let report = runner
            .replay_step(&prepared, replay(config), sink.clone())
            .await
            .unwrap();
        assert_eq!(report.status, StepStatus::Succeeded, "{report:?}");
        assert_eq!(report.summary, "echo: checking v2.tar for ann");
        assert_eq!(
            Value::Object(report.outputs),
            serde_json::json!({"replayed": true})
        );

        // A failure runs no `on_failure`.
        let config = serde_json::json!({"fail": "red"});
        let report = runner
            .replay_step(&prepared, replay(config), sink.clone())
            .await
            .unwrap();
        assert_eq!(report.status, StepStatus::Failed, "{report:?}");
        assert_eq!(report.error.unwrap().message, "red");
        {
            let events = events.lock().unwrap();
            let steps: Vec<&str> = events.iter().filter_map(step_of).collect();
            assert!(
                steps.iter().all(|s| *s == "check"),
                "only the replayed step is heard of: {steps:?}"
            );
            assert!(
                !events.iter().any(|e| matches!(
                    e,
                    Event::StepStarted { .. }
                        | Event::StepFinished { .. }
                        | Event::RunFinished { .. }
                )),
                "a replay is no run: {events:?}"
            );
        }

        let mut other = replay(serde_json::json!({}));
        other.step = "nope".into();
        let e = runner
            .replay_step(&prepared, other.clone(), sink.clone())
            .await
            .unwrap_err();
        assert_eq!(
            e,
            "the workflow has no step `nope`; its steps are `build`, `check`, `ask`, `undo`"
        );
        other.step = "ask".into();
        let e = runner
            .replay_step(&prepared, other, sink)
            .await
            .unwrap_err();
        assert!(e.contains("is an approval"), "{e}");
    });
}
