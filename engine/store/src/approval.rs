//! Approvals a run waits for: what was asked, since when, until when, and the votes so far.
//!
//! Both backends keep an approval as one JSON document per run and step, and change it only
//! through [`apply`] under the row's lock, so the rules (one vote per person, one rejection
//! rejects, enough approvals approve, nothing changes once decided) are written once.

use serde::{Deserialize, Serialize};

/// One approval step of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub run: String,
    pub step: String,
    pub step_name: String,
    pub message: String,
    /// Principals holding any of these roles may decide.
    pub roles: Vec<String>,
    /// These principals may decide; with `roles` also empty, anyone who may start the run's
    /// workflow may.
    pub principals: Vec<String>,
    pub required: u32,
    /// Whether the principal who started the run may approve it.
    pub allow_self: bool,
    /// When the step first asked (milliseconds since the Unix epoch). A run resumed after a
    /// restart asks again and finds this, so its deadline does not move.
    pub since_ms: i64,
    pub deadline_ms: i64,
    /// `None` while it waits.
    pub outcome: Option<Outcome>,
    /// In the order given.
    pub votes: Vec<VoteRecord>,
}

impl Approval {
    /// The document a backend stores.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an approval always serialises")
    }

    pub(crate) fn from_json(body: &str) -> crate::Result<Approval> {
        serde_json::from_str(body).map_err(|e| crate::Error::Corrupt {
            table: "approvals",
            message: e.to_string(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Rejected,
    TimedOut,
    /// The run was cancelled while it waited.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteRecord {
    pub principal: String,
    pub approve: bool,
    pub comment: String,
    pub time_ms: i64,
}

/// A change to an approval, applied by [`AsyncStore::decide`](crate::AsyncStore::decide).
#[derive(Clone, Debug)]
pub enum Decide {
    Vote(VoteRecord),
    /// Ends it as timed out when its deadline has passed at `now_ms`.
    Expire {
        now_ms: i64,
    },
    /// Ends it as cancelled: the run stopped waiting.
    Withdraw,
}

/// What [`apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The vote counts; the approval may now be decided.
    Counted,
    /// This principal had voted already: nothing changed.
    Again,
    /// It was decided already: nothing changed.
    Closed,
    /// `Expire` before the deadline: nothing changed.
    NotYet,
    /// `Expire` after the deadline: it timed out.
    Expired,
    /// `Withdraw`: it is cancelled.
    Withdrawn,
}

/// Applies `change` to `approval` by the rules above.
pub fn apply(approval: &mut Approval, change: &Decide) -> Applied {
    if approval.outcome.is_some() {
        return Applied::Closed;
    }
    match change {
        Decide::Expire { now_ms } if *now_ms < approval.deadline_ms => Applied::NotYet,
        Decide::Expire { .. } => {
            approval.outcome = Some(Outcome::TimedOut);
            Applied::Expired
        }
        Decide::Withdraw => {
            approval.outcome = Some(Outcome::Cancelled);
            Applied::Withdrawn
        }
        Decide::Vote(vote) if approval.votes.iter().any(|v| v.principal == vote.principal) => {
            Applied::Again
        }
        Decide::Vote(vote) => {
            approval.votes.push(vote.clone());
            let approvals = approval.votes.iter().filter(|v| v.approve).count();
            if !vote.approve {
                approval.outcome = Some(Outcome::Rejected);
            } else if approvals as u64 >= u64::from(approval.required) {
                approval.outcome = Some(Outcome::Approved);
            }
            Applied::Counted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(required: u32) -> Approval {
        Approval {
            run: "r".into(),
            step: "decide".into(),
            step_name: "Decide".into(),
            message: "keep it?".into(),
            roles: vec!["deployer".into()],
            principals: Vec::new(),
            required,
            allow_self: false,
            since_ms: 1_000,
            deadline_ms: 61_000,
            outcome: None,
            votes: Vec::new(),
        }
    }

    fn vote(principal: &str, approve: bool) -> Decide {
        Decide::Vote(VoteRecord {
            principal: principal.into(),
            approve,
            comment: String::new(),
            time_ms: 2_000,
        })
    }

    #[test]
    fn the_same_person_twice_counts_once() {
        let mut a = asked(2);
        assert_eq!(apply(&mut a, &vote("alice", true)), Applied::Counted);
        assert_eq!(apply(&mut a, &vote("alice", true)), Applied::Again);
        assert_eq!(a.outcome, None);
        assert_eq!(apply(&mut a, &vote("bob", true)), Applied::Counted);
        assert_eq!(a.outcome, Some(Outcome::Approved));
        assert_eq!(a.votes.len(), 2);
    }

    #[test]
    fn one_rejection_rejects_and_a_decided_approval_stays_decided() {
        let mut a = asked(2);
        apply(&mut a, &vote("alice", true));
        apply(&mut a, &vote("bob", false));
        assert_eq!(a.outcome, Some(Outcome::Rejected));
        assert_eq!(apply(&mut a, &vote("carol", true)), Applied::Closed);
        assert_eq!(
            apply(&mut a, &Decide::Expire { now_ms: 99_000 }),
            Applied::Closed
        );
        assert_eq!(a.outcome, Some(Outcome::Rejected));
    }

    #[test]
    fn it_expires_only_from_its_deadline() {
        let mut a = asked(1);
        assert_eq!(
            apply(&mut a, &Decide::Expire { now_ms: 60_999 }),
            Applied::NotYet
        );
        assert_eq!(
            apply(&mut a, &Decide::Expire { now_ms: 61_000 }),
            Applied::Expired
        );
        assert_eq!(a.outcome, Some(Outcome::TimedOut));
        assert_eq!(apply(&mut a, &vote("alice", true)), Applied::Closed);
    }
}
