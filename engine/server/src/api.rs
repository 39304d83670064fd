//! The HTTP API: routes, authentication, the audit of every mutating call, JSON errors.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::Value;
use shiphat_protocol::{
    Accepted, AuditLog, AuditView, Cancelling, ConcurrencyView, CreateRun, CreateToken, ErrorBody,
    Event, InputType, InputView, ListRuns, LockList, LockView, LogLine, NewToken, PlanStep,
    PutLock, ResumeMode, ResumeRun, Resumed, Rollback, RunDetail, RunList, RunNotice, RunStatus,
    RunView, Section, SessionView, SignIn, StepName, StepView, TokenList, TokenSource, TokenView,
    WorkflowList, WorkflowView,
};
use shiphat_store::{AuditEntry, Lock, NewRun, Run, RunFilter, TokenRecord, rfc3339};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::auth::{Principal, Role, token_hash};
use crate::scheduler::{App, Refused, input_texts};

/// The OpenAPI document, maintained by hand next to the routes; a test checks that every
/// route below is in it, and the integration tests call every operation it lists.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route, as `(method, path)`, for the OpenAPI check.
#[cfg(test)]
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/runs"),
    ("get", "/api/v1/runs"),
    ("get", "/api/v1/runs/{id}"),
    ("get", "/api/v1/runs/{id}/events"),
    ("post", "/api/v1/runs/{id}/cancel"),
    ("post", "/api/v1/runs/{id}/resume"),
    ("get", "/api/v1/workflows"),
    ("get", "/api/v1/locks"),
    ("get", "/api/v1/locks/{key}"),
    ("put", "/api/v1/locks/{key}"),
    ("delete", "/api/v1/locks/{key}"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/tokens"),
    ("post", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{name}"),
    ("post", "/api/v1/session"),
    ("get", "/api/v1/session"),
    ("delete", "/api/v1/session"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/environments"),
    ("post", crate::chat::PATH),
];

/// The most runs one page of `GET /api/v1/runs` returns: enough for a screen, bounded so a
/// list never costs more than a few milliseconds.
const MAX_PAGE: u32 = 500;
/// The longest `Idempotency-Key` taken, as Stripe's API: room for any UUID or hash, and a key
/// stored with every run cannot be used to fill the disk.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// How many stored events an event stream reads per query while catching up.
const EVENT_BATCH: u32 = 512;
/// How long an event stream waits for a wake-up before looking at the store anyway: a
/// safety net against a missed notification, not the normal path.
const STREAM_POLL: Duration = Duration::from_secs(1);
/// The most event streams (`/runs/{id}/events` and `/events` together) one principal holds
/// open. A person's page holds two (the runs list and a run), a CLI one per `runs logs`; a
/// few tabs and terminals stay well under this, and a script that opens streams without end
/// cannot hold a task, a store reader and a socket each for ever.
const MAX_STREAMS_PER_PRINCIPAL: usize = 32;

/// Holds one of the caller's event streams, or refuses with 429.
fn take_stream(app: &App, caller: &Principal) -> ApiResult<crate::limits::Hold> {
    app.streams
        .take(&caller.name, MAX_STREAMS_PER_PRINCIPAL)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "`{}` holds {MAX_STREAMS_PER_PRINCIPAL} event streams open already; close one first",
                    caller.name
                ),
            )
        })
}

pub fn router(app: Arc<App>, stop: CancellationToken) -> Router {
    let api = Router::new()
        .route("/runs", post(create_run).get(list_runs))
        .route("/runs/{id}", get(show_run))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/resume", post(resume_run))
        .route("/workflows", get(list_workflows))
        .route("/locks", get(list_locks))
        .route(
            "/locks/{key}",
            get(get_lock).put(put_lock).delete(delete_lock),
        )
        .route("/audit", get(audit_log))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}", axum::routing::delete(delete_token))
        .route("/session", post(sign_in).get(show_session).delete(sign_out))
        .route("/events", get(all_events))
        .route("/environments", get(list_environments))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/", get(|| async { crate::web::asset("index.html") }))
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>| async move { crate::web::asset(&name) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route(crate::chat::PATH, post(crate::chat::slack_commands))
        .nest("/api/v1", api)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(app.config.max_body_bytes))
        .layer(axum::Extension(Stop(stop)))
        .with_state(app)
}

/// A route called with a method it does not take: the same JSON error as any other, beside
/// the `Allow` header axum adds.
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("this route does not take `{method}`; the `Allow` header lists what it takes"),
    )
}

#[derive(Clone)]
struct Stop(CancellationToken);

/// A JSON error: `{"error": "...", "field": "..."}` ([`ErrorBody`]).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// Boxed to keep `Result<_, ApiError>` small.
    body: Box<ErrorBody>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                error: message.into(),
                field: None,
                lock: None,
                run: None,
            }),
        }
    }

    /// A 400 about one field of the request.
    fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message).on(field)
    }

    /// The same error, about `field`.
    fn on(mut self, field: &str) -> ApiError {
        self.body.field = Some(field.to_owned());
        self
    }

    fn forbidden(message: String) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!("{e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    }
}

impl From<shiphat_store::Error> for ApiError {
    fn from(e: shiphat_store::Error) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(&*self.body)).into_response();
        response.extensions_mut().insert(Outcome(self.body.error));
        response
    }
}

/// What the audit log says about a call, set by handlers on their response.
#[derive(Clone)]
struct Outcome(String);

/// What the audit log names as the call's object, set by handlers on their response.
#[derive(Clone)]
struct Target(String);

type ApiResult<T = Response> = Result<T, ApiError>;

