//! `source: commit-status`: judges a commit by its combined status and its check runs, as
//! GitHub's REST API reports them.
//!
//! Red beats waiting: one failed context fails the step at once, even while others still run,
//! because waiting cannot turn it green. Otherwise anything queued, running or not reported
//! yet is `transient`, which the step's `retries:` wait out.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use shiphat_plugin_sdk::http::{self, Response};
use shiphat_plugin_sdk::{self as sdk, Output, StepError, StepOutput};

use crate::list;

/// How long one API request may take. GitHub answers these in well under a second; a slower
/// answer is an outage, which the step's retries handle better than a long wait.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The most statuses and check runs asked for per request: GitHub's largest page. A commit
/// with more checks than this is rare enough that paging is left for when someone needs it.
const PER_PAGE: u32 = 100;

const DEFAULT_API: &str = "https://api.github.com";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    api: Option<String>,
    repo: String,
    #[serde(rename = "ref")]
    reference: String,
    token_secret: Option<String>,
    required_contexts: Option<Vec<String>>,
}

/// `GET .../commits/{ref}/status`, the parts used.
#[derive(Deserialize)]
struct CombinedStatus {
    sha: Option<String>,
    #[serde(default)]
    statuses: Vec<Status>,
}

#[derive(Deserialize)]
struct Status {
    context: String,
    state: String,
}

/// `GET .../commits/{ref}/check-runs`, the parts used.
#[derive(Deserialize)]
struct CheckRuns {
    #[serde(default)]
    check_runs: Vec<CheckRun>,
}

#[derive(Deserialize)]
struct CheckRun {
    name: String,
    status: String,
    conclusion: Option<String>,
}

/// Where one context stands.
#[derive(Clone, Copy, PartialEq)]
enum Verdict {
    Green,
    Red,
    Waiting,
}

/// One status context or check run, judged.
struct Context {
    name: String,
    /// The API's word for it: `success`, `failure`, `queued`, `timed_out`, ...
    state: String,
    verdict: Verdict,
}

pub fn run(config: &Config) -> Result<StepOutput, StepError> {
    let token = match &config.token_secret {
        Some(name) => Some(sdk::secret(name).ok_or_else(|| {
            sdk::invalid_config(format!(
                "`token_secret`: secret `{name}` has no value; grant it in the step's `allow.secrets` and set it in the engine's environment"
            ))
        })?),
        None => None,
    };
    let api = config.api.as_deref().unwrap_or(DEFAULT_API);
    let base = format!(
        "{}/repos/{}/commits/{}",
        api.trim_end_matches('/'),
        config.repo,
        encode(&config.reference)
    );
    let url = |what: &str| format!("{base}/{what}?per_page={PER_PAGE}");
    let combined: CombinedStatus = fetch(&url("status"), &token, config)?;
    let checks: CheckRuns = fetch(&url("check-runs"), &token, config)?;

    let sha = combined
        .sha
        .clone()
        .unwrap_or_else(|| config.reference.clone());
    let short: String = if is_sha(&sha) {
        sha.chars().take(7).collect()
    } else {
        sha.clone()
    };

    let mut seen: Vec<Context> = combined
        .statuses
        .into_iter()
        .map(|s| Context {
            verdict: match s.state.as_str() {
                "success" => Verdict::Green,
                "pending" => Verdict::Waiting,
                _ => Verdict::Red,
            },
            name: s.context,
            state: s.state,
        })
        .collect();
    seen.extend(checks.check_runs.into_iter().map(check_run));

    let (contexts, missing): (Vec<Context>, Vec<String>) = match &config.required_contexts {
        Some(required) => {
            let missing = required
                .iter()
                .filter(|name| !seen.iter().any(|c| &c.name == *name))
                .cloned()
                .collect();
            seen.retain(|c| required.contains(&c.name));
            (seen, missing)
        }
        None => (seen, Vec::new()),
    };

    let named =
        |verdict| -> Vec<&Context> { contexts.iter().filter(|c| c.verdict == verdict).collect() };
    let red = named(Verdict::Red);
    let waiting = named(Verdict::Waiting);
    let names = |cs: &[&Context]| -> Vec<String> { cs.iter().map(|c| c.name.clone()).collect() };
    let state = if !red.is_empty() {
        "failure"
    } else if !waiting.is_empty() || !missing.is_empty() || contexts.is_empty() {
        "pending"
    } else {
        "success"
    };
    let outputs = json!({
        "state": state,
        "sha": sha,
        "contexts": contexts.iter().map(|c| json!({ "name": c.name, "state": c.state })).collect::<Vec<_>>(),
        "failing": names(&red),
        "pending": names(&waiting),
        "missing": missing,
    });

    if !red.is_empty() {
        let what: Vec<String> = red
            .iter()
            .map(|c| match c.state.as_str() {
                "failure" => format!("{} failed", c.name),
                other => format!("{} {}", c.name, other.replace('_', " ")),
            })
            .collect();
        return Err(sdk::failed_with(
            format!("QA red: {}", what.join(", ")),
            outputs,
        ));
    }
    if !waiting.is_empty() || !missing.is_empty() {
        let mut what: Vec<String> = waiting
            .iter()
            .map(|c| format!("{} ({})", c.name, c.state.replace('_', " ")))
            .collect();
        what.extend(missing.iter().map(|m| format!("{m} (not reported yet)")));
        return Err(sdk::transient(format!(
            "QA pending on {short}: waiting for {}",
            list(&what, 10)
        )));
    }
    if contexts.is_empty() {
        return Err(sdk::transient(format!(
            "QA pending on {short}: no status or check run reported yet"
        )));
    }

    let summary = match contexts.len() {
        1 => format!("QA green: 1 check passed on {short}"),
        n => format!("QA green: {n} checks passed on {short}"),
    };
    let serde_json::Value::Object(outputs) = outputs else {
        unreachable!("built as an object above")
    };
    let mut output = Output::new(summary);
    for (key, value) in outputs {
        output = output.set(key, value);
    }
    Ok(output.into())
}

