//! The `with:` block: raw serde types as the workflow writes them, checked into [`Metric`]s
//! with every default filled in, every duration parsed and every condition compiled.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};
use shiphat_plugin_sdk::{self as sdk, StepError};

use crate::condition::Condition;

/// How long one query or scrape may take when `query_timeout` is not set.
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The time between two measurements of a metric when `interval` is not set. One minute is
/// a common Prometheus scrape interval: measuring more often mostly reads the same samples.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// How many measurements count towards a metric's verdict when `count` is not set.
const DEFAULT_COUNT: u32 = 1;

/// How many errors in a row a metric tolerates when `consecutive_error_limit` is not set;
/// Argo Rollouts' default.
const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;

/// The most measurements one metric may ask for. Every measurement is kept in the step's
/// outputs, which the engine caps at 1 MiB; a thousand records of about a hundred bytes each
/// stay well inside that, errors included.
pub const MAX_COUNT: u32 = 1000;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Prometheus,
    Scrape,
    /// Argo's `web` provider; only an AnalysisTemplate names it.
    #[serde(skip)]
    Web,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    provider: Option<Provider>,
    address: Option<String>,
    token_secret: Option<String>,
    query_timeout: Option<String>,
    #[serde(default)]
    metrics: Vec<RawMetric>,
    template: Option<String>,
    args: Option<BTreeMap<String, Value>>,
    on_inconclusive: Option<OnInconclusive>,
    replay_at: Option<String>,
}

/// What an Inconclusive verdict does to the step.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnInconclusive {
    /// The step fails, as a Failed verdict does.
    #[default]
    Fail,
    /// The step succeeds with `verdict: Inconclusive` in its outputs, so that a later step (an
    /// approval) decides: what Argo Rollouts does when it pauses for a person to promote or
    /// abort.
    Succeed,
}

/// The checked `with:` block.
pub struct Config {
    pub metrics: Vec<Metric>,
    pub on_inconclusive: OnInconclusive,
    /// Measure as if the step had started at this past time (`replay_at`), without waiting.
    pub replay_at: Option<SystemTime>,
}

/// One metric as written: in `with:`, or converted from an AnalysisTemplate by
/// [`crate::template`], which also fills the keys `with:` has no way to write.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMetric {
    pub name: String,
    pub provider: Option<Provider>,
    pub address: Option<String>,
    pub token_secret: Option<String>,
    pub query: Option<String>,
    pub series: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub initial_delay: Option<String>,
    pub interval: Option<String>,
    // Signed, so that a negative number gets this plugin's message rather than serde's.
    pub count: Option<i64>,
    pub success_condition: Option<String>,
    pub failure_condition: Option<String>,
    pub failure_limit: Option<i64>,
    pub inconclusive_limit: Option<i64>,
    pub consecutive_error_limit: Option<i64>,
    /// A template's `timeout` (prometheus) or `timeoutSeconds` (web).
    #[serde(skip)]
    pub timeout_seconds: Option<i64>,
    /// A template's request headers.
    #[serde(skip)]
    pub headers: Vec<(String, String)>,
    /// A template's `web` provider settings.
    #[serde(skip)]
    pub web: Option<Web>,
}

/// Argo's `web` provider, beyond its URL.
#[derive(Default)]
pub struct Web {
    pub method: String,
    pub body: Option<String>,
    pub json_path: Option<String>,
}

/// Where a metric's value comes from.
pub enum Source {
    /// An instant query: `GET {address}/api/v1/query?query=...`.
    Prometheus { address: String, query: String },
    /// A JSON (or plain text) answer of `url`, and the value at `json_path` in it.
    Web {
        url: String,
        method: String,
        body: Option<String>,
        json_path: JsonPath,
    },
    /// One series of the text exposition format at `url`.
    Scrape {
        url: String,
        series: String,
        labels: BTreeMap<String, String>,
    },
}

