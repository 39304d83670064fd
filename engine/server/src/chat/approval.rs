//! Approvals in Slack: the Block Kit message that asks (with Approve and Reject buttons), the
//! same message once people have decided, and the `block_actions` payload Slack posts to the
//! interactivity URL when a button is clicked.

use serde::Deserialize;
use serde_json::{Value, json};
use shiphat_protocol::{ApprovalOutcome, ApprovalView, Choice};

use super::reply::escape;

/// The buttons' `action_id`s; their `value` is `RUN/STEP`.
pub const APPROVE: &str = "approve";
pub const REJECT: &str = "reject";

/// The `block_actions` payload, as far as it matters here (Slack sends more, and other
/// interaction types, which are not read).
#[derive(Deserialize)]
pub struct BlockActions {
    #[serde(rename = "type")]
    pub kind: String,
    pub user: User,
    pub team: Option<Team>,
    #[serde(default)]
    pub channel: Option<Channel>,
    #[serde(default)]
    pub response_url: String,
    #[serde(default)]
    pub actions: Vec<Action>,
}

#[derive(Deserialize)]
pub struct User {
    pub id: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub team_id: String,
}

#[derive(Deserialize)]
pub struct Team {
    pub id: String,
}

#[derive(Deserialize)]
pub struct Channel {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Deserialize)]
pub struct Action {
    pub action_id: String,
    #[serde(default)]
    pub value: String,
}

impl BlockActions {
    /// Reads the form body Slack posts: one field, `payload`, holding the JSON.
    pub fn parse(body: &[u8]) -> Result<BlockActions, String> {
        let payload = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| v.into_owned())
            .ok_or("the body has no `payload` field; Slack sends interactions as `payload=JSON`")?;
        serde_json::from_str(&payload)
            .map_err(|e| format!("the `payload` is not an interaction Slack sends: {e}"))
    }

    /// The user's team: the payload's `team`, else the user's own.
    pub fn team_id(&self) -> &str {
        self.team
            .as_ref()
            .map_or(self.user.team_id.as_str(), |t| t.id.as_str())
    }

    /// Who, for the audit log.
    pub fn who(&self) -> String {
        let (id, name) = self
            .channel
            .as_ref()
            .map_or(("", ""), |c| (c.id.as_str(), c.name.as_str()));
        format!(
            "slack user `{}` (`{}`, team `{}`) in `#{name}` (`{id}`)",
            self.user.id,
            self.user.username,
            self.team_id()
        )
    }
}

/// What a button asks: a decision on the approval `step` of `run`.
#[derive(Debug, PartialEq)]
pub struct Click {
    pub run: String,
    pub step: String,
    pub decision: Choice,
}

impl Click {
    /// The click of one of the buttons [`question`] makes; `None` for any other action.
    pub fn of(action: &Action) -> Option<Click> {
        let decision = match action.action_id.as_str() {
            APPROVE => Choice::Approve,
            REJECT => Choice::Reject,
            _ => return None,
        };
        let (run, step) = action.value.split_once('/')?;
        (!run.is_empty() && !step.is_empty()).then(|| Click {
            run: run.to_owned(),
            step: step.to_owned(),
            decision,
        })
    }
}

