//! `strategy: webhook`: a signed POST to a deploy API, then polling its status URL if it
//! gives one.
//!
//! Signing: `X-Shiphat-Timestamp` is the Unix time in seconds, and `X-Shiphat-Signature` is
//! `sha256=` followed by the lowercase hex HMAC-SHA256, keyed with the secret's value, of
//! `<timestamp>.<raw body>` (for a status poll, whose body is empty, of `<timestamp>.`).
//! Signing the timestamp lets the receiver refuse replays of an old request.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use shiphat_plugin_sdk::http::{self, Response};
use shiphat_plugin_sdk::{self as sdk, Output, StepContext, StepError, StepOutput};

use crate::config::{Action, Webhook};

/// How long one request may take. A deploy API that has not answered in this long is more
/// likely stuck than slow, and a retry (the step's `retries:`) is the better bet.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of a response body goes into an error message.
const EXCERPT: usize = 200;

pub fn run(ctx: &StepContext, config: Webhook) -> Result<StepOutput, StepError> {
    let action = match config.action {
        Action::Deploy => "deploy",
        Action::Rollback => "rollback",
    };
    let env = config
        .environment
        .as_deref()
        .map(|e| format!(" to {e}"))
        .unwrap_or_default();
    if ctx.dry_run {
        return Ok(Output::new(format!(
            "would POST {action} of release {}{env} to {}",
            config.release, config.url
        ))
        .set("release", config.release.as_str())
        .set("changed", false)
        .set("dry_run", true)
        .into());
    }
    let key = sdk::secret(&config.secret).ok_or_else(|| {
        sdk::invalid_config(format!(
            "`secret`: secret `{}` is not granted or has no value; list it in allow.secrets and set it",
            config.secret
        ))
    })?;
    let started = Instant::now();
    let body = json!({
        "action": action,
        "release": config.release,
        "environment": config.environment,
        "run_id": ctx.run_id,
        "workflow": ctx.workflow,
        "step_id": ctx.step_id,
    })
    .to_string();
    // The same key for every attempt of this step, so an API can recognise a retried POST.
    let idempotency_key = format!("{}/{}", ctx.run_id, ctx.step_id);
    let response = signed(
        "POST",
        &config.url,
        &key,
        body.as_bytes(),
        &[("idempotency-key", &idempotency_key)],
    )?;
    let status = response.status;
    answer_ok(&response, "the deploy API")?;

    let status_url = status_url(&response).map(|u| resolve(&config.url, &u));
    let mut output = Output::new("")
        .set("release", config.release.as_str())
        .set("changed", true)
        .set("http_status", status)
        .set("status_url", status_url.clone());
    let summary = match status_url {
        None => format!(
            "{action} of release {}{env} accepted by {} ({status})",
            config.release, config.url
        ),
        Some(url) => {
            sdk::info(&format!("deploy accepted ({status}); polling {url}"));
            let deadline = started + config.timeout;
            let state = poll(&url, &key, config.poll_interval, deadline, config.timeout)?;
            output = output.set("deploy_status", state.as_str());
            format!("{action} of release {}{env} {state}", config.release)
        }
    };
    Ok(output.summary(summary).into())
}

