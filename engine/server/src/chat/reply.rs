//! What goes back to Slack: the escaping of text from plugins and users, the posts to a
//! command's `response_url` and to incoming webhooks, and following a run to its end.

use std::time::Duration;

use serde_json::{Value, json};
use shiphat_protocol::{Event, Rollback, RunOutcome, Section, StepStatus};

use crate::auth::Principal;
use crate::service::{Follower, Service};

/// Slack lets a `response_url` be used at most five times (within 30 minutes).
pub const MAX_RESPONSE_POSTS: usize = 5;
/// How long one post to Slack may take before it is given up: Slack answers in well under a
/// second, and a hung post must not hold a blocking thread for long.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Escapes text for Slack's `mrkdwn` so that it cannot ping (`<!channel>`, `@here`) or forge a
/// link (`<https://evil|docs>`): `&`, `<` and `>` become entities, and a zero-width space
/// after every `@` keeps `@here`, `@channel` and `@everyone` plain text.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push_str("@\u{200B}"),
            c => out.push(c),
        }
    }
    out
}

/// An ephemeral answer to the command itself (only the caller sees it).
pub fn ephemeral(text: &str) -> Value {
    json!({ "response_type": "ephemeral", "text": text })
}

/// The HTTP client of every request the daemon makes. It follows no redirect: a URL is
/// checked against an allow-list (host and port) before the request, and a `302` from an
/// allowed host would otherwise send the daemon to whatever address the answer names, the
/// loopback and cloud metadata addresses included.
pub(crate) fn outbound_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(POST_TIMEOUT))
        .max_redirects(0)
        .build()
        .into()
}

/// Posts JSON to a URL on a blocking thread. ureq is already the workspace's HTTP client (the
/// CLI's); a post or two per run needs no connection pool or async client, and keeping it off
/// the runtime's threads costs one `spawn_blocking`. A redirect is not followed, and counts as
/// a failed post.
pub async fn post(url: String, body: Value) {
    let result =
        tokio::task::spawn_blocking(move || match outbound_agent().post(&url).send_json(&body) {
            Ok(response) if response.status().is_redirection() => Err((
                url,
                format!(
                    "it answered {} (a redirect, which is not followed)",
                    response.status().as_u16()
                ),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err((url, e.to_string())),
        })
        .await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err((url, e))) => tracing::warn!("cannot post to Slack at `{}`: {e}", redact(&url)),
        Err(e) => tracing::warn!("cannot post to Slack: {e}"),
    }
}

/// A URL without its path, for logs: webhook and response URLs carry their secret in the path.
fn redact(url: &str) -> String {
    match url.parse::<axum::http::Uri>() {
        Ok(u) => format!(
            "{}://{}/…",
            u.scheme_str().unwrap_or("?"),
            u.authority().map(|a| a.as_str()).unwrap_or("?")
        ),
        Err(_) => "?".into(),
    }
}

/// What a followed run is, for the messages about it.
pub struct Follow {
    /// The service and the principal the run was started for, to read its approvals.
    pub service: Service,
    pub caller: Principal,
    pub run_id: String,
    /// E.g. `` `web` to `staging` `` or `` rollback of `web` in `prod` ``, already escaped.
    pub label: String,
    pub rollback: bool,
    pub response_url: Option<String>,
    pub webhooks: Vec<String>,
}

struct Step {
    id: String,
    name: String,
    section: Section,
    status: StepStatus,
    summary: String,
    error: Option<String>,
    duration_ms: f64,
}

impl Step {
    fn ok(&self) -> bool {
        matches!(self.status, StepStatus::Succeeded | StepStatus::Skipped)
    }

    fn line(&self) -> String {
        let ok = self.ok();
        let mark = if ok { "✓" } else { "✗" };
        let what = match (&self.error, self.summary.is_empty()) {
            (Some(e), _) => format!(": {}", escape(e)),
            (None, false) => format!(": {}", escape(&self.summary)),
            (None, true) if !ok => format!(" ({})", self.status),
            (None, true) => String::new(),
        };
        let name = if self.name.is_empty() || self.name == self.id {
            format!("`{}`", escape(&self.id))
        } else {
            format!("`{}` ({})", escape(&self.id), escape(&self.name))
        };
        format!("{mark} {name}{what} ({})", seconds(self.duration_ms))
    }
}

fn seconds(ms: f64) -> String {
    format!("{:.1} s", ms / 1000.0)
}