fn check_run(run: CheckRun) -> Context {
    let (state, verdict) = if run.status != "completed" {
        // `queued`, `in_progress`, and the newer `waiting`, `requested`, `pending`.
        (run.status, Verdict::Waiting)
    } else {
        let conclusion = run.conclusion.unwrap_or_else(|| "unknown".to_string());
        let verdict = match conclusion.as_str() {
            "success" | "neutral" | "skipped" => Verdict::Green,
            // failure, cancelled, timed_out, action_required, stale, startup_failure, ...
            _ => Verdict::Red,
        };
        (conclusion, verdict)
    };
    Context {
        name: run.name,
        state,
        verdict,
    }
}

/// GETs `url` and parses its JSON, sorting what can go wrong into transient and failed.
fn fetch<T: serde::de::DeserializeOwned>(
    url: &str,
    token: &Option<String>,
    config: &Config,
) -> Result<T, StepError> {
    let bearer = token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Accept", "application/vnd.github+json"),
        ("User-Agent", "shiphat"),
        ("X-GitHub-Api-Version", "2022-11-28"),
    ];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    let response = http::request("GET", url, &headers, None, Some(HTTP_TIMEOUT)).map_err(|e| {
        let message = format!("cannot reach `{url}`: {e}");
        if e.is_transient() {
            sdk::transient(message)
        } else if e
            .code()
            .is_some_and(|c| matches!(c, http::ErrorCode::HttpRequestDenied))
        {
            sdk::invalid_config(format!(
                "{message}; grant the API's host in the step's `allow.http`"
            ))
        } else {
            sdk::failed(message)
        }
    })?;
    if !response.is_success() {
        return Err(status_error(url, &response, config));
    }
    serde_json::from_slice(&response.body).map_err(|e| {
        sdk::failed(format!(
            "`{url}` answered {} with a body that is not the expected JSON: {e}",
            response.status
        ))
    })
}

fn status_error(url: &str, response: &Response, config: &Config) -> StepError {
    let status = response.status;
    let rate_limited =
        status == 429 || (status == 403 && response.header("x-ratelimit-remaining") == Some("0"));
    let detail = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    let message = format!("`{url}` answered {status}{detail}");
    match status {
        _ if rate_limited => sdk::transient(format!("{message}: rate limited")),
        500..=599 => sdk::transient(message),
        401 => sdk::failed(format!(
            "{message}: the token was refused; check the secret named in `token_secret`{}",
            match &config.token_secret {
                Some(name) => format!(" (`{name}`)"),
                None => " (none is set)".to_string(),
            }
        )),
        403 => sdk::failed(format!(
            "{message}: the token may not read `{}`; it needs read access to commit statuses and checks",
            config.repo
        )),
        404 => sdk::failed(format!(
            "{message}: check `repo` `{}` and `ref` `{}`; a private repository also answers 404 to a missing or weak token",
            config.repo, config.reference
        )),
        _ => sdk::failed(message),
    }
}

fn is_sha(text: &str) -> bool {
    text.len() >= 7 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Percent-encodes a ref for the URL path, keeping `/` so that `feature/x` stays readable.
fn encode(reference: &str) -> String {
    let mut out = String::with_capacity(reference.len());
    for b in reference.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