/// Identifies the caller from `Authorization: Bearer TOKEN` (by the token's SHA-256), then
/// writes every mutating call to the audit log with its outcome.
async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(token_hash);
    // A browser has no bearer token: its session cookie stands for the token it signed in
    // with. A bearer token wins when both are sent.
    let session = match bearer {
        Some(_) => None,
        None => app.sessions.find(request.headers()),
    };
    let hash = bearer.or_else(|| session.as_ref().map(|s| s.token_hash.clone()));
    let principal = match hash {
        None => None,
        Some(hash) => match principal_for(&app, &hash).await {
            Ok(p) => p,
            Err(e) => return ApiError::internal(e).into_response(),
        },
    };
    let mutating = !matches!(*request.method(), Method::GET | Method::HEAD);
    // Inside `nest` the URI has lost its `/api/v1` prefix; the audit names the full path.
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.path().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    let action = format!("{} {path}", request.method());
    let who = principal.as_ref().map(|p| p.name.clone());
    // Signing in is the one call made without a principal: it checks its own token.
    let signing_in = *request.method() == Method::POST && path == "/api/v1/session";
    // A cookie is sent with any request to this origin, a forged one included; the CSRF
    // token, which only the page can read, is what shows the page made the call.
    let forged = mutating
        && !signing_in
        && principal.is_some()
        && session
            .as_ref()
            .is_some_and(|s| !s.csrf_ok(request.headers()));
    let response = match principal {
        _ if forged => ApiError::forbidden(
            "a missing or wrong `X-CSRF-Token` header: the web page sends the token `GET /api/v1/session` returns; other clients use `Authorization: Bearer TOKEN`".to_owned(),
        )
        .into_response(),
        Some(p) => {
            request.extensions_mut().insert(p);
            next.run(request).await
        }
        None if signing_in => next.run(request).await,
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required: `Authorization: Bearer TOKEN` (create one with `shiphat token create`)",
        )
        .into_response(),
    };
    if mutating {
        let outcome = response
            .extensions()
            .get::<Outcome>()
            .map(|o| o.0.clone())
            .unwrap_or_else(|| {
                response
                    .status()
                    .canonical_reason()
                    .unwrap_or("")
                    .to_lowercase()
            });
        let target = response
            .extensions()
            .get::<Target>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        let entry = AuditEntry {
            at_ms: shiphat_store::now_ms(),
            principal: who,
            action,
            target,
            remote,
            status: response.status().as_u16(),
            outcome,
        };
        app.audit(entry).await;
    }
    response
}

/// Who a token's SHA-256 speaks for: a principal of the config file, or a token made by
/// `shiphat token create`.
async fn principal_for(app: &App, hash: &str) -> Result<Option<Principal>, shiphat_store::Error> {
    if let Some((_, p)) = app.config.principals.iter().find(|(h, _)| h == hash) {
        return Ok(Some(p.clone()));
    }
    let Some(t) = app.store.token(hash).await? else {
        return Ok(None);
    };
    // A token created beside a running daemon without its config file may carry the name of a
    // config principal; it speaks for no one rather than for that principal's runs.
    if app.config.principal_names().any(|n| n == t.name) {
        tracing::error!(
            "a database token is named `{}` like a principal of the config file; it is refused until one of them is renamed",
            t.name
        );
        return Ok(None);
    }
    Ok(Some(Principal {
        name: t.name,
        roles: t.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        patterns: t.patterns,
    }))
}

/// `POST /api/v1/session`: exchanges an API token for a session cookie and a CSRF token.
/// Only JSON is taken: a cross-site HTML form cannot send it without a CORS preflight, which
/// this daemon never grants, so nobody can sign a browser in behind its owner's back.
async fn sign_in(
    State(app): State<Arc<App>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    // Failed attempts count, per address, so one client's guesses never lock out another's.
    let address = remote.ip().to_string();
    if !app.sign_ins.has_budget(&address) {
        let mut refused = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many sign-ins from `{}`; wait {} s and try again",
                remote.ip(),
                crate::limits::SIGN_IN_EVERY.as_secs()
            ),
        )
        .into_response();
        refused.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(crate::limits::SIGN_IN_EVERY.as_secs()),
        );
        return Ok(refused);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the token as JSON: `Content-Type: application/json`, `{\"token\": \"...\"}`",
        ));
    }
    let SignIn { token } = parse_body(&body_bytes(body)?)?;
    let hash = token_hash(token.trim());
    let Some(principal) = principal_for(&app, &hash).await? else {
        app.sign_ins.allow(&address);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown token: paste a token from `shiphat token create` or your admin",
        )
        .on("token"));
    };
    // A browser signing in again (another token, say) leaves no older session behind.
    app.sessions.close(&headers);
    let Some((id, session)) = app.sessions.open(hash).map_err(ApiError::internal)? else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon holds as many sessions as it keeps; try again later, or use the API with `Authorization: Bearer TOKEN`",
        ));
    };
    let mut response = Json(session_json(&principal, &session.csrf)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        crate::web::set_cookie(Some(&id), &headers),
    );
    Ok(with_target(
        response,
        &principal.name,
        Some(format!("signed in as `{}`", principal.name)),
    ))
}

fn session_json(principal: &Principal, csrf: &str) -> SessionView {
    SessionView {
        principal: principal.name.clone(),
        roles: principal.roles.clone(),
        patterns: principal.patterns.clone(),
        csrf: csrf.to_owned(),
    }
}

/// `GET /api/v1/session`: who the browser is signed in as, with its CSRF token.
async fn show_session(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    headers: HeaderMap,
) -> ApiResult<Json<SessionView>> {
    let session = app.sessions.find(&headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no session: sign in with `POST /api/v1/session`",
        )
    })?;
    Ok(Json(session_json(&caller, &session.csrf)))
}

