//! The CLI as a client of `shiphat serve`: `runs`, `lock`, `unlock` and `run --server`. It
//! prints what a local run prints: the same live view, or the same JSON Lines.

use std::io::BufRead;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use shiphat_protocol::{
    Accepted, ApprovalView, Choice, CreateRun, Decide, ErrorBody, Event, LockList, LockView,
    PutLock, ResumeRun, RunDetail, RunList, RunStatus, WorkflowList,
};

use crate::{Invalid, Sink, exit, output};

/// The daemon the client commands talk to.
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// The daemon's URL.
    // Global, so `shiphat runs list --server URL` works as well as `runs --server URL list`.
    #[arg(
        long,
        env = "SHIPHAT_SERVER",
        default_value = "http://127.0.0.1:7300",
        global = true
    )]
    server: String,
    /// The bearer token (see `shiphat token create`).
    #[arg(long, env = "SHIPHAT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

/// How many times an event stream is reopened (from the last event seen) after the
/// connection drops, before giving up.
const STREAM_RETRIES: u32 = 5;

pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// An answer that was not a success: exit 2 for what the user can fix (4xx), 3 otherwise.
#[derive(Debug)]
struct ApiFailure {
    status: u16,
    message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the daemon answered {}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    pub fn new(args: &ServerArgs) -> Client {
        Client::at(&args.server, args.token.clone())
    }

    pub fn at(server: &str, token: Option<String>) -> Client {
        // The daemon records a run started this way as started from the CLI.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(format!(
                "{}{}",
                shiphat_protocol::CLI_AGENT,
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .into();
        Client {
            base: server.trim_end_matches('/').to_owned(),
            token,
            agent,
        }
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// Sends a request and returns its answer's text, or an error carrying the daemon's
    /// message.
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let auth = self.auth();
        let response = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), &auth).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url), &auth).call(),
            ("POST", Some(body)) => with_auth(self.agent.post(&url), &auth).send_json(&body),
            ("POST", None) => with_auth(self.agent.post(&url), &auth).send_empty(),
            ("PUT", body) => with_auth(self.agent.put(&url), &auth)
                .send_json(body.unwrap_or_else(|| Value::Object(Map::new()))),
            _ => unreachable!("no other method is used"),
        };
        let mut response = response
            .map_err(|e| anyhow::anyhow!("cannot reach the daemon at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        let failure = ApiFailure { status, message };
        if (400..500).contains(&status) {
            Err(Invalid(failure.to_string()).into())
        } else {
            Err(failure.into())
        }
    }

    /// Sends a request and reads its answer as `T`, one of the wire contract's answers.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let text = self.send(method, path, body)?;
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "the daemon's answer to {method} {path} is not what this shiphat reads ({e}); is it another version?"
            )
        })
    }

    /// Follows a run's event stream, handing each event to `sink`, until `run_finished` (or
    /// the run ends otherwise). Reconnects with `Last-Event-ID` when the connection drops.
    /// Returns the run's final status.
    fn follow(&self, id: &str, sink: &Sink) -> anyhow::Result<RunStatus> {
        let url = format!("{}/api/v1/runs/{id}/events", self.base);
        let mut last: Option<String> = None;
        let mut retries = 0;
        loop {
            let mut request = with_auth(self.agent.get(&url), &self.auth());
            if let Some(last) = &last {
                request = request.header("Last-Event-ID", last.as_str());
            }
            let mut response = request
                .call()
                .map_err(|e| anyhow::anyhow!("cannot reach the daemon at {}: {e}", self.base))?;
            if response.status().as_u16() != 200 {
                let text = response.body_mut().read_to_string().unwrap_or_default();
                return Err(Invalid(format!("the event stream of `{id}`: {text}")).into());
            }
            let reader = std::io::BufReader::new(response.body_mut().as_reader());
            let mut data = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("id:") {
                    last = Some(id.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                } else if line.is_empty() && !data.is_empty() {
                    // An event this build cannot read (a newer daemon's) is passed over, as
                    // docs/events.md allows.
                    let event = serde_json::from_str::<Event>(&data);
                    data.clear();
                    let Ok(event) = event else { continue };
                    let finished = match &event {
                        Event::RunFinished { status, .. } => Some(RunStatus::from(*status)),
                        _ => None,
                    };
                    sink(event);
                    if let Some(status) = finished {
                        return Ok(status);
                    }
                }
            }
            // The stream ended without `run_finished`: the run ended another way (cancelled
            // while queued or interrupted), or the connection dropped.
            let run: RunDetail = self.call("GET", &format!("/api/v1/runs/{id}"), None)?;
            let status = run.run.status;
            retries += 1;
            if status.is_terminal() || retries > STREAM_RETRIES {
                return Ok(status);
            }
        }
    }
}