/// One checked metric.
pub struct Metric {
    pub name: String,
    pub source: Source,
    /// The value of `Authorization: Bearer ...`, from `token_secret`.
    pub token: Option<String>,
    /// More request headers, from a template.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub initial_delay: Duration,
    pub interval: Duration,
    pub count: u32,
    pub success: Option<Condition>,
    pub failure: Option<Condition>,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    pub consecutive_error_limit: u32,
}

/// Parses and checks the `with:` block.
pub fn parse(text: &str) -> Result<Config, StepError> {
    let mut raw: RawConfig =
        serde_json::from_str(text).map_err(|e| sdk::invalid_config(e.to_string()))?;
    let raw_metrics = match (&raw.template, std::mem::take(&mut raw.metrics)) {
        (Some(_), _) if raw.provider.is_some() || raw.address.is_some() => {
            return Err(sdk::invalid_config(
                "`provider` and `address` are set with `template`; the template's metrics name their own",
            ));
        }
        (Some(path), metrics) if metrics.is_empty() => {
            let args = raw
                .args
                .take()
                .unwrap_or_default()
                .into_iter()
                .map(|(name, value)| Ok((name.clone(), argument(&name, value)?)))
                .collect::<Result<_, StepError>>()?;
            crate::template::load(path, &args).map_err(sdk::invalid_config)?
        }
        (Some(_), _) => {
            return Err(sdk::invalid_config(
                "both `template` and `metrics` are set; measure the template's metrics or list your own, not both",
            ));
        }
        (None, _) if raw.args.is_some() => {
            return Err(sdk::invalid_config(
                "`args` is set without `template`; arguments fill a template's `{{args.NAME}}`",
            ));
        }
        (None, metrics) if metrics.is_empty() => {
            return Err(sdk::invalid_config(
                "`metrics` is empty; list at least one metric to measure, or name an AnalysisTemplate in `template`",
            ));
        }
        (None, metrics) => metrics,
    };
    let timeout = match &raw.query_timeout {
        Some(text) => duration(text, "query_timeout")?,
        None => DEFAULT_QUERY_TIMEOUT,
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut metrics = Vec::with_capacity(raw_metrics.len());
    for m in raw_metrics {
        if !seen.insert(m.name.clone()) {
            return Err(sdk::invalid_config(format!(
                "metric name `{}` appears twice; give each metric its own name",
                m.name
            )));
        }
        metrics.push(check_metric(m, &raw, timeout)?);
    }
    let replay_at = match &raw.replay_at {
        Some(text) => Some(replay_at(text, &metrics)?),
        None => None,
    };
    Ok(Config {
        metrics,
        on_inconclusive: raw.on_inconclusive.unwrap_or_default(),
        replay_at,
    })
}

/// Checks `replay_at`: a past time, and metrics whose source keeps a history to replay.
/// Prometheus answers an instant query for any time it has samples for; a scraped page or a
/// `web` URL answers only for now, so replaying them would judge today's value as the past's.
fn replay_at(text: &str, metrics: &[Metric]) -> Result<SystemTime, StepError> {
    let at = humantime::parse_rfc3339_weak(text).map_err(|e| {
        sdk::invalid_config(format!(
            "`replay_at` `{text}` is not a time: {e}; write it as RFC 3339, e.g. `2026-11-30T10:00:00Z`"
        ))
    })?;
    if at > SystemTime::now() {
        return Err(sdk::invalid_config(format!(
            "`replay_at` `{text}` is in the future; a replay measures what Prometheus recorded, so give a past time"
        )));
    }
    if let Some(m) = metrics
        .iter()
        .find(|m| !matches!(m.source, Source::Prometheus { .. }))
    {
        let provider = match m.source {
            Source::Scrape { .. } => "scrape",
            _ => "web",
        };
        return Err(sdk::invalid_config(format!(
            "metric `{}` reads `{provider}`, which answers only for now; `replay_at` can replay `prometheus` metrics only",
            m.name
        )));
    }
    Ok(at)
}

/// The text of the template argument `name` as the step gives it.
fn argument(name: &str, value: Value) -> Result<String, StepError> {
    match value {
        Value::String(text) => Ok(text),
        Value::Number(_) | Value::Bool(_) => Ok(value.to_string()),
        // What Argo reads with `valueFrom.secretKeyRef`: here, a granted secret.
        Value::Object(o) if o.len() == 1 && o.get("secret").is_some_and(Value::is_string) => {
            let secret = o.get("secret").and_then(Value::as_str).unwrap_or_default();
            sdk::secret(secret).ok_or_else(|| {
                sdk::invalid_config(format!(
                    "`args.{name}`: the secret `{secret}` has no value: grant it in the step's `allow.secrets` and set it in the engine's environment"
                ))
            })
        }
        other => Err(sdk::invalid_config(format!(
            "`args.{name}` is `{other}`; an argument is a string, a number, true/false or `{{secret: NAME}}`"
        ))),
    }
}

fn check_metric(m: RawMetric, step: &RawConfig, timeout: Duration) -> Result<Metric, StepError> {
    let name = m.name;
    let timeout = match m.timeout_seconds {
        Some(seconds) if seconds > 0 => Duration::from_secs(seconds.unsigned_abs()),
        _ => timeout,
    };
    let bad = |message: String| sdk::invalid_config(format!("metric `{name}`: {message}"));
    let provider = m.provider.or(step.provider).ok_or_else(|| {
        bad("no `provider`; set `provider: prometheus` or `provider: scrape` on the step or the metric".into())
    })?;
    let address = m
        .address
        .or_else(|| step.address.clone())
        .ok_or_else(|| bad("no `address`; set it on the step or the metric".into()))?;
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(bad(format!(
            "`address` `{address}` is not an http:// or https:// URL"
        )));
    }
    let source = match provider {
        Provider::Prometheus => {
            if m.series.is_some() || !m.labels.is_empty() {
                return Err(bad(
                    "`series` and `labels` belong to `provider: scrape`; a Prometheus metric takes a `query`".into(),
                ));
            }
            let query = m
                .query
                .ok_or_else(|| bad("`provider: prometheus` needs a `query` (PromQL)".into()))?;
            Source::Prometheus { address, query }
        }
        Provider::Scrape => {
            if m.query.is_some() {
                return Err(bad(
                    "`query` belongs to `provider: prometheus`; a scraped metric takes `series` and `labels`".into(),
                ));
            }
            let series = m.series.ok_or_else(|| {
                bad("`provider: scrape` needs a `series` (a metric name such as `http_requests_total`)".into())
            })?;
            Source::Scrape {
                url: address,
                series,
                labels: m.labels,
            }
        }
        Provider::Web => {
            let web = m.web.unwrap_or_default();
            let json_path = JsonPath::parse(web.json_path.as_deref().unwrap_or("{$}"))
                .map_err(|e| bad(format!("`jsonPath` {e}")))?;
            Source::Web {
                url: address,
                method: web.method,
                body: web.body,
                json_path,
            }
        }
    };
    let token = match m.token_secret.or_else(|| step.token_secret.clone()) {
        Some(secret) => Some(sdk::secret(&secret).ok_or_else(|| {
            bad(format!(
                "the secret `{secret}` of `token_secret` has no value: grant it in the step's `allow.secrets` and set it in the engine's environment"
            ))
        })?),
        None => None,
    };
    // A `web` answer may be anything JSON holds, so its conditions cannot be tried on a
    // sample number.
    let any_value = provider == Provider::Web;
    let success = compile(m.success_condition, "success_condition", &name, any_value)?;
    let failure = compile(m.failure_condition, "failure_condition", &name, any_value)?;
    if success.is_none() && failure.is_none() {
        return Err(bad(
            "no condition; set `success_condition` (e.g. `result < 0.01`), `failure_condition`, or both".into(),
        ));
    }
    let count = m.count.unwrap_or(DEFAULT_COUNT.into());
    if !(1..=i64::from(MAX_COUNT)).contains(&count) {
        return Err(bad(format!(
            "`count` is {count}; it must be between 1 and {MAX_COUNT}"
        )));
    }
    let limit = |value: Option<i64>, key: &str, default: u32| -> Result<u32, StepError> {
        let Some(value) = value else {
            return Ok(default);
        };
        u32::try_from(value).map_err(|_| {
            bad(format!(
                "`{key}` is {value}; a limit is how many measurements are tolerated, 0 or more"
            ))
        })
    };
    let failure_limit = limit(m.failure_limit, "failure_limit", 0)?;
    let inconclusive_limit = limit(m.inconclusive_limit, "inconclusive_limit", 0)?;
    let consecutive_error_limit = limit(
        m.consecutive_error_limit,
        "consecutive_error_limit",
        DEFAULT_CONSECUTIVE_ERROR_LIMIT,
    )?;
    // Argo Rollouts refuses these too: with fewer measurements than the limit tolerates, the
    // limit can never be exceeded, and a metric whose every measurement is bad passes.
    let count = u32::try_from(count).expect("checked to be between 1 and MAX_COUNT");
    for (key, limit, what) in [
        ("failure_limit", failure_limit, "fail"),
        ("inconclusive_limit", inconclusive_limit, "be inconclusive"),
    ] {
        if count < limit {
            return Err(bad(format!(
                "`count` is {count} but `{key}` is {limit}: {count} measurements can never exceed the limit, so the metric could never {what}; raise `count` to at least {limit} or lower `{key}`"
            )));
        }
    }
    let in_metric = |key: &str| format!("metric `{name}`: `{key}`");
    Ok(Metric {
        source,
        token,
        headers: m.headers,
        timeout,
        initial_delay: match &m.initial_delay {
            Some(text) => duration(text, &in_metric("initial_delay"))?,
            None => Duration::ZERO,
        },
        interval: match &m.interval {
            Some(text) => duration(text, &in_metric("interval"))?,
            None => DEFAULT_INTERVAL,
        },
        count,
        success,
        failure,
        failure_limit,
        inconclusive_limit,
        consecutive_error_limit,
        name,
    })
}

