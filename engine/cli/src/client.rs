//! The CLI as a client of `shiphat serve`: `runs`, `lock`, `unlock` and `run --server`. It
//! prints what a local run prints: the same live view, or the same JSON Lines.

use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value, json};
use shiphat_protocol::{Event, RunStatus};

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
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
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

    /// Sends a request and returns its JSON answer, or an error carrying the daemon's message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = self.auth();
        let response = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), &auth).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url), &auth).call(),
            ("POST", Some(body)) => with_auth(self.agent.post(&url), &auth).send_json(&body),
            ("POST", None) => with_auth(self.agent.post(&url), &auth).send_empty(),
            ("PUT", body) => {
                with_auth(self.agent.put(&url), &auth).send_json(body.unwrap_or(json!({})))
            }
            _ => unreachable!("no other method is used"),
        };
        let mut response = response
            .map_err(|e| anyhow::anyhow!("cannot reach the daemon at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value["error"].as_str().map(str::to_owned).unwrap_or(text);
        let failure = ApiFailure { status, message };
        if (400..500).contains(&status) {
            Err(Invalid(failure.to_string()).into())
        } else {
            Err(failure.into())
        }
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
            let run = self.call("GET", &format!("/api/v1/runs/{id}"), None)?;
            let status = run["status"]
                .as_str()
                .and_then(RunStatus::parse)
                .unwrap_or(RunStatus::Failed);
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
    let mut given = Map::new();
    for pair in inputs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Invalid(format!("--input `{pair}` must be NAME=VALUE")))?;
        given.insert(k.trim().to_owned(), Value::String(v.to_owned()));
    }
    let accepted = client.call(
        "POST",
        "/api/v1/runs",
        Some(json!({ "workflow": name, "inputs": given, "dry_run": dry_run })),
    )?;
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    let sink = sink_for(&client, &name, json)?;
    let status = client.follow(&id, &sink)?;
    drop(sink);
    Ok(if status == RunStatus::Succeeded {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// The same sinks as a local run. The live view only needs the workflow's step names (for
/// their column width), so it gets a stand-in workflow with the daemon's step names.
fn sink_for(client: &Client, name: &str, json: bool) -> anyhow::Result<Sink> {
    if json {
        return Ok(output::json_sink());
    }
    let workflows = client.call("GET", "/api/v1/workflows", None)?;
    let longest = workflows["workflows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["name"] == name)
        .flat_map(|w| w["steps"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
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

/// What `shiphat runs` does.
#[derive(clap::Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first.
    List {
        #[arg(long)]
        workflow: Option<String>,
        /// queued, running, succeeded, failed, cancelled or interrupted.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
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
}

pub fn runs(args: &ServerArgs, command: RunsCommand) -> anyhow::Result<u8> {
    let client = Client::new(args);
    match command {
        RunsCommand::List {
            workflow,
            status,
            limit,
            json,
        } => {
            let mut query = format!("?limit={limit}");
            if let Some(w) = workflow {
                query.push_str(&format!("&workflow={}", encode(&w)));
            }
            if let Some(s) = status {
                query.push_str(&format!("&status={}", encode(&s)));
            }
            let answer = client.call("GET", &format!("/api/v1/runs{query}"), None)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&answer)?);
            } else if answer["runs"].as_array().is_none_or(|runs| runs.is_empty()) {
                output::note("no runs");
            } else {
                for run in answer["runs"].as_array().into_iter().flatten() {
                    outln!(
                        "{}  {:<11}  {:<24}  {}",
                        run["id"].as_str().unwrap_or(""),
                        run["status"].as_str().unwrap_or(""),
                        run["workflow"].as_str().unwrap_or(""),
                        run["created_at"].as_str().unwrap_or("")
                    );
                }
            }
        }
        RunsCommand::Show { id, json } => {
            let run = client.call("GET", &format!("/api/v1/runs/{}", encode(&id)), None)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                outln!(
                    "{} {} {}{}",
                    run["id"].as_str().unwrap_or(""),
                    run["workflow"].as_str().unwrap_or(""),
                    run["status"].as_str().unwrap_or(""),
                    run["detail"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                );
                for step in run["steps"].as_array().into_iter().flatten() {
                    outln!(
                        "  {:<24} {:<11} {:>10}  {}",
                        step["id"].as_str().unwrap_or(""),
                        step["status"].as_str().unwrap_or(""),
                        step["duration_ms"]
                            .as_f64()
                            .map(|ms| format!("{ms:.1}ms"))
                            .unwrap_or_default(),
                        step["summary"].as_str().unwrap_or("")
                    );
                }
            }
        }
        RunsCommand::Logs { id, json } => {
            let run = client.call("GET", &format!("/api/v1/runs/{}", encode(&id)), None)?;
            let name = run["workflow"].as_str().unwrap_or("").to_owned();
            let sink = sink_for(&client, &name, json)?;
            let status = client.follow(&id, &sink)?;
            drop(sink);
            return Ok(if status == RunStatus::Succeeded {
                exit::OK
            } else {
                exit::FAILED
            });
        }
        RunsCommand::Cancel { id } => {
            client.call(
                "POST",
                &format!("/api/v1/runs/{}/cancel", encode(&id)),
                None,
            )?;
            output::note(&format!("cancelling {id}"));
        }
        RunsCommand::Resume { id, force } => {
            client.call(
                "POST",
                &format!("/api/v1/runs/{}/resume", encode(&id)),
                force.then(|| serde_json::json!({ "force": true })),
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
    let mut body = json!({ "reason": reason });
    if let Some(e) = expires_in {
        body["expires_in"] = json!(e);
    }
    let lock = client.call("PUT", &format!("/api/v1/locks/{}", encode(key)), Some(body))?;
    output::note(&format!(
        "locked `{}` ({}){}",
        key,
        lock["reason"].as_str().unwrap_or(""),
        lock["expires_at"]
            .as_str()
            .map(|e| format!(" until {e}"))
            .unwrap_or_default()
    ));
    // A typo in the key locks nothing that matters; say so while the lock can still be fixed.
    if let Ok(answer) = client.call("GET", "/api/v1/workflows", None) {
        let workflows = answer["workflows"].as_array().cloned().unwrap_or_default();
        let keys: Vec<(String, String)> = workflows
            .iter()
            .map(|w| {
                let name = w["name"].as_str().unwrap_or("").to_owned();
                let key = w["concurrency"]["key"].as_str().unwrap_or(&name).to_owned();
                (name, key)
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
    let answer = client.call("GET", "/api/v1/locks", None)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(exit::OK);
    }
    let locks = answer["locks"].as_array().cloned().unwrap_or_default();
    if locks.is_empty() {
        output::note("no locks");
    }
    for lock in &locks {
        outln!(
            "{:<24}  {:<12}  {}{}",
            lock["key"].as_str().unwrap_or(""),
            lock["owner"].as_str().unwrap_or(""),
            lock["reason"].as_str().unwrap_or(""),
            lock["expires_at"]
                .as_str()
                .map(|e| format!(" (until {e})"))
                .unwrap_or_default()
        );
    }
    Ok(exit::OK)
}

pub fn unlock(args: &ServerArgs, key: &str) -> anyhow::Result<u8> {
    let client = Client::new(args);
    client.call("DELETE", &format!("/api/v1/locks/{}", encode(key)), None)?;
    output::note(&format!("unlocked `{key}`"));
    Ok(exit::OK)
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
