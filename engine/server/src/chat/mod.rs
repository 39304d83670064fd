//! Chat deploys: Slack slash commands (`/deploy …`) at `POST /chat/slack/commands`, and the
//! Approve and Reject buttons of a waiting run at `POST /chat/slack/interactions`.
//!
//! Every request is verified first (Slack's v0 signature over the raw body, and the
//! timestamp); then the Slack user is mapped to a principal of the same model as API tokens,
//! the command is parsed, checked against its channel, and turned into the same operations of
//! [`Service`] that the HTTP API calls (roles, patterns, inputs and locks are the service's to
//! check), audited, and answered at once (ephemeral). A run it starts is followed to its end
//! and reported to the request's `response_url` (only Slack's host, or hosts the config
//! allows) and to the configured incoming webhooks. A command Slack retries never starts a second run: the run
//! is created with an idempotency key made of the team and the `trigger_id`, which the store
//! keeps, so the retry finds the first run even after a restart. A run it follows that comes
//! to an approval step posts the question with two buttons; a click is verified like a
//! command and decided through [`Service::decide`] as the clicker's principal, so the
//! four-eyes rule, the approvers and one vote per person are the service's.

mod approval;
mod command;
mod config;
mod reply;
mod verify;

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use shiphat_protocol::{Choice, CreateRun, ErrorBody, ListRuns, PutLock, RunStatus};
use shiphat_store::AuditEntry;

use crate::auth::Principal;
use crate::service::{self, Service};
pub use approval::message as question;
use command::Command;
pub use config::{RawSlack, SlackConfig};
pub use reply::post;

/// The slash commands' route, for the router and the audit log.
pub const PATH: &str = "/chat/slack/commands";
/// The route of Slack's interactivity requests (button clicks).
pub const INTERACTIONS_PATH: &str = "/chat/slack/interactions";
/// How many of an app's latest runs `/deploy status` looks through per environment.
const STATUS_RUNS: u32 = 100;

/// The fields of a slash command that matter here (Slack sends more).
#[derive(Default)]
struct Request {
    team_id: String,
    user_id: String,
    user_name: String,
    channel_id: String,
    channel_name: String,
    text: String,
    response_url: String,
    trigger_id: String,
}

impl Request {
    fn parse(body: &[u8]) -> Request {
        let mut r = Request::default();
        for (k, v) in form_urlencoded::parse(body) {
            let slot = match &*k {
                "team_id" => &mut r.team_id,
                "user_id" => &mut r.user_id,
                "user_name" => &mut r.user_name,
                "channel_id" => &mut r.channel_id,
                "channel_name" => &mut r.channel_name,
                "text" => &mut r.text,
                "response_url" => &mut r.response_url,
                "trigger_id" => &mut r.trigger_id,
                _ => continue,
            };
            *slot = v.into_owned();
        }
        r
    }

    /// Who, for the audit log.
    fn who(&self) -> String {
        format!(
            "slack user `{}` (`{}`, team `{}`) in `#{}` (`{}`)",
            self.user_id, self.user_name, self.team_id, self.channel_name, self.channel_id
        )
    }
}

/// What a command did: the answer to the caller, and what the audit log records.
struct Answer {
    text: String,
    target: String,
    outcome: String,
}

impl Answer {
    fn refused(target: impl Into<String>, why: String) -> Answer {
        Answer {
            outcome: format!("refused: {why}"),
            text: format!("✗ {why}"),
            target: target.into(),
        }
    }
}

/// Where a Slack request goes in the audit log: its route and the peer.
struct Audit<'a> {
    service: &'a Service,
    path: &'static str,
    remote: SocketAddr,
}

impl Audit<'_> {
    async fn record(
        &self,
        principal: Option<String>,
        status: StatusCode,
        target: String,
        outcome: String,
    ) {
        let entry = AuditEntry {
            at_ms: shiphat_store::now_ms(),
            principal,
            action: format!("POST {}", self.path),
            target,
            remote: self.remote.to_string(),
            status: status.as_u16(),
            outcome,
        };
        self.service.audit(entry).await
    }
}