/// A `jsonPath` of Argo's `web` provider: the plain paths of Kubernetes' JSONPath,
/// `{$.data.ok}`, `{.items[0].value}`, `{$['a-b']}`. Filters, wildcards, slices and recursive
/// descent pick several values or none, where a measurement is one number; they are refused.
pub struct JsonPath {
    pub text: String,
    steps: Vec<PathStep>,
}

enum PathStep {
    Key(String),
    Index(usize),
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let refuse = |what: &str| {
            format!(
                "`{text}` uses {what}, which picks several values or none; give a plain path to one value, such as `{{$.data.value}}`"
            )
        };
        let inner = text.trim();
        let inner = match inner.strip_prefix('{') {
            Some(rest) => rest
                .strip_suffix('}')
                .ok_or_else(|| format!("`{text}` opens `{{` and never closes it"))?,
            None => inner,
        };
        let mut rest = inner.trim();
        rest = rest.strip_prefix('$').unwrap_or(rest);
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if rest.starts_with("..") {
                return Err(refuse("`..` (recursive descent)"));
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                match key {
                    "" => return Err(format!("`{text}` has an empty key")),
                    "*" => return Err(refuse("`*` (a wildcard)")),
                    _ => steps.push(PathStep::Key(key.to_string())),
                }
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after
                    .find(']')
                    .ok_or_else(|| format!("`{text}` opens `[` and never closes it"))?;
                let inside = after[..end].trim();
                if let Ok(index) = inside.parse() {
                    steps.push(PathStep::Index(index));
                } else if let Some(key) = inside
                    .strip_prefix('\'')
                    .and_then(|k| k.strip_suffix('\''))
                    .or_else(|| inside.strip_prefix('"').and_then(|k| k.strip_suffix('"')))
                {
                    steps.push(PathStep::Key(key.to_string()));
                } else if inside.starts_with('?') {
                    return Err(refuse("a filter"));
                } else if inside.contains(':') || inside.contains(',') {
                    return Err(refuse("a slice or a union"));
                } else {
                    return Err(refuse(&format!("`[{inside}]`")));
                }
                rest = &after[end + 1..];
            } else {
                return Err(format!(
                    "`{text}` is not a path; write it as `{{$.data.value}}`"
                ));
            }
        }
        Ok(JsonPath {
            text: text.to_string(),
            steps,
        })
    }

    /// The value the path leads to in `json`, if any.
    pub fn find<'a>(&self, json: &'a Value) -> Option<&'a Value> {
        self.steps.iter().try_fold(json, |value, step| match step {
            PathStep::Key(key) => value.get(key),
            PathStep::Index(index) => value.get(index),
        })
    }
}

