//! Why a run is where it is, in a few lines a person reads: who started it and with what, what
//! it waited for, each step's result with the decisive evidence of a failure, what the
//! rollback did and what is deployed now. One account, computed here once, for every front end
//! (`shiphat runs why`, Slack's `/deploy why`, the web page's "Why" panel through
//! `GET /api/v1/runs/{id}/why`).

use serde_json::Value;

use crate::{ApprovalOutcome, Choice, Rollback, RunDetail, RunStatus, Section, StepState};

/// The account of a run, one line each.
pub fn why(run: &RunDetail) -> Vec<String> {
    let v = &run.run;
    let mut lines = Vec::new();
    let inputs: Vec<String> = v
        .inputs
        .iter()
        .map(|(k, value)| format!("{k}={}", plain(value)))
        .collect();
    // A run recorded before the daemon kept its source says nothing of it rather than guess.
    let from = v
        .source
        .map(|s| format!(" from {}", s.in_words()))
        .unwrap_or_default();
    lines.push(format!(
        "`{}` started `{}` (run `{}`){from} at {}{}{}.",
        v.principal,
        v.workflow,
        v.id,
        v.created_at,
        if inputs.is_empty() {
            String::new()
        } else {
            format!(" with {}", inputs.join(", "))
        },
        if v.dry_run {
            " as a dry run (nothing was changed)"
        } else {
            ""
        }
    ));

    // What it waited for, or waits for.
    if v.status == RunStatus::Queued {
        match (v.queue_position, &v.waiting_on, &v.concurrency_key) {
            (Some(n), Some(holder), Some(key)) => lines.push(format!(
                "It waits for `{key}`: number {n} in the queue, behind run `{holder}`, which holds it."
            )),
            _ => lines.push("It is queued.".to_owned()),
        }
    }
    if let Some(detail) = &v.detail {
        lines.push(format!("{}.", upper_first(detail.trim_end_matches('.'))));
    }
    for a in &run.approvals {
        let approvals = a
            .votes
            .iter()
            .filter(|x| x.decision == Choice::Approve)
            .count();
        let votes: Vec<String> = a
            .votes
            .iter()
            .map(|x| {
                let word = match x.decision {
                    Choice::Approve => "approved",
                    Choice::Reject => "rejected",
                };
                if x.comment.is_empty() {
                    format!("{word} by `{}`", x.principal)
                } else {
                    format!("{word} by `{}` (\"{}\")", x.principal, x.comment)
                }
            })
            .collect();
        let votes = if votes.is_empty() {
            String::new()
        } else {
            format!(": {}", votes.join(", "))
        };
        let who = crate::approvers_in_words(&a.roles, &a.principals);
        lines.push(match a.outcome {
            None => format!(
                "It waits at `{}` since {} for {who} to approve ({approvals} of {}){votes}; no decision by {} rejects it.",
                a.step, a.since, a.required, a.deadline
            ),
            Some(ApprovalOutcome::Approved) => {
                format!("At `{}` people were asked to approve{votes}.", a.step)
            }
            Some(ApprovalOutcome::Rejected) => {
                format!("At `{}` the deploy was rejected{votes}.", a.step)
            }
            Some(ApprovalOutcome::TimedOut) => format!(
                "At `{}` nobody decided by {} ({approvals} of {} approvals): that counts as a rejection.",
                a.step, a.deadline, a.required
            ),
            Some(ApprovalOutcome::Cancelled) => {
                format!("At `{}` the run was cancelled while it waited{votes}.", a.step)
            }
        });
    }

    // Each step in a line; a failure with its evidence.
    for s in &run.steps {
        let took = s
            .duration_ms
            .map(|ms| format!(" in {:.1} s", ms / 1000.0))
            .unwrap_or_default();
        let section = match s.section {
            Section::Steps => "",
            Section::OnFailure => " (on failure)",
            Section::Finally => " (finally)",
        };
        let line = match s.status {
            StepState::Succeeded => {
                let summary = if s.summary.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.summary)
                };
                format!("✓ `{}`{section} succeeded{took}{summary}", s.id)
            }
            StepState::Failed => {
                let why = s
                    .error
                    .as_ref()
                    .map(|e| format!(": {}", e.message))
                    .unwrap_or_default();
                let kept = if s.continued {
                    " (the run went on: continue_on_error)"
                } else {
                    ""
                };
                format!(
                    "✗ `{}`{section} failed{took}{why}{}{kept}",
                    s.id,
                    evidence(&s.outputs)
                )
            }
            StepState::Skipped => format!("– `{}`{section} was skipped: its `if` said no", s.id),
            StepState::Cancelled => format!("✗ `{}`{section} was cancelled{took}", s.id),
            StepState::Interrupted => {
                format!("✗ `{}`{section} was interrupted (its daemon stopped)", s.id)
            }
            StepState::Running => format!("… `{}`{section} is running", s.id),
        };
        lines.push(line);
    }

    // How it ended, and what is deployed now.
    let took = v
        .duration_ms
        .map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0))
        .unwrap_or_default();
    let deployed = deployed(run);
    match v.status {
        RunStatus::Succeeded => lines.push(format!(
            "It succeeded{took}.{}",
            deployed
                .map(|r| format!(" Deployed now: release `{r}`."))
                .unwrap_or_default()
        )),
        RunStatus::Failed => {
            let failed_at = run
                .steps
                .iter()
                .find(|s| {
                    s.section == Section::Steps && s.status == StepState::Failed && !s.continued
                })
                .map(|s| format!(" at `{}`", s.id))
                .unwrap_or_default();
            let rollback = match run.rollback {
                Some(Rollback::RolledBack) => format!(
                    " The rollback ran and succeeded{}.",
                    deployed
                        .map(|r| format!(": release `{r}` is deployed now"))
                        .unwrap_or_default()
                ),
                Some(Rollback::Failed) => {
                    " The rollback did not succeed: check what is deployed by hand.".to_owned()
                }
                Some(Rollback::RollingBack) => " It is rolling back.".to_owned(),
                None => " Nothing was rolled back.".to_owned(),
            };
            lines.push(format!("It failed{failed_at}{took}.{rollback}"));
        }
        RunStatus::Cancelled => lines.push(format!("It was cancelled{took}.")),
        RunStatus::Interrupted => lines.push(
            "It was interrupted when its daemon stopped; it waits to be resumed or cancelled."
                .to_owned(),
        ),
        RunStatus::Running | RunStatus::Waiting | RunStatus::Queued => {}
    }
    lines
}

