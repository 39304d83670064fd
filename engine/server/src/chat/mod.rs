//! Chat deploys: Slack slash commands (`/deploy …`) at `POST /chat/slack/commands`.
//!
//! Every request is verified first (Slack's v0 signature over the raw body, and the
//! timestamp); then the Slack user is mapped to a principal of the same model as API tokens,
//! the command is parsed, checked against roles, patterns, channels and locks, audited, and
//! answered at once (ephemeral). A run it starts is followed to its end and reported to the
//! request's `response_url` (only Slack's host, or hosts the config allows) and to the
//! configured incoming webhooks. A command Slack retries never starts a second run: the run
//! is created with an idempotency key made of the team and the `trigger_id`, which the store
//! keeps, so the retry finds the first run even after a restart.

mod command;
mod config;
mod reply;
mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use shiphat_store::{AuditEntry, Lock, NewRun, RunFilter, RunStatus};

use crate::auth::{Principal, Role};
use crate::scheduler::{App, Refused, input_texts};
use command::Command;
pub use config::{RawSlack, SlackConfig};

/// The route's path, for the router and the audit log.
pub const PATH: &str = "/chat/slack/commands";
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

/// `POST /chat/slack/commands`.
pub async fn slack_commands(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Some(slack) = app.config.slack.clone() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Slack commands are not configured; add a `[slack]` section to shiphat.toml (docs/chat.md)", "field": null})),
        )
            .into_response();
    };
    let audit = |principal: Option<String>, status: StatusCode, target: String, outcome: String| {
        let entry = AuditEntry {
            at_ms: shiphat_store::now_ms(),
            principal,
            action: format!("POST {PATH}"),
            target,
            remote: remote.to_string(),
            status: status.as_u16(),
            outcome,
        };
        app.audit(entry)
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            audit(None, e.status(), String::new(), e.body_text()).await;
            return (e.status(), e.body_text()).into_response();
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
        audit(
            None,
            StatusCode::UNAUTHORIZED,
            String::new(),
            message.clone(),
        )
        .await;
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": message, "field": null })),
        )
            .into_response();
    }
    let request = Request::parse(&body);
    let retry = header("x-slack-retry-num").map(str::to_owned);
    let principal = slack.principal(&request.user_id, &request.team_id).cloned();
    let answer = match &principal {
        None => Answer::refused(
            "",
            format!(
                "Slack user `{}` of team `{}` is not known to shiphat; an admin can add them under `[[slack.users]]`",
                reply::escape(&request.user_id),
                reply::escape(&request.team_id)
            ),
        ),
        Some(caller) => match command::parse(&request.text) {
            Err(usage) => Answer {
                text: usage,
                target: String::new(),
                outcome: "not a command".into(),
            },
            Ok(command) => run_command(&app, &slack, caller, &request, &body, command).await,
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
    audit(
        principal.map(|p| p.name),
        StatusCode::OK,
        answer.target,
        outcome,
    )
    .await;
    // Slack shows a non-200 answer as a failure of the app; refusals are answers too.
    Json(reply::ephemeral(&answer.text)).into_response()
}

async fn run_command(
    app: &Arc<App>,
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
        Command::Status { app: name } => status(app, slack, caller, request, name.as_deref()).await,
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
            start(
                app,
                slack,
                caller,
                request,
                body,
                &name,
                &environment,
                &target.workflow,
                git_ref.map(|r| (target.ref_input().to_owned(), r)),
                label,
                false,
            )
            .await
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
            start(
                app,
                slack,
                caller,
                request,
                body,
                &name,
                &environment,
                &workflow,
                None,
                label,
                true,
            )
            .await
        }
        Command::Lock {
            app: name,
            environment,
            reason,
        } => {
            let key = match lock_key(app, slack, caller, request, &name, &environment) {
                Ok(key) => key,
                Err(why) => return Answer::refused(format!("{name}/{environment}"), why),
            };
            let lock = Lock {
                key: key.clone(),
                owner: caller.name.clone(),
                reason: reason.clone(),
                created_ms: shiphat_store::now_ms(),
                expires_ms: None,
            };
            if let Err(e) = app.store.put_lock(&lock).await {
                return Answer::refused(key, format!("cannot write the lock: {e}"));
            }
            Answer {
                text: format!(
                    "🔒 locked `{}` (`{}` in `{}`): {}",
                    escape(&key),
                    escape(&name),
                    escape(&environment),
                    escape(&reason)
                ),
                outcome: format!("locked: {reason}"),
                target: key,
            }
        }
        Command::Unlock {
            app: name,
            environment,
        } => {
            let key = match lock_key(app, slack, caller, request, &name, &environment) {
                Ok(key) => key,
                Err(why) => return Answer::refused(format!("{name}/{environment}"), why),
            };
            match app.unlock(&key).await {
                Ok(true) => Answer {
                    text: format!("🔓 unlocked `{}`", escape(&key)),
                    outcome: "unlocked".into(),
                    target: key,
                },
                Ok(false) => {
                    Answer::refused(key.clone(), format!("`{}` is not locked", escape(&key)))
                }
                Err(e) => Answer::refused(key, format!("cannot remove the lock: {e}")),
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

/// A run as it would be requested: its inputs and concurrency key.
struct Planned {
    inputs: Map<String, Value>,
    key: Option<String>,
    run_id: String,
}

/// Resolves the inputs the workflow declares out of the environment, the ref and the caller,
/// and evaluates its concurrency key, as `POST /api/v1/runs` would.
fn plan(
    app: &App,
    workflow_name: &str,
    environment: &str,
    git_ref: Option<(String, String)>,
    request: &Request,
    caller: &Principal,
    app_name: &str,
) -> Result<(Arc<shiphat_runner::Prepared>, Planned), String> {
    let Some(prepared) = app.workflows.get(workflow_name) else {
        return Err(format!(
            "the workflow `{}` is not loaded; check the daemon's workflows",
            reply::escape(workflow_name)
        ));
    };
    let workflow = &prepared.workflow;
    let declares = |name: &str| workflow.inputs.iter().any(|i| i.name == name);
    let mut given = Map::new();
    if declares("environment") {
        given.insert("environment".into(), json!(environment));
    }
    if declares("app") {
        given.insert("app".into(), json!(app_name));
    }
    if declares("caller") {
        given.insert(
            "caller".into(),
            json!(format!("{} (slack {})", caller.name, request.user_id)),
        );
    }
    if let Some((input, r)) = git_ref {
        if !declares(&input) {
            return Err(format!(
                "the workflow `{}` takes no `{}` input for `@REF`; deploy without `@REF`, or set `ref_input` for this app in the daemon's `[slack.apps]` config",
                reply::escape(workflow_name),
                reply::escape(&input)
            ));
        }
        given.insert(input, json!(r));
    }
    let inputs = input_texts(workflow, &given)
        .and_then(|texts| workflow.resolve_inputs(&texts))
        .map_err(|problems| reply::escape(&problems.join("; ")))?;
    let run_id = shiphat_runner::new_run_id();
    let key = workflow.concurrency_key(&inputs, &run_id).map_err(|e| {
        format!(
            "cannot evaluate the workflow's `concurrency`: {}",
            reply::escape(&e.to_string())
        )
    })?;
    Ok((
        prepared,
        Planned {
            inputs,
            key,
            run_id,
        },
    ))
}

/// The lock key of an app in an environment: the key runs of its workflow take (its
/// concurrency key, else the workflow's name), so an API run sees a chat lock and back.
fn lock_key(
    app: &App,
    slack: &SlackConfig,
    caller: &Principal,
    request: &Request,
    name: &str,
    environment: &str,
) -> Result<String, String> {
    let target = target(slack, name, environment)?;
    caller.require(Role::Admin)?;
    check_channel(slack, request, environment)?;
    let (_, planned) = plan(
        app,
        &target.workflow,
        environment,
        None,
        request,
        caller,
        name,
    )?;
    Ok(planned.key.unwrap_or(target.workflow))
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site per command, each naming every part"
)]
async fn start(
    app: &Arc<App>,
    slack: &SlackConfig,
    caller: &Principal,
    request: &Request,
    body: &[u8],
    name: &str,
    environment: &str,
    workflow: &str,
    git_ref: Option<(String, String)>,
    label: String,
    rollback: bool,
) -> Answer {
    use reply::escape;
    let target = format!("{name}/{environment}");
    if let Err(why) = caller.may_run(workflow, Some(environment)) {
        return Answer::refused(target, why);
    }
    if let Err(why) = check_channel(slack, request, environment) {
        return Answer::refused(target, why);
    }
    let (prepared, planned) = match plan(app, workflow, environment, git_ref, request, caller, name)
    {
        Ok(p) => p,
        Err(why) => return Answer::refused(target, why),
    };
    for lock_key in planned.key.iter().map(String::as_str).chain([workflow]) {
        match app.store.lock(lock_key).await {
            Ok(None) => {}
            Ok(Some(lock)) => {
                return Answer::refused(
                    target,
                    format!(
                        "`{}` is locked by `{}`: {}; `/deploy unlock {} in {}` lifts it",
                        escape(&lock.key),
                        escape(&lock.owner),
                        escape(&lock.reason),
                        escape(name),
                        escape(environment)
                    ),
                );
            }
            Err(e) => return Answer::refused(target, format!("cannot read the locks: {e}")),
        }
    }
    // Slack's retries repeat the body, and so its `trigger_id`; a body without one is keyed
    // by its hash.
    let idempotency = if request.trigger_id.is_empty() {
        hex::encode(Sha256::digest(body))
    } else {
        request.trigger_id.clone()
    };
    let new = NewRun {
        id: planned.run_id,
        workflow: workflow.to_owned(),
        inputs: Value::Object(planned.inputs),
        principal: caller.name.clone(),
        dry_run: false,
        concurrency_key: planned.key,
        idempotency_key: Some(format!("slack:{}:{idempotency}", request.team_id)),
    };
    let queue = prepared
        .workflow
        .concurrency
        .as_ref()
        .is_none_or(|c| c.queue);
    let (run, created) = match app.submit(new, queue, false).await {
        Ok(r) => r,
        Err(Refused::Busy { key, holder }) => {
            return Answer::refused(
                target,
                format!(
                    "`{}` is busy with run `{holder}` and does not queue",
                    escape(&key)
                ),
            );
        }
        Err(Refused::ShuttingDown) => {
            return Answer::refused(
                target,
                "the daemon is shutting down; try again in a minute".into(),
            );
        }
        Err(Refused::TooManyQueued { principal, max }) => {
            return Answer::refused(
                target,
                format!(
                    "`{}` has {max} runs queued already; wait for them or cancel some",
                    escape(&principal)
                ),
            );
        }
        Err(Refused::Store(e)) => {
            return Answer::refused(target, format!("cannot record the run: {e}"));
        }
    };
    if !created {
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
        if run.status == RunStatus::Queued && app.waiting_on(&run.id).is_some() {
            " (queued behind the run in progress)"
        } else {
            ""
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
        app.clone(),
        reply::Follow {
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
    app: &App,
    slack: &SlackConfig,
    caller: &Principal,
    request: &Request,
    only: Option<&str>,
) -> Answer {
    use reply::escape;
    if let Err(why) = caller.require(Role::Viewer) {
        return Answer::refused("", why);
    }
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
            let runs = match app
                .store
                .list_runs(&RunFilter {
                    workflow: Some(target.workflow.clone()),
                    status: None,
                    before: None,
                    limit: STATUS_RUNS,
                })
                .await
            {
                Ok(runs) => runs,
                Err(e) => return Answer::refused(name.clone(), format!("cannot read runs: {e}")),
            };
            let here: Vec<_> = runs
                .iter()
                .filter(|r| {
                    r.inputs
                        .get("environment")
                        .and_then(Value::as_str)
                        .is_none_or(|e| e == environment)
                })
                .collect();
            let mut parts = Vec::new();
            if let Some(r) = here.iter().find(|r| r.status == RunStatus::Running) {
                parts.push(format!("running `{}` by `{}`", r.id, escape(&r.principal)));
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
            let key = plan(
                app,
                &target.workflow,
                environment,
                None,
                request,
                caller,
                name,
            )
            .ok()
            .and_then(|(_, planned)| planned.key)
            .unwrap_or_else(|| target.workflow.clone());
            if let Ok(Some(lock)) = app.store.lock(&key).await {
                parts.push(format!(
                    "🔒 locked by `{}`: {}",
                    escape(&lock.owner),
                    escape(&lock.reason)
                ));
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

/// What a mapped workflow cannot take from `/deploy APP[@REF] to ENV`, one sentence per
/// problem, for the daemon to warn about when it loads its config and workflows: a missing
/// `ref_input`, or a required input that Slack never fills.
pub fn check_targets(slack: &SlackConfig, workflows: &crate::workflows::Workflows) -> Vec<String> {
    let mut problems = Vec::new();
    for (app, envs) in &slack.apps {
        for (env, target) in envs {
            let Some(prepared) = workflows.get(&target.workflow) else {
                problems.push(format!(
                    "slack app `{app}` in `{env}`: the workflow `{}` is not loaded",
                    target.workflow
                ));
                continue;
            };
            let inputs = &prepared.workflow.inputs;
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