fn with_auth<B>(
    request: ureq::RequestBuilder<B>,
    auth: &Option<String>,
) -> ureq::RequestBuilder<B> {
    match auth {
        Some(auth) => request.header("Authorization", auth.as_str()),
        None => request,
    }
}

/// The runs of `workflow` created at or after `since_ms` that ended and were no dry run,
/// newest first, each with its steps; at most `max` of them, and whether there were more.
pub fn past_runs(
    args: &ServerArgs,
    workflow: &str,
    since_ms: i64,
    max: usize,
) -> anyhow::Result<(Vec<RunDetail>, bool)> {
    let client = Client::new(args);
    let mut runs = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut query = format!("?limit=500&workflow={}", encode(workflow));
        if let Some(before) = &before {
            query.push_str(&format!("&before={}", encode(before)));
        }
        let page: RunList = client.call("GET", &format!("/api/v1/runs{query}"), None)?;
        for run in &page.runs {
            if run.created_ms < since_ms {
                return Ok((runs, false));
            }
            if run.dry_run || !run.status.is_terminal() {
                continue;
            }
            if runs.len() == max {
                return Ok((runs, true));
            }
            runs.push(client.call("GET", &format!("/api/v1/runs/{}", encode(&run.id)), None)?);
        }
        match page.next {
            Some(next) => before = Some(next),
            None => return Ok((runs, false)),
        }
    }
}