fn error(status: StatusCode, message: String) -> Response {
    let error = ErrorBody {
        error: message,
        field: None,
        lock: None,
        run: None,
        window: None,
    };
    (status, Json(error)).into_response()
}

/// What every Slack request passes before anything is read from it: a `[slack]` section
/// (else 404), a body within the limit, and Slack's signature and timestamp over the raw body
/// (else 401, audited with no principal).
async fn verified(
    audit: &Audit<'_>,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(SlackConfig, Bytes), Response> {
    let Some(slack) = audit.service.slack().cloned() else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "Slack is not configured; add a `[slack]` section to shiphat.toml (docs/chat.md)"
                .into(),
        ));
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            audit
                .record(None, e.status(), String::new(), e.body_text())
                .await;
            return Err((e.status(), e.body_text()).into_response());
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = shiphat_store::now_ms() / 1000;
    if let Err(e) = verify::verify(
        slack.signing_secret.as_bytes(),
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        now,
    ) {
        let message = e.to_string();
        audit
            .record(
                None,
                StatusCode::UNAUTHORIZED,
                String::new(),
                message.clone(),
            )
            .await;
        return Err(error(StatusCode::UNAUTHORIZED, message));
    }
    Ok((slack, body))
}

/// The refusal of a Slack user no `[[slack.users]]` entry maps.
fn unknown_user(user: &str, team: &str) -> String {
    format!(
        "Slack user `{}` of team `{}` is not known to shiphat; an admin can add them under `[[slack.users]]`",
        reply::escape(user),
        reply::escape(team)
    )
}

/// `POST /chat/slack/commands`.
pub async fn slack_commands(
    State(service): State<Service>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let audit = Audit {
        service: &service,
        path: PATH,
        remote,
    };
    let (slack, body) = match verified(&audit, &headers, body).await {
        Ok(verified) => verified,
        Err(response) => return response,
    };
    let request = Request::parse(&body);
    let retry = headers
        .get("x-slack-retry-num")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let principal = slack.principal(&request.user_id, &request.team_id).cloned();
    let answer = match &principal {
        None => Answer::refused("", unknown_user(&request.user_id, &request.team_id)),
        Some(caller) => match command::parse(&request.text) {
            Err(usage) => Answer {
                text: usage,
                target: String::new(),
                outcome: "not a command".into(),
            },
            Ok(command) => run_command(&service, &slack, caller, &request, &body, command).await,
        },
    };
    let outcome = format!(
        "{}: `/deploy {}`{}: {}",
        request.who(),
        request.text,
        retry
            .map(|n| format!(" (Slack retry {n})"))
            .unwrap_or_default(),
        answer.outcome
    );
    audit
        .record(
            principal.map(|p| p.name),
            StatusCode::OK,
            answer.target,
            outcome,
        )
        .await;
    // Slack shows a non-200 answer as a failure of the app; refusals are answers too.
    Json(reply::ephemeral(&answer.text)).into_response()
}