/// `DELETE /api/v1/session`: signs the browser out and clears its cookie.
async fn sign_out(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.sessions.close(&headers);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, crate::web::set_cookie(None, &headers));
    with_target(response, "", Some("signed out".into()))
}

/// `GET /api/v1/environments`: see [`crate::environments`].
async fn list_environments(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
) -> ApiResult<Json<shiphat_protocol::EnvironmentList>> {
    caller.require(Role::Viewer).map_err(ApiError::forbidden)?;
    Ok(Json(crate::environments::list(&app).await?))
}

/// How long `GET /api/v1/events` gathers changes before it sends them: a run's burst of log
/// lines becomes one notice per run, and a page refetches at most a few times a second.
const FEED_COALESCE: Duration = Duration::from_millis(200);

/// `GET /api/v1/events`: Server-Sent Events naming each run that changed (created, started,
/// a step or a log line, ended), as `event: run` with data `{"run": ID}`; `{"run": null}`
/// when notices were lost and everything should be read again. A list page listens here
/// instead of polling.
async fn all_events(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    axum::Extension(Stop(stop)): axum::Extension<Stop>,
) -> ApiResult<Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>>> {
    use tokio::sync::broadcast::error::RecvError;
    caller.require(Role::Viewer).map_err(ApiError::forbidden)?;
    let hold = take_stream(&app, &caller)?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut live = app.live.subscribe();
    tokio::spawn(async move {
        let _hold = hold;
        loop {
            let first = tokio::select! {
                r = live.recv() => r,
                () = stop.cancelled() => return,
                () = tx.closed() => return,
            };
            let mut changed: Vec<Option<Arc<str>>> = Vec::new();
            let mut note = |r: Result<Arc<str>, RecvError>| match r {
                Ok(id) => {
                    if !changed.iter().any(|c| c.as_ref() == Some(&id)) {
                        changed.push(Some(id));
                    }
                    true
                }
                Err(RecvError::Lagged(_)) => {
                    changed.push(None);
                    true
                }
                Err(RecvError::Closed) => false,
            };
            if !note(first) {
                return;
            }
            let window = tokio::time::sleep(FEED_COALESCE);
            tokio::pin!(window);
            loop {
                tokio::select! {
                    r = live.recv() => if !note(r) { return },
                    () = &mut window => break,
                }
            }
            if changed.contains(&None) {
                changed = vec![None];
            }
            for id in changed {
                let notice = RunNotice {
                    run: id.as_deref().map(str::to_owned),
                };
                let event = SseEvent::default()
                    .event("run")
                    .json_data(notice)
                    .expect("a notice always serialises");
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// The caller, as `authenticate` found them.
struct Caller(Principal);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "a bearer token is required"))
    }
}

/// A JSON object body as the request type `T` (one of `shiphat_protocol`'s), or a 400 that
/// names the field at fault. Only an object is taken: serde would read a struct from an
/// array too.
fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(refused)
}

/// A query string as the request type `T`, or a 400 that names the parameter at fault.
fn parse_query<T: DeserializeOwned>(query: Option<&str>) -> ApiResult<T> {
    let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(refused)
}

/// A request that does not deserialise, as a 400 naming the field: the first key of the
/// error's path, or the one serde names in "missing field `x`" and "unknown field `x`".
fn refused<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> ApiError {
    let message = e.inner().to_string();
    let named = |prefix: &str| {
        let rest = message.strip_prefix(prefix)?.strip_prefix(" `")?;
        rest.split('`').next().map(str::to_owned)
    };
    let field = e
        .path()
        .iter()
        .find_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(key.clone()),
            _ => None,
        })
        .or_else(|| named("missing field"))
        .or_else(|| named("unknown field"));
    match field {
        Some(field) if message.starts_with("missing field") => {
            ApiError::field(&field, format!("`{field}` is required"))
        }
        Some(field) if message.starts_with("unknown field") => ApiError::field(&field, message),
        Some(field) => ApiError::field(&field, format!("`{field}`: {message}")),
        None => ApiError::new(StatusCode::BAD_REQUEST, message),
    }
}

/// The body's bytes, or 413 when it is over the cap.
fn body_bytes(body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| ApiError::new(e.status(), e.body_text()))
}

fn with_target(mut response: Response, target: &str, outcome: Option<String>) -> Response {
    response.extensions_mut().insert(Target(target.to_owned()));
    if let Some(outcome) = outcome {
        response.extensions_mut().insert(Outcome(outcome));
    }
    response
}

pub(crate) fn run_view(app: &App, run: &Run) -> RunView {
    let (waiting_on, queue_position) = match app.waiting_on(&run.id) {
        Some((holder, position)) => (holder, Some(position as u64)),
        None => (None, None),
    };
    RunView {
        id: run.id.clone(),
        workflow: run.workflow.clone(),
        status: run.status,
        detail: run.detail.clone(),
        inputs: run.inputs.as_object().cloned().unwrap_or_default(),
        principal: run.principal.clone(),
        dry_run: run.dry_run,
        concurrency_key: run.concurrency_key.clone(),
        queue_position,
        waiting_on,
        environment: run
            .inputs
            .get("environment")
            .and_then(Value::as_str)
            .map(str::to_owned),
        created_at: rfc3339(run.created_ms),
        started_at: run.started_ms.map(rfc3339),
        finished_at: run.finished_ms.map(rfc3339),
        created_ms: run.created_ms,
        started_ms: run.started_ms,
        finished_ms: run.finished_ms,
        duration_ms: run
            .started_ms
            .zip(run.finished_ms)
            .map(|(s, f)| (f - s).max(0)),
    }
}

