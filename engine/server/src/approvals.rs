//! Approval steps on the daemon. The runner asks [`StoreApprover`]; it records the question in
//! the store (once: a run resumed after a restart finds its first ask, deadline and votes) and
//! waits until the store says it is decided or its deadline passes. People decide through
//! [`crate::service::Service::decide`] (API, web page, Slack, `shiphat runs approve`), on any
//! daemon of the store: a decision wakes the waiting run through the daemon's `live` channel,
//! which other daemons' decisions reach through the store's notifications.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use shiphat_protocol::{ApprovalOutcome, ApprovalView, Choice, VoteView};
use shiphat_runner::{ApprovalRequest, Approver, Decision, Vote};
use shiphat_store::{Approval, Decide, Outcome, Run, now_ms, rfc3339};

use crate::auth::{Principal, Role};
use crate::scheduler::App;

/// How often a waiting approval looks at the store without being woken: a safety net under a
/// lost notification, and how a deadline reached while the daemon was busy is noticed.
const APPROVAL_POLL: Duration = Duration::from_secs(1);

/// How long to wait before trying again when the store cannot be reached.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// The daemon's [`Approver`]: the store keeps the question and the votes.
pub(crate) struct StoreApprover {
    pub(crate) app: Weak<App>,
}

impl Approver for StoreApprover {
    fn withdraw(&self, run: &str, step: &str) {
        let Some(app) = self.app.upgrade() else {
            return;
        };
        let (run, step) = (run.to_owned(), step.to_owned());
        tokio::spawn(async move {
            if let Err(e) = app.store.decide(&run, &step, &Decide::Withdraw).await {
                tracing::warn!("cannot record that run `{run}` stopped waiting at `{step}`: {e}");
            }
            let _ = app.live.send(Arc::from(run.as_str()));
        });
    }

    fn ask(&self, request: ApprovalRequest) -> Pin<Box<dyn Future<Output = Decision> + Send>> {
        let app = self.app.clone();
        Box::pin(async move {
            match app.upgrade() {
                Some(app) => wait(&app, request).await,
                None => Decision::Unavailable("the daemon is stopping".to_owned()),
            }
        })
    }
}

async fn wait(app: &Arc<App>, request: ApprovalRequest) -> Decision {
    // Subscribed before the first read: a decision made after it is not missed.
    let mut live = app.live.subscribe();
    let now = now_ms();
    let asked = Approval {
        run: request.run_id.clone(),
        step: request.step.clone(),
        step_name: request.step_name,
        message: request.message,
        roles: request.roles,
        principals: request.principals,
        required: request.required,
        allow_self: request.allow_self,
        since_ms: now,
        deadline_ms: now
            .saturating_add(i64::try_from(request.timeout.as_millis()).unwrap_or(i64::MAX)),
        outcome: None,
        votes: Vec::new(),
    };
    let mut approval = loop {
        match app.store.open_approval(&asked).await {
            Ok(approval) => break approval,
            Err(e) => {
                tracing::warn!(
                    "cannot record the approval of `{}` in run `{}`: {e}; trying again",
                    asked.step,
                    asked.run
                );
                tokio::time::sleep(STORE_RETRY).await;
            }
        }
    };
    // The run's views now say it waits.
    let _ = app.live.send(Arc::from(asked.run.as_str()));
    // Only the first ask is announced: a run resumed here (after a restart, or taken over
    // from another daemon) finds its question asked, and its channel told, already.
    if approval.since_ms == asked.since_ms && approval.votes.is_empty() {
        announce(app, &approval).await;
    }
    loop {
        if approval.outcome.is_some() {
            return decision(&approval);
        }
        let left = approval.deadline_ms - now_ms();
        if left <= 0 {
            let expire = Decide::Expire { now_ms: now_ms() };
            match app.store.decide(&asked.run, &asked.step, &expire).await {
                Ok(Some((_, after))) => {
                    approval = after;
                    continue;
                }
                // Gone from the store (the run was pruned under it): nobody can decide now.
                Ok(None) => {
                    return Decision::TimedOut {
                        approvals: Vec::new(),
                    };
                }
                Err(e) => {
                    tracing::warn!("cannot end the approval of run `{}`: {e}", asked.run);
                    tokio::time::sleep(STORE_RETRY).await;
                    continue;
                }
            }
        }
        let nap = Duration::from_millis(left as u64).min(APPROVAL_POLL);
        let sleep = tokio::time::sleep(nap);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                changed = live.recv() => match changed {
                    Ok(run) if *run == *asked.run => break,
                    Ok(_) => continue,
                    // Missed some: look.
                    Err(_) => break,
                },
                () = &mut sleep => break,
            }
        }
        if let Ok(all) = app.store.approvals(&asked.run).await
            && let Some(now) = all.into_iter().find(|a| a.step == asked.step)
        {
            approval = now;
        }
    }
}