fn compile(
    text: Option<String>,
    key: &str,
    metric: &str,
    any_value: bool,
) -> Result<Option<Condition>, StepError> {
    text.map(|text| {
        let compiled = if any_value {
            Condition::compile_for_any_value(&text)
        } else {
            Condition::compile(&text)
        };
        compiled.map_err(|e| {
            sdk::invalid_config(format!(
                "metric `{metric}`: `{key}` `{text}` does not parse: {e}"
            ))
        })
    })
    .transpose()
}

fn duration(text: &str, key: &str) -> Result<Duration, StepError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        sdk::invalid_config(format!(
            "{key} `{text}` is not a duration ({e}); write e.g. `30s`, `250ms` or `1m`"
        ))
    })
}

/// The JSON Schema (draft 2020-12) of the `with:` block.
pub fn schema() -> Value {
    let provider = json!({
        "enum": ["prometheus", "scrape"],
        "description": "Where values come from: `prometheus` runs instant PromQL queries against a Prometheus server's HTTP API; `scrape` reads the text exposition format from a `/metrics` URL directly, for apps with no Prometheus server."
    });
    let address = json!({
        "type": "string",
        "pattern": "^https?://",
        "x-shiphat-grant": "http",
        "description": "For `prometheus`: the server's base URL, e.g. `http://127.0.0.1:9090` (the plugin appends `/api/v1/query`). For `scrape`: the full URL of the metrics page, e.g. `http://127.0.0.1:8080/metrics`. Its host must be granted in `allow.http`."
    });
    let token_secret = json!({
        "type": "string",
        "description": "The name of a secret holding a bearer token, sent as `Authorization: Bearer <token>`. The secret must be granted in `allow.secrets`."
    });
    let duration = |what: &str| json!({ "type": "string", "minLength": 1, "description": what });
    let limit = |what: &str| json!({ "type": "integer", "minimum": 0, "description": what });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "description": "Measures one or more metrics with the semantics of an Argo Rollouts AnalysisRun; the step fails when a metric breaches its conditions.",
        "properties": {
            "provider": provider,
            "address": address,
            "token_secret": token_secret,
            "query_timeout": duration("How long one query or scrape may take before that measurement is an Error, e.g. `10s` (the default)."),
            "on_inconclusive": {
                "enum": ["fail", "succeed"],
                "description": "What an Inconclusive verdict does: `fail` the step (the default), or `succeed` with `outputs.verdict` `Inconclusive`, so that a later step can ask a person: `if: steps.ID.outputs.verdict == 'Inconclusive'` with an `approval`."
            },
            "replay_at": {
                "type": "string",
                "minLength": 1,
                "description": "Measure as if the step had started at this past time (RFC 3339, e.g. `2026-11-30T10:00:00Z`), without waiting: each measurement is the answer Prometheus gives for its own time (`initial_delay`, `interval` and the retries after an Error are kept). `shiphat verify backtest` sets it to replay past deploys; `prometheus` metrics only."
            },
            "template": {
                "type": "string",
                "minLength": 1,
                "x-shiphat-grant": "read",
                "description": "Instead of `metrics`: the path of an Argo Rollouts AnalysisTemplate or ClusterAnalysisTemplate YAML file, inside a directory granted in `allow.read`. Its `prometheus` and `web` metrics are measured as written; anything it cannot honour is refused by name."
            },
            "args": {
                "type": "object",
                "additionalProperties": {
                    "anyOf": [
                        { "type": ["string", "number", "boolean"] },
                        {
                            "type": "object",
                            "properties": { "secret": { "type": "string", "minLength": 1 } },
                            "required": ["secret"],
                            "additionalProperties": false
                        }
                    ]
                },
                "description": "With `template`: the values of the template's arguments, its `{{args.NAME}}`, e.g. `{service-name: web}`; `{secret: NAME}` takes one from a secret granted in `allow.secrets`, where Argo reads `valueFrom.secretKeyRef`. They override the template's own `value`s."
            },
            "metrics": {
                "type": "array",
                "minItems": 1,
                "description": "The metrics to measure. Their measurements are interleaved by time; the step's verdict is the worst metric's.",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": { "type": "string", "minLength": 1, "description": "The metric's name, unique in the step; used in logs, outputs and the summary." },
                        "provider": provider,
                        "address": address,
                        "token_secret": token_secret,
                        "query": { "type": "string", "minLength": 1, "description": "`prometheus` only: the PromQL of an instant query whose result is one number (a scalar, or a vector of exactly one series)." },
                        "series": { "type": "string", "minLength": 1, "description": "`scrape` only: the metric name of the series to read, e.g. `http_requests_total`; counters, gauges and untyped samples give their value." },
                        "labels": {
                            "type": "object",
                            "additionalProperties": { "type": "string" },
                            "description": "`scrape` only: labels the series must have, e.g. `{code: \"500\"}`; exactly one series must match."
                        },
                        "initial_delay": duration("How long to wait before the first measurement, e.g. `30s`. Default `0s`."),
                        "interval": duration("The time from the start of one measurement to the start of the next, e.g. `30s` or `250ms`. Default `1m`. After an Error the next try comes after at most `10s`."),
                        "count": { "type": "integer", "minimum": 1, "maximum": MAX_COUNT, "description": "How many Successful, Failed or Inconclusive measurements to take; Errors do not count. Default 1." },
                        "success_condition": { "type": "string", "minLength": 1, "description": "An expr-lang expression over `result` (the measured number) that is true when the measurement is good, e.g. `result < 0.01`." },
                        "failure_condition": { "type": "string", "minLength": 1, "description": "An expr-lang expression over `result` that is true when the measurement is bad, e.g. `result > 0.05`. With both conditions, a measurement that meets neither is Inconclusive." },
                        "failure_limit": limit("How many Failed measurements are tolerated; one more fails the step at once. Default 0."),
                        "inconclusive_limit": limit("How many Inconclusive measurements are tolerated; one more fails the step as inconclusive. Default 0."),
                        "consecutive_error_limit": limit("How many Errors in a row (query failed, empty result, NaN, several series) are tolerated; one more fails the step. Default 4.")
                    },
                    "required": ["name"],
                    "anyOf": [
                        { "required": ["success_condition"] },
                        { "required": ["failure_condition"] }
                    ],
                    "additionalProperties": false
                }
            }
        },
        "oneOf": [
            { "required": ["metrics"] },
            { "required": ["template"] }
        ],
        "additionalProperties": false
    })
}

