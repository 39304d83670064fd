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

/// The most statuses and check runs asked for per request: GitHub's largest page, so that a
/// commit takes as few requests as it can.
const PER_PAGE: usize = 100;

/// The most pages of statuses, and of check runs, read for one commit: 1,000 of each at
/// [`PER_PAGE`]. That is more than a commit carries in practice (GitHub itself lists the check
/// runs of at most the 1,000 most recent check suites of a ref), and it stops a server whose
/// `next` link never ends after ten requests instead of at the step's time limit.
const MAX_PAGES: usize = 10;

/// How much of a refused `Link` target a failure message shows: enough to recognise a URL,
/// little enough that a hostile server cannot fill the run's events with it.
const SHOWN_LINK_CHARS: usize = 200;

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
    let mut reported_sha = None;
    let mut statuses = Vec::new();
    fetch_all(
        &url("status"),
        "statuses",
        &token,
        config,
        |page: CombinedStatus| {
            reported_sha = reported_sha.take().or(page.sha);
            statuses.extend(page.statuses);
        },
    )?;
    let mut runs = Vec::new();
    fetch_all(
        &url("check-runs"),
        "check runs",
        &token,
        config,
        |page: CheckRuns| runs.extend(page.check_runs),
    )?;

    let sha = reported_sha.unwrap_or_else(|| config.reference.clone());
    let short: String = if is_sha(&sha) {
        sha.chars().take(7).collect()
    } else {
        sha.clone()
    };

    let mut seen: Vec<Context> = statuses
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
    seen.extend(runs.into_iter().map(check_run));

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

/// GETs every page of a list, starting at `first`, and hands each to `add`. The pages are
/// followed as GitHub links them, through the `Link` header's `rel="next"`, for at most
/// [`MAX_PAGES`]; a list longer than that fails the step, since judging on part of it could
/// miss a red context.
///
/// A next page must be on the same origin (scheme, host and port) as `first`: the request
/// carries the token, which goes to no other host, however the server links. Every request,
/// the first or a next one, also needs the step's `allow.http` grant, which the host checks.
fn fetch_all<T: serde::de::DeserializeOwned>(
    first: &str,
    what: &str,
    token: &Option<String>,
    config: &Config,
    mut add: impl FnMut(T),
) -> Result<(), StepError> {
    let mut url = first.to_string();
    for _ in 0..MAX_PAGES {
        let (page, next) = fetch(&url, token, config)?;
        add(page);
        let Some(next) = next else {
            return Ok(());
        };
        url = next_url(&url, &next).map_err(|why| {
            // The link is the server's text; a page of it would not help anyone.
            let next: String = next.chars().take(SHOWN_LINK_CHARS).collect();
            sdk::failed(format!(
                "`{url}` links its next page of {what} to `{next}`, which is not read: {why}"
            ))
        })?;
    }
    Err(sdk::failed(format!(
        "`{first}` has more than {MAX_PAGES} pages of {what} ({} at {PER_PAGE} a page); the step reads no further, and judging on part of them could miss a red one",
        MAX_PAGES * PER_PAGE
    )))
}

/// The `rel="next"` target of a `Link` header (RFC 8288), as GitHub pages its lists:
/// `<https://api.github.com/...&page=2>; rel="next", <...&page=5>; rel="last"`.
fn next_link(header: &str) -> Option<&str> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let params = &after[close + 1..];
        let params = &params[..params.find('<').unwrap_or(params.len())];
        let is_next = params.split([';', ',']).any(|param| {
            param.split_once('=').is_some_and(|(key, value)| {
                key.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
        });
        if is_next {
            return Some(target.trim());
        }
        rest = &after[close + 1..];
    }
    None
}

/// The URL of the next page, `link` read against `current`: an absolute URL on the same
/// origin, or a path on it. Anything else is refused with the reason.
fn next_url(current: &str, link: &str) -> Result<String, &'static str> {
    let here = origin(current).ok_or("the current URL has no origin")?;
    if link.starts_with('/') && !link.starts_with("//") {
        return Ok(format!("{}://{}{link}", here.0, here.1));
    }
    match origin(link) {
        Some(there) if there == here => Ok(link.to_string()),
        Some(_) => Err("it is on another host than `api`, and the token is sent to no other host"),
        None => Err("it is neither an absolute `http(s)` URL nor a path"),
    }
}