/// `shiphat run --server URL FILE_OR_WORKFLOW`: starts the run on the daemon and prints its
/// events as a local run would.
pub fn run(
    server: &str,
    token: Option<String>,
    target: &Path,
    inputs: &[String],
    json: bool,
    dry_run: bool,
) -> anyhow::Result<u8> {
    let client = Client::at(server, token);
    // A file names its workflow; anything else is the name of a workflow the daemon serves.
    let name = if target.is_file() {
        shiphat_workflow::load(target)?.name
    } else {
        target.display().to_string()
    };
    let request = CreateRun {
        workflow: name.clone(),
        inputs: input_map(inputs)?,
        dry_run,
        force: false,
    };
    let accepted: Accepted =
        client.call("POST", "/api/v1/runs", Some(serde_json::to_value(request)?))?;
    let id = accepted.id;
    if accepted.status == RunStatus::Queued {
        say_why_it_waits(&client, &id, &name);
    }
    let sink = sink_for(&client, &name, json)?;
    let status = client.follow(&id, &sink)?;
    drop(sink);
    Ok(if status == RunStatus::Succeeded {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// Says on stderr why a run did not start at once (a lock, a deploy window, its plugins still
/// compiling on the daemon), so that a remote deploy is not silent while it waits. Said once:
/// its events follow when it starts.
fn say_why_it_waits(client: &Client, id: &str, name: &str) {
    let Ok(run) = client.call::<RunDetail>("GET", &format!("/api/v1/runs/{id}"), None) else {
        return;
    };
    let Some(detail) = run
        .run
        .detail
        .filter(|_| run.run.status == RunStatus::Queued)
    else {
        return;
    };
    let compiling = client
        .call::<WorkflowList>("GET", "/api/v1/workflows", None)
        .ok()
        .and_then(|list| list.workflows.into_iter().find(|w| w.name == name))
        .map(|w| {
            let plugins: Vec<String> = w
                .compiling
                .iter()
                .map(|p| format!("{} ({})", p.file, shiphat_protocol::fmt_size(p.bytes)))
                .collect();
            plugins.join(", ")
        })
        .filter(|plugins| !plugins.is_empty());
    output::note(&match compiling {
        Some(plugins) => format!(
            "run {id} is queued: {detail}; the daemon is compiling {plugins}, first run only"
        ),
        None => format!("run {id} is queued: {detail}"),
    });
}

/// The same sinks as a local run. The live view only needs the workflow's step names (for
/// their column width), so it gets a stand-in workflow with the daemon's step names.
fn sink_for(client: &Client, name: &str, json: bool) -> anyhow::Result<Sink> {
    if json {
        return Ok(output::json_sink());
    }
    let workflows: WorkflowList = client.call("GET", "/api/v1/workflows", None)?;
    let longest = workflows
        .workflows
        .into_iter()
        .filter(|w| w.name == name)
        .flat_map(|w| w.steps)
        .map(|s| s.name)
        .max_by_key(|n| n.chars().count())
        .unwrap_or_default();
    let yaml = format!(
        "name: {}\nsteps:\n  - id: s\n    name: {}\n    uses: noop\n",
        serde_json::to_string(name)?,
        serde_json::to_string(&longest)?
    );
    let stand_in = shiphat_workflow::parse(&yaml, Path::new("remote.yaml"))?;
    Ok(output::human_sink(&stand_in))
}

/// `--input NAME=VALUE` flags as a request's inputs (each a string; the daemon converts).
fn input_map(inputs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut given = Map::new();
    for pair in inputs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Invalid(format!("--input `{pair}` must be NAME=VALUE")))?;
        given.insert(k.trim().to_owned(), Value::String(v.to_owned()));
    }
    Ok(given)
}

/// `shiphat why deploy WORKFLOW`: whether the caller could start it now, and if not, why.
/// Exit 0 when it would be accepted, 1 when it would be refused.
pub fn why_deploy(
    args: &ServerArgs,
    workflow: &str,
    inputs: &[String],
    dry_run: bool,
) -> anyhow::Result<u8> {
    let client = Client::new(args);
    let request = CreateRun {
        workflow: workflow.to_owned(),
        inputs: input_map(inputs)?,
        dry_run,
        force: false,
    };
    let check: shiphat_protocol::DeployCheck = client.call(
        "POST",
        "/api/v1/check-deploy",
        Some(serde_json::to_value(request)?),
    )?;
    let mark = if check.allowed { "✓" } else { "✗" };
    match &check.blocker {
        Some(blocker) => outln!("{mark} {} ({blocker})", check.reason),
        None => outln!("{mark} {}", check.reason),
    }
    Ok(if check.allowed {
        crate::exit::OK
    } else {
        crate::exit::FAILED
    })
}

/// What `shiphat runs` does.
#[derive(clap::Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        #[arg(long)]
        workflow: Option<String>,
        /// queued, running, waiting, succeeded, failed, cancelled or interrupted.
        #[arg(long, value_parser = run_status)]
        status: Option<RunStatus>,
        /// Only runs waiting at an approval you may give.
        #[arg(long)]
        for_me: bool,
        /// 1 to 500.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a run and its steps.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Say why a run is where it is: who started it with what, what it waited for, each
    /// step's result with the evidence of a failure, the rollback and what is deployed now.
    Why { id: String },
    /// Print a run's events as a local run would (live while it runs).
    Logs {
        id: String,
        /// JSON Lines, as `shiphat run --json`.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run.
    Cancel { id: String },
    /// Resume an interrupted run from its step in flight.
    Resume {
        id: String,
        /// Resume it although a lock holds its key (admins only; audited).
        #[arg(long)]
        force: bool,
    },
    /// Approve the approval step a run waits at (audited).
    Approve {
        id: String,
        /// The approval step, when the run waits at several.
        #[arg(long, value_name = "ID")]
        step: Option<String>,
        /// Why, kept with the decision.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject the approval step a run waits at: the step fails and the run's `on_failure`
    /// runs (audited).
    Reject {
        id: String,
        /// The approval step, when the run waits at several.
        #[arg(long, value_name = "ID")]
        step: Option<String>,
        /// Why, kept with the decision.
        #[arg(long, default_value = "")]
        comment: String,
    },
}

pub fn runs(args: &ServerArgs, command: RunsCommand) -> anyhow::Result<u8> {
    let client = Client::new(args);
    match command {
        RunsCommand::List {
            workflow,
            status,
            for_me,
            limit,
            json,
        } => {
            let mut query = format!("?limit={limit}");
            if for_me {
                query.push_str("&for_me=true");
            }
            if let Some(w) = workflow {
                query.push_str(&format!("&workflow={}", encode(&w)));
            }
            if let Some(s) = status {
                query.push_str(&format!("&status={s}"));
            }
            let answer: RunList = client.call("GET", &format!("/api/v1/runs{query}"), None)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&answer)?);
            } else if answer.runs.is_empty() {
                output::note("no runs");
            } else {
                for run in &answer.runs {
                    outln!(
                        "{}  {:<11}  {:<24}  {}",
                        run.id,
                        run.status,
                        run.workflow,
                        run.created_at
                    );
                }
            }
        }
        RunsCommand::Why { id } => {
            let run: RunDetail =
                client.call("GET", &format!("/api/v1/runs/{}", encode(&id)), None)?;
            for line in shiphat_protocol::why(&run) {
                outln!("{line}");
            }
        }
        RunsCommand::Show { id, json } => {
            let run: RunDetail =
                client.call("GET", &format!("/api/v1/runs/{}", encode(&id)), None)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                outln!(
                    "{} {} {}{}",
                    run.run.id,
                    run.run.workflow,
                    run.run.status,
                    run.run
                        .detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                );
                for approval in run.approvals.iter().filter(|a| a.outcome.is_none()) {
                    outln!(
                        "  waits at `{}` until {} for {} ({} of {} approvals): {}",
                        approval.step,
                        approval.deadline,
                        shiphat_protocol::approvers_in_words(&approval.roles, &approval.principals),
                        approval
                            .votes
                            .iter()
                            .filter(|v| v.decision == Choice::Approve)
                            .count(),
                        approval.required,
                        approval.message
                    );
                }
                for step in &run.steps {
                    outln!(
                        "  {:<24} {:<11} {:>10}  {}",
                        step.id,
                        step.status,
                        step.duration_ms
                            .map(|ms| format!("{ms:.1}ms"))
                            .unwrap_or_default(),
                        step.summary
                    );
                }
            }
        }
        RunsCommand::Logs { id, json } => {
            let run: RunDetail =
                client.call("GET", &format!("/api/v1/runs/{}", encode(&id)), None)?;
            let sink = sink_for(&client, &run.run.workflow, json)?;
            let status = client.follow(&id, &sink)?;
            drop(sink);
            return Ok(if status == RunStatus::Succeeded {
                exit::OK
            } else {
                exit::FAILED
            });
        }
        RunsCommand::Cancel { id } => {
            client.send(
                "POST",
                &format!("/api/v1/runs/{}/cancel", encode(&id)),
                None,
            )?;
            output::note(&format!("cancelling {id}"));
        }
        RunsCommand::Approve { id, step, comment } => {
            decide(&client, &id, step, Choice::Approve, comment)?;
        }
        RunsCommand::Reject { id, step, comment } => {
            decide(&client, &id, step, Choice::Reject, comment)?;
        }
        RunsCommand::Resume { id, force } => {
            let request = force
                .then(|| serde_json::to_value(ResumeRun { force }))
                .transpose()?;
            client.send(
                "POST",
                &format!("/api/v1/runs/{}/resume", encode(&id)),
                request,
            )?;
            output::note(&format!("resumed {id}"));
        }
    }
    Ok(exit::OK)
}

