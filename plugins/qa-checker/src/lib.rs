//! A deploy gate on QA: the step succeeds when the tests are green, fails when they are red.
//!
//! Two sources of truth, picked by `source:`. `junit` reads JUnit XML reports from a granted
//! directory, in the dialects that cargo-nextest, pytest, Maven Surefire, jest-junit and
//! googletest write, and counts from the `<testcase>` elements rather than trusting the tools' attributes.
//! `commit-status` asks a GitHub-shaped REST API for a commit's combined status and check runs;
//! anything still running is `transient`, so the step's `retries:` wait for it.
//!
//! It deliberately changes nothing anywhere, so a dry run runs it as usual, and it keeps no
//! state between attempts: each attempt reads the reports or asks the API afresh.

mod commit_status;
mod junit;

use serde::Deserialize;
use serde_json::json;
use shiphat_plugin_sdk::{Guest, PluginInfo, StepError, StepInput, StepOutput};

struct QaChecker;

/// The `with:` block: one shape per source, told apart by `source:`.
#[derive(Deserialize)]
#[serde(tag = "source", rename_all = "kebab-case")]
enum Config {
    Junit(junit::Config),
    CommitStatus(commit_status::Config),
}

impl Guest for QaChecker {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Gates a deploy on QA: JUnit XML test reports, or a commit's statuses and check runs."
                .into(),
            config_schema: schema().to_string(),
        }
    }

    fn run(input: StepInput) -> Result<StepOutput, StepError> {
        match shiphat_plugin_sdk::config::<Config>(&input)? {
            Config::Junit(config) => junit::run(&config),
            Config::CommitStatus(config) => commit_status::run(&config),
        }
    }
}

/// The JSON Schema of `with:`. Every key is listed at the top (so an unknown one is refused
/// with its name), and each source forbids the other's keys and requires its own.
fn schema() -> serde_json::Value {
    let junit_keys = ["reports", "max_failures", "min_pass_rate", "max_age"];
    let status_keys = ["api", "repo", "ref", "token_secret", "required_contexts"];
    let forbid = |keys: &[&str]| -> serde_json::Value {
        keys.iter().map(|k| (k.to_string(), json!(false))).collect()
    };
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "source": {
                "enum": ["junit", "commit-status"],
                "description": "Where QA results come from: `junit` reads JUnit XML reports; `commit-status` asks GitHub (or a GitHub-shaped API) for a commit's statuses and check runs."
            },
            "reports": {
                "type": "array",
                "items": { "type": "string", "minLength": 1, "x-shiphat-grant": "read" },
                "minItems": 1,
                "description": "junit: paths or glob patterns of the reports, e.g. `reports/**/*.xml`, inside a directory granted in `allow.read`. Matching no file at all fails the step."
            },
            "max_failures": {
                "type": "integer",
                "minimum": 0,
                "description": "junit: how many failed and errored tests, together, still count as green. Defaults to 0."
            },
            "min_pass_rate": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "description": "junit: the lowest acceptable passed / (tests - skipped), from 0 to 1, e.g. 0.98. Unset: not checked."
            },
            "max_age": {
                "type": "string",
                "pattern": "^\\s*([0-9]+\\s*[a-zA-Z]+\\s*)+$",
                "description": "junit: fail when the newest report was last modified longer ago than this, e.g. `30m`, `1h`, `2h 30m`. Catches a stale report left from an earlier build. Unset: not checked."
            },
            "api": {
                "type": "string",
                "pattern": "^https?://",
                "x-shiphat-grant": "http",
                "description": "commit-status: the API's base URL. Defaults to `https://api.github.com`; GitHub Enterprise uses `https://HOST/api/v3`. Its host must be granted in `allow.http`."
            },
            "repo": {
                "type": "string",
                "pattern": "^[^/\\s]+/[^/\\s]+$",
                "description": "commit-status: the repository as `owner/name`."
            },
            "ref": {
                "type": "string",
                "minLength": 1,
                "description": "commit-status: the commit to check: a SHA, a branch or a tag."
            },
            "token_secret": {
                "type": "string",
                "minLength": 1,
                "description": "commit-status: the name of the secret holding an API token, sent as `Authorization: Bearer ...`; grant it in `allow.secrets`. Unset: no token (public repositories only, with a low rate limit)."
            },
            "required_contexts": {
                "type": "array",
                "items": { "type": "string", "minLength": 1 },
                "description": "commit-status: the status contexts and check-run names that must be green; one not reported yet is waited for (`transient`). Defaults to every status and check run the commit has."
            }
        },
        "required": ["source"],
        "additionalProperties": false,
        "allOf": [
            {
                "if": { "properties": { "source": { "const": "junit" } } },
                "then": { "required": ["reports"], "properties": forbid(&status_keys) }
            },
            {
                "if": { "properties": { "source": { "const": "commit-status" } } },
                "then": { "required": ["repo", "ref"], "properties": forbid(&junit_keys) }
            }
        ]
    })
}

/// `items` as `a, b, c`, or `a, b, c and 4 more` past `shown` items.
fn list(items: &[String], shown: usize) -> String {
    let mut text = items
        .iter()
        .take(shown)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > shown {
        text.push_str(&format!(" and {} more", items.len() - shown));
    }
    text
}

shiphat_plugin_sdk::export!(QaChecker);