/// Polls `url` until the deploy is over, or fails once `deadline` passes.
fn poll(
    url: &str,
    key: &str,
    interval: Duration,
    deadline: Instant,
    timeout: Duration,
) -> Result<String, StepError> {
    let mut last = String::from("unknown");
    loop {
        match signed("GET", url, key, b"", &[]) {
            // A hiccup of the status API is not the deploy failing; keep asking until the
            // deadline.
            Err(StepError::Transient(why)) => sdk::warn(&format!("status poll failed: {why}")),
            Err(e) => return Err(e),
            Ok(response) if response.status >= 500 => sdk::warn(&format!(
                "status poll answered {}: {}",
                response.status,
                excerpt(&response)
            )),
            Ok(response) => {
                answer_ok(&response, "the status URL")?;
                let body: Value = serde_json::from_slice(&response.body).map_err(|e| {
                    sdk::failed(format!(
                        "the status URL answered something that is not JSON ({e}): {}",
                        excerpt(&response)
                    ))
                })?;
                let state = body["status"].as_str().unwrap_or("").to_ascii_lowercase();
                let message = body["message"].as_str().unwrap_or("");
                match state.as_str() {
                    "succeeded" | "success" | "done" | "completed" => return Ok(state),
                    "failed" | "failure" | "error" | "cancelled" | "canceled" => {
                        let message = if message.is_empty() {
                            "no message"
                        } else {
                            message
                        };
                        return Err(sdk::failed_with(
                            format!("the deploy API says the deploy {state}: {message}"),
                            json!({ "deploy_status": state, "status_url": url }),
                        ));
                    }
                    "" => {
                        return Err(sdk::failed(format!(
                            "the status URL's answer has no `status`: {}",
                            excerpt(&response)
                        )));
                    }
                    _ => sdk::debug(&format!("deploy {state}")),
                }
                last = state;
            }
        }
        if Instant::now() + interval > deadline {
            return Err(sdk::failed_with(
                format!(
                    "the deploy is still `{last}` after {}; raise `timeout` to wait longer",
                    humantime::format_duration(timeout)
                ),
                json!({ "deploy_status": last, "status_url": url }),
            ));
        }
        std::thread::sleep(interval);
    }
}

/// Sends a request signed with `key`; transport errors become `transient` when trying again
/// may help.
fn signed(
    method: &str,
    url: &str,
    key: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Result<Response, StepError> {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string();
    let signature = format!("sha256={}", sign(key, &timestamp, body));
    // Without a length the body goes out chunked, which some deploy APIs refuse.
    let length = body.len().to_string();
    let mut headers = vec![
        ("content-length", length.as_str()),
        ("content-type", "application/json"),
        ("x-shiphat-timestamp", timestamp.as_str()),
        ("x-shiphat-signature", signature.as_str()),
    ];
    headers.extend_from_slice(extra);
    let body = (!body.is_empty()).then_some(body);
    http::request(method, url, &headers, body, Some(REQUEST_TIMEOUT)).map_err(|e| {
        if e.is_transient() {
            sdk::transient(format!("{method} {url}: {e}"))
        } else {
            sdk::failed(format!(
                "{method} {url}: {e}{}",
                if e.to_string().contains("denied") {
                    "; grant the host in allow.http"
                } else {
                    ""
                }
            ))
        }
    })
}

/// The lowercase hex HMAC-SHA256 of `<timestamp>.<body>`.
fn sign(key: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Maps a status to the step's outcome: 2xx goes on, 5xx (and 408, 429, which ask to come
/// back later) is transient, anything else fails with the start of the body.
fn answer_ok(response: &Response, who: &str) -> Result<(), StepError> {
    let status = response.status;
    if response.is_success() {
        return Ok(());
    }
    let message = format!("{who} answered {status}: {}", excerpt(response));
    if status >= 500 || status == 408 || status == 429 {
        Err(sdk::transient(message))
    } else {
        Err(sdk::failed_with(message, json!({ "http_status": status })))
    }
}

/// Where the API says to follow the deploy: `status_url` in a JSON body, or the `Location` of
/// a 202.
fn status_url(response: &Response) -> Option<String> {
    let from_body = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v["status_url"].as_str().map(str::to_string));
    from_body.or_else(|| {
        (response.status == 202)
            .then(|| response.header("location").map(str::to_string))
            .flatten()
    })
}

/// Resolves a status URL that may be relative to the deploy URL (`/deploys/7`).
fn resolve(base: &str, url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if url.starts_with('/') {
        format!("{scheme}://{authority}{url}")
    } else {
        // Relative to the deploy URL's directory.
        let path = rest[authority.len()..]
            .split(['?', '#'])
            .next()
            .unwrap_or("");
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{url}")
    }
}

fn excerpt(response: &Response) -> String {
    let text = response.text();
    match text.char_indices().nth(EXCERPT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.into_owned(),
    }
}