// The tests run natively (`cargo xtask test`): nothing runs tests inside wasm32.
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use super::*;

    /// The `with:` block of one scraped metric with `extra` keys added to it.
    fn one_metric(extra: &str) -> String {
        format!(
            r#"{{"provider": "scrape", "address": "http://127.0.0.1:9/metrics",
                "metrics": [{{"name": "m", "series": "x", "success_condition": "result < 1"{extra}}}]}}"#
        )
    }

    fn refusal(extra: &str) -> String {
        match parse(&one_metric(extra)) {
            Ok(_) => panic!("`{extra}` was accepted"),
            Err(StepError::InvalidConfig(message)) => message,
            Err(other) => panic!("`{extra}`: not invalid-config: {other:?}"),
        }
    }

    // `count: 2, failure_limit: 3` was accepted, and a metric whose every measurement failed
    // passed: two failures never exceed a limit of three.
    #[test]
    fn count_below_a_limit_is_refused() {
        assert_eq!(
            refusal(r#", "count": 2, "failure_limit": 3"#),
            "metric `m`: `count` is 2 but `failure_limit` is 3: 2 measurements can never exceed the limit, so the metric could never fail; raise `count` to at least 3 or lower `failure_limit`"
        );
        assert!(
            refusal(r#", "count": 1, "inconclusive_limit": 2"#)
                .contains("`count` is 1 but `inconclusive_limit` is 2"),
        );
        // As in Argo, a limit equal to `count` is allowed.
        assert!(parse(&one_metric(r#", "count": 3, "failure_limit": 3"#)).is_ok());
        assert!(parse(&one_metric(r#", "count": 3, "inconclusive_limit": 3"#)).is_ok());
    }

    // A negative limit reached the plugin as serde's "invalid value: integer `-1`, expected
    // u32" (from an expression or, later, a template the engine's schema never saw).
    #[test]
    fn a_negative_limit_is_refused_by_name() {
        for key in [
            "failure_limit",
            "inconclusive_limit",
            "consecutive_error_limit",
        ] {
            assert_eq!(
                refusal(&format!(r#", "{key}": -1"#)),
                format!(
                    "metric `m`: `{key}` is -1; a limit is how many measurements are tolerated, 0 or more"
                )
            );
        }
        assert!(refusal(r#", "count": -2"#).contains("`count` is -2; it must be between 1"));
    }

    #[test]
    fn json_paths_lead_to_one_value_or_are_refused() {
        let json: Value = serde_json::from_str(
            r#"{"data": {"ok": true, "successPercent": 0.95, "items": [{"v": 3}], "a-b": 1}}"#,
        )
        .unwrap();
        let find = |path: &str| JsonPath::parse(path).unwrap().find(&json).cloned();
        assert_eq!(find("{$.data.ok}"), Some(Value::Bool(true)));
        assert_eq!(find("{.data.successPercent}"), Some(json!(0.95)));
        assert_eq!(find("{$.data.items[0].v}"), Some(json!(3)));
        assert_eq!(find("{$.data['a-b']}"), Some(json!(1)));
        assert_eq!(find("{$}"), Some(json.clone()));
        assert_eq!(find("{$.data.missing}"), None);
        for (path, why) in [
            ("{$..ok}", "recursive descent"),
            ("{$.data.*}", "a wildcard"),
            ("{$.data.items[?(@.v > 1)]}", "a filter"),
            ("{$.data.items[0:2]}", "a slice"),
        ] {
            let e = JsonPath::parse(path).err().unwrap();
            assert!(e.contains(why), "{path}: {e}");
        }
    }

    #[test]
    fn replay_at_takes_a_past_time_and_prometheus_metrics_only() {
        let prometheus = |at: &str| {
            format!(
                r#"{{"provider": "prometheus", "address": "http://127.0.0.1:9", "replay_at": "{at}",
                    "metrics": [{{"name": "m", "query": "up", "success_condition": "result == 1"}}]}}"#
            )
        };
        let config = parse(&prometheus("2026-11-30T10:00:00Z")).ok().unwrap();
        assert_eq!(
            config.replay_at,
            Some(humantime::parse_rfc3339("2026-11-30T10:00:00Z").unwrap())
        );
        let refused = |text: &str| match parse(text) {
            Err(StepError::InvalidConfig(message)) => message,
            _ => panic!("accepted: {text}"),
        };
        assert!(
            refused(&prometheus("yesterday")).starts_with("`replay_at` `yesterday` is not a time")
        );
        assert!(refused(&prometheus("2999-01-01T00:00:00Z")).contains("is in the future"));
        let scrape = one_metric("").replacen('{', r#"{"replay_at": "2026-11-30T10:00:00Z", "#, 1);
        assert_eq!(
            refused(&scrape),
            "metric `m` reads `scrape`, which answers only for now; `replay_at` can replay `prometheus` metrics only"
        );
    }
}