async fn create_run(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    // Who may not run anything hears so before anything about their body.
    caller
        .require(Role::Deployer)
        .map_err(ApiError::forbidden)?;
    let CreateRun {
        workflow: name,
        inputs: given,
        dry_run,
        force,
    } = parse_body(&body_bytes(body)?)?;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().map(str::trim) {
            Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Some(key.to_owned()),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "`Idempotency-Key` must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters, e.g. a UUID"
                    ),
                ));
            }
        },
    };
    let Some(prepared) = app.workflows.get(&name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no workflow named `{name}` is loaded"),
        )
        .on("workflow"));
    };
    let workflow = &prepared.workflow;
    let inputs = input_texts(workflow, &given)
        .and_then(|texts| workflow.resolve_inputs(&texts))
        .map_err(|problems| ApiError::field("inputs", problems.join("; ")))?;
    let environment = inputs.get("environment").and_then(Value::as_str);
    caller
        .may_run(&name, environment)
        .map_err(ApiError::forbidden)?;
    let id = shiphat_runner::new_run_id();
    let key = workflow
        .concurrency_key(&inputs, &id)
        .map_err(|e| ApiError::field("inputs", format!("cannot evaluate `concurrency`: {e}")))?;
    let mut outcome = "accepted".to_owned();
    let forced = match app.lock_on(key.as_deref(), &name).await? {
        None => false,
        Some(lock) => {
            pass_lock(&caller, &lock, force, "")?;
            outcome = format!(
                "accepted, forced past the lock on `{}` held by `{}`",
                lock.key, lock.owner
            );
            true
        }
    };
    let new_workflow = name.clone();
    let new_inputs = Value::Object(inputs);
    let new = NewRun {
        id,
        workflow: name.clone(),
        inputs: new_inputs.clone(),
        principal: caller.name.clone(),
        dry_run,
        concurrency_key: key,
        idempotency_key,
    };
    let queue = workflow.concurrency.as_ref().is_none_or(|c| c.queue);
    let (run, created) = match app.submit(new, queue, forced).await {
        Ok(r) => r,
        Err(Refused::Busy { key, holder }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "`{key}` is busy with run `{holder}` and `{name}` does not queue (`queue: false`)"
                ),
            ));
        }
        Err(Refused::ShuttingDown) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon is shutting down",
            ));
        }
        Err(Refused::TooManyQueued { principal, max }) => {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "`{principal}` has {max} runs queued already (`max_queued_per_principal`); wait for them or cancel some"
                ),
            ));
        }
        Err(Refused::Store(e)) => return Err(e.into()),
    };
    if !created {
        // The same key with another request is a client bug (a key reused for a different
        // deploy); answering with the first run would say this one was started.
        let same =
            run.workflow == new_workflow && run.inputs == new_inputs && run.dry_run == dry_run;
        if !same {
            let mut refused = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "this `Idempotency-Key` was used for run `{}` with another request (workflow, inputs or dry_run differ); use a new key for a new request",
                    run.id
                ),
            );
            refused.body.run = Some(run.id);
            return Err(refused);
        }
        outcome = "replayed by idempotency key".to_owned();
    }
    let accepted = Accepted {
        id: run.id.clone(),
        status: run.status,
        created,
    };
    let response = (StatusCode::ACCEPTED, Json(accepted)).into_response();
    Ok(with_target(response, &run.id, Some(outcome)))
}

async fn list_runs(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<RunList>> {
    caller.require(Role::Viewer).map_err(ApiError::forbidden)?;
    let query: ListRuns = parse_query(query.as_deref())?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("`limit` must be 1 to {MAX_PAGE}, not {limit}"),
        ));
    }
    let runs = app
        .store
        .list_runs(&RunFilter {
            workflow: query.workflow,
            status: query.status,
            before: query.before,
            limit,
        })
        .await?;
    let next = (runs.len() == limit as usize)
        .then(|| runs.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(RunList {
        runs: runs.iter().map(|r| run_view(&app, r)).collect(),
        next,
    }))
}

