//! Approval steps: the runner asks an [`Approver`] and turns its answer into the step's end.
//!
//! The runner does not know who the people are or how they are reached: a one-shot run asks
//! the person at the terminal, the daemon records the question in its store and waits for
//! decisions from its API, web page and chat. Each of them implements [`Approver`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

/// What an approval step asks, with its message resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct ApprovalRequest {
    pub run_id: String,
    pub workflow: String,
    pub step: String,
    pub step_name: String,
    pub message: String,
    /// Principals holding any of these roles may decide.
    pub roles: Vec<String>,
    /// These principals may decide; with `roles` also empty, anyone who may start the
    /// workflow may.
    pub principals: Vec<String>,
    /// Approvals needed; one rejection rejects.
    pub required: u32,
    /// Whether the person who started the run may approve it.
    pub allow_self: bool,
    /// How long the step waits, counted from when it first asked (a run resumed after a
    /// restart keeps its first deadline: the approver knows when that was).
    pub timeout: Duration,
}

impl ApprovalRequest {
    /// Who may decide, in words: "role `deployer` or `alice`", "anyone who may run it".
    pub fn who(&self) -> String {
        shiphat_protocol::approvers_in_words(&self.roles, &self.principals)
    }
}

/// The most an approval's message keeps, in bytes: a few paragraphs for a person to read in
/// a chat message or on a phone. A message that quotes a whole output (up to a megabyte)
/// would otherwise be stored with the approval, sent to every page and posted to Slack.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `message` cut to [`MAX_MESSAGE_BYTES`] on a character boundary, saying it was cut.
pub(crate) fn capped(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES - "… (cut)".len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &message[..end])
}

/// One person's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Vote {
    pub principal: String,
    pub approve: bool,
    pub comment: String,
    /// RFC 3339.
    pub time: String,
}

impl Vote {
    fn to_json(&self) -> Value {
        json!({
            "approver": self.principal,
            "decision": if self.approve { "approved" } else { "rejected" },
            "comment": self.comment,
            "time": self.time,
        })
    }
}

/// How an approval ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Enough approvals, in the order given; the last one decided.
    Approved(Vec<Vote>),
    /// One rejection, after the approvals given before it.
    Rejected { by: Vote, approvals: Vec<Vote> },
    /// Nobody decided in time: it counts as a rejection.
    TimedOut { approvals: Vec<Vote> },
    /// Nobody can be asked here (a one-shot run without a terminal); says what to do instead.
    Unavailable(String),
}

/// Asks people. The answer resolves once the step is decided, or once its timeout has passed
/// (then as [`Decision::TimedOut`]): the runner waits a little longer only as a backstop.
pub trait Approver: Send + Sync {
    fn ask(&self, request: ApprovalRequest) -> Pin<Box<dyn Future<Output = Decision> + Send>>;

    /// The run was cancelled while `step` waited: nobody needs to decide any more. Not called
    /// when the run is aborted (a daemon stopping, or losing its lease), since then the run
    /// will ask again where it goes on.
    fn withdraw(&self, _run: &str, _step: &str) {}
}

/// The approver of a runner nobody configured: it cannot ask anyone.
pub(crate) struct Nobody;

impl Approver for Nobody {
    fn ask(&self, request: ApprovalRequest) -> Pin<Box<dyn Future<Output = Decision> + Send>> {
        Box::pin(std::future::ready(Decision::Unavailable(format!(
            "step `{}` needs an approval and nobody can be asked here",
            request.step
        ))))
    }
}

pub(crate) fn nobody() -> Arc<dyn Approver> {
    Arc::new(Nobody)
}

/// The step's outputs for a decision: who decided, how, with what comment and when, and every
/// vote. `decision` is `approved`, `rejected` or `timed_out`.
pub(crate) fn outputs(decision: &Decision) -> Map<String, Value> {
    let (word, decider, votes): (&str, Option<&Vote>, Vec<&Vote>) = match decision {
        Decision::Approved(votes) => ("approved", votes.last(), votes.iter().collect()),
        Decision::Rejected { by, approvals } => (
            "rejected",
            Some(by),
            approvals.iter().chain(std::iter::once(by)).collect(),
        ),
        Decision::TimedOut { approvals } => ("timed_out", None, approvals.iter().collect()),
        Decision::Unavailable(_) => ("unavailable", None, Vec::new()),
    };
    let mut out = Map::new();
    out.insert("decision".into(), word.into());
    out.insert(
        "approver".into(),
        decider.map_or(Value::Null, |v| v.principal.clone().into()),
    );
    out.insert(
        "comment".into(),
        decider.map_or(Value::Null, |v| v.comment.clone().into()),
    );
    out.insert(
        "time".into(),
        decider.map_or(Value::Null, |v| v.time.clone().into()),
    );
    out.insert(
        "votes".into(),
        Value::Array(votes.into_iter().map(Vote::to_json).collect()),
    );
    out
}

/// "approved by alice, bob" and the like, for the step's summary or error.
pub(crate) fn describe(decision: &Decision, timeout: Duration) -> String {
    let names = |votes: &[Vote]| {
        votes
            .iter()
            .map(|v| comment_of(&v.principal, &v.comment))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match decision {
        Decision::Approved(votes) => format!("approved by {}", names(votes)),
        Decision::Rejected { by, .. } => {
            format!("rejected by {}", comment_of(&by.principal, &by.comment))
        }
        Decision::TimedOut { approvals } => {
            let given = if approvals.is_empty() {
                String::new()
            } else {
                format!(" (approved only by {})", names(approvals))
            };
            format!(
                "no decision within {}{given}; it counts as rejected",
                shiphat_host::fmt_duration(timeout)
            )
        }
        Decision::Unavailable(why) => why.clone(),
    }
}

fn comment_of(principal: &str, comment: &str) -> String {
    if comment.is_empty() {
        principal.to_owned()
    } else {
        format!("{principal} (\"{comment}\")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(principal: &str, approve: bool, comment: &str) -> Vote {
        Vote {
            principal: principal.into(),
            approve,
            comment: comment.into(),
            time: "2026-12-03T10:00:00.000Z".into(),
        }
    }

    #[test]
    fn a_rejection_names_who_rejected_and_keeps_the_approvals_before_it() {
        let decision = Decision::Rejected {
            by: vote("bob", false, "error ratio too high"),
            approvals: vec![vote("alice", true, "")],
        };
        let out = outputs(&decision);
        assert_eq!(out["decision"], "rejected");
        assert_eq!(out["approver"], "bob");
        assert_eq!(out["comment"], "error ratio too high");
        assert_eq!(out["votes"].as_array().unwrap().len(), 2);
        assert_eq!(
            describe(&decision, Duration::from_secs(60)),
            "rejected by bob (\"error ratio too high\")"
        );
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary_and_says_so() {
        let short = "keep it?".to_owned();
        assert_eq!(capped(short.clone()), short);
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = capped(long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("… (cut)"));
        assert!(cut.starts_with("éé"));
    }

    #[test]
    fn a_timeout_has_no_approver_and_says_it_counts_as_rejected() {
        let decision = Decision::TimedOut {
            approvals: vec![vote("alice", true, "")],
        };
        let out = outputs(&decision);
        assert_eq!(out["decision"], "timed_out");
        assert_eq!(out["approver"], Value::Null);
        assert_eq!(
            describe(&decision, Duration::from_secs(1800)),
            "no decision within 30m (approved only by alice); it counts as rejected"
        );
    }
}