/// The approval as Slack shows it: a section with the question, who may decide, how many
/// approvals it needs and until when, a line per vote, and the buttons while it is open.
/// `text` is the notification's fallback.
pub fn message(view: &ApprovalView) -> Value {
    let step = if view.step_name.is_empty() || view.step_name == view.step {
        format!("`{}`", escape(&view.step))
    } else {
        format!("`{}` ({})", escape(&view.step), escape(&view.step_name))
    };
    let approvals = view
        .votes
        .iter()
        .filter(|v| v.decision == Choice::Approve)
        .count();
    let headline = match view.outcome {
        None => format!("⏸ run `{}` waits for approval at {step}", view.run),
        Some(ApprovalOutcome::Approved) => {
            format!("✓ run `{}`: {step} was approved", view.run)
        }
        Some(ApprovalOutcome::Rejected) => {
            format!("✗ run `{}`: {step} was rejected", view.run)
        }
        Some(ApprovalOutcome::TimedOut) => {
            format!("✗ run `{}`: nobody decided {step} in time", view.run)
        }
        Some(ApprovalOutcome::Cancelled) => {
            format!("✗ run `{}` was cancelled at {step}", view.run)
        }
    };
    let mut lines = vec![headline, format!("> {}", escape(&view.message))];
    if view.outcome.is_none() {
        let who = escape(&shiphat_protocol::approvers_in_words(
            &view.roles,
            &view.principals,
        ));
        let four_eyes = if view.allow_self {
            String::new()
        } else {
            format!(" (not `{}`, who started it)", escape(&view.started_by))
        };
        // Slack shows the deadline in each reader's time zone, and the fallback elsewhere.
        lines.push(format!(
            "who may decide: {who}{four_eyes}; {approvals} of {} approvals; until <!date^{}^{{date_short_pretty}} at {{time}}|{}>",
            view.required,
            view.deadline_ms / 1000,
            view.deadline
        ));
    }
    for vote in &view.votes {
        let (mark, word) = match vote.decision {
            Choice::Approve => ("✓", "approved"),
            Choice::Reject => ("✗", "rejected"),
        };
        let comment = if vote.comment.is_empty() {
            String::new()
        } else {
            format!(": {}", escape(&vote.comment))
        };
        lines.push(format!(
            "{mark} {word} by `{}`{comment}",
            escape(&vote.principal)
        ));
    }
    let text = lines.join("\n");
    let mut blocks = vec![json!({
        "type": "section",
        "text": { "type": "mrkdwn", "text": text },
    })];
    if view.outcome.is_none() {
        let value = format!("{}/{}", view.run, view.step);
        let button = |action: &str, label: &str, style: &str| {
            json!({
                "type": "button",
                "action_id": action,
                "text": { "type": "plain_text", "text": label },
                "style": style,
                "value": value,
            })
        };
        blocks.push(json!({
            "type": "actions",
            "block_id": format!("approval:{value}"),
            "elements": [
                button(APPROVE, "Approve", "primary"),
                button(REJECT, "Reject", "danger"),
            ],
        }));
    }
    json!({ "text": text, "blocks": blocks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shiphat_protocol::VoteView;

    fn view() -> ApprovalView {
        ApprovalView {
            run: "r1".into(),
            step: "decide".into(),
            step_name: "Keep it?".into(),
            message: "keep <!channel>?".into(),
            roles: vec!["deployer".into()],
            principals: vec![],
            required: 1,
            allow_self: false,
            started_by: "alice".into(),
            since: "2026-12-03T10:00:00Z".into(),
            deadline: "2026-12-03T11:00:00Z".into(),
            since_ms: 1_796_292_000_000,
            deadline_ms: 1_796_295_600_000,
            outcome: None,
            votes: vec![],
            you_may_approve: false,
            you_may_reject: true,
        }
    }

    #[test]
    fn an_open_approval_has_both_buttons_and_a_decided_one_none() {
        let open = message(&view());
        let text = open["text"].as_str().unwrap();
        assert!(text.contains("role `deployer` (not `alice`"), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        let buttons = &open["blocks"][1]["elements"];
        assert_eq!(buttons[0]["action_id"], APPROVE);
        assert_eq!(buttons[1]["action_id"], REJECT);
        assert_eq!(buttons[1]["value"], "r1/decide");
        let mut decided = view();
        decided.outcome = Some(ApprovalOutcome::Rejected);
        decided.votes.push(VoteView {
            principal: "bob".into(),
            decision: Choice::Reject,
            comment: "not today".into(),
            time: "t".into(),
        });
        let closed = message(&decided);
        assert_eq!(closed["blocks"].as_array().unwrap().len(), 1, "{closed}");
        assert!(
            closed["text"]
                .as_str()
                .unwrap()
                .contains("✗ rejected by `bob`: not today"),
            "{closed}"
        );
    }

    #[test]
    fn slacks_block_actions_payload_reads_as_a_click() {
        // The shape Slack documents for `block_actions` (api.slack.com/reference/interaction-payloads/block-actions),
        // with the fields this daemon does not read left in.
        let payload = json!({
            "type": "block_actions",
            "user": {"id": "U0CAROL", "username": "carol", "name": "carol", "team_id": "T0ACME"},
            "api_app_id": "A0SHIPHAT",
            "token": "x",
            "container": {"type": "message", "message_ts": "1.2", "channel_id": "C0DEV", "is_ephemeral": false},
            "trigger_id": "1.2.3",
            "team": {"id": "T0ACME", "domain": "acme"},
            "enterprise": null,
            "is_enterprise_install": false,
            "channel": {"id": "C0DEV", "name": "dev"},
            "message": {"type": "message", "ts": "1.2", "text": "t", "blocks": []},
            "state": {"values": {}},
            "response_url": "https://hooks.slack.com/actions/T0ACME/1/x",
            "actions": [{
                "action_id": "reject",
                "block_id": "approval:r1/decide",
                "text": {"type": "plain_text", "text": "Reject", "emoji": true},
                "value": "r1/decide",
                "style": "danger",
                "type": "button",
                "action_ts": "1.3"
            }]
        });
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let read = BlockActions::parse(body.as_bytes()).unwrap();
        assert_eq!(read.kind, "block_actions");
        assert_eq!(
            (read.user.id.as_str(), read.team_id()),
            ("U0CAROL", "T0ACME")
        );
        assert_eq!(
            read.response_url,
            "https://hooks.slack.com/actions/T0ACME/1/x"
        );
        assert_eq!(
            Click::of(&read.actions[0]),
            Some(Click {
                run: "r1".into(),
                step: "decide".into(),
                decision: Choice::Reject
            })
        );
        let err = BlockActions::parse(b"text=hello").err().unwrap();
        assert!(err.contains("no `payload`"), "{err}");
    }

    #[test]
    fn a_click_names_its_run_and_step() {
        let action = |id: &str, value: &str| Action {
            action_id: id.into(),
            value: value.into(),
        };
        assert_eq!(
            Click::of(&action(APPROVE, "r1/decide")),
            Some(Click {
                run: "r1".into(),
                step: "decide".into(),
                decision: Choice::Approve
            })
        );
        assert_eq!(Click::of(&action("other", "r1/decide")), None);
        assert_eq!(Click::of(&action(REJECT, "r1")), None);
    }
}