pub fn lock(
    args: &ServerArgs,
    key: &str,
    reason: &str,
    expires_in: Option<&str>,
) -> anyhow::Result<u8> {
    let client = Client::new(args);
    let request = PutLock {
        reason: reason.to_owned(),
        owner: None,
        expires_in: expires_in.map(str::to_owned),
    };
    let lock: LockView = client.call(
        "PUT",
        &format!("/api/v1/locks/{}", encode(key)),
        Some(serde_json::to_value(request)?),
    )?;
    output::note(&format!(
        "locked `{}` ({}){}",
        key,
        lock.reason,
        lock.expires_at
            .map(|e| format!(" until {e}"))
            .unwrap_or_default()
    ));
    // A typo in the key locks nothing that matters; say so while the lock can still be fixed.
    if let Ok(answer) = client.call::<WorkflowList>("GET", "/api/v1/workflows", None) {
        let keys: Vec<(String, String)> = answer
            .workflows
            .into_iter()
            .map(|w| {
                let key = w
                    .concurrency
                    .map(|c| c.key)
                    .unwrap_or_else(|| w.name.clone());
                (w.name, key)
            })
            .collect();
        let used = keys
            .iter()
            .any(|(name, pattern)| name == key || key_matches(pattern, key));
        if !used {
            let known = keys
                .iter()
                .map(|(name, pattern)| format!("`{pattern}` ({name})"))
                .collect::<Vec<_>>()
                .join(", ");
            output::warn(&format!(
                "no workflow on this daemon uses the key `{key}`, so the lock holds nothing; the keys in use are {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known
                }
            ));
        }
    }
    Ok(exit::OK)
}