/// The decisive evidence a step's outputs hold beyond its error message: the failing tests by
/// name (a QA check's `failing`).
fn evidence(outputs: &Value) -> String {
    match outputs.get("failing").and_then(Value::as_array) {
        Some(failing) if !failing.is_empty() => {
            let names: Vec<String> = failing
                .iter()
                .take(5)
                .map(|f| match f {
                    Value::String(s) => format!("`{s}`"),
                    other => format!(
                        "`{}`",
                        other.get("name").map_or_else(|| other.to_string(), plain)
                    ),
                })
                .collect();
            let more = failing.len().saturating_sub(5);
            format!(
                "; failing: {}{}",
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        }
        _ => String::new(),
    }
}

/// The release deployed now, as far as the run's steps say: the last `release` output of a
/// step that succeeded (a rollback's, after a deploy's).
fn deployed(run: &RunDetail) -> Option<String> {
    run.steps
        .iter()
        .filter(|s| s.status == StepState::Succeeded)
        .filter_map(|s| s.outputs.get("release").filter(|r| !r.is_null()).map(plain))
        .next_back()
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn upper_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RunSource, RunView};

    fn detail(source: Option<RunSource>) -> RunDetail {
        RunDetail {
            run: RunView {
                id: "01a".into(),
                workflow: "web".into(),
                status: RunStatus::Succeeded,
                detail: None,
                inputs: serde_json::Map::new(),
                principal: "alice".into(),
                source,
                dry_run: false,
                concurrency_key: None,
                queue_position: None,
                waiting_on: None,
                daemon: None,
                environment: None,
                created_at: "2026-12-03T15:00:00Z".into(),
                started_at: None,
                finished_at: None,
                created_ms: 0,
                started_ms: None,
                finished_ms: None,
                duration_ms: None,
            },
            plan: Vec::new(),
            steps: Vec::new(),
            logs: Vec::new(),
            rollback: None,
            approvals: Vec::new(),
        }
    }

    #[test]
    fn the_account_says_where_a_run_came_from_and_guesses_nothing_for_an_old_one() {
        for (source, words) in [
            (RunSource::Api, "the API"),
            (RunSource::Web, "the web page"),
            (RunSource::Slack, "Slack"),
            (RunSource::Cli, "the CLI"),
        ] {
            assert_eq!(
                why(&detail(Some(source)))[0],
                format!("`alice` started `web` (run `01a`) from {words} at 2026-12-03T15:00:00Z.")
            );
        }
        assert_eq!(
            why(&detail(None))[0],
            "`alice` started `web` (run `01a`) at 2026-12-03T15:00:00Z."
        );
    }

    #[test]
    fn a_run_view_without_a_source_reads_as_unknown() {
        // What a daemon from before `source` answers: the field is absent.
        let mut value = serde_json::to_value(detail(Some(RunSource::Cli)).run).unwrap();
        value.as_object_mut().unwrap().remove("source");
        let view: RunView = serde_json::from_value(value).unwrap();
        assert_eq!(view.source, None);
    }
}