async fn find_run(app: &App, id: &str) -> ApiResult<Run> {
    app.store
        .run(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no run `{id}`")))
}

async fn show_run(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDetail>> {
    caller.require(Role::Viewer).map_err(ApiError::forbidden)?;
    let run = find_run(&app, &id).await?;
    // Each step's log lines, by step id; the run's own under "".
    let mut logs: std::collections::HashMap<String, Vec<LogLine>> = Default::default();
    let mut after = 0;
    loop {
        let batch = app.store.events(&id, after, EVENT_BATCH).await?;
        let Some(&(last, _)) = batch.last() else {
            break;
        };
        after = last;
        for (_, body) in batch {
            if let Ok(Event::Log {
                step,
                level,
                source,
                message,
                time,
                ..
            }) = serde_json::from_str(&body)
            {
                logs.entry(step).or_default().push(LogLine {
                    level,
                    source,
                    message,
                    time,
                });
            }
        }
    }
    let steps: Vec<StepView> = app
        .store
        .steps(&id)
        .await?
        .into_iter()
        .map(|s| StepView {
            logs: logs.remove(&s.step).unwrap_or_default(),
            id: s.step,
            section: s.section,
            status: s.status,
            attempts: s.attempts,
            started_at: s.started_ms.map(rfc3339),
            finished_at: s.finished_ms.map(rfc3339),
            started_ms: s.started_ms,
            finished_ms: s.finished_ms,
            duration_ms: s.duration_ms,
            summary: s.summary,
            outputs: s.outputs,
            error: s.error,
            continued: s.continued,
        })
        .collect();
    Ok(Json(RunDetail {
        run: run_view(&app, &run),
        plan: match app.workflows.get(&run.workflow) {
            Some(prepared) => plan(&prepared.workflow),
            None => Vec::new(),
        },
        rollback: Rollback::of(steps.iter().map(|s| (s.section, s.status))),
        steps,
        logs: logs.remove("").unwrap_or_default(),
    }))
}

/// Every step of `workflow` in order, with its section and plugin: what a run page shows
/// before the steps start.
fn plan(workflow: &shiphat_workflow::Workflow) -> Vec<PlanStep> {
    let sections = [
        (Section::Steps, &workflow.steps),
        (Section::OnFailure, &workflow.on_failure),
        (Section::Finally, &workflow.finally),
    ];
    sections
        .into_iter()
        .flat_map(|(section, steps)| steps.iter().map(move |s| (section, s)))
        .map(|(section, s)| {
            let uses = match &s.uses {
                shiphat_workflow::PluginRef::Name { name, .. } => name.clone(),
                shiphat_workflow::PluginRef::Path { path, .. } => path
                    .file_stem()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            PlanStep {
                id: s.id.clone(),
                name: s.name.clone(),
                section,
                uses,
            }
        })
        .collect()
}

/// The run's events as Server-Sent Events: first those stored (after `Last-Event-ID`), then
/// live ones as they are committed, until the run ends. Each event's `id` is its sequence
/// number, so a client that reconnects with `Last-Event-ID` misses nothing and sees nothing
/// twice. The data is exactly the JSON of `shiphat run --json`.
async fn run_events(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    axum::Extension(Stop(stop)): axum::Extension<Stop>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>>> {
    caller.require(Role::Viewer).map_err(ApiError::forbidden)?;
    find_run(&app, &id).await?;
    let mut after: i64 = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "`Last-Event-ID` must be an event id (a number)",
                )
            })?,
    };
    let hold = take_stream(&app, &caller)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut live = app.live.subscribe();
    tokio::spawn(async move {
        let _hold = hold;
        loop {
            // Read what is stored first: the store is the source of truth, the live channel
            // only says when to look again.
            let batch = match app.store.events(&id, after, EVENT_BATCH).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!("event stream of `{id}`: {e}");
                    return;
                }
            };
            let full = batch.len() == EVENT_BATCH as usize;
            for (seq, body) in batch {
                after = seq;
                let event = SseEvent::default().id(seq.to_string()).data(body);
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            let ended = match app.store.run(&id).await {
                Ok(Some(run)) => run.status.is_terminal(),
                _ => true,
            };
            if ended {
                // One last look: the final events are committed before the status changes.
                match app.store.events(&id, after, EVENT_BATCH).await {
                    Ok(rest) if !rest.is_empty() => continue,
                    _ => return,
                }
            }
            let wake = async {
                loop {
                    match live.recv().await {
                        Ok(run) if *run == *id => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            };
            tokio::select! {
                () = wake => {}
                () = tokio::time::sleep(STREAM_POLL) => {}
                () = stop.cancelled() => return,
                // A client gone while its run is quiet frees its stream at once.
                () = tx.closed() => return,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

async fn cancel_run(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let run = may_touch(&app, &caller, &id).await?;
    if !app.cancel(&run, &caller).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run `{id}` has already ended ({})", run.status.as_str()),
        ));
    }
    let cancelling = Cancelling {
        id: id.clone(),
        cancelling: true,
    };
    let response = (StatusCode::ACCEPTED, Json(cancelling)).into_response();
    let outcome = if run.principal == caller.name {
        "cancelled".to_owned()
    } else {
        format!("cancelled a run of `{}`", run.principal)
    };
    Ok(with_target(response, &id, Some(outcome)))
}

/// Queues an interrupted run again. Under a lock on its key or workflow it needs an admin's
/// `{"force": true}`, which the audit log records: a resume starts steps like a new run does.
async fn resume_run(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    // Who may not resume anything hears so before anything about their body.
    caller
        .require(Role::Deployer)
        .map_err(ApiError::forbidden)?;
    let body = body_bytes(body)?;
    let ResumeRun { force } = if body.iter().all(u8::is_ascii_whitespace) {
        ResumeRun::default()
    } else {
        parse_body(&body)?
    };
    let run = may_touch(&app, &caller, &id).await?;
    let lock = match run.status {
        RunStatus::Interrupted => {
            app.lock_on(run.concurrency_key.as_deref(), &run.workflow)
                .await?
        }
        _ => None,
    };
    if let Some(lock) = &lock {
        pass_lock(
            &caller,
            lock,
            force,
            "; an admin may resume it past the lock with `{\"force\": true}`",
        )?;
    }
    if !app.resume(&run, &caller, lock.as_ref()).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "run `{id}` is {}; only interrupted runs resume",
                run.status.as_str()
            ),
        ));
    }
    let resumed = Resumed {
        id: id.clone(),
        status: RunStatus::Queued,
    };
    let response = (StatusCode::ACCEPTED, Json(resumed)).into_response();
    let outcome = match &lock {
        None => "resumed".to_owned(),
        Some(lock) => format!(
            "resumed, forced past the lock on `{}` held by `{}`",
            lock.key, lock.owner
        ),
    };
    Ok(with_target(response, &id, Some(outcome)))
}

/// Whether `caller` may go past `lock`: only an admin, and only with `force`. The refusal is
/// 409 with the lock, or 403 for a `force` without the admin role.
fn pass_lock(caller: &Principal, lock: &Lock, force: bool, hint: &str) -> ApiResult<()> {
    if force {
        return caller
            .require(Role::Admin)
            .map_err(|e| ApiError::forbidden(format!("forcing past a lock: {e}")));
    }
    let mut refused = ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "`{}` is locked by `{}`: {}{hint}",
            lock.key, lock.owner, lock.reason
        ),
    );
    refused.body.lock = Some(lock_view(lock));
    Err(refused)
}