/// The scheme and `host:port` of an `http` or `https` URL, in lowercase, with the scheme's
/// default port written out, so that equal origins compare equal.
fn origin(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    // A port follows the last `:`, unless that `:` is inside an IPv6 literal (`[::1]`).
    let has_port = authority
        .rfind(':')
        .is_some_and(|colon| !authority[colon..].contains(']'));
    let authority = if has_port {
        authority
    } else {
        format!("{authority}:{default_port}")
    };
    Some((scheme, authority))
}

/// GETs `url` and parses its JSON, sorting what can go wrong into transient and failed;
/// returns the body and the `Link` header's next page, if any.
fn fetch<T: serde::de::DeserializeOwned>(
    url: &str,
    token: &Option<String>,
    config: &Config,
) -> Result<(T, Option<String>), StepError> {
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
    let body = serde_json::from_slice(&response.body).map_err(|e| {
        sdk::failed(format!(
            "`{url}` answered {} with a body that is not the expected JSON: {e}",
            response.status
        ))
    })?;
    // A server may send the links in more than one `Link` header.
    let next = response
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("link"))
        .find_map(|(_, value)| next_link(value))
        .map(str::to_string);
    Ok((body, next))
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

// The tests run natively (`cargo xtask test`): nothing runs tests inside wasm32.
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    //! The `Link` header and the next page's URL come from the server, so they are read as
    //! untrusted text.

    use std::time::Instant;

    use proptest::prelude::*;
    use shiphat_proptest::{CASE_TIME, config};

    use super::*;

    #[test]
    fn the_next_link_is_found_as_github_writes_it() {
        let github = concat!(
            "<https://api.github.com/repositories/1300192/commits/abc/check-runs?per_page=100&page=2>; rel=\"next\", ",
            "<https://api.github.com/repositories/1300192/commits/abc/check-runs?per_page=100&page=3>; rel=\"last\""
        );
        assert_eq!(
            next_link(github),
            Some(
                "https://api.github.com/repositories/1300192/commits/abc/check-runs?per_page=100&page=2"
            )
        );
        let last_page = concat!(
            "<https://api.github.com/x?page=1>; rel=\"first\", ",
            "<https://api.github.com/x?page=2>; rel=\"prev\""
        );
        assert_eq!(next_link(last_page), None);
        // `rel` may hold several relations, in any case, and come after other parameters.
        assert_eq!(
            next_link("</x?page=2>; title=\"a, b\"; REL=\"last Next\""),
            Some("/x?page=2")
        );
        assert_eq!(next_link("<https://a/x?page=2>; rel=\"nextish\""), None);
    }

    #[test]
    fn a_next_page_stays_on_the_origin_of_the_first() {
        let here = "https://ghe.example.com/api/v3/repos/a/b/commits/main/status?per_page=100";
        assert_eq!(
            next_url(
                here,
                "https://GHE.example.com:443/api/v3/repositories/7/x?page=2"
            ),
            Ok("https://GHE.example.com:443/api/v3/repositories/7/x?page=2".to_string())
        );
        assert_eq!(
            next_url(here, "/api/v3/repositories/7/x?page=2"),
            Ok("https://ghe.example.com:443/api/v3/repositories/7/x?page=2".to_string())
        );
        for elsewhere in [
            "http://ghe.example.com/api/v3/x?page=2",
            "https://ghe.example.com:8443/api/v3/x?page=2",
            "https://ghe.example.com.evil.test/x?page=2",
            "https://ghe.example.com@evil.test/x?page=2",
            "//evil.test/x?page=2",
            "?page=2",
            "file:///etc/passwd",
        ] {
            assert!(
                next_url(here, elsewhere).is_err(),
                "{elsewhere} was followed"
            );
        }
        assert_eq!(
            origin("http://[::1]:8080/x"),
            Some(("http".into(), "[::1]:8080".into()))
        );
        assert_eq!(
            origin("http://[::1]/x"),
            Some(("http".into(), "[::1]:80".into()))
        );
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any header text: no panic, quick, and a next page only ever on the same origin.
        #[test]
        fn any_link_header_is_read_quickly(
            header in "(?s)[<>;,= \"a-zA-Z:/.?&0-9@\\[\\]-]{0,200}",
        ) {
            let start = Instant::now();
            let here = "https://api.github.com/repos/a/b/commits/c/status?per_page=100";
            if let Some(link) = next_link(&header)
                && let Ok(next) = next_url(here, link)
            {
                prop_assert_eq!(origin(&next), origin(here));
            }
            prop_assert!(start.elapsed() < CASE_TIME);
        }
    }
}
