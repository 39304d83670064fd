//! The HTTP API: routes, authentication, the audit of every mutating call, and the mapping of
//! the service's answers and errors to HTTP. Each handler reads its request, calls one
//! operation of [`Service`] and says what came back as a status and JSON: it decides nothing
//! the service decides.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

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
    AuditLog, CreateRun, CreateToken, ErrorBody, GrantHistory, ListRuns, LockList, LockView,
    PutLock, ResumeRun, RunDetail, RunList, RunSource, RunWhy, SessionView, SignIn, TokenList,
    WindowView, WorkflowList, WorkflowView,
};
use shiphat_store::AuditEntry;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::auth::{Principal, token_hash};
use crate::scheduler::App;
use crate::service::{self, Request as _, Service};

/// The OpenAPI document, its paths written by hand next to the routes and its schemas
/// generated from `shiphat-protocol`; a test checks that every route below is in it, and the
/// integration tests call every operation it lists.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route, as `(method, path)`, for the OpenAPI check.
#[cfg(test)]
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/runs"),
    ("get", "/api/v1/runs"),
    ("get", "/api/v1/runs/{id}"),
    ("get", "/api/v1/runs/{id}/events"),
    ("get", "/api/v1/runs/{id}/why"),
    ("post", "/api/v1/runs/{id}/cancel"),
    ("post", "/api/v1/runs/{id}/resume"),
    ("post", "/api/v1/runs/{id}/approvals"),
    ("get", "/api/v1/workflows"),
    ("get", "/api/v1/workflows/{name}"),
    ("get", "/api/v1/workflows/{name}/handbook"),
    ("get", "/api/v1/workflows/{name}/grants"),
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
    ("post", CHECK_DEPLOY),
    ("post", crate::chat::PATH),
    ("post", crate::chat::INTERACTIONS_PATH),
];

/// Whether a run could start now (`Service::check_deploy`): a POST, since it takes a run's
/// body, that changes nothing.
const CHECK_DEPLOY: &str = "/api/v1/check-deploy";