/// `POST /chat/slack/interactions`: a click on an approval's Approve or Reject button. The
/// decision is the service's, as the caller's mapped principal; the answer is an empty 200
/// at once (Slack wants one within 3 s), and what the click did goes to the payload's
/// `response_url`: the message replaced by the approval as it now stands, or, for a refusal,
/// an ephemeral message to the person who clicked.
pub async fn slack_interactions(
    State(service): State<Service>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let audit = Audit {
        service: &service,
        path: INTERACTIONS_PATH,
        remote,
    };
    let (slack, body) = match verified(&audit, &headers, body).await {
        Ok(verified) => verified,
        Err(response) => return response,
    };
    let payload = match approval::BlockActions::parse(&body) {
        Ok(payload) => payload,
        Err(why) => {
            audit
                .record(None, StatusCode::BAD_REQUEST, String::new(), why.clone())
                .await;
            return error(StatusCode::BAD_REQUEST, why);
        }
    };
    let principal = slack
        .principal(&payload.user.id, payload.team_id())
        .cloned();
    let response_url = slack
        .response_url_allowed(&payload.response_url)
        .then(|| payload.response_url.clone());
    if response_url.is_none() {
        tracing::warn!(
            "not answering a Slack interaction at its `response_url`: its host and port are neither `{}:443` nor in `slack.response_hosts`",
            config::SLACK_RESPONSE_HOST
        );
    }
    // Slack sends one action per click; a payload that lists more (which only a holder of
    // the signing secret could make) is read for its first button, not for as many decisions
    // and posts as it names.
    let click = if payload.kind == "block_actions" {
        payload.actions.iter().find_map(approval::Click::of)
    } else {
        None
    };
    let Some(click) = click else {
        let outcome = format!(
            "{}: a `{}` interaction with no approval button: ignored",
            payload.who(),
            payload.kind
        );
        audit
            .record(
                principal.map(|p| p.name),
                StatusCode::OK,
                String::new(),
                outcome,
            )
            .await;
        return StatusCode::OK.into_response();
    };
    let (answer, post) = match &principal {
        None => {
            let why = unknown_user(&payload.user.id, payload.team_id());
            (Answer::refused(&click.run, why.clone()), refused_post(&why))
        }
        Some(caller) => {
            let request = shiphat_protocol::Decide {
                step: Some(click.step.clone()),
                decision: click.decision,
                comment: String::new(),
            };
            match service.decide(caller, &click.run, request).await {
                Ok(decided) => {
                    let mut post = approval::message(&decided.answer);
                    post["replace_original"] = json!(true);
                    post["response_type"] = json!("in_channel");
                    let answer = Answer {
                        text: String::new(),
                        target: click.run.clone(),
                        outcome: decided.outcome,
                    };
                    (answer, post)
                }
                Err(e) => {
                    let why = refusal(&e);
                    (Answer::refused(&click.run, why.clone()), refused_post(&why))
                }
            }
        }
    };
    let button = match click.decision {
        shiphat_protocol::Choice::Approve => approval::APPROVE,
        shiphat_protocol::Choice::Reject => approval::REJECT,
    };
    let outcome = format!(
        "{}: `{button}` button on `{}/{}`: {}",
        payload.who(),
        click.run,
        click.step,
        answer.outcome
    );
    audit
        .record(
            principal.as_ref().map(|p| p.name.clone()),
            StatusCode::OK,
            answer.target,
            outcome,
        )
        .await;
    if let Some(url) = response_url {
        tokio::spawn(reply::post(url, post));
    }
    StatusCode::OK.into_response()
}

/// A refusal of a click, for the person who clicked only; the message stays as it was.
fn refused_post(why: &str) -> Value {
    json!({
        "response_type": "ephemeral",
        "replace_original": false,
        "text": format!("✗ {why}"),
    })
}

/// A refusal of the service, as Slack text: its message, escaped, in words a Slack user acts
/// on where the API's would name an HTTP detail.
fn refusal(e: &service::Error) -> String {
    use reply::escape;
    use service::Error as E;
    match e {
        E::NoWorkflow(name) => format!(
            "the workflow `{}` is not loaded; check the daemon's workflows",
            escape(name)
        ),
        E::Busy { key, holder, .. } => format!(
            "`{}` is busy with run `{holder}` and does not queue",
            escape(key)
        ),
        // The API's hint on forcing names a request body; an admin forces through the API.
        E::Closed { message, .. } => escape(message),
        E::ShuttingDown => "the daemon is shutting down; try again in a minute".into(),
        E::TooManyQueued { principal, max } => format!(
            "`{}` has {max} runs queued already; wait for them or cancel some",
            escape(principal)
        ),
        E::Store(e) => format!(
            "cannot read or write the run history: {}",
            escape(&e.to_string())
        ),
        e => escape(&e.to_string()),
    }
}