/// Posts a new question to the deploy channel's incoming webhooks (`slack.webhooks`), with
/// its Approve and Reject buttons, whoever started the run and from wherever: the API, the web
/// page, the CLI or Slack. The daemon that runs the run is the one that asks, so a question
/// is posted once however many daemons share the store.
async fn announce(app: &Arc<App>, approval: &Approval) {
    let Some(slack) = app.config.slack.as_ref().filter(|s| !s.webhooks.is_empty()) else {
        return;
    };
    let run = match app.store.run(&approval.run).await {
        Ok(Some(run)) => run,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(
                "cannot tell the deploy channel that run `{}` waits: {e}",
                approval.run
            );
            return;
        }
    };
    // The channel's message is the same for every reader: whether a reader may decide is
    // checked when they click.
    let reader = Principal {
        name: String::new(),
        roles: Vec::new(),
        patterns: Vec::new(),
    };
    let question = crate::chat::question(&view(approval, &run, &reader));
    let hooks = slack.webhooks.clone();
    tokio::spawn(async move {
        for hook in hooks {
            crate::chat::post(hook, question.clone()).await;
        }
    });
}

fn vote(record: &shiphat_store::VoteRecord) -> Vote {
    Vote {
        principal: record.principal.clone(),
        approve: record.approve,
        comment: record.comment.clone(),
        time: rfc3339(record.time_ms),
    }
}

/// The runner's decision for a decided approval.
fn decision(approval: &Approval) -> Decision {
    let approvals: Vec<Vote> = approval
        .votes
        .iter()
        .filter(|v| v.approve)
        .map(vote)
        .collect();
    match approval.outcome {
        Some(Outcome::Approved) => Decision::Approved(approvals),
        Some(Outcome::Rejected) => match approval.votes.iter().find(|v| !v.approve) {
            Some(by) => Decision::Rejected {
                by: vote(by),
                approvals,
            },
            None => Decision::TimedOut { approvals },
        },
        Some(Outcome::TimedOut | Outcome::Cancelled) | None => Decision::TimedOut { approvals },
    }
}

/// Why `caller` may not cast `choice` on `approval` of `run`, if they may not: they must be
/// named by it (a principal, or a role they hold; with neither list, anyone who may start the
/// workflow), and, unless it says `allow_self`, may not approve a run they started.
pub(crate) fn refusal(
    caller: &Principal,
    approval: &Approval,
    run: &Run,
    choice: Choice,
) -> Option<String> {
    let named = approval.principals.contains(&caller.name)
        || approval
            .roles
            .iter()
            .filter_map(|r| Role::parse(r))
            .any(|role| caller.has(role));
    let anyone = approval.principals.is_empty()
        && approval.roles.is_empty()
        && caller
            .may_run(
                &run.workflow,
                run.inputs.get("environment").and_then(|v| v.as_str()),
            )
            .is_ok();
    if !named && !anyone {
        return Some(format!(
            "`{}` may not decide on `{}` of run `{}`: it asks {}",
            caller.name,
            approval.step,
            run.id,
            who(approval)
        ));
    }
    if choice == Choice::Approve && !approval.allow_self && caller.name == run.principal {
        return Some(format!(
            "`{}` started run `{}` and may not approve it too (four eyes): someone else must, or the workflow says `allow_self: true`",
            caller.name, run.id
        ));
    }
    None
}

/// Who may decide, in words.
pub(crate) fn who(approval: &Approval) -> String {
    shiphat_protocol::approvers_in_words(&approval.roles, &approval.principals)
}

/// An approval as the API shows it to `caller`.
pub(crate) fn view(approval: &Approval, run: &Run, caller: &Principal) -> ApprovalView {
    let open = approval.outcome.is_none() && run.status == shiphat_protocol::RunStatus::Running;
    let voted = approval.votes.iter().any(|v| v.principal == caller.name);
    let may = |choice| open && !voted && refusal(caller, approval, run, choice).is_none();
    ApprovalView {
        run: approval.run.clone(),
        step: approval.step.clone(),
        step_name: approval.step_name.clone(),
        message: approval.message.clone(),
        roles: approval.roles.clone(),
        principals: approval.principals.clone(),
        required: approval.required,
        allow_self: approval.allow_self,
        started_by: run.principal.clone(),
        since: rfc3339(approval.since_ms),
        deadline: rfc3339(approval.deadline_ms),
        since_ms: approval.since_ms,
        deadline_ms: approval.deadline_ms,
        outcome: approval.outcome.map(|o| match o {
            Outcome::Approved => ApprovalOutcome::Approved,
            Outcome::Rejected => ApprovalOutcome::Rejected,
            Outcome::TimedOut => ApprovalOutcome::TimedOut,
            Outcome::Cancelled => ApprovalOutcome::Cancelled,
        }),
        votes: approval
            .votes
            .iter()
            .map(|v| VoteView {
                principal: v.principal.clone(),
                decision: if v.approve {
                    Choice::Approve
                } else {
                    Choice::Reject
                },
                comment: v.comment.clone(),
                time: rfc3339(v.time_ms),
            })
            .collect(),
        you_may_approve: may(Choice::Approve),
        you_may_reject: may(Choice::Reject),
    }
}