/// The daemon's routes over `app`. Public to the crate's tests, which call it in process with
/// `tower::ServiceExt::oneshot`, without a port.
pub fn router(app: Arc<App>, stop: CancellationToken) -> Router {
    let service = Service::new(app);
    let api = Router::new()
        .route("/runs", post(create_run).get(list_runs))
        .route("/runs/{id}", get(show_run))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/why", get(run_why))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/resume", post(resume_run))
        .route("/runs/{id}/approvals", post(decide))
        .route("/workflows", get(list_workflows))
        .route("/workflows/{name}", get(show_workflow))
        .route("/workflows/{name}/handbook", get(workflow_handbook))
        .route("/workflows/{name}/grants", get(grant_history))
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
        .route("/check-deploy", post(check_deploy))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            service.clone(),
            authenticate,
        ));
    Router::new()
        .route("/", get(|| async { crate::web::asset("index.html") }))
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>| async move { crate::web::asset(&name) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route(crate::chat::PATH, post(crate::chat::slack_commands))
        .route(
            crate::chat::INTERACTIONS_PATH,
            post(crate::chat::slack_interactions),
        )
        .nest("/api/v1", api)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(service.max_body_bytes()))
        .layer(axum::Extension(Stop(stop)))
        .with_state(service)
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
                window: None,
            }),
        }
    }

    /// The same error, about `field`.
    fn on(mut self, field: &str) -> ApiError {
        self.body.field = Some(field.to_owned());
        self
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

/// The service's errors as HTTP: each kind its status, the message as `error`, and what the
/// client needs to act (the field at fault, the lock, the run an idempotency key made).
impl From<service::Error> for ApiError {
    fn from(e: service::Error) -> Self {
        use service::Error as E;
        let status = match &e {
            E::Forbidden(_) => StatusCode::FORBIDDEN,
            E::Invalid { .. } => StatusCode::BAD_REQUEST,
            E::NoWorkflow(_) | E::NoRun(_) | E::NotLocked(_) | E::NoToken(_) => {
                StatusCode::NOT_FOUND
            }
            E::Locked { .. }
            | E::Closed { .. }
            | E::Busy { .. }
            | E::Ended { .. }
            | E::NotInterrupted { .. }
            | E::NoApproval(_)
            | E::Decided(_)
            | E::NameTaken(_)
            | E::InConfig(_) => StatusCode::CONFLICT,
            E::ShuttingDown | E::NotLoaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::TooManyQueued { .. } | E::TooManyStreams { .. } => StatusCode::TOO_MANY_REQUESTS,
            E::KeyReused { .. } | E::Inputs(_) => StatusCode::UNPROCESSABLE_ENTITY,
            E::Store(_) | E::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
            return ApiError::new(status, format!("internal error: {e}"));
        }
        let mut error = ApiError::new(status, e.to_string());
        match e {
            E::Invalid {
                field: Some(field), ..
            } => error = error.on(field),
            E::NoWorkflow(_) => error = error.on("workflow"),
            E::Inputs(_) => error = error.on("inputs"),
            E::NameTaken(_) => error = error.on("name"),
            E::Locked { lock, .. } => error.body.lock = Some(service::lock_view(&lock)),
            E::Closed { window, .. } => error.body.window = Some(*window),
            E::KeyReused { run } => error.body.run = Some(run),
            _ => {}
        }
        error
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

/// Identifies the caller from `Authorization: Bearer TOKEN` (by the token's SHA-256) or a
/// session cookie, then writes every mutating call to the audit log with its outcome.
async fn authenticate(
    State(service): State<Service>,
    mut request: Request,
    next: Next,
) -> Response {
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
        None => match service.sessions().find(request.headers()).await {
            Ok(session) => session,
            Err(e) => return ApiError::from(e).into_response(),
        },
    };
    let hash = bearer.or_else(|| session.as_ref().map(|s| s.token_hash.clone()));
    let principal = match hash {
        None => None,
        Some(hash) => match service.principal(&hash).await {
            Ok(p) => p,
            Err(e) => return ApiError::from(e).into_response(),
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
        _ if forged => ApiError::new(
            StatusCode::FORBIDDEN,
            "a missing or wrong `X-CSRF-Token` header: the web page sends the token `GET /api/v1/session` returns; other clients use `Authorization: Bearer TOKEN`",
        )
        .into_response(),
        Some(p) => {
            let source = source_of(session.is_some(), request.headers());
            request.extensions_mut().insert(p);
            request.extensions_mut().insert(source);
            next.run(request).await
        }
        None if signing_in => next.run(request).await,
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required: `Authorization: Bearer TOKEN` (create one with `shiphat token create`)",
        )
        .into_response(),
    };
    // A question that changes nothing is not audited when it is answered, or anyone with a
    // token could fill the audit log by asking it in a loop; a refusal still is, and refusals
    // are written at a bounded rate per address.
    let question = path == CHECK_DEPLOY && response.status().is_success();
    if mutating && !question {
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
        service.audit(entry).await;
    }
    response
}

/// The front end of a call, as a run started by it records: the web page when a session
/// cookie signed it in, shiphat's own CLI when it says so in its `User-Agent`
/// (`shiphat/VERSION`, see the CLI's `client.rs`), any other client of the API otherwise.
/// The user agent is the client's word: this tells tools apart for a reader of a run, and
/// decides nothing anyone may do.
fn source_of(session: bool, headers: &HeaderMap) -> RunSource {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if session {
        RunSource::Web
    } else if agent.starts_with(shiphat_protocol::CLI_AGENT) {
        RunSource::Cli
    } else {
        RunSource::Api
    }
}

/// `POST /api/v1/session`: exchanges an API token for a session cookie and a CSRF token.
/// Only JSON is taken: a cross-site HTML form cannot send it without a CORS preflight, which
/// this daemon never grants, so nobody can sign a browser in behind its owner's back.
async fn sign_in(
    State(service): State<Service>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    // Failed attempts count, per address, so one client's guesses never lock out another's.
    let address = remote.ip().to_string();
    if !service.sign_ins().has_budget(&address) {
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
    let SignIn { token } = parse_json(&body_bytes(body)?)?;
    let hash = token_hash(token.trim());
    let Some(principal) = service.principal(&hash).await? else {
        service.sign_ins().allow(&address);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown token: paste a token from `shiphat token create` or your admin",
        )
        .on("token"));
    };
    // A browser signing in again (another token, say) leaves no older session behind.
    let sessions = service.sessions();
    sessions.close(&headers).await?;
    let Some((id, session)) = sessions.open(hash).await? else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the store holds as many sessions as it keeps; try again later, or use the API with `Authorization: Bearer TOKEN`",
        ));
    };
    let mut response = Json(session_view(&principal, &session.csrf)).into_response();
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