async fn run_command(
    service: &Service,
    slack: &SlackConfig,
    caller: &Principal,
    request: &Request,
    body: &[u8],
    command: Command,
) -> Answer {
    use reply::escape;
    match command {
        Command::Help => Answer {
            text: command::USAGE.into(),
            target: String::new(),
            outcome: "help".into(),
        },
        Command::Status { app: name } => {
            status(service, slack, caller, request, name.as_deref()).await
        }
        Command::Deploy {
            app: name,
            git_ref,
            environment,
        } => {
            let target = match target(slack, &name, &environment) {
                Ok(t) => t,
                Err(why) => return Answer::refused(format!("{name}/{environment}"), why),
            };
            let label = format!(
                "deploy of `{}` to `{}`",
                escape(&name),
                escape(&environment)
            );
            let deploy = Deploy {
                app: &name,
                environment: &environment,
                workflow: &target.workflow,
                git_ref: git_ref.map(|r| (target.ref_input().to_owned(), r)),
            };
            start(service, slack, caller, request, body, deploy, label, false).await
        }
        Command::Rollback {
            app: name,
            environment,
        } => {
            let target = match target(slack, &name, &environment) {
                Ok(t) => t,
                Err(why) => return Answer::refused(format!("{name}/{environment}"), why),
            };
            let Some(workflow) = target.rollback else {
                return Answer::refused(
                    format!("{name}/{environment}"),
                    format!(
                        "`{}` has no rollback workflow for `{}`; set `rollback` under `[slack.apps.{}]`",
                        escape(&name),
                        escape(&environment),
                        escape(&name)
                    ),
                );
            };
            let label = format!(
                "rollback of `{}` in `{}`",
                escape(&name),
                escape(&environment)
            );
            let deploy = Deploy {
                app: &name,
                environment: &environment,
                workflow: &workflow,
                git_ref: None,
            };
            start(service, slack, caller, request, body, deploy, label, true).await
        }
        Command::Lock {
            app: name,
            environment,
            reason,
        } => {
            let key = match lock_key(service, slack, caller, request, &name, &environment) {
                Ok(key) => key,
                Err(why) => return Answer::refused(format!("{name}/{environment}"), why),
            };
            let lock = PutLock {
                reason: reason.clone(),
                owner: None,
                expires_in: None,
            };
            match service.put_lock(caller, &key, lock).await {
                Ok(_) => Answer {
                    text: format!(
                        "🔒 locked `{}` (`{}` in `{}`): {}",
                        escape(&key),
                        escape(&name),
                        escape(&environment),
                        escape(&reason)
                    ),
                    outcome: format!("locked: {reason}"),
                    target: key,
                },
                Err(e) => Answer::refused(key, refusal(&e)),
            }
        }
        Command::Why { run } => match service.run(caller, &run).await {
            Ok(detail) => Answer {
                text: shiphat_protocol::why(&detail)
                    .iter()
                    .map(|line| escape(line))
                    .collect::<Vec<_>>()
                    .join("\n"),
                outcome: "explained".into(),
                target: run,
            },
            Err(e) => Answer::refused(run, refusal(&e)),
        },
        Command::Decide {
            run,
            step,
            decision,
            comment,
        } => {
            let request = shiphat_protocol::Decide {
                step,
                decision,
                comment,
            };
            match service.decide(caller, &run, request).await {
                Ok(decided) => Answer {
                    text: format!(
                        "{} run `{}`: {}",
                        match decision {
                            Choice::Approve => "✓",
                            Choice::Reject => "✗",
                        },
                        escape(&run),
                        escape(&decided.outcome)
                    ),
                    outcome: decided.outcome,
                    target: run,
                },
                Err(e) => Answer::refused(run, refusal(&e)),
            }
        }
        Command::Unlock {
            app: name,
            environment,
        } => {
            let key = match lock_key(service, slack, caller, request, &name, &environment) {
                Ok(key) => key,
                Err(why) => return Answer::refused(format!("{name}/{environment}"), why),
            };
            match service.unlock(caller, &key).await {
                Ok(()) => Answer {
                    text: format!("🔓 unlocked `{}`", escape(&key)),
                    outcome: "unlocked".into(),
                    target: key,
                },
                Err(e) => Answer::refused(key, refusal(&e)),
            }
        }
    }
}