/// Whether a concurrency key as written (`web-${{ inputs.environment }}`) can produce `key`:
/// each `${{ }}` matches any text.
fn key_matches(pattern: &str, key: &str) -> bool {
    let mut parts = Vec::new();
    let mut rest = pattern;
    while let Some(start) = rest.find("${{") {
        parts.push(&rest[..start]);
        rest = rest[start..]
            .find("}}")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    parts.push(rest);
    if parts.len() == 1 {
        return pattern == key;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !key.starts_with(first) || !key[first.len()..].ends_with(last) {
        return false;
    }
    let mut at = first.len();
    let end = key.len() - last.len();
    for middle in &parts[1..parts.len() - 1] {
        match key[at..end].find(middle) {
            Some(found) => at += found + middle.len(),
            None => return false,
        }
    }
    true
}

pub fn locks(args: &ServerArgs, json: bool) -> anyhow::Result<u8> {
    let client = Client::new(args);
    let answer: LockList = client.call("GET", "/api/v1/locks", None)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(exit::OK);
    }
    if answer.locks.is_empty() {
        output::note("no locks");
    }
    for lock in &answer.locks {
        outln!(
            "{:<24}  {:<12}  {}{}",
            lock.key,
            lock.owner,
            lock.reason,
            lock.expires_at
                .as_deref()
                .map(|e| format!(" (until {e})"))
                .unwrap_or_default()
        );
    }
    Ok(exit::OK)
}

pub fn unlock(args: &ServerArgs, key: &str) -> anyhow::Result<u8> {
    let client = Client::new(args);
    client.send("DELETE", &format!("/api/v1/locks/{}", encode(key)), None)?;
    output::note(&format!("unlocked `{key}`"));
    Ok(exit::OK)
}

/// A `--status` value, as the API names statuses.
fn run_status(text: &str) -> Result<RunStatus, String> {
    // `waiting` is the API's alone: the store keeps such runs `running`.
    let all = RunStatus::ALL
        .into_iter()
        .chain([RunStatus::Waiting])
        .collect::<Vec<_>>();
    all.iter()
        .copied()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| {
            let all = all
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            format!("unknown status `{text}`; one of {all}")
        })
}

/// `runs approve` and `runs reject`.
fn decide(
    client: &Client,
    id: &str,
    step: Option<String>,
    decision: Choice,
    comment: String,
) -> anyhow::Result<()> {
    let request = Decide {
        step,
        decision,
        comment,
    };
    let answer: ApprovalView = client.call(
        "POST",
        &format!("/api/v1/runs/{}/approvals", encode(id)),
        Some(serde_json::to_value(request)?),
    )?;
    let approvals = answer
        .votes
        .iter()
        .filter(|v| v.decision == Choice::Approve)
        .count();
    let state = match answer.outcome {
        Some(outcome) => format!(
            "; the step is {}",
            serde_json::to_value(outcome)?.as_str().unwrap_or("decided")
        ),
        None => format!(
            "; {approvals} of {} approvals, it still waits",
            answer.required
        ),
    };
    let word = match decision {
        Choice::Approve => "approved",
        Choice::Reject => "rejected",
    };
    output::note(&format!("{word} `{}` of run {id}{state}", answer.step));
    Ok(())
}

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