/// Follows a run until it ends, posting its start, progress, each approval it waits at (with
/// its buttons) and its result to the `response_url` (at most [`MAX_RESPONSE_POSTS`]
/// messages: progress lines leave room for one approval and the result) and its start and
/// end to the incoming webhooks.
pub async fn follow(mut follower: Follower, f: Follow) {
    let mut posts = 0;
    let mut steps: Vec<Step> = Vec::new();
    let respond = |text: String, public: bool, posts: &mut usize| {
        let url = f.response_url.clone();
        let room = *posts < MAX_RESPONSE_POSTS;
        if room && url.is_some() {
            *posts += 1;
        }
        async move {
            if let (Some(url), true) = (url, room) {
                let kind = if public { "in_channel" } else { "ephemeral" };
                post(url, json!({ "response_type": kind, "text": text })).await;
            }
        }
    };
    let announce = |text: String| {
        let hooks = f.webhooks.clone();
        async move {
            for hook in hooks {
                post(hook, json!({ "text": text })).await;
            }
        }
    };
    while let Some(stored) = follower.next().await {
        match stored.event() {
            Some(Event::RunStarted { steps: planned, .. }) => {
                let names: Vec<String> = planned
                    .iter()
                    .filter(|s| s.section == Section::Steps)
                    .map(|s| format!("`{}`", escape(&s.id)))
                    .collect();
                let text = format!(
                    "▶ {} started (run `{}`): {}",
                    f.label,
                    f.run_id,
                    names.join(" → ")
                );
                respond(text.clone(), true, &mut posts).await;
                announce(text).await;
            }
            Some(Event::StepStarted { step, .. }) => {
                // The question is in the store a moment after the step starts: `asked` waits
                // for it (and answers at once for a step that asks nobody).
                let view = match f.service.asked(&f.caller, &f.run_id, &step).await {
                    Ok(Some(view)) if view.outcome.is_none() => view,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(
                            "cannot read the approval `{step}` of run `{}`: {e}",
                            f.run_id
                        );
                        continue;
                    }
                };
                // The deploy channel's webhooks hear of it from the approver itself
                // (`crate::approvals`), as for runs started anywhere else.
                let mut question = super::approval::message(&view);
                if let Some(url) = f.response_url.clone()
                    && posts + 1 < MAX_RESPONSE_POSTS
                {
                    posts += 1;
                    question["response_type"] = json!("in_channel");
                    post(url, question).await;
                }
            }
            Some(Event::StepFinished {
                step,
                name,
                section,
                status,
                summary,
                error,
                duration_ms,
                ..
            }) => {
                let step = Step {
                    id: step,
                    name,
                    section,
                    status,
                    summary,
                    error: error.map(|e| e.message),
                    duration_ms,
                };
                // Two posts stay in reserve: for an approval's question and for the result.
                if posts + 2 < MAX_RESPONSE_POSTS {
                    respond(step.line(), false, &mut posts).await;
                }
                steps.push(step);
            }
            Some(Event::RunFinished {
                status,
                duration_ms,
                ..
            }) => {
                let duration = seconds(duration_ms);
                let text = result_text(&f, status, &duration, &steps);
                respond(text, true, &mut posts).await;
                let word = match status {
                    RunOutcome::Succeeded if f.rollback => "rolled back",
                    RunOutcome::Succeeded => "succeeded",
                    RunOutcome::Cancelled => "was cancelled",
                    RunOutcome::Failed if rollback(&steps) == Some(Rollback::RolledBack) => {
                        "failed and was rolled back"
                    }
                    RunOutcome::Failed => "failed",
                };
                announce(format!(
                    "{} {} {word} in {duration} (run `{}`)",
                    if status == RunOutcome::Succeeded {
                        "✓"
                    } else {
                        "✗"
                    },
                    f.label,
                    f.run_id
                ))
                .await;
                return;
            }
            _ => {}
        }
    }
    // A run that ended without a `run_finished` (cancelled while queued, or its workflow
    // gone) ends the follow too.
    if let Some(run) = follower.ended() {
        let text = format!(
            "✗ {} ended {} (run `{}`){}",
            f.label,
            run.status.as_str(),
            f.run_id,
            run.detail
                .map(|d| format!(": {}", escape(&d)))
                .unwrap_or_default()
        );
        respond(text, true, &mut posts).await;
    }
}

/// What the run's `on_failure` steps did ([`Rollback::of`]).
fn rollback(steps: &[Step]) -> Option<Rollback> {
    Rollback::of(steps.iter().map(|s| (s.section, s.status.into())))
}

/// The final message: the outcome, the duration, the run id, each step with ✓/✗ and its
/// summary, and on failure what failed and whether the rollback ran.
fn result_text(f: &Follow, status: RunOutcome, duration: &str, steps: &[Step]) -> String {
    let succeeded = status == RunOutcome::Succeeded;
    let mark = if succeeded { "✓" } else { "✗" };
    let mut text = format!(
        "{mark} {} {status} in {duration} (run `{}`)",
        f.label, f.run_id
    );
    let lines = |text: &mut String, section: Section| {
        for step in steps.iter().filter(|s| s.section == section) {
            text.push('\n');
            text.push_str(&step.line());
        }
    };
    lines(&mut text, Section::Steps);
    if !succeeded {
        let failed: Vec<String> = steps
            .iter()
            .filter(|s| s.section == Section::Steps && s.status == StepStatus::Failed)
            .map(|s| format!("`{}`", escape(&s.id)))
            .collect();
        if !failed.is_empty() {
            text.push_str(&format!("\nfailed: {}", failed.join(", ")));
        }
        match rollback(steps) {
            None => text.push_str("\nrollback: none ran"),
            Some(rollback) => {
                let how = if rollback == Rollback::RolledBack {
                    "succeeded"
                } else {
                    "failed"
                };
                text.push_str(&format!("\nrollback: ran, {how}"));
                lines(&mut text, Section::OnFailure);
            }
        }
    }
    lines(&mut text, Section::Finally);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_cannot_ping_or_forge_links() {
        let text = escape("<!channel> @here see <https://evil.example|docs> & more");
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(!text.contains("@here"), "{text}");
        assert!(
            text.contains("&lt;!channel&gt;") && text.contains("&amp; more"),
            "{text}"
        );
    }
}