fn target(slack: &SlackConfig, app: &str, environment: &str) -> Result<config::Target, String> {
    use reply::escape;
    let list = |names: Vec<&String>| {
        names
            .iter()
            .map(|n| format!("`{}`", escape(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(envs) = slack.apps.get(app) else {
        return Err(format!(
            "unknown app `{}`; the apps are {}",
            escape(app),
            list(slack.apps.keys().collect())
        ));
    };
    envs.get(environment).cloned().ok_or_else(|| {
        format!(
            "`{}` has no environment `{}`; it deploys to {}",
            escape(app),
            escape(environment),
            list(envs.keys().collect())
        )
    })
}

/// Refuses a command in a channel its environment is not allowed from.
fn check_channel(slack: &SlackConfig, request: &Request, environment: &str) -> Result<(), String> {
    let Some(allowed) = slack.channels.get(environment) else {
        return Ok(());
    };
    if allowed
        .iter()
        .any(|c| *c == request.channel_id || c.trim_start_matches('#') == request.channel_name)
    {
        return Ok(());
    }
    Err(format!(
        "`{}` may be deployed only from {}; this is `#{}`",
        reply::escape(environment),
        allowed
            .iter()
            .map(|c| format!("`{}`", reply::escape(c)))
            .collect::<Vec<_>>()
            .join(", "),
        reply::escape(&request.channel_name)
    ))
}

/// What a command deploys: an app's workflow in an environment, at a ref (the input it fills,
/// and the ref) if one was given.
struct Deploy<'a> {
    app: &'a str,
    environment: &'a str,
    workflow: &'a str,
    git_ref: Option<(String, String)>,
}

impl Deploy<'_> {
    /// The run as the API would be asked for it: of the inputs the workflow declares, the
    /// environment, the app, the caller and the ref are filled in.
    fn request(
        &self,
        service: &Service,
        caller: &Principal,
        request: &Request,
    ) -> Result<CreateRun, String> {
        let workflow = service
            .workflow(caller, self.workflow)
            .map_err(|e| refusal(&e))?;
        let declares = |name: &str| workflow.inputs.iter().any(|i| i.name == name);
        let mut given = Map::new();
        if declares("environment") {
            given.insert("environment".into(), json!(self.environment));
        }
        if declares("app") {
            given.insert("app".into(), json!(self.app));
        }
        if declares("caller") {
            given.insert(
                "caller".into(),
                json!(format!("{} (slack {})", caller.name, request.user_id)),
            );
        }
        if let Some((input, r)) = &self.git_ref {
            if !declares(input) {
                return Err(format!(
                    "the workflow `{}` takes no `{}` input for `@REF`; deploy without `@REF`, or set `ref_input` for this app in the daemon's `[slack.apps]` config",
                    reply::escape(self.workflow),
                    reply::escape(input)
                ));
            }
            given.insert(input.clone(), json!(r));
        }
        Ok(CreateRun {
            workflow: self.workflow.to_owned(),
            inputs: given,
            dry_run: false,
            force: false,
        })
    }
}

/// The lock key of an app in an environment: the key runs of its workflow take (its
/// concurrency key, else the workflow's name), so an API run sees a chat lock and back.
fn lock_key(
    service: &Service,
    slack: &SlackConfig,
    caller: &Principal,
    request: &Request,
    name: &str,
    environment: &str,
) -> Result<String, String> {
    let target = target(slack, name, environment)?;
    check_channel(slack, request, environment)?;
    let deploy = Deploy {
        app: name,
        environment,
        workflow: &target.workflow,
        git_ref: None,
    };
    let run = deploy.request(service, caller, request)?;
    service.lock_key(caller, &run).map_err(|e| refusal(&e))
}

#[allow(
    clippy::too_many_arguments,
    reason = "two call sites, each naming every part"
)]
async fn start(
    service: &Service,
    slack: &SlackConfig,
    caller: &Principal,
    request: &Request,
    body: &[u8],
    deploy: Deploy<'_>,
    label: String,
    rollback: bool,
) -> Answer {
    use reply::escape;
    let target = format!("{}/{}", deploy.app, deploy.environment);
    if let Err(why) = check_channel(slack, request, deploy.environment) {
        return Answer::refused(target, why);
    }
    let run = match deploy.request(service, caller, request) {
        Ok(run) => run,
        Err(why) => return Answer::refused(target, why),
    };
    // Slack's retries repeat the body, and so its `trigger_id`; a body without one is keyed
    // by its hash.
    let idempotency = if request.trigger_id.is_empty() {
        hex::encode(Sha256::digest(body))
    } else {
        request.trigger_id.clone()
    };
    let key = format!("slack:{}:{idempotency}", request.team_id);
    let admitted = match service
        .admit(caller, run, Some(&key), shiphat_protocol::RunSource::Slack)
        .await
    {
        Ok(admitted) => admitted,
        Err(service::Error::Locked { lock, .. }) => {
            return Answer::refused(
                target,
                format!(
                    "`{}` is locked by `{}`: {}; `/deploy unlock {} in {}` lifts it",
                    escape(&lock.key),
                    escape(&lock.owner),
                    escape(&lock.reason),
                    escape(deploy.app),
                    escape(deploy.environment)
                ),
            );
        }
        Err(e) => return Answer::refused(target, refusal(&e)),
    };
    let run = admitted.accepted;
    if !run.created {
        return Answer {
            text: format!(
                "{label} was already started by this command as run `{}` ({})",
                run.id,
                run.status.as_str()
            ),
            target: run.id,
            outcome: "replayed: Slack retried the command".into(),
        };
    }
    let response_url = slack
        .response_url_allowed(&request.response_url)
        .then(|| request.response_url.clone());
    let mut text = format!(
        "started the {label} as run `{}`{}",
        run.id,
        match &admitted.waits_for_window {
            Some(opens) => format!(" (it waits for the deploy window: {opens})"),
            None if admitted.waiting => " (queued behind the run in progress)".to_owned(),
            None => String::new(),
        }
    );
    if response_url.is_none() && !request.response_url.is_empty() {
        tracing::warn!(
            "not posting to the `response_url` of run `{}`: its host and port are neither `{}:443` nor in `slack.response_hosts`",
            run.id,
            config::SLACK_RESPONSE_HOST
        );
        text.push_str(
            "; progress will not be posted here (the `response_url` host and port are not allowed)",
        );
    }
    tokio::spawn(reply::follow(
        service.follow_admitted(&run.id),
        reply::Follow {
            service: service.clone(),
            caller: caller.clone(),
            run_id: run.id.clone(),
            label,
            rollback,
            response_url,
            webhooks: slack.webhooks.clone(),
        },
    ));
    Answer {
        text,
        target: run.id,
        outcome: "accepted".into(),
    }
}