fn session_view(principal: &Principal, csrf: &str) -> SessionView {
    SessionView {
        principal: principal.name.clone(),
        roles: principal.roles.clone(),
        patterns: principal.patterns.clone(),
        csrf: csrf.to_owned(),
    }
}

/// `GET /api/v1/session`: who the browser is signed in as, with its CSRF token.
async fn show_session(
    State(service): State<Service>,
    Caller(caller): Caller,
    headers: HeaderMap,
) -> ApiResult<Json<SessionView>> {
    let session = service.sessions().find(&headers).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no session: sign in with `POST /api/v1/session`",
        )
    })?;
    Ok(Json(session_view(&caller, &session.csrf)))
}

/// `DELETE /api/v1/session`: signs the browser out, on every daemon that shares the store,
/// and clears its cookie. When the store cannot end the session, the answer says so rather
/// than claim a sign-out that a copied cookie would outlive.
async fn sign_out(State(service): State<Service>, headers: HeaderMap) -> ApiResult {
    service.sessions().close(&headers).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, crate::web::set_cookie(None, &headers));
    Ok(with_target(response, "", Some("signed out".into())))
}

/// `POST /api/v1/check-deploy`: whether the caller could start this run now, and if not why.
async fn check_deploy(
    State(service): State<Service>,
    Caller(caller): Caller,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<shiphat_protocol::DeployCheck>> {
    // Anyone may ask; a viewer is told that the role is what is missing.
    let request: CreateRun = parse_json(&body_bytes(body)?)?;
    named(&request)?;
    Ok(Json(service.check_deploy(&caller, request).await?))
}

/// The document says `workflow` is a name of one character at least: an empty one is a body
/// of the wrong shape (400), for the question "could I?" as for the run itself, not a
/// workflow that happens not to exist.
fn named(request: &CreateRun) -> ApiResult<()> {
    if request.workflow.is_empty() {
        return Err(ApiError::bad_request("`workflow` is empty; name the workflow").on("workflow"));
    }
    Ok(())
}

/// `GET /api/v1/environments`: see [`crate::environments`].
async fn list_environments(
    State(service): State<Service>,
    Caller(caller): Caller,
) -> ApiResult<Json<shiphat_protocol::EnvironmentList>> {
    Ok(Json(service.environments(&caller).await?))
}

/// An event stream: its events go out until the daemon stops or the client goes, with a
/// comment now and then to keep the connection open.
type SseStream =
    Sse<axum::response::sse::KeepAliveStream<ReceiverStream<Result<SseEvent, Infallible>>>>;

/// `GET /api/v1/events`: Server-Sent Events naming each run that changed (created, started,
/// a step or a log line, ended), as `event: run` with data `{"run": ID}`; `{"run": null}`
/// when notices were lost and everything should be read again. A list page listens here
/// instead of polling.
async fn all_events(
    State(service): State<Service>,
    Caller(caller): Caller,
    axum::Extension(Stop(stop)): axum::Extension<Stop>,
) -> ApiResult<SseStream> {
    let mut feed = service.feed(&caller)?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let notices = tokio::select! {
                notices = feed.next() => notices,
                () = stop.cancelled() => return,
                () = tx.closed() => return,
            };
            let Some(notices) = notices else { return };
            for notice in notices {
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

/// `GET /api/v1/runs/{id}/events`: the run's events as Server-Sent Events, first those stored
/// (after `Last-Event-ID`), then live ones as they are committed, until the run ends. Each
/// event's `id` is its sequence number, so a client that reconnects with `Last-Event-ID`
/// misses nothing and sees nothing twice. The data is exactly the JSON of `shiphat run --json`.
async fn run_events(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    axum::Extension(Stop(stop)): axum::Extension<Stop>,
    headers: HeaderMap,
) -> ApiResult<SseStream> {
    let after: i64 = match headers.get("last-event-id") {
        None => 0,
        // Digits only, as the document says: `+1` or `-1` would parse, but are no event id.
        Some(v) => v
            .to_str()
            .ok()
            .filter(|v| (1..=18).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                ApiError::bad_request("`Last-Event-ID` must be an event id (1 to 18 digits)")
            })?,
    };
    let mut follower = service.follow(&caller, &id, after).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = follower.next() => next,
                () = stop.cancelled() => return,
                // A client gone while its run is quiet frees its stream at once.
                () = tx.closed() => return,
            };
            let Some(stored) = next else { return };
            let event = SseEvent::default()
                .id(stored.seq.to_string())
                .data(stored.json);
            if tx.send(Ok(event)).await.is_err() {
                return;
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

/// The body of a request for an operation the caller may make, or the 403 of one they may
/// never make, before anything about the body.
fn parse_request<T: service::Request>(
    caller: &Principal,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<T> {
    T::allowed(caller)?;
    parse_json(&body_bytes(body)?)
}

/// A JSON object body as the request type `T` (one of `shiphat_protocol`'s), or a 400 that
/// names the field at fault. Only an object is taken: serde would read a struct from an
/// array too.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(refused)
}

/// A query string as the request type `T`, or a 400 that names the parameter at fault; the
/// 403 of a caller who may never make the request comes first.
fn parse_query<T: service::Request>(caller: &Principal, query: Option<&str>) -> ApiResult<T> {
    T::allowed(caller)?;
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
            ApiError::bad_request(format!("`{field}` is required")).on(&field)
        }
        Some(field) if message.starts_with("unknown field") => {
            ApiError::bad_request(message).on(&field)
        }
        Some(field) => ApiError::bad_request(format!("`{field}`: {message}")).on(&field),
        None => ApiError::bad_request(message),
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

/// What the audit log adds about a lock, deploy window or freeze an admin forced past.
fn forced_past(lock: Option<&LockView>, window: Option<&WindowView>) -> String {
    let mut said = String::new();
    if let Some(lock) = lock {
        said += &format!(
            ", forced past the lock on `{}` held by `{}`",
            lock.key, lock.owner
        );
    }
    if let Some(window) = window {
        said += &format!(
            ", forced past the deploy window: {}",
            window.reason.as_deref().unwrap_or("closed")
        );
    }
    said
}

async fn create_run(
    State(service): State<Service>,
    Caller(caller): Caller,
    source: Option<axum::Extension<RunSource>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let request: CreateRun = parse_request(&caller, body)?;
    named(&request)?;
    // A header that is not visible ASCII is refused as a blank one is.
    let key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap_or_default());
    let source = source.map_or(RunSource::Api, |s| s.0);
    let admitted = service.admit(&caller, request, key, source).await?;
    let outcome = if admitted.accepted.created {
        let forced = forced_past(admitted.forced.as_ref(), admitted.forced_window.as_ref());
        let waits = match &admitted.waits_for_window {
            Some(opens) => format!(", waits for the deploy window: {opens}"),
            None => String::new(),
        };
        format!("accepted{forced}{waits}")
    } else {
        "replayed by idempotency key".to_owned()
    };
    let id = admitted.accepted.id.clone();
    let response = (StatusCode::ACCEPTED, Json(admitted.accepted)).into_response();
    Ok(with_target(response, &id, Some(outcome)))
}

async fn list_runs(
    State(service): State<Service>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<RunList>> {
    let query: ListRuns = parse_query(&caller, query.as_deref())?;
    Ok(Json(service.runs(&caller, query).await?))
}

async fn show_run(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDetail>> {
    Ok(Json(service.run(&caller, &id).await?))
}

async fn run_why(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RunWhy>> {
    Ok(Json(service.why(&caller, &id).await?))
}

async fn cancel_run(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let cancelled = service.cancel(&caller, &id).await?;
    let outcome = if cancelled.owner == caller.name {
        "cancelled".to_owned()
    } else {
        format!("cancelled a run of `{}`", cancelled.owner)
    };
    let response = (StatusCode::ACCEPTED, Json(cancelled.answer)).into_response();
    Ok(with_target(response, &id, Some(outcome)))
}

/// Queues an interrupted run again; under a lock it needs an admin's `{"force": true}`, which
/// the audit log records. The body may be empty.
async fn resume_run(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    ResumeRun::allowed(&caller)?;
    let body = body_bytes(body)?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        ResumeRun::default()
    } else {
        parse_json(&body)?
    };
    let resumed = service.resume(&caller, &id, request).await?;
    let forced = forced_past(resumed.forced.as_ref(), resumed.forced_window.as_ref());
    let outcome = format!("resumed{forced}");
    let response = (StatusCode::ACCEPTED, Json(resumed.answer)).into_response();
    Ok(with_target(response, &id, Some(outcome)))
}

/// A decision on an approval the run waits at; audited with who, which and why.
async fn decide(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    shiphat_protocol::Decide::allowed(&caller)?;
    let request: shiphat_protocol::Decide = parse_json(&body_bytes(body)?)?;
    let decided = service.decide(&caller, &id, request).await?;
    let response = (StatusCode::OK, Json(decided.answer)).into_response();
    Ok(with_target(response, &id, Some(decided.outcome)))
}

async fn list_workflows(
    State(service): State<Service>,
    Caller(caller): Caller,
) -> ApiResult<Json<WorkflowList>> {
    Ok(Json(service.workflows(&caller)?))
}

async fn show_workflow(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<WorkflowView>> {
    Ok(Json(service.workflow(&caller, &name)?))
}

/// The handbook as Markdown, which the web page renders and a person reads as it is.
async fn workflow_handbook(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult {
    let markdown = service.handbook(&caller, &name).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        markdown,
    )
        .into_response())
}

async fn grant_history(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<GrantHistory>> {
    Ok(Json(service.grant_history(&caller, &name).await?))
}

async fn list_locks(
    State(service): State<Service>,
    Caller(caller): Caller,
) -> ApiResult<Json<LockList>> {
    Ok(Json(service.locks(&caller).await?))
}

async fn get_lock(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(key): Path<String>,
) -> ApiResult<Json<LockView>> {
    Ok(Json(service.lock(&caller, &key).await?))
}

async fn put_lock(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(key): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let request: PutLock = parse_request(&caller, body)?;
    let lock = service.put_lock(&caller, &key, request).await?;
    let outcome = format!("locked: {}", lock.reason);
    let response = (StatusCode::OK, Json(lock)).into_response();
    Ok(with_target(response, &key, Some(outcome)))
}

async fn delete_lock(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(key): Path<String>,
) -> ApiResult {
    service.unlock(&caller, &key).await?;
    let response = StatusCode::NO_CONTENT.into_response();
    Ok(with_target(response, &key, Some("unlocked".into())))
}

async fn audit_log(
    State(service): State<Service>,
    Caller(caller): Caller,
) -> ApiResult<Json<AuditLog>> {
    Ok(Json(service.audit_log(&caller).await?))
}

async fn list_tokens(
    State(service): State<Service>,
    Caller(caller): Caller,
) -> ApiResult<Json<TokenList>> {
    Ok(Json(service.tokens(&caller).await?))
}

/// Mints a token, answered once. The audit log names the token, never its secret.
async fn create_token(
    State(service): State<Service>,
    Caller(caller): Caller,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult {
    let request: CreateToken = parse_request(&caller, body)?;
    let token = service.create_token(&caller, request).await?;
    let name = token.view.name.clone();
    let outcome = format!(
        "created token `{name}` ({})",
        token
            .view
            .roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let response = (StatusCode::CREATED, Json(token)).into_response();
    Ok(with_target(response, &name, Some(outcome)))
}

/// Revokes the tokens named `name` at once: the next request with them is 401.
async fn delete_token(
    State(service): State<Service>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> ApiResult {
    service.delete_token(&caller, &name).await?;
    let response = StatusCode::NO_CONTENT.into_response();
    Ok(with_target(response, &name, Some("token deleted".into())))
}

/// 200 once every workflow found at start is loaded, 503 before (and while shutting down):
/// `/healthz` says the process answers, this says it should get traffic.
async fn readyz(State(service): State<Service>) -> Response {
    match service.ready() {
        Ok(()) => "ready\n".into_response(),
        Err(waits) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("{waits}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(service): State<Service>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        service.metrics(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::auth::Role;

    /// The daemon's router over [`crate::testing::app`].
    struct Daemon {
        router: Router,
        test: crate::testing::TestApp,
    }

    fn daemon() -> Daemon {
        let test = crate::testing::app();
        Daemon {
            router: test.router(),
            test,
        }
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
    async fn readyz_waits_for_the_first_load_and_says_no_once_shutting_down() {
        // A load balancer must not send deploys to a daemon whose workflows are not loaded
        // yet, nor to one that is draining; `/healthz` says only that the process answers.
        let d = daemon();
        let not_yet = d.call("GET", "/readyz", None, &[], "").await;
        assert_eq!(not_yet.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(not_yet.headers[header::RETRY_AFTER], "1");
        assert_eq!(
            d.call("GET", "/healthz", None, &[], "").await.status,
            StatusCode::OK
        );
        let app = &d.test.app;
        app.workflows.start(&app.runner, &[]).await;
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while !app.workflows.settled() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a first load of no files settles");
        assert_eq!(
            d.call("GET", "/readyz", None, &[], "").await.status,
            StatusCode::OK
        );
        app.accepting
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            d.call("GET", "/readyz", None, &[], "").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
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
    async fn the_slack_routes_are_not_found_without_a_slack_section() {
        let daemon = daemon();
        for path in [crate::chat::PATH, crate::chat::INTERACTIONS_PATH] {
            let answer = daemon.call("POST", path, None, &[], "payload=%7B%7D").await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
            assert!(
                answer.body["error"]
                    .as_str()
                    .unwrap()
                    .contains("add a `[slack]` section"),
                "{}",
                answer.body
            );
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
    async fn a_lock_that_would_end_after_the_year_9999_is_refused() {
        // An `expires_in` of `100000y` was taken, and answering with its end (RFC 3339,
        // which stops at the year 9999) panicked the handler.
        let daemon = daemon();
        let answer = daemon
            .call(
                "PUT",
                "/api/v1/locks/web",
                Some(Role::Admin),
                &[],
                r#"{"reason": "freeze", "expires_in": "100000y"}"#,
            )
            .await;
        assert_eq!(
            (answer.status, answer.body["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some("expires_in")),
            "{}",
            answer.body
        );
        let answer = daemon
            .call("GET", "/api/v1/locks/web", Some(Role::Viewer), &[], "")
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.body);
    }

    #[tokio::test]
    async fn a_run_is_cancelled_by_its_owner_or_an_admin_only() {
        let daemon = daemon();
        let id = daemon.test.queued_run("someone").await;
        let cancel = format!("/api/v1/runs/{id}/cancel");
        for (role, status, says) in [
            (Role::Viewer, StatusCode::FORBIDDEN, "`deployer`"),
            (
                Role::Deployer,
                StatusCode::FORBIDDEN,
                "belongs to `someone`",
            ),
            (Role::Admin, StatusCode::ACCEPTED, ""),
            (
                Role::Admin,
                StatusCode::CONFLICT,
                "already ended (cancelled)",
            ),
        ] {
            let answer = daemon.call("POST", &cancel, Some(role), &[], "").await;
            assert_eq!(answer.status, status, "{role}: {}", answer.body);
            if status == StatusCode::ACCEPTED {
                assert_eq!(
                    answer.body,
                    serde_json::json!({"id": id, "cancelling": true})
                );
            } else {
                let error = answer.body["error"].as_str().unwrap();
                assert!(error.contains(says), "{role}: {error}");
            }
        }
        let answer = daemon
            .call(
                "GET",
                &format!("/api/v1/runs/{id}"),
                Some(Role::Viewer),
                &[],
                "",
            )
            .await;
        assert_eq!(answer.body["status"], "cancelled", "{}", answer.body);
        assert_eq!(
            answer.body["detail"], "cancelled by `admin`",
            "{}",
            answer.body
        );
    }

    #[tokio::test]
    async fn a_last_event_id_is_digits_only() {
        // Schemathesis: an empty `Last-Event-ID` was refused though the document said any
        // string; and `+1` was taken though it is no event id. The document now says digits.
        let daemon = daemon();
        for id in ["", "+1", "-1", "1.0", "1234567890123456789"] {
            let answer = daemon
                .call(
                    "GET",
                    "/api/v1/runs/01abc/events",
                    Some(Role::Viewer),
                    &[("last-event-id", id)],
                    "",
                )
                .await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{id:?}: {}",
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
            // Schemathesis found `check-deploy` answering an empty name as a question.
            (r#"{"workflow": ""}"#, Some("workflow")),
            (r#"{"workflow": "web", "input": {}}"#, Some("input")),
            (r#"{"workflow": "web", "inputs": []}"#, Some("inputs")),
            (r#"{"workflow": "web", "dry_run": "yes"}"#, Some("dry_run")),
            (r#"["web"]"#, None),
            ("not json", None),
        ] {
            for path in ["/api/v1/runs", "/api/v1/check-deploy"] {
                let answer = daemon
                    .call("POST", path, Some(Role::Deployer), &[], body)
                    .await;
                assert_eq!(
                    answer.status,
                    StatusCode::BAD_REQUEST,
                    "{path} {body}: {}",
                    answer.body
                );
                assert_eq!(
                    answer.body["field"].as_str(),
                    field,
                    "{path} {body}: {}",
                    answer.body
                );
            }
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