/// A deployer may cancel or resume its own runs; anyone else's needs an admin.
async fn may_touch(app: &App, caller: &Principal, id: &str) -> ApiResult<Run> {
    caller
        .require(Role::Deployer)
        .map_err(ApiError::forbidden)?;
    let run = find_run(app, id).await?;
    if run.principal != caller.name {
        caller.require(Role::Admin).map_err(|e| {
            ApiError::forbidden(format!("run `{id}` belongs to `{}`: {e}", run.principal))
        })?;
    }
    Ok(run)
}

async fn list_workflows(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
) -> ApiResult<Json<WorkflowList>> {
    caller.require(Role::Viewer).map_err(ApiError::forbidden)?;
    let workflows = app
        .workflows
        .all()
        .iter()
        .map(|p| {
            let w = &p.workflow;
            WorkflowView {
                name: w.name.clone(),
                description: w.description.clone(),
                file: w.file.display().to_string(),
                concurrency: w.concurrency.as_ref().map(|c| ConcurrencyView {
                    key: c.key.source().to_owned(),
                    queue: c.queue,
                }),
                resume: match w.resume {
                    shiphat_workflow::Resume::Auto => ResumeMode::Auto,
                    shiphat_workflow::Resume::Manual => ResumeMode::Manual,
                },
                inputs: w
                    .inputs
                    .iter()
                    .map(|i| InputView {
                        name: i.name.clone(),
                        description: i.description.clone(),
                        kind: match &i.kind {
                            shiphat_workflow::InputKind::String => InputType::String,
                            shiphat_workflow::InputKind::Number => InputType::Number,
                            shiphat_workflow::InputKind::Bool => InputType::Bool,
                            shiphat_workflow::InputKind::Choice(c) => InputType::Choice(c.clone()),
                        },
                        required: i.required,
                        default: i.default.clone(),
                    })
                    .collect(),
                steps: w
                    .all_steps()
                    .map(|s| StepName {
                        id: s.id.clone(),
                        name: s.name.clone(),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Json(WorkflowList { workflows }))
}

pub(crate) fn lock_view(lock: &Lock) -> LockView {
    LockView {
        key: lock.key.clone(),
        owner: lock.owner.clone(),
        reason: lock.reason.clone(),
        created_at: rfc3339(lock.created_ms),
        expires_at: lock.expires_ms.map(rfc3339),
    }
}

async fn list_locks(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
) -> ApiResult<Json<LockList>> {
    caller.require(Role::Viewer).map_err(ApiError::forbidden)?;
    let locks = app.store.locks().await?;
    Ok(Json(LockList {
        locks: locks.iter().map(lock_view).collect(),
    }))
}

async fn get_lock(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<LockView>> {
    caller.require(Role::Viewer).map_err(ApiError::forbidden)?;
    match app.store.lock(&key).await? {
        Some(lock) => Ok(Json(lock_view(&lock))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("`{key}` is not locked"),
        )),
    }
}

async fn put_lock(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(key): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    caller.require(Role::Admin).map_err(ApiError::forbidden)?;
    let PutLock {
        reason,
        owner,
        expires_in,
    } = parse_body(&body_bytes(body)?)?;
    let owner = owner.unwrap_or_else(|| caller.name.clone());
    let now = shiphat_store::now_ms();
    let expires_ms = match expires_in {
        None => None,
        Some(text) => Some(
            now + humantime::parse_duration(&text)
                .map_err(|e| {
                    ApiError::field(
                        "expires_in",
                        format!("`expires_in`: `{text}`: {e}; e.g. `2h`"),
                    )
                })?
                .as_millis() as i64,
        ),
    };
    let lock = Lock {
        key: key.clone(),
        owner,
        reason,
        created_ms: now,
        expires_ms,
    };
    app.store.put_lock(&lock).await?;
    let response = (StatusCode::OK, Json(lock_view(&lock))).into_response();
    Ok(with_target(
        response,
        &key,
        Some(format!("locked: {}", lock.reason)),
    ))
}

async fn delete_lock(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(key): Path<String>,
) -> ApiResult {
    caller.require(Role::Admin).map_err(ApiError::forbidden)?;
    if !app.unlock(&key).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("`{key}` is not locked"),
        ));
    }
    let response = StatusCode::NO_CONTENT.into_response();
    Ok(with_target(response, &key, Some("unlocked".into())))
}

async fn audit_log(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
) -> ApiResult<Json<AuditLog>> {
    caller.require(Role::Admin).map_err(ApiError::forbidden)?;
    let entries = app.store.audit_log(MAX_PAGE).await?;
    Ok(Json(AuditLog {
        entries: entries
            .into_iter()
            .map(|e| AuditView {
                at: rfc3339(e.at_ms),
                principal: e.principal,
                action: e.action,
                target: e.target,
                remote: e.remote,
                status: e.status,
                outcome: e.outcome,
            })
            .collect(),
    }))
}

fn token_view(token: &TokenRecord, source: TokenSource) -> TokenView {
    TokenView {
        name: token.name.clone(),
        // A role this build does not know (from a newer one) grants nothing here either.
        roles: token.roles.iter().filter_map(|r| Role::parse(r)).collect(),
        patterns: token.patterns.clone(),
        created_at: (token.created_ms > 0).then(|| rfc3339(token.created_ms)),
        source,
    }
}

/// The tokens (never their secrets): those of the database, then those declared in the
/// config file (`source: "config"`), which only the file can change.
async fn list_tokens(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
) -> ApiResult<Json<TokenList>> {
    caller.require(Role::Admin).map_err(ApiError::forbidden)?;
    let mut tokens = app
        .store
        .tokens()
        .await?
        .iter()
        .map(|t| token_view(t, TokenSource::Database))
        .collect::<Vec<_>>();
    tokens.extend(app.config.principals.iter().map(|(_, p)| {
        let record = TokenRecord {
            name: p.name.clone(),
            roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            patterns: p.patterns.clone(),
            created_ms: 0,
        };
        token_view(&record, TokenSource::Config)
    }));
    Ok(Json(TokenList { tokens }))
}

/// Mints a token: 32 random bytes, answered once; only its SHA-256 is stored. The audit log
/// names the token, never its secret.
async fn create_token(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    caller.require(Role::Admin).map_err(ApiError::forbidden)?;
    let CreateToken {
        name,
        roles,
        patterns,
    } = parse_body(&body_bytes(body)?)?;
    if let Some(problem) = shiphat_protocol::principal_name_problem(&name) {
        return Err(ApiError::field("name", problem));
    }
    if roles.is_empty() {
        return Err(ApiError::field(
            "roles",
            "`roles` is required: one or more of `viewer`, `deployer`, `admin`",
        ));
    }
    if let Some(bad) = patterns.iter().find(|p| p.is_empty() || p.contains(',')) {
        return Err(ApiError::field(
            "patterns",
            format!("`patterns` items must be non-empty strings without `,`, not `{bad}`"),
        ));
    }
    let taken = |message: String| ApiError::new(StatusCode::CONFLICT, message).on("name");
    if app.config.principal_names().any(|n| n == name) {
        return Err(taken(format!(
            "`{name}` is a principal of the config file; pick another name"
        )));
    }
    let secret = new_secret()?;
    let record = TokenRecord {
        name: name.clone(),
        roles: roles.iter().map(|r| r.as_str().to_owned()).collect(),
        patterns,
        created_ms: shiphat_store::now_ms(),
    };
    // The store refuses a name taken in the database in the same transaction as the insert.
    match app.store.add_token(&token_hash(&secret), &record).await {
        Err(e @ shiphat_store::Error::NameTaken { .. }) => return Err(taken(e.to_string())),
        other => other?,
    }
    let outcome = format!("created token `{name}` ({})", record.roles.join(", "));
    let answer = NewToken {
        view: token_view(&record, TokenSource::Database),
        token: secret,
    };
    let response = (StatusCode::CREATED, Json(answer)).into_response();
    Ok(with_target(response, &name, Some(outcome)))
}

fn new_secret() -> ApiResult<String> {
    crate::auth::new_token().map_err(|e| ApiError::internal(format!("cannot draw a token: {e}")))
}

/// Revokes the tokens named `name` at once: the next request with them is 401.
async fn delete_token(
    State(app): State<Arc<App>>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require(Role::Admin).map_err(ApiError::forbidden)?;
    if !app.store.delete_token(&name).await? {
        let message = if app.config.principals.iter().any(|(_, p)| p.name == name) {
            (
                StatusCode::CONFLICT,
                format!("`{name}` is declared in the config file; remove it there"),
            )
        } else {
            (StatusCode::NOT_FOUND, format!("no token named `{name}`"))
        };
        return Err(ApiError::new(message.0, message.1));
    }
    let response = StatusCode::NO_CONTENT.into_response();
    Ok(with_target(response, &name, Some("token deleted".into())))
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::connect_info::MockConnectInfo;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::Config;

    /// The daemon's router over a store in a temporary directory, no workflow loaded, and one
    /// principal per role, each named after its role and with its name as its token.
    struct Daemon {
        router: Router,
        _dir: tempfile::TempDir,
    }

    fn daemon() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let store = shiphat_store::SqliteStore::open(&dir.path().join("shiphat.db")).unwrap();
        let host = shiphat_host::Host::new(shiphat_host::HostConfig::default()).unwrap();
        let runner = shiphat_runner::Runner::new(
            host,
            shiphat_runner::PluginPath::new(Vec::new()),
            shiphat_runner::Secrets::none(),
        );
        let mut config = Config::defaults();
        config.data_dir = dir.path().to_owned();
        config.workflow_dirs = Vec::new();
        config.principals = [Role::Viewer, Role::Deployer, Role::Admin]
            .into_iter()
            .map(|role| {
                let principal = Principal {
                    name: role.as_str().to_owned(),
                    roles: vec![role],
                    patterns: vec!["*".to_owned()],
                };
                (token_hash(role.as_str()), principal)
            })
            .collect();
        let app = App::new(config, runner, Arc::new(store));
        let router = router(app, CancellationToken::new())
            .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        Daemon { router, _dir: dir }
    }

    /// What the daemon answered: its status, headers and body (JSON, or `null`).
    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Value,
    }

    impl Daemon {
        async fn call(
            &self,
            method: &str,
            path: &str,
            role: Option<Role>,
            headers: &[(&str, &str)],
            body: &str,
        ) -> Answer {
            let mut request = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(role) = role {
                request = request.header(header::AUTHORIZATION, format!("Bearer {role}"));
            }
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request
                .body(axum::body::Body::from(body.to_owned()))
                .unwrap();
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Answer {
                status,
                headers,
                body,
            }
        }
    }

    #[tokio::test]
    async fn a_viewer_hears_403_before_anything_about_its_body() {
        // A viewer's bad body was answered 400, as if fixing it would let the viewer run.
        let daemon = daemon();
        for (path, body) in [
            ("/api/v1/runs", "not json"),
            ("/api/v1/runs", r#"{"workflow": 3}"#),
            ("/api/v1/runs/01abc/resume", r#"{"force": "yes"}"#),
            ("/api/v1/tokens", "[]"),
        ] {
            let answer = daemon
                .call("POST", path, Some(Role::Viewer), &[], body)
                .await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path} {body}");
            assert!(answer.body["error"].is_string(), "{}", answer.body);
        }
    }

    #[tokio::test]
    async fn an_empty_idempotency_key_is_refused() {
        // An empty (or blank) `Idempotency-Key` counted as a key.
        let daemon = daemon();
        for key in ["", "   "] {
            let answer = daemon
                .call(
                    "POST",
                    "/api/v1/runs",
                    Some(Role::Deployer),
                    &[("idempotency-key", key)],
                    r#"{"workflow": "web"}"#,
                )
                .await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{key:?}: {}",
                answer.body
            );
            assert!(
                answer.body["error"]
                    .as_str()
                    .unwrap()
                    .contains("Idempotency-Key"),
                "{}",
                answer.body
            );
        }
    }

    #[tokio::test]
    async fn a_limit_outside_1_to_500_is_refused() {
        // `limit=0` returned one run.
        let daemon = daemon();
        for limit in ["0", "501", "-1", "many"] {
            let path = format!("/api/v1/runs?limit={limit}");
            let answer = daemon.call("GET", &path, Some(Role::Viewer), &[], "").await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{path}: {}",
                answer.body
            );
            assert_eq!(answer.body["field"], "limit", "{path}: {}", answer.body);
        }
        let answer = daemon
            .call("GET", "/api/v1/runs?limit=1", Some(Role::Viewer), &[], "")
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, serde_json::json!({"runs": [], "next": null}));
        let answer = daemon
            .call(
                "GET",
                "/api/v1/runs?status=odd",
                Some(Role::Viewer),
                &[],
                "",
            )
            .await;
        assert_eq!(
            (answer.status, answer.body["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("status")),
            "{}",
            answer.body
        );
    }

    #[tokio::test]
    async fn a_405_is_a_json_error() {
        // A route called with the wrong method answered 405 with an empty body.
        let daemon = daemon();
        for (method, path) in [
            ("DELETE", "/api/v1/runs"),
            ("PUT", "/api/v1/session"),
            ("POST", "/healthz"),
        ] {
            let answer = daemon.call(method, path, Some(Role::Admin), &[], "").await;
            assert_eq!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert!(
                answer.body["error"].is_string(),
                "{method} {path}: {}",
                answer.body
            );
            assert!(
                answer.headers.contains_key(header::ALLOW),
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn token_names_hold_no_control_characters() {
        // A token, and so a principal, could be named with a newline or an escape sequence,
        // which the audit log and every terminal that lists runs would print.
        let daemon = daemon();
        for name in ["a\nb", "\u{1b}[31mred", "tab\there", "", " ", "a/b"] {
            let body = serde_json::json!({"name": name, "roles": ["viewer"]}).to_string();
            let answer = daemon
                .call("POST", "/api/v1/tokens", Some(Role::Admin), &[], &body)
                .await;
            assert_eq!(
                (answer.status, answer.body["field"].as_str()),
                (StatusCode::BAD_REQUEST, Some("name")),
                "{body}: {}",
                answer.body
            );
        }
    }

    #[tokio::test]
    async fn a_bad_body_names_its_field() {
        let daemon = daemon();
        for (body, field) in [
            ("{}", Some("workflow")),
            (r#"{"workflow": null}"#, Some("workflow")),
            (r#"{"workflow": "web", "input": {}}"#, Some("input")),
            (r#"{"workflow": "web", "inputs": []}"#, Some("inputs")),
            (r#"{"workflow": "web", "dry_run": "yes"}"#, Some("dry_run")),
            (r#"["web"]"#, None),
            ("not json", None),
        ] {
            let answer = daemon
                .call("POST", "/api/v1/runs", Some(Role::Deployer), &[], body)
                .await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{body}: {}",
                answer.body
            );
            assert_eq!(
                answer.body["field"].as_str(),
                field,
                "{body}: {}",
                answer.body
            );
        }
        let answer = daemon
            .call(
                "POST",
                "/api/v1/runs",
                Some(Role::Deployer),
                &[],
                r#"{"workflow": "web"}"#,
            )
            .await;
        assert_eq!(
            (answer.status, answer.body["field"].as_str()),
            (StatusCode::NOT_FOUND, Some("workflow")),
            "{}",
            answer.body
        );
    }

    /// Every `$ref` in `value`.
    fn refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(r)) => out.push(r.clone()),
                        _ => refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_openapi_schemas_are_the_protocol_types() {
        let mut doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let generated = Value::Object(shiphat_protocol::openapi_schemas());
        if std::env::var_os("BLESS").is_some() {
            doc["components"]["schemas"] = generated;
            let file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/openapi.json");
            let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
            std::fs::write(file, text).expect("openapi.json is writable");
            return;
        }
        assert!(
            doc["components"]["schemas"] == generated,
            "openapi.json's schemas are not the types of shiphat-protocol; rewrite them with `BLESS=1 cargo test -p shiphat-server openapi`"
        );
        let mut found = Vec::new();
        refs(&doc, &mut found);
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or(&r);
            assert!(
                generated.get(name).is_some(),
                "openapi.json's `{r}` names no schema"
            );
        }
    }

    #[test]
    fn every_route_is_in_the_openapi_document() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "`{} {path}` is missing from openapi.json",
                method.to_uppercase()
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "openapi.json lists a route that does not exist"
        );
    }
}