/// `/deploy status [APP]`: per app and environment, what runs, what waits, what was last
/// deployed, and any lock.
async fn status(
    service: &Service,
    slack: &SlackConfig,
    caller: &Principal,
    request: &Request,
    only: Option<&str>,
) -> Answer {
    use reply::escape;
    if let Some(name) = only
        && !slack.apps.contains_key(name)
    {
        return Answer::refused(name, format!("unknown app `{}`", escape(name)));
    }
    let mut lines = Vec::new();
    for (name, envs) in &slack.apps {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        for (environment, target) in envs {
            let query = ListRuns {
                workflow: Some(target.workflow.clone()),
                status: None,
                before: None,
                limit: Some(STATUS_RUNS),
                for_me: None,
            };
            let runs = match service.runs(caller, query).await {
                Ok(list) => list.runs,
                Err(e) => return Answer::refused(name.clone(), refusal(&e)),
            };
            let here: Vec<_> = runs
                .iter()
                .filter(|r| r.environment.as_deref().is_none_or(|e| e == environment))
                .collect();
            let mut parts = Vec::new();
            if let Some(r) = here.iter().find(|r| r.status == RunStatus::Running) {
                parts.push(format!("running `{}` by `{}`", r.id, escape(&r.principal)));
            }
            for r in here.iter().filter(|r| r.status == RunStatus::Waiting) {
                parts.push(format!(
                    "⏸ `{}` by `{}` waits for approval (`/deploy approve {}`)",
                    r.id,
                    escape(&r.principal),
                    r.id
                ));
            }
            let queued = here
                .iter()
                .filter(|r| r.status == RunStatus::Queued)
                .count();
            if queued > 0 {
                parts.push(format!("{queued} queued"));
            }
            match here.iter().find(|r| r.status == RunStatus::Succeeded) {
                Some(r) => {
                    let ago = (shiphat_store::now_ms() - r.finished_ms.unwrap_or(r.created_ms))
                        .max(0)
                        / 1000;
                    let git_ref = r
                        .inputs
                        .get("ref")
                        .and_then(Value::as_str)
                        .map(|r| format!(" at `{}`", escape(r)))
                        .unwrap_or_default();
                    parts.push(format!(
                        "last deployed{git_ref} by `{}` {} ago (run `{}`)",
                        escape(&r.principal),
                        humantime::format_duration(std::time::Duration::from_secs(ago as u64)),
                        r.id
                    ));
                }
                None => parts.push("never deployed".into()),
            }
            let deploy = Deploy {
                app: name,
                environment,
                workflow: &target.workflow,
                git_ref: None,
            };
            let key = deploy
                .request(service, caller, request)
                .ok()
                .and_then(|run| service.lock_key(caller, &run).ok())
                .unwrap_or_else(|| target.workflow.clone());
            if let Ok(lock) = service.lock(caller, &key).await {
                parts.push(format!(
                    "🔒 locked by `{}`: {}",
                    escape(&lock.owner),
                    escape(&lock.reason)
                ));
            }
            if let Ok(Some(window)) = service.window(caller, &target.workflow, &key) {
                parts.push(window_words(&window));
            }
            lines.push(format!(
                "`{}` in `{}`: {}",
                escape(name),
                escape(environment),
                parts.join("; ")
            ));
        }
    }
    if lines.is_empty() {
        lines.push("no apps are configured under `[slack.apps]`".into());
    }
    Answer {
        text: lines.join("\n"),
        target: only.unwrap_or("").to_owned(),
        outcome: "status".into(),
    }
}

/// A deploy window's state in `/deploy status`: open until when, or closed, why and until when.
fn window_words(window: &shiphat_protocol::WindowView) -> String {
    use reply::escape;
    let next = window.next_change_local.as_deref().map(escape);
    match (window.open, next) {
        (true, Some(at)) => format!("deploy window open until {at}"),
        (true, None) => "deploy window open".into(),
        (false, next) => format!(
            "⛔ closed: {}{}",
            escape(
                window
                    .reason
                    .as_deref()
                    .unwrap_or("outside its deploy windows")
            ),
            next.map(|at| format!("; opens at {at}"))
                .unwrap_or_default()
        ),
    }
}

/// What a mapped workflow cannot take from `/deploy APP[@REF] to ENV`, one sentence per
/// problem, for the daemon to warn about when it loads its config and workflows: a missing
/// `ref_input`, or a required input that Slack never fills.
pub fn check_targets(slack: &SlackConfig, workflows: &crate::workflows::Workflows) -> Vec<String> {
    let mut problems = Vec::new();
    for (app, envs) in &slack.apps {
        for (env, target) in envs {
            let Some(workflow) = workflows.get(&target.workflow) else {
                problems.push(format!(
                    "slack app `{app}` in `{env}`: the workflow `{}` is not loaded",
                    target.workflow
                ));
                continue;
            };
            let inputs = &workflow.inputs;
            if let Some(ref_input) = &target.ref_input
                && !inputs.iter().any(|i| &i.name == ref_input)
            {
                problems.push(format!(
                    "slack app `{app}` in `{env}`: the workflow `{}` has no input `{ref_input}` (its `ref_input`), so `/deploy {app}@REF` will be refused",
                    target.workflow
                ));
            }
            let filled = ["environment", "app", "caller", target.ref_input()];
            for input in inputs {
                if input.required
                    && input.default.is_none()
                    && !filled.contains(&input.name.as_str())
                {
                    problems.push(format!(
                        "slack app `{app}` in `{env}`: the workflow `{}` requires the input `{}`, which a slash command never gives; give it a default, or set `ref_input = \"{}\"` if `@REF` should fill it",
                        target.workflow, input.name, input.name
                    ));
                }
            }
        }
    }
    problems
}
